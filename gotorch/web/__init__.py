"""The status page and /metrics over HTTP (`torch start --http ADDRESS`), served by a separate process.

Process model. The daemon listens on ADDRESS itself (so a bad or busy address is reported once, and
restarts never lose the port) and hands the listening socket to a child process, `python -m
gotorch.web`, that it supervises (gotorch.web.supervisor): restarted with a backoff when it dies,
stopped with the daemon, and dying with it if the daemon is killed (PR_SET_PDEATHSIG). HTTP parsing
and HTML rendering happen in that child, so they never compete with the firing loop for the GIL:
what the daemon does for the page is answer a `status` or `metrics` request on its control socket at
most once a second, early in a second, and only while someone is looking. The child itself runs at
SCHED_IDLE and within a CPU budget, so that even a flood of clients leaves the CPUs to the daemon
and its runs (bench `http`).

In the child:
    feed     what the pages show: the daemon's status and metrics (control socket) and the history
             (read-only SQLite), fetched by one thread at most once a second and shared by all clients
    server   a small HTTP/1.0 server: a fixed pool of workers fed within a CPU budget, idle
             connections parked in a selector until their request arrives, timeouts on every
             connection; GET and HEAD only
    app      the routes: /, /runs/ID, /api/status, /metrics
    page     the HTML (pure: values in, escaped markup out)
    words    schedules in words (pure)

This module is imported by the daemon and the CLI: it holds only the address parsing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

HTTP_ENV = "TORCH_HTTP"
DEFAULT_PORT = 9464  # Prometheus's default-port registry lists 9464 for generic exporters


@dataclass(frozen=True, slots=True)
class Listen:
    """An address to serve HTTP on: an IP literal and a port (0: any free port)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def ipv6(self) -> bool:
        """Whether the host is an IPv6 address."""
        return ":" in self.host

    @property
    def loopback(self) -> bool:
        """Whether only this host can connect (127.0.0.0/8, ::1)."""
        return ipaddress.ip_address(self.host).is_loopback


def parse_listen(text: str) -> Listen:
    """`127.0.0.1:9464`, `[::1]:9464`, `localhost:9464`, `:9464` (every IPv4 address); ValueError if not one.

    Only IP literals (and `localhost`): resolving a name would be a DNS lookup in the daemon's loop.
    """
    text = text.strip()
    hint = "give ADDRESS:PORT with an IP address, e.g. 127.0.0.1:9464 or [::1]:9464"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: {hint}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} has no port; {hint}")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    host = host or "0.0.0.0"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address; {hint}") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return Listen(host, int(port))
