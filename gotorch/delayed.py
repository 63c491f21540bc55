"""Runs that start later: a fire waiting out its jitter, or a daemon-task copy waiting out its backoff.

Each one is a `DelayedStart` with a timer on the loop. Both kinds count against the task's
`max_instances` while they wait, and a cancelled jittered fire is reported (the caller logs it as
skipped): never silent.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class DelayedStart:
    """One pending start: a jittered fire of `scheduled` (epoch second), or a daemon-task restart."""

    kind: Literal["jitter", "restart"]
    handle: asyncio.TimerHandle
    scheduled: int | None = None  # the fire a jittered start stands for; None for a restart


class DelayedStarts:
    """The pending starts of every task, by task name and token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._by_task: dict[str, dict[int, DelayedStart]] = {}
        self._tokens = itertools.count(1)

    def add(self, task: str, delay: float, kind: Literal["jitter", "restart"], scheduled: int | None,
            callback: Callable[[int], None]) -> None:
        """Call `callback(token)` after `delay` seconds, unless cancelled first."""
        token = next(self._tokens)
        handle = self._loop.call_later(delay, callback, token)
        self._by_task.setdefault(task, {})[token] = DelayedStart(kind, handle, scheduled)

    def take(self, task: str, token: int) -> bool:
        """Forget a start that is now due; False if it was cancelled meanwhile (then do not start)."""
        entries = self._by_task.get(task)
        if entries is None or entries.pop(token, None) is None:
            return False
        if not entries:
            del self._by_task[task]
        return True

    def cancel(self, task: str) -> list[DelayedStart]:
        """Cancel every pending start of `task`; return them (the caller reports jittered fires)."""
        entries = list(self._by_task.pop(task, {}).values())
        for entry in entries:
            entry.handle.cancel()
        return entries

    def pending(self, task: str) -> int:
        """How many starts of `task` are waiting (they count against its max_instances)."""
        return len(self._by_task.get(task, ()))

    def tasks(self) -> list[str]:
        """Names of the tasks with pending starts."""
        return list(self._by_task)
