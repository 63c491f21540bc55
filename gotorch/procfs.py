"""Reading /proc (Linux): which processes exist, their state, parent and group, environment and argv.

Every reader is a snapshot that may be stale by the time it returns: processes come and go between
a listing and a read, so a process that vanished (or that we may not read) is skipped or answered
with None, never an exception. Nothing here signals anything or knows what the processes are for.

Scans of all of /proc cost about 7 us per process; callers keep them off hot paths (the runner only
scans on its kill paths, never on spawn).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from typing import NamedTuple

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc/PID/stat's start time


class Stat(NamedTuple):
    """The fields of /proc/PID/stat we use."""

    state: str  # R, S, D, Z, T, ... (see proc(5)); "Z" is a zombie
    ppid: int
    pgrp: int
    session: int = 0
    start: int = 0  # clock ticks after boot: with the pid, names one process for the life of the host


def pids() -> list[int]:
    """Every process id in /proc now (empty if /proc cannot be read)."""
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def stat(pid: int) -> Stat | None:
    """State, parent and process group of `pid`, or None if it is gone (or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; the fields start after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return Stat(fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
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
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
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
    for pid in pids():
        if pid == me:
            continue
        try:
            if owners is not None and os.stat(f"/proc/{pid}").st_uid not in owners:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        value = _find(environ, needle)
        if value is not None and value in wanted:
            found.setdefault(value, []).append(pid)
    return found


def cmdline(pid: int) -> list[str] | None:
    """The argv of `pid`, or None if it is gone or unreadable. A zombie's is empty."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # Arguments are NUL-terminated; decoded as the filesystem encoding decodes names (no errors).
    return [os.fsdecode(arg) for arg in data.removesuffix(b"\0").split(b"\0")] if data else []
