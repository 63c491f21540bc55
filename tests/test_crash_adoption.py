"""After `kill -9` of the daemon, the next one adopts the runs still alive and closes the others as lost.

Real daemons, real kill -9, real processes left behind: a daemon task never has more copies than its
max_instances, a cron task never runs beside its own adopted run, adopted runs are stopped by `stop`
and their end (and output printed after the restart) is recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import Torch, pids_with_env, wait_until

KEEPER = """\
version: 1
tasks:
  - name: keeper
    type: daemon
    max_instances: 2
    command: exec sleep 300
  - name: slow
    schedule: "* * * * * *"
    max_instances: 1
    command: echo "$TORCH_RUN_ID" >> {starts}; sleep {sleep}; echo "after the restart"; exit 3
"""


def _alive(task: str, state: Path) -> list[int]:
    """Live processes of `task` (their TORCH_TASK) started by a daemon of this state directory."""
    of_task = set(pids_with_env("TORCH_TASK", task))
    return sorted(p for p in pids_with_env("TORCH_STATE_DIR", str(state)) if p in of_task)


def _leaders(task: str, state: Path) -> list[int]:
    """Live session leaders (the runs' own processes, not their children) of `task`."""
    out = []
    for pid in _alive(task, state):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == pid:
                out.append(pid)
    return out


def _crash(t: Torch) -> None:
    """kill -9 the foreground daemon and wait until it is gone (its runs stay)."""
    assert t.proc is not None
    t.proc.kill()
    t.proc.wait(timeout=10)
    t.proc = None


def _history(t: Torch, *tasks: str) -> list[dict[str, object]]:
    r = t.run("history", *tasks, "--json", "--all")
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


@pytest.fixture
def crashed(torch_daemon: Torch) -> Torch:
    """A daemon with 2 keeper copies and a slow run going, killed with -9; its runs left alive."""
    t = torch_daemon
    t.write(KEEPER.format(starts=t.tmp / "starts", sleep=60))
    t.start()
    wait_until(lambda: len(_leaders("keeper", t.state)) == 2 and len(_leaders("slow", t.state)) == 1, 20,
               what="2 keeper copies and 1 slow run")
    time.sleep(1.5)  # long enough for the history writer to commit the runs' rows
    _crash(t)
    return t


def test_adopted_runs_count_for_max_instances_across_restarts(crashed: Torch) -> None:
    t = crashed
    keepers = _leaders("keeper", t.state)
    slow = _leaders("slow", t.state)
    assert len(keepers) == 2 and len(slow) == 1
    t.start()
    adopted = t.wait_event("run.adopted", count=3)
    assert sorted(e["pid"] for e in adopted) == sorted([*keepers, *slow])
    assert all(e["recorded"] for e in adopted)
    # For a few seconds: no third keeper, no second slow run; the slow fires are skipped, naming it.
    slow_run = next(e["run_id"] for e in adopted if e["task"] == "slow")
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        assert _leaders("keeper", t.state) == keepers
        assert _leaders("slow", t.state) == slow
        time.sleep(0.1)
    status = json.loads(t.run("status", "--json").stdout)
    assert sorted(r["pid"] for r in status["adopted_runs"]) == sorted([*keepers, *slow])
    skipped = t.events("skipped", task="slow", reason="max_instances")
    assert skipped and all(e["blocking_run"] == slow_run for e in skipped)
    assert len((t.tmp / "starts").read_text().split()) == 1  # no new slow run started
    # Crash again, and again: still two keepers, never more.
    for _ in range(2):
        _crash(t)
        t.start()
        wait_until(lambda: len(t.events("daemon.start")) and t.find("run.adopted", pid=keepers[0]), 20)
        for _ in range(20):
            assert len(_leaders("keeper", t.state)) <= 2
            time.sleep(0.05)
    assert _leaders("keeper", t.state) == keepers
    # The stop stops adopted runs too: nothing is left.
    assert t.stop() == 0
    wait_until(lambda: not _alive("keeper", t.state) and not _alive("slow", t.state), 20,
               what="the adopted runs stopped")
    ended = {r["run_id"]: r for r in _history(t, "keeper", "slow") if r["status"] != "skipped"}
    assert {ended[e["run_id"]]["status"] for e in adopted} == {"killed"}


def test_an_adopted_daemon_copy_that_dies_is_replaced_up_to_max_instances(crashed: Torch) -> None:
    t = crashed
    keepers = _leaders("keeper", t.state)
    t.start()
    adopted = t.wait_event("run.adopted", count=3)
    gone = next(e for e in adopted if e["pid"] == keepers[0])
    os.kill(keepers[0], signal.SIGKILL)
    end = t.wait_event("run.end", run_id=gone["run_id"])[0]
    # Not our child: its exit status cannot be known; it is recorded, and a new copy takes its place.
    assert end["status"] == "lost" and "exit status cannot be known" in end["error"]
    wait_until(lambda: len(_leaders("keeper", t.state)) == 2 and keepers[0] not in _leaders("keeper", t.state), 20,
               what="a replacement keeper")
    time.sleep(1)
    assert len(_leaders("keeper", t.state)) == 2
    wait_until(lambda: {r["run_id"]: r["status"] for r in _history(t, "keeper")}.get(gone["run_id"]) == "lost", 20,
               what="the adopted copy's row closed as lost")


def test_output_printed_after_the_restart_is_recorded(torch_daemon: Torch) -> None:
    t = torch_daemon
    t.write(KEEPER.format(starts=t.tmp / "starts", sleep=8))
    t.start()
    first = t.wait_event("run.start", task="slow")[0]
    _crash(t)
    t.start()
    adopted = t.wait_event("run.adopted", run_id=first["run_id"])[0]
    assert adopted["output"] is True
    out = t.wait_event("run.output", timeout=20, run_id=first["run_id"])[0]
    assert out["line"] == "after the restart"
    assert t.wait_event("run.end", run_id=first["run_id"])[0]["status"] == "lost"
    # The history has it once its writer committed (within a second or so).
    wait_until(lambda: "after the restart" in t.run("logs", "slow", "--run", first["run_id"]).stdout, 20,
               what="the output in `torch logs`")


def test_runs_found_dead_are_closed_as_lost(crashed: Torch) -> None:
    t = crashed
    leaders = [*_leaders("keeper", t.state), *_leaders("slow", t.state)]
    for pid in _alive("keeper", t.state) + _alive("slow", t.state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _alive("keeper", t.state) and not _alive("slow", t.state), 10)
    t.start()
    lost = t.wait_event("run.lost", count=3)
    assert sorted(e["pid"] for e in lost) == sorted(leaders)
    assert not t.events("run.adopted")
    wait_until(lambda: len(_leaders("keeper", t.state)) == 2, 20, what="two new keepers")
    ids = {e["run_id"] for e in lost}
    wait_until(lambda: {r["status"] for r in _history(t, "keeper", "slow") if r["run_id"] in ids} == {"lost"}, 20,
               what="the rows closed as lost")


def test_a_reused_pid_is_not_adopted(torch_daemon: Torch) -> None:
    """A row whose pid now belongs to another process (other start time) is lost, that process untouched."""
    t = torch_daemon
    t.write(KEEPER.format(starts=t.tmp / "starts", sleep=60))
    t.start()
    wait_until(lambda: len(_leaders("keeper", t.state)) == 2, 20)
    time.sleep(1.5)
    t.stop()
    # Forge what a crash would have left: a `running` row naming a live process that is no run (ours).
    db = sqlite3.connect(t.state / "history.db")
    with db:
        db.execute("INSERT INTO runs (run_id, task, kind, trigger, started_at, pid, proc_start, status) "
                   "VALUES ('forged-1', 'keeper', 'run', 'restart', ?, ?, 1, 'running')", (time.time(), os.getpid()))
    db.close()
    t.start()
    lost = t.wait_event("run.lost", run_id="forged-1")[0]
    assert lost["pid"] == os.getpid()
    assert not t.events("run.adopted")
    wait_until(lambda: len(_leaders("keeper", t.state)) == 2, 20)
    t.stop()  # and we are still alive to say so


def test_without_history_runs_are_found_by_their_run_key(torch_daemon: Torch) -> None:
    t = torch_daemon
    t.write(KEEPER.format(starts=t.tmp / "starts", sleep=60))
    t.start("--no-history")
    wait_until(lambda: len(_leaders("keeper", t.state)) == 2, 20)
    keepers = _leaders("keeper", t.state)
    _crash(t)
    t.start("--no-history")
    adopted = t.wait_event("run.adopted", count=2, task="keeper")
    assert sorted(e["pid"] for e in adopted) == keepers and not any(e["recorded"] for e in adopted)
    time.sleep(2)
    assert _leaders("keeper", t.state) == keepers
    assert t.stop() == 0
    wait_until(lambda: not _alive("keeper", t.state), 20)
