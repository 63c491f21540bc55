"""Read-only queries over the history database, for `torch history` and `torch logs`.

Only the CLI uses this module, never the daemon: it opens the database read-only (SQLite URI
`mode=ro`), so looking at history can neither create the file nor take a write lock the daemon's
writer would wait on. Times come out of the database as Unix seconds and leave as ISO-8601 (UTC).
"""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gotorch.history import DB_NAME as DB_NAME  # re-exported: the file name in the state directory
from gotorch.history import schema

# Every status the daemon writes (schema.py), runs first; `skipped` and `missed` are the non-runs.
RUN_STATUSES = ("running", "ok", "failed", "timeout", "killed", "spawn_failed", "lost")
NONRUN_STATUSES = ("skipped", "missed")
STATUSES = RUN_STATUSES + NONRUN_STATUSES

# The first 16 bytes of every SQLite 3 database file; bytes 18 and 19 are 2 for a WAL database.
_SQLITE_MAGIC = b"SQLite format 3\x00"
_WAL_FORMAT = b"\x02\x02"
_HEADER_BYTES = 20
# How long a read waits for the writer's lock (rollback-journal mode only; WAL readers never wait).
_BUSY_TIMEOUT_S = 5.0

_ROW_COLUMNS = ("run_id, task, kind, trigger, attempt, scheduled_at, started_at, ended_at, status, exit_code, "
                "signal, duration_s, lateness_ms, reason")
_OUTPUT_COLUMNS = "output_head, output_tail, output_elided, output_bytes, dropped_bytes"


class HistoryUnreadable(Exception):
    """The history database exists but cannot be read: permissions, not SQLite, corrupt, too new."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read history database {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RunOutput:
    """What a run printed, as kept: the first and last bytes, and how much was not kept."""

    output_head: bytes
    output_tail: bytes
    output_elided: int  # bytes between head and tail that were not kept
    output_bytes: int  # bytes the run printed within its output_limit (head + elided + tail)
    dropped_bytes: int  # bytes printed beyond output_limit, discarded by the runner


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One row of the `runs` table: a run, or a non-run (skipped, missed) when `kind` says so.

    `output` is None unless the query asked for it (runs_with_output): history listings do not
    read the output blobs, which are up to 8 KiB a row.
    """

    run_id: str
    task: str
    kind: str
    trigger: str | None
    attempt: int
    scheduled_at: float | None
    started_at: float | None
    ended_at: float | None
    status: str
    exit_code: int | None
    signal: str | None
    duration_s: float | None
    lateness_ms: float | None
    reason: str | None
    output: RunOutput | None = None

    def to_json(self) -> dict[str, Any]:
        """The row for `--json`: exactly the documented keys, times as ISO-8601 UTC (or null)."""
        return {
            "run_id": self.run_id,
            "task": self.task,
            "trigger": self.trigger,
            "attempt": self.attempt,
            "scheduled_at": iso(self.scheduled_at),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "status": self.status,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "duration_s": self.duration_s,
            "lateness_ms": self.lateness_ms,
            "reason": self.reason,
        }


def iso(t: float | None) -> str | None:
    """Unix seconds as ISO-8601 in UTC with its offset (`2027-01-01T00:00:00+00:00`), None for None."""
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def open_readonly(path: Path) -> sqlite3.Connection | None:
    """Open the history database read-only; None if it does not exist yet (no history).

    A database file the daemon created but has not given its tables yet (schema version 0) is also
    "no history yet". HistoryUnreadable if the file cannot be read (permissions), is not an SQLite
    database, is corrupt, or was written by a newer torch.
    """
    try:
        # Read the header ourselves first: SQLite reports both "permission denied" and "not a
        # database" as vague errors, often only at the first query.
        # O_NONBLOCK and a regular-file check: a FIFO in its place must not hang the command.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    raise IsADirectoryError
                raise HistoryUnreadable(path, "it is not a regular file")
            header = os.read(fd, _HEADER_BYTES)
        finally:
            os.close(fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise HistoryUnreadable(path, "permission denied (run as the daemon's user, or as root)") from None
    except IsADirectoryError:
        raise HistoryUnreadable(path, "it is a directory") from None
    except OSError as exc:
        raise HistoryUnreadable(path, exc.strerror or str(exc)) from None
    if header and not header.startswith(_SQLITE_MAGIC):
        raise HistoryUnreadable(path, "not an SQLite database")
    # mode=ro: never create the database, never write it. The path is percent-quoted, since `?` or
    # `#` in a directory name would otherwise end the file name part of the URI.
    uri = f"file:{quote(str(path.absolute()), safe='/')}?mode=ro"
    if header[18:20] == _WAL_FORMAT and not Path(f"{path}-wal").exists():
        # A WAL database with no -wal file: no daemon has it open (the writer's connection keeps
        # one) and everything is in the main file. A plain read-only connection would still create
        # -wal and -shm, owned by whoever runs the CLI and left behind: a root `torch history`
        # would then lock a non-root daemon out of its own database. `immutable` reads the file as
        # it is, creating nothing; a daemon starting meanwhile writes to its WAL, not to this file.
        uri += "&immutable=1"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise HistoryUnreadable(path, str(exc)) from None
    try:
        # Reading the schema is what makes SQLite look at the file: corruption shows here, not at connect.
        found = schema.version(db)
        has_runs = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone()
    except sqlite3.Error as exc:
        db.close()
        raise HistoryUnreadable(path, str(exc)) from None
    if found > schema.VERSION:
        db.close()
        raise HistoryUnreadable(path, f"its schema {found} is newer than this torch's ({schema.VERSION}); "
                                      "use the torch that wrote it")
    if found == 0 or has_runs is None:
        db.close()
        return None
    return db


def _row(values: tuple[Any, ...], output: RunOutput | None = None) -> HistoryRow:
    (run_id, task, kind, trigger, attempt, scheduled_at, started_at, ended_at, status, exit_code, signal,
     duration_s, lateness_ms, reason) = values
    return HistoryRow(run_id, task, kind, trigger, attempt, scheduled_at, started_at, ended_at, status, exit_code,
                      signal, duration_s, lateness_ms, reason, output)


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


def history(db: sqlite3.Connection, tasks: list[str], statuses: list[str] | None, since: float | None,
            until: float | None, limit: int | None, include_nonruns: bool) -> list[HistoryRow]:
    """Rows newest first (by started_at, then insertion order), filtered; at most `limit` (None: all).

    `tasks` empty means every task; `statuses` None or empty means every status; `since` and
    `until` (Unix seconds, both inclusive) bound started_at. Without `include_nonruns` only runs
    (kind 'run') are listed, not the skipped and missed fires.

    One task uses the index runs_by_task (task, started_at DESC) in its order, so with a limit the
    query reads about `limit` rows however long the history is; no task uses runs_by_time.
    """
    where: list[str] = []
    params: list[Any] = []
    if tasks:
        # `=` for one task, not `IN (?)`: same plan today, and it states the intent to the planner.
        where.append("task = ?" if len(tasks) == 1 else f"task IN ({_placeholders(len(tasks))})")
        params.extend(tasks)
    if statuses:
        where.append(f"status IN ({_placeholders(len(statuses))})")
        params.extend(statuses)
    if since is not None:
        where.append("started_at >= ?")
        params.append(since)
    if until is not None:
        where.append("started_at <= ?")
        params.append(until)
    if not include_nonruns:
        where.append("kind = 'run'")
    sql = f"SELECT {_ROW_COLUMNS} FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    # rowid breaks ties between rows started in the same instant: the later insert is the newer row.
    # Rows without started_at (NULL sorts lowest in SQLite) come last.
    sql += " ORDER BY started_at DESC, rowid DESC"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_row(r) for r in db.execute(sql, params)]


def runs_with_output(db: sqlite3.Connection, task: str, run_id: str | None, n: int) -> list[HistoryRow]:
    """The last `n` runs of `task` (or only its run `run_id`), oldest first, with their output.

    Only runs (kind 'run'): skipped and missed fires printed nothing. An empty list means no such
    run; `task_exists` and `find_row` tell the caller why.
    """
    sql = f"SELECT {_ROW_COLUMNS}, {_OUTPUT_COLUMNS} FROM runs WHERE task = ? AND kind = 'run'"
    params: list[Any] = [task]
    if run_id is not None:
        sql += " AND run_id = ?"
        params.append(run_id)
    sql += " ORDER BY started_at DESC, rowid DESC LIMIT ?"
    params.append(n)
    rows = []
    for r in db.execute(sql, params):
        head, tail, elided, nbytes, dropped = r[14:]
        # The daemon writes BLOBs; a TEXT value (hand-written rows, other tools) is still shown.
        out = RunOutput(_as_bytes(head), _as_bytes(tail), int(elided or 0), int(nbytes or 0), int(dropped or 0))
        rows.append(_row(r[:14], out))
    rows.reverse()  # read newest first to apply the limit; shown oldest first, like a log
    return rows


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def task_exists(db: sqlite3.Connection, task: str) -> bool:
    """Whether the history holds any row (run or non-run) of `task`."""
    return db.execute("SELECT 1 FROM runs WHERE task = ? LIMIT 1", (task,)).fetchone() is not None


def find_row(db: sqlite3.Connection, run_id: str) -> HistoryRow | None:
    """The row with this run id, whatever its task and kind (without output); None if there is none."""
    r = db.execute(f"SELECT {_ROW_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if r is None else _row(r)
