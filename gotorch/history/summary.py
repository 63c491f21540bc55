"""Per-task summaries of the history for `torch status`: the last result and the failures of the last 24 h.

Read-only, like gotorch.history.query, and bounded per task by the index on (task, started_at): a
status of thousands of tasks reads a few rows per task however long their histories are.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gotorch.history.query import iso

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
