"""gotorch.signals: real signals reach their handlers in the loop, every delivery once, in one wake-up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from gotorch.signals import SignalRouter


def test_a_signal_from_another_process_wakes_the_loop_and_runs_its_handler_there() -> None:
    calls: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        woke = asyncio.Event()
        router = SignalRouter({signal.SIGUSR1: lambda: (calls.append(1), woke.set())}, lambda s, e: None)
        router.install(loop)
        try:
            # Another process sends it while the loop sleeps in its selector.
            subprocess.run([sys.executable, "-c", f"import os, signal; os.kill({os.getpid()}, signal.SIGUSR1)"],
                           check=True)
            await asyncio.wait_for(woke.wait(), 30)
        finally:
            router.close()

    asyncio.run(main())
    assert calls == [1]


def test_every_delivery_runs_its_handler_once_and_a_burst_is_one_wake_up() -> None:
    order: list[str] = []
    wakeups = 0

    async def main() -> None:
        nonlocal wakeups
        loop = asyncio.get_running_loop()
        router = SignalRouter({signal.SIGUSR1: lambda: order.append("usr1"),
                               signal.SIGUSR2: lambda: order.append("usr2")}, lambda s, e: None)
        woken = router._woken

        def counted() -> None:
            nonlocal wakeups
            wakeups += 1
            woken()

        router._woken = counted  # type: ignore[method-assign]
        router.install(loop)
        try:
            for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1):
                os.kill(os.getpid(), sig)  # recorded at once; the loop is not running meanwhile
            for _ in range(100):
                if len(order) == 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            router.close()

    asyncio.run(main())
    assert order == ["usr1", "usr2", "usr1"]
    assert wakeups == 1


def test_a_failing_handler_is_reported_and_the_others_still_run() -> None:
    ran: list[str] = []
    errors: list[tuple[int, str]] = []

    def broken() -> None:
        raise RuntimeError("boom")

    router = SignalRouter({signal.SIGUSR1: broken, signal.SIGUSR2: lambda: ran.append("usr2")},
                          lambda s, e: errors.append((s, str(e))))
    loop = asyncio.new_event_loop()
    try:
        router.install(loop)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR2)
        router.drain()  # what the scheduler's tick does, without the loop's wake-up
    finally:
        router.close()
        loop.close()
    assert errors == [(signal.SIGUSR1, "boom")]
    assert ran == ["usr2"]


def test_close_gives_back_the_default_actions_and_the_wake_up_fd() -> None:
    loop = asyncio.new_event_loop()
    router = SignalRouter({signal.SIGUSR1: lambda: None, signal.SIGINT: lambda: None}, lambda s, e: None)
    try:
        router.install(loop)
        assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN)
        router.close()
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.set_wakeup_fd(-1) == -1  # nothing left pointing at a closed socket
    finally:
        router.close()
        loop.close()
