"""Becoming a daemon, and nothing about tasks: state paths, the flock pidfile, the double fork,
readiness reporting to the launcher and to systemd (sd_notify).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gotorch import procfs
from gotorch.history import DB_NAME
from gotorch.trustedfs import ensure_dir, open_state_file

STATE_DIR_ENV = "TORCH_STATE_DIR"


@dataclass(frozen=True)
class Paths:
    """Where the daemon keeps its files."""

    run_dir: Path  # pidfile, control socket
    state_dir: Path  # status, history; $TORCH_STATE_DIR of every run
    log_dir: Path

    @property
    def pidfile(self) -> Path:
        """The flock-held pidfile."""
        return self.run_dir / "torch.pid"

    @property
    def logfile(self) -> Path:
        """The JSON-lines event log."""
        return self.log_dir / "torch.log"

    @property
    def history(self) -> Path:
        """The run-history database (SQLite)."""
        return self.state_dir / DB_NAME

    @property
    def socket(self) -> Path:
        """The control socket (status, reload)."""
        return self.run_dir / "torch.sock"

    def create(self) -> None:
        """Create the directories (0750, whatever the umask) and check them from `/` down.

        Refuses (trustedfs.Untrusted) a directory on the way that another user owns or can write:
        whoever can write where root creates files can make root write anywhere.
        """
        euid = os.geteuid()
        for d in sorted({self.run_dir, self.state_dir, self.log_dir}):
            ensure_dir(str(d), euid, 0o750)


def resolve_paths(state_dir: str | None) -> Paths:
    """`--state-dir` / TORCH_STATE_DIR puts everything in one directory; otherwise FHS (root) or XDG paths.

    Never /tmp: a world-writable directory lets any user plant a pidfile or socket.
    """
    chosen = state_dir or os.environ.get(STATE_DIR_ENV)
    if chosen:
        d = Path(chosen).absolute()
        return Paths(d, d, d)
    if os.geteuid() == 0:
        return Paths(Path("/run/torch"), Path("/var/lib/torch"), Path("/var/log/torch"))
    home = Path(os.environ.get("HOME") or Path.home())
    state = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state") / "torch"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Paths(Path(runtime) / "torch" if runtime else state, state, state)


def sd_notify(message: str) -> None:
    """Send `message` to systemd's NOTIFY_SOCKET if set (Type=notify); silently nothing otherwise."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError:
        pass


class AlreadyRunning(Exception):
    """Another daemon holds the pidfile lock."""

    def __init__(self, pid: int | None, path: Path) -> None:
        who = f"pid {pid}" if pid else "unknown pid"
        super().__init__(f"torch is already running ({who}, lock held on {path})")
        self.pid = pid


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(raw) if raw.isdigit() else None
    except OSError:
        return None


class Pidfile:
    """A pidfile whose `flock` is the single source of truth for "is the daemon running".

    The lock is taken before forking and inherited by the daemon (flock locks belong to the open file
    description), so a second `torch start` fails at once, visibly. A pidfile whose lock nobody holds
    is stale (crash, kill -9) and is taken over.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.stale_pid: int | None = None

    def acquire(self) -> None:
        """Open and lock the pidfile; AlreadyRunning if another process holds it."""
        fd = open_state_file(str(self.path), os.O_RDWR | os.O_CREAT, 0o640)
        # `torch status`/`stop` probe the lock by taking it shared for an instant; retry briefly so
        # a probe racing this start is not mistaken for a running daemon.
        for attempt in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 19:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise AlreadyRunning(pid, self.path) from None
                time.sleep(0.01)
        self.stale_pid = _read_pid(fd)
        self.fd = fd

    def write(self, pid: int) -> None:
        """Record `pid` (the daemon's own, after forking)."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)
        os.fsync(self.fd)

    def release(self) -> None:
        """Remove the file, then drop the lock (in that order, so no one can lock a file about to vanish)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            # Only unlink the file that is still ours (not one a later daemon recreated).
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def running_pid(path: Path) -> int | None:
    """The pid of the daemon holding the pidfile lock at `path`, or None if no daemon holds it.

    PermissionError if the pidfile exists but we may not read it (a user asking about root's
    daemon): that is "cannot tell", not "not running".
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:
        raise
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_torch_process(pid: int) -> bool:
    """True if `pid` is a torch daemon (not a recycled pid now owned by something else)."""
    cmd = procfs.cmdline(pid)  # None: gone or not ours to read; []: a zombie
    if not cmd:
        return False
    text = " ".join(cmd)
    return "start" in cmd and ("gotorch" in text or any(Path(c).name == "torch" for c in cmd[:2]))


def _noop(signum: int, frame: object) -> None:
    """Placeholder handler: unlike SIG_IGN, a handler is reset to default in exec'd children."""


@dataclass
class Launch:
    """The launcher's side of a background start."""

    pid: int | None
    error: str | None


READY_TIMEOUT = 60.0


def daemonize(pidfile: Pidfile, body: Callable[[Callable[[], None], Callable[[str], None]], int]) -> Launch:
    """Fork off the daemon and wait for it to say it is ready; return (in the launcher) what happened.

    In the daemon, `body(ready, fail)` runs inside python-daemon's DaemonContext (double fork, setsid,
    umask 027, cwd /, fds closed except the pidfile and the readiness pipe). It must call `ready()`
    once serving, or `fail(msg)`; its return value is the daemon's exit code. The pidfile lock is
    held already and is released (file removed) when the daemon exits.
    """
    import daemon as pydaemon

    assert pidfile.fd is not None
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        os.close(wfd)
        os.close(pidfile.fd)  # the daemon keeps the lock through its own copy
        pidfile.fd = None
        try:
            return _await_ready(rfd, child)
        finally:
            os.close(rfd)
    # First child: python-daemon forks again (and exits the intermediate processes with 0).
    os.close(rfd)
    code = 1
    try:
        ctx = pydaemon.DaemonContext(
            working_directory="/", umask=0o027, detach_process=True, prevent_core=True,
            files_preserve=[pidfile.fd, wfd],
            signal_map={signal.SIGTSTP: _noop, signal.SIGTTIN: _noop, signal.SIGTTOU: _noop,
                        signal.SIGTERM: "terminate"},
        )
        with ctx:

            def ready() -> None:
                _send(wfd, f"ready {os.getpid()}\n")

            def fail(msg: str) -> None:
                _send(wfd, f"error {msg}\n")

            try:
                # Inside the try: a full disk fails this write, and the launcher must hear why (the
                # log may not even exist yet).
                pidfile.write(os.getpid())
                code = body(ready, fail)
            except BaseException as exc:
                fail(f"{type(exc).__name__}: {exc}")
                raise
            finally:
                pidfile.release()
    finally:
        os._exit(code)


def _send(fd: int, msg: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, msg.replace("\n", " ").rstrip().encode() + b"\n")


def _await_ready(rfd: int, child: int) -> Launch:
    deadline = time.monotonic() + READY_TIMEOUT
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return Launch(None, f"the daemon did not report ready within {READY_TIMEOUT:.0f} s")
        r, _, _ = select.select([rfd], [], [], left)
        if not r:
            continue
        chunk = os.read(rfd, 4096)
        if not chunk:
            break
        buf += chunk
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child, 0)  # the intermediate process; it exits as soon as it has forked again
    line = buf.decode(errors="replace").strip()
    if line.startswith("ready "):
        return Launch(int(line.split()[1]), None)
    if line.startswith("error "):
        return Launch(None, line[len("error "):])
    return Launch(None, "the daemon exited during start-up (see its log)")
