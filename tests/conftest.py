"""Shared fixtures: a real `torch` daemon process started on a temporary task file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

TORCH = [sys.executable, "-m", "gotorch"]
# A task file with one 1/s task that appends its scheduled second to {out}.
TICK = """\
version: 1
tasks:
  - name: tick
    schedule: "* * * * * *"
    command: echo "$TORCH_SCHEDULED_AT" >> {out}
"""


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05,
               what: str | Callable[[], str] = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds.

    `what` names the awaited condition in the failure message; a callable is evaluated at failure time.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            label = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {label or predicate}")
        time.sleep(interval)


class Torch:
    """A torch daemon started in the foreground by a test, with its JSON events readable as dicts."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config = tmp / "tasks.yaml"
        self.state = tmp / "state"
        self.stderr_path = tmp / "torch.stderr"
        self.log_path = self.stderr_path  # where events() reads: stderr (foreground) or torch.log
        self.proc: subprocess.Popen[bytes] | None = None
        self.bg_pid: int | None = None

    def write(self, text: str) -> Path:
        """Write the task file (dedented)."""
        self.config.write_text(textwrap.dedent(text))
        return self.config

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"TORCH_HOST_IPS": "127.0.0.1", "TORCH_STATE_DIR": str(self.state)})
        env.update(extra)
        return env

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run a `torch` subcommand to completion."""
        return subprocess.run([*TORCH, *args], capture_output=True, text=True, env=self.env(**extra),
                               cwd=self.tmp, timeout=60)

    def start(self, *args: str, ready: bool = True, **extra: str) -> subprocess.Popen[bytes]:
        """Start `torch start --foreground -c tasks.yaml`; wait for its daemon.start event."""
        self.log_path = self.stderr_path
        err = open(self.stderr_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([*TORCH, "start", "--foreground", "-c", str(self.config), *args],
                                     stdout=err, stderr=err, stdin=subprocess.DEVNULL, env=self.env(**extra),
                                     cwd=self.tmp)
        err.close()
        if ready:
            wait_until(lambda: self.find("daemon.start") or self.proc.poll() is not None, 30, what="daemon.start")
            assert self.proc.poll() is None, self.stderr_path.read_text()
        return self.proc

    def start_bg(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """`torch start -c tasks.yaml` (double fork); events are then read from the daemon's torch.log."""
        r = self.run("start", "-c", str(self.config), *args, **extra)
        self.log_path = self.state / "torch.log"
        if r.returncode == 0:
            self.bg_pid = self.pid()
        return r

    def pid(self) -> int | None:
        """The pid in the pidfile, if any."""
        try:
            return int((self.state / "torch.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def daemon_pid(self) -> int | None:
        """The pid of the daemon this helper started (foreground process or background daemon)."""
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        return self.bg_pid

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Every JSON event so far (optionally only `name` events whose fields equal `match`)."""
        out = []
        try:
            text = self.log_path.read_text()
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if name is not None and ev.get("event") != name:
                continue
            if all(ev.get(k) == v for k, v in match.items()):
                out.append(ev)
        return out

    def find(self, name: str, **match: Any) -> dict[str, Any] | None:
        found = self.events(name, **match)
        return found[0] if found else None

    def wait_event(self, name: str, timeout: float = 20, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        """Wait until at least `count` matching events were logged; return them."""
        return wait_until(lambda: (lambda evs: evs if len(evs) >= count else None)(self.events(name, **match)),
                          timeout, what=f"{count} x {name} {match}")  # type: ignore[no-any-return]

    def run_pids(self) -> list[int]:
        """Live processes started by this daemon's runs (they carry its TORCH_STATE_DIR), minus the daemon."""
        daemons = {self.proc.pid if self.proc is not None else -1, self.bg_pid or -1}
        return [p for p in pids_with_env("TORCH_STATE_DIR", str(self.state)) if p not in daemons]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the daemon and wait for it to exit; return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def torch_daemon(tmp_path: Path) -> Iterator[Torch]:
    """A Torch helper; whatever it started is killed at the end of the test."""
    t = Torch(tmp_path)
    yield t
    if t.proc is not None and t.proc.poll() is None:
        t.proc.kill()
        t.proc.wait(timeout=10)
    # Background daemons are not our children: find them (and their runs) by their state directory.
    for pid in pids_with_env("TORCH_STATE_DIR", str(t.state)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _proc_stat(pid: int | str) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return fields[0].decode(), int(fields[1])


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def pids_with_env(var: str, value: str | None = None) -> list[int]:
    """Live (non-zombie) processes whose environment has `var` (= `value`, if given)."""
    needle = f"{var}=".encode() + (value.encode() if value is not None else b"")
    found = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        stat = _proc_stat(pid)
        if stat is not None and stat[0] != "Z" and any(
                e.startswith(needle) if value is None else e == needle for e in env):
            found.append(pid)
    return found


def zombie_children(pid: int) -> list[int]:
    """Zombie processes whose parent is `pid`."""
    return [p for p in _pids() if _proc_stat(p) == ("Z", pid)]


def describe_pids(pids: list[int]) -> str:
    """`pid state ppid cmdline` for each pid, for failure messages."""
    out = []
    for pid in pids:
        stat = _proc_stat(pid)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            if stat is None:
                raise OSError
            out.append(f"{pid} {stat[0]} ppid={stat[1]} {cmd}")
        except OSError:
            out.append(f"{pid} gone")
    return "; ".join(out)


class Reports:
    """An on_error that records what a history writer thread reported (thread-safe)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, message: str) -> None:
        with self.lock:
            self.messages.append(message)

    def starting(self, prefix: str) -> list[str]:
        with self.lock:
            return [m for m in self.messages if m.startswith(prefix)]


# How many seconds of fires a loaded test machine may legitimately miss in a real-clock test: a
# daemon starved of CPU for over a second must log them as `missed` (never lose them silently), and
# the tests that check "every second" accept that much, logged, rather than flake on a busy host.
MISSED_ALLOWED = 2


def missed_seconds(t: Torch, task: str) -> set[int]:
    """The seconds `task`'s `missed` events account for (each event: its first..last window)."""
    out: set[int] = set()
    for ev in t.events("missed", task=task):
        first = int(datetime.fromisoformat(ev["first"].replace("Z", "+00:00")).timestamp())
        last = int(datetime.fromisoformat(ev["last"].replace("Z", "+00:00")).timestamp())
        out.update(range(first, last + 1))
    return out


def deny_open(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make `os.open` of `path` fail with EACCES: tests may run as root, which chmod cannot lock out."""
    real_open = os.open

    def deny(file: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
