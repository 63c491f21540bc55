"""The daemon's metrics: a bus subscriber that counts what happened, and the snapshot it hands out.

The daemon keeps plain numbers in dicts and never renders text or serves HTTP: the web process asks
over the control socket (`{"v": 1, "cmd": "metrics"}`, answered `{"ok": true, "metrics": SNAPSHOT}`)
and turns the snapshot into the Prometheus exposition (gotorch.metrics_text). Per event the
subscriber does a few dict operations (a run's end: one bisect into a 17-bound histogram): about
2.5 µs per run event on the 2-core CI machine, so 200 runs a second cost the loop about 1 ms of each
second. Gauges of the scheduler's current state (running, next fire) are read when a snapshot is
taken, not kept up to date per event.

What is counted, per task that runs on this host (the scheduler's tasks):
- runs by status (`ok`, `failed`, `timeout`, `killed`, and `spawn_failed` for a run that never started,
  as history records it), skipped fires by reason, missed fires;
- run durations, and fire lateness: how long after its fire second (plus its jitter delay, which is
  asked for, not late) a run of trigger `schedule` or `reboot` started. A retry's or a manual run's
  delay is not fire lateness and is not observed;
- the last run's start, the last success's end, and consecutive failures: fires that failed for good
  (after their retries, as the on_failure hook counts them; `killed` neither counts nor resets);
- alert hook runs (`TASK:on_failure`, trigger `hook`) by hook and status, apart from the task's runs
  so that a failing hook does not look like a failing task.

Counters live as long as the daemon and survive reloads (a changed task keeps its series). A task
removed by a reload, or no longer applying to this host, loses its series, and events of its runs
still going are not counted. After a daemon restart everything starts from zero again.

SNAPSHOT (schema 1), every time a Unix epoch float in seconds:

    {"schema": 1,
     "taken_at": 1767225600.5,                  # the daemon's clock when the snapshot was taken
     "daemon": {"pid": 4242, "up_since": 1767225000.0,
                "config_generation": 3, "config_hash": "0123456789ab",
                "last_reload_success": true,     # false while the last reload attempt failed
                "history_rows_dropped": 0,       # null when history is off (--no-history)
                "log_lines_dropped": 0},         # lines the log file could not take (disk full)
     "buckets": {"duration_seconds": [0.1, ...],          # histogram upper bounds, ascending,
                 "fire_lateness_seconds": [0.001, ...]},  # without +Inf
     "tasks": {"backup": {
         "runs": {"ok": 12, "failed": 1},       # by status; statuses never seen are absent
         "skipped": {"max_instances": 2},       # by reason
         "missed": 0,
         "hook_runs": {"on_failure": {"ok": 1}},  # by hook, then status
         "duration": {"counts": [0, 3, ..., 0], "sum": 81.25},  # runs per bucket (not cumulative),
         "fire_lateness": null,                 #   one more than bounds: the last is above every bound;
                                                #   null until a first observation
         "running": 1, "consecutive_failures": 0,
         "last_run": 1767225590.0, "last_success": 1767225540.0, "next_fire": 1767225660.0}}}
                                                # each of the three null when there is none

`Snapshot.from_json` reads it back, typed (and refuses another schema), so the keys live in this module
only. `next_fire` is a whole second; every task that runs here is listed, also before its first event.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from gotorch.config import Task
from gotorch.events import (
    DaemonStarted,
    Event,
    Jittered,
    MissedFires,
    ReloadApplied,
    ReloadFailed,
    ReloadUnchanged,
    RunEnded,
    RunStarted,
    Skipped,
)
from gotorch.policy import FAILURES, will_retry

if TYPE_CHECKING:
    from gotorch.scheduler import Scheduler

SCHEMA = 1

# Cron runs last from a tenth of a second (a curl, a touch) to a day (a backup, a report): bounds
# 1-2.5-5 per decade up to a minute, then the round times people set timeouts to, ending at the
# longest run a daily schedule leaves room for. 17 bounds (and +Inf) per task that has run.
DURATION_BOUNDS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
                                      7200, 21600, 86400)
# A healthy daemon starts a fire within about a millisecond (the target the scheduler is built for);
# tens of milliseconds mean a busy loop or host, seconds a suspended or starved one, and beyond a
# minute a fire is missed or caught up (misfire_grace) rather than late. 1-2.5-5 per decade, 15 bounds.
LATENESS_BOUNDS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                      10, 30, 60)
# Triggers whose start is a fire's: only their delay is fire lateness.
FIRED_TRIGGERS = ("schedule", "reboot")
# A snapshot and its JSON cost the loop about 8 µs per task (measured on the 2-core CI machine: 1,000 tasks
# 2 ms to build and 6 ms to encode; 10,000 tasks 25 + 60 ms). So it is taken only early in a second, after
# the second's fires (leaving 200 ms); beyond this many tasks only right after a tick (nearly a second).
WHOLE_SECOND_ABOVE = 2000


class _Histogram:
    """Counts per bucket (the last one: above every bound) and the sum of what was observed."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * (size + 1)
        self.sum = 0.0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (Prometheus `le`).
        self.counts[bisect_left(bounds, value)] += 1
        self.sum += value

    def to_json(self) -> dict[str, Any]:
        """The snapshot form: counts per bucket as kept (shorter in JSON than cumulative ones), sum."""
        return {"counts": self.counts.copy(), "sum": self.sum}


class _Series:
    """What is counted for one task (kept across reloads while the task stays)."""

    __slots__ = ("duration", "failures", "hook_runs", "last_run", "last_success", "lateness", "missed", "runs",
                 "skipped")

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.missed = 0
        self.hook_runs: dict[str, dict[str, int]] = {}
        self.duration: _Histogram | None = None
        self.lateness: _Histogram | None = None
        self.last_run: float | None = None
        self.last_success: float | None = None
        self.failures = 0


@dataclass(frozen=True, slots=True)
class HistogramData:
    """One histogram series: cumulative counts per bound (bounds given by the snapshot), total, sum."""

    buckets: tuple[int, ...]
    count: int
    sum: float

    @classmethod
    def from_json(cls, d: dict[str, Any] | None, bounds: int) -> HistogramData | None:
        """Read the snapshot form (per-bucket counts, the last above every bound); None stays None."""
        if d is None:
            return None
        counts = [int(c) for c in d["counts"]]
        if len(counts) != bounds + 1:
            raise ValueError(f"a histogram of {len(counts)} buckets for {bounds} bounds")
        cumulative = tuple(accumulate(counts))
        return cls(cumulative[:-1], cumulative[-1], float(d["sum"]))


@dataclass(frozen=True, slots=True)
class TaskMetrics:
    """One task's numbers in a snapshot."""

    runs: dict[str, int]
    skipped: dict[str, int]
    missed: int
    hook_runs: dict[str, dict[str, int]]
    duration: HistogramData | None
    fire_lateness: HistogramData | None
    running: int
    consecutive_failures: int
    last_run: float | None
    last_success: float | None
    next_fire: float | None

    @classmethod
    def from_json(cls, d: dict[str, Any], duration_bounds: int, lateness_bounds: int) -> TaskMetrics:
        """Read the snapshot form (histograms of so many bounds)."""
        return cls(
            {str(k): int(v) for k, v in d["runs"].items()}, {str(k): int(v) for k, v in d["skipped"].items()},
            int(d["missed"]), {str(h): {str(k): int(v) for k, v in s.items()} for h, s in d["hook_runs"].items()},
            HistogramData.from_json(d["duration"], duration_bounds),
            HistogramData.from_json(d["fire_lateness"], lateness_bounds),
            int(d["running"]), int(d["consecutive_failures"]),
            _opt_float(d["last_run"]), _opt_float(d["last_success"]), _opt_float(d["next_fire"]))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the metrics say at one instant (see the module docstring for its JSON form)."""

    taken_at: float
    pid: int
    up_since: float
    config_generation: int
    config_hash: str
    last_reload_success: bool
    history_rows_dropped: int | None
    log_lines_dropped: int
    duration_bounds: tuple[float, ...]
    lateness_bounds: tuple[float, ...]
    tasks: dict[str, TaskMetrics]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Snapshot:
        """Read a snapshot; ValueError if it is of another schema or malformed."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"metrics snapshot of schema {got!r}; this torch reads schema {SCHEMA} "
                             "(daemon and web process of different versions?)")
        try:
            daemon, buckets = d["daemon"], d["buckets"]
            dropped = daemon["history_rows_dropped"]
            durations = tuple(float(b) for b in buckets["duration_seconds"])
            lateness = tuple(float(b) for b in buckets["fire_lateness_seconds"])
            return cls(
                float(d["taken_at"]), int(daemon["pid"]), float(daemon["up_since"]),
                int(daemon["config_generation"]), str(daemon["config_hash"]), bool(daemon["last_reload_success"]),
                None if dropped is None else int(dropped), int(daemon.get("log_lines_dropped", 0)), durations, lateness,
                {str(name): TaskMetrics.from_json(t, len(durations), len(lateness)) for name, t in d["tasks"].items()})
        except (KeyError, TypeError, AttributeError) as exc:  # a bad number raises ValueError itself
            raise ValueError(f"malformed metrics snapshot: {exc!r}") from exc


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


class Metrics:
    """Subscribe an instance to the bus (`bus.subscribe(metrics)`); `snapshot()` says what it counted.

    The callables give the scheduler's state of the moment: `task_of` a task's definition if it runs
    here (else None: its events are not counted), `names` every such task, `running` a task's runs
    going now, `next_fire` its next fire second. `history_dropped` is the history writer's dropped-row
    counter (None without history). `Metrics.for_scheduler` wires them to a Scheduler.
    """

    def __init__(self, *, task_of: Callable[[str], Task | None], names: Callable[[], Collection[str]],
                 running: Callable[[str], int], next_fire: Callable[[str], int | None], up_since: float,
                 history_dropped: Callable[[], int | None] = lambda: None,
                 log_dropped: Callable[[], int] = lambda: 0,
                 quiet: Callable[[bool], Awaitable[None]] | None = None, pid: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._task_of = task_of
        self._names = names
        self._running = running
        self._next_fire = next_fire
        self._up_since = up_since
        self._history_dropped = history_dropped
        self._log_dropped = log_dropped
        self._quiet = quiet
        self._pid = pid
        self._clock = clock
        self._series: dict[str, _Series] = {}
        # (task, fire ISO second) -> the jitter delay its run waits out: not lateness. Only fires
        # waiting out their jitter are here; their start or skip takes them out.
        self._jitter: dict[tuple[str, str], float] = {}
        self.generation = 0
        self.config_hash = ""
        self.last_reload_success = True  # the config loaded at start was valid, or there is no daemon
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            RunStarted: self._started, RunEnded: self._ended, Skipped: self._skipped, MissedFires: self._missed,
            Jittered: self._jittered, DaemonStarted: self._daemon_started, ReloadApplied: self._reload_applied,
            ReloadUnchanged: self._reload_ok, ReloadFailed: self._reload_failed,
        }

    @classmethod
    def for_scheduler(cls, sched: Scheduler, *, history_dropped: Callable[[], int | None] = lambda: None,
                      log_dropped: Callable[[], int] = lambda: 0, pid: int | None = None) -> Metrics:
        """Metrics reading the state of `sched` (its tasks, runner and fire queue)."""
        def task_of(name: str) -> Task | None:
            st = sched.states.get(name)
            return st.task if st is not None else None

        return cls(task_of=task_of, names=lambda: sched.states.keys(), running=sched.runner.running_count,
                   next_fire=sched.queue.next_fire, up_since=sched.started_at, history_dropped=history_dropped,
                   log_dropped=log_dropped, quiet=lambda whole: sched.quiet_moment(whole_second=whole), pid=pid)

    # -- the subscriber (in the loop, per event: keep it to dict operations) ----------------------------

    def __call__(self, event: Event) -> None:
        """Handle one event (a bus subscriber): one dict lookup for the events not counted (output lines)."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _of(self, name: str) -> _Series | None:
        """The series of a task that runs here (created at its first event), else None."""
        s = self._series.get(name)
        if s is None:
            if self._task_of(name) is None:
                return None  # removed by a reload, or a hook's name: no series of its own
            s = self._series[name] = _Series()
        return s

    def _started(self, e: RunStarted) -> None:
        jitter = self._jitter.pop((e.task, e.scheduled_at), 0.0) if e.scheduled_at is not None and self._jitter else 0.0
        if e.trigger == "hook":
            return
        s = self._of(e.task)
        if s is None:
            return
        s.last_run = e.started_ts if e.started_ts is not None else self._clock()
        if e.trigger in FIRED_TRIGGERS and e.lateness_ms is not None:
            if s.lateness is None:
                s.lateness = _Histogram(len(LATENESS_BOUNDS))
            # Clamped at 0: a jitter timer may fire a hair early, and a negative observation has no bucket.
            s.lateness.observe(LATENESS_BOUNDS, max(0.0, e.lateness_ms / 1000.0 - jitter))

    def _ended(self, e: RunEnded) -> None:
        if e.trigger == "hook":
            self._hook_ended(e)
            return
        s = self._of(e.task)
        if s is None:
            return
        if e.pid is None:  # it never started: no RunStarted came, no duration to observe
            status = "spawn_failed"
            s.last_run = self._clock()
            if self._jitter and e.scheduled_ts is not None:
                self._jitter.pop((e.task, _iso(e.scheduled_ts)), None)
        else:
            status = e.status
            if s.duration is None:
                s.duration = _Histogram(len(DURATION_BOUNDS))
            s.duration.observe(DURATION_BOUNDS, e.duration_s)
        s.runs[status] = s.runs.get(status, 0) + 1
        if status == "ok":
            s.last_success = self._clock()
            s.failures = 0
        elif status in FAILURES:
            task = self._task_of(e.task)
            if task is not None and not will_retry(task, e.trigger, status, e.attempt):
                s.failures += 1

    def _hook_ended(self, e: RunEnded) -> None:
        task, _, hook = e.task.rpartition(":")
        s = self._of(task) if task else None
        if s is None:
            return
        status = "spawn_failed" if e.pid is None else e.status
        by_status = s.hook_runs.setdefault(hook, {})
        by_status[status] = by_status.get(status, 0) + 1

    def _skipped(self, e: Skipped) -> None:
        if self._jitter:
            self._jitter.pop((e.task, e.scheduled_at), None)
        s = self._of(e.task)
        if s is not None:
            s.skipped[e.reason] = s.skipped.get(e.reason, 0) + 1

    def _missed(self, e: MissedFires) -> None:
        s = self._of(e.task)
        if s is not None:
            s.missed += e.count

    def _jittered(self, e: Jittered) -> None:
        self._jitter[(e.task, e.scheduled_at)] = e.delay_s

    def _daemon_started(self, e: DaemonStarted) -> None:
        self.generation, self.config_hash = e.generation, e.hash

    def _reload_applied(self, e: ReloadApplied) -> None:
        self.generation, self.config_hash = e.generation, e.hash
        self.last_reload_success = True
        if e.removed:
            gone = set(e.removed)
            for name in e.removed:
                self._series.pop(name, None)
            if self._jitter:
                self._jitter = {k: v for k, v in self._jitter.items() if k[0] not in gone}

    def _reload_ok(self, _e: ReloadUnchanged) -> None:
        self.last_reload_success = True

    def _reload_failed(self, _e: ReloadFailed) -> None:
        self.last_reload_success = False

    # -- reading ---------------------------------------------------------------------------------------

    def snapshot_json(self) -> dict[str, Any]:
        """Everything counted, with the scheduler's gauges of this moment, as the SNAPSHOT dict.

        Built straight into JSON-able dicts: this runs in the loop, for every task, once a second.
        """
        tasks: dict[str, Any] = {}
        series, running, next_fire = self._series, self._running, self._next_fire
        for name in self._names():
            nxt = next_fire(name)
            s = series.get(name)
            if s is None:  # no event yet since the daemon started (or the task was added)
                tasks[name] = {"runs": {}, "skipped": {}, "missed": 0, "hook_runs": {}, "duration": None,
                               "fire_lateness": None, "running": running(name), "consecutive_failures": 0,
                               "last_run": None, "last_success": None, "next_fire": nxt}
                continue
            tasks[name] = {
                "runs": s.runs.copy(), "skipped": s.skipped.copy(), "missed": s.missed,
                "hook_runs": {h: c.copy() for h, c in s.hook_runs.items()} if s.hook_runs else {},
                "duration": s.duration.to_json() if s.duration is not None else None,
                "fire_lateness": s.lateness.to_json() if s.lateness is not None else None,
                "running": running(name), "consecutive_failures": s.failures,
                "last_run": s.last_run, "last_success": s.last_success, "next_fire": nxt}
        return {
            "schema": SCHEMA, "taken_at": self._clock(),
            "daemon": {"pid": self._pid if self._pid is not None else os.getpid(), "up_since": self._up_since,
                       "config_generation": self.generation, "config_hash": self.config_hash,
                       "last_reload_success": self.last_reload_success,
                       "history_rows_dropped": self._history_dropped(), "log_lines_dropped": self._log_dropped()},
            "buckets": {"duration_seconds": list(DURATION_BOUNDS), "fire_lateness_seconds": list(LATENESS_BOUNDS)},
            "tasks": tasks,
        }

    def snapshot(self) -> Snapshot:
        """`snapshot_json()`, typed."""
        return Snapshot.from_json(self.snapshot_json())

    async def reply(self) -> dict[str, Any]:
        """The control socket's answer to `metrics`: `{"ok": true, "metrics": SNAPSHOT}`.

        It waits for a quiet moment of the loop (see WHOLE_SECOND_ABOVE): up to a second, never a fire.
        """
        if self._quiet is not None:
            await self._quiet(len(self._names()) > WHOLE_SECOND_ABOVE)
        return {"ok": True, "metrics": self.snapshot_json()}


def _iso(ts: float) -> str:
    # The runner's ISO second (RunStarted.scheduled_at), to find a fire's jitter entry.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
