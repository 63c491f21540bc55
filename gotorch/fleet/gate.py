"""The loop's side of the fleet: which `fleet: once` fires and daemon copies this host may run.

Lives in the event loop, owns the fleet state the scheduler acts on, and never waits for etcd:
the coordinator thread answers through the `Answers` methods below (called in the loop).

Cron: every tick, the fires of fleet tasks due within CLAIM_AHEAD_S are claimed (each with the run
id its run will have), so the answer is there when the boundary comes. A fire whose answer is not
there yet waits for it (in parallel with everything else) at most WAIT_S; etcd known unreachable,
or no answer by then, means the task's `fleet_unreachable` decides: skip (recorded `skipped`, reason
`fleet_unreachable`) or run here anyway.

Daemon tasks: this host runs copies of a fleet daemon task only while it holds its election. The
holder stops its copies itself when its lease may be about to expire (self-fencing): TERM at 70% of
the TTL since the last successful keep-alive, KILL one second before the TTL, measured on
CLOCK_BOOTTIME so that a daemon frozen (SIGSTOP, suspend) past the TTL kills them the moment it runs
again, before anything else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gotorch.config import Task
from gotorch.events import (
    Bus,
    Event,
    FleetDeposed,
    FleetElected,
    FleetReachable,
    FleetSkew,
    FleetUnreachableRun,
    RunEnded,
    RunStarted,
)
from gotorch.fire_times import next_fire_ts
from gotorch.fleet.coordinator import Coordinator, boottime
from gotorch.fleet.etcd import Claim
from gotorch.fleet.fence import Fence

CLAIM_AHEAD_S = 2  # claim a fire this many seconds before it is due
WAIT_S = 3.0  # a fire with no answer yet waits this long for one
FENCE_TERM = 0.7  # of the TTL since the last keep-alive: TERM our copies
FENCE_KILL_BEFORE_S = 1.0  # ... and KILL them this long before the lease can expire
FENCE_CHECK_S = 0.1


@dataclass
class _Pending:
    """A fire waiting for its claim's answer."""

    go: Callable[[str], None]
    skip: Callable[[str, str], None]
    task: Task
    timer: asyncio.TimerHandle


class FleetGate:
    """Decides fleet fires and daemon copies; `Answers` for the coordinator.

    The scheduler gives: `new_run_id()`, `next_fire(name)`, `start_copies(name)` (launch a daemon
    task's copies now that we may) and `stop_copies(name, reason, kill_in)` (TERM them, KILL after
    `kill_in` s: 0 is KILL now, None the task's kill_timeout; returns how many there were).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, bus: Bus,
                 coordinator_factory: Callable[[FleetGate], Coordinator], *, new_run_id: Callable[[], str],
                 next_fire: Callable[[str], int | None],
                 start_copies: Callable[[str], None], stop_copies: Callable[[str, str, float | None], int],
                 copies: Callable[[str], list[tuple[int, str]]]) -> None:
        self._loop = loop
        self._bus = bus
        self._new_run_id = new_run_id
        self._next_fire = next_fire
        self._start_copies = start_copies
        self._stop_copies = stop_copies
        self._copies = copies
        self._fence: Fence | None = None  # the watchdog that fences for a frozen or dead daemon
        self._fence_failed = False
        self.coordinator = coordinator_factory(self)
        self.ttl = self.coordinator.settings.lease_ttl
        self._cron: dict[str, Task] = {}
        self._daemons: dict[str, Task] = {}
        self._elections: frozenset[str] = frozenset()
        self._claims: dict[tuple[str, int], tuple[str, Claim | None, str | None]] = {}
        self._asked: set[tuple[str, int]] = set()
        self._waiting: dict[tuple[str, int], _Pending] = {}
        self.held: dict[str, int] = {}  # daemon task -> fencing token (election key's create revision)
        # Tasks whose copies are being stopped (deposed, paused, removed): their election key is kept,
        # and the watchdog guards them, until the last copy has ended; only then is the key given up.
        self._draining: dict[str, int] = {}  # task -> the token (key revision) we held for its copies
        self._late: dict[str, int] = {}  # a draining task won again meanwhile: that key's token
        self._fence_stopped: set[str] = set()  # draining tasks the fence check stopped since the last renewal
        self._wanted: frozenset[str] = frozenset()
        self.last_run: dict[str, dict[str, Any]] = {}
        self.renewed_at: float | None = None
        self.reachable: bool | None = None
        self.error: str | None = None
        self.skew: float | None = None
        self._fence_handle: asyncio.TimerHandle | None = None

    # -- lifecycle --

    def start(self) -> None:
        """Start talking to etcd."""
        self.coordinator.start()

    def close_fence(self) -> None:
        """At a clean stop, in the loop, after our copies ended: the watchdog exits without killing."""
        if self._fence is not None:
            self._fence.close()
            self._fence = None

    def close(self, reason: str) -> None:
        """This gate is being replaced (a reload changed the fleet settings) or the daemon stops: KILL
        every copy it holds or drains (our lease is about to be revoked), and stop all its timers."""
        for task in [*self.held, *self._draining]:
            self._stop_copies(task, f"fleet: {reason}", 0.0)
        self.held.clear()
        self._draining.clear()
        self._late.clear()
        if self._fence_handle is not None:
            self._fence_handle.cancel()
            self._fence_handle = None
        for p in self._waiting.values():
            p.timer.cancel()
        self._waiting.clear()
        self.close_fence()

    def stop(self) -> None:
        """Stop talking to etcd (blocking: the caller runs it in an executor), after close_fence()."""
        self.coordinator.stop()

    def __call__(self, event: Event) -> None:
        """A bus subscriber: a copy of a task we hold started or ended: the watchdog guards the new set."""
        if isinstance(event, (RunStarted, RunEnded)) and (event.task in self.held or event.task in self._draining):
            if isinstance(event, RunEnded) and event.task in self._draining:
                self._drained(event.task)
            self._rearm()

    def _drained(self, task: str) -> None:
        """A draining task's copies may all have ended: then give its election up, or, if it was won
        again meanwhile and is still wanted here, start its copies under that new election."""
        if task not in self._draining or self._copies(task):
            return
        token = self._draining.pop(task)
        late = self._late.pop(task, None)
        if late is not None and task in self._wanted and task in self._daemons:
            self.elected(task, late)
        else:
            self.coordinator.resign(task, late if late is not None else token)
        self._push_elections()

    def _push_elections(self) -> None:
        elections = self._wanted | frozenset(self._draining)
        if elections != self._elections:
            self._elections = elections
            self.coordinator.set_elections(elections)

    def _rearm(self) -> None:
        """Tell the watchdog the deadline of the last renewal and the process groups of our copies."""
        if self._fence is not None and self._fence.dead:
            self._fence = None  # it died: start another one
        guarded = [*self.held, *self._draining]
        if self._fence is None and guarded and not self._fence_failed:
            fence = Fence()
            try:
                fence.start()
            except OSError as exc:
                self._fence_failed = True  # the loop still fences; say that the watchdog does not
                self._bus.publish(FleetReachable(bool(self.reachable), f"the fence watchdog did not start: {exc}"))
            else:
                self._fence = fence
        if self._fence is not None:
            since = self.renewed_at if self.renewed_at is not None else boottime()
            copies = [c for task in guarded for c in self._copies(task)]
            self._fence.arm(since + self.ttl - FENCE_KILL_BEFORE_S, [pid for pid, _ in copies],
                            [run_id for _, run_id in copies])

    def set_tasks(self, tasks: Iterable[Task]) -> None:
        """The fleet tasks that run on this host (after start and each reload)."""
        fleet = [t for t in tasks if t.fleet == "once"]
        self._cron = {t.name: t for t in fleet if t.type == "cron"}
        daemons = {t.name: t for t in fleet if t.type == "daemon"}
        self._wanted &= daemons.keys()
        for name in [n for n in self.held if n not in daemons]:
            # Its copies were retired by the reload itself: hold the key until they have ended.
            self._draining[name] = self.held.pop(name)
            self._drained(name)
        self._daemons = daemons

    def is_fleet(self, task: Task) -> bool:
        """Whether `task` is coordinated through etcd."""
        return task.fleet == "once"

    # -- cron fires --

    def prepare(self, now: int, paused: Callable[[str], bool], busy: Callable[[str], bool]) -> None:
        """Each tick: claim the fires due soon; campaign for the daemon tasks not on hold.

        A task on hold here, or already at its max_instances here, is not claimed: a host that won
        an instant and then skipped it would leave it run nowhere.
        """
        for name, task in self._cron.items():
            nf = self._next_fire(name)
            if nf is None or nf - now > CLAIM_AHEAD_S or (name, nf) in self._asked or paused(name) or busy(name):
                continue
            self._ask(task, nf)
        wanted = frozenset(n for n in self._daemons if not paused(n))
        if wanted != self._wanted:
            self._wanted = wanted
            for name in [n for n in self.held if n not in wanted]:
                self._depose(name, "paused", None)
        self._push_elections()
        # Answers nobody came for (a fire skipped for max_instances, a reload): forget them.
        for key in [k for k in self._claims if k[1] < now - 60]:
            del self._claims[key]
        self._asked = {k for k in self._asked if k[1] >= now - 60}

    def _ask(self, task: Task, instant: int) -> None:
        if self.skew is not None:
            return  # a skewed host does not compete (fire() says so)
        after = next_fire_ts(task.schedule, task.tz, instant) if task.schedule is not None else None
        interval = float(after - instant) if after is not None else 86400.0
        self._asked.add((task.name, instant))
        self.coordinator.claim(task.name, instant, self._new_run_id(), interval)

    def fire(self, task: Task, instant: int, go: Callable[[str], None], skip: Callable[[str, str], None]) -> None:
        """The fire of fleet task `task` at `instant` is due: `go(run_id)` if this host runs it, else `skip`."""
        key = (task.name, instant)
        answer = self._claims.pop(key, None)
        if answer is not None:
            self._decide(task, instant, answer, go, skip)
            return
        if self.skew is not None:
            skip("fleet", f"this host's clock is {self.skew:+.1f} s off etcd's: it does not compete for fleet fires")
            return
        if self.reachable is False:
            self._unreachable(task, instant, self.error or "etcd is unreachable", go, skip)
            return
        if key not in self._asked:
            self._ask(task, instant)
        timer = self._loop.call_later(WAIT_S, self._gave_up, key)
        self._waiting[key] = _Pending(go, skip, task, timer)

    def _gave_up(self, key: tuple[str, int]) -> None:
        p = self._waiting.pop(key, None)
        if p is not None:
            self._unreachable(p.task, key[1], f"etcd did not answer within {WAIT_S:g} s", p.go, p.skip)

    def _unreachable(self, task: Task, instant: int, error: str, go: Callable[[str], None],
                     skip: Callable[[str, str], None]) -> None:
        """No answer: `fleet_unreachable` decides, but `run` only while etcd is known to be down.

        A slow or failing answer from an etcd that is up may still be another host's win: running
        here then could run the fire twice, so it is skipped.
        """
        if task.fleet_unreachable == "run" and self.reachable is False:
            self._bus.publish(FleetUnreachableRun(task.name, _iso(instant), error))
            go(self._new_run_id())
        else:
            skip("fleet_unreachable", error)

    def _decide(self, task: Task, instant: int, answer: tuple[str, Claim | None, str | None],
                go: Callable[[str], None], skip: Callable[[str, str], None]) -> None:
        run_id, claim, error = answer
        if claim is None:
            self._unreachable(task, instant, error or "etcd is unreachable", go, skip)
        elif claim.won:
            self.last_run[task.name] = {"host": self.coordinator.name, "run_id": run_id, "scheduled": instant}
            go(run_id)
        else:
            holder = claim.holder
            self.last_run[task.name] = {"host": holder.get("host"), "run_id": holder.get("run_id"),
                                        "scheduled": instant}
            skip("fleet", f"run by {holder.get('host', '?')} (run {holder.get('run_id', '?')})")


    # -- Answers (from the coordinator, in the loop) --

    def claimed(self, task: str, instant: int, run_id: str, claim: Claim | None, error: str | None) -> None:
        """A claim's answer: decide a waiting fire now, or keep it for its boundary."""
        key = (task, instant)
        p = self._waiting.pop(key, None)
        if p is not None:
            p.timer.cancel()
            self._decide(p.task, instant, (run_id, claim, error), p.go, p.skip)
        elif instant >= int(time.time()) - 1:
            self._claims[key] = (run_id, claim, error)
        elif claim is not None and claim.won:
            # Won after the fire gave up on it: let it go, so that a host whose claim is still on its
            # way may take it rather than see it as run by us.
            self.coordinator.release_claim(task, instant, claim.revision)

    def renewed(self, at: float) -> None:
        """The host lease lives on: the fencing clock restarts from `at`."""
        self.renewed_at = at
        self._fence_stopped.clear()
        if self.held or self._draining:
            self._rearm()

    def elected(self, task: str, token: int) -> None:
        """We hold `task`: start its copies (each gets TORCH_FLEET_TOKEN)."""
        if task in self._draining:
            self._late[task] = token  # our old copies are still ending: _drained decides then
            return
        if task not in self._daemons or task not in self._wanted:
            return  # not ours to run here: the coordinator lets it go (it is not in the elections)
        self.held[task] = token
        self._bus.publish(FleetElected(task, token))
        self._start_copies(task)
        self._rearm()
        self._arm_fence()

    def deposed(self, task: str, reason: str) -> None:
        """We lost `task`: stop its copies at once (another host may start one any moment)."""
        self._depose(task, reason, 0.0)

    def _depose(self, task: str, reason: str, kill_in: float | None) -> None:
        token = self.held.pop(task, None)
        if token is None:
            return
        stopped = self._stop_copies(task, f"fleet: {reason}", kill_in)
        self._bus.publish(FleetDeposed(task, reason, stopped))
        # The key stays ours (and the watchdog keeps guarding them) until the last copy has ended.
        self._draining[task] = token
        self._fence_stopped.add(task)
        self._drained(task)
        self._rearm()

    def reachable_changed(self, ok: bool, error: str | None) -> None:
        """(Answers.reachable) etcd answers, or stopped answering."""
        self.reachable, self.error = ok, error
        self._bus.publish(FleetReachable(ok, error))

    def skewed(self, skew: float | None) -> None:
        """Our clock is off etcd's (or back): stop (or resume) competing."""
        self.skew = skew
        self._bus.publish(FleetSkew(None if skew is None else round(skew, 3)))

    # -- self-fencing --

    def _arm_fence(self) -> None:
        if self._fence_handle is None and (self.held or self._draining):
            self._fence_handle = self._loop.call_later(FENCE_CHECK_S, self._check_fence)

    def _check_fence(self) -> None:
        self._fence_handle = None
        if not self.held and not self._draining:
            return
        since = boottime() - (self.renewed_at if self.renewed_at is not None else 0.0)
        if since >= self.ttl * FENCE_TERM:
            # TERM now, KILL before the lease can expire (at once if it may have already: we were frozen).
            kill_in = max(0.0, self.ttl - FENCE_KILL_BEFORE_S - since)
            for task in list(self.held):
                self._depose(task, f"no etcd keep-alive for {since:.1f} s (lease {self.ttl:g} s): self-fenced",
                             kill_in)
            for task in self._draining:  # copies being stopped for another reason: before the lease ends too
                if task not in self._fence_stopped and self._copies(task):
                    self._fence_stopped.add(task)
                    self._stop_copies(task, "fleet: no etcd keep-alive: self-fenced", kill_in)
        self._arm_fence()

    def status(self) -> dict[str, Any]:
        """For `torch status --json`: etcd's state as this host sees it, and what it holds."""
        return {"host": self.coordinator.name, "cluster": self.coordinator.settings.cluster,
                "reachable": self.reachable, "error": self.error, "clock_skew_s": self.skew,
                "held": dict(sorted(self.held.items())), "last_run": dict(sorted(self.last_run.items()))}

    def token(self, task: str) -> int | None:
        """The fencing token of a daemon task this host holds."""
        return self.held.get(task)

    def may_run(self, task: Task) -> bool:
        """Whether copies of `task` may run here: always, unless it is a fleet daemon task we do not hold."""
        if not (task.fleet == "once" and task.type == "daemon"):
            return True
        # Past the fencing point nothing starts, even before the fence check has run (after SIGCONT).
        fresh = self.renewed_at is not None and boottime() - self.renewed_at < self.ttl * FENCE_TERM
        return task.name in self.held and fresh


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

