"""trustedfs: which paths a root daemon may trust, on the real filesystem (owners set with chown as root)."""

from __future__ import annotations

import ctypes
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gotorch.trustedfs import MAX_TASK_FILE, Untrusted, ensure_dir, open_state_file, read_file

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="ownership by a second uid needs root to chown")
OTHER = 4242  # a uid that is not ours; it needs no passwd entry for chown or setuid


@pytest.fixture
def safe(tmp_path: Path) -> Path:
    """A directory that passes: tmp_path's ancestors are root-owned (or ours) and not group-writable."""
    d = tmp_path / "safe"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


def write(path: Path, text: str = "version: 1\ntasks: []\n", mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_plain_file_in_safe_directory_is_read(safe: Path) -> None:
    f = write(safe / "tasks.yaml", "hello")
    got = read_file(str(f), os.geteuid())
    assert got.data == b"hello" and got.real_path == str(f) and stat.S_ISREG(got.st.st_mode)


def test_group_or_world_writable_file_is_refused(safe: Path) -> None:
    for mode, words in ((0o664, "group-writable"), (0o646, "writable by others")):
        f = write(safe / "tasks.yaml", mode=mode)
        with pytest.raises(Untrusted, match=words):
            read_file(str(f), os.geteuid())


def test_writable_own_directory_is_refused_even_when_sticky(safe: Path) -> None:
    f = write(safe / "tasks.yaml")
    safe.chmod(0o1777)
    with pytest.raises(Untrusted, match="directory is group-writable and writable by others"):
        read_file(str(f), os.geteuid())


def test_sticky_ancestor_is_allowed_but_writable_ancestor_is_not(safe: Path) -> None:
    inner = safe / "inner"
    inner.mkdir(mode=0o755)
    f = write(inner / "tasks.yaml", "ok")
    safe.chmod(0o1777)  # like /tmp: others cannot replace `inner`
    assert read_file(str(f), os.geteuid()).data == b"ok"
    safe.chmod(0o777)  # not sticky: anyone could rename `inner` away and put their own in its place
    with pytest.raises(Untrusted) as exc:
        read_file(str(f), os.geteuid())
    assert exc.value.path == str(safe)


@needs_root
def test_directory_owned_by_another_user_is_refused_anywhere_on_the_path(safe: Path) -> None:
    home = safe / "home"
    conf = home / "conf"
    conf.mkdir(parents=True, mode=0o755)
    home.chmod(0o755)
    f = write(conf / "tasks.yaml")
    os.chown(home, OTHER, OTHER)  # the user's home: he may swap `conf` for his own directory
    with pytest.raises(Untrusted, match=f"owned by uid {OTHER}, not root") as exc:
        read_file(str(f), 0)
    assert exc.value.path == str(home)
    # A daemon running as that user may trust its own directories.
    assert read_file(str(f), OTHER).data.startswith(b"version")


@needs_root
def test_file_owned_by_another_user_is_refused(safe: Path) -> None:
    f = write(safe / "tasks.yaml")
    os.chown(f, OTHER, OTHER)
    with pytest.raises(Untrusted, match=f"owned by uid {OTHER}"):
        read_file(str(f), 0)


@needs_root
def test_symlink_is_followed_only_into_checked_directories(safe: Path, tmp_path: Path) -> None:
    user_dir = tmp_path / "user"
    user_dir.mkdir(mode=0o755)
    target = write(user_dir / "tasks.yaml", "root's file in the user's directory")
    os.chown(user_dir, OTHER, OTHER)
    link = safe / "tasks.yaml"
    link.symlink_to(target)
    with pytest.raises(Untrusted, match=f"owned by uid {OTHER}") as exc:
        read_file(str(link), 0)
    assert exc.value.path == str(user_dir)
    # The same link into a safe directory, relative and through `..`, is fine.
    other = safe / "repo"
    other.mkdir(mode=0o755)
    write(other / "tasks.yaml", "repo")
    link.unlink()
    link.symlink_to("../safe/repo/tasks.yaml")
    got = read_file(str(link), 0)
    assert got.data == b"repo" and got.real_path == str(other / "tasks.yaml")


def test_symlink_loop_is_refused(safe: Path) -> None:
    (safe / "a").symlink_to("b")
    (safe / "b").symlink_to("a")
    with pytest.raises(Untrusted, match="too many levels of symbolic links"):
        read_file(str(safe / "a"), os.geteuid())


def test_fifo_device_and_directory_are_refused_without_blocking(safe: Path) -> None:
    fifo = safe / "fifo"
    os.mkfifo(fifo, 0o644)
    t0 = time.monotonic()
    with pytest.raises(Untrusted, match="is a FIFO, not a regular file"):
        read_file(str(fifo), os.geteuid())
    with pytest.raises(Untrusted, match="is a FIFO"):
        read_file(str(fifo), os.geteuid(), check=False)
    with pytest.raises(Untrusted, match="is a character device"):
        read_file("/dev/null", os.geteuid(), check=False)
    (safe / "dir").mkdir(mode=0o755)
    with pytest.raises(Untrusted, match="is a directory"):
        read_file(str(safe / "dir"), os.geteuid())
    assert time.monotonic() - t0 < 2


def test_file_over_the_size_cap_is_refused_without_reading_it(safe: Path) -> None:
    big = safe / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB that cost nothing to make
    big.chmod(0o644)
    t0 = time.monotonic()
    with pytest.raises(Untrusted, match="larger than the 10 MiB limit"):
        read_file(str(big), os.geteuid())
    assert time.monotonic() - t0 < 1
    at_limit = safe / "ok.yaml"
    with open(at_limit, "wb") as f:
        f.truncate(MAX_TASK_FILE)
    at_limit.chmod(0o644)
    assert len(read_file(str(at_limit), os.geteuid()).data) == MAX_TASK_FILE


def test_relative_path_is_refused() -> None:
    with pytest.raises(Untrusted, match="not an absolute path"):
        read_file("etc/tasks.yaml", os.geteuid())


def test_ensure_dir_creates_missing_directories_with_exact_mode(safe: Path) -> None:
    old = os.umask(0)
    try:
        ensure_dir(str(safe / "a" / "b" / "c"), os.geteuid(), 0o750)
    finally:
        os.umask(old)
    for d in (safe / "a", safe / "a" / "b", safe / "a" / "b" / "c"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o750


@needs_root
def test_ensure_dir_refuses_existing_directory_others_control(safe: Path) -> None:
    state = safe / "state"
    state.mkdir(mode=0o750)
    os.chown(state, OTHER, OTHER)
    with pytest.raises(Untrusted, match=f"owned by uid {OTHER}"):
        ensure_dir(str(state), 0)
    os.chown(state, 0, 0)
    state.chmod(0o770)
    with pytest.raises(Untrusted, match="group-writable"):
        ensure_dir(str(state), 0)


def test_open_state_file_refuses_symlinks_and_hard_links(safe: Path) -> None:
    secret = write(safe / "secret", "root only", 0o600)
    log = safe / "torch.log"
    log.symlink_to(secret)
    with pytest.raises(OSError):
        open_state_file(str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    log.unlink()
    os.link(secret, log)
    with pytest.raises(Untrusted, match="2 hard links"):
        open_state_file(str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    assert secret.read_text() == "root only"


# --- the swap race, as the attacker would run it ---------------------------------------------------

_RENAME_EXCHANGE = 2


def _exchange_forever(home: Path, a: str, b: str, seconds: float) -> int:
    """Fork a process that, as uid OTHER, swaps directories `a` and `b` of `home` as fast as it can.

    It exits 0 if at least one swap succeeded (so the test knows the race really ran).
    """
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # Opened while still root: the test's tmp directory above `home` is private to root.
            dfd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
            os.setgid(OTHER)
            os.setuid(OTHER)
            libc = ctypes.CDLL(None, use_errno=True)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if libc.renameat2(dfd, a.encode(), dfd, b.encode(), _RENAME_EXCHANGE) == 0:
                    code = 0
        finally:
            os._exit(code)
    return pid


@pytest.fixture
def attacker_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    yield home


@needs_root
def test_directory_swap_race_never_yields_the_attackers_file(attacker_home: Path) -> None:
    # The user's home holds a root-owned config directory; he swaps it with his own (RENAME_EXCHANGE)
    # while root reads. Checking by path and then reading by path let his file through.
    conf = attacker_home / "conf"
    conf.mkdir(mode=0o755)
    write(conf / "tasks.yaml", "root's")
    evil = attacker_home / "evil"
    evil.mkdir(mode=0o755)
    write(evil / "tasks.yaml", "attacker's")
    for p in (evil, evil / "tasks.yaml", attacker_home):
        os.chown(p, OTHER, OTHER)
    pid = _exchange_forever(attacker_home, "conf", "evil", 2.0)
    try:
        outcomes = set()
        for _ in range(300):
            try:
                outcomes.add(read_file(str(conf / "tasks.yaml"), 0).data)
            except Untrusted as exc:
                outcomes.add(exc.problem.encode())
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the attacker never managed a swap: the test proves nothing"
    assert b"attacker's" not in outcomes and b"root's" not in outcomes, outcomes


@needs_root
def test_symlink_another_user_planted_in_a_sticky_directory_is_not_followed(safe: Path) -> None:
    # Anyone may create a name in /tmp: as fs.protected_symlinks does, only a trusted user's link
    # is followed, whether it stands for the file, a directory on the way, or a state directory.
    trusted = safe / "trusted"
    (trusted / "etc").mkdir(parents=True, mode=0o755)
    write(trusted / "tasks.yaml", "someone else's file")
    sticky = safe / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    planted = {"tasks.yaml": trusted / "tasks.yaml", "conf": trusted, "state": trusted / "etc" / "nologin"}
    for name, target in planted.items():
        (sticky / name).symlink_to(target)
        os.lchown(sticky / name, OTHER, OTHER)
    for path in (sticky / "tasks.yaml", sticky / "conf" / "tasks.yaml"):
        with pytest.raises(Untrusted, match=f"is a symlink owned by uid {OTHER}"):
            read_file(str(path), 0)
    with pytest.raises(Untrusted, match=f"is a symlink owned by uid {OTHER}"):
        ensure_dir(str(sticky / "state" / "run"), 0)
    assert not (trusted / "etc" / "nologin").exists()
    # The same links made by root are followed.
    for name in planted:
        os.lchown(sticky / name, 0, 0)
    assert read_file(str(sticky / "conf" / "tasks.yaml"), 0).data == b"someone else's file"
