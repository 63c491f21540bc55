"""Daemon-type tasks: kept at `max_instances` copies, restarted with backoff, stopped when they go.

The supervisor decides; the scheduler's loop owns the state (`TaskState`) and starts runs through
the callback it is given. Retries of failed cron runs and failure hooks will live here too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gotorch.config import Task
from gotorch.delayed import DelayedStarts
from gotorch.events import Bus, DaemonRestart
from gotorch.policy import Backoff
from gotorch.runner import Run, Runner, RunResult


@dataclass
class TaskState:
    """What the loop knows about one task beyond its definition (for status and daemon restarts)."""

    task: Task
    matched_ip: str | None = None
    last_status: str | None = None
    last_end: float | None = None
    last_scheduled: int | None = None
    backoff: Backoff | None = None
    restarts: int = 0


class Supervisor:
    """Starts, restarts and retires the copies of daemon-type tasks."""

    def __init__(self, runner: Runner, delayed: DelayedStarts, start: Callable[[Task], None], bus: Bus,
                 held: Callable[[str], bool] = lambda _name: False) -> None:
        self._runner = runner
        self._held = held
        self._delayed = delayed
        self._start = start
        self._bus = bus
        self._retired: set[str] = set()  # run ids of copies stopped because their definition went

    def launch(self, st: TaskState) -> None:
        """A daemon task added or changed: a fresh backoff, and copies up to max_instances."""
        st.backoff = Backoff()
        if self._held(st.task.name):
            return  # paused: started by the resume
        for _ in range(st.task.max_instances - self._runner.running_count(st.task.name)):
            self._start(st.task)

    def retire(self, st: TaskState, reason: str = "task removed or changed by a reload") -> None:
        """A daemon task removed or changed: TERM (then KILL) its copies; their successors start at their end.

        The copies end `killed` with `reason` (recorded in the log and the history).
        """
        for run in [r for r in self._runner.runs.values() if r.spec.task == st.task.name]:
            self._retired.add(run.spec.run_id)
            self._runner.terminate(run, reason)

    def on_run_end(self, st: TaskState | None, run: Run, result: RunResult, stopping: bool) -> None:
        """A run ended: if it was a daemon task's copy, start its replacement (now, or after a backoff)."""
        replaced = run.spec.run_id in self._retired
        self._retired.discard(run.spec.run_id)
        if st is None or st.task.type != "daemon" or stopping or st.backoff is None or self._held(st.task.name):
            return
        task, name = st.task, st.task.name
        if self._runner.running_count(name) + self._delayed.pending(name) >= task.max_instances:
            return
        if replaced:
            # An old copy of a changed daemon task has gone: its successor starts now, no backoff.
            self._start(task)
            return
        uptime = time.time() - run.started_at
        delay = st.backoff.after_exit(uptime)
        st.restarts += 1
        self._bus.publish(DaemonRestart(name, delay, round(uptime, 3), result.status, result.exit_code, result.signal))
        self._delayed.add(name, delay, "restart", None, lambda token: self._restart(st, task, token))

    def _restart(self, st: TaskState, task: Task, token: int) -> None:
        # The state may have been replaced (reload) or the definition changed since: then not this one.
        if self._delayed.take(task.name, token) and st.task == task and not self._held(task.name):
            self._start(task)
