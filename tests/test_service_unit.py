"""Pure parts of the service: which tasks apply here, and what a non-root daemon must refuse."""

from __future__ import annotations

import ipaddress
import pwd
from pathlib import Path

import pytest

from gotorch.config import parse_config
from gotorch.loader import account_problems
from gotorch.plan import applicable
from tests.test_gradual_apply import apply_whole

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



def test_non_root_daemon_without_a_passwd_entry_gets_errors_not_a_crash() -> None:
    # A container's uid often has no passwd entry: that raised KeyError out of `torch start`.
    uid = 54321
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    cfg = parse_config(TEXT, "t.yaml")
    (problem,) = account_problems(cfg, uid)
    assert "task 'e': user: runs as user 'root'" in str(problem)


def test_a_reload_changing_only_history_keep_leaves_daemon_copies_running(tmp_path: object) -> None:
    import asyncio

    from gotorch.plan import runs_unchanged
    from gotorch.scheduler import Scheduler

    def tasks(keep: int, command: str = "sleep 100") -> dict[str, tuple[object, None]]:
        cfg = parse_config(f"version: 1\ntasks:\n  - {{name: d, type: daemon, command: {command!r}, "
                           f"history_keep: {keep}}}\n", "t.yaml")
        return {t.name: (t, None) for t in cfg.tasks}

    first, kept, other = tasks(1000), tasks(5), tasks(5, "sleep 200")
    assert runs_unchanged(first["d"][0], kept["d"][0])  # type: ignore[arg-type]
    assert not runs_unchanged(first["d"][0], other["d"][0])  # type: ignore[arg-type]
    seen: dict[str, set[str]] = {}

    async def main() -> None:
        sched = Scheduler(asyncio.get_running_loop(), state_dir=Path(str(tmp_path)))
        sched.apply(first, at_start=True)  # type: ignore[arg-type]
        seen["start"] = set(sched.runner.runs)
        plan = await apply_whole(sched, kept)  # type: ignore[arg-type]
        assert plan.changed == ("d",)  # still reported as a change of the task
        assert sched.states["d"].task.history_keep == 5
        for _ in range(20):  # long enough for a TERMed `sleep` to be reaped, had it been retired
            await asyncio.sleep(0.05)
            sched.runner.reap()
        seen["keep"] = set(sched.runner.runs)
        await apply_whole(sched, other)  # type: ignore[arg-type]
        for _ in range(100):  # the old copy is retired, its successor starts when it has gone
            await asyncio.sleep(0.05)
            sched.runner.reap()  # no SIGCHLD handler here (the service installs it)
            if set(sched.runner.runs) - seen["start"]:
                break
        seen["other"] = set(sched.runner.runs)
        sched.request_stop("test")
        await sched.wait_stopped()

    asyncio.run(main())
    assert len(seen["start"]) == 1 and seen["keep"] == seen["start"]
    assert seen["other"] and not seen["other"] & seen["start"]
