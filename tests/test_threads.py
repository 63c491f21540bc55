"""Worker threads never take the daemon's signals (gotorch.threads), in-process and in the real daemon."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from gotorch import threads
from tests.conftest import TICK, Torch, wait_until


def _blocked(tid: int | str, pid: int | str = "self") -> set[int]:
    """The signals blocked in thread `tid` of `pid`, from the kernel's SigBlk mask."""
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            mask = int(line.split()[1], 16)
            return {n for n in range(1, 65) if mask >> (n - 1) & 1}
    raise AssertionError("no SigBlk line")


def test_thread_started_inside_signals_blocked_blocks_them_and_caller_is_restored() -> None:
    seen: dict[str, set[int]] = {}

    def work() -> None:
        seen["worker"] = _blocked(threading.get_native_id())

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with threads.signals_blocked():
        t = threading.Thread(target=work)
        t.start()
    t.join()
    assert {signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP, signal.SIGINT} <= seen["worker"]
    # Faults stay deliverable to the thread that raises them.
    assert not {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL} & seen["worker"]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_executor_workers_block_signals() -> None:
    pool = threads.executor(max_workers=2, name="t")
    try:
        masks = [pool.submit(lambda: _blocked(threading.get_native_id())).result() for _ in range(3)]
    finally:
        pool.shutdown()
    assert all(signal.SIGCHLD in m and signal.SIGTERM in m for m in masks)
    assert signal.SIGCHLD not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.mark.integration
def test_daemon_hears_signals_on_its_loop_thread_only(torch_daemon: Torch) -> None:
    # A SIGCHLD taken by a worker interrupts its blocking call and makes it fight the loop for the
    # GIL at every run's end; only the loop's thread may leave the daemon's signals unblocked.
    out = torch_daemon.tmp / "out"
    torch_daemon.write(TICK.format(out=out))
    assert torch_daemon.start_bg().returncode == 0
    pid = torch_daemon.pid()
    assert pid is not None
    wait_until(lambda: out.exists() and out.read_text().strip(), 15, what="a first fire")
    tids = sorted(int(t.name) for t in Path(f"/proc/{pid}/task").iterdir())
    workers = [t for t in tids if t != pid]
    assert workers, "expected the history writer and the watcher's threads"
    for tid in workers:
        name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        assert {signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP} <= _blocked(tid, pid), name
    # The loop's thread blocks everything only for the instant of a posix_spawn (glibc does, around
    # its vfork): look until it is seen taking signals.
    wait_until(lambda: signal.SIGCHLD not in _blocked(pid, pid), 10, interval=0.01,
               what="the loop's thread to take SIGCHLD")
    assert torch_daemon.run("stop").returncode == 0
