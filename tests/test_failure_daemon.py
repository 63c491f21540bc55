"""Retries and alert hooks against the real daemon: attempts in history, on_failure / on_recovery / warn_after."""

from __future__ import annotations

import os
import pwd
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import Torch, wait_until

pytestmark = pytest.mark.integration


def _rows(state: Path, where: str = "1", *args: object) -> list[dict[str, object]]:
    if not (state / "history.db").exists():
        return []
    db = sqlite3.connect(f"file:{state}/history.db?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM runs WHERE {where} ORDER BY started_at", args)]
    except sqlite3.OperationalError:  # created, but its tables not committed yet
        return []
    finally:
        db.close()


def _envs(d: Path, prefix: str) -> list[dict[str, str]]:
    """The TORCH_* environments the hooks wrote, one file each, in the order they ran."""
    out = []
    for p in sorted(d.glob(f"{prefix}.*"), key=lambda p: p.stat().st_mtime_ns):
        lines = [ln for ln in p.read_text().splitlines() if "=" in ln]
        out.append(dict(ln.split("=", 1) for ln in lines))
    return out


HOOK = "env | grep ^TORCH_ > {dir}/{name}.$$; cat \"$TORCH_OUTPUT_FILE\" > {dir}/{name}-output.$$"


def test_a_failing_scheduled_run_is_retried_as_attempts_1_to_n_plus_1(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: flaky, schedule: "@reboot", command: "echo try; exit 4", retries: 2, retry_backoff: 1s}
    """)
    torch_daemon.start()
    wait_until(lambda: len(_rows(torch_daemon.state, "task = 'flaky' AND status = 'failed'")) == 3, 30,
               what="three failed attempts")
    rows = _rows(torch_daemon.state, "task = 'flaky'")
    assert [(r["attempt"], r["trigger"]) for r in rows] == [(1, "reboot"), (2, "retry"), (3, "retry")]
    assert len({r["scheduled_at"] for r in rows}) == 1, "every attempt stands for the same fire"
    starts = [float(r["started_at"]) for r in rows]  # type: ignore[arg-type]
    assert starts[1] - starts[0] >= 0.9 and starts[2] - starts[1] >= 1.9, starts  # 1 s, then 2 s
    assert len(torch_daemon.events("retry.scheduled", task="flaky")) == 2
    assert torch_daemon.stop() == 0
    assert len(_rows(torch_daemon.state, "task = 'flaky'")) == 3, "no fourth attempt"


def test_on_failure_once_at_the_threshold_and_on_recovery_once_after(torch_daemon: Torch) -> None:
    d = torch_daemon.tmp
    flag = d / "healthy"
    torch_daemon.write(f"""\
    version: 1
    tasks:
      - name: job
        schedule: "* * * * * *"
        command: "echo checking; test -e {flag}"
        failure_threshold: 2
        on_failure: '{HOOK.format(dir=d, name="fail")}'
        on_recovery: '{HOOK.format(dir=d, name="recover")}'
    """)
    torch_daemon.start()
    wait_until(lambda: len(_rows(torch_daemon.state, "task = 'job' AND status = 'failed'")) >= 4, 30,
               what="four failures")
    failed = _envs(d, "fail")
    assert len(failed) == 1, failed
    env = failed[0]
    first_two = _rows(torch_daemon.state, "task = 'job' AND status = 'failed'")[:2]
    assert env["TORCH_TASK"] == "job" and env["TORCH_STATUS"] == "failed" and env["TORCH_EXIT_CODE"] == "1"
    assert env["TORCH_RUN_ID"] == first_two[1]["run_id"] and env["TORCH_CONSECUTIVE_FAILURES"] == "2"
    assert env["TORCH_ATTEMPT"] == "1" and env["TORCH_SIGNAL"] == "" and env["TORCH_HOST"]
    assert env["TORCH_SCHEDULED_AT"].endswith("Z") and env["TORCH_STARTED_AT"].endswith("Z")
    assert float(env["TORCH_DURATION_S"]) >= 0
    assert [p.read_text() for p in d.glob("fail-output.*")] == ["checking\n"]
    wait_until(lambda: not list((torch_daemon.state / "hooks").glob("*.output")), 10,
               what="the output copy removed after the hook")
    flag.touch()
    wait_until(lambda: _envs(d, "recover"), 20, what="the recovery hook")
    wait_until(lambda: len(_rows(torch_daemon.state, "task = 'job' AND status = 'ok'")) >= 3, 20,
               what="more successes")
    recovered = _envs(d, "recover")
    assert len(recovered) == 1 and recovered[0]["TORCH_STATUS"] == "ok", recovered
    assert len(_envs(d, "fail")) == 1
    hooks = _rows(torch_daemon.state, "task LIKE 'job:%'")
    assert {(h["task"], h["trigger"], h["status"]) for h in hooks} == {("job:on_failure", "hook", "ok"),
                                                                       ("job:on_recovery", "hook", "ok")}
    assert torch_daemon.stop() == 0


def test_warn_after_runs_on_failure_once_as_overdue(torch_daemon: Torch) -> None:
    d = torch_daemon.tmp
    torch_daemon.write(f"""\
    version: 1
    tasks:
      - name: slow
        schedule: "@reboot"
        command: "sleep 4"
        warn_after: 1s
        on_failure: '{HOOK.format(dir=d, name="late")}'
    """)
    torch_daemon.start()
    wait_until(lambda: _envs(d, "late"), 20, what="the overdue hook")
    wait_until(lambda: _rows(torch_daemon.state, "task = 'slow' AND status = 'ok'"), 20, what="the run's end")
    envs = _envs(d, "late")
    assert len(envs) == 1 and envs[0]["TORCH_STATUS"] == "overdue" and envs[0]["TORCH_EXIT_CODE"] == ""
    assert envs[0]["TORCH_RUN_ID"] == _rows(torch_daemon.state, "task = 'slow'")[0]["run_id"]
    assert torch_daemon.stop() == 0


def test_a_hook_that_hangs_is_killed_at_its_timeout(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: bad, schedule: "@reboot", command: "exit 2", on_failure: "sleep 100", hook_timeout: 1s,
         kill_timeout: 1s}
    """)
    torch_daemon.start()
    wait_until(lambda: _rows(torch_daemon.state, "task = 'bad:on_failure' AND status = 'timeout'"), 40,
               what=lambda: f"the hook timed out; rows {_rows(torch_daemon.state)}; "
                            f"events {[e['event'] for e in torch_daemon.events()][-30:]}")
    assert torch_daemon.find("hook.start", task="bad", hook="on_failure") is not None
    assert torch_daemon.stop() == 0


def test_a_reload_that_changes_the_task_cancels_its_pending_retry(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: flaky, schedule: "@reboot", command: "exit 1", retries: 3, retry_backoff: 30s}
    """)
    torch_daemon.start()
    torch_daemon.wait_event("retry.scheduled", task="flaky")
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: flaky, schedule: "@reboot", command: "exit 1", retries: 3, retry_backoff: 20s}
    """)
    assert torch_daemon.run("reload").returncode == 0
    skipped = torch_daemon.wait_event("skipped", task="flaky")[0]
    assert skipped["reason"] == "reload" and "retry attempt 2" in skipped["detail"]
    assert torch_daemon.stop() == 0
    assert [r["attempt"] for r in _rows(torch_daemon.state, "task = 'flaky' AND kind = 'run'")] == [1]


def test_a_hook_outlives_the_kill_of_the_run_it_reports_on(torch_daemon: Torch) -> None:
    # The hook's TORCH_RUN_ID names the reported run; the kill of that run (its timeout) must not
    # take the hook with it, or the alert of a hung job would never get out.
    d = torch_daemon.tmp
    torch_daemon.write(f"""\
    version: 1
    tasks:
      - name: hung
        schedule: "@reboot"
        command: "sleep 30"
        timeout: 2s
        kill_timeout: 1s
        warn_after: 1s
        on_failure: 'sleep 4; {HOOK.format(dir=d, name="alert")}'
    """)
    torch_daemon.start()
    wait_until(lambda: len(_envs(d, "alert")) == 2, 30,
               what=lambda: f"both hooks done; rows {_rows(torch_daemon.state)}")
    assert sorted(e["TORCH_STATUS"] for e in _envs(d, "alert")) == ["overdue", "timeout"]
    wait_until(lambda: len(_rows(torch_daemon.state, "task = 'hung:on_failure' AND status = 'ok'")) == 2, 10,
               what=lambda: f"hook rows {_rows(torch_daemon.state, 'task = ?', 'hung:on_failure')}")
    assert torch_daemon.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a task as another user (nobody)")
def test_a_hook_running_as_the_tasks_user_can_read_its_output_file(torch_daemon: Torch) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as drop:
        os.chmod(drop, 0o777)  # where the hook (as nobody) leaves what it read
        torch_daemon.write(f"""\
        version: 1
        tasks:
          - name: as-nobody
            schedule: "@reboot"
            user: nobody
            workdir: /
            command: "echo secret-output; exit 1"
            on_failure: 'cat "$TORCH_OUTPUT_FILE" > {drop}/got; id -u > {drop}/uid'
        """)
        torch_daemon.start()
        wait_until(lambda: Path(drop, "uid").exists() and Path(drop, "uid").read_text().strip(), 20,
                   what="the hook ran")
        assert Path(drop, "uid").read_text().strip() == str(pwd.getpwnam("nobody").pw_uid)
        assert Path(drop, "got").read_text() == "secret-output\n"
        assert torch_daemon.stop() == 0
