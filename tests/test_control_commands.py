"""`torch run`, `torch kill` and `torch watch` against the real daemon, over its real control socket."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TORCH, Torch, pids_with_env, wait_until

pytestmark = pytest.mark.integration

NEVER = '"0 0 0 1 1 *"'  # once a year: these tasks run only when asked
TASKS = f"""\
version: 1
tasks:
  - {{name: ok, schedule: {NEVER}, command: "echo fine"}}
  - {{name: three, schedule: {NEVER}, command: "exit 3"}}
  - {{name: killself, schedule: {NEVER}, command: "kill -9 $$"}}
  - {{name: slow, schedule: {NEVER}, command: "sleep 30", timeout: 1s, kill_timeout: 1s}}
  - {{name: chatty, schedule: {NEVER}, command: "echo first; sleep 2; echo second"}}
  - {{name: long, schedule: {NEVER}, command: "sleep 60 & sleep 60; wait", max_instances: 1}}
  - {{name: dormant, schedule: {NEVER}, command: "true", enabled: false}}
  - {{name: elsewhere, schedule: {NEVER}, command: "true", ips: [10.99.0.1]}}
  - {{name: ticking, schedule: "* * * * * *", command: "sleep 3", max_instances: 1}}
"""


@pytest.fixture
def daemon(torch_daemon: Torch) -> Torch:
    torch_daemon.write(TASKS)
    torch_daemon.start()
    return torch_daemon


def _rows(state: Path, task: str) -> list[dict[str, object]]:
    db = sqlite3.connect(f"file:{state}/history.db?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM runs WHERE task = ? ORDER BY started_at", (task,))]
    except sqlite3.OperationalError:  # created, but its tables not committed yet
        return []
    finally:
        db.close()


def test_run_wait_exits_with_the_runs_code(daemon: Torch) -> None:
    for task, code in (("ok", 0), ("three", 3), ("killself", 128 + 9), ("slow", 124)):
        r = daemon.run("run", task, "--wait")
        assert r.returncode == code, (task, r.stdout, r.stderr)
        run_id = r.stdout.strip()
        assert run_id and "run ended" in r.stderr
    wait_until(lambda: (daemon.state / "history.db").exists() and _rows(daemon.state, "three"), 10, what="rows")
    row = _rows(daemon.state, "three")[-1]
    assert row["trigger"] == "manual" and row["status"] == "failed"
    assert row["requested_by"] and "uid" in str(row["requested_by"])


def test_run_follow_streams_lines_before_the_run_ends(daemon: Torch) -> None:
    proc = subprocess.Popen([*TORCH, "run", "chatty", "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=daemon.env(), text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    got_first = time.monotonic()
    assert first.strip() == "first"
    assert proc.poll() is None, "the run (sleep 2) is still going when its first line arrives"
    rest, err = proc.communicate(timeout=20)
    assert rest.strip() == "second" and proc.returncode == 0, err
    assert time.monotonic() - got_first > 1.0


def test_run_respects_max_instances_unless_forced(daemon: Torch) -> None:
    first = daemon.run("run", "long")
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.strip()
    again = daemon.run("run", "long")
    assert again.returncode == 1 and run_id in again.stderr and "max_instances" in again.stderr
    forced = daemon.run("run", "long", "--force")
    assert forced.returncode == 0 and forced.stdout.strip() != run_id
    killed = daemon.run("kill", "long")
    assert killed.returncode == 0 and killed.stdout.count("SIGTERM sent") == 2


def test_a_task_disabled_or_not_for_this_host_is_refused_with_the_reason(daemon: Torch) -> None:
    r = daemon.run("run", "dormant")
    assert r.returncode == 1 and "disabled" in r.stderr
    r = daemon.run("run", "elsewhere")
    assert r.returncode == 1 and "does not run on this host" in r.stderr and "10.99.0.1" in r.stderr
    r = daemon.run("run", "nosuch")
    assert r.returncode == 1 and "no task named nosuch" in r.stderr


def test_run_in_fires_once_later_and_kill_pending_cancels(daemon: Torch) -> None:
    r = daemon.run("run", "ok", "--in", "2s")
    assert r.returncode == 0 and "pending" in r.stderr, r.stderr
    run_id = r.stdout.strip()
    cancel_me = daemon.run("run", "ok", "--in", "1h").stdout.strip()
    status = json.loads(daemon.run("status", "--json").stdout)
    assert {p["run_id"] for p in status["pending_runs"]} == {run_id, cancel_me}
    ends = daemon.wait_event("run.end", timeout=20, run_id=run_id)
    assert ends[0]["status"] == "ok"
    k = daemon.run("kill", "ok", "--pending")
    assert k.returncode == 0 and cancel_me in k.stdout
    assert json.loads(daemon.run("status", "--json").stdout)["pending_runs"] == []
    assert daemon.run("kill", "ok", "--pending").returncode == 1
    time.sleep(1)
    assert len(daemon.events("run.start", task="ok")) == 1


def test_kill_ends_the_run_and_its_grandchildren_and_history_says_who(daemon: Torch) -> None:
    r = daemon.run("run", "long")
    run_id = r.stdout.strip()
    wait_until(lambda: len(pids_with_env("TORCH_RUN_ID", run_id)) >= 3, 10, what="the run and its children")
    k = daemon.run("kill", "long")
    assert k.returncode == 0 and run_id in k.stdout
    end = daemon.wait_event("run.end", timeout=20, run_id=run_id)[0]
    assert end["status"] == "killed" and "killed by" in end["reason"]
    wait_until(lambda: not pids_with_env("TORCH_RUN_ID", run_id), 10, what="no process of the run left")
    wait_until(lambda: any(row["run_id"] == run_id and row["status"] == "killed"
                           for row in _rows(daemon.state, "long")), 10, what="the killed row")
    row = next(row for row in _rows(daemon.state, "long") if row["run_id"] == run_id)
    assert "torch kill" in str(row["reason"])
    assert daemon.run("kill", "long").returncode == 1  # nothing left to kill


def test_watch_json_sees_starts_ends_and_skips(daemon: Torch) -> None:
    proc = subprocess.Popen([*TORCH, "watch", "ticking", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=daemon.env(), text=True)
    assert proc.stdout is not None
    seen: set[str] = set()
    deadline = time.monotonic() + 20
    try:
        while not {"run.start", "run.end", "skipped"} <= seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            ev = json.loads(line)
            assert ev["task"] == "ticking"
            seen.add(ev["event"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert {"run.start", "run.end", "skipped"} <= seen, seen


def test_kill_signal_option_and_unknown_signal(daemon: Torch) -> None:
    r = daemon.run("run", "long")
    run_id = r.stdout.strip()
    bad = daemon.run("kill", "long", "--signal", "NOPE")
    assert bad.returncode == 1 and "unknown signal" in bad.stderr
    k = daemon.run("kill", "long", "--run", run_id, "--signal", "KILL")
    assert k.returncode == 0
    end = daemon.wait_event("run.end", timeout=20, run_id=run_id)[0]
    assert end["status"] == "killed" and end["signal"] == "SIGKILL"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as a second uid (nobody)")
def test_the_daemon_refuses_another_uid_and_logs_it(tmp_path: Path) -> None:
    import pwd
    import tempfile

    from gotorch import control

    # A state directory `nobody` can reach (pytest's tmp_path has 0700 parents), and a socket file
    # opened up by a mistaken chmod: the peer-credential check must still turn `nobody` away.
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        os.chmod(d, 0o755)
        t = Torch(Path(d))
        try:
            t.write(TASKS)
            t.start()
            sock = t.state / "torch.sock"
            os.chmod(t.state, 0o755)
            os.chmod(sock, 0o666)
            nobody = pwd.getpwnam("nobody")
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                try:
                    os.setgroups([])
                    os.setgid(nobody.pw_gid)
                    os.setuid(nobody.pw_uid)
                    reply = control.request(sock, {"cmd": "run", "task": "ok"})
                    os._exit(3 if "permission denied" in str(reply.get("error")) else 4)
                except BaseException:
                    os._exit(5)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3
            refused = t.wait_event("control.refused")[0]
            assert refused["peer_uid"] == nobody.pw_uid
            assert not t.events("run.start", task="ok"), "nothing ran for the refused peer"
        finally:
            if t.proc is not None:
                t.stop()
