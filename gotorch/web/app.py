"""The routes of the web process: `/`, `/runs/ID`, `/api/status`, `/metrics`. All read-only.

    /             the status page (HTML), refreshed by the browser every few seconds
    /runs/ID      one run (or skipped/missed fire) with its output: head, elision marker, tail
    /api/status   what `torch status --json` prints (the daemon's status plus the history summaries)
    /metrics      the Prometheus text exposition (gotorch.metrics_text)

The first three answer 503 while the daemon does not answer; `/runs/ID` needs only the history.
"""

from __future__ import annotations

import sqlite3
import sys
import time
import traceback
from pathlib import Path
from urllib.parse import unquote, urlsplit

from gotorch.history.query import HistoryUnreadable, open_readonly, run_with_output
from gotorch.hosts import local_timezone
from gotorch.web import page
from gotorch.web.feed import HTML, TEXT, Feed
from gotorch.web.server import Response

# No script may run on these pages, whatever a task prints (page.py escapes it; this is the second wall).
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
}
MAX_RUN_ID = 200
FEEDS = {"/": "page", "/api/status": "api", "/metrics": "metrics"}


class App:
    """Maps a request target to a response."""

    def __init__(self, feed: Feed, history: Path | None) -> None:
        self.feed = feed
        self.history = history

    def __call__(self, target: str) -> Response:
        """The response to GET `target` (HEAD is the same without the body)."""
        try:
            return self._route(target)
        except Exception:  # a bug answers 500 (and is logged), the server goes on
            traceback.print_exc(file=sys.stderr)
            return Response(500, TEXT, b"internal error (see the torch log)\n")

    def _route(self, target: str) -> Response:
        path = urlsplit(target).path
        kind = FEEDS.get(path)
        if kind is not None:
            got = self.feed.get(kind)
            if got is None:
                return Response(503, TEXT, b"the torch daemon has not answered yet; try again\n", {"Retry-After": "1"})
            return Response(got.code, got.content_type, got.body, HTML_HEADERS if got.content_type == HTML else {})
        if path.startswith("/runs/"):
            return self._run(unquote(path[len("/runs/"):]))
        return Response(404, TEXT, b"not found: try / (the status page), /api/status or /metrics\n")

    def _run(self, run_id: str) -> Response:
        if not run_id or len(run_id) > MAX_RUN_ID or "/" in run_id:
            return Response(404, TEXT, b"no such run\n")
        clock = page.Clock(local_timezone(), time.time())
        row = None
        if self.history is not None:
            try:
                db = open_readonly(self.history)
                if db is not None:
                    try:
                        row = run_with_output(db, run_id)
                    finally:
                        db.close()
            except (HistoryUnreadable, sqlite3.Error) as exc:
                return Response(503, TEXT, f"the history cannot be read: {exc}\n".encode())
        body = page.render_run(row, run_id, clock).encode()
        return Response(200 if row is not None else 404, HTML, body, HTML_HEADERS)
