"""Pure parts of the service: which tasks apply here, and what a non-root daemon must refuse."""

from __future__ import annotations

import ipaddress
import pwd
from pathlib import Path

import pytest

from gotorch.config import Task, parse_config
from gotorch.loader import account_problems
from gotorch.service import applicable

TEXT = """\
version: 1
tasks:
  - {name: a, schedule: "@daily", command: x, ips: [10.1.0.0/16]}
  - {name: b, schedule: "@daily", command: x, ips: [10.2.0.1]}
  - {name: c, schedule: "@daily", command: x}
  - {name: d, schedule: "@daily", command: x, enabled: false}
  - {name: e, schedule: "@daily", command: x, user: root}
"""


def test_applicable_filters_by_address_and_enabled() -> None:
    cfg = parse_config(TEXT, "t.yaml")
    here, elsewhere = applicable(cfg, [ipaddress.ip_address("10.1.2.3")])
    assert {n: ip for n, (_, ip) in here.items()} == {"a": "10.1.2.3", "c": None, "e": None}
    assert elsewhere == ["b", "d"]


def test_non_root_daemon_refuses_other_users() -> None:
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no 'nobody' account on this host")
    cfg = parse_config(TEXT, "t.yaml")
    (problem,) = account_problems(cfg, nobody)
    assert str(problem).startswith("t.yaml:7:1: task 'e': user: runs as user 'root', but torch is not running as root")


def test_a_failing_tick_does_not_stop_later_ticks(tmp_path: object) -> None:
    import asyncio
    from pathlib import Path

    from gotorch.scheduler import Scheduler

    calls: list[int] = []

    async def main() -> None:
        sched = Scheduler(asyncio.get_running_loop(), state_dir=Path(str(tmp_path)))

        def flaky() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("boom")

        sched.before_tick = flaky
        sched.arm()
        await asyncio.sleep(3.2)  # real clock: at least two more boundaries pass
        sched.request_stop("test")
        await sched.wait_stopped()

    asyncio.run(main())
    assert len(calls) >= 3


def test_gradual_apply_in_slices_matches_one_piece_apply(tmp_path: Path) -> None:
    import asyncio

    from gotorch.config import parse_config
    from gotorch.scheduler import Scheduler

    def tasks(text: str) -> dict[str, tuple[Task, str | None]]:
        cfg = parse_config("version: 1\ntasks:\n" + text, check_accounts=False)
        return {t.name: (t, None) for t in cfg.tasks}

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
        got = await sliced.apply_gradually(after, slice_size=3)
        assert got == expected
        assert (got.added, got.removed, got.changed) == (tuple(f"n{i}" for i in range(5)),
                                                           ("t7", "t8", "t9"), ("t4", "t5", "t6"))
        assert {n: s.task for n, s in sliced.states.items()} == {n: s.task for n, s in whole.states.items()}
        assert all(sliced.queue.next_fire(n) == whole.queue.next_fire(n) for n in after)
        assert len(sliced.queue) == len(whole.queue) == len(after)

    asyncio.run(main())
