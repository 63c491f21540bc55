"""What the web process serves, fetched from the daemon and the history by one thread, shared by all clients.

The daemon answers a control request in its event loop, so every request costs it a little loop time
(the status of 1,000 tasks is a few ms of JSON). However many clients there are, the daemon is asked
at most once a second, and only early in a second, after its fires have gone out (QUIET), never just
before the next boundary; a refresh that costs much (a big config) is made less often, so that
refreshing takes at most REFRESH_SHARE of a CPU. Nothing is asked while nobody looks: a kind of
response (the page, the status JSON, the metrics) is refreshed only while it was requested within
IDLE_AFTER_S.

Requests never wait for the daemon while a recent response exists: they get the latest one. Only
the first request after a quiet spell waits for a fresh one. Responses are rendered once per
refresh, here, not once per client.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gotorch import control
from gotorch.history.query import HistoryUnreadable, open_readonly
from gotorch.history.summary import add_to_status, recent_results, running_now
from gotorch.hosts import local_timezone
from gotorch.web import page

INTERVAL_S = 1.0  # at most one refresh (one status and one metrics request to the daemon) per this
# ... and refreshes use at most this share of one CPU: a page of 1,000 tasks takes ~100 ms to fetch and
# draw, so it is refreshed every 2 s (and 10,000 tasks every 20 s), not every second.
REFRESH_SHARE = 0.05
QUIET = (0.1, 0.7)  # ask the daemon only between these fractions of a second
IDLE_AFTER_S = 30.0  # stop refreshing a kind of response nobody asked for in this long
STALE_S = 3.0  # a response older than this (plus the pace) is not served while a fresh one can be had
FIRST_WAIT_S = 8.0  # how long a request waits for a fresh response before taking what there is
CONTROL_TIMEOUT_S = 5.0
MAX_CELLS = 200_000  # drawn result cells remembered: 20 of each of 10,000 tasks (about 80 MB)

HTML = "text/html; charset=utf-8"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
# The Prometheus text format, version 0.0.4 (what prometheus-client's generate_latest writes).
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

KINDS = ("page", "api", "metrics")


@dataclass(frozen=True, slots=True)
class Rendered:
    """A response body ready to send, and when its data was fetched (monotonic seconds)."""

    code: int
    content_type: str
    body: bytes
    fetched: float


MetricsRender = Callable[[dict[str, Any], int | None], bytes]


def _metrics_renderer() -> tuple[MetricsRender | None, str, str | None]:
    """gotorch.metrics_text's `render` and content type; None and why when it cannot be imported."""
    import importlib

    try:
        module = importlib.import_module("gotorch.metrics_text")
    except ImportError as exc:
        return None, METRICS_TYPE, f"the metrics module cannot be loaded: {exc}"
    render: MetricsRender = module.render
    return render, str(getattr(module, "CONTENT_TYPE", METRICS_TYPE)), None


class Feed:
    """The latest page, status JSON and metrics, refreshed by one thread while they are wanted."""

    def __init__(self, control_socket: Path, history: Path | None, daemon_pid: int | None, *,
                 interval: float = INTERVAL_S, quiet: tuple[float, float] = QUIET) -> None:
        self.control_socket = control_socket
        self.history = history
        self.daemon_pid = daemon_pid
        self.host = socket.gethostname()
        self._interval = interval
        self._quiet = quiet
        self._cond = threading.Condition()
        self._latest: dict[str, Rendered] = {}
        self._asked: dict[str, float] = {}  # kind -> monotonic time it was last requested
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)
        self.refreshes = 0
        self.pace = interval  # seconds between refreshes now (longer when they are costly)
        self._cells: dict[Any, str] = {}  # page.StatusPage.cells, kept while the zone and the day stay
        self._cells_for: tuple[str, int] | None = None

    def start(self) -> None:
        """Start the refreshing thread (it sleeps until something is requested)."""
        self._thread.start()

    def get(self, kind: str) -> Rendered | None:
        """The latest response of `kind` (see KINDS); waits for a fresh one only if the latest is stale."""
        with self._cond:
            now = time.monotonic()
            self._asked[kind] = now
            latest = self._latest.get(kind)
            if latest is not None and now - latest.fetched <= STALE_S + self.pace:
                return latest
            self._cond.notify_all()
            deadline = now + FIRST_WAIT_S
            while True:
                current = self._latest.get(kind)
                if current is not None and current is not latest:
                    return current
                left = deadline - time.monotonic()
                if left <= 0:
                    return current
                self._cond.wait(left)

    # -- the refreshing thread ----------------------------------------------------------------------------

    def _wanted(self) -> list[str]:
        now = time.monotonic()
        return [k for k, at in self._asked.items() if now - at <= IDLE_AFTER_S]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (wanted := self._wanted()):
                    self._cond.wait()
            self._wait_quiet()
            started, cpu = time.monotonic(), time.thread_time()
            try:
                fresh = self.refresh(wanted)
            except Exception:  # a bug must not end the thread (and with it every page)
                traceback.print_exc(file=sys.stderr)
                fresh = {}
            with self._cond:
                self._latest.update(fresh)
                self.refreshes += 1
                self._cond.notify_all()
            self.pace = max(self._interval, (time.thread_time() - cpu) / REFRESH_SHARE)
            time.sleep(max(0.0, started + self.pace - time.monotonic()))

    def _wait_quiet(self) -> None:
        frac = time.time() % 1.0
        lo, hi = self._quiet
        if frac < lo:
            time.sleep(lo - frac)
        elif frac > hi:
            time.sleep(1.0 - frac + lo)

    def refresh(self, wanted: list[str]) -> dict[str, Rendered]:
        """Fetch and render the `wanted` kinds now (the thread's work; callable directly by the benchmark)."""
        out: dict[str, Rendered] = {}
        if "page" in wanted or "api" in wanted:
            status, error = self._ask("status")
            fetched = time.monotonic()
            if "page" in wanted:
                out["page"] = self._page(status, error, fetched)
            if "api" in wanted:  # after the page: it adds the history summaries to `status` in place
                out["api"] = self._api(status, error, fetched)
        if "metrics" in wanted:
            metrics, error = self._ask("metrics")
            out["metrics"] = self._metrics(metrics, error, time.monotonic())
        return out

    def _ask(self, cmd: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            reply = control.request(self.control_socket, {"cmd": cmd}, timeout=CONTROL_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            return None, f"no answer on {self.control_socket}: {exc}"
        value = reply.get("status" if cmd == "status" else "metrics")
        if not reply.get("ok") or not isinstance(value, dict):
            return None, f"the daemon answered {cmd!r} with an error: {reply.get('error', reply)}"
        return value, None

    def _history_for_page(self, names: list[str]) -> tuple[dict[str, list[Any]], dict[str, list[Any]], str | None]:
        if self.history is None:
            return {}, {}, None
        try:
            db = open_readonly(self.history)
            if db is None:
                return {}, {}, None
            try:
                return recent_results(db, names, page.RECENT), running_now(db), None
            finally:
                db.close()
        except (HistoryUnreadable, sqlite3.Error) as exc:
            return {}, {}, str(exc)

    def _page(self, status: dict[str, Any] | None, error: str | None, fetched: float) -> Rendered:
        names = [str(t.get("name")) for t in (status or {}).get("tasks") or []]
        recent, running, history_error = self._history_for_page(names)
        clock = page.Clock(local_timezone(), time.time())
        day = (clock.zone.key, clock.today)  # a cell drawn today shows no date: redraw them all on a new day
        if day != self._cells_for or len(self._cells) > MAX_CELLS:
            self._cells, self._cells_for = {}, day
        view = page.StatusPage(self.host, clock, status, error, recent, running, history_error, cells=self._cells)
        body = page.render_status(view).encode()
        return Rendered(200 if status is not None else 503, HTML, body, fetched)

    def _api(self, status: dict[str, Any] | None, error: str | None, fetched: float) -> Rendered:
        if status is None:
            body = {"running": False, "pid": self.daemon_pid, "error": error}
            return Rendered(503, JSON, (json.dumps(body, indent=2) + "\n").encode(), fetched)
        if self.history is not None:
            add_to_status(status, self.history, time.time())  # exactly what `torch status --json` adds
        return Rendered(200, JSON, (json.dumps(status, indent=2) + "\n").encode(), fetched)

    def _metrics(self, metrics: dict[str, Any] | None, error: str | None, fetched: float) -> Rendered:
        render, content_type, problem = _metrics_renderer()
        if render is None or metrics is None:
            # 503: Prometheus records the target as down (`up` 0), which is what an alert should see.
            return Rendered(503, TEXT, f"# {problem or error}\n".encode(), fetched)
        return Rendered(200, content_type, render(metrics, self.daemon_pid), fetched)
