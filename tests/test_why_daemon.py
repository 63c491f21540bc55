"""`torch why` against the real daemon: its answers for fires the daemon ran, skipped, and fired while stopped."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import Torch, wait_until

pytestmark = pytest.mark.integration

TASKS = """\
version: 1
tasks:
  - {name: ok, schedule: "* * * * * *", command: "echo hello"}
  - {name: slow, schedule: "* * * * * *", command: "sleep 3", max_instances: 1}
"""


def _rows(torch: Torch) -> list[dict[str, Any]]:
    try:
        db = sqlite3.connect(f"file:{torch.state}/history.db?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY started_at")]
    except sqlite3.Error:
        return []
    finally:
        db.close()


def _why(torch: Torch, *args: str) -> dict[str, Any]:
    r = torch.run("why", *args, "-c", str(torch.config), "--json")
    assert r.returncode == 0, r.stderr
    got: dict[str, Any] = json.loads(r.stdout)
    return got


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_why_explains_runs_skips_and_fires_while_the_daemon_was_stopped(torch_daemon: Torch) -> None:
    torch_daemon.write(TASKS)
    assert torch_daemon.start_bg().returncode == 0

    def recorded() -> tuple[dict[str, Any], dict[str, Any]] | None:
        rows = _rows(torch_daemon)
        ran = next((r for r in rows if r["task"] == "ok" and r["status"] == "ok"), None)
        skip = next((r for r in rows if r["task"] == "slow" and r["status"] == "skipped"), None)
        return (ran, skip) if ran and skip else None

    ran, skip = wait_until(recorded, 30, what="an ok run and a skipped fire in the history")
    # While the daemon runs, and from the database alone.
    got = _why(torch_daemon, "ok", "--at", _iso(ran["scheduled_at"]))
    assert got["answer"] == "ran" and got["run"]["run_id"] == ran["run_id"] and got["message"].startswith("ran:")
    got = _why(torch_daemon, "slow", "--at", _iso(skip["scheduled_at"]))
    assert got["answer"] == "skipped" and got["blocking_run"] == skip["detail"]
    assert f"run {skip['detail']} was in the way" in got["message"]

    assert torch_daemon.run("stop").returncode == 0
    stopped = time.time()
    last = max(r["started_at"] for r in _rows(torch_daemon))
    # A fire while the daemon is down has no row: once it is older than a few seconds, it is missed.
    time.sleep(6.5)
    fire = float(int(stopped) + 1)
    got = _why(torch_daemon, "ok", "--at", _iso(fire))
    assert got["answer"] == "missed" and got["run"] is None and got["scheduled_at"] == _iso(fire)
    assert got["window"]["from"] == _iso(last) and got["window"]["to"] is None
    assert "the daemon was not running or not recording since" in got["message"]
    # Asked about "now": a 1/s task's last fire is always seconds old, so the fire before the last
    # few seconds is explained as well, and that one shows the daemon is down.
    r = torch_daemon.run("why", "ok", "-c", str(torch_daemon.config))
    assert r.returncode == 0, r.stderr
    recent, earlier = r.stdout.splitlines()
    assert recent.startswith("not recorded yet: ok's fire at")
    assert earlier.startswith("missed: no record of ok's fire at") and "not running or not recording since" in earlier
