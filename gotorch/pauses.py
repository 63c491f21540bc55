"""Operator holds on tasks (`torch pause` / `torch resume`): the model, its file, and the file's writer.

A hold is per task name: while it is in force the task's fires are skipped (reason `paused`) and its
daemon-type copies are not (re)started. It lasts until `torch resume`, or until its `until` when
it was given one (`--for`). It covers [since, until): the fire at `until` itself runs, as an operator
who paused "until 12:00" expects the 12:00 run to happen.

The model (`Hold`, `pause`, `resume`, `split_expired`, `encode`/`decode`) is pure: times come in as
arguments, nothing here reads a clock. The holds survive a restart in STATE/pauses.json:

    {"backup": {"since": "2025-01-01T11:00:00Z", "until": "2025-01-01T12:00:00Z",
                "reason": "disk full", "by": "root (uid 0)"}}

`load` and `save` are blocking and meant for a thread (`PauseStore` runs saves on one worker, in
order). A local user may be hostile, so the file is opened relative to the state directory's
descriptor, never through a symlink, checked with `fstat` (a regular file with one link, owned by
the daemon's euid, not writable by group or others) and replaced atomically (a temp file in the
same directory, then rename), mode 0640.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import math
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gotorch import threads
from gotorch.durations import MAX_DURATION
from gotorch.trustedfs import Untrusted, check_dir, kind_of, read_bounded

FILE_NAME = "pauses.json"
FILE_MODE = 0o640
# Our own file holds one short entry per paused task (~150 bytes): 10,000 of them are 1.5 MB. A
# bigger file is not ours to parse.
MAX_FILE = 16 * 1024 * 1024
MAX_REASON = 500  # characters of --reason: a sentence, not a document
MAX_NAMES = 10_000  # task names in one request

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# --- the model (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    """One task's hold: since when (epoch second), until when (None: until resumed), why and by whom."""

    since: int
    until: int | None
    reason: str | None
    by: str

    def active_at(self, now: float) -> bool:
        """Whether the hold is in force at `now` (it ends at `until`, exclusive)."""
        return self.until is None or now < self.until

    def describe(self) -> str:
        """`paused by root (uid 0) until 2025-01-01T12:00:00Z: disk full`: the detail of a skipped fire."""
        until = f" until {iso(self.until)}" if self.until is not None else " until resumed"
        return f"paused by {self.by}{until}" + (f": {self.reason}" if self.reason else "")

    def to_json(self) -> dict[str, Any]:
        """The file's (and `status --json`'s) form: ISO-8601 UTC times."""
        return {"since": iso(self.since), "until": iso(self.until) if self.until is not None else None,
                "reason": self.reason, "by": self.by}

    @classmethod
    def from_json(cls, obj: object) -> Hold:
        """The hold `obj` (as `to_json` wrote it) stands for; ValueError saying what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("a hold must be an object {since, until, reason, by}")
        since = _time_field(obj, "since", required=True)
        until = _time_field(obj, "until", required=False)
        reason = obj.get("reason")
        by = obj.get("by")
        if reason is not None:
            problem = reason_problem(reason)
            if problem is not None:
                raise ValueError(f"reason: {problem}")
        if not isinstance(by, str) or not by or not by.isprintable():
            raise ValueError("by: must be a non-empty line of text")
        assert since is not None
        if until is not None and until <= since:
            raise ValueError("until: must be after since")
        return cls(since, until, reason, by)


def iso(ts: float) -> str:
    """`2025-01-01T12:00:00Z`, as every other time in status and the log."""
    return datetime.fromtimestamp(ts, UTC).strftime(_TIME_FORMAT)


def _time_field(obj: dict[str, Any], key: str, *, required: bool) -> int | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: must be an ISO-8601 UTC time such as 2025-01-01T12:00:00Z")
    try:
        return int(datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC).timestamp())
    except ValueError:
        raise ValueError(f"{key}: {value!r} is not an ISO-8601 UTC time such as 2025-01-01T12:00:00Z") from None


def reason_problem(reason: object) -> str | None:
    """Why `reason` cannot be a hold's reason, or None. It is shown on a terminal: one printable line."""
    if not isinstance(reason, str):
        return "must be text"
    if not reason.strip():
        return "must not be empty"
    if len(reason) > MAX_REASON:
        return f"is longer than {MAX_REASON} characters"
    if not reason.isprintable():
        return "must be one line of printable text (no control characters)"
    return None


def duration_problem(seconds: object) -> str | None:
    """Why `seconds` cannot be a hold's `--for`, or None."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "must be a number of seconds"
    if seconds <= 0:
        return "must be longer than 0 s"
    if seconds > MAX_DURATION:
        return f"must be at most {MAX_DURATION // 86400} days"
    return None


def pause(holds: Mapping[str, Hold], names: Iterable[str], *, now: float, duration: float | None,
          reason: str | None, by: str) -> dict[str, Hold]:
    """`holds` with each of `names` held from `now` for `duration` seconds (None: until resumed).

    Pausing a task already held updates its hold: the new `until` (or none) and `by`; the new
    reason, or the old one when none is given (re-pausing to extend a hold keeps its why); the
    original `since` (it has been held since then). `until` is rounded up to a whole second, as
    fires are whole seconds: `--for 1h` never ends a hold early.
    """
    out = dict(holds)
    until = None if duration is None else math.ceil(now + duration)
    for name in names:
        old = out.get(name)
        since = old.since if old is not None and old.active_at(now) else math.floor(now)
        kept = reason if reason is not None else (old.reason if old is not None else None)
        out[name] = Hold(since, until, kept, by)
    return out


def resume(holds: Mapping[str, Hold], names: Iterable[str]) -> tuple[dict[str, Hold], list[str], list[str]]:
    """`holds` without `names`; and which of the names were held (resumed) and which were not."""
    out = dict(holds)
    resumed: list[str] = []
    not_paused: list[str] = []
    for name in names:
        (resumed if out.pop(name, None) is not None else not_paused).append(name)
    return out, resumed, not_paused


def split_expired(holds: Mapping[str, Hold], now: float) -> tuple[dict[str, Hold], list[str]]:
    """The holds still in force at `now`, and the names of those whose `until` has passed."""
    kept = {n: h for n, h in holds.items() if h.active_at(now)}
    return kept, [n for n in holds if n not in kept]


def unique(names: Iterable[str]) -> list[str]:
    """`names` without repeats, in their first order (`torch pause a a` pauses a once)."""
    return list(dict.fromkeys(names))


def encode(holds: Mapping[str, Hold]) -> bytes:
    """The file's bytes for `holds`: one JSON object, sorted by name, newline-terminated."""
    return (json.dumps({n: holds[n].to_json() for n in sorted(holds)}, indent=1) + "\n").encode()


def decode(data: bytes) -> dict[str, Hold]:
    """The holds in the file's bytes `data`; ValueError saying what is wrong (the caller adds the path)."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser goes
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("expected one JSON object {task: {since, until, reason, by}}")
    holds: dict[str, Hold] = {}
    for name, entry in obj.items():
        if not name or not name.isprintable():
            raise ValueError(f"{name!r} is not a task name")
        try:
            holds[name] = Hold.from_json(entry)
        except ValueError as exc:
            raise ValueError(f"task {name}: {exc}") from None
    return holds


# --- events (what a subscriber needs to tell an operator about the file) ----------------------------


# --- the file (blocking: run in a thread) -----------------------------------------------------------


class PauseFileError(Exception):
    """STATE/pauses.json cannot be used; the message names the file, what is wrong and how to fix it."""


def load(state_dir: Path, euid: int | None = None) -> dict[str, Hold]:
    """The holds saved in `state_dir`/pauses.json ({} when there is none); PauseFileError if unusable."""
    euid = os.geteuid() if euid is None else euid
    path = state_dir / FILE_NAME
    try:
        dir_fd = _open_dir(state_dir, euid)
        try:
            fd = os.open(FILE_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Untrusted(str(path), "is a symlink", f"remove {path} (torch recreates it)") from None
            raise
        finally:
            os.close(dir_fd)
        try:
            _check_ours(os.fstat(fd), str(path), euid)
            data = _read_bounded(fd, str(path))
        finally:
            os.close(fd)
        return decode(data)
    except Untrusted as exc:
        raise PauseFileError(str(exc)) from None
    except ValueError as exc:
        raise PauseFileError(f"{path}: {exc}; fix or remove it (torch rewrites it at the next pause or resume)") \
            from None
    except OSError as exc:
        raise PauseFileError(f"{path}: {exc.strerror or exc}") from None


def save(state_dir: Path, data: bytes, euid: int | None = None) -> None:
    """Replace `state_dir`/pauses.json with `data` atomically (temp file, fsync, rename, fsync the dir).

    A reader sees the old file or the new one, never a part. Whatever sits at the name (a symlink,
    a file of another user) is replaced by the rename, never written through. PauseFileError if not.
    """
    euid = os.geteuid() if euid is None else euid
    try:
        dir_fd = _open_dir(state_dir, euid)
        try:
            tmp = f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            # O_EXCL: never reuse a name someone may have planted (O_CREAT|O_EXCL does not follow links).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                         dir_fd=dir_fd)
            try:
                try:
                    os.fchmod(fd, FILE_MODE)  # exactly 0640, whatever the umask
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, FILE_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):  # already renamed, or gone: nothing left to clean
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
            os.fsync(dir_fd)  # the rename itself must survive a crash
        finally:
            os.close(dir_fd)
    except Untrusted as exc:
        raise PauseFileError(str(exc)) from None
    except OSError as exc:
        raise PauseFileError(f"{state_dir / FILE_NAME}: {exc.strerror or exc}") from None


def _open_dir(state_dir: Path, euid: int) -> int:
    # The daemon checked the state directory from / down at start (Paths.create); this re-checks the
    # directory we are about to use by its descriptor, in case it was loosened since.
    fd = os.open(state_dir, _DIR_FLAGS)
    try:
        check_dir(os.fstat(fd), str(state_dir), euid, own_dir=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_ours(st: os.stat_result, path: str, euid: int) -> None:
    """Raise Untrusted unless `st` is a file only the daemon's user could have written."""
    fix = f"remove {path} (torch recreates it)"
    if not stat.S_ISREG(st.st_mode):
        raise Untrusted(path, f"is {kind_of(st.st_mode)}, not a regular file", fix)
    if st.st_uid != euid:
        raise Untrusted(path, f"is owned by uid {st.st_uid}, not torch's uid {euid}", fix)
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Untrusted(path, f"is writable by group or others (mode {mode:04o})", f"chmod go-w {path}")
    if st.st_nlink != 1:
        raise Untrusted(path, f"has {st.st_nlink} hard links", fix)


def _read_bounded(fd: int, path: str) -> bytes:
    return read_bounded(fd, MAX_FILE, Untrusted(
        path, f"is larger than {MAX_FILE // (1024 * 1024)} MiB, which no pause file is", f"remove {path}"))


class PauseStore:
    """Saves the holds of one state directory on one worker thread, in the order the saves were asked.

    The loop encodes the holds (small, and a snapshot of that moment) and hands the bytes over; the
    write, fsync and rename happen on the worker, so the loop never waits for the disk. Saves run
    one at a time in order, so the file always ends up with the latest snapshot.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / FILE_NAME
        self._pool = threads.executor(max_workers=1, name="torch-pauses")

    def load(self) -> dict[str, Hold]:
        """The saved holds (blocking: call it in a thread); PauseFileError if the file is unusable."""
        return load(self.state_dir)

    def save(self, data: bytes) -> concurrent.futures.Future[None]:
        """Queue writing `data` as the file; the future fails with PauseFileError if it could not be."""
        return self._pool.submit(save, self.state_dir, data)

    def close(self) -> None:
        """Wait for the queued saves (blocking: call it in a thread at stop)."""
        self._pool.shutdown(wait=True)
