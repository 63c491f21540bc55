"""Read-only history queries (gotorch.history.query) and the `torch history` / `torch logs` commands.

Databases are real files made by `schema.migrate`, with rows inserted directly: these tests pin what
the CLI reads, independently of how the daemon's writer gets the rows there.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import gotorch.cli_history as cli_module
from gotorch.cli import cli
from gotorch.history import query, schema
from gotorch.history.query import HistoryRow, HistoryUnreadable, history, open_readonly, runs_with_output
from tests.conftest import deny_open

T0 = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
JSON_KEYS = ["run_id", "task", "trigger", "attempt", "scheduled_at", "started_at", "ended_at", "status",
             "exit_code", "signal", "duration_s", "lateness_ms", "reason", "error"]
_ids = itertools.count(1)


def make_db(path: Path) -> sqlite3.Connection:
    """A migrated history database at `path` (a writable connection, for the test to fill)."""
    db = sqlite3.connect(path)
    schema.migrate(db)
    return db


def add(db: sqlite3.Connection, task: str = "backup", at: float | None = T0, **fields: Any) -> str:
    """Insert one row (a finished ok run unless `fields` say otherwise); return its run id."""
    row: dict[str, Any] = {
        "run_id": f"r{next(_ids)}", "task": task, "kind": "run", "trigger": "schedule", "attempt": 1,
        "scheduled_at": at, "started_at": at, "ended_at": None if at is None else at + 1.5, "status": "ok",
        "exit_code": 0, "duration_s": 1.5, "lateness_ms": 12.0, "host": "h", "pid": 100,
    }
    if fields.get("kind", "run") != "run":  # a non-run: no process, no exit
        row.update(ended_at=None, exit_code=None, duration_s=None, pid=None, lateness_ms=None)
    row.update(fields)
    cols = ", ".join(row)
    db.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    db.commit()
    return str(row["run_id"])


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory; the CLI's local time is UTC so tables are predictable."""
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.delenv("TORCH_STATE_DIR", raising=False)
    return tmp_path


@pytest.fixture
def db(state: Path) -> Iterator[sqlite3.Connection]:
    conn = make_db(state / "history.db")
    yield conn
    conn.close()


def run_cli(state: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--state-dir", str(state)])


def ids(rows: list[HistoryRow]) -> list[str]:
    return [r.run_id for r in rows]


def ro(state: Path) -> sqlite3.Connection:
    conn = open_readonly(state / "history.db")
    assert conn is not None
    return conn


# --- open_readonly -------------------------------------------------------------------------------


def test_missing_database_is_none_and_is_not_created(state: Path) -> None:
    path = state / "history.db"
    assert open_readonly(path) is None
    assert open_readonly(state / "no" / "such" / "dir" / "history.db") is None
    assert not path.exists()


def test_readonly_connection_cannot_write(state: Path, db: sqlite3.Connection) -> None:
    add(db)
    before = (state / "history.db").stat().st_mtime_ns
    conn = ro(state)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM runs")
    conn.close()
    assert (state / "history.db").stat().st_mtime_ns == before
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_reading_a_closed_wal_database_creates_no_files(state: Path, db: sqlite3.Connection) -> None:
    # As the daemon's writer leaves it after a clean stop: WAL mode, -wal and -shm removed.
    assert db.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    add(db, run_id="w1")
    db.close()
    assert sorted(p.name for p in state.iterdir()) == ["history.db"]
    conn = ro(state)
    assert ids(history(conn, [], None, None, None, None, False)) == ["w1"]
    conn.close()
    r = run_cli(state, "logs", "backup")
    assert r.exit_code == 0 and "run w1" in r.stdout
    assert sorted(p.name for p in state.iterdir()) == ["history.db"]


def _tear_page(db: sqlite3.Connection, path: Path, table: str) -> Callable[[], None]:
    """Close `db` (a WAL database: the -wal goes) and overwrite `table`'s root page with junk, as a
    checkpoint caught half-way leaves it for a reader without locks; return what puts it back."""
    size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    db.close()
    assert not Path(f"{path}-wal").exists()
    with open(path, "r+b") as f:
        f.seek((root - 1) * size)
        whole = f.read(size)
        f.seek((root - 1) * size)
        f.write(b"\xff" * size)

    def mend() -> None:
        with open(path, "r+b") as f:
            f.seek((root - 1) * size)
            f.write(whole)

    return mend


def test_a_read_torn_by_a_checkpoint_is_tried_again_once_the_file_is_whole(state: Path, db: sqlite3.Connection) -> None:
    # An admin removed a running daemon's -wal: its writer checkpoints the removed WAL into the main
    # file, and a reader (immutable, as there is no -wal) may meanwhile read half-written pages.
    assert db.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    add(db, run_id="t1")
    add(db, at=T0 + 1, run_id="t2")
    mend = _tear_page(db, state / "history.db", "runs")
    timer = threading.Timer(0.3, mend)  # the checkpoint ends: the file is whole again
    timer.start()
    try:
        t0 = time.monotonic()
        r = run_cli(state, "history", "backup", "--json")
        took = time.monotonic() - t0
    finally:
        timer.join()
    assert r.exit_code == 0, r.output
    assert [row["run_id"] for row in json.loads(r.stdout)] == ["t2", "t1"]
    assert took >= 0.2, "the first read, during the tear, was not the one that succeeded"


def test_damage_that_stays_is_reported_after_the_retries(state: Path, db: sqlite3.Connection) -> None:
    assert db.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    add(db, run_id="t1")
    _tear_page(db, state / "history.db", "runs")
    t0 = time.monotonic()
    r = run_cli(state, "history", "backup")
    assert r.exit_code == 1 and "malformed" in r.stderr, r.output
    assert time.monotonic() - t0 < 5, "a damaged file is not retried for long"


def test_reading_while_the_writer_has_it_open(state: Path, db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode = WAL")
    add(db, run_id="w1")
    conn = ro(state)  # -wal exists: a normal WAL reader, which sees later commits
    assert ids(history(conn, [], None, None, None, None, False)) == ["w1"]
    add(db, at=T0 + 1, run_id="w2")
    assert ids(history(conn, [], None, None, None, None, False)) == ["w2", "w1"]
    conn.close()


def test_path_with_uri_characters(tmp_path: Path) -> None:
    d = tmp_path / "a?b#c%20d"
    d.mkdir()
    conn = make_db(d / "history.db")
    add(conn)
    conn.close()
    got = open_readonly(d / "history.db")
    assert got is not None and len(history(got, [], None, None, None, None, False)) == 1


def test_not_sqlite_is_unreadable(state: Path) -> None:
    (state / "history.db").write_text("hello, I am a text file\n")
    with pytest.raises(HistoryUnreadable, match="not an SQLite database") as info:
        open_readonly(state / "history.db")
    assert info.value.path == state / "history.db"


def test_corrupt_database_is_unreadable(state: Path, db: sqlite3.Connection) -> None:
    add(db)
    db.close()
    path = state / "history.db"
    data = bytearray(path.read_bytes())
    data[16:100] = b"\xff" * 84  # keep the magic, wreck the rest of the header
    path.write_bytes(bytes(data))
    with pytest.raises(HistoryUnreadable, match="cannot read history database"):
        open_readonly(path)


def test_directory_is_unreadable(state: Path) -> None:
    (state / "history.db").mkdir()
    with pytest.raises(HistoryUnreadable, match="directory"):
        open_readonly(state / "history.db")


def test_fifo_in_place_of_the_database_fails_at_once_instead_of_hanging(state: Path) -> None:
    os.mkfifo(state / "history.db")
    t0 = time.monotonic()
    r = run_cli(state, "history")
    assert r.exit_code == 1 and "not a regular file" in r.stderr
    assert time.monotonic() - t0 < 5


def test_permission_denied_is_unreadable(state: Path, db: sqlite3.Connection,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests may run as root, which chmod cannot lock out: make the open fail as it would.
    path = state / "history.db"
    deny_open(monkeypatch, path)
    with pytest.raises(HistoryUnreadable, match="permission denied"):
        open_readonly(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-000 files")
def test_permission_denied_for_real(state: Path, db: sqlite3.Connection) -> None:
    path = state / "history.db"
    path.chmod(0)
    try:
        with pytest.raises(HistoryUnreadable, match="permission denied"):
            open_readonly(path)
    finally:
        path.chmod(0o600)


def test_newer_schema_is_unreadable(state: Path, db: sqlite3.Connection) -> None:
    db.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
    db.commit()
    with pytest.raises(HistoryUnreadable, match="newer than this torch"):
        open_readonly(state / "history.db")


def test_empty_unmigrated_database_is_no_history(state: Path) -> None:
    (state / "history.db").write_bytes(b"")
    assert open_readonly(state / "history.db") is None
    sqlite3.connect(state / "other.db").close()  # an SQLite file without our tables
    assert open_readonly(state / "other.db") is None


# --- history() -----------------------------------------------------------------------------------


def test_newest_first_ties_by_insertion_and_null_start_last(state: Path, db: sqlite3.Connection) -> None:
    a = add(db, at=T0)
    b = add(db, at=T0 + 10)
    c = add(db, at=T0 + 10)  # same instant as b, inserted later: newer
    d = add(db, at=None, status="spawn_failed", exit_code=None)
    e = add(db, at=T0 - 5)
    assert ids(history(ro(state), [], None, None, None, None, False)) == [c, b, a, e, d]


def test_filters(state: Path, db: sqlite3.Connection) -> None:
    ok1 = add(db, "backup", T0)
    failed = add(db, "backup", T0 + 60, status="failed", exit_code=3)
    other = add(db, "report", T0 + 120)
    killed = add(db, "backup", T0 + 180, status="killed", exit_code=None, signal="SIGTERM")
    skipped = add(db, "backup", T0 + 240, kind="skipped", status="skipped", reason="max_instances")
    missed = add(db, "report", T0 + 300, kind="missed", status="missed", reason="downtime")
    conn = ro(state)

    def q(tasks: list[str] | None = None, statuses: list[str] | None = None, since: float | None = None,
          until: float | None = None, limit: int | None = None, nonruns: bool = False) -> list[str]:
        return ids(history(conn, tasks or [], statuses, since, until, limit, nonruns))

    assert q() == [killed, other, failed, ok1]
    assert q(nonruns=True) == [missed, skipped, killed, other, failed, ok1]
    assert q(["backup"]) == [killed, failed, ok1]
    assert q(["backup"], nonruns=True) == [skipped, killed, failed, ok1]
    assert q(["backup", "report"]) == [killed, other, failed, ok1]
    assert q(["nosuch"]) == []
    assert q(statuses=["failed", "killed"]) == [killed, failed]
    assert q(["backup"], statuses=["skipped"], nonruns=True) == [skipped]
    assert q(since=T0 + 60) == [killed, other, failed]  # both bounds are inclusive
    assert q(until=T0 + 120) == [other, failed, ok1]
    assert q(since=T0 + 60, until=T0 + 120) == [other, failed]
    assert q(limit=2) == [killed, other]
    assert q(["backup"], limit=1, nonruns=True) == [skipped]
    assert q(limit=0) == []


def test_row_fields_and_json(state: Path, db: sqlite3.Connection) -> None:
    rid = add(db, "backup", T0 + 0.25, status="failed", exit_code=3, trigger="retry", attempt=2,
              scheduled_at=T0, lateness_ms=250.0, duration_s=2.0, ended_at=T0 + 2.25)
    nid = add(db, "backup", T0 + 5, kind="skipped", status="skipped", reason="max_instances", scheduled_at=None)
    run, non = reversed(history(ro(state), ["backup"], None, None, None, None, True))
    assert run.output is None  # listings do not read the blobs
    assert list(run.to_json()) == JSON_KEYS
    assert run.to_json() == {
        "run_id": rid, "task": "backup", "trigger": "retry", "attempt": 2,
        "scheduled_at": "2027-01-01T00:00:00+00:00", "started_at": "2027-01-01T00:00:00.250000+00:00",
        "ended_at": "2027-01-01T00:00:02.250000+00:00", "status": "failed", "exit_code": 3, "signal": None,
        "duration_s": 2.0, "lateness_ms": 250.0, "reason": None, "error": None,
    }
    assert non.to_json() == {
        "run_id": nid, "task": "backup", "trigger": "schedule", "attempt": 1, "scheduled_at": None,
        "started_at": "2027-01-01T00:00:05+00:00", "ended_at": None, "status": "skipped", "exit_code": None,
        "signal": None, "duration_s": None, "lateness_ms": None, "reason": "max_instances", "error": None,
    }
    json.dumps(run.to_json())


def plan(conn: sqlite3.Connection, tasks: list[str], **kw: Any) -> str:
    """The query plan of history(): the same SQL, traced, then explained."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    history(conn, tasks, kw.get("statuses"), kw.get("since"), kw.get("until"), kw.get("limit", 20),
            kw.get("nonruns", False))
    conn.set_trace_callback(None)
    sql = seen[-1]
    return " | ".join(str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))


def test_one_task_uses_the_task_index_in_order(state: Path, db: sqlite3.Connection) -> None:
    add(db)
    conn = ro(state)
    for kw in ({}, {"nonruns": True}, {"statuses": ["failed", "ok"]}, {"since": T0, "until": T0 + 9}):
        p = plan(conn, ["backup"], **kw)
        assert "USING INDEX runs_by_task (task=?" in p, p
        # the index gives started_at order; only the rowid tie-break is sorted, incrementally
        assert "TEMP B-TREE FOR ORDER BY" not in p, p
    assert "USING INDEX runs_by_time" in plan(conn, [])


# --- torch history -------------------------------------------------------------------------------


def test_cli_missing_database(state: Path) -> None:
    r = run_cli(state, "history")
    assert r.exit_code == 0 and r.stdout == "" and "no history yet" in r.stderr
    r = run_cli(state, "history", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == [] and "no history yet" in r.stderr
    assert not (state / "history.db").exists()


def test_cli_unreadable_database(state: Path) -> None:
    (state / "history.db").write_bytes(b"garbage" * 100)
    for args in (["history"], ["history", "--json"], ["logs", "backup"]):
        r = run_cli(state, *args)
        assert r.exit_code == 1, args
        assert r.stdout == ""
        assert f"cannot read history database {state / 'history.db'}: not an SQLite database" in r.stderr


def test_cli_table(state: Path, db: sqlite3.Connection) -> None:
    add(db, "backup", T0, run_id="aa-1")
    add(db, "backup", T0 + 60, run_id="aa-2", status="failed", exit_code=3, duration_s=75.4)
    add(db, "report", T0 + 120, run_id="aa-3", status="killed", exit_code=None, signal="SIGTERM",
        lateness_ms=1234.4)
    add(db, "backup", T0 + 180, run_id="aa-4", status="running", exit_code=None, ended_at=None, duration_s=None)
    add(db, "backup", T0 + 240, run_id="aa-5", kind="skipped", status="skipped", reason="max_instances")
    r = run_cli(state, "history")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["RUN", "TASK", "SCHEDULED", "STARTED", "DURATION", "STATUS", "LATE"]
    assert [ln.split()[0] for ln in lines[1:]] == ["aa-4", "aa-3", "aa-2", "aa-1"]
    assert lines[1].split() == ["aa-4", "backup", "2027-01-01", "00:03:00", "2027-01-01", "00:03:00", "-",
                                "running", "12"]
    assert "killed (SIGTERM)" in lines[2] and lines[2].endswith("1234")
    assert "failed (exit 3)" in lines[3] and "1m15s" in lines[3]
    assert lines[4].split()[4:] == ["2027-01-01", "00:00:00", "1.50s", "ok", "12"]
    # columns line up: each cell starts where its header does
    assert lines[2].index("killed") == lines[0].index("STATUS")

    r = run_cli(state, "history", "--all", "backup")
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:]] == ["aa-5", "aa-4", "aa-2", "aa-1"]
    assert "skipped (max_instances)" in r.stdout


def test_cli_json(state: Path, db: sqlite3.Connection) -> None:
    add(db, "backup", T0, run_id="x1")
    add(db, "backup", T0 + 1, run_id="x2", status="timeout", exit_code=None, signal="SIGKILL")
    r = run_cli(state, "history", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert [o["run_id"] for o in got] == ["x2", "x1"]
    assert all(list(o) == JSON_KEYS for o in got)
    assert got[0]["signal"] == "SIGKILL" and got[1]["started_at"] == "2027-01-01T00:00:00+00:00"
    r = run_cli(state, "history", "nosuch", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []


def test_cli_default_limit_is_20_and_limit_option(state: Path, db: sqlite3.Connection) -> None:
    for i in range(30):
        add(db, "backup", T0 + i, run_id=f"n{i}")

    def listed(*args: str) -> list[str]:
        return [o["run_id"] for o in json.loads(run_cli(state, "history", "--json", *args).stdout)]

    assert listed() == [f"n{i}" for i in range(29, 9, -1)]
    assert listed("--limit", "3") == ["n29", "n28", "n27"]
    assert len(listed("--limit", "0")) == 30  # 0: no limit
    assert run_cli(state, "history", "--limit", "-1").exit_code == 2


def test_cli_status_filter(state: Path, db: sqlite3.Connection) -> None:
    add(db, run_id="s-ok")
    add(db, at=T0 + 1, run_id="s-failed", status="failed", exit_code=1)
    add(db, at=T0 + 2, run_id="s-timeout", status="timeout", exit_code=None, signal="SIGTERM")
    add(db, at=T0 + 3, run_id="s-skip", kind="skipped", status="skipped", reason="max_instances")

    def listed(*args: str) -> list[str]:
        r = run_cli(state, "history", "--json", *args)
        assert r.exit_code == 0, r.output
        return [o["run_id"] for o in json.loads(r.stdout)]

    assert listed("--status", "failed,timeout") == ["s-timeout", "s-failed"]
    assert listed("--status", "failed", "--status", "ok") == ["s-failed", "s-ok"]
    # asking for skipped rows by status lists them without --all
    assert listed("--status", "skipped") == ["s-skip"]
    r = run_cli(state, "history", "--status", "faild")
    assert r.exit_code == 2 and "unknown status 'faild'" in r.stderr


def test_cli_since_duration_and_iso_and_until(state: Path, db: sqlite3.Connection) -> None:
    now = time.time()
    add(db, "recent", at=now - 3 * 3600, run_id="3h-ago")
    add(db, "recent", at=now - 3600, run_id="1h-ago")
    add(db, at=T0, run_id="t0")
    add(db, at=T0 + 3600, run_id="t0+1h")

    def listed(*args: str) -> list[str]:
        r = run_cli(state, "history", "--json", "--limit", "0", *args)
        assert r.exit_code == 0, r.output
        return [o["run_id"] for o in json.loads(r.stdout)]

    assert listed("recent", "--since", "2h") == ["1h-ago"]
    assert listed("recent", "--since", "4h") == ["1h-ago", "3h-ago"]
    assert listed("--since", "1h30m", "--until", datetime.fromtimestamp(now, UTC).isoformat()) == ["1h-ago"]
    assert listed("--since", "2027-01-01T00:30:00+00:00") == ["t0+1h"]
    assert listed("--since", "2027-01-01T00:00:00Z", "--until", "2027-01-01T00:59:59+00:00") == ["t0"]
    assert listed("--until", "2027-01-01T01:00:00+00:00") == ["t0+1h", "t0", "1h-ago", "3h-ago"]
    assert listed("--since", "2027-01-01") == ["t0+1h", "t0"]  # a date alone: local midnight (TZ=UTC here)


def test_cli_time_without_offset_is_local(state: Path, db: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    add(db, at=T0, run_id="t0")  # 01:00 in Berlin
    monkeypatch.setenv("TZ", "Europe/Berlin")
    r = run_cli(state, "history", "--json", "--since", "2027-01-01T01:00:00")
    assert [o["run_id"] for o in json.loads(r.stdout)] == ["t0"]
    r = run_cli(state, "history", "--json", "--since", "2027-01-01T01:00:01")
    assert json.loads(r.stdout) == []
    r = run_cli(state, "history")
    assert "2027-01-01 01:00:00" in r.stdout  # the table shows local time too


def test_cli_bad_times_are_usage_errors(state: Path, db: sqlite3.Connection) -> None:
    for args in (["--since", "yesterday"], ["--until", "2h"], ["--since", "-2h"], ["--until", "2027-13-01"]):
        r = run_cli(state, "history", *args)
        assert r.exit_code == 2, (args, r.output)
    assert "not a duration (2h, 30m, 1d) or an ISO-8601 time" in run_cli(state, "history", "--since", "x").stderr


def test_cli_no_matching_rows(state: Path, db: sqlite3.Connection) -> None:
    add(db)
    r = run_cli(state, "history", "other")
    assert r.exit_code == 0 and r.stdout == "" and "no matching runs" in r.stderr


def test_cli_accepts_config_option(state: Path, db: sqlite3.Connection) -> None:
    add(db, run_id="c1")
    r = run_cli(state, "history", "-c", "/nonexistent/tasks.yaml", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["run_id"] == "c1"


# --- torch logs ----------------------------------------------------------------------------------


def add_output(db: sqlite3.Connection, at: float, head: bytes, tail: bytes = b"", elided: int = 0,
               dropped: int = 0, task: str = "backup", **fields: Any) -> str:
    return add(db, task, at, output_head=head, output_tail=tail, output_elided=elided,
               output_bytes=len(head) + elided + len(tail), dropped_bytes=dropped, **fields)


def test_runs_with_output(state: Path, db: sqlite3.Connection) -> None:
    a = add_output(db, T0, b"one\n")
    b = add_output(db, T0 + 1, b"two\n", b"three\n", elided=100, dropped=7)
    add(db, "backup", T0 + 2, kind="skipped", status="skipped", reason="max_instances")
    add_output(db, T0 + 3, b"other task\n", task="report")
    conn = ro(state)
    (last,) = runs_with_output(conn, "backup", None, 1)
    assert last.run_id == b and last.output is not None
    assert (last.output.output_head, last.output.output_tail, last.output.output_elided,
            last.output.output_bytes, last.output.dropped_bytes) == (b"two\n", b"three\n", 100, 110, 7)
    assert ids(runs_with_output(conn, "backup", None, 5)) == [a, b]  # oldest first, runs only
    assert ids(runs_with_output(conn, "backup", a, 1)) == [a]
    assert runs_with_output(conn, "report", a, 1) == []
    assert runs_with_output(conn, "nosuch", None, 1) == []


def test_logs_last_run_without_elision(state: Path, db: sqlite3.Connection) -> None:
    add_output(db, T0, b"old\n", run_id="L1")
    add_output(db, T0 + 60, b"hello\nworld\n", run_id="L2", status="failed", exit_code=2)
    r = run_cli(state, "logs", "backup")
    assert r.exit_code == 0, r.output
    header, *body = r.stdout.splitlines()
    assert header.startswith("=== backup run L2 (schedule): failed (exit 2); scheduled 2027-01-01 00:01:00")
    assert "ended 2027-01-01 00:01:01 (1.50s)" in header
    assert body == ["hello", "world"]
    assert "elided" not in r.stdout


def test_logs_with_elision_and_dropped_bytes(state: Path, db: sqlite3.Connection) -> None:
    head = b"h" * schema.HEAD_BYTES  # cut mid-line, as a 2 KiB head usually is
    tail = b"tail line\nlast line"  # no final newline
    add_output(db, T0, head, tail, elided=12345, dropped=999, run_id="E1")
    r = run_cli(state, "logs", "backup")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[1:] == [
        "h" * schema.HEAD_BYTES,
        "[... 12345 bytes elided ...]",
        "tail line",
        "last line",
        "[... 999 more bytes dropped: printed beyond the task's output_limit ...]",
    ]
    # the bytes between the markers are exactly what was kept
    assert r.stdout_bytes.count(head) == 1 and tail in r.stdout_bytes


def test_logs_keeps_raw_bytes(state: Path, db: sqlite3.Connection) -> None:
    add_output(db, T0, b"caf\xc3\xa9 \xff\xfe\n")
    r = run_cli(state, "logs", "backup")
    assert b"caf\xc3\xa9 \xff\xfe\n" in r.stdout_bytes


def test_logs_escapes_terminal_control_sequences_on_a_terminal(state: Path, db: sqlite3.Connection,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A task's output may be another user's data: on an operator's terminal, an escape sequence
    # (retitle the window, clear the screen, fake a prompt) must show as text, not act.
    add_output(db, T0, b"ok\tfine \x1b]0;pwned\x07\x1b[2J done\n")
    monkeypatch.setattr(cli_module, "_stdout_is_tty", lambda: True)
    r = run_cli(state, "logs", "backup")
    assert b"ok\tfine \\x1b]0;pwned\\x07\\x1b[2J done\n" in r.stdout_bytes
    assert b"\x1b" not in r.stdout_bytes and b"\x07" not in r.stdout_bytes
    monkeypatch.setattr(cli_module, "_stdout_is_tty", lambda: False)
    assert b"\x1b]0;pwned\x07" in run_cli(state, "logs", "backup").stdout_bytes  # a pipe gets the raw bytes


def test_logs_run_and_n(state: Path, db: sqlite3.Connection) -> None:
    for i in range(5):
        add_output(db, T0 + i, f"out {i}\n".encode(), run_id=f"R{i}")
    r = run_cli(state, "logs", "backup", "--run", "R1")
    assert r.exit_code == 0 and r.stdout.splitlines()[1:] == ["out 1"]
    assert "run R1 " in r.stdout.splitlines()[0]
    r = run_cli(state, "logs", "backup", "-n", "3")
    assert r.exit_code == 0
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("out")] == ["out 2", "out 3", "out 4"]
    assert [ln.split()[3] for ln in r.stdout.splitlines() if ln.startswith("===")] == ["R2", "R3", "R4"]
    r = run_cli(state, "logs", "backup", "-n", "50")
    assert r.stdout.count("===") == 2 * 5
    r = run_cli(state, "logs", "backup", "--run", "R1", "-n", "2")
    assert r.exit_code == 2 and "not both" in r.stderr


def test_logs_running_and_silent_runs(state: Path, db: sqlite3.Connection) -> None:
    add(db, at=T0, run_id="quiet")
    add(db, at=T0 + 1, run_id="busy", status="running", exit_code=None, ended_at=None, duration_s=None)
    r = run_cli(state, "logs", "backup", "-n", "2")
    assert r.exit_code == 0
    assert r.stdout.splitlines()[1] == "(no output)"
    assert r.stdout.splitlines()[-2].startswith("=== backup run busy (schedule): running; scheduled")
    assert r.stdout.splitlines()[-1] == "(no output yet: the run is still running)"


def test_logs_no_such_task_or_run(state: Path, db: sqlite3.Connection) -> None:
    add_output(db, T0, b"x\n", run_id="B1")
    add_output(db, T0, b"y\n", run_id="P1", task="report")
    add(db, "lonely", T0, run_id="S1", kind="skipped", status="skipped", reason="max_instances")
    cases = {
        ("nosuch",): "no task 'nosuch' in the history",
        ("backup", "--run", "B9"): "no run B9 of task 'backup' in the history",
        ("backup", "--run", "P1"): "run P1 is a run of task 'report', not of 'backup'",
        ("lonely", "--run", "S1"): "S1 is a skipped fire of task 'lonely', not a run",
        ("lonely",): "task 'lonely' has no runs in the history, only skipped or missed fires",
    }
    for args, message in cases.items():
        r = run_cli(state, "logs", *args)
        assert r.exit_code == 1, args
        assert r.stdout == "" and message in r.stderr, (args, r.stderr)


def test_logs_missing_database(state: Path) -> None:
    r = run_cli(state, "logs", "backup")
    assert r.exit_code == 0 and r.stdout == "" and "no history yet" in r.stderr
    assert not (state / "history.db").exists()


# --- a long history --------------------------------------------------------------------------------

BIG_ROWS = 1_000_000
BIG_TASKS = 100


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000,000 rows over 100 tasks, a tenth of them non-runs; built in one transaction."""
    path = tmp_path_factory.mktemp("big") / "history.db"
    db = make_db(path)
    db.execute("PRAGMA journal_mode = OFF")  # a scratch file: no rollback journal needed to build it
    db.execute("PRAGMA synchronous = OFF")
    started = time.perf_counter()

    db.execute("PRAGMA cache_size = -200000")  # 200 MB: the indexes are built in memory, not thrashed
    # Generated inside SQLite, in C: twice as fast as a million Python tuples through executemany.
    with db:
        db.execute("""
            WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?2 - 1)
            INSERT INTO runs (run_id, task, kind, scheduled_at, started_at, ended_at, status, exit_code,
                              duration_s, lateness_ms)
            SELECT printf('%08x', i), 'task' || (i % ?3), iif(i % 10 = 9, 'skipped', 'run'), ?1 + i, ?1 + i,
                   iif(i % 10 = 9, NULL, ?1 + i + 0.5), iif(i % 10 = 9, 'skipped', 'ok'), iif(i % 10 = 9, NULL, 0),
                   iif(i % 10 = 9, NULL, 0.5), iif(i % 10 = 9, NULL, 3.0)
            FROM n""", (T0, BIG_ROWS, BIG_TASKS))
    print(f"\nbuilt {BIG_ROWS} rows in {time.perf_counter() - started:.1f} s")
    db.close()
    return path


def test_one_task_of_a_million_rows_is_fast(big_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = "task42"
    # Timed as the CLI does it: a fresh read-only connection, then the query.
    started = time.perf_counter()
    conn = open_readonly(big_db)
    assert conn is not None
    rows = history(conn, [task], None, None, None, 20, False)
    elapsed = time.perf_counter() - started
    assert len(rows) == 20 and {r.task for r in rows} == {task}
    assert [r.started_at for r in rows] == sorted((r.started_at for r in rows), reverse=True)
    assert rows[0].started_at == T0 + BIG_ROWS - 100 + 42  # the newest row of task42 (a run: i % 10 == 2)

    timings = {"history TASK --limit 20 (fresh connection)": elapsed}
    for label, kw in {
        "history TASK --all": {"nonruns": True},
        "history TASK --status failed (matches none: reads all 10,000 rows of the task)": {"statuses": ["failed"]},
        "history TASK --since (last 1000 s)": {"since": T0 + BIG_ROWS - 1000},
        "logs TASK -n 5": None,
    }.items():
        t = time.perf_counter()
        if kw is None:
            assert len(runs_with_output(conn, task, None, 5)) == 5
        else:
            history(conn, [task], kw.get("statuses"), kw.get("since"), None, 20, bool(kw.get("nonruns")))
        timings[label] = time.perf_counter() - t
    conn.close()
    t = time.perf_counter()
    r = CliRunner().invoke(cli, ["history", task, "--state-dir", str(big_db.parent)])
    timings["CLI: torch history TASK (in process)"] = time.perf_counter() - t
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 21
    with capsys.disabled():
        for label, seconds in timings.items():
            print(f"\n{label}: {seconds * 1000:.1f} ms", end="")
        print()
    assert elapsed < 0.5, f"history of one task took {elapsed * 1000:.0f} ms (target 200 ms)"
    assert max(timings.values()) < 1.0, timings


def test_one_task_plan_on_a_million_rows(big_db: Path) -> None:
    conn = open_readonly(big_db)
    assert conn is not None
    p = plan(conn, ["task7"])
    assert "USING INDEX runs_by_task (task=?)" in p and "TEMP B-TREE FOR ORDER BY" not in p, p
    conn.close()


def test_query_module_exports() -> None:
    assert query.DB_NAME == "history.db"
    assert set(query.STATUSES) == {"running", "ok", "failed", "timeout", "killed", "spawn_failed", "lost",
                                   "skipped", "missed"}
