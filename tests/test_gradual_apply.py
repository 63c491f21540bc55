"""Scheduler.apply_plan: a big reload applied in slices between fires, with a fake clock."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gotorch.scheduler as scheduler_module
from gotorch.config import Task, parse_config
from gotorch.plan import Plan, diff
from gotorch.scheduler import Scheduler

T0 = 1_800_000_000


async def apply_whole(s: Scheduler, new: dict[str, tuple[Task, str | None]], **kw: Any) -> Plan:
    """Reload the whole task set `new`: its diff against what `s` runs, applied with apply_plan."""
    return await s.apply_plan(diff({n: st.task for n, st in s.states.items()}, {n: t for n, (t, _) in new.items()}),
                              new, **kw)


def tasks(text: str) -> dict[str, tuple[Task, str | None]]:
    cfg = parse_config("version: 1\ntasks:\n" + text, check_accounts=False)
    return {t.name: (t, None) for t in cfg.tasks}


def yearly(names: list[str], month: int = 1) -> str:
    return "".join(f'  - {{name: {n}, schedule: "0 0 0 1 {month} *", command: "true"}}\n' for n in names)


def test_gradual_apply_in_slices_matches_one_piece_apply(tmp_path: Path) -> None:
    before = tasks("".join(f'  - {{name: t{i}, schedule: "0 0 0 1 1 *", command: "true"}}\n' for i in range(10)))
    # t0-t3 unchanged, t4-t6 changed, t7-t9 removed, n0-n4 added
    after = tasks("".join(f'  - {{name: t{i}, schedule: "0 0 0 1 1 *", command: "true"}}\n' for i in range(4))
                  + "".join(f'  - {{name: t{i}, schedule: "0 0 0 2 1 *", command: "true"}}\n' for i in range(4, 7))
                  + "".join(f'  - {{name: n{i}, schedule: "0 0 0 3 1 *", command: "true"}}\n' for i in range(5)))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        whole, sliced = Scheduler(loop, state_dir=tmp_path), Scheduler(loop, state_dir=tmp_path)
        for s in (whole, sliced):
            s.apply(before)
        expected = whole.apply(after)
        got = await apply_whole(sliced, after, slice_size=3, atomic_up_to=0)
        assert got == expected
        assert (got.added, got.removed, got.changed) == (tuple(f"n{i}" for i in range(5)),
                                                           ("t7", "t8", "t9"), ("t4", "t5", "t6"))
        assert {n: s.task for n, s in sliced.states.items()} == {n: s.task for n, s in whole.states.items()}
        assert all(sliced.queue.next_fire(n) == whole.queue.next_fire(n) for n in after)
        assert len(sliced.queue) == len(whole.queue) == len(after)

    asyncio.run(main())


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    clock = {"t": T0 + 0.1}
    monkeypatch.setattr(scheduler_module, "time", types.SimpleNamespace(time=lambda: clock["t"],
                                                                        monotonic=lambda: clock["t"]))
    return clock


def _drive(tmp_path: Path, clock: dict[str, float], before: dict[str, tuple[Task, str | None]],
           after: dict[str, tuple[Task, str | None]], apply: Callable[[Scheduler], Any]) -> dict[int, list[str]]:
    """Apply `after` over `before` while a second passes at every quiet moment; fires by second."""
    started: dict[int, list[str]] = {}

    async def main() -> None:
        s = Scheduler(asyncio.get_running_loop(), state_dir=tmp_path)
        s._start = lambda task, scheduled: started.setdefault(scheduled - T0, []).append(task.name)  # type: ignore[method-assign]
        s.apply(before)
        s.tick()

        async def quiet(**_: object) -> None:  # a boundary, and its fires, pass before every slice
            clock["t"] += 1.0
            s.tick()

        s.quiet_moment = quiet  # type: ignore[method-assign]
        await apply(s)
        for _ in range(2):
            clock["t"] += 1.0
            s.tick()

    asyncio.run(main())
    return started


def test_task_renamed_in_a_sliced_reload_never_runs_under_both_names(tmp_path: Path,
                                                                     fake_clock: dict[str, float]) -> None:
    filler = yearly([f"f{i}" for i in range(6)])
    before = tasks('  - {name: a_old, schedule: "* * * * * *", command: backup}\n' + filler)
    after = tasks('  - {name: b_new, schedule: "* * * * * *", command: backup}\n' + filler)
    fires = _drive(tmp_path, fake_clock, before, after,
                   lambda s: apply_whole(s, after, slice_size=2, atomic_up_to=0))
    assert fires and all(len(names) == 1 for names in fires.values()), fires
    assert fires[max(fires)] == ["b_new"]


@pytest.mark.parametrize(("quick", "wait"), [(1000, {"until": 0.97}), (0, {"whole_second": True})])
def test_reload_is_applied_in_one_piece_a_big_one_right_after_a_tick(
        tmp_path: Path, fake_clock: dict[str, float], monkeypatch: pytest.MonkeyPatch, quick: int,
        wait: dict[str, object]) -> None:
    # Up to APPLY_QUICK names, the next quiet moment early in a second will do; more wait for a tick.
    import gotorch.scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "APPLY_QUICK", quick)
    before = tasks('  - {name: a, schedule: "* * * * * *", command: x}\n' + yearly(["y1", "y2", "y3"]))
    after = tasks('  - {name: a, schedule: "* * * * * *", command: changed}\n' + yearly(["y1", "y2", "y3"], 2))
    quiet_calls: list[dict[str, object]] = []

    async def apply(s: Scheduler) -> None:
        inner = s.quiet_moment

        async def counting(**kw: object) -> None:
            quiet_calls.append(kw)
            await inner(**kw)

        s.quiet_moment = counting  # type: ignore[method-assign]
        plan = await apply_whole(s, after, slice_size=1)
        assert plan.changed == ("a", "y1", "y2", "y3")

    fires = _drive(tmp_path, fake_clock, before, after, apply)
    assert quiet_calls == [wait]  # one wait, then everything at once
    assert all(names == ["a"] for names in fires.values())


def test_reload_that_failed_half_way_is_not_taken_as_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug in one slice left part of the new config applied; reverting the file to the old bytes
    # was then "reload.unchanged", and the mix stayed for good.
    import gotorch.service as service_module
    from gotorch.config import Config
    from gotorch.loader import Base, _pack
    from gotorch.plan import applicable

    def config(cmd: str, digest: str) -> Config:
        c = parse_config("version: 1\ntasks:\n" + "".join(
            f'  - {{name: t{i}, schedule: "@yearly", command: "{cmd}"}}\n' for i in range(6)), "t.yaml",
            check_accounts=False)
        return Config(c.path, c.tasks, digest)

    old, new = config("old", "d-old"), config("new", "d-new")
    configs = [new, old]

    async def fake_load(path: Path, host_ips: str | None, base: Base | None, **_: object) -> object:
        return _pack(configs.pop(0), [], base, 0)

    monkeypatch.setattr(service_module, "load_in_child", fake_load)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = service_module.Service(Path("t.yaml"), old, paths=types.SimpleNamespace(state_dir=tmp_path),  # type: ignore[arg-type]
                                   addresses=[], watch=False)
        s.loop = loop
        s.scheduler = sched = Scheduler(loop, state_dir=tmp_path)
        sched.apply(applicable(old, [])[0])
        sliced = sched.apply_plan
        monkeypatch.setattr(sched, "apply_plan",
                            lambda plan, part, hints: sliced(plan, part, hints, slice_size=2, atomic_up_to=0))
        real_part = sched._apply_part
        calls: list[int] = []

        def second_slice_fails(*args: Any) -> None:
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("bug in slice 2")
            real_part(*args)

        monkeypatch.setattr(sched, "_apply_part", second_slice_fails)
        await s._reload("file", True)
        assert s.last_reload is not None and not s.last_reload.ok
        assert {st.task.command for st in sched.states.values()} == {"old", "new"}  # half applied
        monkeypatch.setattr(sched, "_apply_part", real_part)
        await s._reload("file", True)  # the file reverted to the old bytes: applied again, not "unchanged"
        assert {st.task.command for st in sched.states.values()} == {"old"}
        assert s.last_reload is not None and s.last_reload.ok and s.generation.number == 2

    asyncio.run(main())
