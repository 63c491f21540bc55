"""history.schema: migrations bring any older database to the current version, keeping its rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gotorch.history import schema

# The DDL torch shipped as schema version 1, frozen here: whatever later versions do to
# schema.MIGRATIONS, databases made by this DDL exist on disk and must keep migrating.
V1_DDL = """
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    task          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    trigger       TEXT,
    attempt       INTEGER NOT NULL DEFAULT 1,
    scheduled_at  REAL,
    started_at    REAL,
    ended_at      REAL,
    host          TEXT,
    pid           INTEGER,
    status        TEXT NOT NULL,
    exit_code     INTEGER,
    signal        TEXT,
    lateness_ms   REAL,
    duration_s    REAL,
    cpu_s         REAL,
    max_rss_kb    INTEGER,
    generation    INTEGER,
    config_hash   TEXT,
    output_head   BLOB,
    output_tail   BLOB,
    output_elided INTEGER NOT NULL DEFAULT 0,
    output_bytes  INTEGER NOT NULL DEFAULT 0,
    dropped_bytes INTEGER NOT NULL DEFAULT 0,
    reason        TEXT,
    detail        TEXT,
    missed_first  REAL,
    missed_last   REAL,
    missed_count  INTEGER,
    error         TEXT
);
CREATE INDEX runs_by_task ON runs (task, started_at DESC);
CREATE INDEX runs_by_time ON runs (started_at DESC);
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
PRAGMA user_version = 1;
"""


def indexes(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}


def columns(db: sqlite3.Connection) -> list[str]:
    return [r[1] for r in db.execute("PRAGMA table_info(runs)")]


def test_an_empty_database_is_created_at_the_latest_version(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "history.db")
    try:
        assert schema.version(db) == 0
        assert schema.migrate(db) == 0
        assert schema.version(db) == schema.VERSION
        assert {"runs_by_task", "runs_by_time", "runs_running"} <= indexes(db)
        assert "reason" in columns(db)
        assert schema.migrate(db) == schema.VERSION  # a second migrate finds nothing to do
    finally:
        db.close()


def test_a_version_1_database_migrates_to_the_latest_and_keeps_its_rows(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "history.db")
    try:
        db.executescript(V1_DDL)
        db.execute("INSERT INTO runs (run_id, task, kind, started_at, status, output_head) "
                   "VALUES ('r1', 'a', 'run', 1.0, 'ok', x'00ff')")
        db.execute("INSERT INTO runs (run_id, task, kind, started_at, status, reason) "
                   "VALUES ('s1', 'a', 'skipped', 2.0, 'skipped', 'max_instances')")
        db.commit()
        v1_columns = columns(db)
        assert schema.migrate(db) == 1
        assert schema.version(db) == schema.VERSION
        assert columns(db)[:len(v1_columns)] == v1_columns  # migrations only ever add
        assert "requested_by" in columns(db)[len(v1_columns):]  # v2: who asked for a manual run
        got = db.execute("SELECT run_id, task, kind, started_at, status, output_head, reason FROM runs "
                         "ORDER BY run_id").fetchall()
        assert got == [("r1", "a", "run", 1.0, "ok", b"\x00\xff", None),
                       ("s1", "a", "skipped", 2.0, "skipped", None, "max_instances")]
    finally:
        db.close()


def test_a_database_newer_than_torch_is_refused_untouched(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "history.db")
    try:
        db.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
        with pytest.raises(ValueError, match="newer"):
            schema.migrate(db)
        assert schema.version(db) == schema.VERSION + 1 and indexes(db) == set()
    finally:
        db.close()


def test_the_shipped_version_1_migration_is_the_frozen_ddl(tmp_path: Path) -> None:
    # Editing a shipped migration would make new databases differ from upgraded ones.
    fresh, frozen = sqlite3.connect(tmp_path / "a.db"), sqlite3.connect(tmp_path / "b.db")
    try:
        fresh.executescript(f"BEGIN; {schema.MIGRATIONS[0]} COMMIT;")
        frozen.executescript(V1_DDL)
        assert columns(fresh) == columns(frozen) and indexes(fresh) == indexes(frozen)
    finally:
        fresh.close()
        frozen.close()
