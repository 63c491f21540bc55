"""`python -m gotorch.web`: the web process, started and supervised by the daemon (gotorch.web.supervisor).

Not meant to be run by hand: it serves on a listening socket it inherits (--listen-fd) and asks the
daemon at --socket. It dies with the daemon (PR_SET_PDEATHSIG, and a check of its parent every
second in case the daemon died before the request took effect).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import resource
import signal
import socket
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the daemon dies; exit now if it is already gone (we were re-parented)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)


def _yield_cpu() -> None:
    """Serve pages only with CPU time the daemon and its runs do not want (before any thread starts: they inherit it).

    SCHED_IDLE: a daemon or a run waking up preempts this process at once. A lower nice alone is not
    enough: the scheduler (EEVDF) lets a nice 10 process finish its time slice, a few ms, and with 8
    clients hammering on 2 cores that showed as +3 to +25 ms of p99 fire lateness (bench `http`). On a
    host whose CPUs are saturated, the page is then slow, not the fires.
    """
    with contextlib.suppress(OSError):
        os.nice(10)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def main(argv: list[str] | None = None) -> None:
    """Parse the daemon's arguments and serve until killed."""
    parser = argparse.ArgumentParser(prog="python -m gotorch.web", description=__doc__)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--address", default="")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--history", default="")
    parser.add_argument("--daemon-pid", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.daemon_pid)
    # Only what the daemon meant to hand over: nothing of its (the pidfile's lock above all) stays open here.
    os.closerange(args.listen_fd + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    _yield_cpu()
    sock = socket.socket(fileno=args.listen_fd)
    sock.set_inheritable(False)

    from gotorch.web.app import App
    from gotorch.web.feed import Feed
    from gotorch.web.server import Server

    history = Path(args.history) if args.history else None
    feed = Feed(args.socket, history, args.daemon_pid)
    feed.start()

    def check_parent() -> None:
        if os.getppid() != args.daemon_pid:
            os._exit(0)  # the daemon is gone: serve nothing stale

    Server(sock, App(feed, history), on_tick=check_parent).serve_forever()


if __name__ == "__main__":
    main()
