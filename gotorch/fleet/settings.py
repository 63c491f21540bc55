"""The task file's top-level `fleet:` block, validated (pure: a plain value in, settings or an error out)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gotorch.durations import parse_duration

FLEET_KEYS = ("endpoints", "cluster", "lease_ttl", "tls", "username", "password_file")
TLS_KEYS = ("ca", "cert", "key")
CLUSTER_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DEFAULT_LEASE_TTL = 10.0
MIN_LEASE_TTL = 3.0  # below this the keep-alive (every third of it) and self-fencing margin collide
MAX_LEASE_TTL = 300.0
FLEET_MODES = ("once",)
UNREACHABLE_POLICIES = ("skip", "run")


class FleetBad(Exception):
    """A problem in the `fleet:` block: the field (e.g. `fleet.lease_ttl`), what is wrong, how to fix it."""

    def __init__(self, field: str, problem: str, hint: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Tls:
    """Client TLS for etcd: the CA to trust, and an optional client certificate and key."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """Where the fleet's etcd is and how torch uses it (keys under /torch/CLUSTER/)."""

    endpoints: tuple[str, ...]
    cluster: str
    lease_ttl: float = DEFAULT_LEASE_TTL
    tls: Tls | None = None
    username: str | None = None
    password_file: str | None = None

    @property
    def prefix(self) -> str:
        """The key prefix of this cluster, with its trailing slash."""
        return f"/torch/{self.cluster}/"


def parse_fleet(value: Any) -> FleetSettings:
    """Validate the `fleet:` mapping (as plain YAML values); FleetBad names the field at fault."""
    if not isinstance(value, dict):
        raise FleetBad("fleet", "must be a mapping", 'write e.g. fleet: {endpoints: ["http://10.0.0.2:2379"], '
                                                     "cluster: prod}")
    unknown = [k for k in value if k not in FLEET_KEYS]
    if unknown:
        raise FleetBad(f"fleet.{unknown[0]}", "unknown field", "fleet takes: " + ", ".join(FLEET_KEYS))
    endpoints = value.get("endpoints")
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if not isinstance(endpoints, list) or not endpoints:
        raise FleetBad("fleet.endpoints", "missing or empty", 'list etcd\'s client URLs: ["http://10.0.0.2:2379"]')
    for e in endpoints:
        parts = urlsplit(e) if isinstance(e, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise FleetBad("fleet.endpoints", f"{e!r} is not an etcd client URL",
                           "write http://HOST:2379 or https://HOST:2379 (no path)")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise FleetBad("fleet.endpoints", f"{e!r} has a bad port", "write http://HOST:2379") from None
    cluster = value.get("cluster")
    if not isinstance(cluster, str) or not CLUSTER_RE.fullmatch(cluster):
        raise FleetBad("fleet.cluster", "missing, or not a name",
                       "name the cluster (letters, digits, _ . -): its keys live under /torch/NAME/")
    ttl = DEFAULT_LEASE_TTL
    if "lease_ttl" in value:
        raw = value["lease_ttl"]
        try:
            ttl = parse_duration(raw)
        except (ValueError, TypeError):
            raise FleetBad("fleet.lease_ttl", f"{raw!r} is not a duration", "write e.g. 10s") from None
        if isinstance(raw, bool) or not MIN_LEASE_TTL <= ttl <= MAX_LEASE_TTL:
            raise FleetBad("fleet.lease_ttl", f"{raw!r} is out of range",
                           f"use {MIN_LEASE_TTL:g}s to {MAX_LEASE_TTL:g}s (default {DEFAULT_LEASE_TTL:g}s)")
    tls = None
    if value.get("tls") is not None:
        raw_tls = value["tls"]
        if not isinstance(raw_tls, dict) or any(k not in TLS_KEYS for k in raw_tls):
            raise FleetBad("fleet.tls", "must be a mapping of ca, cert, key", "write tls: {ca: /etc/torch/etcd-ca.pem}")
        paths = {k: raw_tls.get(k) for k in TLS_KEYS}
        for k, p in paths.items():
            if p is not None and (not isinstance(p, str) or not p.startswith("/")):
                raise FleetBad(f"fleet.tls.{k}", "must be an absolute path", f"write {k}: /etc/torch/...")
        if (paths["cert"] is None) != (paths["key"] is None):
            raise FleetBad("fleet.tls", "cert and key go together", "give both cert and key, or neither")
        tls = Tls(paths["ca"], paths["cert"], paths["key"])
    username = value.get("username")
    password_file = value.get("password_file")
    if username is not None and (not isinstance(username, str) or not username):
        raise FleetBad("fleet.username", "must be a name", "write username: torch")
    if password_file is not None and (not isinstance(password_file, str) or not password_file.startswith("/")):
        raise FleetBad("fleet.password_file", "must be an absolute path",
                       "write password_file: /etc/torch/etcd-password")
    if (username is None) != (password_file is None):
        raise FleetBad("fleet.username", "username and password_file go together",
                       "give both (the password is read from the file, never written in the task file), or neither")
    return FleetSettings(tuple(endpoints), cluster, ttl, tls, username, password_file)
