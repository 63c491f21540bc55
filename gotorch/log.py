"""Structured log events: JSON lines to a logrotate-safe file, or to stderr in the foreground.

Every event is a name (`run.start`, `reload.applied`, ...) plus fields. Configure once, after the
daemon has forked: handlers hold file descriptors that a fork would otherwise have to preserve.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

_LOGGER_NAME = "torch"
_handler: logging.Handler | None = None


def configure(*, file: Path | None = None, stream: TextIO | None = None, as_json: bool | None = None,
              level: int = logging.INFO) -> None:
    """Send events to `file` (JSON, WatchedFileHandler) or `stream` (JSON unless it is a TTY)."""
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
        # Create it ourselves first: 0640 and never through a symlink someone planted.
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640))
        # WatchedFileHandler notices logrotate's rename and reopens by itself; SIGHUP forces it.
        handler = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
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
    if isinstance(_handler, logging.handlers.WatchedFileHandler):
        _handler.acquire()
        try:
            # Open the new file first: if that fails, keep writing to the old one rather than to nothing.
            fd = os.open(_handler.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o640)
            new = open(fd, "a", encoding="utf-8")  # noqa: SIM115 - the handler owns it from here
            old, _handler.stream = _handler.stream, new
            _handler._statstream()
            if old:
                old.close()
        finally:
            _handler.release()


def get_logger(**bound: Any) -> Any:
    """A structlog logger for torch events, with `bound` fields on every event."""
    return structlog.get_logger(_LOGGER_NAME).bind(**bound)
