"""`torch why TASK [--at TIME]`: what became of a task's last scheduled instant, decided purely.

The CLI gathers the facts: the task from the task file, this host's addresses, the time asked about,
the fires around it (`fires_around`, from gotorch.fire_times) and a `HistoryLookup` over
STATE/history.db. `explain` turns them into one `Answer`. Nothing here reads the clock or opens a
file, so every answer is unit-tested with fixed times and an in-memory history.

The checks, in order (the first that applies answers):

1. no such task in the file (`unknown_task`; the history may still remember it);
2. `enabled: false` (`disabled`);
3. the `ips` allow-list matches none of this host's addresses (`not_on_this_host`);
4. a daemon-type task: it has no instants, it is kept running (`daemon_task`, with its last copy);
5. `@reboot`: its instant is the daemon's start (`reboot`, with the last run it triggered);
6. otherwise the last fire at or before TIME. When TIME was named as an instant (`--at` ISO) and the
   schedule has no fire then, the answer is `not_scheduled` (with the fires around TIME), and the
   previous fire is explained as well. A fire is `ran`, `skipped` or `missed` by its rows; with no
   row, `not_recorded_yet` if it is only seconds old (then the last fire that should be recorded by
   now is explained too), else `missed` with the gap in the history around it; with no history at
   all, `no_history`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal, Protocol

from gotorch.config import Task
from gotorch.durations import format_duration
from gotorch.fire_times import next_fire, next_fire_ts
from gotorch.history.query import FireRecord, HistoryRow, iso
from gotorch.hosts import HostMatch, IPAddress
from gotorch.schedule import Fire, Schedule

AnswerKind = Literal["ran", "skipped", "missed", "not_scheduled", "not_on_this_host", "disabled",
                     "not_recorded_yet", "daemon_task", "reboot", "unknown_task", "no_history"]

# The writer commits a batch about once a second (history.writer); a run's row also waits for its
# spawn, and a skip or missed row for the tick's starts. A fire younger than this with no row is
# "not recorded yet" rather than missed.
RECENT_S = 5.0
# Rows of other tasks this close on both sides of a fire mean the daemon was up and recording then:
# a fire without a row is then not explained by downtime.
NEAR_S = 60.0
# How far back the previous fire is searched: 2**34 s is 544 years, beyond the rarest schedule
# (29 February on a given weekday recurs within 40 years).
_SEARCH_MAX_S = 1 << 34
_MIN_TS = int((datetime(1, 1, 3, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())


# --- fires around a time (pure: gotorch.fire_times only searches forward) ----------------------------


@dataclass(frozen=True, slots=True)
class FiresAround:
    """The last fire at or before a time, and the first after it (None: there is none)."""

    previous: Fire | None
    next: Fire | None


def previous_fire_ts(schedule: Schedule, tz: tzinfo, at: int) -> int | None:
    """The last fire of `schedule` at or before instant `at` (Unix seconds); None if none in 544 years.

    The schedule engine only searches forward (`next_fire_ts`: the first fire strictly after an
    instant), so this widens a window [at - span, at] by doubling until it holds a fire, then
    bisects towards `at`: about 2 * log2(distance) forward searches, whatever the schedule's rate
    (a 1/s schedule answers in one, a yearly one in about 60). The DST policy is the engine's, so
    a fire this returns is one the daemon would fire.
    """
    if schedule.kind == "reboot":
        return None
    span = 0
    while True:
        lo = at - span
        found = next_fire_ts(schedule, tz, lo - 1)  # the first fire at or after lo
        if found is not None and found <= at:
            break
        if span >= _SEARCH_MAX_S or lo <= _MIN_TS:
            return None
        span = max(1, span * 2)
    # `found` is a fire in [lo, at]: move it to the last one, keeping `hi` >= the answer.
    hi = at
    while True:
        after = next_fire_ts(schedule, tz, found)
        if after is None or after > hi:
            return found
        mid = (after + hi + 1) // 2
        probe = next_fire_ts(schedule, tz, mid - 1)  # the first fire at or after mid
        if probe is not None and probe <= hi:
            found = probe
        else:  # none in [mid, hi]: the answer is in [after, mid)
            found, hi = after, mid - 1


def fires_around(schedule: Schedule, tz: tzinfo, at: float) -> FiresAround:
    """The fire at or before `at` (Unix seconds, floored to the second) and the one after, with DST marks."""
    second = math.floor(at)
    prev = previous_fire_ts(schedule, tz, second)
    previous = None if prev is None else next_fire(schedule, tz, datetime.fromtimestamp(prev - 1, UTC))
    return FiresAround(previous, next_fire(schedule, tz, datetime.fromtimestamp(second, UTC)))


def wall_time_note(naive: datetime, tz: tzinfo) -> tuple[datetime, str | None]:
    """`naive` read as a wall time in `tz`, and a note when that wall time is in a DST gap or overlap.

    A time in a gap is read with the offset before it (so 02:30 in a 02:00-03:00 gap is 03:30 after
    it); a time that happens twice is read as its first pass.
    """
    first = naive.replace(tzinfo=tz, fold=0)
    second = naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first, None
    zone = getattr(tz, "key", None) or str(tz)
    wall = naive.isoformat(sep=" ", timespec="seconds")
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive:
        real = first.astimezone(UTC).astimezone(tz)
        return first, (f"{wall} does not exist in {zone} (DST gap); read as "
                       f"{real.isoformat(sep=' ', timespec='seconds')}")
    return first, (f"{wall} happens twice in {zone} (DST); read as the first pass "
                   f"({first.isoformat(sep=' ', timespec='seconds')}); give an offset for the second "
                   f"({second.isoformat(sep=' ', timespec='seconds')})")


# --- the question and its answer -------------------------------------------------------------------


class HistoryLookup(Protocol):
    """What `explain` asks of the history (gotorch.history.query.HistoryReader over SQLite)."""

    def fire_records(self, task: str, scheduled_at: float, jitter: float) -> Sequence[FireRecord]:
        """Rows of `task` about its fire at `scheduled_at`: its runs and skips, missed windows over it."""
        ...

    def last_row(self, task: str, at: float, trigger: str | None = None) -> HistoryRow | None:
        """The newest row of `task` started at or before `at` (of `trigger` only, if given)."""
        ...

    def find_row(self, run_id: str) -> HistoryRow | None:
        """The row with this run id, if any."""
        ...

    def rows_around(self, at: float) -> tuple[float | None, float | None]:
        """started_at of the last row of any task at or before `at`, and of the first after it."""
        ...


@dataclass(frozen=True, slots=True)
class Question:
    """Everything `explain` needs, gathered by the CLI.

    `at` is TIME and `now` the current time (Unix seconds). `exact`: TIME was named as an instant
    (`--at` ISO-8601), so "there is no fire then" is worth saying; for "now" or "2h ago" it is not.
    `fires` holds the fires around TIME for a timed schedule (None otherwise); `host` is the
    allow-list match against `addresses`; `zone` is the zone times are shown in.
    """

    name: str
    at: float
    now: float
    task: Task | None
    source: str  # the task file, for "disabled in FILE:LINE"
    exact: bool = False
    addresses: tuple[IPAddress, ...] = ()
    host: HostMatch | None = None
    fires: FiresAround | None = None
    zone: tzinfo = UTC


@dataclass(frozen=True, slots=True)
class Answer:
    """What became of the task's instant; `message` is the text for people, `to_json` the object for programs.

    `window` is a missed row's window, or for a fire without any row the last and first rows of the
    history around it (None on a side without rows); `count` is the missed row's number of fires.
    `previous_answer` is the answer for the fire explained after it: for `not_scheduled` the fire
    before TIME (`scheduled_at`), for `not_recorded_yet` the last fire old enough to be recorded.
    """

    kind: AnswerKind
    task: str
    at: float
    message: str
    scheduled_at: float | None = None
    row: HistoryRow | None = None
    previous_fire: float | None = None
    next_fire: float | None = None
    window: tuple[float | None, float | None] | None = None
    count: int | None = None
    blocking_run: str | None = None
    addresses: tuple[str, ...] = ()
    allow_list: tuple[str, ...] = ()
    previous_answer: AnswerKind | None = None

    def to_json(self) -> dict[str, Any]:
        """The stable `torch why --json` object: times as ISO-8601 UTC, `run` as `torch history --json` has it."""
        return {
            "task": self.task,
            "at": iso(self.at),
            "answer": self.kind,
            "previous_answer": self.previous_answer,
            "scheduled_at": iso(self.scheduled_at),
            "run": None if self.row is None else self.row.to_json(),
            "blocking_run": self.blocking_run,
            "previous_fire": iso(self.previous_fire),
            "next_fire": iso(self.next_fire),
            "window": None if self.window is None else
            {"from": iso(self.window[0]), "to": iso(self.window[1]), "count": self.count},
            "addresses": list(self.addresses),
            "allow_list": list(self.allow_list),
            "message": self.message,
        }


def explain(q: Question, history: HistoryLookup | None) -> Answer:
    """Answer "why did (or didn't) task `q.name` run at its last instant before `q.at`?".

    `history` None means there is no history database yet. See the module docstring for the order
    of the checks.
    """
    task = q.task
    if task is None:
        return _unknown(q, history)
    base = _Base(q, task, history)
    if not task.enabled:
        return base.answer("disabled", f"disabled: {q.name} is disabled in {q.source}:{task.line} "
                                       f"(enabled: false){base.last_seen()}", row=base.last_row())
    if q.host is not None and not q.host.applies:
        listed = ", ".join(str(n) for n in task.ips)
        mine = ", ".join(str(a) for a in q.addresses) or "none"
        return base.answer("not_on_this_host",
                           f"not on this host: {q.name} runs only on hosts with an address in its ips "
                           f"allow-list ({listed}), and none of this host's addresses ({mine}) is in it"
                           f"{base.last_seen()}", row=base.last_row())
    if task.type == "daemon":
        return base.daemon_task()
    if task.schedule is not None and task.schedule.kind == "reboot":
        return base.reboot()
    return base.timed()


def _unknown(q: Question, history: HistoryLookup | None) -> Answer:
    row = None if history is None else history.last_row(q.name, q.at)
    message = f"no task named '{q.name}' in {q.source}"
    if row is not None:
        message += (f"; it is no longer in the task file, but the history remembers it: its last row "
                    f"is {_row_text(row, q.zone)}")
    return Answer("unknown_task", q.name, q.at, message, row=row, addresses=tuple(str(a) for a in q.addresses))


class _Base:
    """The answers for a task that is in the file: shared fields and the per-kind explanations."""

    def __init__(self, q: Question, task: Task, history: HistoryLookup | None) -> None:
        self.q = q
        self.task = task
        self.history = history
        self.fires = q.fires

    def answer(self, kind: AnswerKind, message: str, **fields: Any) -> Answer:
        prev = self.fires.previous if self.fires is not None else None
        nxt = self.fires.next if self.fires is not None else None
        fields.setdefault("previous_fire", None if prev is None else prev.at.timestamp())
        fields.setdefault("next_fire", None if nxt is None else nxt.at.timestamp())
        return Answer(kind, self.q.name, self.q.at, message, addresses=tuple(str(a) for a in self.q.addresses),
                      allow_list=tuple(str(n) for n in self.task.ips), **fields)

    def t(self, ts: float) -> str:
        return _time(ts, self.q.zone)

    def last_row(self, trigger: str | None = None) -> HistoryRow | None:
        return None if self.history is None else self.history.last_row(self.q.name, self.q.at, trigger)

    def last_seen(self) -> str:
        row = self.last_row()
        return "" if row is None else f"; its last row in the history is {_row_text(row, self.q.zone)}"

    # -- tasks without instants ---------------------------------------------------------------------

    def daemon_task(self) -> Answer:
        n = self.task.max_instances
        head = (f"daemon task: {self.q.name} has no scheduled instants: torch keeps {n} cop"
                f"{'y' if n == 1 else 'ies'} of it running and starts a new one (after a backoff) when one exits")
        if self.history is None:
            return self.answer("daemon_task", f"{head}; {_NO_HISTORY}")
        row = self.last_row()
        if row is None:
            return self.answer("daemon_task", f"{head}; no copy of it is recorded at or before {self.t(self.q.at)}")
        return self.answer("daemon_task", f"{head}; its last copy at or before {self.t(self.q.at)}: "
                                          f"{_row_text(row, self.q.zone)}", row=row)

    def reboot(self) -> Answer:
        head = f"reboot: {self.q.name} (@reboot) runs once each time the daemon starts"
        if self.history is None:
            return self.answer("reboot", f"{head}; {_NO_HISTORY}")
        row = self.last_row("reboot")
        if row is None:
            return self.answer("reboot", f"{head}; no such run is recorded at or before {self.t(self.q.at)}")
        start = row.scheduled_at if row.scheduled_at is not None else row.started_at  # the daemon's start
        when = "" if start is None else f", at the start at {self.t(start)}"
        return self.answer("reboot", f"{head}; the last{when}: {_row_text(row, self.q.zone)}",
                           row=row, scheduled_at=start)

    # -- timed schedules ----------------------------------------------------------------------------

    def timed(self) -> Answer:
        sched = self.task.schedule
        what = f"schedule \"{sched.text if sched else '?'}\", {self.task.timezone}"
        prev = self.fires.previous if self.fires is not None else None
        nxt = self.fires.next if self.fires is not None else None
        next_text = f"next fire {self.t(nxt.at.timestamp())}" if nxt is not None else "no later fire"
        if prev is None:
            return self.answer("not_scheduled", f"not scheduled: {self.q.name} has no fire at or before "
                                                f"{self.t(self.q.at)} ({what}); {next_text}")
        instant = self.instant(prev)
        if not self.q.exact or math.floor(self.q.at) == int(prev.at.timestamp()):
            return instant
        head = (f"not scheduled: {self.q.name} has no fire at {self.t(self.q.at)} ({what}); previous fire "
                f"{self.t(prev.at.timestamp())}, {next_text}")
        # The fields describe the previous fire, which the message goes on to explain.
        return replace(instant, kind="not_scheduled", message=f"{head}\n{instant.message}",
                       previous_answer=instant.kind)

    def instant(self, fire: Fire) -> Answer:
        """What became of the fire at `fire.at`."""
        s = fire.at.timestamp()
        fire_text = f"{self.q.name}'s fire at {self.t(s)}{_dst_note(fire, self.task.timezone)}"
        if self.history is None:
            return self.answer("no_history", f"no history: {fire_text}: {_NO_HISTORY}", scheduled_at=s)
        records = self.history.fire_records(self.q.name, s, self.task.jitter)
        runs = [r.row for r in records if r.row.kind == "run"]
        if runs:
            return self.ran(fire_text, s, runs)
        skips = [r for r in records if r.row.kind == "skipped"]
        if skips:
            return self.skipped(fire_text, s, skips[-1])
        missed = [r for r in records if r.row.kind == "missed"]
        if missed:
            return self.missed(fire_text, s, missed[-1])
        age = self.q.now - s
        if age < RECENT_S + self.task.jitter:
            return self.not_recorded_yet(fire_text, s, age)
        return self.no_record(fire_text, s)

    def not_recorded_yet(self, fire_text: str, s: float, age: float) -> Answer:
        note = f", and a run may first wait out the task's jitter (up to {format_duration(self.task.jitter)})" \
            if self.task.jitter else ""
        ago = f"{format_duration(max(0, round(age)))} ago" if age >= 0 else "still to come"
        message = f"not recorded yet: {fire_text} was {ago}; the daemon writes history about once a second{note}"
        # For a task firing every second every fire is this recent: also explain the last fire that
        # should be recorded by now, which tells "the daemon is down" from "give it a second".
        settled = self.settled_fire(s)
        earlier = None if settled is None else self.instant(settled)
        if earlier is not None:
            message += f"\n{earlier.message}"
        return self.answer("not_recorded_yet", message, scheduled_at=s,
                           previous_answer=None if earlier is None else earlier.kind)

    def settled_fire(self, s: float) -> Fire | None:
        """The last fire before `s` old enough to have its rows written, if any."""
        sched = self.task.schedule
        if sched is None:
            return None
        cutoff = min(math.floor(self.q.now - RECENT_S - self.task.jitter), math.floor(s) - 1)
        found = previous_fire_ts(sched, self.task.tz, cutoff)
        return None if found is None else next_fire(sched, self.task.tz, datetime.fromtimestamp(found - 1, UTC))

    def ran(self, fire_text: str, s: float, runs: list[HistoryRow]) -> Answer:
        # The last attempt; among equal attempts (the clock went back and the fire repeated) the latest.
        row = max(runs, key=lambda r: (r.attempt, r.started_at or 0.0))
        parts = [f"ran: {fire_text} ran as run {row.run_id}: {row.status_text()}"]
        if row.started_at is not None:
            late = "" if row.lateness_ms is None else f" ({_lateness(row.lateness_ms)} late)"
            parts.append(f"started {self.t(row.started_at)}{late}")
        if row.reason:  # why torch stopped it (killed, timeout)
            parts.append(f"stopped by torch: {row.reason}")
        if row.status == "running":
            parts.append("still running")
        elif row.status == "lost":
            parts.append("its end was never recorded: the daemon running it went away (crash, kill -9, power loss)")
        elif row.duration_s is not None:
            parts.append(f"took {_duration(row.duration_s)}")
        if row.attempt > 1:
            parts.append(f"attempt {row.attempt}")
        if len(runs) > 1:
            parts.append(f"{len(runs)} runs for this fire, the last shown")
        return self.answer("ran", "; ".join(parts), scheduled_at=s, row=row)

    def skipped(self, fire_text: str, s: float, rec: FireRecord) -> Answer:
        row = rec.row
        reason = row.reason or "no reason recorded"
        blocking = None
        if row.reason == "max_instances":
            n = self.task.max_instances
            why = (f"{n} run{'s' if n != 1 else ''} of it {'were' if n != 1 else 'was'} still going "
                   f"(max_instances: {n})")
            if rec.detail:
                blocking = rec.detail
                other = self.history.find_row(rec.detail) if self.history is not None else None
                why += f"; run {rec.detail} was in the way"
                if other is not None:
                    why += f" ({_row_text(other, self.q.zone, with_id=False)})"
        else:
            why = _SKIP_REASONS.get(reason, reason)
            if rec.detail:
                why += f": {rec.detail}"
        return self.answer("skipped", f"skipped: {fire_text} started no run ({reason}): {why}",
                           scheduled_at=s, row=row, blocking_run=blocking)

    def missed(self, fire_text: str, s: float, rec: FireRecord) -> Answer:
        row = rec.row
        reason = row.reason or "no reason recorded"
        why = _MISS_REASONS.get(reason, reason)
        if reason == "beyond_grace":
            why = why.format(grace=format_duration(self.task.misfire_grace))
        first, last, count = rec.missed_first, rec.missed_last, rec.missed_count
        window = ""
        if first is not None and last is not None:
            n = f"{count} fire{'s' if count != 1 else ''}" if count is not None else "fires"
            window = f"; it is one of {n} missed from {self.t(first)} to {self.t(last)}"
            if row.started_at is not None:
                window += f" (noticed at {self.t(row.started_at)})"
        return self.answer("missed", f"missed: {fire_text} was not run ({reason}): {why}{window}",
                           scheduled_at=s, row=row, window=(first, last), count=count)

    def no_record(self, fire_text: str, s: float) -> Answer:
        assert self.history is not None
        before, after = self.history.rows_around(s)
        near = before is not None and after is not None and s - before <= NEAR_S and after - s <= NEAR_S
        if before is not None and after is not None:
            gap = f"between {self.t(before)} and {self.t(after)}"
        elif before is not None:
            gap = f"since {self.t(before)}"
        elif after is not None:
            gap = f"before {self.t(after)}, where the history starts (older rows may have been pruned)"
        else:
            gap = "at all: the history has no rows"
        if before is not None and self.history.last_row(self.q.name, s) is None:
            # Retention keeps each task's newest rows: without a row of its own before the fire, the
            # fire's row may have been pruned with them. With one, it would have been kept.
            activity = (f"the daemon recorded other rows around it ({self.t(before)} and {self.t(after or s)})"
                        if near else f"no row of any task {gap}")
            message = (f"missed: no record of {fire_text}, and {self.q.name} has no rows before it at all: its "
                       f"older rows may have been pruned (it keeps its newest {self.task.history_keep}, none older "
                       f"than the daemon's --history-days), or it was not in the task file then; {activity}")
        elif near:
            message = (f"missed: no record of {fire_text}, though the daemon recorded other rows around it "
                       f"({self.t(before or s)} and {self.t(after or s)}): {self.q.name} was probably not in its "
                       "config then (added or changed later), did not apply to its host, or the row was dropped "
                       "(see the daemon's log for history errors)")
        else:
            message = (f"missed: no record of {fire_text}: the daemon was not running or not recording {gap} "
                       "(no row of any task)")
        return self.answer("missed", message, scheduled_at=s, window=(before, after))


# --- text ----------------------------------------------------------------------------------------

_NO_HISTORY = ("no history yet (the daemon has recorded nothing in this state directory: check --state-dir, "
               "or it runs with --no-history)")
_SKIP_REASONS = {
    "reload": "a reload changed or removed the task while the run was waiting to start",
    "stop": "the daemon was stopping",
}
_MISS_REASONS = {
    "beyond_grace": "the daemon got to it more than misfire_grace ({grace}) late, so it was not caught up "
                    "(the host was suspended or stalled, or the clock jumped forward)",
    "coalesced": "the daemon got to it late, and a later fire of the task ran in its place (one run per task "
                 "per wake-up)",
}


def _time(ts: float, zone: tzinfo) -> str:
    """`2027-01-01 02:00:00+01:00`: local wall time with its offset, to the second."""
    return datetime.fromtimestamp(ts, zone).isoformat(sep=" ", timespec="seconds")


def _duration(d: float) -> str:
    return f"{d:.2f}s" if d < 60 else format_duration(round(d))


def _lateness(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else _duration(ms / 1000)


def _row_text(row: HistoryRow, zone: tzinfo, *, with_id: bool = True) -> str:
    """One row in a phrase: `run r1 (ok (exit 0)), started ..., ended ...`."""
    who = f"{'run' if row.kind == 'run' else row.kind + ' row'} {row.run_id}: " if with_id else ""
    parts = [f"{who}{row.status_text()}"]
    if row.started_at is not None:
        verb = "started" if row.kind == "run" else "recorded"
        parts.append(f"{verb} {_time(row.started_at, zone)}")
    if row.status == "running":
        parts.append("still running")
    elif row.ended_at is not None:
        took = f" after {_duration(row.duration_s)}" if row.duration_s is not None else ""
        parts.append(f"ended {_time(row.ended_at, zone)}{took}")
    return ", ".join(parts)


def _dst_note(fire: Fire, zone: str) -> str:
    if fire.dst == "gap":
        return f" (DST: its wall time did not exist that day in {zone}; this is when torch runs it instead)"
    if fire.dst == "repeat":
        return f" (DST: the second pass of the repeated hour in {zone})"
    return ""
