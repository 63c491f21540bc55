"""Failure and recovery hooks: `on_failure`, `on_recovery`, `failure_threshold`, `warn_after`.

A bus subscriber in the loop. A run that failed for good (after its retries: gotorch.policy) adds
to its task's streak of failures; when the streak reaches `failure_threshold`, `on_failure` runs
once, and `on_recovery` runs at the next success, so an alert is raised and cleared without a
flood. `warn_after`: a run still going after that long runs `on_failure` once with status
`overdue` (it does not count in the streak). `killed` runs (on request, at stop) are not failures.

A hook is a run of its own, `TASK:on_failure` / `TASK:on_recovery` in history (trigger `hook`),
started by the scheduler as the task's user and stopped at the task's `hook_timeout`; it is never
retried. Its environment describes the run it reports on (TORCH_TASK, TORCH_RUN_ID, TORCH_STATUS,
...), and TORCH_OUTPUT_FILE names a copy of that run's output (its first 2 KiB and last 6 KiB, as
history keeps it), removed when the hook ends.

Streaks live in memory: a daemon restart starts every task with a clean streak.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gotorch import accounts, trustedfs
from gotorch.config import Task
from gotorch.events import Event, HookStarted, RunEnded, RunOutput, RunStarted
from gotorch.history.recorder import OutputSample
from gotorch.policy import FAILURES, FailureStreak, will_retry
from gotorch.scheduler import Scheduler

HOOK_DIR = "hooks"  # in the state directory: the output files handed to hooks running as the daemon's user


@dataclass
class _Watched:
    """What the hooks may need of a run of a task that has them, until it ends."""

    started_ts: float | None
    output: OutputSample = field(default_factory=OutputSample)
    overdue: asyncio.TimerHandle | None = None


class Alerts:
    """Subscribe an instance to the scheduler's bus: `bus.subscribe(alerts)`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, scheduler: Scheduler, state_dir: Path) -> None:
        self._loop = loop
        self._sched = scheduler
        self._state_dir = state_dir
        self._dir: Path | None = None  # made at the first hook that needs it
        self._host = socket.gethostname()
        self.streaks: dict[str, FailureStreak] = {}
        self._runs: dict[str, _Watched] = {}  # by run id, only for tasks with hooks
        self._files: dict[str, str] = {}  # a running hook's run id -> its output file

    def __call__(self, event: Event) -> None:
        """Handle one event (a bus subscriber)."""
        if isinstance(event, RunOutput):
            w = self._runs.get(event.run_id)
            if w is not None:
                w.output.add(event.line.encode("utf-8", "replace") + b"\n")
        elif isinstance(event, RunStarted):
            self._started(event)
        elif isinstance(event, RunEnded):
            self._ended(event)

    def _task(self, name: str) -> Task | None:
        st = self._sched.states.get(name)
        return st.task if st is not None else None

    def _started(self, e: RunStarted) -> None:
        task = self._task(e.task)
        if task is None or (task.on_failure is None and task.on_recovery is None):
            return
        w = _Watched(e.started_ts)
        if task.warn_after is not None and task.on_failure is not None:
            w.overdue = self._loop.call_later(task.warn_after, self._overdue, e.task, e.run_id, e.attempt,
                                              e.scheduled_ts)
        self._runs[e.run_id] = w

    def _overdue(self, name: str, run_id: str, attempt: int, scheduled_ts: float | None) -> None:
        w = self._runs.get(run_id)
        task = self._task(name)
        run = self._sched.runner.runs.get(run_id)
        if w is None or task is None or task.on_failure is None or run is None or run.exited:
            return
        w.overdue = None
        elapsed = time.time() - (w.started_ts or time.time())
        streak = self.streaks.get(name, FailureStreak())
        self._hook(task, "on_failure", task.on_failure, "overdue", run_id, None, None, attempt, scheduled_ts,
                   w.started_ts, elapsed, streak.count, w.output)

    def _ended(self, e: RunEnded) -> None:
        path = self._files.pop(e.run_id, None)
        if path is not None:  # a hook ended: its copy of the output goes
            with contextlib.suppress(OSError):
                os.unlink(path)
            return
        w = self._runs.pop(e.run_id, None)
        if w is not None and w.overdue is not None:
            w.overdue.cancel()
        task = self._task(e.task)
        if task is None or e.trigger == "hook":
            return
        status = "spawn_failed" if e.pid is None else e.status
        streak = self.streaks.setdefault(e.task, FailureStreak())
        sample = w.output if w is not None else OutputSample()
        started = w.started_ts if w is not None else None
        if status == "ok":
            if streak.succeeded() and task.on_recovery is not None:
                self._hook(task, "on_recovery", task.on_recovery, "ok", e.run_id, e.exit_code, e.signal, e.attempt,
                           e.scheduled_ts, started, e.duration_s, 0, sample)
        elif (status in FAILURES and not will_retry(task, e.trigger, status, e.attempt)
              and streak.failed(task.failure_threshold) and task.on_failure is not None):
            self._hook(task, "on_failure", task.on_failure, status, e.run_id, e.exit_code, e.signal, e.attempt,
                       e.scheduled_ts, started, e.duration_s, streak.count, sample)
        if not streak.count and not streak.alerted:
            self.streaks.pop(e.task, None)  # nothing to remember: keep the map to failing tasks

    def _hook(self, task: Task, hook: str, command: str | tuple[str, ...], status: str, run_id: str,
              exit_code: int | None, signal: str | None, attempt: int, scheduled_ts: float | None,
              started_ts: float | None, duration_s: float, failures: int, output: OutputSample) -> None:
        hook_id = self._sched.new_run_id()
        report = {
            "TORCH_TASK": task.name, "TORCH_RUN_ID": run_id, "TORCH_STATUS": status,
            "TORCH_EXIT_CODE": "" if exit_code is None else str(exit_code), "TORCH_SIGNAL": signal or "",
            "TORCH_ATTEMPT": str(attempt), "TORCH_SCHEDULED_AT": _iso(scheduled_ts),
            "TORCH_STARTED_AT": _iso(started_ts), "TORCH_DURATION_S": f"{duration_s:.3f}",
            "TORCH_CONSECUTIVE_FAILURES": str(failures), "TORCH_HOST": self._host,
        }
        path = self._output_file(task, hook_id, output)
        report["TORCH_OUTPUT_FILE"] = path or ""
        if path is not None:
            self._files[hook_id] = path
        self._sched.bus.publish(HookStarted(task.name, hook, status, hook_id, run_id, failures))
        self._sched.start_hook(task, hook, command, tuple(report.items()), hook_id)

    def _output_dir(self, task: Task) -> Path:
        """Where the output copies go: a directory the hook's user can reach.

        STATE is 0750 and its parents may be too, so a hook running as another user could not
        open a file there. For those, a private directory of our own in the system's temporary
        directory (made by mkdtemp: a fresh name, ours, nobody else can plant anything in it),
        opened up to 0711 so a user can open their own file by name but not list the others.
        """
        if task.user is None or os.geteuid() != 0:
            path = self._state_dir / HOOK_DIR
            # follow_final=False: a symlink planted at STATE/hooks must not steer where root writes.
            trustedfs.ensure_dir(str(path), os.geteuid(), mode=0o711, follow_final=False)
            return path
        if self._dir is None or not self._dir.is_dir():
            self._dir = Path(tempfile.mkdtemp(prefix="torch-hooks-"))
            os.chmod(self._dir, 0o711)
        return self._dir

    def _output_file(self, task: Task, hook_id: str, output: OutputSample) -> str | None:
        """The reported run's kept output in a file only the hook's user can read; None if it cannot be made."""
        try:
            path = str(self._output_dir(task) / f"{hook_id}.output")
            fd = trustedfs.open_state_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except (OSError, trustedfs.Untrusted):
            return None
        try:
            os.write(fd, output.text())
            if task.user is not None and os.geteuid() == 0:
                pw = accounts.user(task.user)
                gid = accounts.group(task.group).gr_gid if task.group is not None else pw.pw_gid
                os.fchown(fd, pw.pw_uid, gid)
        except (OSError, KeyError):
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        os.close(fd)
        return path


def _iso(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
