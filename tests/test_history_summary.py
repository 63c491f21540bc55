"""Per-task history summaries for `torch status` (gotorch.history.summary): last result, failures in 24 h."""

from __future__ import annotations

from pathlib import Path

from gotorch.history.query import open_readonly
from gotorch.history.summary import FAILURE_WINDOW_S, summaries
from tests.test_history_query import T0, add, make_db


def test_last_finished_run_and_failures_of_the_last_24_hours(tmp_path: Path) -> None:
    db = make_db(tmp_path / "history.db")
    now = T0 + FAILURE_WINDOW_S + 100
    add(db, "job", T0 + 50, status="failed", exit_code=1)  # older than 24 h: not counted
    add(db, "job", now - 3000, status="timeout", exit_code=None, signal="SIGTERM")
    add(db, "job", now - 2000, status="spawn_failed", exit_code=None)
    add(db, "job", now - 1500, status="killed", exit_code=None, signal="SIGTERM")  # not a failure
    last = add(db, "job", now - 1000, status="failed", exit_code=2)
    add(db, "job", now - 500, kind="skipped", status="skipped", reason="max_instances")  # not a run
    add(db, "job", now - 10, status="running", ended_at=None, exit_code=None)  # not finished
    add(db, "other", now - 100)
    db.close()
    conn = open_readonly(tmp_path / "history.db")
    assert conn is not None
    got = summaries(conn, ["job", "other", "never"], now)
    job = got["job"]
    assert job.last is not None and job.last.run_id == last and job.last.status == "failed"
    assert job.last.exit_code == 2 and job.failures_24h == 3
    assert got["other"].last is not None and got["other"].last.status == "ok" and got["other"].failures_24h == 0
    assert got["never"].last is None and got["never"].failures_24h == 0
    as_json = job.to_json(now)
    assert as_json["failures_24h"] == 3
    assert as_json["last_result"]["status"] == "failed" and as_json["last_result"]["ago_s"] == 998.5
    assert as_json["last_result"]["ended_at"].endswith("+00:00")
    assert got["never"].to_json(now) == {"last_result": None, "failures_24h": 0}
