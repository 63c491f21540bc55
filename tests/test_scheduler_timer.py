"""Scheduler.arm: when the next tick is set, with a fake clock (a late start-up, a boundary already ticked)."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path

import pytest

import gotorch.scheduler as scheduler_module
from gotorch.config import Task, parse_config
from gotorch.events import CaughtUp, Event, TickFailed
from gotorch.scheduler import EARLY_WAKE, Scheduler

T0 = 1_800_000_000


def every_second() -> dict[str, tuple[Task, str | None]]:
    cfg = parse_config('version: 1\ntasks:\n  - {name: a, schedule: "* * * * * *", command: "true"}\n',
                       check_accounts=False)
    return {t.name: (t, None) for t in cfg.tasks}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    now = {"t": T0 + 0.1}
    monkeypatch.setattr(scheduler_module, "time", types.SimpleNamespace(time=lambda: now["t"],
                                                                        monotonic=lambda: now["t"],
                                                                        sleep=lambda _s: None))
    return now


def _armed_after_start(tmp_path: Path, clock: dict[str, float], start_took: float) -> tuple[int, float, list[Event],
                                                                                          dict[int, list[str]], int]:
    """Apply at T0+0.1, let `start_took` seconds pass, arm; run the loop until the first tick.

    Returns the tick's target second, the timer's delay, the events, the fires by second, and the
    second the timer was armed for after that first tick (or the first target, if it had to wait).
    """
    events: list[Event] = []
    fires: dict[int, list[str]] = {}

    async def main() -> tuple[int, float, int]:
        loop = asyncio.get_running_loop()
        s = Scheduler(loop, state_dir=tmp_path)
        s.bus.subscribe(events.append)
        s._start = lambda task, scheduled, *a, **kw: fires.setdefault(scheduled - T0, []).append(task.name)  # type: ignore[method-assign]
        s.apply(every_second(), at_start=True)
        clock["t"] += start_took
        s.arm()
        assert s._timer is not None
        target = s._timer._args[0]
        delay = s._timer.when() - loop.time()
        if target <= clock["t"]:  # due now: the loop runs it at once
            await s.after_next_tick()
        assert s._timer is not None
        rearmed = s._timer._args[0]
        s.request_stop("test")
        return target - T0, delay, rearmed - T0

    target, delay, rearmed = asyncio.run(main())
    return target, delay, events, fires, rearmed


def test_a_start_up_that_ran_past_a_boundary_ticks_at_once_and_on_time(tmp_path: Path,
                                                                       clock: dict[str, float]) -> None:
    # 10,000 tasks: packing and freezing after the first apply can take longer than the rest of
    # the second. The fire of the boundary that passed goes out now, not as a catch-up a second later.
    target, delay, events, fires, rearmed = _armed_after_start(tmp_path, clock, 1.2)  # now T0+1.3
    assert target == 1
    assert delay <= 0.01
    assert fires == {1: ["a"]}
    assert not [e for e in events if isinstance(e, CaughtUp)]
    assert rearmed == 2  # and the second it ticked is not ticked again


def test_a_quick_start_up_waits_for_the_coming_boundary(tmp_path: Path, clock: dict[str, float]) -> None:
    target, delay, _events, fires, _rearmed = _armed_after_start(tmp_path, clock, 0.4)  # now T0+0.5
    assert target == 1
    assert delay == pytest.approx(0.5 - EARLY_WAKE, abs=0.01)
    assert fires == {}


@pytest.mark.parametrize("whole_second", [True, False])
def test_a_late_tick_is_no_quiet_moment_the_next_one_is(tmp_path: Path, clock: dict[str, float],
                                                        whole_second: bool) -> None:
    # A reload's work waits for a quiet moment, right after a tick. A tick that started late (the
    # catch-up after a slow start-up) may end just before the next boundary: the work would run
    # across it and delay its fires. It waits for the next tick, on time, instead.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = Scheduler(loop, state_dir=tmp_path)
        s._start = lambda *a, **kw: None  # type: ignore[method-assign]
        s.apply(every_second(), at_start=True)
        s.arm()

        def tick_at(target: int, wall: float) -> None:
            assert s._timer is not None
            s._timer.cancel()  # driven by hand, on the fake clock
            clock["t"] = wall
            s._on_timer(target)

        clock["t"] = T0 + 1.9  # after boundary T0+1, not ticked yet: wait for its tick
        waiter = asyncio.ensure_future(s.quiet_moment(whole_second=whole_second))
        await asyncio.sleep(0.01)
        tick_at(T0 + 1, T0 + 1.95)  # the catch-up, 0.95 s late: ends at T0+1.95
        await asyncio.sleep(0.01)
        assert not waiter.done()
        tick_at(T0 + 2, T0 + 2.001)  # on time
        await asyncio.sleep(0.01)
        assert waiter.done()
        s.request_stop("test")

    asyncio.run(main())


def test_arm_still_sets_the_coming_boundary_when_the_queue_fails(tmp_path: Path, clock: dict[str, float]) -> None:
    events: list[Event] = []

    async def main() -> int:
        s = Scheduler(asyncio.get_running_loop(), state_dir=tmp_path)
        s.bus.subscribe(events.append)

        def broken() -> int | None:
            raise RuntimeError("heap damaged")

        s.queue.next_due = broken  # type: ignore[method-assign]
        s.arm()
        assert s._timer is not None
        target = int(s._timer._args[0])
        s.request_stop("test")
        return target - T0

    assert asyncio.run(main()) == 1
    assert [e for e in events if isinstance(e, TickFailed)]
