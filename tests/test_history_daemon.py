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
    except sqlite3.OperationalError:  # created, but its tables not committed yet
        return []
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
                            "status", "exit_code", "signal", "duration_s", "lateness_ms", "reason", "error"]
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


def test_no_history_records_nothing_and_leaves_the_database_alone(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: tick, schedule: "* * * * * *", command: "echo tick"}
    """)
    assert torch_daemon.start_bg("--no-history").returncode == 0
    torch_daemon.wait_event("run.end", timeout=20, count=2, task="tick")
    assert torch_daemon.run("stop").returncode == 0
    assert not list(torch_daemon.state.glob("history.db*"))
    assert not torch_daemon.events("history.error")
    r = torch_daemon.run("history", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []


def test_retention_by_history_keep_and_history_days(torch_daemon: Torch) -> None:
    from gotorch.history import schema

    # A history left by an earlier daemon: one row 100 days old, one 10 days old.
    torch_daemon.state.mkdir(mode=0o750, parents=True, exist_ok=True)
    db = sqlite3.connect(torch_daemon.state / "history.db")
    schema.migrate(db)
    now = time.time()
    for run_id, age_days in (("ancient", 100), ("recent", 10)):
        db.execute("INSERT INTO runs (run_id, task, kind, status, started_at, ended_at) "
                   "VALUES (?, 'gone', 'run', 'ok', ?, ?)", (run_id, now - age_days * 86400, now - age_days * 86400))
    db.commit()
    db.close()
    os.chmod(torch_daemon.state / "history.db", 0o640)
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: tick, schedule: "* * * * * *", command: "echo tick", history_keep: 3}
    """)
    assert torch_daemon.start_bg("--history-days", "30").returncode == 0
    torch_daemon.wait_event("run.end", timeout=30, count=8, task="tick")
    wait_until(lambda: {r["run_id"] for r in _rows(torch_daemon.state)} >= {"recent"}
               and "ancient" not in {r["run_id"] for r in _rows(torch_daemon.state)}, 20, what="age pruning")
    assert torch_daemon.run("stop").returncode == 0
    ticks = [r for r in _rows(torch_daemon.state) if r["task"] == "tick"]
    assert 3 <= len(ticks) <= 4, [r["status"] for r in ticks]  # keep 3 (plus at most one not pruned yet)


def test_status_shows_each_tasks_last_result_with_its_age_and_failures_of_the_last_day(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: fails, schedule: "* * * * * *", command: "exit 3"}
      - {name: fine, schedule: "* * * * * *", command: "true"}
      - {name: later, schedule: "@yearly", command: "true"}
    """)
    assert torch_daemon.start_bg().returncode == 0
    wait_until(lambda: sum(r["status"] == "failed" for r in _rows(torch_daemon.state)) >= 2
               if (torch_daemon.state / "history.db").exists() else False, 30, what="two failed rows")
    r = torch_daemon.run("status", "--json")
    assert r.returncode == 0, r.stderr
    tasks = {t["name"]: t for t in json.loads(r.stdout)["tasks"]}
    assert tasks["fails"]["failures_24h"] >= 2 and tasks["fails"]["last_result"]["status"] == "failed"
    assert tasks["fails"]["last_result"]["exit_code"] == 3 and tasks["fails"]["last_result"]["ago_s"] < 30
    assert tasks["fine"]["failures_24h"] == 0 and tasks["fine"]["last_result"]["status"] == "ok"
    assert tasks["later"]["last_result"] is None and tasks["later"]["failures_24h"] == 0
    text = torch_daemon.run("status").stdout
    assert "FAILED 24H" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("fails "))
    assert "failed (exit 3)" in line and " ago " in line, text
    assert torch_daemon.run("stop").returncode == 0
