"""Two hosts on one machine: the same task file in two network namespaces, each with its own address.

Each daemon discovers its host's addresses from the real interfaces (no TORCH_HOST_IPS), and each runs
exactly the tasks whose `ips` match it, plus the tasks for every host. No traffic is sent anywhere:
the addresses exist only inside the namespaces this test creates and deletes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.integration

ADDRESSES = {"a": "10.231.1.1", "b": "10.231.2.1"}

TASKS = textwrap.dedent("""\
    version: 1
    defaults:
      timezone: UTC
    tasks:
      - name: only-a
        schedule: "* * * * * *"
        ips: [10.231.1.1]
        command: echo only-a >> "$TORCH_STATE_DIR/ran"
      - name: only-b
        schedule: "* * * * * *"
        ips: [10.231.2.0/24]
        command: echo only-b >> "$TORCH_STATE_DIR/ran"
      - name: a-and-b
        schedule: "* * * * * *"
        ips: [10.231.1.1, 10.231.2.1]
        command: echo a-and-b >> "$TORCH_STATE_DIR/ran"
      - name: everyone
        schedule: "* * * * * *"
        command: echo everyone >> "$TORCH_STATE_DIR/ran"
      - name: nobody
        schedule: "* * * * * *"
        ips: [10.231.3.0/24, "fd31:231::/64"]
        command: echo nobody >> "$TORCH_STATE_DIR/ran"
      - name: boot-a
        schedule: "@reboot"
        ips: [10.231.1.0/24]
        command: echo boot-a >> "$TORCH_STATE_DIR/ran"
    """)

EXPECTED = {
    "a": {"only-a", "a-and-b", "everyone", "boot-a"},
    "b": {"only-b", "a-and-b", "everyone"},
}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


@dataclass
class Host:
    """One simulated host: a network namespace with one address of its own."""

    key: str
    netns: str
    address: str
    device: str = ""


@pytest.fixture
def hosts() -> Iterator[dict[str, Host]]:
    """Two network namespaces (unique names), each with its address; deleted again whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces (`ip netns add`) needs root")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    made: dict[str, Host] = {}
    try:
        for key, address in ADDRESSES.items():
            host = Host(key, f"torch-test-{tag}-{key}", address)
            try:
                _ip("netns", "add", host.netns)
            except RuntimeError as exc:
                pytest.skip(f"cannot create a network namespace here: {exc}")
            made[key] = host
            _ip("-n", host.netns, "link", "set", "lo", "up")
            # A dummy interface is what a real host's eth0 looks like to address discovery; kernels
            # without the dummy driver get the address on the namespace's own loopback instead.
            if _ip("-n", host.netns, "link", "add", "torch0", "type", "dummy", check=False).returncode == 0:
                host.device = "torch0"
                _ip("-n", host.netns, "link", "set", "torch0", "up")
            else:
                host.device = "lo"
            _ip("-n", host.netns, "addr", "add", f"{address}/24", "dev", host.device)
        yield made
    finally:
        for host in made.values():
            _ip("netns", "del", host.netns, check=False)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("TORCH_HOST_IPS", "TORCH_STATE_DIR", "TORCH_CONFIG", "NOTIFY_SOCKET"):
        env.pop(var, None)
    return env


def _events(path: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            ev = json.loads(line)
            if ev.get("event") == name:
                out.append(ev)
    return out


def _ran(state: Path) -> list[str]:
    f = state / "ran"
    return f.read_text().split() if f.exists() else []


def test_each_host_runs_exactly_its_own_tasks(hosts: dict[str, Host], tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(TASKS)

    # `torch list` inside each namespace: which tasks apply, through which address (no override).
    for key, host in hosts.items():
        r = subprocess.run(["ip", "netns", "exec", host.netns, sys.executable, "-m", "gotorch", "list", "--json",
                            str(tasks)], capture_output=True, text=True, env=_env(), timeout=60)
        assert r.returncode == 0, r.stderr
        rows = {row["name"]: row for row in json.loads(r.stdout)}
        assert {n for n, row in rows.items() if row["applies"]} == EXPECTED[key]
        assert rows["only-" + key]["matched_ip"] == host.address

    procs: dict[str, subprocess.Popen[bytes]] = {}
    states = {key: tmp_path / f"state-{key}" for key in hosts}
    logs = {key: tmp_path / f"torch-{key}.log" for key in hosts}
    try:
        for key, host in hosts.items():
            with open(logs[key], "wb") as err:
                procs[key] = subprocess.Popen(
                    ["ip", "netns", "exec", host.netns, sys.executable, "-m", "gotorch", "start", "--foreground",
                     "-c", str(tasks), "--state-dir", str(states[key])],
                    stdout=err, stderr=err, stdin=subprocess.DEVNULL, env=_env(), cwd=tmp_path)

        def every_task_ran_twice() -> bool:
            for key in hosts:
                assert procs[key].poll() is None, logs[key].read_text()
                ran = _ran(states[key])
                if any(ran.count(name) < 2 for name in EXPECTED[key] if not name.startswith("boot-")):
                    return False
            return True

        def so_far() -> str:
            return f"two runs of each task; so far {({k: sorted(set(_ran(s))) for k, s in states.items()})}"

        wait_until(every_task_ran_twice, 30, what=so_far)

        # Host b gains an address (a new alias, DHCP): a reload re-reads the interfaces, so the task
        # for that network now applies there, and only there.
        b = hosts["b"]
        _ip("-n", b.netns, "addr", "add", "10.231.3.1/24", "dev", b.device)
        procs["b"].send_signal(signal.SIGUSR2)
        wait_until(lambda: _events(logs["b"], "reload.applied"), 20, what="reload on host b")
        assert _events(logs["b"], "reload.applied")[0]["added"] == ["nobody"]
        assert _events(logs["b"], "host.addresses_changed")
        wait_until(lambda: "nobody" in _ran(states["b"]), 20, what="'nobody' running on b")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    for key in hosts:
        assert procs[key].returncode == 0, logs[key].read_text()

    for key, host in hosts.items():
        ran = _ran(states[key])
        expected = EXPECTED[key] | ({"nobody"} if key == "b" else set())
        assert set(ran) == expected, f"host {key} ({host.address}) ran {sorted(set(ran))}"
        assert ran.count("boot-a") == (1 if key == "a" else 0)

        # The daemon found its address on the interface by itself, and not the other host's.
        start = _events(logs[key], "daemon.start")[0]
        assert host.address in start["host_ips"]
        other = next(h for h in hosts.values() if h is not host)
        assert other.address not in start["host_ips"]
        assert start["tasks_here"] == len(EXPECTED[key])
        applies = {ev["task"]: ev["matched_ip"] for ev in _events(logs[key], "task.applies")}
        assert applies["everyone"] == "all hosts"
        assert applies["a-and-b"] == host.address
        assert {ev["task"] for ev in _events(logs[key], "task.not_here")} == \
            {"only-a", "only-b", "a-and-b", "everyone", "nobody", "boot-a"} - EXPECTED[key]
