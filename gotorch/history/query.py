"""Read-only queries over the history database, for `torch history`, `torch logs` and `torch why`.

Only the CLI and the status page's web process use this module, never the daemon: it opens the
database read-only (SQLite URI `mode=ro`), so looking at history can neither create the file nor
take a write lock the daemon's writer would wait on. Times come out of the database as Unix seconds
and leave as ISO-8601 (UTC).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
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
                "signal, duration_s, lateness_ms, reason, error")
_NROW = 15  # columns in _ROW_COLUMNS
_OUTPUT_COLUMNS = "output_head, output_tail, output_elided, output_bytes, dropped_bytes"
# A read of a database with no -wal file that SQLite finds damaged is tried this many times in all,
# this far apart (see read_history).
_TORN_READ_TRIES = 5
_TORN_READ_PAUSE_S = 0.2
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26

T = TypeVar("T")


class HistoryUnreadable(Exception):
    """The history database exists but cannot be read: permissions, not SQLite, corrupt, too new."""

    def __init__(self, path: Path, reason: str, sqlite_code: int | None = None) -> None:
        super().__init__(f"cannot read history database {path}: {reason}")
        self.path = path
        self.reason = reason
        self.sqlite_code = sqlite_code  # SQLite's primary result code, when SQLite refused it


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
    error: str | None = None  # why it could not start, or what went wrong around it (spawn_failed, lost)

    def status_text(self) -> str:
        """`failed (exit 3)`, `killed (SIGTERM)`, `skipped (max_instances)`, `ok`: how people read a status."""
        if self.signal:
            return f"{self.status} ({self.signal})"
        if self.exit_code is not None and self.status != "ok":
            return f"{self.status} (exit {self.exit_code})"
        if self.reason:
            return f"{self.status} ({self.reason})"
        return self.status

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
            "error": self.error,
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
        raise HistoryUnreadable(path, str(exc), _primary_code(exc)) from None
    if found > schema.VERSION:
        db.close()
        raise HistoryUnreadable(path, f"its schema {found} is newer than this torch's ({schema.VERSION}); "
                                      "use the torch that wrote it")
    if found == 0 or has_runs is None:
        db.close()
        return None
    return db


def read_history(path: Path, work: Callable[[sqlite3.Connection | None], T]) -> T:
    """`work(db)` on the history opened read-only (None: no history yet); the connection is closed after.

    A database with no -wal file is read as immutable, without locks (see open_readonly). If an
    admin removed the -wal of a running daemon, the daemon's writer checkpoints the removed WAL into
    the main file when it notices, and a read meanwhile can find half-written pages, which SQLite
    calls malformed. That lasts milliseconds: such a read is tried again (five tries 0.2 s apart)
    before the damage is reported. Raises HistoryUnreadable, or the sqlite3.Error `work` raised.
    """
    for attempt in range(1, _TORN_READ_TRIES + 1):
        unlocked = not os.path.lexists(f"{path}-wal")
        try:
            db = open_readonly(path)
            try:
                return work(db)
            finally:
                if db is not None:
                    db.close()
        except (HistoryUnreadable, sqlite3.DatabaseError) as exc:
            code = exc.sqlite_code if isinstance(exc, HistoryUnreadable) else _primary_code(exc)
            if not (unlocked and code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) and attempt < _TORN_READ_TRIES):
                raise
        time.sleep(_TORN_READ_PAUSE_S)
    raise AssertionError("unreachable: the last try returns or raises")


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _row(values: tuple[Any, ...], output: RunOutput | None = None) -> HistoryRow:
    (run_id, task, kind, trigger, attempt, scheduled_at, started_at, ended_at, status, exit_code, signal,
     duration_s, lateness_ms, reason, error) = values
    return HistoryRow(run_id, task, kind, trigger, attempt, scheduled_at, started_at, ended_at, status, exit_code,
                      signal, duration_s, lateness_ms, reason, output, error)


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
        head, tail, elided, nbytes, dropped = r[_NROW:]
        # The daemon writes BLOBs; a TEXT value (hand-written rows, other tools) is still shown.
        out = RunOutput(_as_bytes(head), _as_bytes(tail), int(elided or 0), int(nbytes or 0), int(dropped or 0))
        rows.append(_row(r[:_NROW], out))
    rows.reverse()  # read newest first to apply the limit; shown oldest first, like a log
    return rows


def run_with_output(db: sqlite3.Connection, run_id: str) -> HistoryRow | None:
    """The row with this run id (a run or a non-run) with its output; None if there is none (the status page)."""
    r = db.execute(f"SELECT {_ROW_COLUMNS}, {_OUTPUT_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if r is None:
        return None
    head, tail, elided, nbytes, dropped = r[_NROW:]
    return _row(r[:_NROW], RunOutput(_as_bytes(head), _as_bytes(tail), int(elided or 0), int(nbytes or 0),
                                  int(dropped or 0)))


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


# --- `torch why`: what became of one fire ---------------------------------------------------------

# A fire's rows are all written within this long after the first row of a later fire of the same
# task (plus the task's jitter): runs, skips and missed windows are decided at the first tick that
# sees the fire, and a later fire is decided at that tick or after it. The margin covers the clock
# reads of one tick (runs are stamped after their spawn, non-runs after all spawns) many times over.
FIRE_SETTLE_S = 60.0
# A fire's rows are found by reading the task's rows from the fire onwards; this many without reaching
# a later fire means something unusual (thousands of manual runs): stop rather than read on.
FIRE_SCAN_MAX = 10_000
# Runs are stamped after the tick that decided them, never before the fire; this covers float rounding.
_FIRE_EARLY_S = 1.0

_FIRE_COLUMNS = f"{_ROW_COLUMNS}, detail, missed_first, missed_last, missed_count"


@dataclass(frozen=True, slots=True)
class FireRecord:
    """A row that says what became of one fire, with the non-run fields `history` does not list.

    `detail` is the blocking run id of a `max_instances` skip (else a note); `missed_*` the window of
    a missed row: its first and last fire and how many fires it stands for.
    """

    row: HistoryRow
    detail: str | None = None
    missed_first: float | None = None
    missed_last: float | None = None
    missed_count: int | None = None

    def concerns(self, scheduled_at: float) -> bool:
        """Whether this row is about the fire at `scheduled_at`: its run or skip, or a missed window over it."""
        if self.row.kind == "missed":
            return (self.missed_first is not None and self.missed_last is not None
                    and self.missed_first <= scheduled_at <= self.missed_last)
        return self.row.scheduled_at is not None and abs(self.row.scheduled_at - scheduled_at) < 0.5

    def is_later_fire(self, scheduled_at: float) -> bool:
        """Whether this row is about a fire after `scheduled_at` (which was then decided already)."""
        if self.row.kind == "missed":
            return self.missed_first is not None and self.missed_first > scheduled_at
        return self.row.scheduled_at is not None and self.row.scheduled_at >= scheduled_at + 0.5


def fire_records(db: sqlite3.Connection, task: str, scheduled_at: float, jitter: float = 0.0) -> list[FireRecord]:
    """The rows of `task` about its fire at `scheduled_at`, oldest first (empty: nothing was recorded).

    Runs and skips of that fire (several if it was retried, or repeated after the clock went back)
    and missed windows that cover it. There is no index on scheduled_at: the rows are read in
    started_at order through runs_by_task from the fire onwards, and the reading stops
    FIRE_SETTLE_S + `jitter` seconds after the first row of a later fire (see FIRE_SETTLE_S), so
    it reads the rows of about a minute of the task's history however long that history is.
    """
    sql = (f"SELECT {_FIRE_COLUMNS} FROM runs WHERE task = ? AND started_at >= ? "
           "ORDER BY started_at, rowid")
    out: list[FireRecord] = []
    stop_after: float | None = None
    # The cursor steps through the index lazily: leaving the loop early leaves the rest unread.
    for n, values in enumerate(db.execute(sql, (task, scheduled_at - _FIRE_EARLY_S))):
        rec = FireRecord(_row(values[:_NROW]), *values[_NROW:])
        started = rec.row.started_at
        if n >= FIRE_SCAN_MAX or (stop_after is not None and started is not None and started > stop_after):
            break
        if rec.concerns(scheduled_at):
            out.append(rec)
        elif stop_after is None and started is not None and rec.is_later_fire(scheduled_at):
            stop_after = started + max(0.0, jitter) + FIRE_SETTLE_S
    return out


def last_task_row(db: sqlite3.Connection, task: str, at: float, trigger: str | None = None) -> HistoryRow | None:
    """The newest row of `task` started at or before `at` (of this `trigger` only, if given); None if none."""
    sql = f"SELECT {_ROW_COLUMNS} FROM runs WHERE task = ? AND started_at <= ?"
    params: list[Any] = [task, at]
    if trigger is not None:
        sql += " AND trigger = ?"
        params.append(trigger)
    r = db.execute(sql + " ORDER BY started_at DESC, rowid DESC LIMIT 1", params).fetchone()
    return None if r is None else _row(r)


def rows_around(db: sqlite3.Connection, at: float) -> tuple[float | None, float | None]:
    """When the daemon last recorded anything (any task) at or before `at`, and first recorded after it.

    None for a side with no row: before the history starts, or nothing since. Two probes of the
    index runs_by_time, so this is instant on any size of history.
    """
    before = db.execute("SELECT started_at FROM runs WHERE started_at <= ? ORDER BY started_at DESC LIMIT 1",
                        (at,)).fetchone()
    after = db.execute("SELECT started_at FROM runs WHERE started_at > ? ORDER BY started_at LIMIT 1",
                       (at,)).fetchone()
    return (None if before is None else before[0]), (None if after is None else after[0])


class HistoryReader:
    """The history as `torch why` asks about it (gotorch.why.HistoryLookup), over a read-only connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def fire_records(self, task: str, scheduled_at: float, jitter: float) -> list[FireRecord]:
        """See the module function `fire_records`."""
        return fire_records(self._db, task, scheduled_at, jitter)

    def last_row(self, task: str, at: float, trigger: str | None = None) -> HistoryRow | None:
        """See `last_task_row`."""
        return last_task_row(self._db, task, at, trigger)

    def find_row(self, run_id: str) -> HistoryRow | None:
        """See the module function `find_row`."""
        return find_row(self._db, run_id)

    def rows_around(self, at: float) -> tuple[float | None, float | None]:
        """See the module function `rows_around`."""
        return rows_around(self._db, at)
