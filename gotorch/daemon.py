"""Becoming a daemon, and nothing about tasks: state paths, the flock pidfile, the double fork,
readiness reporting to the launcher and to systemd (sd_notify).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

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
    def socket(self) -> Path:
        """The control socket (status, reload)."""
        return self.run_dir / "torch.sock"

    def create(self) -> None:
        """Create the directories, private to the daemon's user (0750), refusing symlinks."""
        for d in {self.run_dir, self.state_dir, self.log_dir}:
            d.mkdir(mode=0o750, parents=True, exist_ok=True)
            if d.is_symlink():
                raise OSError(f"{d} is a symlink; refusing to use it as a state directory")


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
