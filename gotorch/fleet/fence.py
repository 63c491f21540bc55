"""Self-fencing that works when the daemon cannot: a small watchdog process guarding fleet daemon copies.

The holder of a fleet daemon task's election must stop its copies before its etcd lease can
expire, because then another host starts one. The daemon's loop does that (gate.py), but a daemon
that is frozen (SIGSTOP, a stalled VM) or killed (-9, OOM) cannot, and its copies would run on
beside the new holder's. So the daemon also hands each renewal's deadline and the process groups of
its copies to this watchdog, a separate process that is not frozen with the daemon: it SIGKILLs the
groups when the deadline passes without a newer one, and at once when the daemon goes away (its
pipe closes) without saying `exit`.

Protocol (lines on the watchdog's stdin): `arm DEADLINE PGID... -- RUNID...` (CLOCK_BOOTTIME
seconds; no PGID: nothing to guard), `exit` (the daemon stops cleanly: kill nothing), EOF (the
daemon died: kill now). Killing is what the runner does: each process group, then every process
carrying one of the run ids in TORCH_RUN_KEY (those that left their group: setsid, double fork),
scanning /proc again while that finds any.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Iterable

from gotorch import procfs, reload_process


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Fence:
    """The daemon's end: start() the watchdog, arm() it at each renewal, close() at a clean stop."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self._fd: int | None = None
        self.dead = False  # its pipe broke: the watchdog is gone (the gate starts another)
        self._unsent = b""  # what a full pipe did not take yet: lines must arrive whole and in order

    def start(self) -> None:
        """Start the watchdog (OSError if it cannot be: then only the loop fences)."""
        r, w = os.pipe()
        try:
            self.pid = os.posix_spawn(sys.executable, reload_process.python_argv("gotorch.fleet.fence"),
                                      reload_process.clean_env(), file_actions=[
                                          (os.POSIX_SPAWN_DUP2, r, 0),
                                          (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                                          (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)], setsid=True)
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        os.set_blocking(w, False)
        os.set_inheritable(w, False)
        self._fd = w

    def arm(self, deadline: float, groups: Iterable[int], run_ids: Iterable[str] = ()) -> None:
        """Kill `groups` (and `run_ids`' escaped processes) at `deadline` (CLOCK_BOOTTIME) unless armed
        again before; no groups: disarm."""
        self._send(f"arm {deadline:.3f} {' '.join(str(g) for g in groups)} -- {' '.join(run_ids)}\n")

    def close(self) -> None:
        """A clean stop: the watchdog exits without killing anything."""
        self._send("exit\n")
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _send(self, line: str) -> None:
        if self._fd is None:
            return
        self._unsent += line.encode()
        try:
            n = os.write(self._fd, self._unsent)
            self._unsent = self._unsent[n:]
        except BlockingIOError:  # a full pipe: it hangs; the next renewal tries again
            pass
        except OSError:  # it died
            self.dead = True
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _kill(groups: list[int], run_ids: list[str]) -> None:
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGKILL)
    if not run_ids:
        return
    for _ in range(6):  # a pass that kills nobody ends it (an escaped process may fork meanwhile)
        found = [p for pids in procfs.pids_by_env("TORCH_RUN_KEY", run_ids).values() for p in pids]
        for p in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        if not found:
            return


def main() -> None:
    """The watchdog: guard the groups it was given until told to exit; kill them when it must.

    (procfs is imported with this module, at start: not when it must kill, when the files may have changed.)
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the daemon's stop must not take the guard down first
    deadline, buf = 0.0, b""
    groups: list[int] = []
    run_ids: list[str] = []
    while True:
        # select() sleeps on CLOCK_MONOTONIC, which stops during a suspend; the deadline is on
        # CLOCK_BOOTTIME, which does not: wake often enough to notice time that passed asleep.
        timeout = min(0.25, max(0.0, deadline - _boottime())) if groups else None
        ready, _, _ = select.select([0], [], [], timeout)
        if ready:
            data = os.read(0, 4096)
            if not data:  # the daemon is gone without a word: its copies must not outlive it
                _kill(groups, run_ids)
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                words = line.split()
                if words[:1] == [b"exit"]:
                    return
                if words[:1] == [b"arm"] and len(words) >= 2:
                    with contextlib.suppress(ValueError):  # a garbled line changes nothing
                        sep = words.index(b"--") if b"--" in words else len(words)
                        deadline, groups = float(words[1]), [int(w) for w in words[2:sep]]
                        run_ids = [w.decode() for w in words[sep + 1:]]
        if groups and _boottime() >= deadline:
            _kill(groups, run_ids)
            groups, run_ids = [], []
