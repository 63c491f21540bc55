"""Worker threads that never take the daemon's signals.

The kernel delivers a process-directed signal (SIGCHLD above all: one per run that ends) to any
thread that does not block it. When that is a worker thread parked in a blocking call (the
history writer waiting for work, watchdog reading inotify, an executor waiting for a job), the call
is interrupted, and the thread must take the GIL back just to restart it: a GIL hand-over away from
the loop at each child exit, measured here as most of the daemon's futex calls and a share of its
CPU with 10 runs a second. The loop's thread is the only one that needs to hear signals, so every
thread the daemon starts blocks them from its first instruction: a new thread inherits the signal
mask of the thread that creates it, which is why creation happens inside `signals_blocked()`.

Synchronous fault signals (SIGSEGV, SIGBUS, ...) stay unblocked: blocking them is undefined
behaviour when the thread itself raises them, and faulthandler must still see them.
"""

from __future__ import annotations

import concurrent.futures
import signal
from collections.abc import Iterator
from contextlib import contextmanager

# Raised by a thread's own faults, and the two that cannot be blocked at all.
_SYNCHRONOUS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP, signal.SIGSYS,
                signal.SIGKILL, signal.SIGSTOP}
ASYNC_SIGNALS = frozenset(signal.valid_signals()) - _SYNCHRONOUS


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Block the asynchronous signals in this thread for the block's duration.

    Threads started inside the block inherit the mask and so never take those signals; a signal that
    arrives meanwhile stays pending and is delivered to this thread when the block ends.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def block_signals() -> None:
    """Block the asynchronous signals in the calling thread for good (an executor's initializer)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)


def executor(max_workers: int | None = None, name: str = "") -> concurrent.futures.ThreadPoolExecutor:
    """A thread pool whose workers never take the daemon's signals."""
    # The pool creates its workers lazily, from whichever thread submits: the initializer covers them
    # all; the window between a worker's creation and its initializer is a few microseconds.
    return concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name,
                                                 initializer=block_signals)
