"""What the recorder (in the loop) hands the writer (its own thread): one database change each.

Plain frozen values, so they cross the thread boundary safely. Times are Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RunBegan:
    """A run started: insert its row with status `running`."""

    run_id: str
    task: str
    trigger: str
    attempt: int
    scheduled_at: float | None
    started_at: float
    host: str
    pid: int
    lateness_ms: float | None
    generation: int
    config_hash: str
    requested_by: str | None = None


@dataclass(frozen=True, slots=True)
class RunFinished:
    """A run ended (or could not start: then `pid` is None and no RunBegan came first)."""

    run_id: str
    task: str
    ended_at: float
    status: str
    exit_code: int | None
    signal: str | None
    duration_s: float
    cpu_s: float | None
    max_rss_kb: int | None
    output_head: bytes
    output_tail: bytes
    output_elided: int
    output_bytes: int
    dropped_bytes: int
    error: str | None
    # For a run without a RunBegan row (spawn failed, or its RunBegan was dropped):
    trigger: str
    scheduled_at: float | None
    host: str
    generation: int
    config_hash: str
    # Why torch stopped it (status killed or timeout), as RunEnded says; stored in `reason`.
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class NonRun:
    """A fire that started no run: `kind` is `skipped` (with `reason`) or `missed` (with its window)."""

    run_id: str
    task: str
    kind: str
    at: float  # when it was decided (stored as started_at, so runs and non-runs sort together)
    scheduled_at: float | None
    host: str
    reason: str | None
    detail: str | None
    missed_first: float | None
    missed_last: float | None
    missed_count: int | None
    generation: int
    config_hash: str


@dataclass(frozen=True, slots=True)
class RunProcess:
    """A running run's process start time and group, for a daemon that may have to adopt it."""

    run_id: str
    proc_start: int
    pgid: int


@dataclass(frozen=True, slots=True)
class RunAdoptedRow:
    """At start: a run of the previous daemon still alive, adopted: its row (inserted if it had none)."""

    run_id: str
    task: str
    trigger: str
    attempt: int
    scheduled_at: float | None
    started_at: float
    host: str
    pid: int
    proc_start: int
    generation: int
    config_hash: str


@dataclass(frozen=True, slots=True)
class RunsLost:
    """At start: every run still `running` in the database but `keep` (adopted) ended with the previous daemon."""

    ended_at: float
    error: str
    keep: tuple[str, ...] = ()


Row = RunBegan | RunFinished | NonRun | RunsLost | RunProcess | RunAdoptedRow
