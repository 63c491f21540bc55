"""Run history against the real daemon: rows in STATE/history.db, read back by `torch history`/`logs`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest

from tests.conftest import Torch, wait_until

pytestmark = pytest.mark.integration

TASKS = """\
version: 1
tasks:
  - {{name: ok, schedule: "* * * * * *", command: "echo hello; echo world >&2", max_instances: 1}}
  - {{name: fails, schedule: "*/2 * * * * *", command: "echo bad; exit 3"}}
  - {{name: slow, schedule: "* * * * * *", command: "sleep 3", max_instances: 1}}
  - {{name: hangs, schedule: "@reboot", command: "sleep 100", timeout: 1s, kill_timeout: 1s}}
  - {{name: noexec, schedule: "@reboot", command: [{tmp}/not-there]}}
"""


def _rows(state: object) -> list[dict[str, object]]:
    db = sqlite3.connect(f"file:{state}/history.db?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY started_at")]
    finally:
        db.close()


def test_runs_and_non_runs_are_recorded_and_read_back_with_the_daemon_stopped(torch_daemon: Torch) -> None:
    torch_daemon.write(TASKS.format(tmp=torch_daemon.tmp))
    assert torch_daemon.start_bg().returncode == 0
    db = torch_daemon.state / "history.db"

    def statuses() -> set[object]:
        try:
            return {(r["task"], r["status"]) for r in _rows(torch_daemon.state)}
        except sqlite3.Error:
            return set()

    want = {("ok", "ok"), ("fails", "failed"), ("hangs", "timeout"), ("noexec", "spawn_failed"),
            ("slow", "skipped")}
    wait_until(lambda: want <= statuses(), 30, what=lambda: f"rows {sorted(map(str, statuses()))}")
    assert db.stat().st_mode & 0o777 == 0o640
    assert torch_daemon.run("stop").returncode == 0

    rows = _rows(torch_daemon.state)
    ok = next(r for r in rows if r["task"] == "ok" and r["status"] == "ok")
    assert ok["exit_code"] == 0 and ok["trigger"] == "schedule" and ok["generation"] == 1
    assert ok["cpu_s"] is not None and ok["max_rss_kb"] and ok["pid"] and ok["host"]
    assert b"hello" in ok["output_head"] and b"world" in ok["output_head"]
    skipped = next(r for r in rows if r["status"] == "skipped")
    assert skipped["reason"] == "max_instances" and skipped["detail"]
    assert next(r for r in rows if r["task"] == "hangs")["trigger"] == "reboot"
    killed = [r for r in rows if r["task"] == "slow" and r["status"] == "killed"]
    assert killed, "the run still going at stop ends as killed"

    # Read back with the daemon stopped.
    r = torch_daemon.run("history", "fails", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got and {g["status"] for g in got} == {"failed"} and got[0]["exit_code"] == 3
    assert list(got[0]) == ["run_id", "task", "trigger", "attempt", "scheduled_at", "started_at", "ended_at",
                            "status", "exit_code", "signal", "duration_s", "lateness_ms", "reason"]
    r = torch_daemon.run("history", "slow", "--all", "--json")
    assert "skipped" in {g["status"] for g in json.loads(r.stdout)}
    r = torch_daemon.run("logs", "ok")
    assert r.returncode == 0 and "hello" in r.stdout and "world" in r.stdout, r.stdout + r.stderr


def test_a_run_left_without_an_end_is_closed_as_lost_at_the_next_start(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: long, schedule: "@reboot", command: "sleep 1000"}
    """)
    assert torch_daemon.start_bg().returncode == 0
    wait_until(lambda: torch_daemon.state.joinpath("history.db").exists() and any(
        r["status"] == "running" for r in _rows(torch_daemon.state)), 20, what="a running row")
    pid = torch_daemon.bg_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # no chance to record the end
    for p in torch_daemon.run_pids():
        os.kill(p, signal.SIGKILL)
    time.sleep(0.5)
    assert torch_daemon.start_bg().returncode == 0
    wait_until(lambda: any(r["status"] == "lost" for r in _rows(torch_daemon.state)), 20, what="lost row")
    assert torch_daemon.run("stop").returncode == 0
