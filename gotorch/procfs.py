"""Reading /proc (Linux): which processes exist, their state, parent and group, environment and argv.

Every reader is a snapshot that may be stale by the time it returns: processes come and go between
a listing and a read, so a process that vanished (or that we may not read) is skipped or answered
with None, never an exception. Nothing here signals anything or knows what the processes are for.

Scans of all of /proc cost about 7 us per process; callers keep them off hot paths (the runner only
scans on its kill paths, never on spawn).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc/PID/stat's start time
PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread
# An environment read empty in a scan is read again after these pauses (see _recheck_blank).
BLANK_RETRIES = 3
BLANK_PAUSE_S = 0.001


class Stat(NamedTuple):
    """The fields of /proc/PID/stat we use."""

    state: str  # R, S, D, Z, T, ... (see proc(5)); "Z" is a zombie
    ppid: int
    pgrp: int
    session: int = 0
    start: int = 0  # clock ticks after boot: with the pid, names one process for the life of the host
    flags: int = 0  # the kernel's PF_* flags (PF_KTHREAD: a kernel thread)


# A descriptor held in reserve (reserve_descriptor): a daemon out of descriptors (EMFILE) must still
# be able to scan /proc on its kill paths, or a run's escaped processes would outlive its timeout
# and the daemon's stop unseen. A scan gives it up for its duration; each read needs one at a time.
# It is the daemon's stdin when that is /dev/null: the kernel hands out the lowest free number, and
# with RLIMIT_NOFILE lowered under the descriptors already open only a low number can be had again.
_reserve: int | None = None


def _is_devnull(fd: int) -> bool:
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stat_mod.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)


def reserve_descriptor() -> None:
    """Keep one descriptor aside for the scans below (call once, at daemon start)."""
    global _reserve
    if _reserve is None:
        _reserve = 0 if _is_devnull(0) else os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def _room() -> Iterator[None]:
    """Free the reserved descriptor for the duration of a scan, and take it back after."""
    global _reserve
    if _reserve is None:
        yield
        return
    os.close(_reserve)
    _reserve = None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # someone took it meanwhile: the next scan tries again
            _reserve = os.open("/dev/null", os.O_RDONLY)  # lowest free: stdin's number, if that was it
            if _reserve != 0:
                os.set_inheritable(_reserve, False)


def _read(path: str) -> bytes | None:
    """A /proc file's bytes; None if it cannot be read (gone, not ours), even when out of descriptors."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE) and _reserve is not None:
            with _room():
                return _read(path)
        return None


def pids() -> list[int]:
    """Every process id in /proc now (empty if /proc cannot be read)."""
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE) and _reserve is not None:
            with _room():
                return pids()
        return []


def stat(pid: int) -> Stat | None:
    """State, parent and process group of `pid`, or None if it is gone (or unreadable)."""
    data = _read(f"/proc/{pid}/stat")
    if data is None:
        return None
    # The command name may contain spaces and parentheses; the fields start after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return Stat(fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]),
                    int(fields[6]))
    except (IndexError, ValueError):
        return None


def boot_time() -> float | None:
    """When this host booted (Unix seconds), as /proc/PID/stat's start times count from it; None if unknown."""
    # CLOCK_BOOTTIME is the clock those start times are measured on, to the tick; /proc/stat's btime
    # is whole seconds only.
    with contextlib.suppress(AttributeError, OSError):
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def start_epoch(start_ticks: int, booted: float) -> float:
    """A process's start time as Unix seconds, from /proc/PID/stat's start field and the boot time."""
    return booted + start_ticks / CLOCK_TICKS


def environ(pid: int) -> bytes | None:
    """The raw environment `pid` was exec'd with (NUL-separated), or None if gone or unreadable."""
    return _read(f"/proc/{pid}/environ")


def uids(pid: int) -> tuple[int, ...] | None:
    """The real, effective, saved and filesystem uids of `pid` (/proc/PID/status), or None."""
    data = _read(f"/proc/{pid}/status")
    if data is None:
        return None
    for line in data.splitlines():
        if line.startswith(b"Uid:"):
            try:
                return tuple(int(x) for x in line.split()[1:])
            except ValueError:
                return None
    return None


def owner(pid: int) -> int | None:
    """The uid owning /proc/PID (the process's effective uid, unless it is not dumpable), or None."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def exists(pid: int) -> bool:
    """True if a process (zombies included) has this pid now."""
    return os.path.exists(f"/proc/{pid}")


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    # A zombie counts as gone: if its parent is not us, it may never be reaped (an init that does
    # not reap), and it can do nothing any more.
    st = stat(pid)
    return st is not None and st.state != "Z"


def children_of(ppid: int) -> list[int]:
    """The processes (zombies included) whose parent is `ppid`: a scan of all of /proc."""
    with _room():
        return [pid for pid in pids() if (st := stat(pid)) is not None and st.ppid == ppid]


def env_value(environ: bytes, name: str) -> str | None:
    """The value of variable `name` in `environ` (the raw NUL-separated bytes of /proc/PID/environ).

    None if it is not set. Undecodable bytes are replaced, so a value is always a str.
    """
    return _find(environ, name.encode() + b"=")


def _find(environ: bytes, needle: bytes) -> str | None:
    i = environ.find(needle)
    while i >= 0:
        if i == 0 or environ[i - 1] == 0:  # a whole entry, not the tail of another (XTORCH_...=)
            start = i + len(needle)
            end = environ.find(b"\0", start)
            return environ[start:end if end >= 0 else len(environ)].decode("utf-8", "replace")
        i = environ.find(needle, i + 1)
    return None


def pids_by_env(name: str, values: Iterable[str], uids: Iterable[int] | None = None) -> dict[str, list[int]]:
    """Every process but this one whose environment sets `name` to one of `values`, by value.

    What /proc shows is the environment a program was exec'd with (later setenv calls do not show),
    so a process that exec'd another program with a scrubbed environment is not found. Processes we
    may not read are skipped, and so are processes not owned by one of `uids` (when given): another
    user's processes cannot be ours, and reading their environments (a few MB each, if they want)
    would let them make the scan as slow as they like.
    """
    wanted = set(values)
    found: dict[str, list[int]] = {}
    if not wanted:
        return found
    needle = name.encode() + b"="
    me = os.getpid()
    owners = None if uids is None else set(uids)
    with _room():
        return _scan_env(needle, wanted, owners, me)


def _scan_env(needle: bytes, wanted: set[str], owners: set[int] | None, me: int) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    blank: list[int] = []
    for pid in pids():
        if pid == me:
            continue
        try:
            if owners is not None and os.stat(f"/proc/{pid}").st_uid not in owners:
                continue
        except OSError:
            continue
        environ = _read(f"/proc/{pid}/environ")
        if environ is None:
            continue
        if not environ:
            blank.append(pid)
            continue
        _match(pid, environ, needle, wanted, found)
    _recheck_blank(blank, needle, wanted, found)
    return found


def _match(pid: int, environ: bytes, needle: bytes, wanted: set[str], found: dict[str, list[int]]) -> None:
    value = _find(environ, needle)
    if value is not None and value in wanted:
        found.setdefault(value, []).append(pid)


def _recheck_blank(blank: list[int], needle: bytes, wanted: set[str], found: dict[str, list[int]]) -> None:
    """Read again the environments that were empty because their process was in the middle of an exec.

    From the moment execve drops the old memory until the new program's stack is set up, /proc
    shows an empty environment: a process forked and exec'd just before the scan (an escapee
    starting a helper as it is killed) would be missed, and outlive its run. Such a window lasts
    microseconds, so up to BLANK_RETRIES short pauses settle it. Kernel threads and zombies have no
    environment for good, and a program exec'd with an empty one keeps it; only they pay the pauses.
    """
    pending = [pid for pid in blank if _user_process(pid)]
    for _ in range(BLANK_RETRIES):
        if not pending:
            return
        time.sleep(BLANK_PAUSE_S)
        still = []
        for pid in pending:
            environ = _read(f"/proc/{pid}/environ")
            if environ:
                _match(pid, environ, needle, wanted, found)
            elif environ is not None:
                still.append(pid)
        pending = still


def _user_process(pid: int) -> bool:
    """True if `pid` is alive (not a zombie) and not a kernel thread."""
    st = stat(pid)
    return st is not None and st.state != "Z" and not st.flags & PF_KTHREAD


def cmdline(pid: int) -> list[str] | None:
    """The argv of `pid`, or None if it is gone or unreadable. A zombie's is empty."""
    data = _read(f"/proc/{pid}/cmdline")
    if data is None:
        return None
    # Arguments are NUL-terminated; decoded as the filesystem encoding decodes names (no errors).
    return [os.fsdecode(arg) for arg in data.removesuffix(b"\0").split(b"\0")] if data else []
