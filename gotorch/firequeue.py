"""When tasks fire: the fire queue. Pure: clock injected, no processes, no logging.

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
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from gotorch.config import Task
from gotorch.fire_times import next_fire_ts, repeats_at_least_hourly

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


def next_tick(wall: float, due: int | None, ticked: int) -> int:
    """The second the loop should tick next, given the earliest second with something `due` and the last `ticked`.

    Normally the coming boundary. But when a second has passed untouched with a fire of it (or of an
    earlier second) still due (a busy start-up with 10,000 tasks, a long step of the loop ran past
    the boundary), the current one, at once: waiting for the next boundary would run those fires a
    second late, as catch-ups, instead of a few hundred ms late and on time. At most once a second:
    a second already ticked is never ticked again.
    """
    now = math.floor(wall)
    if due is not None and due <= now and ticked < now:
        return now
    return now + 1


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


_Entry = tuple[int, int, int, str]  # see FireQueue._heap


class _Retry(NamedTuple):
    """A task waiting for its re-check at `at` (heap entry `(at, rank, version, name)`), then fires after `after`."""

    at: int
    version: int
    after: int
    attempt: int


class FireQueue:
    """Next fires of the scheduled tasks, in a heap keyed by epoch second. No clock reads."""

    def __init__(self) -> None:
        # (fire second, rank, version, task name): the fires of one second go in file order (the
        # task's line), as cron runs a crontab's lines, so a task added below another never starts
        # ahead of it; version tells a current entry from a stale one.
        self._heap: list[_Entry] = []
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
            task = self._tasks[entry[3]]
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
                heapq.heappush(self._heap, (now + 1, self._rank(name), r.version, name))
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
        heapq.heappush(self._heap, (at, task.line, version, name))
        self._errors.append(TaskError(name, second, error, at, attempt))

    def _is_retry(self, entry: _Entry) -> bool:
        r = self._retry.get(entry[3])
        return r is not None and r.at == entry[0] and r.version == entry[2]

    def _recheck(self, entry: _Entry, now: int) -> None:
        """Work out again the next fire of a task that failed, if `entry` is its re-check."""
        if not self._is_retry(entry):
            return
        name = entry[3]
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
        heapq.heappush(self._heap, (nxt, self._rank(name), self._version.setdefault(name, 1), name))

    def _rank(self, name: str) -> int:
        task = self._tasks.get(name)
        return task.line if task is not None else 0

    def _current(self, entry: _Entry) -> bool:
        ts, _, version, name = entry
        return self._version.get(name) == version and self._next.get(name) == ts and name in self._tasks

    def _drop(self, name: str) -> None:
        self._tasks.pop(name, None)
        self._next.pop(name, None)
        self._retry.pop(name, None)
        self._version[name] = self._version.get(name, 0) + 1
        # _last_fired is kept: a task removed and re-added must not fire a second it already fired.

    def _compact(self) -> None:
        """Rebuild the heap from the live entries once stale ones (changed, removed tasks) dominate.

        Pops see the same live entries (ranked by their current line), so what fires does not change.
        Versions of removed tasks go too: no heap entry refers to them any more, so a re-added task
        may start over.
        """
        live = len(self._next) + len(self._retry)
        if len(self._heap) <= 2 * live + COMPACT_SLACK and len(self._version) <= 2 * len(self._tasks) + COMPACT_SLACK:
            return
        version = self._version
        heap = [(ts, self._rank(name), version[name], name) for name, ts in self._next.items()]
        heap += [(r.at, self._rank(name), r.version, name) for name, r in self._retry.items()]
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
