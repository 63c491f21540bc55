"""The fire queue over a long life: bounded memory across reloads, and one task's failure contained.

Pure tests with a fake clock (see test_scheduler_core), plus one of the asyncio shell's tick.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import gotorch.firequeue as firequeue_mod
from gotorch import log
from gotorch.config import Task
from gotorch.firequeue import (
    BACKWARD_LIMIT,
    COMPACT_SLACK,
    RETRY_MAX,
    Action,
    ClockJump,
    FireHints,
    FireNow,
    FireQueue,
    Missed,
    TaskError,
)
from gotorch.schedule import Schedule, parse_schedule
from gotorch.scheduler import Scheduler
from tests.test_scheduler_core import T0, Clock

YEARLY = parse_schedule("@yearly")
DAILY_NOON = parse_schedule("0 0 12 * * *")  # T0 is 12:00:00 UTC
EVERY_SECOND = parse_schedule("* * * * * *")
NEXT_NEW_YEAR = int(datetime(2028, 1, 1, tzinfo=UTC).timestamp())


def make(name: str, schedule: Schedule, command: str = "x", **extra: Any) -> Task:
    """A Task built directly, bypassing validation (so it may hold values validation rejects)."""
    return Task(name=name, command=command, schedule=schedule, **extra)


def fires_by_task(actions: list[Action]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for a in actions:
        if isinstance(a, FireNow):
            out.setdefault(a.task.name, []).append(a.scheduled - T0)
    return out


def errors_of(actions: list[Action]) -> list[TaskError]:
    return [a for a in actions if isinstance(a, TaskError)]


def heap_is_bounded(q: FireQueue) -> bool:
    # Stale entries may exist, but never more than the live ones plus a constant.
    return len(q._heap) <= 2 * len(q) + COMPACT_SLACK


# --- A: memory stays proportional to the live tasks ------------------------------------------------


def test_heap_stays_proportional_to_live_tasks_across_reloads() -> None:
    # The reported case: two configs of 20,000 yearly tasks, alternated. Each reload changes every
    # task, so each used to leave 20,000 stale heap entries behind until next New Year.
    names = [f"t{i}" for i in range(20_000)]
    configs = [[make(n, YEARLY, command=cmd) for n in names] for cmd in ("a", "b")]
    hints = FireHints(T0, dict.fromkeys(names, NEXT_NEW_YEAR))  # what precompute() would give, for speed
    q, c = FireQueue(), Clock(T0 + 0.2)
    for i in range(60):
        q.set_tasks(configs[i % 2], c.wall, hints)
        assert heap_is_bounded(q), (i, len(q._heap))
        assert len(q._version) <= 2 * len(q) + COMPACT_SLACK
        c.advance(1)
        assert q.tick(c.wall, c.mono) == []
    assert len(q) == 20_000
    assert all(q.next_fire(n) == NEXT_NEW_YEAR for n in names)
    assert q.next_due() == NEXT_NEW_YEAR
    # Without hints too (the queue works the fires out itself), on a smaller config.
    small = [[make(f"s{i}", YEARLY, command=cmd) for i in range(1_000)] for cmd in ("a", "b")]
    for i in range(10):
        q.set_tasks(small[i % 2], c.wall)
        assert heap_is_bounded(q), (i, len(q._heap))
    assert all(q.next_fire(f"s{i}") == NEXT_NEW_YEAR for i in range(1_000))


def test_firing_is_unchanged_while_reloads_compact_the_heap() -> None:
    # Every-second tasks redefined on every reload, plus unchanged */2 ones: each second each task
    # fires exactly once, none is skipped, however often the heap is rebuilt.
    changing = [[make(f"c{i}", EVERY_SECOND, command=cmd) for i in range(300)] for cmd in ("a", "b")]
    steady = [make(f"s{i}", parse_schedule("*/2 * * * * *")) for i in range(300)]
    q, c = FireQueue(), Clock(T0 + 0.2)
    q.set_tasks(changing[0] + steady, c.wall)
    q.tick(c.wall, c.mono)
    seen: dict[str, list[int]] = {}
    for i in range(60):
        q.set_tasks(changing[(i + 1) % 2] + steady, c.wall)
        assert heap_is_bounded(q), (i, len(q._heap))
        c.advance(1)
        for name, secs in fires_by_task(q.tick(c.wall, c.mono)).items():
            seen.setdefault(name, []).extend(secs)
    assert all(seen[f"c{i}"] == list(range(1, 61)) for i in range(300))
    assert all(seen[f"s{i}"] == list(range(2, 61, 2)) for i in range(300))


def test_names_that_come_and_go_leave_no_bookkeeping_behind() -> None:
    # 60 reloads, each replacing every task by 5,000 freshly named ones (the bound does not depend on
    # the size; 20,000 only makes the test slower).
    q, c = FireQueue(), Clock(T0 + 0.2)
    for r in range(60):
        batch = [make(f"r{r}-{i}", YEARLY) for i in range(5_000)]
        q.set_tasks(batch, c.wall, FireHints(T0, {t.name: NEXT_NEW_YEAR for t in batch}))
        assert heap_is_bounded(q), (r, len(q._heap))
        assert len(q._version) <= 2 * len(q) + COMPACT_SLACK, (r, len(q._version))
        c.advance(1)
        q.tick(c.wall, c.mono)
    assert len(q) == 5_000 and q.next_fire("r59-0") == NEXT_NEW_YEAR and q.next_fire("r58-0") is None


def test_last_fired_of_removed_tasks_is_forgotten_once_it_cannot_matter() -> None:
    # Daily tasks under fresh names every day: each batch fires once, then is replaced. What a removed
    # task last fired only matters while the clock could still be set back to before it.
    q, c = FireQueue(), Clock(T0 - 0.8)
    most = 0
    for day in range(30):
        q.set_tasks([make(f"d{day}-{i}", DAILY_NOON) for i in range(500)], c.wall)
        c.advance(1)
        assert len(fires_by_task(q.tick(c.wall, c.mono))) == 500
        q.settle()
        most = max(most, len(q._last_fired))
        c.advance(86_400 - 1)
    assert most <= 3 * 500 + COMPACT_SLACK, most  # was 500 more every day


def test_removed_tasks_readded_within_the_second_they_fired_do_not_fire_it_again() -> None:
    # The reason _last_fired outlives a task; its clean-up must keep that guarantee.
    tasks = [make(f"t{i}", EVERY_SECOND) for i in range(4 * COMPACT_SLACK)]
    q, c = FireQueue(), Clock(T0 + 0.2)
    q.set_tasks(tasks, c.wall)
    c.advance(1)
    assert len(fires_by_task(q.tick(c.wall, c.mono))) == len(tasks)
    q.set_tasks([], c.wall)  # all removed: more last-fired entries than live tasks, so they are pruned
    q.set_tasks(tasks, c.wall - 0.5)  # a reload that started in the second they fired
    assert {q.next_fire(t.name) for t in tasks} == {T0 + 2}


# --- B: a failure in one task's computation stops neither it nor the others -----------------------


def test_nan_misfire_grace_yields_task_error_and_the_task_is_not_lost() -> None:
    broken = make("broken", EVERY_SECOND, misfire_grace=math.nan)
    healthy = make("healthy", EVERY_SECOND)
    q, c = FireQueue(), Clock(T0 + 0.2)
    q.set_tasks([broken, healthy], c.wall)
    q.tick(c.wall, c.mono)
    c.advance(2_000)  # a stall: more missed fires than MISSED_COUNT_CAP, so the grace is used
    acts = q.tick(c.wall, c.mono)
    assert fires_by_task(acts) == {"healthy": [2_000]}
    assert [m.task for m in acts if isinstance(m, Missed)] == ["healthy"]
    (err,) = errors_of(acts)
    assert (err.task, err.second - T0, err.retry_at - T0, err.attempt) == ("broken", 2_000, 2_001, 1)
    assert isinstance(err.error, ValueError)
    assert q.next_fire("broken") is None  # not "scheduled" while it waits for its re-check
    seen: dict[str, list[int]] = {}
    for _ in range(5):
        c.advance(1)
        acts = q.tick(c.wall, c.mono)
        assert errors_of(acts) == []
        for name, secs in fires_by_task(acts).items():
            seen.setdefault(name, []).extend(secs)
    # Re-checked at the next second: the window that failed is behind it, so it simply fires again.
    assert seen == {"healthy": [2_001, 2_002, 2_003, 2_004, 2_005], "broken": [2_001, 2_002, 2_003, 2_004, 2_005]}


def test_broken_task_fires_once_a_fixed_definition_is_loaded() -> None:
    broken = make("broken", EVERY_SECOND, misfire_grace=math.inf)
    q, c = FireQueue(), Clock(T0 + 0.2)
    q.set_tasks([broken], c.wall)
    q.tick(c.wall, c.mono)
    c.advance(3_000)
    assert [e.task for e in errors_of(q.tick(c.wall, c.mono))] == ["broken"]
    q.set_tasks([replace(broken, misfire_grace=60.0)], c.wall)
    assert q.next_fire("broken") == T0 + 3_001
    c.advance(1)
    assert fires_by_task(q.tick(c.wall, c.mono)) == {"broken": [3_001]}


class Flaky:
    """Stands in for next_fire_ts: raises for one schedule while `failures` lasts (None: for ever)."""

    def __init__(self, schedule: Schedule, failures: int | None) -> None:
        self.schedule, self.failures, self.calls = schedule, failures, 0
        self.real = firequeue_mod.next_fire_ts

    def __call__(self, schedule: Schedule, tz: Any, after: int) -> int | None:
        if schedule is self.schedule and (self.failures is None or self.failures > 0):
            self.calls += 1
            if self.failures is not None:
                self.failures -= 1
            raise RuntimeError("transient")
        return self.real(schedule, tz, after)


def test_task_whose_schedule_raises_transiently_fires_again_after_the_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    every2 = parse_schedule("*/2 * * * * *")
    flaky_task, healthy = make("flaky", every2), make("healthy", EVERY_SECOND)
    q, c = FireQueue(), Clock(T0 + 0.2)
    q.set_tasks([flaky_task, healthy], c.wall)
    q.tick(c.wall, c.mono)
    c.advance(2)
    assert fires_by_task(q.tick(c.wall, c.mono)) == {"flaky": [2], "healthy": [2]}
    flaky = Flaky(every2, failures=2)
    monkeypatch.setattr(firequeue_mod, "next_fire_ts", flaky)
    q.settle()  # working out flaky's fire after 2 fails: it is re-checked at 3, fails again, then at 5
    assert [(e.task, e.second - T0, e.retry_at - T0, e.attempt) for e in q.take_errors()] == [("flaky", 2, 3, 1)]
    seen: dict[str, list[int]] = {}
    errors: list[tuple[int, int, int]] = []
    for _ in range(8):
        c.advance(1)
        acts = q.tick(c.wall, c.mono)
        q.settle()
        errors += [(e.second - T0, e.retry_at - T0, e.attempt) for e in [*errors_of(acts), *q.take_errors()]]
        for name, secs in fires_by_task(acts).items():
            seen.setdefault(name, []).extend(secs)
    assert errors == [(3, 5, 2)]
    assert seen["healthy"] == list(range(3, 11))
    # At 5 the fire at 4 (missed during the retry) is caught up; then every even second as before.
    assert seen["flaky"] == [4, 6, 8, 10]
    assert flaky.failures == 0


def test_permanently_broken_task_is_rechecked_with_backoff_and_others_keep_firing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bad_schedule = parse_schedule("*/7 * * * * *")
    flaky = Flaky(bad_schedule, failures=None)
    monkeypatch.setattr(firequeue_mod, "next_fire_ts", flaky)
    q, c = FireQueue(), Clock(T0 + 0.2)
    q.set_tasks([make("bad", bad_schedule), make("good", EVERY_SECOND)], c.wall)  # does not raise
    assert q.next_fire("good") == T0 + 1 and q.next_fire("bad") is None
    retries = [e.retry_at - T0 for e in q.take_errors()]
    good: list[int] = []
    for _ in range(300):
        c.advance(1)
        acts = q.tick(c.wall, c.mono)
        retries += [e.retry_at - T0 for e in errors_of(acts)]
        good += fires_by_task(acts).get("good", [])
    assert good == list(range(1, 301))
    gaps = [b - a for a, b in zip([0, *retries], retries, strict=False)]
    assert gaps[:7] == [1, 2, 4, 8, 16, 32, RETRY_MAX]  # 1 s doubling, capped
    assert set(gaps[6:]) == {RETRY_MAX}
    assert flaky.calls == len(retries)
    # Once the cause is gone, the next re-check schedules it again.
    flaky.failures = 0
    for _ in range(RETRY_MAX):
        c.advance(1)
        q.tick(c.wall, c.mono)
    assert q.next_fire("bad") is not None


def test_failure_while_recomputing_after_a_clock_correction_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    bad_schedule = parse_schedule("*/5 * * * * *")
    q, c = FireQueue(), Clock(T0 + 0.2)
    q.set_tasks([make("bad", bad_schedule), make("good", EVERY_SECOND)], c.wall)
    q.tick(c.wall, c.mono)
    monkeypatch.setattr(firequeue_mod, "next_fire_ts", Flaky(bad_schedule, failures=1))
    c.step(-(BACKWARD_LIMIT + 3_600))
    c.advance(1)
    acts = q.tick(c.wall, c.mono)
    assert isinstance(acts[0], ClockJump) and acts[0].action == "recompute"
    assert [e.task for e in errors_of(acts)] == ["bad"]
    assert q.next_fire("good") == math.floor(c.wall) + 1
    for _ in range(10):
        c.advance(1)
        q.tick(c.wall, c.mono)
    nxt = q.next_fire("bad")
    assert nxt is not None and nxt - c.wall < 5


def test_one_failing_start_does_not_stop_the_other_actions_of_the_tick(tmp_path: Path) -> None:
    bad, good = make("bad", EVERY_SECOND), make("good", EVERY_SECOND)
    err = TaskError("broken", T0, RuntimeError("x"), T0 + 1)
    actions: list[Action] = [FireNow(bad, T0), FireNow(good, T0), Missed("good", T0 - 5, T0 - 1, 5, "coalesced"), err]

    class FakeQueue(FireQueue):
        def tick(self, wall: float, mono: float) -> list[Action]:
            return actions

    started: list[str] = []

    async def main() -> list[dict[str, Any]]:
        with log.captured() as logs:
            sched = Scheduler(asyncio.get_running_loop(), state_dir=tmp_path)
            sched.queue = FakeQueue()
            sched.apply({"bad": (bad, None), "good": (good, None)})

            def start(task: Task, scheduled: int | None) -> None:
                if task.name == "bad":
                    raise OSError("cannot fork")
                started.append(task.name)

            sched._start = start  # type: ignore[method-assign]
            sched.tick()
        return logs

    logs = asyncio.run(main())
    assert started == ["good"]
    events = [e["event"] for e in logs]
    assert "fire.failed" in events and "missed" in events and "task.tick_failed" in events
    (failed,) = [e for e in logs if e["event"] == "task.tick_failed"]
    assert failed["task"] == "broken" and failed["level"] == "error"


def test_the_fires_of_one_second_go_in_file_order_also_for_tasks_a_reload_adds() -> None:
    # As cron runs a crontab's lines in order: a task added below another never starts ahead of it
    # (its spawn would make the other one late), whatever the names or how often each was reloaded.
    q = FireQueue()
    tasks = [make("zz-first", EVERY_SECOND, line=3), make("mm-second", EVERY_SECOND, line=7)]
    q.set_tasks(tasks, T0)
    q.set_tasks([replace(tasks[0], command="y"), tasks[1]], T0 + 0.5)  # a new version of the first
    for s in range(1, 5):
        q.tick(T0 + s, T0 + s)
        q.settle()
    q.set_tasks([*tasks, make("aa-added", EVERY_SECOND, line=12), make("ab-top", EVERY_SECOND, line=1)], T0 + 4.5)
    order = [a.task.name for a in q.tick(T0 + 5, T0 + 5) if isinstance(a, FireNow)]
    assert order == ["ab-top", "zz-first", "mm-second", "aa-added"]
