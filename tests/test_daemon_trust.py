"""The real daemon refuses task files and state directories another local user could steer."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gotorch.cli import cli
from tests.conftest import TICK, TORCH, Torch, wait_until

pytestmark = pytest.mark.integration
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a second uid's files need root to chown")
OTHER = 4242  # the hostile local user; chown and seteuid need no passwd entry

EVIL = TICK + """\
  - name: evil
    schedule: "* * * * * *"
    command: touch {marker}
"""


def _conf_dir(parent: Path) -> Path:
    d = parent / "conf"
    d.mkdir(mode=0o755)
    return d


@needs_root
def test_task_file_behind_a_user_owned_directory_is_refused_by_check_and_start(torch_daemon: Torch) -> None:
    # A root-owned directory inside the user's home: he can swap it (RENAME_EXCHANGE) for his own.
    home = torch_daemon.tmp / "home"
    home.mkdir(mode=0o755)
    conf = _conf_dir(home)
    cfg = conf / "tasks.yaml"
    cfg.write_text(TICK.format(out=torch_daemon.tmp / "out"))
    os.chown(home, OTHER, OTHER)
    for args in (("check", str(cfg)), ("start", "-c", str(cfg))):
        r = torch_daemon.run(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert f"{home}: directory owned by uid {OTHER}, not root" in r.stderr
    assert not (torch_daemon.state / "torch.pid").exists()


@needs_root
def test_symlinked_task_file_into_a_user_owned_directory_is_refused(torch_daemon: Torch) -> None:
    user_dir = torch_daemon.tmp / "user"
    user_dir.mkdir(mode=0o755)
    target = user_dir / "tasks.yaml"
    target.write_text(TICK.format(out=torch_daemon.tmp / "out"))  # root-owned, but he can swap it
    os.chown(user_dir, OTHER, OTHER)
    torch_daemon.config.symlink_to(target)
    for args in (("check", str(torch_daemon.config)), ("start", "-c", str(torch_daemon.config))):
        r = torch_daemon.run(*args)
        assert r.returncode == 1 and f"{user_dir}: directory owned by uid {OTHER}" in r.stderr, r.stderr


def test_reload_refuses_a_file_whose_directory_became_writable(torch_daemon: Torch) -> None:
    conf = _conf_dir(torch_daemon.tmp)
    cfg = conf / "tasks.yaml"
    out, marker = torch_daemon.tmp / "out", torch_daemon.tmp / "marker"
    cfg.write_text(TICK.format(out=out))
    torch_daemon.config = cfg
    assert torch_daemon.start_bg().returncode == 0
    wait_until(out.exists, 10, what="first tick")
    conf.chmod(0o777)  # anyone may now replace tasks.yaml: the same rule holds for every reload
    cfg.write_text(EVIL.format(out=out, marker=marker))
    (failed,) = torch_daemon.wait_event("reload.failed")
    assert any("writable by others" in e for e in failed["errors"]), failed
    lines = len(out.read_text().split())
    wait_until(lambda: len(out.read_text().split()) >= lines + 2, 10, what="old config still firing")
    assert not marker.exists()
    st = torch_daemon.run("status", "--json")
    assert '"generation": 1' in st.stdout
    assert torch_daemon.run("stop").returncode == 0


@needs_root
def test_state_directory_another_user_controls_is_refused(torch_daemon: Torch) -> None:
    torch_daemon.write(TICK.format(out=torch_daemon.tmp / "out"))
    torch_daemon.state.mkdir(mode=0o750)
    os.chown(torch_daemon.state, OTHER, OTHER)
    r = torch_daemon.start_bg()
    assert r.returncode == 1
    assert "cannot use state directory" in r.stderr and f"owned by uid {OTHER}" in r.stderr
    # Its parent writable by a group is as bad: the group could rename it away.
    shared = torch_daemon.tmp / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    r = torch_daemon.run("start", "-c", str(torch_daemon.config), "--state-dir", str(shared / "state"))
    assert r.returncode == 1 and "group-writable" in r.stderr, r.stderr
    assert not (shared / "state").exists()


def test_state_directories_are_created_0750_whatever_the_umask(torch_daemon: Torch) -> None:
    torch_daemon.write(TICK.format(out=torch_daemon.tmp / "out"))
    state = torch_daemon.tmp / "a" / "b" / "state"
    env = torch_daemon.env(TORCH_STATE_DIR=str(state))
    r = subprocess.run(["sh", "-c", 'umask 000; exec "$@"', "sh", *TORCH, "start", "-c",
                        str(torch_daemon.config)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        for d in (torch_daemon.tmp / "a", torch_daemon.tmp / "a" / "b", state):
            assert d.stat().st_mode & 0o777 == 0o750, d
    finally:
        subprocess.run([*TORCH, "stop"], env=env, timeout=60)


def test_log_reopen_never_writes_through_a_planted_symlink(torch_daemon: Torch) -> None:
    # The defect: after a rotation, the reopen followed a symlink put where torch.log was, and root
    # appended log lines and task output to a root-only file.
    secret = torch_daemon.tmp / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    torch_daemon.write(TICK.format(out=torch_daemon.tmp / "out"))
    assert torch_daemon.start_bg().returncode == 0
    torch_daemon.wait_event("run.end", count=1)
    log = torch_daemon.state / "torch.log"
    os.rename(log, torch_daemon.state / "torch.log.1")
    log.symlink_to(secret)
    time.sleep(3)  # three ticks' worth of events, each of which notices the file moved
    assert secret.read_text() == "root only\n"
    rotated = (torch_daemon.state / "torch.log.1").read_text()
    assert rotated.count('"run.end"') >= 3  # events kept going to the file already open
    assert rotated.count('"log.reopen_refused"') == 1  # said once, not at every event
    log.unlink()
    wait_until(lambda: log.exists() and '"run.end"' in log.read_text(), 10, what="a fresh torch.log")
    assert log.stat().st_mode & 0o777 == 0o640 and not log.is_symlink()
    assert torch_daemon.run("stop").returncode == 0


@contextlib.contextmanager
def _as_uid(uid: int) -> Iterator[None]:
    os.setegid(uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@needs_root
def test_status_without_permission_to_read_the_pidfile_exits_4(torch_daemon: Torch) -> None:
    torch_daemon.write(TICK.format(out=torch_daemon.tmp / "out"))
    assert torch_daemon.start_bg().returncode == 0
    try:
        # The state directory must be reachable for the question to be about the pidfile itself.
        for d in (torch_daemon.tmp, torch_daemon.tmp.parent, torch_daemon.tmp.parent.parent):
            d.chmod(d.stat().st_mode | 0o005)
        torch_daemon.state.chmod(0o755)
        runner = CliRunner()
        with _as_uid(OTHER):
            r = runner.invoke(cli, ["status", "--state-dir", str(torch_daemon.state)])
        assert r.exit_code == 4, r.output
        assert "permission denied" in r.output and "not running" not in r.output
    finally:
        torch_daemon.state.chmod(0o750)
    assert torch_daemon.run("status").returncode == 0
    assert torch_daemon.run("stop").returncode == 0


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir(mode=0o755)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill it: {r.stderr.strip()}")
    try:
        (mnt / "state").mkdir(mode=0o750)
        fd = os.open(mnt / "fill", os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_start_on_a_full_disk_prints_the_reason(torch_daemon: Torch, full_disk: Path) -> None:
    torch_daemon.write(TICK.format(out=torch_daemon.tmp / "out"))
    r = torch_daemon.run("start", "-c", str(torch_daemon.config), TORCH_STATE_DIR=str(full_disk / "state"))
    assert r.returncode == 1
    assert "No space left on device" in r.stderr, r.stderr
    assert "see its log" not in r.stderr


def test_transient_reload_failure_is_retried_with_backoff(torch_daemon: Torch) -> None:
    out = torch_daemon.tmp / "out"
    torch_daemon.write(TICK.format(out=out))
    assert torch_daemon.start_bg().returncode == 0
    text = torch_daemon.config.read_text()
    torch_daemon.config.unlink()  # a checkout that removes, then re-creates, the file; the watcher sees it
    failed = torch_daemon.wait_event("reload.failed", count=3, timeout=30)
    assert all(f["transient"] for f in failed[:3])
    assert [f["retry_in_s"] for f in failed[:3]] == [1.0, 2.0, 4.0]
    assert [f["trigger"] for f in failed[:3]] == ["file", "retry", "retry"]
    # Put it back where no watcher event can see it: only the retry can pick it up.
    with open(torch_daemon.config.with_suffix(".new"), "w") as f:
        f.write(text + '  - {name: back, schedule: "0 0 0 1 1 *", command: "true"}\n')
    os.rename(torch_daemon.config.with_suffix(".new"), torch_daemon.config)
    (applied,) = torch_daemon.wait_event("reload.applied", timeout=30)
    assert applied["added"] == ["back"]
    assert torch_daemon.run("stop").returncode == 0
