"""Security requirements of a root cron daemon, each against the real daemon and real processes.

1. A task file another user could change (writable by group or others, owned by someone else, or
   reached through a directory or symlinked directory they control) is refused by `check`, `start`
   and every reload. A task names no other file for torch to read: no includes, env or password
   files (hooks are commands, run like `command:`). (The `fleet:` block being written in
   gotorch/fleet names TLS and password files; those are not covered here.)
2. No path the daemon writes (pidfile, log, control socket, history database and its -wal, -shm and
   -journal files, pauses.json, the hooks directory) is written through a symlink, whether it was
   planted before the start or swapped in while the daemon runs. The target is always a root-only
   file (or directory) whose content and inode must come out untouched, or a dangling link whose
   target must not be created.
3. (The control socket refusing another uid is tested in test_control.py and test_control_commands.py.)
4. `user:` drops every privilege: ids, groups, capabilities, the daemon's environment and its
   descriptors; the run can neither signal nor trace the daemon.
5. YAML tags never build objects or read files: each is refused with a located error and nothing runs.

Tests that need a second uid skip unless run as root; the account tests also need useradd.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gotorch.accounts import clear as clear_account_cache
from tests.conftest import TORCH, Torch, wait_until

pytestmark = pytest.mark.integration

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="a second uid's files and processes need root")
OTHER = 4242  # the hostile local user; chown and setuid need no passwd entry
SECRET = b"root only: torch must never write here\n"

TICK = """\
version: 1
tasks:
  - name: tick
    schedule: "* * * * * *"
    command: "true"
"""


# --- the planted target: a root-only file whose inode must come out untouched ------------------------


@dataclass
class Target:
    """A root-owned 0600 file (or a directory holding one) that symlinks are planted to point at."""

    path: Path
    before: tuple[Any, ...]

    @classmethod
    def file(cls, where: Path, name: str = "secret") -> Target:
        path = where / name
        path.write_bytes(SECRET)
        path.chmod(0o600)
        return cls(path, _fingerprint(path))

    @classmethod
    def directory(cls, where: Path, name: str = "secret-dir") -> Target:
        path = where / name
        path.mkdir(mode=0o700)
        (path / "secret").write_bytes(SECRET)
        (path / "secret").chmod(0o600)
        return cls(path, _fingerprint(path))

    def assert_untouched(self) -> None:
        assert _fingerprint(self.path) == self.before, f"{self.path} was changed through a symlink"


def _fingerprint(path: Path) -> tuple[Any, ...]:
    """Everything a write, chmod, chown, link or new entry would change (ctime catches the inode ones)."""
    st = path.lstat()
    if path.is_dir():
        content: Any = sorted((p.name, p.read_bytes()) for p in path.iterdir())
    else:
        content = path.read_bytes()
    return (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            content)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the state directory where the symlinks' targets live."""
    d = tmp_path / "outside"
    d.mkdir(mode=0o700)
    return d


def _state(t: Torch) -> Path:
    t.state.mkdir(mode=0o750, exist_ok=True)
    t.state.chmod(0o750)
    return t.state


def _history_errors(t: Torch) -> list[str]:
    return [str(e.get("message", "")) for e in t.events("history.error")]


# --- 1. task files another user could change ------------------------------------------------------

EVIL = """\
version: 1
tasks:
  - name: evil
    schedule: "* * * * * *"
    command: touch {marker}
"""


def _refused_everywhere(t: Torch, cfg: Path, words: str, marker: Path) -> None:
    """`check` and `start` both refuse `cfg` naming `words`; nothing started and nothing ran."""
    for args in (("check", str(cfg)), ("start", "-c", str(cfg))):
        r = t.run(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert words in r.stderr, (args, r.stderr)
    assert not (t.state / "torch.pid").exists()
    time.sleep(1.2)  # a second in which a wrongly started daemon would have fired
    assert not marker.exists()


@pytest.mark.parametrize("mode, words", [(0o664, "is group-writable (mode 0664); chmod g-w"),
                                         (0o646, "is writable by others (mode 0646); chmod o-w"),
                                         (0o666, "group-writable and writable by others")])
def test_task_file_writable_by_group_or_others_is_refused_by_check_and_start(
        torch_daemon: Torch, mode: int, words: str) -> None:
    marker = torch_daemon.tmp / "marker"
    cfg = torch_daemon.write(EVIL.format(marker=marker))
    cfg.chmod(mode)
    _refused_everywhere(torch_daemon, cfg, words, marker)


@needs_root
def test_task_file_owned_by_another_user_is_refused_by_check_and_start(torch_daemon: Torch) -> None:
    marker = torch_daemon.tmp / "marker"
    cfg = torch_daemon.write(EVIL.format(marker=marker))
    cfg.chmod(0o644)
    os.chown(cfg, OTHER, OTHER)
    _refused_everywhere(torch_daemon, cfg, f"owned by uid {OTHER}, not root", marker)


def _swap_in(cfg: Path, text: str, mode: int, owner: int | None) -> None:
    """Replace `cfg` in one rename by a file already carrying `mode` and `owner`: no reload can catch
    the new text while it still looked trusted."""
    new = cfg.with_name(cfg.name + ".new")
    new.write_text(text)
    new.chmod(mode)
    if owner is not None:
        os.chown(new, owner, owner)
    os.rename(new, cfg)


@pytest.mark.parametrize("mode, owner, words", [
    (0o664, None, "is group-writable"),
    (0o646, None, "is writable by others"),
    pytest.param(0o644, OTHER, f"owned by uid {OTHER}", marks=needs_root),
])
def test_a_task_file_that_became_writable_or_foreign_is_never_reloaded(
        torch_daemon: Torch, mode: int, owner: int | None, words: str) -> None:
    marker = torch_daemon.tmp / "marker"
    torch_daemon.write(TICK)
    torch_daemon.start()
    torch_daemon.wait_event("run.end", task="tick")
    _swap_in(torch_daemon.config, EVIL.format(marker=marker), mode, owner)
    failed = torch_daemon.wait_event("reload.failed")[0]  # the watcher saw the rename
    assert any(words in e for e in failed["errors"]), failed
    assert torch_daemon.proc is not None
    torch_daemon.proc.send_signal(signal.SIGUSR2)  # asked for explicitly: the same answer
    torch_daemon.wait_event("reload.failed", trigger="SIGUSR2")
    time.sleep(1.2)
    assert not marker.exists()
    assert not torch_daemon.events("reload.applied")
    status = json.loads(torch_daemon.run("status", "--json").stdout)
    assert status["generation"] == 1
    assert torch_daemon.stop() == 0


@pytest.fixture
def linked_conf(torch_daemon: Torch) -> tuple[Path, Path]:
    """`safe/conf` -> `real` (a directory of its own), and the task file path through the link."""
    safe = torch_daemon.tmp / "safe"
    safe.mkdir(mode=0o755)
    real = torch_daemon.tmp / "real"
    real.mkdir(mode=0o755)
    (safe / "conf").symlink_to(real)
    cfg = real / "tasks.yaml"
    cfg.write_text(EVIL.format(marker=torch_daemon.tmp / "marker"))
    cfg.chmod(0o644)
    return safe / "conf" / "tasks.yaml", real


def test_task_file_through_a_symlinked_directory_is_read_when_the_target_is_safe(
        torch_daemon: Torch, linked_conf: tuple[Path, Path]) -> None:
    # The control for the refusals below: the link itself is no reason to refuse.
    path, _real = linked_conf
    r = torch_daemon.run("check", str(path))
    assert r.returncode == 0, r.stderr


def test_task_file_through_a_symlinked_directory_into_a_writable_directory_is_refused(
        torch_daemon: Torch, linked_conf: tuple[Path, Path]) -> None:
    path, real = linked_conf
    real.chmod(0o777)  # anyone may replace tasks.yaml in the link's target
    _refused_everywhere(torch_daemon, path, f"{real}: directory is group-writable and writable by others",
                        torch_daemon.tmp / "marker")
    real.chmod(0o1777)  # sticky does not help: it is the file's own directory
    _refused_everywhere(torch_daemon, path, f"{real}: directory is group-writable",
                        torch_daemon.tmp / "marker")


@needs_root
def test_task_file_through_a_symlinked_directory_another_user_owns_is_refused(
        torch_daemon: Torch, linked_conf: tuple[Path, Path]) -> None:
    path, real = linked_conf
    os.chown(real, OTHER, OTHER)
    _refused_everywhere(torch_daemon, path, f"{real}: directory owned by uid {OTHER}, not root",
                        torch_daemon.tmp / "marker")


@needs_root
def test_task_file_through_a_directory_symlink_another_user_planted_in_a_sticky_directory_is_refused(
        torch_daemon: Torch, linked_conf: tuple[Path, Path]) -> None:
    # /tmp-like: anyone may create `conf` there. The target is root's and safe; only the link is his.
    _path, real = linked_conf
    sticky = torch_daemon.tmp / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "conf").symlink_to(real)
    os.lchown(sticky / "conf", OTHER, OTHER)
    _refused_everywhere(torch_daemon, sticky / "conf" / "tasks.yaml",
                        f"{sticky}/conf: is a symlink owned by uid {OTHER}", torch_daemon.tmp / "marker")


@pytest.mark.parametrize("text, key", [
    ("version: 1\ninclude: {path}\ntasks: []\n", "include"),
    ("version: 1\ntasks:\n  - {{name: a, schedule: '* * * * * *', command: 'true', env_file: {path}}}\n",
     "env_file"),
    ("version: 1\ntasks:\n  - {{name: a, schedule: '* * * * * *', command: 'true', password_file: {path}}}\n",
     "password_file"),
])
def test_a_task_file_cannot_name_another_file_for_torch_to_read(torch_daemon: Torch, outside: Path,
                                                                text: str, key: str) -> None:
    # Torch reads exactly one file: keys that would pull in others are unknown keys, and the file they
    # name is never opened (a FIFO there would hang any open for reading).
    fifo = outside / "fifo"
    os.mkfifo(fifo, 0o600)
    torch_daemon.write(text.format(path=fifo))
    r = subprocess.run([*TORCH, "check", str(torch_daemon.config)], capture_output=True, text=True,
                       env=torch_daemon.env(), timeout=20)
    assert r.returncode == 1 and f"{key}: unknown key" in r.stderr, r.stderr


# --- 2. symlinks planted where the daemon writes -----------------------------------------------------

# Where a planted symlink stops the start (these files are the daemon itself), and where it costs only
# that feature (history, pauses, hook output), which then reports it and scheduling goes on.
FATAL = ("torch.pid", "torch.log", "torch.sock")
HISTORY = ("history.db", "history.db-wal", "history.db-shm", "history.db-journal")
FAILING_WITH_HOOK = """\
version: 1
tasks:
  - name: tick
    schedule: "* * * * * *"
    command: "true"
  - name: fails
    schedule: "* * * * * *"
    command: "exit 3"
    on_failure: "echo hooked"
"""


def _plant(t: Torch, outside: Path, name: str, dangling: bool, directory: bool = False) -> Target | None:
    """A symlink at STATE/`name` to a root-only file (or directory), or dangling; the target, if any."""
    state = _state(t)
    if dangling:
        (state / name).symlink_to(outside / "created-through-the-link")
        return None
    target = Target.directory(outside) if directory else Target.file(outside)
    (state / name).symlink_to(target.path)
    return target


def _assert_not_written_through(target: Target | None, outside: Path) -> None:
    if target is not None:
        target.assert_untouched()
    assert not os.path.lexists(outside / "created-through-the-link"), "created where a dangling link pointed"


DANGLING = pytest.mark.parametrize("dangling", [False, True], ids=["to-a-root-file", "dangling"])


@DANGLING
@pytest.mark.parametrize("name, words", [("torch.pid", "cannot use state directory: {path}: is a symlink"),
                                         ("torch.log", "cannot open log {path}: {path}: is a symlink"),
                                         ("torch.sock", "{path}: is a symlink, not torch's control socket")])
def test_a_symlink_planted_at_the_pidfile_log_or_socket_stops_the_start_naming_it(
        torch_daemon: Torch, outside: Path, name: str, words: str, dangling: bool) -> None:
    t = torch_daemon
    target = _plant(t, outside, name, dangling)
    t.write(TICK)
    try:
        r = t.start_bg()
        assert r.returncode == 1, r.stdout + r.stderr
        assert words.format(path=t.state / name) in r.stderr, r.stderr
        assert t.run("status").returncode == 3, "nothing runs"
        if name != "torch.log":  # in the foreground (systemd's Type=notify) the log is stderr
            proc = t.start(ready=False)
            assert proc.wait(timeout=30) == 1
            assert words.format(path=t.state / name) in t.stderr_path.read_text()
            assert not t.find("daemon.start")
    finally:
        _assert_not_written_through(target, outside)


@DANGLING
@pytest.mark.parametrize("name", HISTORY)
def test_a_symlink_planted_at_a_history_file_costs_history_only_and_is_reported(
        torch_daemon: Torch, outside: Path, name: str, dangling: bool) -> None:
    t = torch_daemon
    target = _plant(t, outside, name, dangling)
    t.write(TICK)
    try:
        assert t.start_bg().returncode == 0
        message = wait_until(lambda: [m for m in _history_errors(t) if "history.open_failed" in m], 20,
                             what=lambda: f"history.open_failed; history.error: {_history_errors(t)}")[0]
        assert f"{t.state / name}: is a symlink" in message, message
        ended = len(t.events("run.end", task="tick"))
        t.wait_event("run.end", task="tick", count=ended + 2)  # scheduling goes on
        assert t.run("stop").returncode == 0
    finally:
        _assert_not_written_through(target, outside)


@DANGLING
def test_a_symlink_planted_at_pauses_json_is_reported_and_replaced_by_the_next_pause(
        torch_daemon: Torch, outside: Path, dangling: bool) -> None:
    t = torch_daemon
    target = _plant(t, outside, "pauses.json", dangling)
    t.write(TICK)
    saved = t.state / "pauses.json"
    try:
        assert t.start_bg().returncode == 0
        failed = t.wait_event("pauses.file_failed")[0]
        assert f"{saved}: is a symlink" in failed["error"], failed
        t.wait_event("run.end", task="tick", count=2)  # an unreadable pause file holds nothing
        # The next pause replaces the link by a file of its own (a rename), never writes through it.
        assert t.run("pause", "tick").returncode == 0
        assert not saved.is_symlink() and set(json.loads(saved.read_text())) == {"tick"}
        assert saved.stat().st_mode & 0o777 == 0o640
        assert t.run("stop").returncode == 0
    finally:
        _assert_not_written_through(target, outside)


@DANGLING
def test_a_symlink_planted_at_the_hooks_directory_is_never_written_through(
        torch_daemon: Torch, outside: Path, dangling: bool) -> None:
    t = torch_daemon
    target = _plant(t, outside, "hooks", dangling, directory=True)
    t.write(FAILING_WITH_HOOK)
    try:
        assert t.start_bg().returncode == 0
        t.wait_event("run.end", task="fails:on_failure")  # the hook still runs, without its output file
        assert t.run("stop").returncode == 0
    finally:
        _assert_not_written_through(target, outside)


def test_ensure_dir_can_refuse_a_symlink_in_the_directorys_own_place(outside: Path, tmp_path: Path) -> None:
    # What STATE/hooks needs (see the BUG above); the state directory itself may still be a link.
    from gotorch.trustedfs import Untrusted, ensure_dir

    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    for target in (Target.directory(outside), None):
        link_to = target.path if target is not None else outside / "created-through-the-link"
        (state / "hooks").symlink_to(link_to)
        with pytest.raises(Untrusted, match=f"{state}/hooks: is a symlink, and torch never writes through one"):
            ensure_dir(str(state / "hooks"), os.geteuid(), 0o711, follow_final=False)
        _assert_not_written_through(target, outside)
        (state / "hooks").unlink()
    ensure_dir(str(state / "hooks"), os.geteuid(), 0o711, follow_final=False)
    assert (state / "hooks").is_dir() and (state / "hooks").stat().st_mode & 0o777 == 0o711
    (tmp_path / "state-link").symlink_to(state)
    ensure_dir(str(tmp_path / "state-link"), os.geteuid())  # a state directory may be a link its owner made
    ensure_dir(str(tmp_path / "state-link" / "hooks"), os.geteuid(), 0o711, follow_final=False)  # on the way


def test_the_log_swapped_for_a_symlink_is_not_reopened_through_it_on_sighup(torch_daemon: Torch,
                                                                            outside: Path) -> None:
    # logrotate's create mode: rename, then SIGHUP. An attacker's link in the name in between (or a
    # dangling one, which O_CREAT would otherwise create) must not receive root's lines.
    t = torch_daemon
    target = Target.file(outside)
    t.write(TICK)
    assert t.start_bg().returncode == 0
    t.wait_event("run.end", task="tick")
    log, rotated = t.state / "torch.log", t.state / "torch.log.1"
    for link_to in (target.path, outside / "created-through-the-link"):
        os.rename(log, rotated)
        log.symlink_to(link_to)
        assert t.bg_pid is not None
        os.kill(t.bg_pid, signal.SIGHUP)
        t.log_path = rotated
        refused = t.wait_event("log.reopen_refused")[0]
        assert refused["path"] == str(log) and "symlink" in refused["error"], refused
        ended = len(t.events("run.end"))
        t.wait_event("run.end", count=ended + 2)  # lines keep going to the file already open
        target.assert_untouched()
        assert not os.path.lexists(outside / "created-through-the-link")
        log.unlink()  # the link gone, the next reopen makes a fresh file
        os.kill(t.bg_pid, signal.SIGHUP)
        t.log_path = log
        wait_until(lambda: log.exists() and t.events("run.end"), 10, what="a fresh torch.log")
        assert not log.is_symlink() and log.stat().st_mode & 0o777 == 0o640
        rotated.unlink()
    assert t.run("stop").returncode == 0
    target.assert_untouched()


def _ok_rows_since(db: Path, since: float) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        return int(conn.execute("SELECT count(*) FROM runs WHERE status = 'ok' AND scheduled_at >= ?",
                                (since,)).fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


@pytest.mark.parametrize("name", HISTORY[:3])
def test_a_history_file_swapped_for_a_symlink_under_the_running_daemon_is_not_written_through(
        torch_daemon: Torch, outside: Path, name: str) -> None:
    t = torch_daemon
    target = Target.file(outside)
    t.write(TICK)
    t.start()
    db = t.state / "history.db"
    wait_until(lambda: _ok_rows_since(db, 0) > 0, 20, what="a first ok row")
    path = t.state / name
    os.rename(path, t.state / f"{name}.moved")  # as an unlink would; the rename keeps the rows to look at
    path.symlink_to(target.path)
    swapped_at = time.time()
    ended = len(t.events("run.end", task="tick"))
    t.wait_event("run.end", task="tick", count=ended + 4)  # several commits' worth of rows (~1 s batches)
    if name == "history.db":
        # The writer notices its file is gone and will not open the link instead: it says so and
        # drops rows (scheduling goes on) until the link is gone.
        message = wait_until(lambda: [m for m in _history_errors(t) if "history.open_failed" in m], 10,
                             what=lambda: f"history.open_failed; history.error: {_history_errors(t)}")[0]
        assert f"{path}: is a symlink" in message, message
    elif name == "history.db-wal":
        # Noticed too: closing the old connection removes the link (unlink never follows) and the
        # writer makes a -wal of its own.
        wait_until(lambda: any("history.replaced" in m for m in _history_errors(t)), 10,
                   what=lambda: f"history.replaced; history.error: {_history_errors(t)}")
        wait_until(lambda: _ok_rows_since(db, swapped_at) > 0, 10, what="rows written after the swap")
        assert not path.is_symlink()
    # (-shm: the writer keeps the wal-index it has mapped; SQLite opens -shm O_NOFOLLOW, so a new
    # reader cannot use the link either.) A reader as root, `torch history`, writes nothing through it.
    t.run("history", "tick", "--json")
    target.assert_untouched()
    assert t.stop() == 0
    target.assert_untouched()
    if name == "history.db-shm":
        if path.is_symlink():  # SQLite removes -shm at the last close; if not, our reader needs it gone
            path.unlink()
        assert _ok_rows_since(db, swapped_at) > 0, "the writer went on writing its own files"


def test_pauses_json_swapped_for_a_symlink_before_torch_pause_is_replaced_not_written_through(
        torch_daemon: Torch, outside: Path) -> None:
    t = torch_daemon
    t.write(TICK)
    t.start()
    assert t.run("pause", "tick", "--for", "1h").returncode == 0
    for target in (Target.file(outside), None):
        link_to = target.path if target is not None else outside / "created-through-the-link"
        (t.state / "pauses.json").unlink()
        (t.state / "pauses.json").symlink_to(link_to)
        r = t.run("pause", "tick", "--reason", "swapped")
        assert r.returncode == 0, r.stderr
        saved = t.state / "pauses.json"
        assert not saved.is_symlink() and json.loads(saved.read_text())["tick"]["reason"] == "swapped"
        assert saved.stat().st_mode & 0o777 == 0o640
        if target is not None:
            target.assert_untouched()
        assert not os.path.lexists(outside / "created-through-the-link")
    assert t.stop() == 0


@pytest.mark.parametrize("name", ["torch.pid", "torch.sock"])
def test_pidfile_or_socket_swapped_for_a_symlink_is_not_followed_at_stop(
        torch_daemon: Torch, outside: Path, name: str) -> None:
    # At stop the daemon removes both files: it must remove its own file or the link, never the target.
    t = torch_daemon
    target = Target.file(outside)
    t.write(TICK)
    assert t.start_bg().returncode == 0
    pid = t.bg_pid
    assert pid is not None
    path = t.state / name
    os.rename(path, t.state / f"{name}.moved")
    path.symlink_to(target.path)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 30, what="the daemon gone")
    target.assert_untouched()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --- 4. `user:` drops every privilege -----------------------------------------------------------------


@dataclass
class Account:
    user: str
    uid: int
    primary: str
    primary_gid: int
    listed: str
    listed_gid: int


def _admin(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{argv}: {r.stderr}"


@pytest.fixture
def account() -> Iterator[Account]:
    """A throw-away user with a primary group and one supplementary group that lists it."""
    if not ROOT:
        pytest.skip("creating accounts and running tasks as them needs root")
    if not (shutil.which("useradd") and shutil.which("groupadd")):
        pytest.skip("useradd/groupadd (passwd package) not installed")
    import grp

    suffix = f"{os.getpid() % 100000}"
    user, primary, listed = f"tsu{suffix}", f"tsp{suffix}", f"tsl{suffix}"
    made: list[tuple[str, ...]] = []
    try:
        for group in (primary, listed):
            _admin("groupadd", group)
            made.append(("groupdel", group))
        _admin("useradd", "-M", "-s", "/bin/sh", "-g", primary, "-G", listed, user)
        made.append(("userdel", user))
        clear_account_cache()
        yield Account(user, pwd.getpwnam(user).pw_uid, primary, grp.getgrnam(primary).gr_gid,
                      listed, grp.getgrnam(listed).gr_gid)
    finally:
        for argv in reversed(made):
            subprocess.run(argv, capture_output=True, timeout=60)
        clear_account_cache()


# Run by /bin/sh as the task's user; each line `key=value`. $PPID is the daemon (the runner forks
# /bin/sh directly). The ptrace probe is Python from the system (the venv may not be readable); it
# also lists the shell's descriptors (a $(ls) would show the shell's own pipe to it), and is not the
# last command, which the shell would exec, making $$ the probe itself. No ' inside the Python.
PROBE = r"""
echo "ppid=$PPID"
echo "id=$(id)"
grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapAmb):' /proc/self/status | sed 's/:[[:space:]]*/=/'
env | sed 's/^/env:/'
kill -0 "$PPID" 2>/dev/null; echo "kill=$?"
kill -TERM "$PPID" 2>/dev/null; echo "term=$?"
cat "/proc/$PPID/environ" >/dev/null 2>&1; echo "environ=$?"
PYTHON -c '
import ctypes, errno, os, sys
pid = int(sys.argv[1])
print("fds=" + " ".join(sorted(os.listdir(f"/proc/{sys.argv[2]}/fd"), key=int)))
try:
    os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))
    print("mem=opened")
except OSError as exc:
    print("mem=" + errno.errorcode[exc.errno])
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH: do not leave the daemon stopped
    print("ptrace=attached")
else:
    print("ptrace=" + errno.errorcode[ctypes.get_errno()])
' "$PPID" "$$"
echo "done=1"
"""
DAEMON_SECRET = "TORCH_TEST_SECRET"


def test_a_run_as_another_user_has_only_its_ids_groups_and_environment_and_cannot_touch_the_daemon(
        torch_daemon: Torch, account: Account) -> None:
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for the ptrace probe")
    t = torch_daemon
    probe = PROBE.replace("PYTHON", python)
    t.config.write_text("version: 1\ntasks:\n  - name: probe\n    schedule: \"@reboot\"\n"
                        f"    user: {account.user}\n    output_limit: 1MiB\n    command: {json.dumps(probe)}\n")
    secret_value = "s3cr3t-" + os.urandom(6).hex()
    t.start(**{DAEMON_SECRET: secret_value, "TORCH_TEST_OTHER": "daemon-only"})
    assert t.proc is not None
    end = t.wait_event("run.end", task="probe")[0]
    lines = [e["line"] for e in t.events("run.output", task="probe") if e["stream"] == "stdout"]
    got = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("env:"))
    env = dict(line[len("env:"):].split("=", 1) for line in lines if line.startswith("env:"))
    assert end["status"] == "ok" and got.get("done") == "1", (end, lines, t.events("run.output", stream="stderr"))
    assert int(got["ppid"]) == t.proc.pid, "the probe must be a child of the daemon for the checks to mean anything"

    # Real, effective, saved and filesystem ids; groups as initgroups(user) sets them; no capability.
    uid, gid = str(account.uid), str(account.primary_gid)
    assert got["Uid"].split() == [uid] * 4, got
    assert got["Gid"].split() == [gid] * 4, got
    assert set(got["Groups"].split()) == {gid, str(account.listed_gid)}, got
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(got[cap], 16) == 0, (cap, got[cap])
    # Nothing the daemon holds open (pidfile lock, log, control socket, database) reaches the run.
    assert got["fds"].split() == ["0", "1", "2"], got["fds"]

    # The environment is built for the user; none of the daemon's variables leaks.
    me = pwd.getpwnam(account.user)
    assert env["USER"] == env["LOGNAME"] == account.user and env["HOME"] == me.pw_dir, env
    assert DAEMON_SECRET not in env and "TORCH_TEST_OTHER" not in env, env
    assert secret_value not in "\n".join(lines)
    daemon_env = set(t.env()) - {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "OLDPWD", "SHLVL", "_",
                                 "TORCH_STATE_DIR"}
    assert not daemon_env & set(env), daemon_env & set(env)

    # It may neither signal the daemon nor look into it.
    assert got["kill"] != "0" and got["term"] != "0", got
    assert got["environ"] != "0", got
    assert got["mem"] == "EACCES", got
    assert got["ptrace"] == "EPERM", got
    assert t.proc.poll() is None
    assert t.stop() == 0


def test_a_run_as_another_user_cannot_signal_the_daemon_by_the_numbers(torch_daemon: Torch,
                                                                      account: Account) -> None:
    # The shell's `kill` reports any failure as 1: check the errno from a real kill(2), and that the
    # daemon really got nothing (it logs a stop for SIGTERM).
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3")
    t = torch_daemon
    code = ("import errno, os\nfor sig in (0, 15):\n    try:\n        os.kill(os.getppid(), sig)\n"
            "        print(f'sig{sig}=sent')\n    except OSError as exc:\n"
            "        print(f'sig{sig}=' + errno.errorcode[exc.errno])\n")
    t.config.write_text("version: 1\ntasks:\n  - name: probe\n    schedule: \"@reboot\"\n"
                        f"    user: {account.user}\n    command: [{python}, -c, {json.dumps(code)}]\n")
    t.start()
    t.wait_event("run.end", task="probe")
    lines = [e["line"] for e in t.events("run.output", task="probe")]
    assert lines == ["sig0=EPERM", "sig15=EPERM"], lines
    assert not t.events("stop.requested") and t.proc is not None and t.proc.poll() is None
    assert t.stop() == 0


def test_an_alert_hook_of_a_task_with_user_and_group_runs_with_only_those_ids_and_no_daemon_variable(
        torch_daemon: Torch, account: Account) -> None:
    # Hooks are runs of their own, started by another path (alerts -> scheduler.start_hook), with the
    # report's variables added: the same drop must hold. With `group:`, as initgroups(user, group):
    # the user's primary group is gone.
    t = torch_daemon
    hook = ("grep -E '^(Uid|Gid|Groups|CapEff):' /proc/self/status | sed 's/:[[:space:]]*/=/'; "
            "env | sed 's/^/env:/'")
    t.config.write_text("version: 1\ntasks:\n  - name: fails\n    schedule: \"@reboot\"\n    command: \"exit 3\"\n"
                        f"    user: {account.user}\n    group: {account.listed}\n"
                        f"    on_failure: {json.dumps(hook)}\n")
    secret_value = "s3cr3t-" + os.urandom(6).hex()
    t.start(**{DAEMON_SECRET: secret_value})
    end = t.wait_event("run.end", task="fails:on_failure")[0]
    lines = [e["line"] for e in t.events("run.output", task="fails:on_failure")]
    assert end["status"] == "ok", (end, lines)
    got = dict(line.split("=", 1) for line in lines if not line.startswith("env:"))
    env = dict(line[len("env:"):].split("=", 1) for line in lines if line.startswith("env:"))
    listed = str(account.listed_gid)
    assert got["Uid"].split() == [str(account.uid)] * 4, got
    assert got["Gid"].split() == [listed] * 4 and got["Groups"].split() == [listed], got
    assert int(got["CapEff"], 16) == 0, got
    assert env["TORCH_STATUS"] == "failed" and env["USER"] == account.user, env
    assert DAEMON_SECRET not in env and secret_value not in "\n".join(lines), env
    assert t.stop() == 0


# --- 5. YAML tags ------------------------------------------------------------------------------------

TAGGED = """\
version: 1
tasks:
  - name: tagged
    schedule: "0 0 0 1 1 *"
    command: {value}
"""


def _tags(marker: Path, secret: Path) -> list[tuple[str, str]]:
    """(id, a task file that carries a tag) for every way YAML offers to build an object or read a file."""
    system = f'!!python/object/apply:os.system ["touch {marker}"]'
    in_command = [
        ("apply-os-system", system),
        ("new-os-system", f'!!python/object/new:os.system ["touch {marker}"]'),
        ("name", "!!python/name:os.system"),
        ("module", "!!python/module:os"),
        ("object", "!!python/object:gotorch.config.Task {name: x}"),
        ("tuple", "!!python/tuple [a, b]"),
        ("verbatim", f'!<tag:yaml.org,2002:python/object/apply:os.system> ["touch {marker}"]'),
        ("include", f"!include {secret}"),
        ("custom", "!custom touch"),
        ("binary", "!!binary dG91Y2g="),
        ("set", "!!set {a, b}"),
        ("omap", "!!omap [a: 1]"),
    ]
    files = [(name, TAGGED.format(value=value)) for name, value in in_command]
    files += [
        ("tag-directive", '%TAG !p! tag:yaml.org,2002:python/object/apply:\n---\n'
                          + TAGGED.format(value=f'!p!os.system ["touch {marker}"]')),
        ("on-a-key", TAGGED.format(value="'true'") + f"    ? {system}\n    : x\n"),
        ("on-the-root", "!!python/object/apply:os.system\n" + TAGGED.format(value="'true'")),
        ("on-the-task-list", TAGGED.format(value="'true'").replace("tasks:", "tasks: !!python/object/apply:os.system")),
        ("in-env", TAGGED.format(value="'true'") + f"    env: {{X: {system}}}\n"),
        ("in-an-argv", TAGGED.format(value=f"[/bin/echo, {system}]")),
        ("in-defaults", "version: 1\ndefaults: {timezone: " + system + "}\ntasks: []\n"),
        # Flattening a merge copies the merged mapping's pairs: its tag must be looked at first.
        ("on-a-merged-mapping", "version: 1\ntasks:\n  - name: tagged\n"
                                "    <<: !!python/object:builtins.dict {schedule: '0 0 0 1 1 *'}\n"
                                "    command: 'true'\n"),
        ("on-a-mapping-in-a-merged-list", "version: 1\ntasks:\n  - name: tagged\n"
                                          "    <<: [{command: 'true'}, !custom {schedule: '0 0 0 1 1 *'}]\n"),
        ("on-a-merge-inside-a-merge", "version: 1\ntasks:\n  - name: tagged\n    <<:\n"
                                      "      <<: !custom {schedule: '0 0 0 1 1 *'}\n      command: 'true'\n"),
        ("on-a-merged-anchor", "version: 1\ntasks:\n  - &base !!python/object:builtins.dict\n"
                               "    name: tagged\n    schedule: '0 0 0 1 1 *'\n    command: 'true'\n"
                               "  - <<: *base\n    name: other\n"),
    ]
    return files


TAG_IDS = [name for name, _ in _tags(Path("m"), Path("s"))]


@pytest.mark.parametrize("case", TAG_IDS)
def test_a_yaml_tag_is_refused_by_check_and_nothing_is_built_run_or_read(torch_daemon: Torch, outside: Path,
                                                                         case: str) -> None:
    marker = outside / "marker"
    secret = Target.file(outside)
    text = dict(_tags(marker, secret.path))[case]
    cfg = torch_daemon.write(text)
    cfg.chmod(0o644)
    trace = outside / "strace.txt"
    strace = shutil.which("strace")
    # -s: strace cuts strings at 32 bytes by default, which would hide both paths checked below.
    prefix = [strace, "-f", "-qq", "-s", "4096", "-e", "trace=open,openat,openat2,execve,execveat",
              "-o", str(trace)] if strace else []
    r = subprocess.run([*prefix, *TORCH, "check", str(cfg)], capture_output=True, text=True,
                       env=torch_daemon.env(), cwd=torch_daemon.tmp, timeout=60)
    assert r.returncode == 1, (text, r.stdout, r.stderr)
    assert "YAML tag" in r.stderr and "is not allowed" in r.stderr, r.stderr
    assert f"{cfg}:" in r.stderr.splitlines()[0], "the error is located in the file"
    assert not marker.exists()
    secret.assert_untouched()
    if strace and trace.exists():
        calls = trace.read_text()
        assert str(secret.path) not in calls, "the task file made torch open another file"
        programs = [m.group(1) for m in re.finditer(r'execve(?:at)?\("([^"]*)".*= 0$', calls, re.MULTILINE)]
        assert programs == [TORCH[0]], f"torch check ran other programs: {programs}"


def test_a_yaml_tag_is_refused_by_start_and_by_a_reload_of_the_running_daemon(torch_daemon: Torch,
                                                                              outside: Path) -> None:
    t = torch_daemon
    marker = outside / "marker"
    tagged = dict(_tags(marker, outside / "secret"))["apply-os-system"]
    t.write(tagged)
    r = t.run("start", "-c", str(t.config))
    assert r.returncode == 1 and "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system'" in r.stderr, r.stderr
    assert not (t.state / "torch.pid").exists()
    t.write(TICK)
    t.start()
    t.wait_event("run.end", task="tick")
    # The reload parses in its own process: the tag must be refused there as well.
    new = t.config.with_name("tasks.new")
    new.write_text(tagged)
    os.rename(new, t.config)
    failed = t.wait_event("reload.failed")[0]
    assert any("python/object/apply:os.system" in e and "is not allowed" in e for e in failed["errors"]), failed
    time.sleep(1)
    assert not marker.exists()
    assert json.loads(t.run("status", "--json").stdout)["generation"] == 1
    assert t.stop() == 0

