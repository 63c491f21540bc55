"""The daemon's side of the web process: listen, spawn it, watch it, restart it with a backoff, stop it.

Runs in the daemon's event loop and never blocks it: the listening socket is bound once (a bind is
instant; an address that is busy is tried again later, with the backoff), the child is started with
posix_spawn (vfork semantics: no copy of the daemon's page tables, unlike fork), its exit is seen
through a pidfd and its stderr through a non-blocking pipe, both watched by the loop.

The web process is an accessory: nothing about it may stop the daemon or delay a fire. Failing to
listen or to start it, and its dying, are events (`web.error`, `web.exit`); it is started again 1 s
later, doubling to 60 s, the delay reset once it has stayed up for a minute. Restarts happen early
in a second (the scheduler's quiet moment), never just before a boundary's fires.

Never orphaned: stopped (TERM, then KILL) before the daemon stops its runs; and if the daemon dies
without stopping it, the kernel sends it SIGTERM (PR_SET_PDEATHSIG, set by the child itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import gotorch
from gotorch.events import (
    Bus,
    Event,
    OrphanReaped,
    WebExited,
    WebExposed,
    WebFailed,
    WebListening,
    WebOutput,
    WebStarted,
)
from gotorch.policy import Backoff
from gotorch.web import Listen

LISTEN_FD = 3  # where the child finds the listening socket
STOP_WAIT_S = 3.0  # after SIGTERM, before SIGKILL
MAX_OUTPUT_LINES = 100  # stderr lines of one child logged as events; the rest are counted
MAX_LINE = 1000  # characters of one stderr line kept
BACKLOG = 128


class WebSupervisor:
    """Keeps one web process serving `listen` while the daemon runs (see the module doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listen: Listen, *, control_socket: Path,
                 history: Path | None, bus: Bus, quiet: Callable[[], Awaitable[None]] | None = None) -> None:
        self._loop = loop
        self.listen = listen
        self._control_socket = control_socket
        self._history = history
        self._bus = bus
        self._quiet = quiet
        self._backoff = Backoff()
        self._sock: socket.socket | None = None
        self.pid: int | None = None
        self._pidfd: int | None = None
        self._stderr: int | None = None
        self._partial = b""
        self._lines = 0
        self._started_mono = 0.0
        self._exited: asyncio.Future[None] | None = None
        self._reaped: dict[int, int] = {}  # wait statuses the runner collected for our children
        self._retry: asyncio.TimerHandle | None = None
        self._relaunch: asyncio.Task[None] | None = None
        self._stopping = False
        self._unsubscribe = bus.subscribe(self._on_event)

    @property
    def address(self) -> str:
        """The address served, with the port the kernel chose when it was 0."""
        if self._sock is None:
            return str(self.listen)
        port = self._sock.getsockname()[1]
        return str(Listen(self.listen.host, port))

    def start(self) -> None:
        """Listen and start the web process (or schedule another try); never raises."""
        if not self.listen.loopback:
            self._bus.publish(WebExposed(str(self.listen), "anyone who can reach this address can read the status "
                                         "page and the metrics; put a reverse proxy with authentication in front "
                                         "(see the README) or listen on 127.0.0.1"))
        self._launch()

    async def stop(self) -> None:
        """Stop the web process (TERM, KILL after STOP_WAIT_S) and stop listening; restart nothing."""
        self._stopping = True
        if self._retry is not None:
            self._retry.cancel()
        if self._relaunch is not None:
            self._relaunch.cancel()
        if self._pidfd is not None and self._exited is not None:
            exited = self._exited
            self._signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), STOP_WAIT_S)
            if not exited.done():
                self._signal(signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(exited), 1.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._unsubscribe()

    # -- starting --------------------------------------------------------------------------------------

    def _launch(self) -> None:
        try:
            self._try_launch()
        except Exception as exc:  # a bug here must not take the daemon down: report it, try again later
            self._failed(f"internal error starting the web process: {exc!r}")

    def _try_launch(self) -> None:
        if self._stopping:
            return
        if self._sock is None:
            try:
                self._sock = self._bind()
            except OSError as exc:
                self._failed(f"cannot listen on {self.listen}: {exc.strerror or exc}")
                return
            self._bus.publish(WebListening(self.address, f"http://{self.address}/"))
        try:
            self._spawn(self._sock)
        except OSError as exc:
            self._failed(f"cannot start the web process: {exc.strerror or exc}")
            return
        assert self.pid is not None
        self._bus.publish(WebStarted(self.pid, self.address))

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if self.listen.ipv6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.listen.ipv6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((self.listen.host, self.listen.port))
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
        return sock

    def _argv(self) -> list[str]:
        # -P: `-m` would otherwise put the working directory first on sys.path, and a daemon started
        # in the foreground from a directory another user can write would import their code as root.
        return [sys.executable, "-P", "-m", "gotorch.web", "--listen-fd", str(LISTEN_FD), "--address", self.address,
                "--socket", str(self._control_socket), "--history", str(self._history or ""),
                "--daemon-pid", str(os.getpid())]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The daemon's working directory is `/`: a torch run from a source tree (not installed) must
        # still find its package.
        root = str(Path(gotorch.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    def _spawn(self, sock: socket.socket) -> None:
        if not sys.executable:
            raise OSError("no Python interpreter path (sys.executable is empty)")
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        listen_fd = sock.fileno()
        try:
            # Inheritable for the instant of the spawn, so the dup2s below also work when a descriptor
            # already has its target number (dup2 onto itself keeps close-on-exec set). Nothing else
            # can spawn meanwhile: the loop's thread is the only one that starts processes.
            os.set_inheritable(err_w, True)
            os.set_inheritable(listen_fd, True)
            pid = os.posix_spawn(sys.executable, self._argv(), self._env(), file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
                (os.POSIX_SPAWN_DUP2, listen_fd, LISTEN_FD),
            ], setsid=True, setsigdef=(signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                       signal.SIGUSR2, signal.SIGCHLD))
        except BaseException:
            os.close(err_r)
            raise
        finally:
            os.close(err_w)
            os.set_inheritable(listen_fd, False)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            # Without a pidfd (kernel < 5.3) the exit is not seen: kill it rather than leave it unwatched.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.close(err_r)
            raise
        os.set_blocking(err_r, False)
        self.pid, self._pidfd, self._stderr = pid, pidfd, err_r
        self._partial, self._lines = b"", 0
        self._started_mono = time.monotonic()
        self._exited = self._loop.create_future()
        self._loop.add_reader(pidfd, self._on_exit)
        self._loop.add_reader(err_r, self._on_stderr)

    def _failed(self, error: str) -> None:
        delay = self._backoff.after_exit(0.0)
        self._bus.publish(WebFailed(error, delay))
        self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        if not self._stopping:
            self._retry = self._loop.call_later(delay, self._start_relaunch)

    def _start_relaunch(self) -> None:
        self._retry = None
        self._relaunch = self._loop.create_task(self._relaunch_quietly())

    async def _relaunch_quietly(self) -> None:
        if self._quiet is not None:
            await self._quiet()  # a spawn is quick, but not just before a boundary's fires
        self._relaunch = None
        self._launch()

    # -- watching --------------------------------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def _on_event(self, event: Event) -> None:
        # The runner reaps every child with waitpid(-1); when it gets to ours first, it tells us how it ended.
        if isinstance(event, OrphanReaped) and event.pid == self.pid:
            self._reaped[event.pid] = event.status

    def _on_stderr(self) -> None:
        """Read what the child wrote (until the pipe is empty, or at its end) and log it line by line."""
        while self._stderr is not None:
            try:
                data = os.read(self._stderr, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # EOF: the child has exited
                self._close_stderr()
                return
            self._partial += data
            *lines, self._partial = self._partial.split(b"\n")
            if len(self._partial) > MAX_LINE:
                lines.append(self._partial)
                self._partial = b""
            for line in lines:
                self._output(line)

    def _output(self, line: bytes) -> None:
        if not line.strip() or self.pid is None:
            return
        self._lines += 1
        if self._lines <= MAX_OUTPUT_LINES:
            self._bus.publish(WebOutput(self.pid, line.decode(errors="replace")[:MAX_LINE]))
        elif self._lines == MAX_OUTPUT_LINES + 1:
            self._bus.publish(WebOutput(self.pid, f"(more than {MAX_OUTPUT_LINES} lines: the rest are not logged)"))

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._loop.remove_reader(self._stderr)
            os.close(self._stderr)
            self._stderr = None
            if self._partial:
                self._output(self._partial)
                self._partial = b""

    def _on_exit(self) -> None:
        pid, pidfd = self.pid, self._pidfd
        assert pid is not None and pidfd is not None
        self._loop.remove_reader(pidfd)
        code: int | None = None
        sig: str | None = None
        status = self._wait(pidfd, pid)
        if status is not None:
            if os.WIFSIGNALED(status):
                sig = signal.Signals(os.WTERMSIG(status)).name
            else:
                code = os.waitstatus_to_exitcode(status)
        os.close(pidfd)
        self._on_stderr()  # what it wrote before it died is still worth logging
        self._close_stderr()
        self.pid = self._pidfd = None
        uptime = time.monotonic() - self._started_mono
        delay = None if self._stopping else self._backoff.after_exit(uptime)
        self._bus.publish(WebExited(pid, round(uptime, 1), code, sig, delay))
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(None)
        if delay is not None:
            self._schedule(delay)

    def _wait(self, pidfd: int, pid: int) -> int | None:
        """The child's wait status: reaped here, or as the runner reported it; None if unknown."""
        try:
            result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return self._reaped.pop(pid, None)
        except OSError:
            return None
        if result is None:
            return None
        if result.si_code == os.CLD_EXITED:
            return (result.si_status & 0xFF) << 8
        return result.si_status & 0x7F  # killed or dumped: the signal number is the wait status
