"""`torch pause` / `torch resume` against the real daemon: skipped fires, expiry, restarts, daemon tasks."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Torch, wait_until

pytestmark = pytest.mark.integration

NEVER = '"0 0 0 1 1 *"'  # once a year: run only when asked
TASKS = f"""\
version: 1
tasks:
  - {{name: tick, schedule: "* * * * * *", command: "true"}}
  - {{name: srv, type: daemon, command: "sleep 300"}}
  - {{name: elsewhere, schedule: {NEVER}, command: "true", ips: [10.99.0.1]}}
"""


@pytest.fixture
def daemon(torch_daemon: Torch) -> Torch:
    torch_daemon.write(TASKS)
    torch_daemon.start()
    return torch_daemon


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _status(t: Torch) -> dict[str, Any]:
    r = t.run("status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _task(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in status["tasks"] if t["name"] == name)


def _paused_rows(state: Path, task: str) -> list[sqlite3.Row]:
    if not (state / "history.db").exists():
        return []
    db = sqlite3.connect(f"file:{state}/history.db?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT * FROM runs WHERE task = ? AND kind = 'skipped' AND reason = 'paused'",
                               (task,)))
    finally:
        db.close()


def _saved(t: Torch) -> dict[str, Any]:
    return json.loads((t.state / "pauses.json").read_text())  # type: ignore[no-any-return]


def test_pause_for_3s_skips_fires_then_the_task_fires_again_by_itself(daemon: Torch) -> None:
    daemon.wait_event("run.start", task="tick")
    r = daemon.run("pause", "tick", "--for", "3s", "--reason", "db maintenance")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("paused tick until ") and "(db maintenance)" in r.stdout
    assert _saved(daemon)["tick"]["reason"] == "db maintenance"

    resumed = daemon.wait_event("task.resumed", timeout=10, task="tick")[0]
    assert resumed["by"] == "expired"
    skipped = daemon.events("skipped", task="tick", reason="paused")
    assert 2 <= len(skipped) <= 4, skipped
    assert all("db maintenance" in s["detail"] and "paused by" in s["detail"] for s in skipped)
    started = {e["scheduled_at"] for e in daemon.events("run.start", task="tick")}
    assert not started & {s["scheduled_at"] for s in skipped}, "a skipped second also ran"

    # It fires again by itself: a run for a second after the hold ended.
    end_of_hold = _ts(resumed["timestamp"])
    wait_until(lambda: any(_ts(e["scheduled_at"]) >= end_of_hold - 1 and e["scheduled_at"] not in started
                           for e in daemon.events("run.start", task="tick")), 10, what="a run after the hold")
    wait_until(lambda: len(_paused_rows(daemon.state, "tick")) == len(skipped), 10, what="skipped rows in history")
    row = _paused_rows(daemon.state, "tick")[0]
    assert row["status"] == "skipped" and "db maintenance" in row["detail"]
    wait_until(lambda: _saved(daemon) == {}, 5, what="the expired hold gone from pauses.json")
    assert _status(daemon)["paused"] == [] and _task(_status(daemon), "tick")["paused"] is None


def test_a_pause_survives_a_daemon_restart_and_still_ends_by_itself(daemon: Torch) -> None:
    r = daemon.run("pause", "tick", "--for", "8s", "--reason", "restart test")
    assert r.returncode == 0, r.stderr
    until = _saved(daemon)["tick"]["until"]
    assert daemon.stop() == 0
    before_restart = len(daemon.events("skipped", task="tick", reason="paused"))

    daemon.start()
    restored = daemon.wait_event("pauses.restored", timeout=10)[0]
    assert restored["tasks"] == ["tick"]
    daemon.wait_event("skipped", timeout=10, count=before_restart + 1, task="tick", reason="paused")
    status = _status(daemon)
    assert _task(status, "tick")["paused"]["until"] == until
    assert [h["task"] for h in status["paused"]] == ["tick"]
    text = daemon.run("status").stdout
    assert "PAUSED tick until " in text and "(restart test)" in text

    resumed = daemon.wait_event("task.resumed", timeout=15, task="tick")[0]
    assert resumed["by"] == "expired" and _ts(resumed["timestamp"]) >= _ts(until)
    wait_until(lambda: any(_ts(e["scheduled_at"]) >= _ts(until) for e in daemon.events("run.start", task="tick")),
               10, what="a run after the restored hold ended")


def test_a_pause_without_for_lasts_until_resume(daemon: Torch) -> None:
    r = daemon.run("pause", "tick", "--reason", "incident 42")
    assert r.returncode == 0 and "until `torch resume tick`" in r.stdout, r.stdout + r.stderr
    assert _saved(daemon)["tick"]["until"] is None
    daemon.wait_event("skipped", timeout=10, count=2, task="tick", reason="paused")

    text = daemon.run("status").stdout
    top = text.splitlines()[1]
    assert top.startswith("PAUSED tick until resumed (incident 42) by ") and "torch resume tick" in top
    assert any(line.startswith("tick ") and line.rstrip().endswith("PAUSED") for line in text.splitlines())

    again = daemon.run("resume", "tick")
    assert again.returncode == 0 and again.stdout.strip() == "resumed tick", again.stderr
    resumed = daemon.wait_event("task.resumed", task="tick")[0]
    assert resumed["by"] != "expired" and "uid" in resumed["by"]
    wait_until(lambda: any(_ts(e["scheduled_at"]) > _ts(resumed["timestamp"])
                           for e in daemon.events("run.start", task="tick")), 10, what="a run after resume")
    assert _saved(daemon) == {}


def test_resume_of_a_task_not_paused_exits_1_but_resumes_the_others(daemon: Torch) -> None:
    assert daemon.run("pause", "tick").returncode == 0
    r = daemon.run("resume", "tick", "srv")
    assert r.returncode == 1
    assert r.stdout.strip() == "resumed tick" and "not paused: srv" in r.stderr
    assert _status(daemon)["paused"] == []


def test_pausing_a_paused_task_updates_its_hold(daemon: Torch) -> None:
    assert daemon.run("pause", "tick", "--for", "1h", "--reason", "first").returncode == 0
    first = _saved(daemon)["tick"]
    r = daemon.run("pause", "tick", "--for", "2h")
    assert r.returncode == 0 and r.stdout.startswith("hold updated on tick until "), r.stdout
    second = _saved(daemon)["tick"]
    assert second["since"] == first["since"] and second["reason"] == "first"
    assert _ts(second["until"]) - _ts(first["until"]) == pytest.approx(3600, abs=2)


def test_a_paused_daemon_task_is_stopped_and_started_again_on_resume(daemon: Torch) -> None:
    first = daemon.wait_event("run.start", task="srv")[0]
    r = daemon.run("pause", "srv", "--reason", "upgrading")
    assert r.returncode == 0, r.stderr
    end = daemon.wait_event("run.end", timeout=15, run_id=first["run_id"])[0]
    assert end["status"] == "killed" and "paused by" in end["reason"] and "upgrading" in end["reason"]
    time.sleep(1.5)  # long enough for a restart (its first backoff is shorter) that must not happen
    assert len(daemon.events("run.start", task="srv")) == 1
    assert _task(_status(daemon), "srv")["running"] == 0

    assert daemon.run("resume", "srv").returncode == 0
    again = daemon.wait_event("run.start", timeout=10, count=2, task="srv")[1]
    assert again["run_id"] != first["run_id"]
    assert not daemon.events("daemon.restart", task="srv"), "a resume is a start, not a crash restart"
    assert _task(_status(daemon), "srv")["running"] == 1


def test_a_paused_cron_tasks_running_run_is_left_alone(torch_daemon: Torch) -> None:
    torch_daemon.write(f"""\
        version: 1
        tasks:
          - {{name: long, schedule: {NEVER}, command: "sleep 3"}}
        """)
    torch_daemon.start()
    run_id = torch_daemon.run("run", "long").stdout.strip()
    torch_daemon.wait_event("run.start", run_id=run_id)
    assert torch_daemon.run("pause", "long").returncode == 0
    end = torch_daemon.wait_event("run.end", timeout=15, run_id=run_id)[0]
    assert end["status"] == "ok"


def test_pause_of_an_unknown_task_exits_1_and_pauses_nothing(daemon: Torch) -> None:
    r = daemon.run("pause", "tick", "nosuch")
    assert r.returncode == 1
    assert "no task named nosuch" in r.stderr and "nothing was paused" in r.stderr
    assert _status(daemon)["paused"] == []
    assert not (daemon.state / "pauses.json").exists()


def test_a_task_not_for_this_host_can_be_paused_and_shows_in_status(daemon: Torch) -> None:
    r = daemon.run("pause", "elsewhere", "--for", "1h")
    assert r.returncode == 0, r.stderr
    status = _status(daemon)
    assert [h["task"] for h in status["paused"]] == ["elsewhere"]
    assert set(status["paused"][0]) == {"task", "since", "until", "reason", "by"}
    assert "PAUSED elsewhere until " in daemon.run("status").stdout


def test_a_manual_run_of_a_paused_task_goes_ahead_with_a_note(daemon: Torch) -> None:
    assert daemon.run("pause", "tick", "--reason", "hold").returncode == 0
    r = daemon.run("run", "tick", "--wait")
    assert r.returncode == 0, r.stderr
    assert "note: tick is paused by" in r.stderr and "goes ahead anyway" in r.stderr


def test_bad_for_and_reason_are_refused(daemon: Torch) -> None:
    r = daemon.run("pause", "tick", "--for", "soon")
    assert r.returncode == 2 and "--for" in r.stderr
    r = daemon.run("pause", "tick", "--reason", "line\nbreak")
    assert r.returncode == 1 and "one line" in r.stderr
    assert _status(daemon)["paused"] == []


def _write_state(t: Torch, data: bytes) -> None:
    t.state.mkdir(mode=0o750, exist_ok=True)
    t.state.chmod(0o750)
    (t.state / "pauses.json").write_bytes(data)
    (t.state / "pauses.json").chmod(0o640)


def test_a_corrupt_pause_file_at_start_is_logged_and_means_no_pauses(torch_daemon: Torch) -> None:
    torch_daemon.write(TASKS)
    _write_state(torch_daemon, b'{"tick": {"since": ')
    torch_daemon.start()
    failed = torch_daemon.wait_event("pauses.file_failed")[0]
    assert failed["level"] == "error" and failed["action"] == "load" and "pauses.json" in failed["error"]
    torch_daemon.wait_event("run.start", task="tick")
    assert torch_daemon.run("pause", "tick").returncode == 0
    assert set(_saved(torch_daemon)) == {"tick"}  # replaced by a good file


def test_a_group_writable_pause_file_at_start_is_not_trusted(torch_daemon: Torch) -> None:
    torch_daemon.write(TASKS)
    _write_state(torch_daemon, json.dumps({"tick": {"since": "2026-01-01T00:00:00Z", "until": None,
                                                    "reason": None, "by": "mallory"}}).encode())
    (torch_daemon.state / "pauses.json").chmod(0o660)
    torch_daemon.start()
    failed = torch_daemon.wait_event("pauses.file_failed")[0]
    assert "writable by group or others" in failed["error"]
    torch_daemon.wait_event("run.start", task="tick")


def test_a_hold_that_ended_while_the_daemon_was_down_is_dropped_at_start(torch_daemon: Torch) -> None:
    torch_daemon.write(TASKS)
    ended = int(time.time()) - 60
    _write_state(torch_daemon, json.dumps({"tick": {"since": _iso(ended - 3600), "until": _iso(ended),
                                                    "reason": None, "by": "root (uid 0)"}}).encode())
    torch_daemon.start()
    resumed = torch_daemon.wait_event("task.resumed", task="tick")[0]
    assert resumed["by"] == "expired"
    torch_daemon.wait_event("run.start", task="tick")
    wait_until(lambda: _saved(torch_daemon) == {}, 5, what="the file rewritten without the hold")


def test_a_pause_that_cannot_be_saved_holds_but_says_it_will_not_survive_a_restart(daemon: Torch) -> None:
    (daemon.state / "pauses.json").mkdir()  # the rename onto it fails
    r = daemon.run("pause", "tick")
    assert r.returncode == 1 and r.stdout.startswith("paused tick")
    assert "not saved, so it will not survive a daemon restart" in r.stderr
    failed = daemon.wait_event("pauses.file_failed")[0]
    assert failed["action"] == "save"
    daemon.wait_event("skipped", timeout=10, task="tick", reason="paused")
    assert [h["task"] for h in _status(daemon)["paused"]] == ["tick"]
