"""Typed facts the daemon publishes, and the in-loop bus that hands them to every subscriber.

The runner, the scheduler, the supervisor and the service say what happened by publishing events;
they format nothing. Subscribers decide what to do with them: the JSON log (gotorch.log) is one; run
history, metrics and `torch watch` will be others. The bus lives in the one event loop and calls
subscribers synchronously, in subscription order: a subscriber must be quick (a database writer
hands the event to its own thread) and must not publish in turn.

Each event type has a `name` (the log's `event` field, e.g. `run.end`) and a `level`; its dataclass
fields are its data. `exc` (where present) carries an exception whose traceback a subscriber may show.
"""

from __future__ import annotations

import calendar
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

Level = str  # "debug" | "info" | "warning" | "error"


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all events: subclasses set `name` and `level` and declare their data as fields."""

    name: ClassVar[str] = "event"
    level: ClassVar[Level] = "info"

    def severity(self) -> Level:
        """The level of this event (some events vary it with their data)."""
        return self.level

    def data(self) -> dict[str, Any]:
        """The event's fields, in declaration order, without `exc` and the raw `*_ts` epoch times.

        `*_ts` fields are for subscribers that store times (history); people read the ISO fields
        and the log line's own timestamp.
        """
        names = _DATA_NAMES.get(type(self))
        if names is None:  # once per event class: dataclasses.fields() is slow enough to matter per run
            names = tuple(f.name for f in fields(self) if f.name != "exc" and not f.name.endswith("_ts"))
            _DATA_NAMES[type(self)] = names
        return {name: getattr(self, name) for name in names}


_DATA_NAMES: dict[type[Event], tuple[str, ...]] = {}


ISO_SECOND = "%Y-%m-%dT%H:%M:%SZ"  # the scheduled seconds events (and TORCH_SCHEDULED_AT) carry


def epoch_of(iso: str) -> float:
    """Unix seconds of an ISO_SECOND string ("2027-01-01T00:00:00Z"); ValueError if it is not one."""
    return float(calendar.timegm(time.strptime(iso, ISO_SECOND)))


# --- runs (published by the runner) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    """A run's process was spawned."""

    name: ClassVar[str] = "run.start"
    task: str
    run_id: str
    pid: int
    scheduled_at: str | None
    lateness_ms: float | None
    trigger: str = "schedule"  # schedule | reboot | manual | retry | restart (a daemon task's copy)
    attempt: int = 1
    scheduled_ts: float | None = None
    started_ts: float | None = None
    requested_by: str | None = None  # a manual run: who asked

    def data(self) -> dict[str, Any]:
        """Fields; `requested_by` only for the runs someone asked for."""
        d = Event.data(self)
        if self.requested_by is None:
            del d["requested_by"]
        return d


@dataclass(frozen=True, slots=True)
class RunSetupFailed(Event):
    """A run could not even be prepared (unknown user, bad working directory); a RunEnded follows."""

    name: ClassVar[str] = "run.setup_failed"
    level: ClassVar[Level] = "error"
    task: str
    run_id: str
    error: str


@dataclass(frozen=True, slots=True)
class RunOutput(Event):
    """One line a run printed (within its output_limit)."""

    name: ClassVar[str] = "run.output"
    task: str
    run_id: str
    stream: str
    line: str


@dataclass(frozen=True, slots=True)
class RunEnded(Event):
    """A run is over: its direct child was reaped and its pipes are closed (or it never started)."""

    name: ClassVar[str] = "run.end"
    task: str
    run_id: str
    pid: int | None
    status: str
    exit_code: int | None
    signal: str | None
    duration_s: float
    output_bytes: int
    dropped_bytes: int
    error: str | None = None
    trigger: str = "schedule"
    attempt: int = 1
    scheduled_ts: float | None = None
    cpu_s: float | None = None  # the direct child's rusage (with the children it waited for)
    max_rss_kb: int | None = None
    # Why torch stopped it, when it did (status killed or timeout): "daemon stopping (SIGTERM)",
    # "task changed by a reload", "timeout after 5s". None when the run ended by itself.
    reason: str | None = None

    def severity(self) -> Level:
        """ok and killed (on request) are news; failures are warnings."""
        return "info" if self.status in ("ok", "killed") else "warning"

    def data(self) -> dict[str, Any]:
        """Fields, without those that are None (as the log always had `error`)."""
        return {k: v for k, v in Event.data(self).items() if v is not None or k in ("pid", "exit_code", "signal")}


@dataclass(frozen=True, slots=True)
class RunTracked(Event):
    """What names a run's process for the life of the host (pid and start time), recorded for a crash.

    Published shortly after the spawn for runs still going, so that a daemon started after this one
    died (kill -9) can tell its runs that survived from a new process that got a reused pid.
    """

    name: ClassVar[str] = "run.tracked"
    level: ClassVar[Level] = "debug"
    task: str
    run_id: str
    pid: int
    pgid: int
    proc_start: int  # /proc/PID/stat start time, clock ticks after boot


@dataclass(frozen=True, slots=True)
class RunAdopted(Event):
    """A run a previous daemon started was found alive at start-up: this daemon supervises it now.

    Its end is recorded like any run's, but its exit status cannot be known (it is not our child):
    unless torch stopped it, it ends `lost`. `output` says whether its output pipes could be reattached.
    """

    name: ClassVar[str] = "run.adopted"
    level: ClassVar[Level] = "warning"
    task: str
    run_id: str
    pid: int
    started_at: str
    scheduled_at: str | None
    trigger: str
    attempt: int
    output: bool
    recorded: bool  # found in the history database (else only by its TORCH_RUN_KEY in /proc)
    started_ts: float = 0.0
    scheduled_ts: float | None = None
    proc_start: int = 0


@dataclass(frozen=True, slots=True)
class RunLost(Event):
    """At start-up: a run a previous daemon left running is gone; its outcome is unknown (`lost`)."""

    name: ClassVar[str] = "run.lost"
    level: ClassVar[Level] = "warning"
    task: str
    run_id: str
    pid: int | None


@dataclass(frozen=True, slots=True)
class RunTimedOut(Event):
    """A run outlived its timeout; it is being stopped."""

    name: ClassVar[str] = "run.timeout"
    level: ClassVar[Level] = "warning"
    task: str
    run_id: str
    pid: int
    timeout_s: float | None


@dataclass(frozen=True, slots=True)
class RunSignalled(Event):
    """A signal went to a run's process group and/or its escaped processes."""

    name: ClassVar[str] = "run.signal"
    task: str
    run_id: str
    pid: int
    signal: str
    reason: str
    group: bool
    escaped: list[int]

    def severity(self) -> Level:
        """A KILL that found nothing left (the usual end of a TERM that worked) is not news."""
        return "info" if self.group or self.escaped else "debug"


@dataclass(frozen=True, slots=True)
class OnEndFailed(Event):
    """The runner's on_end callback raised (a bug in its owner); the run still counts as ended."""

    name: ClassVar[str] = "runner.on_end_failed"
    level: ClassVar[Level] = "error"
    task: str
    run_id: str
    exc: BaseException | None = None


@dataclass(frozen=True, slots=True)
class OrphanReaped(Event):
    """A reparented process that belonged to no run was reaped."""

    name: ClassVar[str] = "runner.orphan_reaped"
    level: ClassVar[Level] = "debug"
    pid: int
    status: int


@dataclass(frozen=True, slots=True)
class OrphansSignalled(Event):
    """At shutdown, processes reparented to the daemon were signalled."""

    name: ClassVar[str] = "runner.orphans_signalled"
    signal: str
    pids: list[int]


@dataclass(frozen=True, slots=True)
class ChildrenLeft(Event):
    """At shutdown, children that would not die after SIGKILL."""

    name: ClassVar[str] = "runner.children_left"
    level: ClassVar[Level] = "warning"
    pids: list[int]


# --- fires (published by the scheduler and the supervisor) -------------------------------------------


@dataclass(frozen=True, slots=True)
class Skipped(Event):
    """A fire that started no run, and why (max_instances, reload, stop)."""

    name: ClassVar[str] = "skipped"
    task: str
    scheduled_at: str
    reason: str
    detail: str | None = None
    running: int | None = None
    max_instances: int | None = None
    blocking_run: str | None = None  # for max_instances: a run in the way

    def data(self) -> dict[str, Any]:
        """Fields that apply to the reason (None ones left out)."""
        return {k: v for k, v in Event.data(self).items() if v is not None}


@dataclass(frozen=True, slots=True)
class MissedFires(Event):
    """Fires of a task that were not run (the daemon was late, suspended or the clock jumped)."""

    name: ClassVar[str] = "missed"
    level: ClassVar[Level] = "warning"
    task: str
    first: str
    last: str
    count: int
    reason: str
    exact: bool


@dataclass(frozen=True, slots=True)
class ClockJumped(Event):
    """The wall clock moved differently from the monotonic clock."""

    name: ClassVar[str] = "clock.jump"
    level: ClassVar[Level] = "warning"
    direction: str
    seconds: float
    action: str


@dataclass(frozen=True, slots=True)
class Jittered(Event):
    """A fire waits out its random delay before starting."""

    name: ClassVar[str] = "jitter"
    task: str
    scheduled_at: str
    delay_s: float


@dataclass(frozen=True, slots=True)
class CaughtUp(Event):
    """A late fire run once for a missed window (within misfire_grace)."""

    name: ClassVar[str] = "caught_up"
    task: str
    scheduled_at: str
    late_s: float


@dataclass(frozen=True, slots=True)
class FireFailed(Event):
    """Starting a due fire raised (a bug): that fire is lost, the others of the tick are not."""

    name: ClassVar[str] = "fire.failed"
    level: ClassVar[Level] = "error"
    task: str
    scheduled_at: str
    exc: BaseException | None = None


@dataclass(frozen=True, slots=True)
class TickFailed(Event):
    """A whole second's tick raised (a bug); the next second ticks again."""

    name: ClassVar[str] = "tick.failed"
    level: ClassVar[Level] = "error"
    second: str
    exc: BaseException | None = None


@dataclass(frozen=True, slots=True)
class TaskTickFailed(Event):
    """A task's fires could not be worked out; it is re-checked at `retry_at`."""

    name: ClassVar[str] = "task.tick_failed"
    level: ClassVar[Level] = "error"
    task: str
    second: str
    retry_at: str
    attempt: int
    error: str
    exc: BaseException | None = None


@dataclass(frozen=True, slots=True)
class DaemonRestart(Event):
    """A daemon-type task's copy ended and will be started again after `after_s`."""

    name: ClassVar[str] = "daemon.restart"
    level: ClassVar[Level] = "warning"
    task: str
    after_s: float
    uptime_s: float
    exit_status: str
    exit_code: int | None
    signal: str | None


@dataclass(frozen=True, slots=True)
class StopRequested(Event):
    """SIGTERM/SIGINT: firing stops, runs are being stopped."""

    name: ClassVar[str] = "stop.requested"
    signal: str
    running: int


@dataclass(frozen=True, slots=True)
class StopForced(Event):
    """A second stop request: what is left is killed at once."""

    name: ClassVar[str] = "stop.forced"
    level: ClassVar[Level] = "warning"
    signal: str


@dataclass(frozen=True, slots=True)
class ManualRunDropped(Event):
    """A manual run asked for later never started: cancelled (`torch kill --pending`) or refused when due."""

    name: ClassVar[str] = "run.manual_dropped"
    task: str
    run_id: str
    status: str  # cancelled | skipped
    detail: str


@dataclass(frozen=True, slots=True)
class TaskPaused(Event):
    """An operator put a task on hold (`torch pause`): its fires are skipped until it is resumed."""

    name: ClassVar[str] = "task.paused"
    level: ClassVar[Level] = "warning"
    task: str
    by: str
    reason: str | None
    until: str | None  # ISO time it expires by itself, or None until `torch resume`


@dataclass(frozen=True, slots=True)
class TaskResumed(Event):
    """A hold ended: `torch resume`, or its `--for` ran out (`expired`)."""

    name: ClassVar[str] = "task.resumed"
    task: str
    by: str  # who resumed it, or "expired"


@dataclass(frozen=True, slots=True)
class RetryScheduled(Event):
    """A run ended in a status its task retries: the next attempt starts after a backoff."""

    name: ClassVar[str] = "retry.scheduled"
    task: str
    run_id: str
    status: str
    attempt: int  # the attempt that will start
    retries: int
    delay_s: float


@dataclass(frozen=True, slots=True)
class HookStarted(Event):
    """An alert hook (on_failure, on_recovery) was started for a task."""

    name: ClassVar[str] = "hook.start"
    task: str
    hook: str  # on_failure | on_recovery
    status: str  # what it reports: failed, timeout, ..., overdue, ok
    run_id: str  # the hook's own run id
    for_run: str  # the run it reports on
    consecutive_failures: int


@dataclass(frozen=True, slots=True)
class PauseFileFailed(Event):
    """STATE/pauses.json could not be read at start (then no task is held) or written (holds stay in force)."""

    name: ClassVar[str] = "pauses.file_failed"
    level: ClassVar[Level] = "error"
    path: str
    action: str  # load | save
    error: str
    consequence: str


@dataclass(frozen=True, slots=True)
class PausesRestored(Event):
    """At start: the holds read back from STATE/pauses.json, still in force."""

    name: ClassVar[str] = "pauses.restored"
    level: ClassVar[Level] = "warning"  # paused tasks do not run: worth seeing in a log skim
    tasks: list[str]


# --- the daemon (published by the service) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetReachable(Event):
    """etcd answers again (ok), or stopped answering: `fleet_unreachable` now decides fleet fires."""

    name: ClassVar[str] = "fleet.etcd"
    ok: bool
    error: str | None = None

    def severity(self) -> Level:
        """Losing etcd is loud; getting it back is news."""
        return "info" if self.ok else "error"


@dataclass(frozen=True, slots=True)
class FleetElected(Event):
    """This host holds a `fleet: once` daemon task's election: it runs its copies (with this token)."""

    name: ClassVar[str] = "fleet.elected"
    task: str
    token: int


@dataclass(frozen=True, slots=True)
class FleetDeposed(Event):
    """This host no longer holds a daemon task's election; its copies here are stopped."""

    name: ClassVar[str] = "fleet.deposed"
    level: ClassVar[Level] = "warning"
    task: str
    reason: str
    stopped: int  # copies being stopped


@dataclass(frozen=True, slots=True)
class FleetSkew(Event):
    """Our clock is too far from etcd's to compete for fleet fires (skew_s None: within bounds again)."""

    name: ClassVar[str] = "fleet.clock_skew"
    skew_s: float | None

    def severity(self) -> Level:
        """A skewed clock is an error: this host stopped taking fleet fires."""
        return "error" if self.skew_s is not None else "info"


@dataclass(frozen=True, slots=True)
class FleetUnreachableRun(Event):
    """etcd could not say who runs a `fleet: once` fire; `fleet_unreachable: run` runs it here anyway."""

    name: ClassVar[str] = "fleet.unreachable_run"
    level: ClassVar[Level] = "warning"
    task: str
    scheduled_at: str
    error: str


@dataclass(frozen=True, slots=True)
class ControlRefused(Event):
    """A process of another user connected to the control socket and was turned away (SO_PEERCRED)."""

    name: ClassVar[str] = "control.refused"
    level: ClassVar[Level] = "warning"
    peer_pid: int
    peer_uid: int
    peer_gid: int


@dataclass(frozen=True, slots=True)
class WatchStarted(Event):
    """The task file's directory is watched for edits (inotify, or polling as a fallback)."""

    name: ClassVar[str] = "watch.start"
    path: str
    mode: str


@dataclass(frozen=True, slots=True)
class DaemonStarted(Event):
    """The daemon serves generation 1 of its config."""

    name: ClassVar[str] = "daemon.start"
    pid: int
    config: str
    hash: str
    generation: int
    subreaper: bool
    host_ips: list[str]
    tasks_here: int
    tasks_elsewhere: int


@dataclass(frozen=True, slots=True)
class TaskApplies(Event):
    """At start: a task runs on this host, through which address (or on all hosts)."""

    name: ClassVar[str] = "task.applies"
    task: str
    type: str
    matched_ip: str
    schedule: str | None


@dataclass(frozen=True, slots=True)
class TaskNotHere(Event):
    """At start: a task that does not apply to this host (allow-list, or disabled)."""

    name: ClassVar[str] = "task.not_here"
    task: str


@dataclass(frozen=True, slots=True)
class DaemonFailed(Event):
    """The daemon is going down because of an unexpected error; every run is being stopped."""

    name: ClassVar[str] = "daemon.failed"
    level: ClassVar[Level] = "error"
    pid: int


@dataclass(frozen=True, slots=True)
class DaemonStopped(Event):
    """The daemon stopped: every run has ended."""

    name: ClassVar[str] = "daemon.stop"
    pid: int


@dataclass(frozen=True, slots=True)
class SignalHandlerFailed(Event):
    """Handling a signal raised (a bug); the other signals are still handled."""

    name: ClassVar[str] = "signal.handler_failed"
    level: ClassVar[Level] = "error"
    signal: str
    exc: BaseException | None = None


@dataclass(frozen=True, slots=True)
class LogReopened(Event):
    """SIGHUP: the log file was reopened."""

    name: ClassVar[str] = "log.reopened"


@dataclass(frozen=True, slots=True)
class ReloadUnchanged(Event):
    """A reload found the same bytes and addresses: no new generation."""

    name: ClassVar[str] = "reload.unchanged"
    trigger: str
    generation: int


@dataclass(frozen=True, slots=True)
class ReloadFailed(Event):
    """A reload changed nothing: the file is invalid or unreadable (or a bug); the old config runs on."""

    name: ClassVar[str] = "reload.failed"
    level: ClassVar[Level] = "error"
    trigger: str
    generation: int
    errors: list[str]
    transient: bool = False
    retry_in_s: float | None = None
    exc: BaseException | None = None


@dataclass(frozen=True, slots=True)
class HostAddressesChanged(Event):
    """A reload found this host's addresses changed (DHCP, a new alias)."""

    name: ClassVar[str] = "host.addresses_changed"
    before: list[str]
    after: list[str]


# The log lists at most this many names per kind in reload.applied (with the counts beyond).
LOGGED_NAMES = 1000


@dataclass(frozen=True, slots=True)
class ReloadApplied(Event):
    """A new generation runs: what it added, removed and changed, and what the reload cost."""

    name: ClassVar[str] = "reload.applied"
    trigger: str
    generation: int
    hash: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    tasks_here: int
    parse_ms: float
    apply_ms: float

    def data(self) -> dict[str, Any]:
        """Fields, with up to LOGGED_NAMES names per kind and `<kind>_count` beyond that."""
        out = Event.data(self)
        for key in ("added", "removed", "changed"):
            names: tuple[str, ...] = out[key]
            out[key] = list(names[:LOGGED_NAMES])
            if len(names) > LOGGED_NAMES:
                out[f"{key}_count"] = len(names)
        return out


@dataclass(frozen=True, slots=True)
class HistoryError(Event):
    """The history database could not be written (full disk, read-only, corrupt...); firing goes on."""

    name: ClassVar[str] = "history.error"
    level: ClassVar[Level] = "error"
    message: str


# --- the status page's web process (published by gotorch.web.supervisor) -------------------------------


@dataclass(frozen=True, slots=True)
class WebListening(Event):
    """`torch start --http`: the daemon listens on `address` and hands the socket to its web process."""

    name: ClassVar[str] = "web.listen"
    address: str
    url: str


@dataclass(frozen=True, slots=True)
class WebExposed(Event):
    """`--http` names an address other hosts can reach: the page and metrics are open to them."""

    name: ClassVar[str] = "web.exposed"
    level: ClassVar[Level] = "warning"
    address: str
    hint: str


@dataclass(frozen=True, slots=True)
class WebStarted(Event):
    """The web process (status page, /metrics) was started."""

    name: ClassVar[str] = "web.start"
    pid: int
    address: str


@dataclass(frozen=True, slots=True)
class WebExited(Event):
    """The web process ended: on its own (restarted after `restart_in_s`), or stopped with the daemon."""

    name: ClassVar[str] = "web.exit"
    pid: int
    uptime_s: float
    exit_code: int | None
    signal: str | None
    restart_in_s: float | None  # None: not restarted (the daemon is stopping)

    def severity(self) -> Level:
        """A warning when it died on its own; info when the daemon stopped it."""
        return "info" if self.restart_in_s is None else "warning"


@dataclass(frozen=True, slots=True)
class WebFailed(Event):
    """The web process could not be started or its address not listened on; tried again later."""

    name: ClassVar[str] = "web.error"
    level: ClassVar[Level] = "error"
    error: str
    restart_in_s: float | None


@dataclass(frozen=True, slots=True)
class WebOutput(Event):
    """A line the web process wrote to its stderr (it writes only problems there)."""

    name: ClassVar[str] = "web.output"
    level: ClassVar[Level] = "warning"
    pid: int
    line: str


# --- the bus ------------------------------------------------------------------------------------------

Subscriber = Callable[[Event], None]


class Bus:
    """Hands each published event to every subscriber, in the loop, in subscription order.

    A subscriber that raises is counted and reported on stderr, never to the others' cost: the log
    itself may be the subscriber that fails.
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.failures = 0

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add `subscriber`; returns a function that removes it again."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def publish(self, event: Event) -> None:
        """Deliver `event` to every subscriber now."""
        # A snapshot: a subscriber may unsubscribe itself (or another) while handling the event.
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(event)
            except Exception as exc:
                self.failures += 1
                print(f"torch: event subscriber {subscriber!r} failed on {event.name}: {exc!r}", file=sys.stderr)
