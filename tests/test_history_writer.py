"""HistoryWriter: real SQLite files in tmp_path, written by the real thread, read back with sqlite3."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gotorch.history import schema, writer
from gotorch.history.rows import NonRun, RunBegan, RunFinished, RunProcess, RunsLost
from gotorch.history.writer import HistoryWriter
from tests.conftest import Reports, wait_until

T0 = 1_700_000_000.0


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o750)
    return d


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def make(state: Path, reports: Reports) -> Iterator[Any]:
    """Build writers on state/history.db; every one is closed at the end of the test."""
    made: list[HistoryWriter] = []

    def build(start: bool = True, **kw: Any) -> HistoryWriter:
        kw.setdefault("batch_seconds", 0.02)
        kw.setdefault("clock", lambda: T0)  # the rows' own time: the age limit leaves them alone
        w = HistoryWriter(state / "history.db", reports, **kw)
        made.append(w)
        if start:
            w.start()
        return w

    yield build
    for w in made:
        w.close(timeout=5)


def began(run_id: str, task: str = "backup", at: float = T0) -> RunBegan:
    return RunBegan(run_id=run_id, task=task, trigger="schedule", attempt=2, scheduled_at=at - 1, started_at=at,
                    host="h1", pid=4242, lateness_ms=12.5, generation=3, config_hash="abc")


def finished(run_id: str, task: str = "backup", at: float = T0 + 10, **kw: Any) -> RunFinished:
    fields: dict[str, Any] = dict(
        run_id=run_id, task=task, ended_at=at, status="failed", exit_code=1, signal=None, duration_s=10.0,
        cpu_s=0.5, max_rss_kb=2048, output_head=b"head", output_tail=b"tail", output_elided=7, output_bytes=15,
        dropped_bytes=0, error=None, trigger="manual", scheduled_at=None, host="h1", generation=4,
        config_hash="def")
    fields.update(kw)
    return RunFinished(**fields)


def skipped(run_id: str, task: str = "backup", at: float = T0) -> NonRun:
    return NonRun(run_id=run_id, task=task, kind="skipped", at=at, scheduled_at=at, host="h1",
                  reason="max_instances", detail="r1", missed_first=None, missed_last=None, missed_count=None,
                  generation=3, config_hash="abc")


def rows(db_path: Path) -> dict[str, dict[str, Any]]:
    """Every row of the runs table, by run id."""
    db = sqlite3.connect(db_path)
    db.row_factory = sqlite3.Row
    try:
        return {r["run_id"]: dict(r) for r in db.execute("SELECT * FROM runs")}
    finally:
        db.close()


def test_rows_are_written_and_read_back(make: Any, state: Path, reports: Reports) -> None:
    w = make()
    assert w.put(began("r1"))
    assert w.put(began("r2"))
    assert w.put(finished("r1"))
    missed = NonRun(run_id="m1", task="backup", kind="missed", at=T0 + 5, scheduled_at=None, host="h1",
                    reason="down", detail=None, missed_first=T0 - 60, missed_last=T0 - 1, missed_count=60,
                    generation=3, config_hash="abc")
    assert w.put(missed) and w.put(skipped("s1"))
    wait_until(lambda: w.written == 5, 5, 0.01, what="5 rows written")
    got = rows(state / "history.db")
    assert got["r2"] == got["r2"] | {"kind": "run", "status": "running", "trigger": "schedule", "attempt": 2,
                                     "scheduled_at": T0 - 1, "started_at": T0, "host": "h1", "pid": 4242,
                                     "lateness_ms": 12.5, "generation": 3, "config_hash": "abc", "ended_at": None}
    # The end updates the row its start made: start fields stay, end fields arrive.
    assert got["r1"] == got["r1"] | {"kind": "run", "status": "failed", "trigger": "schedule", "attempt": 2,
                                     "started_at": T0, "ended_at": T0 + 10, "pid": 4242, "exit_code": 1,
                                     "signal": None, "duration_s": 10.0, "cpu_s": 0.5, "max_rss_kb": 2048,
                                     "output_head": b"head", "output_tail": b"tail", "output_elided": 7,
                                     "output_bytes": 15, "dropped_bytes": 0, "error": None, "generation": 3}
    assert got["m1"] == got["m1"] | {"kind": "missed", "status": "missed", "started_at": T0 + 5, "reason": "down",
                                     "missed_first": T0 - 60, "missed_last": T0 - 1, "missed_count": 60}
    assert got["s1"] == got["s1"] | {"kind": "skipped", "status": "skipped", "started_at": T0,
                                     "reason": "max_instances", "detail": "r1", "scheduled_at": T0}
    assert w.close() and w.dropped == 0 and w.queued == 0 and reports.messages == []


def test_file_is_0640_in_wal_mode_whatever_the_umask(make: Any, state: Path) -> None:
    old = os.umask(0o077)  # torch's files get their mode exactly, not what the umask leaves
    try:
        w = make()
        w.put(began("r1"))
        wait_until(lambda: w.written == 1, 5, 0.01, what="the row written")
    finally:
        os.umask(old)
    for name in ("history.db", "history.db-wal", "history.db-shm"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o640, name
    db = sqlite3.connect(state / "history.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION
    finally:
        db.close()


def test_a_full_batch_is_one_transaction(make: Any, state: Path) -> None:
    w: HistoryWriter = make(batch_rows=100, batch_seconds=60)
    for i in range(99):
        assert w.put(skipped(f"s{i}"))
    wait_until(lambda: w.queued == 99, 5, 0.01, what="99 rows queued")
    time.sleep(0.1)  # give a wrongly eager writer the chance to commit early
    assert w.written == 0 and w.commits == 0 and rows(state / "history.db") == {}
    seen: set[int] = set()

    def sample() -> bool:
        seen.add(w.written)
        return w.written == 100

    w.put(skipped("s99"))
    wait_until(sample, 5, 0.001, what="the batch committed")
    assert seen <= {0, 100} and w.commits == 1 and len(rows(state / "history.db")) == 100


def test_a_partial_batch_is_committed_after_batch_seconds(make: Any, state: Path) -> None:
    w = make(batch_rows=100, batch_seconds=0.05)
    for i in range(3):
        w.put(skipped(f"s{i}"))
    wait_until(lambda: w.written == 3, 5, 0.01, what="the partial batch committed")
    assert w.commits == 1


def test_full_queue_refuses_without_blocking_and_counts(make: Any, state: Path) -> None:
    w = make(start=False, max_queue=5)
    assert all(w.put(skipped(f"s{i}")) for i in range(5))
    started = time.monotonic()
    assert not w.put(skipped("s5"))
    assert time.monotonic() - started < 0.05
    assert (w.dropped, w.queued, w.written) == (1, 5, 0)
    w.start()
    assert w.close()
    assert (w.written, w.dropped, w.queued) == (5, 1, 0)
    assert sorted(rows(state / "history.db")) == [f"s{i}" for i in range(5)]
    assert not w.put(skipped("late")) and w.dropped == 2  # after close: refused, counted


def test_close_flushes_pending_rows(make: Any, state: Path) -> None:
    w = make(batch_rows=1000, batch_seconds=60)
    for i in range(3):
        w.put(began(f"r{i}"))
    started = time.monotonic()
    assert w.close(timeout=5)
    assert time.monotonic() - started < 2
    assert w.written == 3 and sorted(rows(state / "history.db")) == ["r0", "r1", "r2"]
    assert not (state / "history.db-wal").exists()  # closed cleanly: SQLite checkpointed and removed it


def test_close_without_start_drops_queued_rows(make: Any, state: Path) -> None:
    w = make(start=False)
    w.put(began("r1"))
    assert w.close()
    assert (w.written, w.dropped, w.queued) == (0, 1, 0) and not (state / "history.db").exists()


def test_finished_without_began_inserts_a_full_row(make: Any, state: Path) -> None:
    w = make()
    w.put(finished("r9", status="spawn_failed", exit_code=None, duration_s=0.25, error="no such user",
                   cpu_s=None, max_rss_kb=None, output_head=b"", output_tail=b"", output_elided=0,
                   output_bytes=0, scheduled_at=T0 - 3, ended_at=T0 + 1))
    wait_until(lambda: w.written == 1, 5, 0.01, what="the row written")
    assert rows(state / "history.db")["r9"] == {
        "run_id": "r9", "task": "backup", "kind": "run", "trigger": "manual", "attempt": 1, "scheduled_at": T0 - 3,
        "started_at": T0 + 0.75, "ended_at": T0 + 1, "host": "h1", "pid": None, "status": "spawn_failed",
        "exit_code": None, "signal": None, "lateness_ms": None, "duration_s": 0.25, "cpu_s": None,
        "max_rss_kb": None, "generation": 4, "config_hash": "def", "output_head": b"", "output_tail": b"",
        "output_elided": 0, "output_bytes": 0, "dropped_bytes": 0, "reason": None, "detail": None,
        "missed_first": None, "missed_last": None, "missed_count": None, "error": "no such user",
        "requested_by": None, "proc_start": None, "pgid": None}


def test_oversized_output_is_cut_and_counted_as_elided(make: Any, state: Path) -> None:
    w = make()
    head, tail = b"h" * (schema.HEAD_BYTES + 10), b"t" * (schema.TAIL_BYTES + 5)
    w.put(finished("r1", output_head=head, output_tail=tail, output_elided=100))
    wait_until(lambda: w.written == 1, 5, 0.01, what="the row written")
    got = rows(state / "history.db")["r1"]
    assert len(got["output_head"]) == schema.HEAD_BYTES and len(got["output_tail"]) == schema.TAIL_BYTES
    assert got["output_elided"] == 115


def test_runs_lost_closes_only_running_rows(make: Any, state: Path) -> None:
    w = make()
    for r in ("r1", "r2", "r3"):
        w.put(began(r))
    w.put(finished("r2"))
    w.put(skipped("s1"))
    w.put(RunsLost(ended_at=T0 + 99, error="the daemon stopped before the run ended"))
    wait_until(lambda: w.written == 6, 5, 0.01, what="6 rows written")
    got = rows(state / "history.db")
    for r in ("r1", "r3"):
        assert (got[r]["status"], got[r]["ended_at"], got[r]["error"]) == (
            "lost", T0 + 99, "the daemon stopped before the run ended")
    assert (got["r2"]["status"], got["r2"]["ended_at"]) == ("failed", T0 + 10)
    assert got["s1"]["status"] == "skipped"


def test_one_bad_row_costs_only_itself(make: Any, state: Path, reports: Reports) -> None:
    w = make(batch_rows=3, batch_seconds=60)
    w.put(skipped("s1"))
    w.put(skipped("s1"))  # a duplicate run id: refused by the primary key
    w.put(skipped("s2"))
    wait_until(lambda: w.written + w.dropped == 3, 5, 0.01, what="the batch handled")
    assert (w.written, w.dropped, w.commits) == (2, 1, 1)
    assert sorted(rows(state / "history.db")) == ["s1", "s2"]
    assert len(reports.starting("history.row_failed: NonRun s1")) == 1


def test_corrupt_file_is_renamed_aside_and_a_new_one_used(make: Any, state: Path, reports: Reports) -> None:
    garbage = b"this is not a database " * 200
    (state / "history.db").write_bytes(garbage)
    w = make()
    w.put(began("r1"))
    wait_until(lambda: w.written == 1, 5, 0.01, what="the row written to a fresh database")
    aside = [p for p in state.iterdir() if p.name.startswith("history.db.corrupt-")]
    main = [p for p in aside if p.name.count("-") == 1]  # not the -wal / -shm beside it
    assert len(main) == 1 and main[0].read_bytes() == garbage
    assert main[0].name[len("history.db.corrupt-"):].endswith("Z")
    [msg] = reports.starting("history.corrupt:")
    assert main[0].name in msg and "file is not a database" in msg
    assert sorted(rows(state / "history.db")) == ["r1"] and reports.starting("history.open_failed") == []


def test_symlink_in_place_of_the_database_is_refused(make: Any, state: Path, tmp_path: Path,
                                                     reports: Reports) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    (state / "history.db").symlink_to(target)
    w = make(retry_seconds=60)
    wait_until(lambda: reports.starting("history.open_failed:"), 5, 0.01, what="the refusal reported")
    assert w.put(began("r1"))
    wait_until(lambda: w.dropped == 1, 5, 0.01, what="the row dropped")
    assert "symlink" in reports.starting("history.open_failed:")[0]
    assert target.read_bytes() == b"precious" and (state / "history.db").is_symlink()
    assert not (tmp_path / "elsewhere-wal").exists() and w.written == 0


def test_symlinked_wal_is_refused(make: Any, state: Path, tmp_path: Path, reports: Reports) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    (state / "history.db-wal").symlink_to(target)
    w = make(retry_seconds=60)
    wait_until(lambda: reports.starting("history.open_failed:"), 5, 0.01, what="the refusal reported")
    w.put(began("r1"))
    wait_until(lambda: w.dropped == 1, 5, 0.01, what="the row dropped")
    assert target.read_bytes() == b"precious" and w.written == 0


def test_unopenable_database_is_reported_and_retried(make: Any, state: Path, reports: Reports) -> None:
    (state / "history.db").mkdir()  # as root a read-only directory would not stop us; a directory in its place does
    w = make(retry_seconds=0.05)
    wait_until(lambda: reports.starting("history.open_failed:"), 5, 0.01, what="the failure reported")
    for i in range(3):
        assert w.put(skipped(f"s{i}"))  # accepted, never raises; dropped by the writer
    wait_until(lambda: w.dropped == 3, 5, 0.01, what="3 rows dropped")
    time.sleep(0.2)  # several retries happen meanwhile...
    assert len(reports.starting("history.open_failed:")) == 1  # ...but are reported once a minute at most
    (state / "history.db").rmdir()
    wait_until(lambda: reports.starting("history.recovered:"), 5, 0.01, what="the recovery reported")
    w.put(skipped("s9"))
    wait_until(lambda: w.written == 1, 5, 0.01, what="the row written after recovery")
    assert sorted(rows(state / "history.db")) == ["s9"]
    assert "3 history rows dropped" in reports.starting("history.recovered:")[0]


def test_failed_batch_is_dropped_and_writing_resumes(make: Any, state: Path, reports: Reports,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "BUSY_TIMEOUT_MS", 20)
    w = make(batch_rows=2, batch_seconds=60)
    w.put(skipped("s0"))
    w.put(skipped("s1"))
    wait_until(lambda: w.written == 2, 5, 0.01, what="the first batch")
    blocker = sqlite3.connect(state / "history.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the writer's batches fail as "locked"
        for i in range(2, 6):
            w.put(skipped(f"s{i}"))
        wait_until(lambda: w.dropped == 4, 5, 0.01, what="two batches dropped")
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    assert len(reports.starting("history.write_failed:")) == 1  # two failures, one report
    assert "locked" in reports.starting("history.write_failed:")[0]
    w.put(skipped("s6"))
    w.put(skipped("s7"))
    wait_until(lambda: w.written == 4, 5, 0.01, what="writing resumed")
    assert sorted(rows(state / "history.db")) == ["s0", "s1", "s6", "s7"]
    assert len(reports.starting("history.recovered:")) == 1


def test_database_removed_under_the_writer_is_recreated(make: Any, state: Path, reports: Reports) -> None:
    w = make()
    w.put(skipped("s0"))
    wait_until(lambda: w.written == 1, 5, 0.01, what="the first row")
    for name in ("history.db", "history.db-wal", "history.db-shm"):
        (state / name).unlink()
    w.put(skipped("s1"))
    wait_until(lambda: w.written == 2, 5, 0.01, what="the row written to a new file")
    assert sorted(rows(state / "history.db")) == ["s1"]
    assert len(reports.starting("history.replaced:")) == 1


def test_newer_schema_is_left_alone(make: Any, state: Path, reports: Reports) -> None:
    db = sqlite3.connect(state / "history.db")
    db.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
    db.close()
    w = make(retry_seconds=60)
    wait_until(lambda: reports.starting("history.open_failed:"), 5, 0.01, what="the refusal reported")
    assert "newer" in reports.starting("history.open_failed:")[0]
    assert not any(p.name.startswith("history.db.corrupt") for p in state.iterdir())
    w.put(skipped("s0"))
    wait_until(lambda: w.dropped == 1, 5, 0.01, what="the row dropped")


def test_a_failing_on_error_does_not_stop_the_writer(state: Path) -> None:
    def boom(message: str) -> None:
        raise RuntimeError("loop closed")

    (state / "history.db").write_bytes(b"garbage" * 100)
    w = HistoryWriter(state / "history.db", boom, batch_seconds=0.02, clock=lambda: T0)
    w.start()
    try:
        w.put(skipped("s0"))
        wait_until(lambda: w.written == 1, 5, 0.01, what="the row written")
    finally:
        assert w.close()


def test_corruption_found_while_writing_starts_a_new_file(make: Any, state: Path, reports: Reports,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    w: HistoryWriter = make()
    w.put(skipped("s0"))
    wait_until(lambda: w.written == 1, 5, 0.01, what="the first row")
    real_apply = HistoryWriter._apply
    calls = 0

    def corrupt_once(self: HistoryWriter, db: sqlite3.Connection, row: Any) -> None:
        # SQLite's page cache hides bytes changed behind its back, so its error is injected instead.
        nonlocal calls
        calls += 1
        if calls == 1:
            exc = sqlite3.DatabaseError("database disk image is malformed")
            exc.sqlite_errorcode = 11  # SQLITE_CORRUPT
            raise exc
        real_apply(self, db, row)

    monkeypatch.setattr(HistoryWriter, "_apply", corrupt_once)
    w.put(skipped("s1"))
    wait_until(lambda: w.dropped == 1, 5, 0.01, what="the batch dropped")
    w.put(skipped("s2"))
    wait_until(lambda: w.written == 2, 5, 0.01, what="the row written to a new file")
    [msg] = reports.starting("history.corrupt:")
    assert "malformed" in msg
    assert sorted(rows(state / "history.db")) == ["s2"]
    [aside] = [p for p in state.iterdir() if p.name.startswith("history.db.corrupt-") and p.name.count("-") == 1]
    assert sorted(rows(aside)) == ["s0"]  # the old history is kept, not deleted


def test_why_torch_stopped_a_run_lands_in_the_reason_column(make: Any, state: Path) -> None:
    w = make()
    w.put(began("r1"))
    w.put(finished("r1", status="killed", exit_code=None, signal="SIGTERM", reason="daemon stopping (SIGTERM)"))
    # Without its RunBegan (dropped, or never made): the inserted row carries the reason as well.
    w.put(finished("r2", status="timeout", exit_code=None, signal="SIGKILL", reason="timeout after 5s"))
    w.put(began("r3"))
    w.put(finished("r3", status="ok", exit_code=0))
    wait_until(lambda: w.written == 5, 5, 0.01, what="5 rows written")
    got = rows(state / "history.db")
    assert (got["r1"]["status"], got["r1"]["reason"]) == ("killed", "daemon stopping (SIGTERM)")
    assert (got["r2"]["status"], got["r2"]["reason"]) == ("timeout", "timeout after 5s")
    assert (got["r3"]["status"], got["r3"]["reason"]) == ("ok", None)


def test_a_run_begun_and_finished_in_one_batch_is_the_row_two_batches_make(make: Any, tmp_path: Path) -> None:
    # One batch: written as one INSERT (the writer pairs them); two batches: INSERT, then UPDATE.
    # The table must not tell them apart, with the process row in between applied too.
    start = RunBegan(run_id="r1", task="backup", trigger="manual", attempt=1, scheduled_at=None, started_at=T0,
                     host="h1", pid=4242, lateness_ms=None, generation=3, config_hash="abc", requested_by="uid 0")
    process = RunProcess(run_id="r1", proc_start=987654, pgid=4242)
    end = finished("r1", status="ok", exit_code=0, reason=None)
    one: HistoryWriter = make(batch_rows=3, batch_seconds=60)
    for row in (start, process, end):
        assert one.put(row)
    wait_until(lambda: one.written == 3, 5, 0.01, what="the batch written")
    assert one.commits == 1
    assert one.close()
    paired = rows(one.path)["r1"]
    two = HistoryWriter(tmp_path / "two.db", Reports(), batch_rows=1, clock=lambda: T0)
    two.start()
    try:
        for n, row in enumerate((start, process, end), 1):
            assert two.put(row)
            wait_until(lambda n=n: two.written == n, 5, 0.01, what=f"row {n} written")
        assert two.commits == 3
    finally:
        assert two.close()
    assert paired == rows(tmp_path / "two.db")["r1"]
    assert paired | {"status": "ok", "requested_by": "uid 0", "proc_start": 987654, "pid": 4242,
                     "output_tail": b"tail", "ended_at": T0 + 10} == paired


def test_a_refused_start_in_a_paired_run_still_leaves_the_end_recorded(make: Any, state: Path,
                                                                        reports: Reports) -> None:
    # Apart, the refused RunBegan costs only itself and the RunFinished inserts a row of its own:
    # written together, the pair must not lose the end with the start.
    bad = RunBegan(run_id="r1", task="backup", trigger="schedule", attempt=1, scheduled_at=T0, started_at=T0,
                   host="h1", pid=2**70, lateness_ms=1.0, generation=3, config_hash="abc")
    w: HistoryWriter = make(batch_rows=2, batch_seconds=60)
    w.put(bad)
    w.put(finished("r1", status="ok", exit_code=0))
    wait_until(lambda: w.written + w.dropped == 2, 5, 0.01, what="the batch handled")
    assert (w.written, w.dropped, w.commits) == (1, 1, 1)
    row = rows(state / "history.db")["r1"]
    assert row | {"status": "ok", "ended_at": T0 + 10, "pid": None} == row
    assert len(reports.starting("history.row_failed: RunBegan r1")) == 1
