"""Daemon lifecycle against the real daemon: start/stop/status/reload, pidfile, signals, hot reload."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import TICK, Torch, describe_pids, wait_until, zombie_children

pytestmark = pytest.mark.integration



def fires_after(t: Torch, out: Path, since: float, n: int, timeout: float = 20) -> None:
    """Wait until `out` holds at least `n` fires scheduled after `since` (epoch seconds)."""
    def count() -> int:
        if not out.exists():
            return 0
        stamps = [time.mktime(time.strptime(x, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
                  for x in out.read_text().split()]
        return sum(1 for s in stamps if s > since)
    wait_until(lambda: count() >= n, timeout, what=f"{n} fires after {since}")


def test_start_stop_status_and_double_start(torch_daemon: Torch) -> None:
    torch_daemon.write(TICK.format(out=torch_daemon.tmp / "out"))
    r = torch_daemon.start_bg()
    assert r.returncode == 0, r.stderr
    pid = torch_daemon.pid()
    assert pid is not None and f"pid {pid}" in r.stdout
    assert (torch_daemon.state / "torch.pid").stat().st_mode & 0o777 == 0o640

    second = torch_daemon.start_bg()
    assert second.returncode == 1
    assert f"pid {pid}" in second.stderr

    st = torch_daemon.run("status", "--json")
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["running"] is True and data["pid"] == pid and data["generation"] == 1
    assert [t["name"] for t in data["tasks"]] == ["tick"]
    assert data["config"] == str(torch_daemon.config)

    stop = torch_daemon.run("stop")
    assert stop.returncode == 0, stop.stderr
    assert not (torch_daemon.state / "torch.pid").exists()
    assert not (torch_daemon.state / "torch.sock").exists()
    assert torch_daemon.run("status").returncode == 3
    again = torch_daemon.run("stop")
    assert again.returncode == 0 and "not running" in again.stdout


def test_kill_9_then_start_takes_over_stale_pidfile(torch_daemon: Torch) -> None:
    torch_daemon.write(TICK.format(out=torch_daemon.tmp / "out"))
    assert torch_daemon.start_bg().returncode == 0
    pid = torch_daemon.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes()[:80]
               .rsplit(b")", 1)[1][:3], 10, what="daemon killed")
    assert (torch_daemon.state / "torch.pid").exists()  # stale: left behind by kill -9
    r = torch_daemon.start_bg()
    assert r.returncode == 0, r.stderr
    assert "stale pidfile" in r.stderr
    assert torch_daemon.pid() not in (None, pid)
    assert torch_daemon.run("stop").returncode == 0


def test_start_reports_daemon_startup_failure(torch_daemon: Torch, tmp_path: Path) -> None:
    torch_daemon.write(TICK.format(out=tmp_path / "out"))
    # The log path is a directory: only the daemon itself can find out it cannot open it.
    (torch_daemon.state).mkdir()
    (torch_daemon.state / "torch.log").mkdir()
    r = torch_daemon.start_bg()
    assert r.returncode == 1
    assert "cannot open log" in r.stderr
    assert not (torch_daemon.state / "torch.pid").exists()


def test_start_refuses_invalid_file_and_starts_nothing(torch_daemon: Torch) -> None:
    torch_daemon.write('version: 1\ntasks:\n  - {name: x, schedule: "*/5 * * * *", command: "true"}\n')
    r = torch_daemon.start_bg()
    assert r.returncode == 1
    assert "tasks.yaml:3:" in r.stderr
    assert not (torch_daemon.state / "torch.pid").exists()


def test_bad_reload_keeps_old_tasks_firing(torch_daemon: Torch) -> None:
    out = torch_daemon.tmp / "out"
    torch_daemon.write(TICK.format(out=out))
    torch_daemon.start()
    torch_daemon.wait_event("run.end", task="tick")
    # 1: broken file + SIGUSR2
    torch_daemon.config.write_text("version: 1\ntasks:\n  - name: tick\n    schedule: */1 * * * * *\n")
    assert torch_daemon.proc is not None
    torch_daemon.proc.send_signal(signal.SIGUSR2)
    failed = torch_daemon.wait_event("reload.failed")
    assert any("tasks.yaml:4:" in e and "quote the schedule" in e for e in failed[0]["errors"])
    st = json.loads(torch_daemon.run("status", "--json").stdout)
    assert st["generation"] == 1 and st["last_reload"]["ok"] is False
    assert "tasks.yaml:4:" in st["last_reload"]["errors"][0]["message"]
    since = time.time()
    fires_after(torch_daemon, out, since, 3)
    # 2: `torch reload` refuses locally and leaves the daemon alone
    r = torch_daemon.run("reload")
    assert r.returncode == 1 and "tasks.yaml:4:" in r.stderr
    # 3: the file deleted (half-way through a deploy): still the old config
    torch_daemon.config.unlink()
    wait_until(lambda: len(torch_daemon.events("reload.failed")) >= 2, 20, what="second reload.failed")
    fires_after(torch_daemon, out, time.time(), 2)
    assert torch_daemon.proc.poll() is None
    assert torch_daemon.stop() == 0


def _reloads(t: Torch) -> int:
    return len(t.events("reload.applied")) + len(t.events("reload.failed")) + len(t.events("reload.unchanged"))


def test_edits_cause_exactly_one_reload_each(torch_daemon: Torch) -> None:
    out = torch_daemon.tmp / "out"
    base = TICK.format(out=out)
    torch_daemon.write(base)
    torch_daemon.start()
    time.sleep(1)
    assert _reloads(torch_daemon) == 0

    # in-place edit (append)
    with open(torch_daemon.config, "a") as f:
        f.write('  - {name: one, schedule: "0 0 0 1 1 *", command: "true"}\n')
    torch_daemon.wait_event("reload.applied", count=1)
    time.sleep(1.5)
    assert _reloads(torch_daemon) == 1
    assert torch_daemon.events("reload.applied")[0]["added"] == ["one"]

    # rename-over (editors, git checkout)
    tmp = torch_daemon.config.with_name(".tasks.yaml.swp")
    tmp.write_text(base + '  - {name: two, schedule: "0 0 0 1 1 *", command: "true"}\n')
    os.rename(tmp, torch_daemon.config)
    torch_daemon.wait_event("reload.applied", count=2)
    time.sleep(1.5)
    assert _reloads(torch_daemon) == 2
    second = torch_daemon.events("reload.applied")[1]
    assert (second["added"], second["removed"], second["generation"]) == (["two"], ["one"], 3)

    # delete + create
    torch_daemon.config.unlink()
    torch_daemon.config.write_text(base)
    torch_daemon.wait_event("reload.applied", count=3)
    time.sleep(1.5)
    assert _reloads(torch_daemon) == 3
    assert torch_daemon.stop() == 0


def test_reload_command_and_diff_semantics(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: keep, type: daemon, command: [sleep, "1000"]}
      - {name: drop, type: daemon, command: [sleep, "1001"]}
      - {name: alter, type: daemon, command: [sleep, "1002"]}
      - {name: long, schedule: "@reboot", command: [sleep, "1003"]}
    """)
    torch_daemon.start_bg("--stop-timeout", "3")
    wait_until(lambda: len(torch_daemon.run_pids()) >= 4, 20, what="4 runs")
    keep_pid = torch_daemon.find("run.start", task="keep")["pid"]  # type: ignore[index]
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: keep, type: daemon, command: [sleep, "1000"]}
      - {name: alter, type: daemon, command: [sleep, "1004"]}
      - {name: fresh, schedule: "* * * * * *", command: "true"}
    """)
    r = torch_daemon.run("reload")
    assert r.returncode == 0, r.stderr
    assert "+fresh" in r.stdout and "-drop" in r.stdout and "-long" in r.stdout and "~alter" in r.stdout
    torch_daemon.wait_event("run.end", task="drop")
    torch_daemon.wait_event("run.start", task="alter", count=2)
    assert torch_daemon.find("daemon.restart", task="alter") is None  # replaced, not crashed: no backoff
    torch_daemon.wait_event("run.start", task="fresh")
    # unchanged daemon task: same process; removed cron task: its running instance finishes on its own
    assert torch_daemon.find("run.end", task="keep") is None
    assert torch_daemon.find("run.end", task="long") is None
    assert Path(f"/proc/{keep_pid}").exists()
    st = json.loads(torch_daemon.run("status", "--json").stdout)
    assert st["generation"] == 2
    assert st["last_change"] == {"added": ["fresh"], "removed": ["drop", "long"], "changed": ["alter"]}
    assert sorted(t["name"] for t in st["tasks"]) == ["alter", "fresh", "keep"]
    # reload with no change: no new generation
    r = torch_daemon.run("reload")
    assert r.returncode == 0 and "no changes" in r.stdout
    assert torch_daemon.run("stop").returncode == 0


def test_sigterm_leaves_no_process_and_no_pidfile(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - name: stubborn
        schedule: "@reboot"
        command: trap '' TERM; (trap '' TERM; sleep 1000) & sleep 1000 & setsid sleep 1000 & wait
    """)
    torch_daemon.start_bg("--stop-timeout", "2")
    pid = torch_daemon.pid()
    assert pid is not None
    wait_until(lambda: len(torch_daemon.run_pids()) >= 4, 20, what=lambda: describe_pids(torch_daemon.run_pids()))
    assert zombie_children(pid) == []
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or zombie_children(os.getpid()), 30, what="daemon exit")
    assert not (torch_daemon.state / "torch.pid").exists()
    assert torch_daemon.run_pids() == [], describe_pids(torch_daemon.run_pids())
    ends = torch_daemon.events("run.end", task="stubborn")
    assert len(ends) == 1 and ends[0]["status"] == "killed"


def test_no_zombies_while_running(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: orphaner, schedule: "* * * * * *", command: "(sleep 0.2 &) ; (setsid sleep 0.3 &)"}
    """)
    torch_daemon.start_bg()
    pid = torch_daemon.pid()
    assert pid is not None
    torch_daemon.wait_event("run.end", task="orphaner", count=3)
    for _ in range(10):
        time.sleep(0.3)
        # A child may be caught in the instant between its exit and the SIGCHLD being handled;
        # a zombie that is still there a second later was never reaped.
        seen = zombie_children(pid)
        if seen:
            time.sleep(1.0)
            stuck = set(seen) & set(zombie_children(pid))
            assert not stuck, describe_pids(sorted(stuck))
    assert torch_daemon.run("stop").returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="root's stricter rule (no group-writable file) needs root")
def test_root_refuses_group_writable_file(torch_daemon: Torch) -> None:
    torch_daemon.write(TICK.format(out=torch_daemon.tmp / "out"))
    torch_daemon.config.chmod(0o664)
    r = torch_daemon.start_bg()
    assert r.returncode == 1
    assert "group-writable" in r.stderr and "chmod g-w" in r.stderr
    assert not (torch_daemon.state / "torch.pid").exists()
    # and a reload into a group-writable file is refused too, keeping the old config
    torch_daemon.config.chmod(0o644)
    torch_daemon.start()
    torch_daemon.config.chmod(0o664)
    assert torch_daemon.proc is not None
    torch_daemon.proc.send_signal(signal.SIGUSR2)
    failed = torch_daemon.wait_event("reload.failed")
    assert "group-writable" in failed[0]["errors"][0]
    assert torch_daemon.stop() == 0


def test_anyone_refuses_world_writable_file(torch_daemon: Torch) -> None:
    torch_daemon.write(TICK.format(out=torch_daemon.tmp / "out"))
    torch_daemon.config.chmod(0o646)
    r = torch_daemon.start_bg()
    assert r.returncode == 1 and "writable by others" in r.stderr


def test_sighup_reopens_log(torch_daemon: Torch) -> None:
    torch_daemon.write(TICK.format(out=torch_daemon.tmp / "out"))
    assert torch_daemon.start_bg().returncode == 0
    log = torch_daemon.state / "torch.log"
    rotated = log.with_suffix(".log.1")
    log.rename(rotated)
    pid = torch_daemon.pid()
    assert pid is not None
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: log.exists() and "run.end" in log.read_text(), 10, what="new log written")
    assert torch_daemon.run("stop").returncode == 0


def test_second_sigterm_kills_at_once(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: deaf, schedule: "@reboot", command: "trap '' TERM; sleep 1000 & wait; wait"}
    """)
    torch_daemon.start("--stop-timeout", "60")
    wait_until(lambda: len(torch_daemon.run_pids()) >= 2, 20, what="run up")
    assert torch_daemon.proc is not None
    torch_daemon.proc.send_signal(signal.SIGTERM)
    torch_daemon.wait_event("stop.requested")
    time.sleep(0.5)
    assert torch_daemon.proc.poll() is None  # waiting out the 60 s stop timeout
    t0 = time.monotonic()
    assert torch_daemon.stop(signal.SIGTERM, timeout=20) == 0
    assert time.monotonic() - t0 < 10
    assert torch_daemon.find("stop.forced") is not None
    assert torch_daemon.run_pids() == []


def test_log_file_is_private_and_not_followed_through_symlinks(torch_daemon: Torch, tmp_path: Path) -> None:
    torch_daemon.write(TICK.format(out=tmp_path / "out"))
    torch_daemon.state.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (torch_daemon.state / "torch.log").symlink_to(victim)
    r = torch_daemon.start_bg()
    assert r.returncode == 1 and "cannot open log" in r.stderr
    assert victim.read_text() == "keep me\n"
    (torch_daemon.state / "torch.log").unlink()
    assert torch_daemon.start_bg().returncode == 0
    assert (torch_daemon.state / "torch.log").stat().st_mode & 0o777 == 0o640
    assert torch_daemon.run("stop").returncode == 0


def test_symlinked_task_file_edit_reloads(torch_daemon: Torch, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    real = repo / "tasks.yaml"
    real.write_text(TICK.format(out=tmp_path / "out"))
    torch_daemon.config.symlink_to(real)
    torch_daemon.start()
    with open(real, "a") as f:
        f.write('  - {name: via-link, schedule: "0 0 0 1 1 *", command: "true"}\n')
    (applied,) = torch_daemon.wait_event("reload.applied")
    assert applied["added"] == ["via-link"]
    assert torch_daemon.stop() == 0


def test_startup_failure_starts_no_runs(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: keeper, type: daemon, command: [sleep, "1000"]}
      - {name: boot, schedule: "@reboot", command: [sleep, "999"]}
    """)
    torch_daemon.state.mkdir()
    (torch_daemon.state / "torch.sock").write_text("not a socket")
    r = torch_daemon.start_bg()
    assert r.returncode == 1, r.stdout
    assert "torch.sock" in r.stderr
    time.sleep(1)
    assert torch_daemon.run_pids() == [], describe_pids(torch_daemon.run_pids())
    assert not (torch_daemon.state / "torch.pid").exists()


def test_jittered_fire_cancelled_by_reload_is_reported(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: jit, schedule: "* * * * * *", command: "true", jitter: 1h}
    """)
    torch_daemon.start()
    torch_daemon.wait_event("jitter", task="jit")
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: jit, schedule: "* * * * * *", command: "true ", jitter: 1h}
    """)
    torch_daemon.wait_event("reload.applied")
    skipped = torch_daemon.wait_event("skipped", task="jit", reason="reload")
    assert skipped[0]["scheduled_at"] == torch_daemon.find("jitter", task="jit")["scheduled_at"]  # type: ignore[index]
    torch_daemon.wait_event("jitter", task="jit", count=2)  # the new definition's first fire, waiting
    assert torch_daemon.stop() == 0
    assert torch_daemon.find("skipped", task="jit", reason="stop") is not None


def test_reload_of_unchanged_file_and_addresses_is_no_new_generation(torch_daemon: Torch) -> None:
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: only-here, schedule: "0 0 0 1 1 *", command: "true", ips: [10.77.0.1]}
    """)
    torch_daemon.start(TORCH_HOST_IPS="10.77.0.2")
    assert torch_daemon.find("task.not_here", task="only-here")
    # Same bytes, same (overridden) addresses: no new generation. The netns test covers a changed address.
    assert torch_daemon.proc is not None
    torch_daemon.proc.send_signal(signal.SIGUSR2)
    torch_daemon.wait_event("reload.unchanged")
    assert torch_daemon.stop() == 0
