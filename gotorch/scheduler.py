"""When tasks fire: the fire queue (pure, clock injected) and the one event loop that acts on it.

`FireQueue` holds every cron task's next fire in a heap and, given the wall and monotonic time of a
wake-up, says what to do: fire, count as missed, or report a clock jump. It reads no clock, so the
rules below are unit-tested with a fake one:

* Each (task, scheduled second) fires at most once: a task's next fire is always computed strictly
  after the last second it fired (the one exception is below).
* A fire up to `ON_TIME` seconds late is on time. After a late wake-up (suspend, stall, clock stepped
  forward) a task fires once for the whole missed window if its most recent missed fire is within
  its `misfire_grace` (0 = never catch up); every other fire of the window is reported as missed.
  One run per task per wake-up: an on-time fire also stands for the fires missed before it.
* Clock stepped backward (wall time moved less than monotonic time): up to `BACKWARD_LIMIT`, tasks
  that fire at least hourly keep firing on the new clock (so, like cronie, they may repeat instants);
  less frequent tasks wait for their next instant that was not fired yet. Beyond that it is a clock
  correction: every task is recomputed from the new time.
* A task whose fires cannot be worked out (its schedule or a field raises) is reported as a
  `TaskError` and re-checked after a backoff (1 s doubling to `RETRY_MAX`): from the second it failed
  (or the last second it fired, if later), so once the cause is gone it fires again. Other tasks are
  never affected.

The heap keeps stale entries of changed and removed tasks until they come up, or until they outnumber
the live ones: then it is rebuilt, so memory stays proportional to the live tasks however often the
configuration is reloaded.

`Scheduler` is the imperative shell: it owns the asyncio loop's state (queue, runner, daemon-task
copies, current config), wakes on every second boundary, and turns decisions into runs.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NamedTuple

from gotorch.config import Task
from gotorch.log import get_logger
from gotorch.plan import Plan, diff
from gotorch.runner import Run, Runner, RunResult, RunSpec
from gotorch.schedule import next_fire_ts, repeats_at_least_hourly

ON_TIME = 1.0
BACKWARD_LIMIT = 3 * 3600
# Counting missed fires walks the schedule on the loop (~4 us a fire): past this many per task we stop
# counting one by one (the count is then reported with exact=false), so a suspend of days cannot wedge
# the loop for seconds.
MISSED_COUNT_CAP = 1_000
# A task whose fires could not be worked out is re-checked after RETRY_INITIAL seconds, doubling up to
# RETRY_MAX: a transient cause costs a second, a permanent one a computation and a log line a minute.
RETRY_INITIAL = 1
RETRY_MAX = 60
# The heap is rebuilt once it holds more than twice the live entries plus this many (and the version
# table likewise): the rebuild is O(live), so its cost per stale entry stays constant.
COMPACT_SLACK = 256


@dataclass(frozen=True, slots=True)
class FireNow:
    """Start `task` for the fire at `scheduled` (epoch seconds); `caught_up` if it is a late catch-up."""

    task: Task
    scheduled: int
    caught_up: bool = False


@dataclass(frozen=True, slots=True)
class Missed:
    """`count` fires of `task` from `first` to `last` (epoch seconds) were not run.

    `exact` is False when counting stopped at MISSED_COUNT_CAP.
    """

    task: str
    first: int
    last: int
    count: int
    reason: Literal["beyond_grace", "coalesced"]
    exact: bool = True


@dataclass(frozen=True, slots=True)
class ClockJump:
    """The wall clock moved `seconds` more (forward) or less (backward) than the monotonic clock."""

    direction: Literal["forward", "backward"]
    seconds: float
    action: Literal["catch_up", "keep_firing", "recompute"]


@dataclass(frozen=True, slots=True)
class TaskError:
    """Working out the fires of task `task` at `second` raised `error`; it is re-checked at `retry_at`.

    `attempt` counts consecutive failures, from 1. Nothing else was affected: other tasks fired as usual.
    """

    task: str
    second: int
    error: Exception
    retry_at: int
    attempt: int = 1


Action = FireNow | Missed | ClockJump | TaskError


class _Retry(NamedTuple):
    """A task waiting for its re-check at `at` (heap entry `(at, version, name)`), then fires after `after`."""

    at: int
    version: int
    after: int
    attempt: int


class FireQueue:
    """Next fires of the scheduled tasks, in a heap keyed by epoch second. No clock reads."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []  # (fire second, version, task name)
        self._tasks: dict[str, Task] = {}
        self._version: dict[str, int] = {}
        self._last_fired: dict[str, int] = {}
        self._next: dict[str, int] = {}
        self._unsettled: list[Task] = []
        self._retry: dict[str, _Retry] = {}  # tasks whose fires could not be worked out; not in _next
        self._errors: list[TaskError] = []  # failures not yet handed out (see take_errors)
        self._last_wall: float | None = None
        self._last_mono: float | None = None

    # -- configuration ---------------------------------------------------------------------------

    def set_tasks(self, tasks: Iterable[Task], wall: float, hints: FireHints | None = None) -> None:
        """Schedule exactly `tasks` (cron tasks with a timed schedule), keeping unchanged ones as they are.

        New and changed tasks get their first fire strictly after the current second and after
        the last second they fired, so a reload never fires anything twice. `hints` (see
        `precompute`) saves recomputing next fires the reload's child process already worked out.
        A task whose first fire cannot be worked out is left for a re-check and reported by
        take_errors()/tick().
        """
        tasks = list(tasks)
        self.update(set(self._tasks) | {t.name for t in tasks}, tasks, wall, hints)

    def update(self, names: Iterable[str], tasks: Iterable[Task], wall: float, hints: FireHints | None = None) -> None:
        """`set_tasks` for part of the queue: schedule `tasks`, drop every other task named in `names`.

        A big reload is applied a slice of names at a time, so that no slice holds the loop long.
        """
        self.settle()
        # The last second the queue processed, not the wall clock: a reload applied just after a
        # boundary, before that second's tick, must not skip a changed task's fire in that second.
        now = math.floor(min(wall, self._last_wall)) if self._last_wall is not None else math.floor(wall)
        wanted = {t.name: t for t in tasks if t.schedule is not None and t.schedule.kind != "reboot"}
        for name in names:
            if name not in wanted and name in self._tasks:
                self._drop(name)
        for name, task in wanted.items():
            if self._tasks.get(name) == task:
                self._tasks[name] = task  # same definition; keep schedule state (line may differ)
                continue
            self._tasks[name] = task
            self._retry.pop(name, None)  # a new definition: whatever failed is worked out afresh
            after = max(now, self._last_fired.get(name, now))
            if hints is not None and name in hints.next and hints.after <= after:
                hint = hints.next[name]
                # The first fire after hints.after is also the first after `after` if it lies beyond it.
                if hint is None or hint > after:
                    self._version[name] = self._version.get(name, 0) + 1
                    self._set_next(name, hint)
                    continue
            self._push(task, after, now)
        self._compact()
        if len(self._last_fired) > 2 * len(self._tasks) + COMPACT_SLACK:
            self._forget_old_fires(now)

    def next_fire(self, name: str) -> int | None:
        """The next fire second of task `name`, if scheduled."""
        self.settle()
        return self._next.get(name)

    def next_due(self) -> int | None:
        """The earliest second tick() has something to do (a fire or a re-check), or None if nothing."""
        self.settle()
        while self._heap and not (self._current(self._heap[0]) or self._is_retry(self._heap[0])):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def take_errors(self) -> list[TaskError]:
        """Failures recorded since the last call (by set_tasks or settle; tick() returns its own)."""
        errors, self._errors = self._errors, []
        return errors

    def __len__(self) -> int:
        return len(self._tasks)

    # -- the decision ----------------------------------------------------------------------------

    def tick(self, wall: float, mono: float) -> list[Action]:
        """Everything due at wall time `wall` (with monotonic reading `mono`), in order of scheduled second.

        TaskErrors (including those recorded since the last take_errors()) come last.
        """
        self.settle()
        actions: list[Action] = []
        if self._last_wall is not None and self._last_mono is not None:
            skew = (wall - self._last_wall) - (mono - self._last_mono)
            if skew < -ON_TIME:
                actions.append(self._jumped_back(-skew, wall))
            elif skew > ON_TIME:
                actions.append(ClockJump("forward", skew, "catch_up"))
        self._last_wall, self._last_mono = wall, mono

        now = math.floor(wall)
        heap = self._heap  # after _jumped_back: it may have rebuilt the heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._current(entry):
                if self._retry:  # off the hot path: only stale entries get here
                    self._recheck(entry, now)
                continue
            task = self._tasks[entry[2]]
            if entry[0] == now:
                # The common case: on time, and (fires being strictly increasing) the only fire due.
                # Its next fire is worked out in settle(), after the caller has started the runs.
                actions.append(FireNow(task, now))
                self._last_fired[task.name] = now
                self._next.pop(task.name, None)
                self._unsettled.append(task)
                continue
            try:
                actions += self._due(task, entry[0], wall)
            except Exception as exc:
                # Nothing of the window ran. The re-check starts after `now`, not at the window: a
                # window that cannot be worked out (a NaN misfire_grace after a long stall) would
                # otherwise fail the same way at every re-check.
                self._fail(task, now, exc)
        if self._errors:
            actions += self.take_errors()
        return actions

    def settle(self) -> None:
        """Schedule the next fire of every task tick() fired on time (cheap to call when none).

        A task whose next fire cannot be worked out is left for a re-check (see take_errors()).
        """
        for task in self._unsettled:
            if self._tasks.get(task.name) is task and task.name not in self._next:
                # try costs nothing in 3.11+ unless it raises: this loop is the per-fire hot path.
                try:
                    assert task.schedule is not None
                    nxt = next_fire_ts(task.schedule, task.tz, self._last_fired[task.name])
                except Exception as exc:
                    self._fail(task, self._last_fired[task.name], exc)
                    continue
                self._set_next(task.name, nxt)
        self._unsettled.clear()

    def _due(self, task: Task, first: int, wall: float) -> list[Action]:
        """The actions for a task whose fire at `first` is late (maybe with more fires up to now)."""
        assert task.schedule is not None
        actions: list[Action] = []
        sched, tz, now = task.schedule, task.tz, math.floor(wall)
        on_time: list[int] = []
        late_first = late_prev = late_last = -1
        late_count, exact = 0, True
        fire: int | None = first
        last = first
        while fire is not None and fire <= now:
            if wall - fire <= ON_TIME:
                on_time.append(fire)
            else:
                if late_count == 0:
                    late_first = fire
                late_prev, late_last = late_last, fire
                late_count += 1
                if late_count == MISSED_COUNT_CAP and exact:
                    # Stop counting one by one; only the fires near now matter for the catch-up.
                    exact = False
                    skip_to = next_fire_ts(sched, tz, now - math.ceil(task.misfire_grace) - 2 * int(ON_TIME) - 1)
                    if skip_to is not None and skip_to > fire:
                        last, fire = fire, skip_to
                        continue
            last = fire
            fire = next_fire_ts(sched, tz, fire)
        for f in on_time:
            actions.append(FireNow(task, f))
        if late_count:
            if on_time:
                actions.append(Missed(task.name, late_first, late_last, late_count, "coalesced", exact))
            elif task.misfire_grace > 0 and wall - late_last <= task.misfire_grace:
                actions.append(FireNow(task, late_last, caught_up=True))
                if late_count > 1:
                    actions.append(Missed(task.name, late_first, late_prev, late_count - 1, "coalesced", exact))
            else:
                actions.append(Missed(task.name, late_first, late_last, late_count, "beyond_grace", exact))
        self._fired(task, last, fire)
        return actions

    def _jumped_back(self, seconds: float, wall: float) -> ClockJump:
        now = math.floor(wall)
        if seconds > BACKWARD_LIMIT:
            # A clock correction: every instant fired on the wrong clock is forgotten, including those
            # of removed tasks (re-added later, they would otherwise wait out the correction).
            self._last_fired.clear()
            for task in self._tasks.values():
                self._push(task, now, now)
            self._compact()
            return ClockJump("backward", seconds, "recompute")
        for task in self._tasks.values():
            try:
                hourly = task.schedule is not None and repeats_at_least_hourly(task.schedule)
            except Exception as exc:
                self._fail(task, now, exc)
                continue
            if hourly:
                # Fires on the new clock from now on: forget the instants past it, or a later edit
                # (set_tasks starts after the last fired second) would silence the task for the jump.
                if self._last_fired.get(task.name, now) > now:
                    self._last_fired[task.name] = now
                self._push(task, now, now)
        # Re-checks armed on the old clock would wait out the jump: bring them forward.
        for name, r in list(self._retry.items()):
            if r.at > now + 1:
                self._retry[name] = r._replace(at=now + 1)
                heapq.heappush(self._heap, (now + 1, r.version, name))
        self._compact()
        return ClockJump("backward", seconds, "keep_firing")

    # -- failures ----------------------------------------------------------------------------------

    def _fail(self, task: Task, second: int, error: Exception, attempt: int = 1) -> None:
        """Record that working out `task`'s fires at `second` raised; re-check it after a backoff.

        The re-check looks for the first fire after `second` (or after the last fired second, if
        later: never fire an instant twice). Fires it then finds already past are handled as after a
        late wake-up: caught up within misfire_grace or reported as missed.
        """
        name = task.name
        self._next.pop(name, None)  # whatever it said is no longer known to be right
        at = second + min(RETRY_INITIAL << min(attempt - 1, 16), RETRY_MAX)
        version = self._version.setdefault(name, 1)
        after = max(second, self._last_fired.get(name, second))
        self._retry[name] = _Retry(at, version, after, attempt)
        heapq.heappush(self._heap, (at, version, name))
        self._errors.append(TaskError(name, second, error, at, attempt))

    def _is_retry(self, entry: tuple[int, int, str]) -> bool:
        r = self._retry.get(entry[2])
        return r is not None and r.at == entry[0] and r.version == entry[1]

    def _recheck(self, entry: tuple[int, int, str], now: int) -> None:
        """Work out again the next fire of a task that failed, if `entry` is its re-check."""
        if not self._is_retry(entry):
            return
        name = entry[2]
        r = self._retry.pop(name)
        task = self._tasks[name]  # _drop removes the re-check of a removed task
        try:
            assert task.schedule is not None
            nxt = next_fire_ts(task.schedule, task.tz, r.after)
        except Exception as exc:
            self._fail(task, now, exc, r.attempt + 1)
            return
        # A fire at or before `now` lands on top of the heap and is handled by the running tick loop.
        self._set_next(name, nxt)

    # -- heap bookkeeping --------------------------------------------------------------------------

    def _fired(self, task: Task, second: int, nxt: int | None) -> None:
        self._last_fired[task.name] = second
        self._set_next(task.name, nxt)

    def _push(self, task: Task, after: int, now: int) -> None:
        """(Re)schedule `task` from scratch: its first fire after `after`; a failure is recorded at `now`."""
        self._version[task.name] = self._version.get(task.name, 0) + 1
        self._retry.pop(task.name, None)
        try:
            assert task.schedule is not None
            nxt = next_fire_ts(task.schedule, task.tz, after)
        except Exception as exc:
            self._fail(task, now, exc)
            return
        self._set_next(task.name, nxt)

    def _set_next(self, name: str, nxt: int | None) -> None:
        if nxt is None:
            self._next.pop(name, None)
            return
        self._next[name] = nxt
        heapq.heappush(self._heap, (nxt, self._version.setdefault(name, 1), name))

    def _current(self, entry: tuple[int, int, str]) -> bool:
        ts, version, name = entry
        return self._version.get(name) == version and self._next.get(name) == ts and name in self._tasks

    def _drop(self, name: str) -> None:
        self._tasks.pop(name, None)
        self._next.pop(name, None)
        self._retry.pop(name, None)
        self._version[name] = self._version.get(name, 0) + 1
        # _last_fired is kept: a task removed and re-added must not fire a second it already fired.

    def _compact(self) -> None:
        """Rebuild the heap from the live entries once stale ones (changed, removed tasks) dominate.

        Pops see the same live entries in the same order, so what fires does not change. Versions of
        removed tasks go too: no heap entry refers to them any more, so a re-added task may start over.
        """
        live = len(self._next) + len(self._retry)
        if len(self._heap) <= 2 * live + COMPACT_SLACK and len(self._version) <= 2 * len(self._tasks) + COMPACT_SLACK:
            return
        version = self._version
        heap = [(ts, version[name], name) for name, ts in self._next.items()]
        heap += [(r.at, r.version, name) for name, r in self._retry.items()]
        heapq.heapify(heap)
        self._heap = heap
        self._version = {name: v for name, v in version.items() if name in self._tasks}

    def _forget_old_fires(self, now: int) -> None:
        """Drop the last fired seconds of removed tasks that can no longer matter.

        A re-added task starts after max(now, last fired), so a removed task's entry only matters
        while the clock could be set back to before it; a step back beyond BACKWARD_LIMIT is a clock
        correction that forgets them all anyway (_jumped_back).
        """
        horizon = now - BACKWARD_LIMIT
        tasks = self._tasks
        self._last_fired = {n: s for n, s in self._last_fired.items() if n in tasks or s >= horizon}


@dataclass(frozen=True)
class FireHints:
    """Next fires of tasks strictly after `after`, computed off the loop (pure, so any thread may)."""

    after: int
    next: dict[str, int | None]


def precompute(tasks: Iterable[Task], wall: float) -> FireHints:
    """Work out every timed task's next fire after `wall`: the slow part of applying a big config.

    A task whose next fire cannot be worked out gets no hint: set_tasks then tries itself, and reports.
    """
    after = math.floor(wall)
    hints: dict[str, int | None] = {}
    for t in tasks:
        if t.schedule is not None and t.schedule.kind != "reboot":
            try:
                hints[t.name] = next_fire_ts(t.schedule, t.tz, after)
            except Exception:  # set_tasks tries again itself, reports it and owns the re-check
                continue
    return FireHints(after, hints)


@dataclass
class Backoff:
    """Restart delay for a daemon-type task's copy: 1 s doubling to 60 s, reset after 60 s of uptime."""

    initial: float = 1.0
    maximum: float = 60.0
    reset_after: float = 60.0
    current: float = 0.0

    def after_exit(self, uptime: float) -> float:
        """The delay before restarting a copy that ran for `uptime` seconds."""
        if uptime >= self.reset_after or self.current == 0.0:
            self.current = self.initial
        else:
            self.current = min(self.current * 2, self.maximum)
        return self.current


def jitter_delay(task: Task, rng: random.Random) -> float:
    """A random start delay in [0, task.jitter] seconds."""
    return rng.uniform(0.0, task.jitter) if task.jitter > 0 else 0.0


# --- the imperative shell -------------------------------------------------------------------------

# Wake this much before a boundary and finish with a precise sleep: asyncio's timers round to the
# millisecond and may fire late by that much, which would be most of our lateness budget.
EARLY_WAKE = 0.002
# A reload is applied in slices of this many names, each only before this fraction of a second.
APPLY_SLICE = 2000
QUIET_UNTIL = 0.8
# Reloads of up to this many tasks are applied in one piece, between two boundaries (see apply_gradually).
APPLY_ATOMIC = 10_000


@dataclass
class TaskState:
    """What the loop knows about one task beyond its definition (for status and daemon restarts)."""

    task: Task
    matched_ip: str | None = None
    pending: int = 0  # fires waiting out their jitter; they count against max_instances
    last_status: str | None = None
    last_end: float | None = None
    last_scheduled: int | None = None
    backoff: Backoff | None = None
    restarts: int = 0


class Scheduler:
    """Owns all mutable daemon state inside one asyncio loop: the queue, the runs, the config.

    Everything that changes state runs as a callback of that loop. Signal handlers and other threads
    only post to it (`loop.add_signal_handler`, `call_soon_threadsafe`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, state_dir: Path, stop_timeout: float = 10.0,
                 rng: random.Random | None = None) -> None:
        self.loop = loop
        self.state_dir = state_dir
        self.stop_timeout = stop_timeout
        self.rng = rng or random.Random()
        self.log = get_logger()
        self.queue = FireQueue()
        self.runner = Runner(loop, self._on_run_end)
        self.states: dict[str, TaskState] = {}
        self.stopping = False
        self.started_at = time.time()
        self._timer: asyncio.TimerHandle | None = None
        # Delayed starts per task: token -> (timer, scheduled second for a jittered fire, None for a
        # daemon-task restart). Cancelling a jittered fire is reported, never silent.
        self._delayed: dict[str, dict[int, tuple[asyncio.TimerHandle, int | None]]] = {}
        self._tokens = itertools.count(1)
        self._retired_runs: set[str] = set()  # daemon-task copies stopped because their definition went
        self._seq = itertools.count(1)
        self._id_prefix = f"{os.urandom(5).hex()}-"
        self._done = loop.create_future()
        self._stop_requested = loop.create_future()
        self.before_tick: Callable[[], None] | None = None  # the service drains recorded signals here
        self._after_tick: list[asyncio.Future[None]] = []
        self._ticked = 0  # the last second whose tick ran

    # -- configuration -----------------------------------------------------------------------------

    def apply(self, tasks: dict[str, tuple[Task, str | None]], *, at_start: bool = False,
              hints: FireHints | None = None) -> Plan:
        """Make `tasks` (name -> (task, matched local address)) the running set; return what changed.

        Unchanged tasks keep their state and runs. Removed or changed cron tasks fire no more under
        their old definition, but runs already going finish. Removed and changed daemon tasks are
        stopped (TERM, then KILL); changed ones start again with the new definition.
        """
        plan = diff({n: s.task for n, s in self.states.items()}, {n: t for n, (t, _) in tasks.items()})
        self._apply_part(plan, tasks, hints)
        if at_start:
            now = math.floor(time.time())
            for task, _ in tasks.values():
                if task.schedule is not None and task.schedule.kind == "reboot":
                    try:
                        self._fire(FireNow(task, now))
                    except Exception:  # one task's failure must not keep the others from starting
                        self.log.exception("fire.failed", task=task.name, scheduled_at=_iso(now))
        return plan

    async def apply_gradually(self, tasks: dict[str, tuple[Task, str | None]], hints: FireHints | None = None,
                              *, slice_size: int = APPLY_SLICE, atomic_up_to: int = APPLY_ATOMIC) -> Plan:
        """`apply` for a reload, without ever holding the loop across a second boundary.

        Up to `atomic_up_to` names (old and new), the whole config is applied at once, just after
        a second's fires went out (~100-350 ms for 10,000 tasks): one instant, the old config before
        it and the new one after. A bigger config is applied `slice_size` names at a time, each
        slice early in a second, so for a few seconds some tasks run their new definition and
        others their old one. Removed names go first: a task renamed in such a reload may start
        under its new name a little later, but never runs under both names at once.
        """
        old = {n: s.task for n, s in self.states.items()}
        removed = [n for n in old if n not in tasks]
        if len(tasks) + len(removed) <= atomic_up_to:
            await self.quiet_moment(whole_second=True)
            if self.stopping:
                return diff({}, {})
            plan = diff(old, {n: t for n, (t, _) in tasks.items()})
            self._apply_part(plan, tasks, hints)
            return plan
        names = [*removed, *tasks]
        parts: list[Plan] = []
        for i in range(0, len(names), slice_size):
            await self.quiet_moment()
            if self.stopping:
                break
            chunk = names[i:i + slice_size]
            part = diff({n: old[n] for n in chunk if n in old},
                        {n: tasks[n][0] for n in chunk if n in tasks})
            self._apply_part(part, tasks, hints)
            gc.freeze()  # the new states and queue entries live on: keep collections from rescanning them
            parts.append(part)
        await self.quiet_moment()
        return Plan(*(tuple(sorted(n for p in parts for n in getattr(p, f))) for f in
                      ("added", "removed", "changed", "unchanged")))

    async def quiet_moment(self, *, whole_second: bool = False) -> None:
        """Return when a slice of work on the loop cannot delay a fire: early in a second, after its tick.

        `whole_second`: only right after a tick, leaving (nearly) a whole second for the work.
        """
        now = time.time()
        frac = now % 1.0
        ticking = self._timer is not None and not self.stopping
        if ticking and (whole_second or frac > QUIET_UNTIL or self._ticked < math.floor(now)):
            # Too late in the second, or this second's fires have not gone out yet (a busy loop).
            await self.after_next_tick()
        elif frac <= QUIET_UNTIL and not whole_second:
            await asyncio.sleep(0)  # let whatever else is due (reaping, output) run first
        else:  # not ticking (not armed yet, or stopping): just let the boundary pass
            await asyncio.sleep(1.0 - frac + 0.01)

    def _apply_part(self, plan: Plan, tasks: Mapping[str, tuple[Task, str | None]],
                    hints: FireHints | None) -> None:
        """Carry out `plan` (all of a reload, or a slice of its names); `tasks` holds the new tasks."""
        wall = time.time()
        for name in plan.removed:
            self._retire(name)
        for name in plan.changed:
            if self.states[name].task.type == "daemon":
                self._retire(name)
            else:
                self._cancel_delayed(name, "reload")
        changed = set(plan.changed)
        for name in (*plan.unchanged, *plan.changed, *plan.added):
            task, ip = tasks[name]
            st = self.states.get(name)
            if st is not None and name not in changed:
                st.task, st.matched_ip = task, ip
                continue
            fresh = TaskState(task, ip)
            if st is not None:  # a changed cron task: its run history carries over
                fresh.last_status, fresh.last_end, fresh.last_scheduled = st.last_status, st.last_end, st.last_scheduled
            self.states[name] = fresh
        covered = (*plan.removed, *plan.changed, *plan.added, *plan.unchanged)
        self.queue.update(covered, (tasks[n][0] for n in covered if n in tasks and tasks[n][0].type == "cron"),
                          wall, hints)
        self._log_task_errors(self.queue.take_errors())
        for name in (*plan.added, *plan.changed):
            task = tasks[name][0]
            if task.type == "daemon":
                self.states[name].backoff = Backoff()
                for _ in range(task.max_instances - self.runner.running_count(name)):
                    self._start(task, None)

    def _retire(self, name: str) -> None:
        st = self.states.get(name)
        self._cancel_delayed(name, "reload")
        self.states.pop(name, None)
        if st is not None and st.task.type == "daemon":
            for run in [r for r in self.runner.runs.values() if r.spec.task == name]:
                self._retired_runs.add(run.spec.run_id)
                self.runner.terminate(run)

    def _delay(self, name: str, delay: float, scheduled: int | None, callback: Callable[[int], None]) -> None:
        token = next(self._tokens)
        handle = self.loop.call_later(delay, callback, token)
        self._delayed.setdefault(name, {})[token] = (handle, scheduled)

    def _take_delayed(self, name: str, token: int) -> bool:
        """Forget a delayed start that is now due; False if it was cancelled meanwhile."""
        entries = self._delayed.get(name)
        if entries is None or entries.pop(token, None) is None:
            return False
        if not entries:
            del self._delayed[name]
        return True

    def _cancel_delayed(self, name: str, reason: str) -> None:
        for handle, scheduled in self._delayed.pop(name, {}).values():
            handle.cancel()
            if scheduled is not None:
                self.log.info("skipped", task=name, scheduled_at=_iso(scheduled), reason=reason,
                              detail="cancelled while waiting out its jitter")
        st = self.states.get(name)
        if st is not None:
            st.pending = 0

    # -- time --------------------------------------------------------------------------------------

    def arm(self) -> None:
        """Schedule the next wake-up at the coming second boundary."""
        if self.stopping:
            return
        wall = time.time()
        target = math.floor(wall) + 1
        self._timer = self.loop.call_later(max(0.0, target - wall - EARLY_WAKE), self._on_timer, target)

    def _on_timer(self, target: int) -> None:
        try:
            if self.before_tick is not None:
                self.before_tick()
                if self.stopping:
                    return
            remaining = target - time.time()
            if 0 < remaining <= 2 * EARLY_WAKE:
                time.sleep(remaining)
            self.tick()
        except Exception:  # never let one bad second stop every later one from firing
            self.log.exception("tick.failed", second=_iso(target))
        finally:
            self._ticked = target
            self.arm()
            for fut in self._after_tick:
                if not fut.done():
                    fut.set_result(None)
            self._after_tick.clear()

    async def after_next_tick(self) -> None:
        """Return right after the next second's fires started: the most time until the one after."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self._after_tick.append(fut)
        await fut

    def tick(self) -> None:
        """Fire everything due now. Starts go first; logging and bookkeeping after.

        One task's failure (to start, or to have its fires worked out) is logged and costs no other
        task its fire.
        """
        actions = self.queue.tick(time.time(), time.monotonic())
        for a in actions:
            if isinstance(a, FireNow):
                try:
                    self._fire(a)
                except Exception:
                    self.log.exception("fire.failed", task=a.task.name, scheduled_at=_iso(a.scheduled))
        self.queue.settle()
        errors: list[TaskError] = []
        for a in actions:
            if isinstance(a, Missed):
                self.log.warning("missed", task=a.task, first=_iso(a.first), last=_iso(a.last), count=a.count,
                                 reason=a.reason, exact=a.exact)
            elif isinstance(a, ClockJump):
                self.log.warning("clock.jump", direction=a.direction, seconds=round(a.seconds, 3), action=a.action)
            elif isinstance(a, TaskError):
                errors.append(a)
        self._log_task_errors([*errors, *self.queue.take_errors()])

    def _log_task_errors(self, errors: list[TaskError]) -> None:
        for e in errors:
            # The traceback on the first failure only: a task that stays broken is re-checked (and
            # logged) up to once a minute.
            trace = {"exc_info": e.error} if e.attempt == 1 else {}
            self.log.error("task.tick_failed", task=e.task, second=_iso(e.second), retry_at=_iso(e.retry_at),
                           attempt=e.attempt, error=f"{type(e.error).__name__}: {e.error}", **trace)

    # -- runs --------------------------------------------------------------------------------------

    def _fire(self, fire: FireNow) -> None:
        task = fire.task
        st = self.states.get(task.name)
        if st is None:
            return
        busy = self.runner.running_count(task.name) + st.pending
        if busy >= task.max_instances:
            self.log.info("skipped", task=task.name, scheduled_at=_iso(fire.scheduled), reason="max_instances",
                          running=busy, max_instances=task.max_instances)
            return
        if fire.caught_up:
            self.log.info("caught_up", task=task.name, scheduled_at=_iso(fire.scheduled),
                          late_s=round(time.time() - fire.scheduled, 3))
        delay = jitter_delay(task, self.rng)
        if delay > 0:
            st.pending += 1
            self.log.info("jitter", task=task.name, scheduled_at=_iso(fire.scheduled), delay_s=round(delay, 3))
            self._delay(task.name, delay, fire.scheduled,
                        lambda token: self._after_jitter(task, fire.scheduled, token))
            return
        self._start(task, fire.scheduled)

    def _after_jitter(self, task: Task, scheduled: int, token: int) -> None:
        st = self.states.get(task.name)
        if not self._take_delayed(task.name, token) or st is None or self.stopping:
            return
        st.pending -= 1
        self._start(task, scheduled)

    def _start(self, task: Task, scheduled: int | None) -> None:
        # Globally unique, not just per daemon: the runner finds escaped processes by TORCH_RUN_ID, and
        # a run id shared with another daemon (or a previous one's leftovers) would get them killed too.
        run_id = f"{self._id_prefix}{next(self._seq):x}"
        spec = RunSpec(
            task=task.name, run_id=run_id, command=task.command,
            env=(*task.env, ("TORCH_STATE_DIR", str(self.state_dir))),
            workdir=task.workdir, user=task.user, group=task.group, timeout=task.timeout,
            kill_timeout=task.kill_timeout, output_limit=task.output_limit,
            scheduled_ts=float(scheduled) if scheduled is not None else None,
        )
        if scheduled is not None:
            st = self.states.get(task.name)
            if st is not None:
                st.last_scheduled = scheduled
        self.runner.start(spec)

    def _on_run_end(self, run: Run, result: RunResult) -> None:
        name = run.spec.task
        replaced = run.spec.run_id in self._retired_runs
        self._retired_runs.discard(run.spec.run_id)
        st = self.states.get(name)
        if st is None:
            return
        st.last_status, st.last_end = result.status, time.time()
        task = st.task
        if task.type != "daemon" or self.stopping or st.backoff is None:
            return
        if self.runner.running_count(name) + st.pending >= task.max_instances:
            return
        if replaced:
            # An old copy of a changed daemon task has gone: its successor starts now, no backoff.
            self._start(task, None)
            return
        uptime = time.time() - run.started_at
        delay = st.backoff.after_exit(uptime)
        st.restarts += 1
        st.pending += 1
        self.log.warning("daemon.restart", task=name, after_s=delay, uptime_s=round(uptime, 3),
                         exit_status=result.status, exit_code=result.exit_code, signal=result.signal)
        self._delay(name, delay, None, lambda token: self._restart(task, token))

    def _restart(self, task: Task, token: int) -> None:
        st = self.states.get(task.name)
        if not self._take_delayed(task.name, token) or st is None or st.task != task or self.stopping:
            return
        st.pending -= 1
        self._start(task, None)

    # -- stopping ----------------------------------------------------------------------------------

    def request_stop(self, signame: str) -> None:
        """SIGTERM/SIGINT: stop firing and shut down; a second request kills what is left at once."""
        if self.stopping:
            self.log.warning("stop.forced", signal=signame)
            for run in list(self.runner.runs.values()):
                self.runner.kill_now(run)
            return
        self.stopping = True
        self._stop_requested.set_result(None)
        self.log.info("stop.requested", signal=signame, running=len(self.runner.runs))
        if self._timer is not None:
            self._timer.cancel()
        for name in list(self._delayed):
            self._cancel_delayed(name, "stop")
        task = self.loop.create_task(self._shutdown())
        task.add_done_callback(lambda _t: None)

    async def _shutdown(self) -> None:
        try:
            await self.runner.shutdown(self.stop_timeout)
        finally:
            if not self._done.done():
                self._done.set_result(None)

    async def wait_stopped_requested(self) -> None:
        """Return once SIGTERM/SIGINT asked the scheduler to stop (runs may still be ending)."""
        await self._stop_requested

    async def wait_stopped(self) -> None:
        """Return once a stop was requested and every run has ended."""
        await self._done


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
