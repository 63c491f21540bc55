"""`torch fleet plan`: which host would run which task of a task file, offline (pure).

For reviewing a change before it is merged: the `ips` rules decide where a task may run, and
`fleet: once` whether every such host runs it or exactly one of them (which one is decided at
run time, by etcd).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address

from gotorch.config import Config
from gotorch.hosts import IPAddress
from gotorch.plan import applicable


@dataclass(frozen=True, slots=True)
class TaskPlacement:
    """Where one task runs in the fleet described."""

    name: str
    type: str
    fleet: str | None
    hosts: tuple[str, ...]  # the hosts whose addresses the task's ips rules match
    runs: str  # "every matching host" | "one matching host" | "nowhere" | "disabled"

    def to_json(self) -> dict[str, object]:
        """For --json."""
        return {"name": self.name, "type": self.type, "fleet": self.fleet, "hosts": list(self.hosts),
                "runs": self.runs}


def parse_hosts(text: str) -> dict[str, list[IPAddress]]:
    """`web1=10.0.0.5,db1=10.0.0.7,web1=10.0.0.6` -> {name: addresses}; ValueError names the bad entry."""
    hosts: dict[str, list[IPAddress]] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, sep, ip = item.partition("=")
        if not sep or not name.strip() or not ip.strip():
            raise ValueError(f"{item!r}: write NAME=IP (e.g. web1=10.0.0.5)")
        try:
            addr = ip_address(ip.strip())
        except ValueError:
            raise ValueError(f"{item!r}: {ip.strip()!r} is not an IP address") from None
        hosts.setdefault(name.strip(), []).append(addr)
    if not hosts:
        raise ValueError("no hosts given: write NAME=IP,NAME=IP")
    return hosts


def placements(config: Config, hosts: dict[str, list[IPAddress]]) -> list[TaskPlacement]:
    """Each task of `config`, in file order, with the hosts of `hosts` that would run it."""
    here = {name: set(applicable(config, addrs)[0]) for name, addrs in hosts.items()}
    out = []
    for t in config.tasks:
        matching = tuple(h for h in hosts if t.name in here[h])
        if not t.enabled:
            runs = "disabled"
        elif not matching:
            runs = "nowhere"
        elif t.fleet == "once":
            runs = "one matching host"
        else:
            runs = "every matching host"
        out.append(TaskPlacement(t.name, t.type, t.fleet, matching, runs))
    return out
