"""Signals into the event loop: a Python handler records each delivery, the loop runs their handlers.

As gunicorn's arbiter does: the handler only records the signal (a deque append: no I/O, no locks)
and the C-level wake-up fd (`signal.set_wakeup_fd`) wakes the loop, which then runs the handlers of
everything recorded, in order. A burst of child exits is one wake-up and one reap.

`loop.add_signal_handler` is not used: it turns every byte of its wake-up socket into a callback of
its own, each announced by writing a byte back into that socket, so ten children exiting together
cost ten callbacks, ten reaps (nine finding nothing) and ten more socket writes and reads. At ten
runs a second that was a tenth of the daemon's CPU.

A full wake-up socket loses nothing (the deque holds every delivery, and the scheduler drains it on
every tick as well); `warn_on_full_buffer=False` keeps CPython from printing about it.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import socket
from asyncio import AbstractEventLoop
from collections.abc import Callable, Mapping
from types import FrameType


class SignalRouter:
    """Routes the signals of `handlers` to the loop: `handlers[signum]()` runs in the loop after delivery.

    `on_error(signum, exc)` is called when a handler raises: one failing handler must not take the
    others (or the tick that drains them) down. Create, `install` and `close` in the main thread.
    """

    def __init__(self, handlers: Mapping[int, Callable[[], None]],
                 on_error: Callable[[int, Exception], None]) -> None:
        self._handlers = dict(handlers)
        self._on_error = on_error
        self._pending: collections.deque[int] = collections.deque()  # every delivery counts
        self._loop: AbstractEventLoop | None = None
        self._socks: tuple[socket.socket, socket.socket] | None = None
        self._old_wakeup = -1

    def install(self, loop: AbstractEventLoop) -> None:
        """Take over the signals and the process's wake-up fd; the loop watches the wake-up socket."""
        rsock, wsock = socket.socketpair()
        for s in (rsock, wsock):
            s.setblocking(False)
        self._socks = (rsock, wsock)
        self._loop = loop
        loop.add_reader(rsock.fileno(), self._woken)
        self._old_wakeup = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        for sig in self._handlers:
            signal.signal(sig, self._note)
            # Python installs handlers without SA_RESTART; C code in this thread may not retry EINTR.
            signal.siginterrupt(sig, False)

    def close(self) -> None:
        """Give the signals back (the default action, SIGINT's KeyboardInterrupt) and the wake-up fd."""
        if self._socks is None:
            return
        for sig in self._handlers:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(self._old_wakeup)
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._socks[0].fileno())
        for s in self._socks:
            s.close()
        self._socks = None

    def drain(self) -> None:
        """Run the handler of every signal recorded so far, in the order they came."""
        pending = self._pending
        while pending:
            signum = pending.popleft()
            try:
                self._handlers[signum]()
            except Exception as exc:
                self._on_error(signum, exc)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signum)

    def _woken(self) -> None:
        assert self._socks is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._socks[0].recv(4096):
                pass
        self.drain()
