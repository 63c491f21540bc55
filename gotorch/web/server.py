"""A small HTTP/1.0 server for the web process: bounded in threads, connections and time.

* One thread (the caller of `serve_forever`) accepts connections and parks them in a selector until
  their request starts to arrive, so a client that connects and sends nothing holds no worker: it
  is closed after IDLE_TIMEOUT_S, or sooner when the room is needed (MAX_PENDING connections).
* A fixed pool of WORKERS threads reads requests and writes responses. Requests are handed to them
  in arrival order, as fast as a CPU budget allows (the workers may use CPU_SHARE of one CPU), so
  no number of clients can make the web process a CPU hog next to the daemon. When MAX_PENDING
  requests wait, no more are accepted: new clients wait in the kernel's backlog. A request that
  waited QUEUE_TIMEOUT_S gets a quick 503.
* Every read and write of a worker times out after IO_TIMEOUT_S, and a request still in a worker
  after REQUEST_DEADLINE_S (a client trickling bytes) has its connection shut down.
* One request per connection (HTTP/1.0, `Connection: close`): nothing is held between requests.

Parsing is the standard library's (http.server's request line and header limits: 64 KiB, 100
headers). Only GET and HEAD are served; every other method is answered 405 (the web process changes
nothing, whatever is asked).
"""

from __future__ import annotations

import collections
import contextlib
import queue
import selectors
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import cast

WORKERS = 8
MAX_PENDING = 256  # connections accepted and not yet in a worker
IDLE_TIMEOUT_S = 10.0  # to start sending a request
IDLE_EVICT_S = 1.0  # a connection silent this long may be closed early to make room (clients send at once)
QUEUE_TIMEOUT_S = 10.0  # waiting for a worker and the CPU budget, before a quick 503
IO_TIMEOUT_S = 10.0  # each read and write of a worker
REQUEST_DEADLINE_S = 30.0
# The CPU answering requests may use, as a share of one CPU (burst: CPU seconds it may use at once).
# On the 2-vCPU benchmark host, any process keeping a CPU busy, even at SCHED_IDLE and even one that
# is not torch, slows the daemon's process spawning (10 spawns: 4.4 ms alone, 7.3 ms next to an idle
# CPU burner), so fires are late; however many clients come, serving them takes at most this. 5 %
# is some 150 small responses a second: plenty for people and Prometheus.
CPU_SHARE = 0.05
CPU_BURST_S = 0.1
MAX_BODY = 64 * 1024  # bytes of a refused request's body read (so the 405 is not lost to a reset)


@dataclass(frozen=True)
class Response:
    """What a route answers."""

    code: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[str], Response]  # request target (path and query) -> response


class _Handler(BaseHTTPRequestHandler):
    """http.server's parsing, our methods: GET and HEAD through `route`, 405 for the rest."""

    protocol_version = "HTTP/1.0"
    route: Route

    def version_string(self) -> str:
        """The Server header: no Python version for the curious."""
        return "torch"

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.command not in ("GET", "HEAD"):
            self._drain_body()
            self._send(Response(405, "text/plain; charset=utf-8", b"read-only: only GET and HEAD are served\n",
                                {"Allow": "GET, HEAD"}), head=False)
            return False
        return True

    def _drain_body(self) -> None:
        try:
            length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        except ValueError:
            length = 0
        if length > 0:
            with contextlib.suppress(OSError):
                self.rfile.read(length)

    def do_GET(self) -> None:
        """Answer through the route."""
        self._send(self.route(self.path), head=False)

    def do_HEAD(self) -> None:
        """As GET, without the body."""
        self._send(self.route(self.path), head=True)

    def _send(self, response: Response, head: bool) -> None:
        self.send_response(response.code)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Connection", "close")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        """No access log: the daemon's log is for what matters (stderr lines become events)."""


class CpuBudget:
    """At most `share` of one CPU on average: a bucket of CPU seconds, refilled at `share` per second.

    `wait()` says how long to wait before the next request may be handed to a worker (0: now);
    `cpu()` tells the CPU seconds spent so far (the workers', see Server).
    """

    def __init__(self, share: float, burst: float, cpu: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._share = share
        self._burst = burst
        self._cpu_now = cpu
        self._clock = clock
        self._credit = burst
        self._cpu = cpu()
        self._at = clock()

    def wait(self) -> float:
        """Seconds until the budget allows another request; 0 if it does now."""
        cpu, at = self._cpu_now(), self._clock()
        self._credit = min(self._burst, self._credit + (at - self._at) * self._share - (cpu - self._cpu))
        self._cpu, self._at = cpu, at
        return 0.0 if self._credit > 0 else -self._credit / self._share


class Server:
    """Serves `route` on the listening socket `sock` until the process ends (see the module doc)."""

    def __init__(self, sock: socket.socket, route: Route, *, workers: int = WORKERS,
                 budget: CpuBudget | None = None, on_tick: Callable[[], None] | None = None) -> None:
        self._sock = sock
        self._handler = type("Handler", (_Handler,), {"route": staticmethod(route)})
        self._queue: queue.Queue[tuple[socket.socket, object]] = queue.Queue(workers)
        self._busy: list[tuple[socket.socket, float] | None] = [None] * workers
        self._lock = threading.Lock()
        self._spent = 0.0  # CPU seconds the workers spent on requests
        self._budget = budget or CpuBudget(CPU_SHARE, CPU_BURST_S, cpu=lambda: self._spent)
        self._on_tick = on_tick or (lambda: None)
        self._workers = [threading.Thread(target=self._work, args=(i,), name=f"http-{i}", daemon=True)
                         for i in range(workers)]
        # Connections waiting for their request to start (in the selector), oldest first...
        self._parked: dict[socket.socket, tuple[object, float]] = {}
        # ...and with a request arriving, waiting for a worker and the CPU budget (in arrival order).
        self._ready: collections.deque[tuple[socket.socket, object, float]] = collections.deque()
        self._sel = selectors.DefaultSelector()
        self._accepting = False

    def serve_forever(self) -> None:
        """Accept, park and hand out connections; never returns."""
        for w in self._workers:
            w.start()
        self._sock.setblocking(False)
        while True:
            delay = self._dispatch()
            now = time.monotonic()
            self._expire(now)
            self._set_accepting(self._room(now))
            timeout = 1.0 if delay is None else min(1.0, delay)
            if self._parked:
                timeout = min(timeout, max(0.0, next(iter(self._parked.values()))[1] - now))
            for key, _ in self._sel.select(timeout):
                if key.data is None:
                    self._accept()
                    continue
                conn = cast(socket.socket, key.fileobj)
                self._sel.unregister(conn)
                addr, _ = self._parked.pop(conn)
                self._ready.append((conn, addr, time.monotonic()))
            self._stop_overdue(time.monotonic())
            self._on_tick()

    def _dispatch(self) -> float | None:
        """Hand ready requests to the workers while the budget allows; how long until it may go on (None: all gone)."""
        while self._ready:
            if self._queue.full():
                return 0.01  # every worker busy: look again soon
            wait = self._budget.wait()
            if wait > 0:
                return wait
            conn, addr, _ = self._ready.popleft()
            self._queue.put_nowait((conn, addr))
        return None

    def _expire(self, now: float) -> None:
        while self._parked:  # oldest first: stop at the first that may still wait
            conn, (_, deadline) = next(iter(self._parked.items()))
            if deadline > now:
                break
            del self._parked[conn]
            self._sel.unregister(conn)
            conn.close()  # sent nothing in IDLE_TIMEOUT_S
        while self._ready and now - self._ready[0][2] > QUEUE_TIMEOUT_S:
            conn, _, _ = self._ready.popleft()
            with contextlib.suppress(OSError):  # a fresh socket's buffer takes this without blocking
                conn.send(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
                          b"Connection: close\r\nContent-Length: 13\r\n\r\ntoo busy now\n")
            conn.close()

    def _set_accepting(self, accept: bool) -> None:
        # Not accepting leaves new connections in the kernel's backlog: clients wait there, costing nothing.
        if accept and not self._accepting:
            self._sel.register(self._sock, selectors.EVENT_READ, None)
        elif not accept and self._accepting:
            self._sel.unregister(self._sock)
        self._accepting = accept

    def _room(self, now: float) -> bool:
        """Whether another connection may be accepted: below MAX_PENDING, or an idle one can make room."""
        if len(self._parked) + len(self._ready) < MAX_PENDING:
            return True
        if not self._parked:
            return False
        accepted = next(iter(self._parked.values()))[1] - IDLE_TIMEOUT_S
        return now - accepted > IDLE_EVICT_S

    def _accept(self) -> None:
        while self._room(time.monotonic()):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, or a connection reset before accept: try again later
                return
            conn.setblocking(False)
            if len(self._parked) + len(self._ready) >= MAX_PENDING:
                oldest = next(iter(self._parked))  # the oldest idle connection makes room (see _room)
                del self._parked[oldest]
                self._sel.unregister(oldest)
                oldest.close()
            self._parked[conn] = (addr, time.monotonic() + IDLE_TIMEOUT_S)
            self._sel.register(conn, selectors.EVENT_READ, "conn")

    def _stop_overdue(self, now: float) -> None:
        with self._lock:
            overdue = [b[0] for b in self._busy if b is not None and now - b[1] > REQUEST_DEADLINE_S]
        for conn in overdue:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # the worker's blocked read or write returns at once

    def _work(self, index: int) -> None:
        while True:
            conn, addr = self._queue.get()
            cpu = time.thread_time()
            with self._lock:
                self._busy[index] = (conn, time.monotonic())
            try:
                conn.setblocking(True)
                conn.settimeout(IO_TIMEOUT_S)
                self._handler(conn, addr, cast(socketserver.BaseServer, self))
            except (OSError, TimeoutError):
                pass  # the client went away, or was too slow
            except Exception:
                traceback.print_exc(file=sys.stderr)
            finally:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_WR)
                conn.close()
                with self._lock:
                    self._busy[index] = None
                    self._spent += time.thread_time() - cpu
