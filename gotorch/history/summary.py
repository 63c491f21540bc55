"""Per-task summaries of the history for `torch status` and the status page.

`torch status` (and `/api/status`) show the last result and the failures of the last 24 h; the
page shows the last results of each task and the runs going on now. Read-only, like
gotorch.history.query, and bounded per task by the index on (task, started_at): a status of
thousands of tasks reads a few rows per task however long their histories are.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from gotorch.history.query import HistoryUnreadable, iso, open_readonly

# What counts as a failure for an on-call engineer. `killed` is not one: a run killed by an operator
# or by the daemon's stop did not fail on its own; `skipped`/`missed` are not runs.
FAILED_STATUSES = ("failed", "timeout", "spawn_failed", "lost")
FAILURE_WINDOW_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class LastResult:
    """A task's last finished run."""

    run_id: str
    status: str
    exit_code: int | None
    signal: str | None
    started_at: float | None
    ended_at: float | None


@dataclass(frozen=True, slots=True)
class TaskSummary:
    """What `torch status` shows of one task's history."""

    task: str
    last: LastResult | None
    failures_24h: int

    def to_json(self, now: float) -> dict[str, Any]:
        """JSON fields for `torch status --json` (times ISO-8601 with offset; `ago_s` from `now`)."""
        last = self.last
        return {
            "last_result": None if last is None else {
                "run_id": last.run_id, "status": last.status, "exit_code": last.exit_code, "signal": last.signal,
                "started_at": iso(last.started_at), "ended_at": iso(last.ended_at),
                "ago_s": None if last.ended_at is None else round(max(0.0, now - last.ended_at), 1),
            },
            "failures_24h": self.failures_24h,
        }


_LAST = """
SELECT run_id, status, exit_code, signal, started_at, ended_at FROM runs INDEXED BY runs_by_task
WHERE task = ? AND kind = 'run' AND status != 'running'
ORDER BY started_at DESC LIMIT 1
"""
_FAILURES = f"""
SELECT count(*) FROM runs INDEXED BY runs_by_task
WHERE task = ? AND started_at >= ? AND status IN ({", ".join("?" * len(FAILED_STATUSES))})
"""


def summaries(db: sqlite3.Connection, tasks: Iterable[str], now: float) -> dict[str, TaskSummary]:
    """The last finished run and the number of failed runs since `now` - 24 h, of each of `tasks`."""
    out: dict[str, TaskSummary] = {}
    since = now - FAILURE_WINDOW_S
    for task in tasks:
        row = db.execute(_LAST, (task,)).fetchone()
        last = None if row is None else LastResult(*row)
        failures = int(db.execute(_FAILURES, (task, since, *FAILED_STATUSES)).fetchone()[0])
        out[task] = TaskSummary(task, last, failures)
    return out


def add_to_status(st: dict[str, Any], db_path: Path, now: float) -> None:
    """Add each task's last result and failures in the last 24 h, from the history at `db_path`, to `st`.

    `st` is the daemon's status reply (`torch status --json`, `/api/status`). The daemon only knows
    what happened since it started; the history knows what happened before too. An unreadable
    history is reported (`history_error`), not fatal: status still shows the rest.
    """
    names = [t["name"] for t in st["tasks"]]
    try:
        db = open_readonly(db_path)
        try:
            got = {} if db is None else summaries(db, names, now)
        finally:
            if db is not None:
                db.close()
    except (HistoryUnreadable, sqlite3.Error) as exc:
        st["history_error"] = str(exc)
        return
    for t in st["tasks"]:
        s = got.get(t["name"])
        t.update(s.to_json(now) if s is not None else {"last_result": None, "failures_24h": 0})


class Result(NamedTuple):
    """One finished run or non-run, as a cell of the status page (a tuple: 20,000 of them are made a second)."""

    run_id: str
    kind: str  # run | skipped | missed
    status: str
    exit_code: int | None
    signal: str | None
    reason: str | None
    started_at: float | None
    duration_s: float | None


class Running(NamedTuple):
    """A run going on now, as the history has it (the daemon's status only counts them)."""

    run_id: str
    task: str
    pid: int | None
    started_at: float | None


_RECENT = """
SELECT run_id, kind, status, exit_code, signal, reason, started_at, duration_s FROM runs INDEXED BY runs_by_task
WHERE task = ? AND status != 'running'
ORDER BY started_at DESC LIMIT ?
"""


def recent_results(db: sqlite3.Connection, tasks: Iterable[str], n: int) -> dict[str, list[Result]]:
    """The last `n` finished runs and non-runs (skipped, missed) of each of `tasks`, newest first.

    One index probe per task reading at most `n` rows: 1,000 tasks x 20 rows take about 40 ms.
    """
    make = Result._make
    return {task: [make(row) for row in db.execute(_RECENT, (task, n))] for task in tasks}


def running_now(db: sqlite3.Connection) -> dict[str, list[Running]]:
    """Runs recorded as started and not yet ended, by task, oldest first (the partial index runs_running)."""
    out: dict[str, list[Running]] = {}
    for row in db.execute("SELECT run_id, task, pid, started_at FROM runs INDEXED BY runs_running "
                          "WHERE status = 'running' ORDER BY started_at"):
        r = Running._make(row)
        out.setdefault(r.task, []).append(r)
    return out
