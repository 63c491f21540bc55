"""Processes for runs: spawn in a new session, stream capped output, time out, TERM-then-KILL, reap.

The runner knows processes and nothing of cron. It lives inside the one asyncio loop owned by the
scheduler and never blocks it: pipes are non-blocking and read from `loop.add_reader` callbacks,
timers are `loop.call_later` handles, and child exits are collected by `reap()`, which the loop's
owner calls when SIGCHLD comes (gotorch.signals routes it to the loop).

Lifecycle of a run:

    start() --spawn (setsid)--> running --direct child reaped--> exited --pipes at EOF, or
                                                                           1 s later--> ended

A run ends (`run.end` is logged and `on_end` is called exactly once) when its direct child has been
reaped AND both pipes are closed. Processes left in its group after a normal exit are not killed
(cron allows `nohup x &`); the daemon is a child subreaper, so they are reaped when they die.

Stopping a run (timeout, terminate, shutdown) is TERM, then KILL after its kill_timeout, to its
process group and to whatever left the group carrying its id: gotorch.stopping sends them.

We reap with `waitpid(-1)` rather than per-pid waits because orphaned grandchildren are reparented
to us and must be reaped too. A consequence for the rest of the daemon: nothing else in this
process may start children of its own (subprocess.run, asyncio subprocesses), or their exit status
will be taken by `reap()`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import fcntl
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from gotorch import procfs
from gotorch.durations import format_duration
from gotorch.events import (
    Bus,
    ChildrenLeft,
    OnEndFailed,
    OrphanReaped,
    OrphansSignalled,
    RunAdopted,
    RunEnded,
    RunOutput,
    RunSetupFailed,
    RunStarted,
    RunTimedOut,
    RunTracked,
)
from gotorch.log import logging_bus
from gotorch.run_env import build_env, identity, iso_utc
from gotorch.spawn import Spawned, Spawner, seal_descriptors
from gotorch.stopping import Stopper, pids_by_run_id

# One pipe's default capacity on Linux: one read usually empties it.
CHUNK = 64 * 1024
# Reads per readiness callback, so one chatty task cannot starve the loop (or other runs) for long.
READS_PER_WAKEUP = 16
# A line without a newline is logged in pieces of about this size, so a huge output_limit cannot make
# us buffer an endless line.
LINE_MAX = 64 * 1024
# A run's pipes are handed to the loop's selector only once it has lived this long: a run that ends
# sooner has its output read when it exits. Registering and removing two pipes costs ~50 us a run,
# a fifth of what the loop spends on a short run; output of a longer run streams from then on.
# Measured (bench peers 1tps): with 50 ms here, the next boundary's median lateness grew by 0.5 ms
# (not understood: the loop is idle by then either way); with 5 ms it did not.
WATCH_AFTER_S = 0.005
# How long we keep reading pipes after the direct child exited: a backgrounded grandchild may hold
# them open forever, and the run must still end.
PIPE_GRACE_S = 1.0
# Shutdown: after SIGKILL, how long to wait for runs to end before we stop waiting for them.
SHUTDOWN_KILL_WAIT_S = 5.0
# Shutdown: how long to wait for orphans to be reaped after SIGKILL.
ORPHAN_REAP_WAIT_S = 2.0
# Polling period of shutdown's waits; it also reaps, so shutdown works even if SIGCHLD is not wired.
_POLL_S = 0.02

PR_SET_CHILD_SUBREAPER = 36
# An adopted run (see Runner.adopt) on a kernel without pidfd_open (< 5.3): how often we look for its end.
ADOPTED_POLL_S = 1.0
LOST_ADOPTED = ("adopted from a previous daemon: it ended, but its exit status cannot be known "
                "(it was not this daemon's child)")


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything the runner needs to start one run; the scheduler builds it from a Task and a fire."""

    task: str
    run_id: str
    command: str | tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    user: str | None = None
    group: str | None = None
    timeout: float | None = None
    kill_timeout: float = 10.0
    output_limit: int = 65536
    scheduled_ts: float | None = None  # epoch seconds of the scheduled boundary
    # Why the run exists and which try it is: passed through to the events, not interpreted here.
    trigger: str = "schedule"
    attempt: int = 1
    requested_by: str | None = None  # who asked for a manual run or a kill (e.g. "root (uid 0)")
    # Set last, over TORCH_*: an alert hook describes the run it reports on (its TORCH_TASK and
    # TORCH_RUN_ID are that run's). Such a run's escaped processes are then not found by run id; its
    # process group still is, and orphans are killed at stop.
    report_env: tuple[tuple[str, str], ...] = ()


RunStatus = Literal["ok", "failed", "timeout", "killed", "lost"]


# How a run ended is the RunEnded event itself: `on_end` gets exactly what the bus's subscribers got.
# Exactly one of exit_code and signal is set, unless the spawn failed.
RunResult = RunEnded




def set_child_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (prctl PR_SET_CHILD_SUBREAPER).

    Without it, a double-forked grandchild is reparented to init and escapes our reaping (though
    not our killing: we find escaped processes by their TORCH_RUN_ID). Returns True on success.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), ctypes.c_ulong(0),
                              ctypes.c_ulong(0), ctypes.c_ulong(0))) == 0
    except (OSError, AttributeError):
        return False


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


# --- runs ------------------------------------------------------------------------------------------


class _Stream:
    """One of a run's output pipes, read non-blocking; `partial` holds an unfinished line."""

    __slots__ = ("fd", "file", "name", "open", "partial", "watched")

    def __init__(self, name: str, fd: int, file: Any = None) -> None:
        self.name = name
        self.file = file  # Popen's file object owning `fd`, or None: the descriptor is ours to close
        self.fd = fd
        self.partial = bytearray()
        self.open = True
        self.watched = False  # registered with the loop's selector (see WATCH_AFTER_S)


class Run:
    """One running process tree: the direct child (a session and process group leader) and its kin.

    Public attributes: `spec`, `pid` (0 if the spawn failed), `started_at` (time.time() just after
    the spawn), `popen` (None if the spawn failed; never wait() on it, `reap()` owns exit statuses),
    `scheduled_at` (ISO string or None), `exited` (direct child reaped), `ended`, `output_bytes`,
    `dropped_bytes`.
    """

    __slots__ = (
        "_exit_mono", "_exit_watch", "_grace_handle", "_start_mono", "_streams", "_timeout_handle", "adopted",
        "cause", "cpu_s", "dropped_bytes", "ended", "exit_status", "exited", "max_rss_kb", "output_bytes", "pid",
        "popen", "proc_start", "reason", "scheduled_at", "spec", "started_at",
    )

    def __init__(self, spec: RunSpec, popen: subprocess.Popen[bytes] | None, pid: int,
                 started_at: float, start_mono: float) -> None:
        self.spec = spec
        self.popen = popen
        self.pid = pid
        self.started_at = started_at
        self.scheduled_at = iso_utc(spec.scheduled_ts) if spec.scheduled_ts is not None else None
        self.exited = False
        self.ended = False
        self.exit_status: int | None = None  # raw wait status of the direct child
        self.cpu_s: float | None = None
        self.max_rss_kb: int | None = None
        # Why we signalled it, if we did before it exited: decides timeout/killed over ok/failed.
        self.cause: Literal["timeout", "killed"] | None = None
        self.reason: str | None = None  # set with `cause`: the words RunEnded carries
        self.output_bytes = 0
        self.dropped_bytes = 0
        self._start_mono = start_mono
        self._exit_mono: float | None = None
        self._streams: list[_Stream] = []
        self._timeout_handle: asyncio.TimerHandle | None = None
        self._grace_handle: asyncio.TimerHandle | None = None
        # A run a previous daemon started (Runner.adopt): not our child, so its end is seen through
        # a pidfd (or a poll), never through wait(); `proc_start` tells its pid from a reused one.
        self.adopted = False
        self.proc_start: int | None = None
        self._exit_watch: int | asyncio.TimerHandle | None = None  # the pidfd, or the poll's timer

    @property
    def remaining(self) -> int:
        """Bytes of output that may still be logged."""
        return self.spec.output_limit - self.output_bytes

    def __repr__(self) -> str:
        return f"<Run {self.spec.task} {self.spec.run_id} pid={self.pid} exited={self.exited}>"


class Runner:
    """Starts, watches, stops and reaps runs inside one asyncio loop (single-threaded).

    `on_end(run, result)` is called exactly once per run, including spawn failures; exceptions it
    raises are logged and swallowed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_end: Callable[[Run, RunResult], None],
                 bus: Bus | None = None) -> None:
        self._loop = loop
        self._on_end = on_end
        self._runs: dict[str, Run] = {}
        self._by_pid: dict[int, Run] = {}  # only runs whose direct child is not yet reaped
        self._counts: dict[str, int] = {}
        self._scratch = bytearray(CHUNK)  # drained output lands here: no allocation per read
        # Started less than WATCH_AFTER_S ago (their pipes not yet watched), oldest first.
        self._unwatched: collections.deque[Run] = collections.deque()
        self._watch_handle: asyncio.TimerHandle | None = None
        self._closing = False
        self._bus = bus if bus is not None else logging_bus()
        self._stopper = Stopper(loop, self._bus, self._runs.values)
        self._spawner = Spawner()
        # Inside batch(): runs spawned whose pipes, timers and start event wait for the batch's end.
        self._batch: list[tuple[Run, Spawned]] | None = None

    # --- queries ---

    @property
    def runs(self) -> Mapping[str, Run]:
        """Runs that have not ended yet, by run id (a read-only live view)."""
        return MappingProxyType(self._runs)

    def running_count(self, task: str) -> int:
        """How many runs of `task` have not ended yet."""
        return self._counts.get(task, 0)

    # --- spawning ---

    def seal_descriptors(self) -> None:
        """Mark every daemon descriptor above 2 close-on-exec (see gotorch.spawn: no run inherits one)."""
        seal_descriptors()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Start the runs of one boundary back to back: what follows each spawn waits for the block's end.

        Inside the block, `start` spawns and counts the run (max_instances sees it at once) and
        returns it; its pipes, timeout and start event are set up when the block ends, so the last
        process of a busy second starts as early as it can. Nothing in the block may wait on the loop.
        """
        if self._batch is not None:  # nested: the outer block sets them up
            yield
            return
        self._batch = []
        try:
            yield
        finally:
            pending, self._batch = self._batch, None
            for run, child in pending:
                self._set_up(run, child)

    def start(self, spec: RunSpec) -> Run | None:
        """Spawn a run. Returns it, or None if it could not start (then on_end has been called)."""
        if self._closing:
            self._spawn_failed(spec, "runner is shutting down")
            return None
        if spec.run_id in self._runs:
            self._spawn_failed(spec, f"run id {spec.run_id!r} is already running")
            return None
        try:
            ident = identity(spec.user, spec.group)
            env = build_env(spec)
            cmd = spec.command
            argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
            child = self._spawner.spawn(argv, env, spec.workdir or ident.home_cwd, uid=ident.uid, gid=ident.gid,
                                        groups=ident.groups)
        except Exception as exc:  # any failure to start is a failed run, never an error in the loop
            self._spawn_failed(spec, _describe(exc))
            return None
        # The spawn returns after the child's exec succeeded: this is when the run really started.
        started_at = time.time()
        start_mono = time.monotonic()
        run = Run(spec, child.popen, child.pid, started_at, start_mono)
        self._runs[spec.run_id] = run
        self._by_pid[run.pid] = run
        self._counts[spec.task] = self._counts.get(spec.task, 0) + 1
        if self._batch is not None:
            self._batch.append((run, child))
        else:
            self._set_up(run, child)
        return run

    def _set_up(self, run: Run, child: Spawned) -> None:
        """Take over a spawned run's pipes, arm its timeout, announce it."""
        spec, popen = run.spec, child.popen
        try:
            files = (popen.stdout, popen.stderr) if popen is not None else (None, None)
            run._streams += [_Stream("stdout", child.stdout, files[0]), _Stream("stderr", child.stderr, files[1])]
            for stream in run._streams:
                # The read end only: the child's write end stays blocking, as programs expect.
                fcntl.fcntl(stream.fd, fcntl.F_SETFL, os.O_NONBLOCK)
            if spec.timeout is not None:
                run._timeout_handle = self._loop.call_later(spec.timeout, self._on_timeout, run)
            self._unwatched.append(run)
            if self._watch_handle is None:
                self._watch_handle = self._loop.call_later(WATCH_AFTER_S, self._watch_pending)
        except Exception as exc:
            self._setup_failed(run, exc)
            return
        started_at = run.started_at
        lateness = (round((started_at - spec.scheduled_ts) * 1000, 3)
                    if spec.scheduled_ts is not None else None)
        # Published on the next loop turn so runs firing on the same boundary are all spawned before
        # any subscriber pays for formatting a log line; it still precedes any output.
        self._loop.call_soon(self._bus.publish,
                             RunStarted(spec.task, spec.run_id, run.pid, run.scheduled_at, lateness,
                                        spec.trigger, spec.attempt, spec.scheduled_ts, started_at,
                                        spec.requested_by))

    def _setup_failed(self, run: Run, exc: Exception) -> None:
        # The loop is closed or broken: do not leave an unwatched process behind.
        spec = run.spec
        self._bus.publish(RunSetupFailed(spec.task, spec.run_id, _describe(exc)))
        run.cause, run.reason = "killed", f"the runner could not watch it: {_describe(exc)}"
        self._stopper.send(run, signal.SIGKILL, "setup_failed", escaped=())
        for stream in list(run._streams):
            self._close_stream(run, stream)
        if run.popen is not None:
            for file in (run.popen.stdout, run.popen.stderr):
                if file is not None:
                    file.close()

    def _watch_pending(self) -> None:
        """Hand the pipes of runs still going WATCH_AFTER_S after their start to the loop's selector."""
        self._watch_handle = None
        # A child that exited while the loop was busy spawning has its SIGCHLD still queued: collect
        # it first, so that it is read and finished now instead of watched and tracked for nothing.
        self.reap()
        # Each run's own age counts, not the first's: the spawns of a busy boundary take milliseconds,
        # and the last of them must get its WATCH_AFTER_S too (most short runs are reaped by then).
        due = time.monotonic() - WATCH_AFTER_S
        unwatched = self._unwatched
        runs = []
        while unwatched and unwatched[0]._start_mono <= due:
            runs.append(unwatched.popleft())
        if unwatched:
            self._watch_handle = self._loop.call_later(unwatched[0]._start_mono - due, self._watch_pending)
        for run in runs:
            if run.ended:
                continue
            try:
                for stream in run._streams:
                    self._watch(run, stream)
            except Exception as exc:
                self._setup_failed(run, exc)
                continue
            if not run.exited:
                # Unreaped, so the pid is still this run's: its start time names it for a daemon
                # that may have to adopt it after a crash. Not on the spawn path: a run this
                # short-lived would be over before anyone could adopt it anyway.
                st = procfs.stat(run.pid)
                if st is not None:
                    run.proc_start = st.start
                    self._bus.publish(RunTracked(run.spec.task, run.spec.run_id, run.pid, st.pgrp, st.start))

    def _watch(self, run: Run, stream: _Stream) -> None:
        if stream.open and not stream.watched:
            self._loop.add_reader(stream.fd, self._on_readable, run, stream)
            stream.watched = True

    def _spawn_failed(self, spec: RunSpec, error: str) -> None:
        run = Run(spec, None, 0, time.time(), time.monotonic())
        run.exited = run.ended = True
        result = RunEnded(spec.task, spec.run_id, None, "failed", None, None, 0.0, 0, 0, error,
                          spec.trigger, spec.attempt, spec.scheduled_ts)
        self._bus.publish(result)
        self._call_on_end(run, result)

    # --- adoption (runs a previous daemon started) ---

    def adopt(self, spec: RunSpec, pid: int, started_at: float, proc_start: int, *, recorded: bool) -> Run:
        """Supervise a run a previous daemon started and left alive (it was killed, or crashed).

        The run counts for max_instances, is stopped like any run (timeout from its real start,
        `torch kill`, stop) and its end is recorded; as it is not our child its exit status cannot
        be read, so unless torch stopped it, it ends `lost`. Its output pipes are read again where
        it still has them (reopened through /proc/PID/fd), so later output is captured.
        """
        now, mono = time.time(), time.monotonic()
        run = Run(spec, None, pid, started_at, mono - max(0.0, now - started_at))
        run.adopted, run.proc_start = True, proc_start
        self._runs[spec.run_id] = run
        self._counts[spec.task] = self._counts.get(spec.task, 0) + 1
        alive = True
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # kernel < 5.3, or it is gone already: a poll notices either
            run._exit_watch = self._loop.call_later(0, self._poll_adopted, run)
        else:
            run._exit_watch = pidfd
            self._loop.add_reader(pidfd, self._adopted_exit, run)
            st = procfs.stat(pid)
            if st is None or st.start != proc_start:  # it died (and the pid was reused) since it was found
                alive = False
                self._loop.call_soon(self._adopted_exit, run)
        # Its pipes only once the pidfd pins the process and its start time says it is the run's.
        for name, fd in _reattach_output(pid) if alive else ():
            stream = _Stream(name, fd)  # closed by _close_stream
            run._streams.append(stream)
            self._watch(run, stream)
        if spec.timeout is not None:  # its clock started with the run, not with this daemon
            run._timeout_handle = self._loop.call_later(max(0.0, spec.timeout - (now - started_at)),
                                                        self._on_timeout, run)
        self._bus.publish(RunAdopted(spec.task, spec.run_id, pid, iso_utc(started_at), run.scheduled_at,
                                     spec.trigger, spec.attempt, bool(run._streams), recorded, started_at,
                                     spec.scheduled_ts, proc_start))
        return run

    def _adopted_exit(self, run: Run) -> None:
        if run.exited or run.ended:
            return
        self._unwatch_exit(run)
        self._on_exit(run, None)

    def _poll_adopted(self, run: Run) -> None:
        run._exit_watch = None
        if run.exited or run.ended:
            return
        st = procfs.stat(run.pid)
        if st is None or st.state == "Z" or st.start != run.proc_start:
            self._on_exit(run, None)
        else:
            run._exit_watch = self._loop.call_later(ADOPTED_POLL_S, self._poll_adopted, run)

    def _unwatch_exit(self, run: Run) -> None:
        watch, run._exit_watch = run._exit_watch, None
        if isinstance(watch, int):
            with contextlib.suppress(Exception):
                self._loop.remove_reader(watch)
            os.close(watch)
        elif watch is not None:
            watch.cancel()

    # --- output ---

    def _on_readable(self, run: Run, stream: _Stream) -> None:
        for _ in range(READS_PER_WAKEUP):
            if not stream.open:
                return
            try:
                if run.remaining > 0:
                    data = os.read(stream.fd, CHUNK)
                    n = len(data)
                else:
                    # Over budget: count and discard, without allocating per read.
                    n = os.readv(stream.fd, [self._scratch])
                    data = b""
            except BlockingIOError:
                return
            except OSError:
                n = 0
            if n == 0:
                self._close_stream(run, stream)
                self._maybe_finish(run)
                return
            if data:
                self._consume(run, stream, data)
            else:
                run.dropped_bytes += n

    def _consume(self, run: Run, stream: _Stream, data: bytes) -> None:
        start = 0
        size = len(data)
        while run.remaining > 0:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            end = nl + 1
            if stream.partial:
                stream.partial += data[start:end]
                line = bytes(stream.partial)
                stream.partial.clear()
            else:
                line = data[start:end]
            start = end
            self._emit(run, stream, line)
        if run.remaining <= 0:
            run.dropped_bytes += size - start
            self._drop_partials(run)
            return
        if start < size:
            stream.partial += data[start:]
            # Never hold more of one line than could be logged (or than LINE_MAX): memory stays
            # bounded however long the line is.
            if len(stream.partial) >= min(run.remaining, LINE_MAX):
                line = bytes(stream.partial)
                stream.partial.clear()
                self._emit(run, stream, line)
                if run.remaining <= 0:
                    self._drop_partials(run)

    def _emit(self, run: Run, stream: _Stream, line: bytes) -> None:
        size = len(line)
        room = run.remaining
        if size > room:
            run.dropped_bytes += size - room
            line = line[:room]
            size = room
        run.output_bytes += size
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        self._bus.publish(RunOutput(run.spec.task, run.spec.run_id, stream.name, line.decode("utf-8", "replace")))

    def _drop_partials(self, run: Run) -> None:
        for s in run._streams:
            if s.partial:
                run.dropped_bytes += len(s.partial)
                s.partial.clear()

    def _close_stream(self, run: Run, stream: _Stream) -> None:
        if not stream.open:
            return
        stream.open = False
        if stream.watched:
            stream.watched = False
            with contextlib.suppress(Exception):
                self._loop.remove_reader(stream.fd)
        if stream.partial:
            # A final line without a newline is still a line.
            line = bytes(stream.partial)
            stream.partial.clear()
            if run.remaining > 0:
                self._emit(run, stream, line)
            else:
                run.dropped_bytes += len(line)
        with contextlib.suppress(OSError):
            if stream.file is not None:
                stream.file.close()
            else:
                os.close(stream.fd)

    # --- exits ---

    def reap(self) -> None:
        """Collect every exited child (runs and reparented orphans). Call it on SIGCHLD.

        Never blocks; safe to call at any time and as often as wanted.
        """
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            run = self._by_pid.pop(pid, None)
            if run is None:
                self._bus.publish(OrphanReaped(pid, status))
                continue
            self._on_exit(run, status, usage)

    def _on_exit(self, run: Run, status: int | None, usage: Any = None) -> None:
        run.exited = True
        run.exit_status = status
        if usage is not None:  # the direct child's own rusage (and that of children it waited for)
            run.cpu_s = round(usage.ru_utime + usage.ru_stime, 3)
            run.max_rss_kb = int(usage.ru_maxrss)  # kilobytes on Linux
        run._exit_mono = time.monotonic()
        if run.popen is not None and status is not None:
            # Popen must never wait for this pid itself: once reaped, the number may be reused.
            run.popen.returncode = os.waitstatus_to_exitcode(status)
        if run._timeout_handle is not None:
            run._timeout_handle.cancel()
            run._timeout_handle = None
        for stream in run._streams:
            if stream.open and not stream.watched:
                # Ended before its pipes were watched: read what it wrote now. Still open (a
                # grandchild holds the pipe, or more is queued than one call reads): watch it.
                self._on_readable(run, stream)
                try:
                    self._watch(run, stream)
                except Exception:  # the loop is closing: what was written has been read
                    self._close_stream(run, stream)
        if any(s.open for s in run._streams):
            run._grace_handle = self._loop.call_later(PIPE_GRACE_S, self._pipe_grace_over, run)
        else:
            self._finish(run)

    def _pipe_grace_over(self, run: Run) -> None:
        run._grace_handle = None
        for stream in run._streams:
            if stream.open:
                self._on_readable(run, stream)  # what is already in the pipe is still logged
                self._close_stream(run, stream)
        self._maybe_finish(run)

    def _maybe_finish(self, run: Run) -> None:
        if run.exited and not run.ended and not any(s.open for s in run._streams):
            self._finish(run)

    def _finish(self, run: Run, error: str | None = None) -> None:
        if run.ended:
            return
        run.ended = True
        for handle in (run._timeout_handle, run._grace_handle):
            if handle is not None:
                handle.cancel()
        run._timeout_handle = run._grace_handle = None
        self._unwatch_exit(run)
        for stream in run._streams:
            self._close_stream(run, stream)
        self._runs.pop(run.spec.run_id, None)
        left = self._counts.get(run.spec.task, 0) - 1
        if left > 0:
            self._counts[run.spec.task] = left
        else:
            self._counts.pop(run.spec.task, None)

        exit_code: int | None = None
        sig: str | None = None
        if run.exit_status is not None:
            code = os.waitstatus_to_exitcode(run.exit_status)
            if code >= 0:
                exit_code = code
            else:
                sig = _signal_name(-code)
        status: RunStatus
        if run.cause is not None:
            status = run.cause
        elif run.adopted and run.exit_status is None:
            status, error = "lost", error or LOST_ADOPTED
        elif exit_code == 0:
            status = "ok"
        else:
            status = "failed"  # non-zero exit, or a signal we did not send (OOM killer, ...)
        end_mono = run._exit_mono if run._exit_mono is not None else time.monotonic()
        duration = round(end_mono - run._start_mono, 3)
        self._stopper.settle(run)
        result = RunEnded(run.spec.task, run.spec.run_id, run.pid, status, exit_code, sig, duration,
                          run.output_bytes, run.dropped_bytes, error, run.spec.trigger, run.spec.attempt,
                          run.spec.scheduled_ts, run.cpu_s, run.max_rss_kb,
                          run.reason if run.cause is not None else None)
        self._bus.publish(result)
        self._call_on_end(run, result)

    def _call_on_end(self, run: Run, result: RunResult) -> None:
        try:
            self._on_end(run, result)
        except Exception as exc:
            self._bus.publish(OnEndFailed(run.spec.task, run.spec.run_id, exc))

    # --- stopping ---

    def _on_timeout(self, run: Run) -> None:
        run._timeout_handle = None
        if run.exited or run.ended:
            return
        if run.cause is None:
            timeout = run.spec.timeout
            run.cause = "timeout"
            run.reason = f"timeout after {format_duration(timeout)}" if timeout is not None else "timeout"
        self._bus.publish(RunTimedOut(run.spec.task, run.spec.run_id, run.pid, run.spec.timeout))
        self._stopper.term_then_kill(run, run.spec.kill_timeout, "timeout")

    def terminate(self, run: Run, reason: str = "stopped on request", sig: signal.Signals = signal.SIGTERM) -> None:
        """Send `sig` (TERM) to the run's process group and escaped processes; KILL after its kill_timeout.

        The run ends with status `killed` and `reason` (e.g. "task changed by a reload") unless it
        had already exited, or was already being stopped (timeout, shutdown): that first reason stays.
        A stop already counting down to its KILL keeps its clock; `sig` is still sent.
        """
        if run.ended and not self._stopper.escalating(run.spec.run_id):
            return
        if sig == signal.SIGKILL:
            self.kill_now(run, reason)
            return
        if not run.exited and run.cause is None:
            run.cause, run.reason = "killed", reason
        if self._stopper.escalating(run.spec.run_id):
            if sig != signal.SIGTERM:
                self._stopper.send(run, sig, "terminate")
            return
        self._stopper.term_then_kill(run, run.spec.kill_timeout, "terminate", sig)

    def kill_now(self, run: Run, reason: str = "killed on request") -> None:
        """SIGKILL the run's process group and escaped processes at once (e.g. a second SIGTERM).

        A run not yet exited ends `killed` with `reason`, which replaces the reason of a stop already
        under way (the KILL is what ends it now); only a run that timed out keeps its status and reason.
        """
        if not self._stopper.cancel(run.spec.run_id) and run.ended:
            return
        if not run.exited and run.cause != "timeout":
            run.cause, run.reason = "killed", reason
        self._stopper.kill_all([run], "kill")

    async def shutdown(self, stop_timeout: float, reason: str = "daemon stopping") -> None:
        """Stop everything: TERM all runs (and orphans), KILL what is left after `stop_timeout`.

        Runs not stopped for another reason already end `killed` with `reason` (the caller says why,
        e.g. "daemon stopping (SIGTERM)"; the runner knows nothing of signals sent to the daemon).

        What is left includes what a run started outside its group in reaction to the TERM, even
        once the run has ended: whatever carries the id of a run we stopped gets a TERM and, if
        still there after `stop_timeout`, a KILL.

        Returns once every run has ended (each logged and reported through on_end) and every child
        of this process has been reaped, or after bounded waits if something refuses to die.
        """
        self._closing = True
        self.reap()
        deadline = time.monotonic() + stop_timeout
        runs = list(self._runs.values())
        for run in runs:
            if not run.exited and run.cause is None:
                run.cause, run.reason = "killed", reason
            if run._timeout_handle is not None:
                run._timeout_handle.cancel()
                run._timeout_handle = None
        run_ids = [r.spec.run_id for r in runs]
        uids = self._stopper.uids()  # now, while every run is still here
        escaped = pids_by_run_id(run_ids, uids)
        for run in runs:
            self._stopper.send(run, signal.SIGTERM, "shutdown", escaped.get(run.spec.run_id, []))
        self._signal_orphans(signal.SIGTERM)
        await self._wait_until(lambda: not self._runs, stop_timeout)

        # Runs that ended may have answered the TERM by starting processes outside their groups, and
        # members of their groups may still be on their way out: TERM the newcomers, and give them
        # all what is left of stop_timeout, like the runs.
        termed = {pid for pids in escaped.values() for pid in pids}
        found = pids_by_run_id(run_ids, uids)
        for run in runs:
            late = [p for p in self._stopper.outside_group(run, found.get(run.spec.run_id, [])) if p not in termed]
            if late:
                self._stopper.send(run, signal.SIGTERM, "shutdown", late, group=False)
        kin = [pid for pids in found.values() for pid in pids]
        await self._wait_until(lambda: not any(procfs.alive(p) for p in kin), deadline - time.monotonic())

        # What is still here refused TERM: KILL it, everything carrying the id of a run we stopped,
        # and every pending escalation, now.
        pending = self._stopper.cancel_all()
        self._stopper.kill_all({r.spec.run_id: r for r in [*runs, *pending]}.values(), "shutdown")
        await self._wait_until(lambda: not self._runs, SHUTDOWN_KILL_WAIT_S + PIPE_GRACE_S)
        for run in list(self._runs.values()):
            # Unkillable (e.g. stuck in uninterruptible sleep): report it rather than hang forever.
            if run.popen is not None and run.popen.returncode is None:
                run.popen.returncode = -signal.SIGKILL
            self._by_pid.pop(run.pid, None)
            self._finish(run, error="did not exit after SIGKILL")

        # Orphans (reparented to us, the subreaper) belong to no run: nothing may outlive us. Each
        # one killed hands its own children to us, so keep killing new ones while we wait.
        killed: set[int] = set()

        def no_children_left() -> bool:
            killed.update(self._signal_orphans(signal.SIGKILL, skip=killed))
            return not procfs.children_of(os.getpid())

        await self._wait_until(no_children_left, ORPHAN_REAP_WAIT_S)
        left = procfs.children_of(os.getpid())
        if left:
            self._bus.publish(ChildrenLeft(left))
        self._spawner.close()  # nothing starts any more (_closing): give back /dev/null and the directory

    def _signal_orphans(self, sig: signal.Signals, skip: set[int] | None = None) -> list[int]:
        """Signal our children that are no run's main process (and not in `skip`); return them."""
        orphans = [pid for pid in procfs.children_of(os.getpid())
                   if pid not in self._by_pid and (skip is None or pid not in skip)]
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if orphans:
            self._bus.publish(OrphansSignalled(sig.name, orphans))
        return orphans

    async def _wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            if done() or time.monotonic() >= deadline:
                return
            await asyncio.sleep(_POLL_S)


def _reattach_output(pid: int) -> list[tuple[str, int]]:
    """Read ends reopened on the output pipes `pid` still has as stdout/stderr, as (stream, fd).

    Only anonymous pipes (what the previous daemon gave the run): a file or named FIFO the run
    redirected to is not ours to read. One fd per pipe (stderr is often stdout's pipe).
    """
    found: list[tuple[str, int]] = []
    seen: set[str] = set()
    for n, name in ((1, "stdout"), (2, "stderr")):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{n}")
            if not link.startswith("pipe:") or link in seen:
                continue
            fd = os.open(f"/proc/{pid}/fd/{n}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or f"pipe:[{st.st_ino}]" != link:  # it changed under us
            os.close(fd)
            continue
        seen.add(link)
        found.append((name, fd))
    return found


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
