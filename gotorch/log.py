"""Structured log events: JSON lines to a logrotate-safe file, or to stderr in the foreground.

The log is a subscriber of the event bus (gotorch.events): `log_event` writes each event as a name
(`run.start`, `reload.applied`, ...) plus its fields; nothing else in torch formats log lines.
Configure once, after the daemon has forked: the sink holds a file descriptor that a fork would
otherwise have to preserve.

A line is the event's fields, then `event`, `level` and an ISO-8601 UTC `timestamp`; an exception an
event carries becomes `exception`, its formatted traceback without local variables (they can hold
secrets from a task's env). Written by hand rather than through structlog and stdlib logging: at 10
runs a second the two log lines of each run were most of the daemon's Python time (47 us a line
through structlog + logging, 12 us here), and the daemon does not need their flexibility.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TextIO

from gotorch.events import Bus, Event
from gotorch.trustedfs import Untrusted, open_state_file

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
INFO = LEVELS["info"]


class _Sink(Protocol):
    def write(self, line: str, lines: int = 1) -> None: ...


class _StreamSink:
    """Lines to a text stream (stderr in the foreground, a buffer in tests), flushed each time."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, line: str, lines: int = 1) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stderr loses the line only
            self.stream.write(line)
            self.stream.flush()


_sink: _Sink = _StreamSink(sys.stderr)
_level = INFO
_lock = threading.Lock()  # a line is written whole; threads other than the loop's may log too
# Lines the loop's thread logged during this turn of the loop, written together at its end (see
# defer_writes); touched by that thread only.
_pending: list[str] = []
# Written at once when this many wait: a burst of runs is batched all the same, while the 10,000
# lines of a big config's start-up never pile up (their strings would leave the heap grown).
PENDING_MAX = 64
_loop: asyncio.AbstractEventLoop | None = None
_loop_thread = 0


def _as_text(value: object) -> str:
    return str(value)


# One encoder for every line: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=_as_text, ensure_ascii=False)


def _json(fields: dict[str, Any]) -> str:
    return _ENCODER.encode(fields)


def _console(fields: dict[str, Any]) -> str:
    """A line for a person at a terminal: time, level, event, then key=value."""
    head = f"{fields.pop('timestamp')} [{fields.pop('level'):<7}] {fields.pop('event'):<20}"
    exc = fields.pop("exception", None)
    line = head + " " + " ".join(f"{k}={v!r}" for k, v in fields.items())
    return line if exc is None else f"{line}\n{exc}"


_render: Callable[[dict[str, Any]], str] = _json


def configure(*, file: Path | None = None, stream: TextIO | None = None, as_json: bool | None = None,
              level: int = INFO) -> None:
    """Send events to `file` (JSON, SafeFile) or `stream` (JSON unless it is a TTY), at `level` and above."""
    global _sink, _render, _level
    flush()  # what is waiting was meant for the sink it was logged to
    with _lock:
        old = _sink
        if file is not None:
            _sink = SafeFile(file)
            use_json = True if as_json is None else as_json
        else:
            out = stream if stream is not None else sys.stderr
            _sink = _StreamSink(out)
            use_json = (not out.isatty()) if as_json is None else as_json
        if isinstance(old, SafeFile):
            old.close()
        _render = _json if use_json else _console
        _level = level


def defer_writes(loop: asyncio.AbstractEventLoop | None) -> None:
    """Write what `loop`'s thread logs once per turn of the loop, all its lines in one write (None: each at once).

    A second's runs start and end in bursts: their lines then cost one write (and, for the log file,
    one check for a rotation) instead of one each. They wait at most for the callbacks of the turn
    that logged them. Other threads' lines are still written at once. Call it again with None (in
    the loop's thread) before the loop goes away: that writes what is still waiting.
    """
    global _loop, _loop_thread
    flush()
    _loop, _loop_thread = loop, threading.get_ident() if loop is not None else 0


def flush() -> None:
    """Write the lines deferred so far (see defer_writes)."""
    if _pending:
        text, n = "".join(_pending), len(_pending)
        _pending.clear()
        with _lock:
            _sink.write(text, n)


def lines_dropped() -> int:
    """Log lines the log file could not take (disk full, I/O errors) since the daemon started."""
    return _sink.dropped if isinstance(_sink, SafeFile) else 0


def reopen() -> None:
    """Reopen the log file (SIGHUP after an external rotation that did not rename, e.g. copytruncate)."""
    if isinstance(_sink, SafeFile):
        _sink.reopen()


class SafeFile:
    """Appends to a log file and follows logrotate's renames, never writing through a symlink.

    Like logging's WatchedFileHandler it notices that the file at its path is not the one it writes
    (rotated away, deleted) and reopens it, but every open is `O_NOFOLLOW` and checked on the
    descriptor (trustedfs.open_state_file): a symlink or hard link planted in the file's place is
    refused, and lines keep going to the file already open until a safe one can be opened.
    """

    RETRY_S = 1.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.refused: str | None = None  # why the last reopen failed, if it did
        self.dropped = 0  # lines that could not be written (a full disk, an I/O error), ever
        self._unreported = 0  # of those, lost since the last line that could be written
        self._torn = False  # the last write stopped mid-line: end that line before the next one
        self._retry_at = 0.0
        self._fd = self._open()

    def _open(self) -> int:
        fd = open_state_file(str(self.path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        st = os.fstat(fd)
        self._id = (st.st_dev, st.st_ino)
        return fd

    def write(self, line: str, lines: int = 1) -> None:
        """Append `line` (`lines` lines, whole), reopening first if the file at our path is no longer ours."""
        try:
            st = os.lstat(self.path)  # lstat: a symlink in its place is a change too
            moved = (st.st_dev, st.st_ino) != self._id
        except OSError:
            moved = True
        if moved and time.monotonic() >= self._retry_at:
            self._reopen()  # the caller holds _lock
        self._write(line, lines)

    def _write(self, line: str, lines: int = 1) -> None:
        data = line.encode("utf-8", "backslashreplace")
        if self._unreported:
            # Writing works again (or may): first say how many lines were lost, in the log itself.
            n = self._unreported
            self._unreported = 0
            self._write(json.dumps({"event": "log.lines_lost", "level": "error", "lines": n,
                                    "message": f"{n} log lines could not be written (disk full or I/O error)",
                                    "timestamp": _timestamp(time.time())}) + "\n")
            if self._unreported:  # still failing: that report was lost too, with these lines
                self._unreported = n
                self._lost(lines)
                return
        written = 0
        try:
            if self._torn:
                # A line cut short by a failed write: end it, so this one is a line of its own.
                os.write(self._fd, b"\n")
                self._torn = False
            while written < len(data):
                written += os.write(self._fd, data[written:])  # O_APPEND: one write per line lands whole
        except OSError:  # a full disk loses lines, never the daemon
            self._torn = self._torn or 0 < written < len(data)
            self._lost(lines)

    def _lost(self, lines: int = 1) -> None:
        self.dropped += lines
        self._unreported += lines

    def reopen(self) -> None:
        """Switch to a freshly opened file at our path; on failure keep the old one and retry later."""
        with _lock:
            self._reopen()

    def _reopen(self) -> None:
        try:
            new = self._open()
        except (OSError, Untrusted) as exc:
            if self.refused != str(exc):
                # Said in the file still open: the log cannot report through itself.
                self._write(json.dumps({"event": "log.reopen_refused", "level": "error",
                                        "path": str(self.path), "error": str(exc)}) + "\n")
            self.refused = str(exc)
            self._retry_at = time.monotonic() + self.RETRY_S
            return
        self.refused = None
        old, self._fd = self._fd, new
        with contextlib.suppress(OSError):
            os.close(old)

    def close(self) -> None:
        """Close the file."""
        with contextlib.suppress(OSError):
            os.close(self._fd)


# The second's text is worked out once per second, not once per line; one tuple, so that a thread
# never pairs one second with another's text.
_stamp: tuple[int, str] = (-1, "")


def _timestamp(now: float) -> str:
    global _stamp
    second = int(now)
    cached, prefix = _stamp
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp = (second, prefix)
    return f"{prefix}.{int((now - second) * 1e6):06d}Z"


def log_event(event: Event) -> None:
    """The log as an event subscriber: one line per event, named `event.name`, at its level."""
    severity = event.severity()
    if LEVELS.get(severity, INFO) < _level:
        return
    fields = event.data()
    fields["event"] = event.name
    fields["level"] = severity
    fields["timestamp"] = _timestamp(time.time())
    exc = getattr(event, "exc", None)
    if isinstance(exc, BaseException):
        fields["exception"] = "".join(traceback.format_exception(exc)).rstrip()
    line = _render(fields) + "\n"
    if _loop is not None and threading.get_ident() == _loop_thread:
        if not _pending:
            try:
                _loop.call_soon(flush)
            except RuntimeError:  # the loop is closed: nothing would write it later
                with _lock:
                    _sink.write(line)
                return
        _pending.append(line)
        if len(_pending) >= PENDING_MAX:
            flush()
        return
    with _lock:
        _sink.write(line)


@contextlib.contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    """Collect the fields of every event logged inside the block (for tests), instead of writing them."""
    global _sink, _render, _loop
    lines: list[dict[str, Any]] = []

    class _Capture:
        def write(self, line: str, n: int = 1) -> None:
            lines.extend(json.loads(one) for one in line.splitlines())

    deferring = _loop
    flush()
    _loop = None  # each line at once: a test reads them right after the event
    with _lock:
        saved = _sink, _render
        _sink, _render = _Capture(), _json
    try:
        yield lines
    finally:
        with _lock:
            _sink, _render = saved
        _loop = deferring


def logging_bus() -> Bus:
    """A bus whose one subscriber is the log: what a component uses when it is given no bus."""
    bus = Bus()
    bus.subscribe(log_event)
    return bus
