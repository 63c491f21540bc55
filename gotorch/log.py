"""Structured log events: JSON lines to a logrotate-safe file, or to stderr in the foreground.

The log is a subscriber of the event bus (gotorch.events): `log_event` writes each event as a name
(`run.start`, `reload.applied`, ...) plus its fields; nothing else in torch formats log lines.
Configure once, after the daemon has forked: handlers hold file descriptors that a fork would
otherwise have to preserve.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import structlog

from gotorch.events import Bus, Event
from gotorch.trustedfs import Untrusted, open_state_file

_LOGGER_NAME = "torch"
_handler: logging.Handler | None = None
# Lazy: structlog resolves its configuration at the first event, so configure() may come later.
_events_logger = structlog.get_logger(_LOGGER_NAME)


def configure(*, file: Path | None = None, stream: TextIO | None = None, as_json: bool | None = None,
              level: int = logging.INFO) -> None:
    """Send events to `file` (JSON, SafeFileHandler) or `stream` (JSON unless it is a TTY)."""
    global _handler
    # Events carry their own fields; skip what stdlib logging would gather for every record (the
    # logging HOWTO's "Optimization" section): caller frame, thread and process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger(_LOGGER_NAME)
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    handler: logging.Handler
    if file is not None:
        handler = SafeFileHandler(file)
        use_json = True if as_json is None else as_json
    else:
        out = stream if stream is not None else sys.stderr
        handler = logging.StreamHandler(out)
        use_json = (not out.isatty()) if as_json is None else as_json
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    _handler = handler

    renderer: structlog.types.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks as data, without local variables: locals can hold secrets from task env.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)) if use_json
            else structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )


def reopen() -> None:
    """Reopen the log file (SIGHUP after an external rotation that did not rename, e.g. copytruncate)."""
    if isinstance(_handler, SafeFileHandler):
        _handler.reopen()


class SafeFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
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
        self._retry_at = 0.0
        super().__init__(self._open())

    def _open(self) -> TextIO:
        fd = open_state_file(str(self.path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        st = os.fstat(fd)
        self._id = (st.st_dev, st.st_ino)
        return open(fd, "a", encoding="utf-8", errors="backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record, reopening first if the file at our path is no longer ours."""
        try:
            st = os.lstat(self.path)  # lstat: a symlink in its place is a change too
            moved = (st.st_dev, st.st_ino) != self._id
        except OSError:
            moved = True
        if moved and time.monotonic() >= self._retry_at:
            self.reopen()
        super().emit(record)

    def reopen(self) -> None:
        """Switch to a freshly opened file at our path; on failure keep the old one and retry later."""
        self.acquire()
        try:
            try:
                new = self._open()
            except (OSError, Untrusted) as exc:
                if self.refused != str(exc):
                    # Said in the file still open: a handler cannot log through itself.
                    with contextlib.suppress(OSError, ValueError):
                        self.stream.write(json.dumps({"event": "log.reopen_refused", "level": "error",
                                                      "path": str(self.path), "error": str(exc)}) + "\n")
                        self.stream.flush()
                self.refused = str(exc)
                self._retry_at = time.monotonic() + self.RETRY_S
                return
            self.refused = None
            old, self.stream = self.stream, new
            with contextlib.suppress(OSError):
                old.close()
        finally:
            self.release()

    def close(self) -> None:
        """Close the file."""
        self.acquire()
        try:
            with contextlib.suppress(OSError):
                self.stream.close()
        finally:
            self.release()
        super().close()


def log_event(event: Event) -> None:
    """The log as an event subscriber: one JSON line per event, named `event.name`, at its level."""
    fields = event.data()
    exc = getattr(event, "exc", None)
    if exc is not None:
        fields["exc_info"] = exc
    getattr(_events_logger, event.severity())(event.name, **fields)


def logging_bus() -> Bus:
    """A bus whose one subscriber is the log: what a component uses when it is given no bus."""
    bus = Bus()
    bus.subscribe(log_event)
    return bus
