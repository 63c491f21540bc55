"""The fire queue's decisions under a fake clock: due, catch-up, misses, clock jumps, backoff."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

from gotorch.config import Task, parse_config
from gotorch.firequeue import MISSED_COUNT_CAP, ClockJump, FireNow, FireQueue, Missed, next_tick, precompute
from gotorch.policy import Backoff

T0 = int(datetime(2027, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp())


def task(schedule: str, name: str = "t", **extra: object) -> Task:
    fields = "".join(f", {k}: {v}" for k, v in extra.items())
    text = f'version: 1\ntasks:\n  - {{name: {name}, schedule: "{schedule}", command: x{fields}}}\n'
    (t,) = parse_config(textwrap.dedent(text), "t.yaml").tasks
    return t


class Clock:
    """A fake wall + monotonic clock that can be advanced normally, stalled, or stepped."""

    def __init__(self, wall: float) -> None:
        self.wall = wall
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def step(self, seconds: float) -> None:  # wall clock set by an operator/NTP; monotonic unaffected
        self.wall += seconds


def fired(actions: list[object]) -> list[int]:
    return [a.scheduled - T0 for a in actions if isinstance(a, FireNow)]


def start(*tasks: Task, at: float = T0 + 0.2) -> tuple[FireQueue, Clock]:
    q = FireQueue()
    clock = Clock(at)
    q.set_tasks(tasks, clock.wall)
    q.tick(clock.wall, clock.mono)
    return q, clock


def test_due_each_second_exactly_once() -> None:
    q, c = start(task("* * * * * *"))
    seen = []
    for _ in range(10):
        c.advance(1.0)
        seen += fired(q.tick(c.wall, c.mono))
    assert seen == list(range(1, 11))


def test_nothing_fires_before_start_second_or_twice() -> None:
    q, c = start(task("*/5 * * * * *"))
    assert q.next_fire("t") == T0 + 5
    assert fired(q.tick(c.wall, c.mono)) == []  # ticking the same second again fires nothing
    c.advance(4.9)
    assert fired(q.tick(c.wall, c.mono)) == [5]
    assert fired(q.tick(c.wall + 0.05, c.mono + 0.05)) == []


def test_slightly_late_tick_still_fires_each_second() -> None:
    q, c = start(task("* * * * * *"))
    c.advance(1.7)  # T0+1.9: second 1 is 0.9 s late, still on time
    assert fired(q.tick(c.wall, c.mono)) == [1]
    c.advance(1.25)  # T0+3.15: second 2 is 1.15 s late (coalesced), second 3 is on time
    acts = q.tick(c.wall, c.mono)
    assert fired(acts) == [3]
    assert [a for a in acts if isinstance(a, Missed)] == [Missed("t", T0 + 2, T0 + 2, 1, "coalesced")]


def test_missed_with_catch_up_runs_once_for_the_window() -> None:
    q, c = start(task("0 * * * * *", misfire_grace="90s"))
    c.step(60 * 5 + 10)  # suspended 5 min: fires at +60..+300 missed; last one 10 s ago
    acts = q.tick(c.wall, c.mono)
    assert isinstance(acts[0], ClockJump) and acts[0].direction == "forward"
    runs = [a for a in acts if isinstance(a, FireNow)]
    assert [(r.scheduled - T0, r.caught_up) for r in runs] == [(300, True)]
    (missed,) = [a for a in acts if isinstance(a, Missed)]
    assert (missed.first - T0, missed.last - T0, missed.count, missed.reason) == (60, 240, 4, "coalesced")
    assert q.next_fire("t") == T0 + 360


def test_missed_beyond_grace_is_only_counted() -> None:
    q, c = start(task("0 * * * * *", misfire_grace="30s"))
    c.advance(60 * 3 + 45)  # a stall: last fire (+180) is 45 s old, grace 30 s
    acts = q.tick(c.wall, c.mono)
    assert fired(acts) == []
    (missed,) = [a for a in acts if isinstance(a, Missed)]
    assert (missed.first - T0, missed.last - T0, missed.count, missed.reason) == (60, 180, 3, "beyond_grace")
    assert q.next_fire("t") == T0 + 240


def test_grace_zero_never_catches_up() -> None:
    q, c = start(task("*/10 * * * * *", misfire_grace=0))
    c.advance(12.5)
    acts = q.tick(c.wall, c.mono)
    assert fired(acts) == []
    assert [a.count for a in acts if isinstance(a, Missed)] == [1]


def test_huge_gap_is_counted_without_walking_forever() -> None:
    q, c = start(task("* * * * * *"))
    c.step(7 * 86400)  # a week of suspend for a */1 task
    acts = q.tick(c.wall, c.mono)
    (missed,) = [a for a in acts if isinstance(a, Missed)]
    assert missed.exact is False and missed.count >= MISSED_COUNT_CAP
    assert fired(acts) == [7 * 86400]  # the on-time second itself still runs


def test_backward_jump_frequent_tasks_keep_firing_on_new_clock() -> None:
    q, c = start(task("*/10 * * * * *", name="often"), task("0 0 13 * * *", name="daily"))
    c.advance(9.9)
    assert fired(q.tick(c.wall, c.mono)) == [10]
    c.step(-600)  # clock set back 10 minutes
    c.advance(0.1)
    acts = q.tick(c.wall, c.mono)
    assert acts[0] == ClockJump("backward", acts[0].seconds, "keep_firing")  # type: ignore[union-attr]
    assert abs(acts[0].seconds - 600) < 1  # type: ignore[union-attr]
    assert q.next_fire("often") == T0 - 580  # fires again on the new clock
    assert q.next_fire("daily") == T0 + 3600  # the hourly-or-less task keeps its never-fired instant


def test_backward_jump_infrequent_task_never_repeats_an_instant() -> None:
    q, c = start(task("0 0 * * * *", name="hourly"), task("0 30 12 * * *", name="daily"))
    c.advance(30 * 60)  # 12:30:00.2 -> daily fires
    assert fired(q.tick(c.wall, c.mono)) == [1800]
    c.step(-20 * 60)  # back to 12:10
    c.advance(1)
    q.tick(c.wall, c.mono)
    for _ in range(25 * 60):  # walk the new clock through 12:30 again
        c.advance(1)
        assert "daily" not in [a.task.name for a in q.tick(c.wall, c.mono) if isinstance(a, FireNow)]
    assert q.next_fire("daily") == T0 + 86400 + 1800


def test_backward_jump_beyond_three_hours_recomputes() -> None:
    q, c = start(task("0 30 12 * * *", name="daily"))
    c.advance(30 * 60)
    assert fired(q.tick(c.wall, c.mono)) == [1800]
    c.step(-5 * 3600)
    c.advance(0.5)
    acts = q.tick(c.wall, c.mono)
    assert isinstance(acts[0], ClockJump) and acts[0].action == "recompute"
    assert q.next_fire("daily") == T0 + 1800  # a clock correction: today's 12:30 is ahead again


def test_reload_keeps_unchanged_and_never_refires() -> None:
    a, b = task("*/2 * * * * *", name="a"), task("*/3 * * * * *", name="b")
    q, c = start(a, b)
    c.advance(2)
    assert fired(q.tick(c.wall, c.mono)) == [2]
    changed_b = task("* * * * * *", name="b")
    q.set_tasks([a, changed_b, task("* * * * * *", name="new")], c.wall)
    assert q.next_fire("a") == T0 + 4
    assert q.next_fire("b") == T0 + 3 and q.next_fire("new") == T0 + 3
    q.set_tasks([changed_b], c.wall)
    assert q.next_fire("a") is None and len(q) == 1
    c.advance(1)
    assert [x.task.name for x in q.tick(c.wall, c.mono) if isinstance(x, FireNow)] == ["b"]
    # re-adding "a" in the same second it last fired must not fire that second again
    q.set_tasks([changed_b, a], T0 + 2.5)
    assert q.next_fire("a") == T0 + 4


def test_reboot_and_daemon_tasks_are_not_queued() -> None:
    q, _ = start(task("@reboot", name="r"))
    assert len(q) == 0 and q.next_due() is None


def test_many_tasks_only_due_ones_cost() -> None:
    tasks = [task(f"{i % 60} {i // 60 % 60} * * * *", name=f"t{i}") for i in range(3600)]
    q, c = start(*tasks, at=T0 - 0.5)
    c.advance(1)
    acts = q.tick(c.wall, c.mono)
    assert [a.task.name for a in acts if isinstance(a, FireNow)] == ["t0"]


def test_backoff_doubles_to_a_minute_and_resets() -> None:
    b = Backoff()
    assert [b.after_exit(0.5) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert b.after_exit(61) == 1
    assert b.after_exit(3) == 2


def test_precomputed_hints_give_the_same_schedule() -> None:
    tasks = [task(f"{i % 60} */{1 + i % 7} * * * *", name=f"t{i}") for i in range(50)]
    hints = precompute(tasks, T0 - 30.0)  # worked out 30 s before the apply
    with_hints, without = FireQueue(), FireQueue()
    with_hints.set_tasks(tasks, T0 + 0.5, hints)
    without.set_tasks(tasks, T0 + 0.5)
    assert all(with_hints.next_fire(t.name) == without.next_fire(t.name) for t in tasks)
    stale = precompute(tasks, T0 + 100.0)  # computed "after" a later time: must not be trusted
    q = FireQueue()
    q.set_tasks(tasks, T0 + 0.5, stale)
    assert all(q.next_fire(t.name) == without.next_fire(t.name) for t in tasks)


def test_edit_after_backward_jump_keeps_firing_on_the_new_clock() -> None:
    q, c = start(task("*/10 * * * * *", name="often"))
    c.advance(9.9)
    assert fired(q.tick(c.wall, c.mono)) == [10]
    c.step(-7200)  # back two hours
    c.advance(0.1)
    q.tick(c.wall, c.mono)
    q.set_tasks([task("*/10 * * * * *", name="often", jitter=0)], c.wall)  # unchanged: no effect
    edited = task("*/10 * * * * *", name="often", env="{A: b}")
    q.set_tasks([edited], c.wall)
    nxt = q.next_fire("often")
    assert nxt is not None and nxt - c.wall < 10  # not silenced for the two hours it "already" fired


def test_reload_between_boundary_and_tick_keeps_that_seconds_fire() -> None:
    q, c = start(task("*/10 * * * * *", name="t"))
    c.advance(9.0)  # T0+9.2: processed
    q.tick(c.wall, c.mono)
    c.advance(1.3)  # T0+10.5: the tick for second 10 has not run yet (loop busy)
    q.set_tasks([task("*/10 * * * * *", name="t", env="{A: b}")], c.wall)
    assert q.next_fire("t") == T0 + 10
    assert fired(q.tick(c.wall, c.mono)) == [10]


def test_next_tick_is_the_coming_boundary_unless_a_passed_one_still_has_fires() -> None:
    assert next_tick(T0 + 0.4, T0 + 1, T0) == T0 + 1  # on course: the next boundary
    assert next_tick(T0 + 0.4, None, T0) == T0 + 1  # nothing due at all
    assert next_tick(T0 + 1.3, T0 + 1, T0) == T0 + 1  # boundary T0+1 passed untouched: now
    assert next_tick(T0 + 1.3, T0 - 5, 0) == T0 + 1  # the first tick, with a fire already due
    assert next_tick(T0 + 1.3, T0 + 1, T0 + 1) == T0 + 2  # that second was ticked: never twice
    assert next_tick(T0 + 1.3, T0 + 2, T0) == T0 + 2  # passed, but nothing of it is due: wait
