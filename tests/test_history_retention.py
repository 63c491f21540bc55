"""HistoryWriter retention: the age limit and per-task keep, pruned by the writer's own thread.

Real SQLite files and the real thread, as in test_history_writer; "now" for the age limit comes
from a fake clock, so no test waits for rows to grow old.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gotorch.config import Task
from gotorch.history import schema, writer
from gotorch.history.rows import NonRun
from gotorch.history.writer import HistoryWriter
from tests.conftest import Reports, wait_until

NOW = 1_800_000_000.0
DAY = 86400.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o750)
    return d / "history.db"


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def make(db_path: Path, reports: Reports) -> Iterator[Any]:
    """Build (not start) writers on db_path with a fixed clock; every one is closed at the end."""
    made: list[HistoryWriter] = []

    def build(**kw: Any) -> HistoryWriter:
        kw.setdefault("batch_seconds", 0.02)
        kw.setdefault("clock", lambda: NOW)
        w = HistoryWriter(db_path, reports, **kw)
        made.append(w)
        return w

    yield build
    for w in made:
        w.close(timeout=5)


Seed = tuple[str, str, str, float | None, float | None, str]  # run_id, task, kind, started_at, ended_at, status


def seed(path: Path, rows: list[Seed]) -> None:
    """Write `rows` into a database of the current schema, as an earlier daemon would have left them."""
    db = sqlite3.connect(path)
    try:
        schema.migrate(db)
        with db:
            db.executemany("INSERT INTO runs (run_id, task, kind, started_at, ended_at, status) "
                           "VALUES (?, ?, ?, ?, ?, ?)", rows)
    finally:
        db.close()


def history(task: str, n: int, start: float = NOW - DAY) -> list[Seed]:
    """`n` ended rows of `task`, one a second from `start`, runs and non-runs mixed; ids {task}0, {task}1..."""
    kinds = [("run", "ok"), ("skipped", "skipped"), ("run", "killed"), ("missed", "missed")]
    rows: list[Seed] = []
    for i in range(n):
        kind, status = kinds[i % 4]
        rows.append((f"{task}{i}", task, kind, start + i, start + i + 0.5, status))
    return rows


def ids(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT run_id FROM runs")}
    finally:
        db.close()


def count(path: Path, task: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM runs WHERE task = ?", (task,)).fetchone()[0])
    finally:
        db.close()


def nonrun(run_id: str, task: str, at: float) -> NonRun:
    return NonRun(run_id=run_id, task=task, kind="skipped", at=at, scheduled_at=at, host="h1", reason="max_instances",
                  detail=None, missed_first=None, missed_last=None, missed_count=None, generation=1, config_hash="c")


def newest(task: str, n: int, of: int) -> set[str]:
    return {f"{task}{i}" for i in range(of - n, of)}


def test_each_task_keeps_its_newest_rows_and_unnamed_tasks_the_default(make: Any, db_path: Path) -> None:
    seed(db_path, history("a", 10) + history("b", 10) + history("gone", 10))
    w: HistoryWriter = make()
    w.set_retention({"a": 3, "b": 5}, default_keep=4)  # `gone` is in no config any more
    w.start()
    wait_until(lambda: w.pruned == 7 + 5 + 6, 5, 0.01, what="18 rows pruned")
    # Runs and non-runs count together: the newest rows stay, whatever their kind.
    assert ids(db_path) == newest("a", 3, 10) | newest("b", 5, 10) | newest("gone", 4, 10)


def test_keep_is_applied_as_rows_arrive(make: Any, db_path: Path) -> None:
    w: HistoryWriter = make()
    w.set_retention({"a": 10}, default_keep=1000)
    w.start()
    for i in range(40):
        assert w.put(nonrun(f"a{i}", "a", NOW + i))
    for i in range(5):
        assert w.put(nonrun(f"b{i}", "b", NOW + i))
    wait_until(lambda: w.written == 45 and count(db_path, "a") == 10, 5, 0.01, what="a pruned to 10 rows")
    assert ids(db_path) == newest("a", 10, 40) | newest("b", 5, 5) and w.pruned == 30


def test_rows_older_than_max_age_days_go_by_start_or_else_end(make: Any, db_path: Path) -> None:
    seed(db_path, [
        ("old", "a", "run", NOW - 91 * DAY, NOW - 91 * DAY + 5, "ok"),
        ("young", "a", "run", NOW - 89 * DAY, NOW - 89 * DAY + 5, "failed"),
        ("old-unstarted", "a", "run", None, NOW - 95 * DAY, "spawn_failed"),
        ("young-unstarted", "a", "run", None, NOW - DAY, "spawn_failed"),
        ("old-skip", "b", "skipped", NOW - 400 * DAY, None, "skipped"),
    ])
    w: HistoryWriter = make(max_age_days=90)
    w.start()  # no set_retention: only the age limit applies
    wait_until(lambda: w.prune_passes >= 1, 5, 0.01, what="the pass at open")
    assert ids(db_path) == {"young", "young-unstarted"} and w.pruned == 3


def test_running_rows_survive_both_limits(make: Any, db_path: Path) -> None:
    rows = history("a", 6)
    rows[1] = ("a1", "a", "run", NOW - DAY + 1, None, "running")
    rows[5] = ("a5", "a", "run", NOW - DAY + 5, None, "running")
    seed(db_path, [*rows, ("ancient", "b", "run", NOW - 1000 * DAY, None, "running")])
    w: HistoryWriter = make(max_age_days=90)
    w.set_retention({"a": 2})
    w.start()
    wait_until(lambda: w.prune_passes >= 1, 5, 0.01, what="the pass at open")
    # A running row counts as one of the newest 2 (a5), and is never deleted beyond them (a1).
    assert ids(db_path) == {"a1", "a4", "a5", "ancient"} and w.pruned == 3


class RecordingDb:
    """Stands in for the writer's connection and logs each statement with the rows it changed.

    `delete_seconds` makes each DELETE that long, as a slow disk would.
    """

    def __init__(self, db: sqlite3.Connection, delete_seconds: float = 0.0) -> None:
        self._db = db
        self._delete_seconds = delete_seconds
        self.log: list[tuple[str, int]] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        cur = self._db.execute(sql, params)
        if self._delete_seconds and sql.split()[0] == "DELETE":
            time.sleep(self._delete_seconds)
        self.log.append((" ".join(sql.split()[:2]), cur.rowcount))
        return cur

    def close(self) -> None:
        self._db.close()


class Connections:
    """The connections writers opened, each a RecordingDb; set `delete_seconds` before they open."""

    def __init__(self) -> None:
        self.dbs: list[RecordingDb] = []
        self.delete_seconds = 0.0


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Connections:
    """Every connection writers open from now on, wrapped in a RecordingDb."""
    connections = Connections()
    real_connect = HistoryWriter._connect

    def recording_connect(self: HistoryWriter) -> Any:
        connections.dbs.append(RecordingDb(real_connect(self), connections.delete_seconds))
        return connections.dbs[-1]

    monkeypatch.setattr(HistoryWriter, "_connect", recording_connect)
    return connections


def test_a_big_backlog_is_pruned_in_small_transactions_of_its_own(make: Any, db_path: Path,
                                                                   recorded: Connections) -> None:
    seed(db_path, history("a", 2000))
    w: HistoryWriter = make(prune_batch_rows=150)
    w.set_retention({"a": 100})
    w.start()
    wait_until(lambda: w.pruned == 1900, 10, 0.01, what="1900 rows pruned")
    wait_until(lambda: w.prune_passes >= 1, 5, 0.01, what="the pass over")
    (db,) = recorded.dbs
    log = list(db.log)
    deletes = [i for i, (sql, _) in enumerate(log) if sql.startswith("DELETE")]
    keep_deletes = [log[i][1] for i in deletes if log[i][1] > 0]
    assert keep_deletes == [150] * 12 + [100]  # never more than prune_batch_rows at once
    for i in deletes:  # each DELETE alone in its transaction: BEGIN IMMEDIATE, DELETE, COMMIT
        assert log[i - 1][0] == "BEGIN IMMEDIATE" and log[i + 1][0] == "COMMIT", log[i - 1:i + 2]
    assert count(db_path, "a") == 100 and ids(db_path) == newest("a", 100, 2000)


def test_rows_put_during_a_long_prune_are_committed_between_its_steps(make: Any, db_path: Path,
                                                                      recorded: Connections) -> None:
    seed(db_path, history("a", 3000))
    recorded.delete_seconds = 0.003  # a slow disk: 300 steps of 10 rows take about a second
    w: HistoryWriter = make(prune_batch_rows=10)
    w.set_retention({"a": 1})
    w.start()
    wait_until(lambda: w.pruned > 0, 10, 0.005, what="pruning under way")
    w.put(nonrun("x0", "x", NOW))
    wait_until(lambda: w.written == 1, 10, 0.005, what="the row written")
    wait_until(lambda: w.pruned == 2999, 20, 0.01, what="pruning over")
    log = [sql for sql, _ in recorded.dbs[0].log]
    insert = log.index("INSERT INTO")
    assert "DELETE FROM" in log[:insert] and "DELETE FROM" in log[insert:]
    assert log[insert - 1:insert + 2] == ["BEGIN IMMEDIATE", "INSERT INTO", "COMMIT"]


def test_nothing_is_pruned_without_an_age_limit_and_with_a_large_keep(make: Any, db_path: Path) -> None:
    seed(db_path, [*history("a", 50, start=86400.0), ("b0", "b", "run", None, 86400.0, "failed")])  # 1970
    w: HistoryWriter = make(max_age_days=0)
    w.set_retention({}, default_keep=1_000_000)
    w.start()
    wait_until(lambda: w.prune_passes >= 1, 5, 0.01, what="the pass at open")
    w.put(nonrun("late", "a", 86400.0 - 1))
    wait_until(lambda: w.written == 1, 5, 0.01, what="the row written")
    assert w.close()
    assert w.pruned == 0 and len(ids(db_path)) == 52


def test_until_set_retention_no_task_is_cut_to_a_default(make: Any, db_path: Path) -> None:
    # A config's history_keep: 5000 must not lose rows to the default of 1000 while it is on its way.
    seed(db_path, history("a", 30))
    w: HistoryWriter = make()
    w.start()
    wait_until(lambda: w.prune_passes >= 1, 5, 0.01, what="the pass at open")
    assert w.pruned == 0
    w.set_retention({}, default_keep=20)  # wakes the idle writer: no row needs to come first
    wait_until(lambda: w.pruned == 10, 5, 0.01, what="10 rows pruned")


def test_a_lower_keep_from_a_reload_is_applied_without_waiting_for_new_rows(make: Any, db_path: Path) -> None:
    seed(db_path, history("a", 30) + history("b", 30) + history("c", 30))
    w: HistoryWriter = make()
    w.set_retention({"a": 50, "b": 50, "c": 25}, default_keep=40)
    w.start()
    wait_until(lambda: w.pruned == 5, 5, 0.01, what="c cut to 25")
    passes = w.prune_passes
    w.set_retention({"a": 10, "c": 25}, default_keep=40)  # a lowered; b dropped: the default, still above 30
    wait_until(lambda: w.pruned == 25 and w.prune_passes > passes, 5, 0.01, what="a cut to 10")
    w.set_retention({"a": 10, "c": 25}, default_keep=15)  # the default lowered: b (in no mapping) too
    wait_until(lambda: w.pruned == 40, 5, 0.01, what="b cut to 15")
    assert (count(db_path, "a"), count(db_path, "b"), count(db_path, "c")) == (10, 15, 25)


def test_the_age_limit_is_applied_again_every_prune_seconds(make: Any, db_path: Path) -> None:
    now = [NOW]
    seed(db_path, [("r1", "a", "run", NOW - 10 * DAY, NOW - 10 * DAY, "ok"), ("r2", "a", "run", NOW, NOW, "ok")])
    w: HistoryWriter = make(max_age_days=30, prune_seconds=0.05, clock=lambda: now[0])
    w.start()
    wait_until(lambda: w.prune_passes >= 1, 5, 0.01, what="the pass at open")
    assert w.pruned == 0
    now[0] += 25 * DAY  # r1 is now 35 days old
    wait_until(lambda: w.pruned == 1, 5, 0.01, what="r1 pruned by a later pass")
    assert ids(db_path) == {"r2"}


def test_a_failing_prune_is_reported_and_rows_are_still_written(make: Any, db_path: Path, reports: Reports,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "_PRUNE_OLD", "DELETE FROM no_such_table WHERE ? AND ?")
    w: HistoryWriter = make(prune_seconds=0.05)
    w.start()
    wait_until(lambda: reports.starting("history.prune_failed:"), 5, 0.01, what="the failure reported")
    (msg,) = reports.starting("history.prune_failed:")
    assert "no such table" in msg and str(db_path) in msg
    for i in range(3):
        w.put(nonrun(f"s{i}", "a", NOW))
    wait_until(lambda: w.written == 3, 5, 0.01, what="rows written after the failure")
    assert w.close() and w.prune_passes == 0
    assert len(reports.starting("history.prune_failed:")) == 1  # retried every 0.05 s, reported once a minute
    assert reports.starting("history.write_failed") == []


@pytest.mark.parametrize("sql", [writer._PRUNE_OLD, writer._PRUNE_OLD_UNSTARTED, writer._KEEP_CUTOFF,
                                 writer._PRUNE_BEYOND, writer._NEXT_TASK])
def test_every_prune_statement_is_served_by_an_index(sql: str) -> None:
    db = sqlite3.connect(":memory:")
    try:
        schema.migrate(db)
        params = (1.0,) * sql.count("?")
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    finally:
        db.close()
    # A SCAN of the table (or a whole index) would cost one step per row of the history.
    assert not [p for p in plan if p.startswith("SCAN")], plan
    assert any("INDEX" in p for p in plan), plan


def test_the_writers_default_keep_is_the_task_fields_default() -> None:
    assert Task(name="t", command="x").history_keep == writer.DEFAULT_KEEP
