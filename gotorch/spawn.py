"""How a run's process starts: posix_spawn where it can, subprocess.Popen where it must.

The common case (the daemon's own user, a command with a path) goes through `os.posix_spawn`:
glibc starts the child with CLONE_VFORK and reports a failed exec as an error, so the call returns
once the program runs. It costs the daemon about half of what `Popen` does (measured here:
~85 us against ~160 us of CPU a spawn, ~100 us less until the exec), and a second's fires go out
one after the other, so each spawn's cost is lateness for the ones after it.

Everything Popen would do for us is done here, explicitly:
- stdin is /dev/null, stdout and stderr are pipes whose read ends stay with us (non-inheritable);
- the child gets a session (and process group) of its own: setsid;
- SIGPIPE and SIGXFSZ, which Python ignores, go back to their default actions, and the child
  starts with no signal blocked;
- the working directory: posix_spawn has no chdir action before Python 3.13, so the daemon
  changes its own directory around the call (all its paths are absolute) and returns to where it
  was through a descriptor held open for that;
- no other descriptor reaches the program: Popen closes them in the child, posix_spawn cannot
  (no closefrom before Python 3.13), so `seal_descriptors` marks every descriptor above 2
  close-on-exec. Python opens every descriptor so already; what does not (a library's inotify
  descriptor, one inherited from whoever started the daemon) is caught by the sweep, which the
  daemon runs at start and after every second's fires.

A run as another user or group (setuid, setgid, setgroups), or a command without a slash (a PATH
search in the run's own environment, which posix_spawnp would do in the daemon's), or a pipe that
landed on descriptors 0-2 (the daemon's own were closed) takes the Popen path, as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Ignored by Python, and so inherited as ignored across exec unless reset (Popen's restore_signals).
_DEFAULT_SIGNALS = tuple(s for s in (getattr(signal, "SIGPIPE", None), getattr(signal, "SIGXFSZ", None))
                         if s is not None)
_FAST = hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_DUP2")


@dataclass(slots=True)
class Spawned:
    """A started child: its pid and the read ends of its stdout and stderr pipes (ours to close).

    `popen` is set when the Popen path was taken (its files own the two descriptors then).
    """

    pid: int
    stdout: int
    stderr: int
    popen: subprocess.Popen[bytes] | None = None


class Spawner:
    """Starts processes for the runner (one per daemon: it keeps /dev/null and the cwd open)."""

    def __init__(self) -> None:
        self._devnull: int | None = None
        self._home: int | None = None  # the daemon's own working directory, to come back to

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str, *, uid: int | None = None,
              gid: int | None = None, groups: Sequence[int] | None = None) -> Spawned:
        """Start `argv` in a new session with `env` in `cwd` (as `uid`/`gid`/`groups` when given).

        Raises OSError (or ValueError, TypeError for an unusable argument) if it cannot start.
        """
        if _FAST and uid is None and gid is None and groups is None and "/" in argv[0]:
            fast = self._posix_spawn(argv, env, cwd)
            if fast is not None:
                return fast
        popen = subprocess.Popen(
            argv, bufsize=0, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True, start_new_session=True, env=env, cwd=cwd, user=uid, group=gid, extra_groups=groups,
        )
        assert popen.stdout is not None and popen.stderr is not None
        return Spawned(popen.pid, popen.stdout.fileno(), popen.stderr.fileno(), popen)

    def close(self) -> None:
        """Give back the descriptors the spawner keeps."""
        for fd in (self._devnull, self._home):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._devnull = self._home = None

    def _posix_spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> Spawned | None:
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if self._home is None:
            self._home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
        except BaseException:
            _close(out_r, out_w)
            raise
        if min(out_w, err_w) <= 2:
            # dup2 onto its own number would leave the close-on-exec flag set: Popen handles that.
            _close(out_r, out_w, err_r, err_w)
            return None
        actions = [(os.POSIX_SPAWN_DUP2, self._devnull, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                   (os.POSIX_SPAWN_DUP2, err_w, 2)]
        try:
            os.chdir(cwd)
            try:
                pid = os.posix_spawn(argv[0], list(argv), env, file_actions=actions, setsid=True,
                                     setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
            finally:
                os.fchdir(self._home)
        except BaseException:
            _close(out_r, out_w, err_r, err_w)
            raise
        _close(out_w, err_w)
        return Spawned(pid, out_r, err_r)


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def seal_descriptors() -> list[int]:
    """Mark every descriptor of this process above 2 close-on-exec; return those that were not.

    See the module docstring: with posix_spawn, this is what keeps the daemon's descriptors out of
    the programs it runs.
    """
    sealed: list[int] = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return sealed
    for name in names:
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                os.set_inheritable(fd, False)
                sealed.append(fd)
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return sealed
