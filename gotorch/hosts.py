"""Which host is this: its addresses (for the `ips` allow-lists) and its local timezone."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOST_IPS_ENV = "TORCH_HOST_IPS"


@dataclass(frozen=True, slots=True)
class HostMatch:
    """Whether a task applies to this host, and which local address made it apply (None: no allow-list)."""

    applies: bool
    address: IPAddress | None = None


def parse_host_ips(text: str) -> list[IPAddress]:
    """Parse a comma-separated override (`--host-ips`, `TORCH_HOST_IPS`); ValueError names the bad item."""
    out: list[IPAddress] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(ipaddress.ip_address(item.split("%", 1)[0]))
        except ValueError:
            raise ValueError(f"{item!r} in host addresses is not an IP address") from None
    return out


def host_addresses(override: str | None = None) -> list[IPAddress]:
    """Every address of every interface, v4 and v6, unless overridden by `override` or TORCH_HOST_IPS.

    Loopback addresses are included: a task listing 127.0.0.1 is a deliberate "every host" and
    works the same as on the original. Link-local v6 scope ids (`fe80::1%eth0`) are dropped.
    """
    if override is None:
        override = os.environ.get(HOST_IPS_ENV) or None
    if override is not None:
        return parse_host_ips(override)
    import socket

    import psutil  # imported lazily: `torch check` does not need it

    seen: dict[IPAddress, None] = {}
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    seen[ipaddress.ip_address(a.address.split("%", 1)[0])] = None
                except ValueError:
                    continue
    return list(seen)


def match(allow: Sequence[IPNetwork], addresses: Iterable[IPAddress]) -> HostMatch:
    """Decide whether a task with allow-list `allow` runs on a host with `addresses`.

    An empty allow-list means every host. Otherwise the first local address inside any listed
    network (a bare address is a /32 or /128 network) wins.
    """
    if not allow:
        return HostMatch(True)
    for addr in addresses:
        for net in allow:
            if addr.version == net.version and addr in net:
                return HostMatch(True, addr)
    return HostMatch(False)


def local_timezone() -> ZoneInfo:
    """The host's IANA zone: TZ, else the /etc/localtime link target, else /etc/timezone, else UTC."""
    candidates: list[str] = []
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        candidates.append(tz)
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    for name in candidates:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return ZoneInfo("UTC")
