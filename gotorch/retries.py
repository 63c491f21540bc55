"""Retries of failed cron runs: `retries: N`, `retry_backoff`, `retry_on` (policy in gotorch.policy).

A bus subscriber in the loop. When a scheduled run (or a retry) ends in a status its task retries,
the next attempt of the same fire starts after the backoff, as its own run with trigger `retry`
and the next attempt number (so history shows attempts 1..N+1 of one scheduled instant). A retry
that would exceed max_instances when due is recorded as skipped. A reload that changes or removes
the task cancels its pending retries (recorded as skipped with reason `reload`); so does a stop.

Pending retries are timers held here, not delayed starts of the scheduler: they must not count
against max_instances while they wait, or one failure would block the task's next fires.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gotorch.config import Task
from gotorch.events import Event, ReloadApplied, RetryScheduled, RunEnded, Skipped, StopRequested
from gotorch.policy import retry_delay, will_retry
from gotorch.scheduler import Scheduler


@dataclass
class PendingRetry:
    """An attempt waiting out its backoff."""

    task: Task  # the definition that failed: a reload that changes it cancels the retry
    scheduled: int | None
    attempt: int
    handle: asyncio.TimerHandle


class Retries:
    """Subscribe an instance to the scheduler's bus: `bus.subscribe(retries)`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, scheduler: Scheduler) -> None:
        self._loop = loop
        self._sched = scheduler
        self.pending: dict[str, list[PendingRetry]] = {}  # by task name

    def __call__(self, event: Event) -> None:
        """Handle one event (a bus subscriber)."""
        if isinstance(event, RunEnded):
            self._ended(event)
        elif isinstance(event, ReloadApplied):
            for name in (*event.removed, *event.changed):
                self.cancel(name, "reload")
        elif isinstance(event, StopRequested):
            for name in list(self.pending):
                self.cancel(name, "stop")

    def _ended(self, e: RunEnded) -> None:
        st = self._sched.states.get(e.task)
        if st is None or self._sched.stopping:
            return
        status = "spawn_failed" if e.pid is None else e.status
        if not will_retry(st.task, e.trigger, status, e.attempt):
            return
        delay = retry_delay(st.task.retry_backoff, e.attempt)
        scheduled = int(e.scheduled_ts) if e.scheduled_ts is not None else None
        entry = PendingRetry(st.task, scheduled, e.attempt + 1, self._loop.call_later(delay, self._due, e.task))
        self.pending.setdefault(e.task, []).append(entry)
        self._sched.bus.publish(RetryScheduled(e.task, e.run_id, status, entry.attempt, st.task.retries,
                                               round(delay, 3)))

    def _due(self, name: str) -> None:
        entries = self.pending.get(name, [])
        due = [p for p in entries if p.handle.when() <= self._loop.time()]
        for p in due:
            entries.remove(p)
        if not entries:
            self.pending.pop(name, None)
        for p in due:
            self._start(name, p)

    def _start(self, name: str, p: PendingRetry) -> None:
        st = self._sched.states.get(name)
        if st is None or st.task != p.task or self._sched.stopping:
            return  # changed or removed meanwhile: cancel() reported it
        hold = self._sched.held(name)
        if hold is not None:
            self._skip(name, p, "paused", hold)
            return
        runner = self._sched.runner
        if runner.running_count(name) + self._sched.delayed.pending(name) >= p.task.max_instances:
            blocking = next((r.spec.run_id for r in runner.runs.values() if r.spec.task == name), None)
            self._skip(name, p, "max_instances", f"retry attempt {p.attempt}", blocking)
            return
        self._sched.start_retry(p.task, p.scheduled, p.attempt)

    def cancel(self, name: str, reason: str) -> None:
        """Cancel `name`'s pending retries, each recorded as a skipped fire with `reason`."""
        for p in self.pending.pop(name, []):
            p.handle.cancel()
            self._skip(name, p, reason, f"retry attempt {p.attempt} cancelled")

    def _skip(self, name: str, p: PendingRetry, reason: str, detail: str, blocking: str | None = None) -> None:
        at = p.scheduled if p.scheduled is not None else time.time()
        self._sched.bus.publish(Skipped(name, _iso(at), reason, detail=detail, blocking_run=blocking))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
