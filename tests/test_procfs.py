"""The /proc reader, checked against what the kernel tells us through other means (os.*, our own children)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gotorch import procfs
from gotorch.daemon import is_torch_process
from tests.conftest import wait_until


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A sleeping child of ours, in its own session, with a marker in its environment."""
    p = subprocess.Popen(["sleep", "60"], env={"PATH": os.environ["PATH"], "PROCFS_TEST": f"v{os.getpid()}"},
                         start_new_session=True)
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def test_stat_of_this_process() -> None:
    st = procfs.stat(os.getpid())
    assert st is not None
    assert (st.state, st.ppid, st.pgrp) == ("R", os.getppid(), os.getpgrp())


def test_a_command_name_with_parentheses_and_spaces() -> None:
    # /proc/PID/stat puts the name in parentheses; a name that contains ") (" must not shift fields.
    p = subprocess.Popen([sys.executable, "-c", "import ctypes, time; "
                          "ctypes.CDLL(None).prctl(15, b'a) (b c) 9 9', 0, 0, 0); time.sleep(60)"])
    try:
        stat = Path(f"/proc/{p.pid}/stat")
        wait_until(lambda: b") (" in stat.read_bytes(), 10, what="the new name")
        st = procfs.stat(p.pid)
        assert st is not None and st.ppid == os.getpid() and st.pgrp == os.getpgrp()
    finally:
        p.kill()
        p.wait()


def test_children_env_and_liveness(child: subprocess.Popen[bytes]) -> None:
    assert child.pid in procfs.pids()
    assert child.pid in procfs.children_of(os.getpid())
    st = procfs.stat(child.pid)
    assert st is not None and st.pgrp == child.pid  # its own session and group
    marker = f"v{os.getpid()}"
    assert procfs.pids_by_env("PROCFS_TEST", [marker, "other"]) == {marker: [child.pid]}
    assert procfs.pids_by_env("PROCFS_TEST", []) == {}
    assert procfs.exists(child.pid) and procfs.alive(child.pid)
    assert procfs.cmdline(child.pid) == ["sleep", "60"]
    child.kill()
    wait_until(lambda: (s := procfs.stat(child.pid)) is not None and s.state == "Z", 10, what="a zombie")
    # A zombie exists (its pid is taken) but is not alive, and has no argv.
    assert procfs.exists(child.pid) and not procfs.alive(child.pid)
    assert procfs.cmdline(child.pid) == []
    child.wait()
    assert not procfs.exists(child.pid) and procfs.stat(child.pid) is None and procfs.cmdline(child.pid) is None


@pytest.mark.parametrize(("environ", "value"), [
    (b"A=1\0TORCH_RUN_ID=r1\0B=2\0", "r1"),
    (b"TORCH_RUN_ID=r1", "r1"),  # first, and without a final NUL
    (b"XTORCH_RUN_ID=spoof\0TORCH_RUN_ID=r2\0", "r2"),  # the tail of another name does not count
    (b"XTORCH_RUN_ID=spoof\0", None),
    (b"TORCH_RUN_ID=\0", ""),
    (b"TORCH_RUN_ID=\xff\0", "\ufffd"),
    (b"", None),
])
def test_env_value(environ: bytes, value: str | None) -> None:
    assert procfs.env_value(environ, "TORCH_RUN_ID") == value


def test_is_torch_process_reads_the_argv(child: subprocess.Popen[bytes]) -> None:
    assert not is_torch_process(os.getpid())  # pytest
    assert not is_torch_process(child.pid)
    # The argv of `python -m gotorch start ...`, and one with "start" that is not torch.
    torch_like = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "gotorch", "start"])
    other = subprocess.Popen(["sleep", "60", "start"])
    try:
        assert is_torch_process(torch_like.pid)
        assert not is_torch_process(other.pid)
    finally:
        for p in (torch_like, other):
            p.kill()
            p.wait()
    assert not is_torch_process(torch_like.pid)  # gone


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another uid (nobody)")
def test_pids_by_env_skips_processes_of_other_users() -> None:
    import pwd
    import subprocess

    nobody = pwd.getpwnam("nobody")
    proc = subprocess.Popen(["sleep", "30"], env={"PATH": "/usr/bin:/bin", "SCAN_ME": "x1"},
                            user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
    try:
        assert procfs.pids_by_env("SCAN_ME", ["x1"]) == {"x1": [proc.pid]}
        assert procfs.pids_by_env("SCAN_ME", ["x1"], uids=[nobody.pw_uid]) == {"x1": [proc.pid]}
        assert procfs.pids_by_env("SCAN_ME", ["x1"], uids=[0]) == {}
    finally:
        proc.kill()
        proc.wait()


def test_an_environment_read_empty_mid_exec_is_read_again(child: subprocess.Popen[bytes],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Between execve dropping the old memory and the new stack being set up, /proc shows an empty
    # environment: the scan must look again rather than miss a process that was just started.
    real_read = procfs._read
    blanked: list[str] = []

    def read(path: str) -> bytes | None:
        if path == f"/proc/{child.pid}/environ" and not blanked:
            blanked.append(path)
            return b""
        return real_read(path)

    monkeypatch.setattr(procfs, "_read", read)
    marker = f"v{os.getpid()}"
    assert procfs.pids_by_env("PROCFS_TEST", [marker]) == {marker: [child.pid]}
    assert blanked, "the blank read was served"


def test_a_process_with_an_empty_environment_costs_the_scan_only_its_retries() -> None:
    empty = subprocess.Popen(["/bin/sleep", "60"], env={}, start_new_session=True)
    try:
        wait_until(lambda: procfs.cmdline(empty.pid) == ["/bin/sleep", "60"], 10, what="the exec")
        assert procfs.environ(empty.pid) == b""
        assert procfs.pids_by_env("PROCFS_TEST", ["nobody-has-it"]) == {}
    finally:
        empty.kill()
        empty.wait()
