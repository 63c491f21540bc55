"""The thread that talks to etcd for the daemon: host registration, fire claims, elections.

The loop never waits for etcd: it queues requests here (`claim`, `set_elections`) and gets every
answer as a callback scheduled on the loop (`loop.call_soon_threadsafe`) through the `Answers` it
gave. State the loop acts on (who holds what, whether etcd answers) lives in the loop (gate.py);
this thread keeps only what it needs to talk to etcd: the host lease, the fire leases, and which
elections it campaigns for.

Leases: the host's lease (`lease_ttl`, renewed every third of it) carries the host key and every
election key this host holds, so a host that dies or loses etcd releases all of them at once. Fire
claims live on separate leases that are never renewed, each granted for the longest lifetime any
claim made in the next minute needs, and reused for that minute: one grant a minute, not one per fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gotorch.fleet.etcd import Claim, Etcd, Unreachable
from gotorch.fleet.settings import FleetSettings
from gotorch.threads import signals_blocked

# A clock further than this from etcd's stops competing for fleet fires (it could win instants early).
MAX_SKEW_S = 2.0
SKEW_EVERY_S = 30.0
CAMPAIGN_EVERY_S = 0.5  # how often a host that does not hold an election tries to take it
FIRE_LEASE_REUSE_S = 60.0
MIN_FIRE_KEY_S = 600.0  # fire keys outlive their instant by at least this (and twice the task's interval)
# A claim for an instant older than this is refused: its key may have expired, and another host may
# have run it (a catch-up after a stall is younger than this and is claimed as usual).
CLAIM_MAX_AGE_S = MIN_FIRE_KEY_S / 2


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


BOOT_ID = _boot_id()


def boottime() -> float:
    """CLOCK_BOOTTIME: runs through suspend and SIGSTOP alike, so a frozen holder sees how long it was out."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Answers(Protocol):
    """What the coordinator tells the loop (each called in the loop, through call_soon_threadsafe)."""

    def claimed(self, task: str, instant: int, run_id: str, claim: Claim | None, error: str | None) -> None:
        """A fire claim's outcome: `claim` (won or lost, and by whom), or `error` if etcd could not say."""

    def renewed(self, at: float) -> None:
        """The host lease was renewed by a keep-alive sent at boottime `at`."""

    def elected(self, task: str, token: int) -> None:
        """This host now holds `task`'s election (key created at revision `token`)."""

    def deposed(self, task: str, reason: str) -> None:
        """This host no longer holds `task`'s election (lease expired, key gone)."""

    def reachable_changed(self, ok: bool, error: str | None) -> None:
        """etcd answers again (ok) or stopped answering (error says how)."""

    def skewed(self, skew: float | None) -> None:
        """Our clock is `skew` s off etcd's beyond MAX_SKEW_S (None: back within it)."""


@dataclass
class _ClaimRequest:
    task: str
    instant: int
    run_id: str
    key_ttl: float
    release: int = 0  # not a claim: delete the key if it is still the one created at this revision


@dataclass
class _State:
    lease: int | None = None
    lease_renewed: float = 0.0  # boottime of the last successful keep-alive (or grant)
    fire_lease: int | None = None
    fire_lease_until: float = 0.0  # time.time() until which it lives
    held: dict[str, int] = field(default_factory=dict)  # task -> create revision of our election key
    next_campaign: float = 0.0
    next_skew: float = 0.0
    next_register: float = 0.0
    reachable: bool | None = None
    skew_reported: bool = False


class Coordinator:
    """One per daemon with a `fleet:` block: start() after the loop runs, stop() at the end."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: FleetSettings, answers: Answers,
                 host: Callable[[], dict[str, Any]], *, client: Etcd | None = None) -> None:
        """`host()` (called in the thread) gives what the host key says: name, addresses, version, config hash."""
        self._loop = loop
        self.settings = settings
        self._answers = answers
        self._host = host
        self._client = client
        self._requests: queue.SimpleQueue[_ClaimRequest | None] = queue.SimpleQueue()
        self._elections: frozenset[str] = frozenset()
        self._resigned: dict[str, int] = {}
        self._lock = threading.Lock()
        self.skew: float | None = None  # the last measured clock skew (s), written in the host key
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._st = _State()
        about = host()
        self.name = str(about.get("name", "?"))
        self._state_dir = str(about.get("state_dir", ""))
        # Which daemon (and gate) made a claim: an instant claimed by this host's previous incarnation
        # (restarted, or its fleet settings reloaded, just before the boundary) was never run by it.
        self.incarnation = os.urandom(6).hex()

    # -- the loop's side --

    def start(self) -> None:
        """Start the thread (it connects lazily: an unreachable etcd is reported, never fatal)."""
        self._thread = threading.Thread(target=self._run, name="torch-fleet", daemon=True)
        with signals_blocked():
            self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the thread; it revokes the host lease on its way out, freeing our elections at once."""
        self._stop.set()
        self._requests.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def claim(self, task: str, instant: int, run_id: str, interval: float) -> None:
        """Ask etcd for `task`'s fire at `instant` (answer: Answers.claimed)."""
        self._requests.put(_ClaimRequest(task, instant, run_id, max(MIN_FIRE_KEY_S, 2 * interval)))

    def release_claim(self, task: str, instant: int, revision: int) -> None:
        """Give back a fire won too late to be run (so that nobody reads it as run by us)."""
        self._requests.put(_ClaimRequest(task, instant, "", 0, revision))

    def set_elections(self, tasks: frozenset[str]) -> None:
        """The daemon tasks this host campaigns for (those not here or on hold are let go)."""
        with self._lock:
            self._elections = tasks
        self._requests.put(_ClaimRequest("", 0, "", 0))  # wake the thread

    def resign(self, task: str, token: int) -> None:
        """Give up `task`'s election key created at `token` (its copies have ended); campaign again later.

        Only that key: one won since (a later token) is the gate's to decide about.
        """
        with self._lock:
            self._resigned[task] = token
        self._requests.put(_ClaimRequest("", 0, "", 0))

    # -- the thread --

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the daemon is going away
            self._stop.set()

    def _etcd(self) -> Etcd:
        if self._client is None:
            self._client = Etcd(self.settings)
        return self._client

    def _run(self) -> None:
        period = min(0.5, self.settings.lease_ttl / 6)
        while not self._stop.is_set():
            try:
                self._step()
                self._reachable(True, None)
            except Unreachable as exc:
                self._reachable(False, str(exc))
            except Exception as exc:  # a bug must not end coordination silently
                self._reachable(False, f"{type(exc).__name__}: {exc}")
            try:
                req = self._requests.get(timeout=period)
            except queue.Empty:
                continue
            reqs = [req]
            while True:  # every claim queued meanwhile, in one go
                try:
                    reqs.append(self._requests.get_nowait())
                except queue.Empty:
                    break
            last_step = boottime()
            for r in reqs:
                if r is None or self._stop.is_set():
                    break
                if r.task:
                    try:
                        self._claim(r)
                    except Exception as exc:  # a bug must not end coordination silently
                        self._post(self._answers.claimed, r.task, r.instant, r.run_id, None,
                                   f"{type(exc).__name__}: {exc}")
                if boottime() - last_step >= period:  # a burst of claims must not hold up the keep-alive
                    with contextlib.suppress(Exception):
                        self._step()
                    last_step = boottime()
        self._shutdown()

    def _reachable(self, ok: bool, error: str | None) -> None:
        if self._st.reachable != ok:
            self._st.reachable = ok
            self._post(self._answers.reachable_changed, ok, error)

    def _step(self) -> None:
        """Keep the host lease, the host key, the clock check and the elections up to date."""
        st, etcd, ttl = self._st, self._etcd(), self.settings.lease_ttl
        now = boottime()
        if st.lease is not None and now - st.lease_renewed >= ttl / 3:
            sent = boottime()
            if etcd.keepalive(st.lease) > 0:
                st.lease_renewed = sent
                self._post(self._answers.renewed, sent)
            else:  # expired (we were cut off or frozen for longer than the TTL): everything on it is gone
                st.lease = None
                for task in list(st.held):
                    self._post(self._answers.deposed, task, "the host's etcd lease expired")
                st.held.clear()
        if st.lease is None:
            sent = boottime()
            st.lease = etcd.grant(ttl)
            st.lease_renewed = sent
            st.next_register = 0.0
            self._post(self._answers.renewed, sent)
        if now >= st.next_skew:
            st.next_skew = now + SKEW_EVERY_S
            skew = etcd.clock_skew()
            self.skew = round(skew, 3)
            off = abs(skew) > MAX_SKEW_S
            if off or st.skew_reported:
                self._post(self._answers.skewed, skew if off else None)
            st.skew_reported = off
        if now >= st.next_register:
            st.next_register = now + ttl
            etcd.put(f"{self.settings.prefix}hosts/{self.name}",
                     {**self._host(), "clock": time.time(), "skew": self.skew}, st.lease)
        self._elect(now)

    def _elect(self, now: float) -> None:
        st, etcd, prefix = self._st, self._etcd(), self.settings.prefix
        with self._lock:
            wanted = self._elections
            resigned, self._resigned = self._resigned, {}
        for task in [t for t in st.held if t not in wanted or resigned.get(t) == st.held[t]]:
            revision = st.held.pop(task)
            with contextlib.suppress(Unreachable):  # it goes with our lease, which is expiring: why we fenced
                etcd.delete_if_created(f"{prefix}elect/{task}", revision)
        if now < st.next_campaign or st.lease is None:
            return
        st.next_campaign = now + CAMPAIGN_EVERY_S
        for task in sorted(wanted):
            key = f"{prefix}elect/{task}"
            if task in st.held:
                kv = etcd.get(key)  # still ours? (someone may have deleted it by hand)
                if kv is None or kv.create_revision != st.held[task]:
                    del st.held[task]
                    self._post(self._answers.deposed, task, "its election key was removed or replaced")
                continue
            if st.skew_reported:
                continue  # a skewed host does not compete
            claim = etcd.create(key, {"host": self.name, "at": time.time()}, st.lease)
            if claim.won:
                st.held[task] = claim.revision
                self._post(self._answers.elected, task, claim.revision)

    def _claim(self, r: _ClaimRequest) -> None:
        st = self._st
        key = f"{self.settings.prefix}fires/{r.task}/{r.instant}"
        if r.release:
            with contextlib.suppress(Unreachable):
                self._etcd().delete_if_created(key, r.release)
            return
        if st.reachable is False or r.instant < time.time() - CLAIM_MAX_AGE_S:
            # Known down (the steps find out when it is back), or too old to claim safely: answer at
            # once rather than let a queue of timeouts build up behind a dead etcd.
            self._post(self._answers.claimed, r.task, r.instant, r.run_id, None,
                       "etcd is unreachable" if st.reachable is False else "the fire is too old to claim")
            return
        value = {"host": self.name, "run_id": r.run_id, "at": time.time(), "incarnation": self.incarnation,
                 "boot_id": BOOT_ID, "state_dir": self._state_dir}
        try:
            claim = self._create(key, value, r.key_ttl)
        except Unreachable as exc:
            if "not found" not in str(exc).lower():
                self._post(self._answers.claimed, r.task, r.instant, r.run_id, None, str(exc))
                return
            st.fire_lease = None  # the lease went (revoked, etcd restored): a new one, once
            try:
                claim = self._create(key, value, r.key_ttl)
            except Unreachable as again:
                self._post(self._answers.claimed, r.task, r.instant, r.run_id, None, str(again))
                return
        if not claim.won and self._own_earlier(claim.holder):
            claim = Claim(True, claim.holder, claim.revision)  # ours from before a restart: it never ran it
        self._post(self._answers.claimed, r.task, r.instant, r.run_id, claim, None)

    def _own_earlier(self, holder: dict[str, Any]) -> bool:
        """Whether a claim is this daemon's own from an earlier incarnation (restarted, or its fleet
        settings reloaded, just before the boundary): same boot, same state directory (one daemon per
        state directory: the pidfile lock), another incarnation. Only future instants are claimed, so
        that incarnation never ran it. Two daemons that merely share a host name never match."""
        return (bool(BOOT_ID) and holder.get("boot_id") == BOOT_ID and bool(self._state_dir)
                and holder.get("state_dir") == self._state_dir and holder.get("incarnation") != self.incarnation)

    def _create(self, key: str, value: dict[str, Any], key_ttl: float) -> Claim:
        st, etcd = self._st, self._etcd()
        wall = time.time()
        if st.fire_lease is None or st.fire_lease_until - wall < key_ttl:
            grant = key_ttl + FIRE_LEASE_REUSE_S
            st.fire_lease = etcd.grant(grant)
            st.fire_lease_until = wall + grant
        return etcd.create(key, value, st.fire_lease)

    def _shutdown(self) -> None:
        """Give our elections back at once (revoking the lease deletes their keys) rather than after the TTL."""
        lease, self._st.lease = self._st.lease, None
        if lease is not None and self._client is not None:
            with contextlib.suppress(Exception):  # unreachable: the keys expire with the lease anyway
                self._client.revoke(lease)
