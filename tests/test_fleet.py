"""The fleet's pure parts: the `fleet:` block, `fleet plan`, and the gate's decisions (fake coordinator)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import textwrap
import time
from typing import Any

import pytest

from gotorch.config import ConfigInvalid, Task, parse_config
from gotorch.events import Bus, Event, FleetUnreachableRun, RunEnded
from gotorch.fleet.etcd import Claim
from gotorch.fleet.gate import FleetGate
from gotorch.fleet.plan import parse_hosts, placements
from gotorch.fleet.settings import FleetBad, parse_fleet

FLEET = {"endpoints": ["http://10.0.0.2:2379"], "cluster": "prod"}


def test_the_fleet_block_has_defaults_and_names_the_field_at_fault() -> None:
    s = parse_fleet(FLEET)
    assert (s.lease_ttl, s.prefix, s.tls, s.username) == (10.0, "/torch/prod/", None, None)
    assert parse_fleet({**FLEET, "lease_ttl": "30s", "tls": {"ca": "/etc/torch/ca.pem"}}).lease_ttl == 30
    for bad, field in [({**FLEET, "lease_ttl": "1s"}, "fleet.lease_ttl"),
                       ({**FLEET, "endpoints": ["10.0.0.2:2379"]}, "fleet.endpoints"),
                       ({**FLEET, "cluster": "a/b"}, "fleet.cluster"),
                       ({**FLEET, "username": "torch"}, "fleet.username"),
                       ({**FLEET, "tls": {"cert": "/c.pem"}}, "fleet.tls"),
                       ({**FLEET, "tls": {"ca": "relative.pem"}}, "fleet.tls.ca"),
                       ({**FLEET, "leader": True}, "fleet.leader")]:
        with pytest.raises(FleetBad) as e:
            parse_fleet(bad)
        assert e.value.field == field


def _config(tasks: str, fleet: bool = True) -> Any:
    head = 'fleet:\n  endpoints: ["http://10.0.0.2:2379"]\n  cluster: prod\n' if fleet else ""
    return parse_config(f"version: 1\n{head}tasks:\n{textwrap.indent(textwrap.dedent(tasks), '  ')}",
                        check_accounts=False)


def test_fleet_tasks_are_checked_against_the_file() -> None:
    c = _config("""\
        - {name: a, schedule: "0 * * * * *", command: x, fleet: once, fleet_unreachable: run}
        - {name: b, type: daemon, command: y, fleet: once}
        """)
    assert c.fleet.cluster == "prod" and [t.fleet for t in c.tasks] == ["once", "once"]
    assert c.tasks[0].fleet_unreachable == "run" and c.tasks[1].fleet_unreachable == "skip"
    with pytest.raises(ConfigInvalid) as e:
        _config('- {name: a, schedule: "0 * * * * *", command: x, fleet: once}', fleet=False)
    assert "top-level `fleet:` block" in str(e.value.errors[0])
    with pytest.raises(ConfigInvalid) as e:
        _config('- {name: a, schedule: "@reboot", command: x, fleet: once}')
    assert "@reboot" in str(e.value.errors[0])
    with pytest.raises(ConfigInvalid):
        _config('- {name: a, schedule: "0 * * * * *", command: x, fleet: twice}')


def test_fleet_plan_places_tasks_by_their_ips_rules() -> None:
    c = _config("""\
        - {name: billing, schedule: "0 0 2 * * *", command: x, fleet: once, ips: ["10.0.0.0/24"]}
        - {name: logs, schedule: "0 * * * * *", command: y, ips: ["10.0.0.0/24"]}
        - {name: db-only, schedule: "0 * * * * *", command: z, ips: ["10.0.1.7"]}
        - {name: nowhere, schedule: "0 * * * * *", command: z, ips: ["192.0.2.1"]}
        - {name: disabled-one, schedule: "0 * * * * *", command: z, enabled: false}
        """)
    hosts = parse_hosts("web1=10.0.0.5,web2=10.0.0.6,db1=10.0.1.7")
    got = {p.name: (p.hosts, p.runs) for p in placements(c, hosts)}
    assert got == {"billing": (("web1", "web2"), "one matching host"),
                   "logs": (("web1", "web2"), "every matching host"),
                   "db-only": (("db1",), "every matching host"),
                   "nowhere": ((), "nowhere"), "disabled-one": ((), "disabled")}
    with pytest.raises(ValueError):
        parse_hosts("web1:10.0.0.5")


class FakeCoordinator:
    def __init__(self) -> None:
        self.claims: list[tuple[str, int, str]] = []
        self.name = "me"
        self.settings = parse_fleet({**FLEET, "lease_ttl": "10s"})
        self.resigned: list[tuple[str, int]] = []
        self.elections: frozenset[str] = frozenset()

    def claim(self, task: str, instant: int, run_id: str, interval: float) -> None:
        self.claims.append((task, instant, run_id))

    def set_elections(self, tasks: frozenset[str]) -> None:
        self.elections = tasks

    def resign(self, task: str, token: int) -> None:
        self.resigned.append((task, token))

    def start(self) -> None:
        pass

    def release_claim(self, task: str, instant: int, revision: int) -> None:
        pass


def _gate(loop: asyncio.AbstractEventLoop, events: list[Event], next_fire: int,
          copies: dict[str, list[tuple[int, str]]] | None = None,
          started: list[str] | None = None) -> tuple[FleetGate, FakeCoordinator]:
    fake = FakeCoordinator()
    bus = Bus()
    bus.subscribe(events.append)
    ids = iter(range(1, 1000))
    running = copies if copies is not None else {}
    gate = FleetGate(loop, bus, lambda _g: fake, new_run_id=lambda: f"r{next(ids)}",  # type: ignore[arg-type,return-value]
                     next_fire=lambda _n: next_fire,
                     start_copies=lambda n: (started if started is not None else []).append(n),
                     stop_copies=lambda _n, _r, _k: 0, copies=lambda n: running.get(n, []))
    gate._fence_failed = True  # no watchdog process in these tests
    return gate, fake


def test_the_gate_claims_ahead_and_decides_each_fire_by_the_answer() -> None:
    loop = asyncio.new_event_loop()
    try:
        events: list[Event] = []
        t = Task("tick", "true", fleet="once", schedule=_config('- {name: x, schedule: "* * * * * *", command: x}',
                                                                  fleet=False).tasks[0].schedule)
        gate, fake = _gate(loop, events, next_fire=2_000_000_001)
        gate.set_tasks([t])
        gate.prepare(2_000_000_000, lambda _n: False, lambda _n: False)
        assert fake.claims == [("tick", 2_000_000_001, "r1")]
        gate.prepare(2_000_000_000, lambda _n: False, lambda _n: False)  # asked once only
        assert len(fake.claims) == 1
        started: list[str] = []
        skipped: list[tuple[str, str]] = []
        go, skip = started.append, lambda reason, detail: skipped.append((reason, detail))
        gate.claimed("tick", 2_000_000_001, "r1", Claim(True, {"host": "me"}, 7), None)
        gate.fire(t, 2_000_000_001, go, skip)
        assert started == ["r1"] and not skipped
        gate.claimed("tick", 2_000_000_002, "r2", Claim(False, {"host": "web2", "run_id": "x9"}, 8), None)
        gate.fire(t, 2_000_000_002, go, skip)
        assert skipped == [("fleet", "run by web2 (run x9)")]
        gate.claimed("tick", 2_000_000_003, "r3", None, "etcd did not answer")
        gate.fire(t, 2_000_000_003, go, skip)
        assert skipped[-1] == ("fleet_unreachable", "etcd did not answer")
        run_anyway = Task("tick", "true", fleet="once", fleet_unreachable="run", schedule=t.schedule)
        # `run` runs it here only while etcd is known to be down: a slow answer may be another's win.
        gate.claimed("tick", 2_000_000_004, "r4", None, "etcd did not answer")
        gate.fire(run_anyway, 2_000_000_004, go, skip)
        assert len(started) == 1 and skipped[-1][0] == "fleet_unreachable"
        gate.reachable_changed(False, "connection refused")
        gate.claimed("tick", 2_000_000_005, "r5", None, "etcd is unreachable")
        gate.fire(run_anyway, 2_000_000_005, go, skip)
        assert len(started) == 2 and any(isinstance(e, FleetUnreachableRun) for e in events)
    finally:
        loop.close()


def test_a_busy_or_paused_host_does_not_claim() -> None:
    """A host that won an instant and then skipped it for max_instances would leave it run nowhere."""
    loop = asyncio.new_event_loop()
    try:
        t = Task("tick", "true", fleet="once")
        gate, fake = _gate(loop, [], next_fire=2_000_000_001)
        gate.set_tasks([t])
        gate.prepare(2_000_000_000, lambda _n: False, lambda _n: True)
        gate.prepare(2_000_000_000, lambda _n: True, lambda _n: False)
        assert fake.claims == []
    finally:
        loop.close()


def _holding_svc(loop: asyncio.AbstractEventLoop, copies: dict[str, list[tuple[int, str]]],
                 started: list[str]) -> tuple[FleetGate, FakeCoordinator]:
    """A gate holding fleet daemon task `svc` (token 7), its copies as `copies` says."""
    from gotorch.fleet.coordinator import boottime

    gate, fake = _gate(loop, [], next_fire=0, copies=copies, started=started)
    gate.set_tasks([Task("svc", "x", type="daemon", fleet="once")])
    gate.prepare(0, lambda _n: False, lambda _n: False)
    gate.renewed(boottime())
    gate.elected("svc", 7)
    return gate, fake


def test_a_deposed_task_keeps_its_election_until_its_last_copy_ended() -> None:
    """Giving the key up while our copies are still in their TERM grace would let another host start one."""
    loop = asyncio.new_event_loop()
    try:
        copies = {"svc": [(4242, "run-1")]}
        started: list[str] = []
        gate, fake = _holding_svc(loop, copies, started)
        assert started == ["svc"]
        gate.prepare(0, lambda _n: True, lambda _n: False)  # paused: its copy is being stopped
        assert "svc" in fake.elections and fake.resigned == []  # the key is kept meanwhile
        gate.elected("svc", 9)  # (a key won again meanwhile is not acted on yet)
        copies["svc"] = []
        gate(RunEnded("svc", "run-1", 4242, "killed", None, "SIGTERM", 1.0, 0, 0))
        assert fake.resigned == [("svc", 9)] and "svc" not in fake.elections and started == ["svc"]
    finally:
        loop.close()


def test_a_task_won_again_while_its_copies_ended_starts_under_the_new_election() -> None:
    loop = asyncio.new_event_loop()
    try:
        copies = {"svc": [(4242, "run-1")]}
        started: list[str] = []
        gate, fake = _holding_svc(loop, copies, started)
        gate.deposed("svc", "the host's etcd lease expired")  # KILLed; still ending
        gate.elected("svc", 11)  # the coordinator won it again on a new lease
        assert gate.token("svc") is None and started == ["svc"]
        copies["svc"] = []
        gate(RunEnded("svc", "run-1", 4242, "killed", None, "SIGKILL", 1.0, 0, 0))
        assert gate.token("svc") == 11 and started == ["svc", "svc"] and fake.resigned == []
    finally:
        loop.close()


def test_a_fire_without_an_answer_waits_for_it_in_parallel() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        t = Task("tick", "true", fleet="once")
        gate, fake = _gate(loop, [], next_fire=0)
        started: list[str] = []
        gate.fire(t, 2_000_000_010, started.append, lambda r, d: None)
        assert fake.claims and not started  # asked now; the fire waits for the answer
        gate.claimed("tick", 2_000_000_010, fake.claims[0][2], Claim(True, {}, 9), None)
        assert started == [fake.claims[0][2]]
    asyncio.run(main())


def test_a_fleet_daemon_task_may_run_only_where_it_is_held_and_renewed() -> None:
    loop = asyncio.new_event_loop()
    try:
        gate, _ = _gate(loop, [], next_fire=0)
        d = Task("svc", "x", type="daemon", fleet="once")
        plain = Task("other", "x", type="daemon")
        gate.set_tasks([d, plain])
        assert gate.may_run(plain) and not gate.may_run(d)
        gate.prepare(0, lambda _n: False, lambda _n: False)
        from gotorch.fleet.coordinator import boottime
        gate.renewed(boottime())
        gate.elected("svc", 42)
        assert gate.may_run(d) and gate.token("svc") == 42
        gate.renewed(boottime() - 8)  # the last keep-alive is 8 s of a 10 s lease old: past the fencing point
        assert not gate.may_run(d)
    finally:
        loop.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _copy(run_id: str) -> tuple[subprocess.Popen[bytes], int]:
    """A fake fleet copy: a session of its own, and a process that setsid'd away from it."""
    env = {**os.environ, "TORCH_RUN_KEY": run_id}
    p = subprocess.Popen(["/bin/sh", "-c", "setsid sleep 300 & echo $!; exec sleep 300"], env=env,
                         stdout=subprocess.PIPE, start_new_session=True)
    assert p.stdout is not None
    escaped = int(p.stdout.readline())
    return p, escaped


@pytest.mark.parametrize("how", ["deadline", "daemon died"])
def test_the_fence_watchdog_kills_guarded_copies_and_their_escaped_processes(how: str) -> None:
    from gotorch.fleet.coordinator import boottime
    from gotorch.fleet.fence import Fence

    run_id = f"fence-test-{os.getpid()}-{how.replace(' ', '-')}"
    copy, escaped = _copy(run_id)
    fence = Fence()
    fence.start()
    try:
        deadline = boottime() + (0.5 if how == "deadline" else 60)
        fence.arm(deadline, [copy.pid], [run_id])
        time.sleep(0.2)
        assert _alive(copy.pid) and _alive(escaped)
        if how == "daemon died":
            assert fence._fd is not None
            os.close(fence._fd)  # as when the daemon is killed -9: its end of the pipe closes
            fence._fd = None
        copy.wait(timeout=10)
        end = time.monotonic() + 10
        while _alive(escaped) and time.monotonic() < end:
            time.sleep(0.05)
        assert not _alive(escaped)
    finally:
        fence.close()
        for pid in (copy.pid, escaped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        copy.wait(timeout=10)


def test_only_this_daemons_own_earlier_claim_is_taken_over() -> None:
    """A restart just before a boundary must not lose the instant it claimed; a namesake must not win it."""
    from gotorch.fleet.coordinator import BOOT_ID, Coordinator

    loop = asyncio.new_event_loop()
    try:
        c = Coordinator(loop, parse_fleet(FLEET), None, lambda: {"name": "web1", "state_dir": "/var/lib/torch"})  # type: ignore[arg-type]
        mine = {"host": "web1", "boot_id": BOOT_ID, "state_dir": "/var/lib/torch", "incarnation": "old"}
        assert c._own_earlier(mine)
        assert not c._own_earlier({**mine, "incarnation": c.incarnation})  # this very incarnation's
        assert not c._own_earlier({**mine, "state_dir": "/srv/other-torch"})  # another daemon on the host
        assert not c._own_earlier({**mine, "boot_id": "another-boot"})  # a clone with the same name and path
        assert not c._own_earlier({"host": "web1", "incarnation": "old"})  # an older torch's claim
    finally:
        loop.close()
