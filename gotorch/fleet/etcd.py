"""The few etcd v3 operations torch needs, blocking, over etcd's HTTP gateway (etcd3gw).

Only the fleet coordinator's thread calls this: every call may wait up to its timeout on the
network, which the daemon's loop must never do. The endpoints are tried in turn; all failing is
`Unreachable`. Values are JSON objects (bytes in etcd).
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gotorch import trustedfs
from gotorch.fleet.settings import FleetSettings

T = TypeVar("T")


class Unreachable(Exception):
    """No endpoint answered (or all answered with an error): etcd cannot decide anything now."""


SECRET_LIMIT = 1024 * 1024  # a password or certificate file larger than this is not one


def _trusted(path: str, limit: int) -> bytes:
    """A file's bytes, read as the task file is: one open, no FIFO, ours alone to write; else Unreachable."""
    try:
        return trustedfs.read_file(path, os.geteuid(), limit=limit).data
    except trustedfs.Untrusted as exc:
        raise Unreachable(f"{exc}") from None
    except OSError as exc:
        raise Unreachable(f"{path}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of a create-if-absent: won (we created it) or who holds it; the key's create revision."""

    won: bool
    holder: dict[str, Any]
    revision: int


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key read from etcd, its JSON value decoded (an undecodable value reads as {})."""

    key: str
    value: dict[str, Any]
    create_revision: int
    lease: int


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _range_end(prefix: str) -> str:
    """The end of the key range holding every key that starts with `prefix` (prefix + 1 in its last byte)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return _b64(bytes(raw))


class Etcd:
    """A client for the fleet's etcd: `settings.endpoints` in turn, with TLS and authentication if set."""

    def __init__(self, settings: FleetSettings, timeout: float = 2.0) -> None:
        """Unreachable if a TLS file is not one root (or our user) alone may have written (trustedfs)."""
        import etcd3gw  # the optional `torch[etcd]` extra: imported only by a daemon with a fleet

        # The TLS files are opened by path later, by requests: check now that nobody else could swap
        # them (every directory from / down is ours), as for the task file.
        for path in (settings.tls.ca, settings.tls.cert, settings.tls.key) if settings.tls else ():
            if path is not None:
                _trusted(path, SECRET_LIMIT)

        self._exceptions = (etcd3gw.exceptions.Etcd3Exception,)
        self.settings = settings
        self.timeout = timeout
        self._clients = []
        for url in settings.endpoints:
            parts = urlsplit(url)
            tls = settings.tls
            client = etcd3gw.Etcd3Client(
                host=parts.hostname or "localhost", port=parts.port or 2379, protocol=parts.scheme,
                ca_cert=tls.ca if tls else None, cert_key=tls.key if tls else None,
                cert_cert=tls.cert if tls else None, timeout=timeout, api_path="/v3/")
            self._clients.append(client)
        self._current = 0
        self._token: str | None = None

    # -- plumbing --

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the current endpoint, moving on to the next ones on failure; Unreachable if all fail."""
        last: Exception | None = None
        for i in range(len(self._clients)):
            client = self._clients[(self._current + i) % len(self._clients)]
            try:
                if self.settings.username is not None and self._token is None:
                    self._authenticate(client)
                result: dict[str, Any] = client.post(client.get_url(path), json=body)
            except self._exceptions as exc:
                if any(w in str(exc).lower() for w in ("token", "auth store is old", "permission denied")):
                    self._token = None  # expired (etcd restarted): authenticate again next time
                last = exc
                continue
            except (OSError, ValueError) as exc:  # TLS files, a garbled answer
                last = exc
                continue
            self._current = (self._current + i) % len(self._clients)
            return result
        raise Unreachable(f"etcd did not answer ({', '.join(self.settings.endpoints)}): {last}")

    def _authenticate(self, client: Any) -> None:
        assert self.settings.password_file is not None and self.settings.username is not None
        password = _trusted(self.settings.password_file, SECRET_LIMIT).decode("utf-8", "replace").strip()
        for c in self._clients:  # a stale token on the request makes some etcd releases refuse it
            c.session.headers.pop("Authorization", None)
        result = client.post(client.get_url("/auth/authenticate"),
                             json={"name": self.settings.username, "password": password})
        self._token = str(result["token"])
        for c in self._clients:
            c.session.headers["Authorization"] = self._token

    # -- operations --

    def grant(self, ttl: float) -> int:
        """A new lease of `ttl` seconds (rounded up); its id."""
        result = self._post("/lease/grant", {"TTL": max(1, int(-(-ttl // 1)))})
        return int(result["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew `lease`; its new TTL, or -1 if it had expired already (its keys are gone)."""
        result = self._post("/lease/keepalive", {"ID": lease})
        return int(result.get("result", {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        """End `lease` now (its keys go with it)."""
        self._post("/kv/lease/revoke", {"ID": lease})

    def create(self, key: str, value: dict[str, Any], lease: int | None = None) -> Claim:
        """Create `key` only if it does not exist (create revision 0); else read who has it. One transaction."""
        k = _b64(key)
        put: dict[str, Any] = {"key": k, "value": _b64(json.dumps(value, sort_keys=True))}
        if lease is not None:
            put["lease"] = lease
        result = self._post("/kv/txn", {
            "compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": k}}],
        })
        if result.get("succeeded"):
            return Claim(True, value, int(result["header"]["revision"]))
        kvs = (result.get("responses") or [{}])[0].get("response_range", {}).get("kvs") or []
        if not kvs:  # it expired between the compare and the read: nobody holds it now
            return Claim(False, {}, 0)
        return Claim(False, _json(_unb64(kvs[0].get("value", ""))), int(kvs[0].get("create_revision", 0)))

    def put(self, key: str, value: dict[str, Any], lease: int | None = None) -> None:
        """Write `key` (on `lease`, if given)."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(json.dumps(value, sort_keys=True))}
        if lease is not None:
            body["lease"] = lease
        self._post("/kv/put", body)

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        """Every key under `prefix`, in key order."""
        result = self._post("/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        return [KeyValue(_unb64(kv["key"]).decode("utf-8", "replace"), _json(_unb64(kv.get("value", ""))),
                         int(kv.get("create_revision", 0)), int(kv.get("lease", 0)))
                for kv in result.get("kvs", [])]

    def get(self, key: str) -> KeyValue | None:
        """`key`, or None if it does not exist."""
        result = self._post("/kv/range", {"key": _b64(key)})
        kvs = result.get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return KeyValue(key, _json(_unb64(kv.get("value", ""))), int(kv.get("create_revision", 0)),
                        int(kv.get("lease", 0)))

    def delete_if_created(self, key: str, create_revision: int) -> bool:
        """Delete `key` if it is still the one created at `create_revision` (a holder giving up its own)."""
        k = _b64(key)
        result = self._post("/kv/txn", {
            "compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": create_revision}],
            "success": [{"request_delete_range": {"key": k}}],
            "failure": [],
        })
        return bool(result.get("succeeded"))

    def clock_skew(self) -> float:
        """How far our clock is ahead of the etcd server's (seconds; +-0.5 s: HTTP dates are whole seconds)."""
        last: Exception | None = None
        n = len(self._clients)
        for client in (self._clients[(self._current + i) % n] for i in range(n)):  # the one that answers first
            try:
                t0 = time.time()
                resp = client.session.get(client.base_url + "/version", timeout=self.timeout)
                t1 = time.time()
                date = resp.headers.get("Date")
                if date is None:
                    continue
                server = parsedate_to_datetime(date).timestamp() + 0.5  # the middle of its second
                return (t0 + t1) / 2 - server
            except Exception as exc:  # requests' errors, a bad Date header
                last = exc
        raise Unreachable(f"etcd did not answer: {last}")
