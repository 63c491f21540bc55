"""The history database's tables, its schema version (`PRAGMA user_version`) and forward migrations.

Times are Unix seconds (REAL, UTC); the CLI renders them. One table holds runs and non-runs, so
"what happened to this task" is one ordered query:

* a run (`kind = 'run'`) is inserted when it starts (status `running`) and updated when it ends;
  a run found `running` when the daemon starts again was lost with the previous daemon (`lost`),
  unless its process is still alive: then the new daemon adopts it and records its end;
  a run torch stopped (`killed`, `timeout`) has its reason in `reason` too, e.g.
  "daemon stopping (SIGTERM)";
* a non-run (`kind = 'skipped'` or `'missed'`) is inserted once, with its reason.

Retention (the writer's pruning) needs no index of its own: runs_by_time serves the age limit and
runs_by_task the per-task one. A migration that has shipped is never edited: a database made by
it must keep migrating the same way.
"""

from __future__ import annotations

import sqlite3

VERSION = 3

# Forward migrations: MIGRATIONS[v] brings a database at version v to v + 1.
MIGRATIONS: dict[int, str] = {
    0: """
    CREATE TABLE runs (
        run_id        TEXT PRIMARY KEY,
        task          TEXT NOT NULL,
        kind          TEXT NOT NULL,               -- run | skipped | missed
        trigger       TEXT,                        -- schedule | reboot | manual | retry | restart
        attempt       INTEGER NOT NULL DEFAULT 1,
        scheduled_at  REAL,                        -- the fire (NULL for a daemon task's copy)
        started_at    REAL,
        ended_at      REAL,
        host          TEXT,
        pid           INTEGER,
        status        TEXT NOT NULL,               -- running | ok | failed | timeout | killed |
                                                   -- spawn_failed | lost | skipped | missed
        exit_code     INTEGER,
        signal        TEXT,
        lateness_ms   REAL,
        duration_s    REAL,
        cpu_s         REAL,
        max_rss_kb    INTEGER,
        generation    INTEGER,
        config_hash   TEXT,
        output_head   BLOB,                        -- first 2 KiB of stdout+stderr
        output_tail   BLOB,                        -- last 6 KiB
        output_elided INTEGER NOT NULL DEFAULT 0,  -- bytes between head and tail not kept
        output_bytes  INTEGER NOT NULL DEFAULT 0,  -- bytes the run printed within output_limit
        dropped_bytes INTEGER NOT NULL DEFAULT 0,  -- bytes beyond output_limit
        reason        TEXT,                        -- why a non-run: max_instances | reload | stop | ...
        detail        TEXT,                        -- e.g. the run id that blocked it
        missed_first  REAL,                        -- a missed window: first and last fire, count
        missed_last   REAL,
        missed_count  INTEGER,
        error         TEXT
    );
    CREATE INDEX runs_by_task ON runs (task, started_at DESC);
    CREATE INDEX runs_by_time ON runs (started_at DESC);
    CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
    """,
    # v2: who asked for a manual run (`torch run`), e.g. "root (uid 0)"; NULL for everything else.
    1: """
    ALTER TABLE runs ADD COLUMN requested_by TEXT;
    """,
    # v3: what names a run's process for the life of the host, so that a daemon started after a
    # crash can adopt the runs still alive (gotorch.adoption): its start time in clock ticks after
    # boot (/proc/PID/stat) and its process group; NULL for runs shorter than a few ms.
    2: """
    ALTER TABLE runs ADD COLUMN proc_start INTEGER;
    ALTER TABLE runs ADD COLUMN pgid INTEGER;
    """,
}

HEAD_BYTES = 2 * 1024
TAIL_BYTES = 6 * 1024


def version(db: sqlite3.Connection) -> int:
    """The schema version of `db` (0 for a new, empty database)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection) -> int:
    """Bring `db` to VERSION, one migration per transaction; return the version it was at.

    A database newer than this torch is left alone (ValueError): an older daemon must not write
    rows a newer one cannot read back.
    """
    found = version(db)
    if found > VERSION:
        raise ValueError(f"history database schema {found} is newer than this torch's ({VERSION})")
    for v in range(found, VERSION):
        with db:  # one transaction per step: a crash leaves a consistent version
            db.executescript(f"BEGIN; {MIGRATIONS[v]} PRAGMA user_version = {v + 1}; COMMIT;")
    return found
