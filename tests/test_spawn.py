"""gotorch.spawn: what a run's process gets, on the posix_spawn path and on the Popen one."""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gotorch.spawn import Spawned, Spawner, seal_descriptors

PROBE = """
import json, os, sys
fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({"cwd": os.getcwd(), "session": os.getsid(0) == os.getpid(), "group": os.getpgrp() == os.getpid(),
                  "fds": fds, "blocked": int(status["SigBlk"], 16),
                  "env": dict(os.environ), "stdin": sys.stdin.read()}), flush=True)
print("to stderr", file=sys.stderr, flush=True)
"""


@pytest.fixture
def spawner() -> Iterator[Spawner]:
    s = Spawner()
    yield s
    s.close()


def _finish(child: Spawned) -> tuple[int, str, str]:
    """Wait for `child`; return its exit code, stdout and stderr."""
    out, err = _drain(child.stdout), _drain(child.stderr)
    _, status = os.waitpid(child.pid, 0)
    if child.popen is not None:
        child.popen.returncode = os.waitstatus_to_exitcode(status)
        assert child.popen.stdout is not None and child.popen.stderr is not None
        child.popen.stdout.close()
        child.popen.stderr.close()
    else:
        os.close(child.stdout)
        os.close(child.stderr)
    return os.waitstatus_to_exitcode(status), out, err


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # the listing's own descriptor
        return False


def _drain(fd: int) -> str:
    chunks = []
    while True:
        select.select([fd], [], [], 30)
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks).decode()
        chunks.append(data)


def _probe(spawner: Spawner, tmp_path: Path, python: str) -> tuple[Spawned, dict[str, Any], str]:
    child = spawner.spawn([python, "-c", PROBE], {"ONLY": "this"}, str(tmp_path))
    code, out, err = _finish(child)
    assert code == 0, err
    return child, json.loads(out), err


def test_a_run_gets_its_own_session_dir_env_and_pipes_and_no_ignored_signal(spawner: Spawner,
                                                                            tmp_path: Path) -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python (and so the daemon) has it
    old_cwd = os.getcwd()
    child, got, err = _probe(spawner, tmp_path, sys.executable)
    assert child.popen is None, "a command with a path, as ourselves: the posix_spawn path"
    assert (got["cwd"], got["session"], got["group"]) == (str(tmp_path), True, True)
    # The test runner's own inheritable descriptors reach it (the daemon seals its own at start,
    # see the next test); the spawner's (/dev/null, its directory, the pipes' read ends) do not.
    inherited = [fd for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2 and _inheritable(fd)]
    assert got["fds"] == sorted({0, 1, 2, 3, *inherited}), "stdin, the pipes, the listing's own descriptor"
    assert got["blocked"] == 0
    # Python ignores SIGPIPE at its own start-up: ask a shell what it was given.
    sig = _finish(spawner.spawn(["/bin/sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/$$/status"], {}, str(tmp_path)))[1]
    masks = dict(line.split(":\t") for line in sig.splitlines())
    assert int(masks["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1)) == 0, "SIGPIPE back to its default"
    got["env"].pop("LC_CTYPE", None)  # Python's own locale coercion (PEP 538) in the probe
    assert got["env"] == {"ONLY": "this"} and got["stdin"] == ""
    assert err == "to stderr\n"
    assert os.getcwd() == old_cwd, "the daemon is back in its own directory"


def test_a_command_without_a_slash_takes_the_popen_path_and_searches_the_runs_path(spawner: Spawner,
                                                                                    tmp_path: Path) -> None:
    child = spawner.spawn(["echo", "hi"], {"PATH": "/usr/bin:/bin"}, str(tmp_path))
    assert child.popen is not None
    assert _finish(child)[:2] == (0, "hi\n")


def test_seal_descriptors_keeps_an_inheritable_descriptor_from_the_run(spawner: Spawner, tmp_path: Path) -> None:
    leaky = os.open(os.devnull, os.O_RDONLY)
    try:
        os.set_inheritable(leaky, True)
        argv = ["/bin/sh", "-c", f"test -e /proc/self/fd/{leaky} && echo open || echo closed"]
        # Without the sweep the descriptor would reach the program: that is what the sweep is for.
        assert _finish(spawner.spawn(argv, {}, str(tmp_path)))[1] == "open\n"
        assert leaky in seal_descriptors()
        assert not os.get_inheritable(leaky)
        assert _finish(spawner.spawn(argv, {}, str(tmp_path)))[1] == "closed\n"
        assert leaky not in seal_descriptors()
    finally:
        os.close(leaky)


def test_a_missing_directory_or_program_is_an_error_that_leaks_nothing(spawner: Spawner, tmp_path: Path) -> None:
    spawner.spawn(["/bin/true"], {}, str(tmp_path))  # its kept descriptors are open from now on
    fds = set(os.listdir("/proc/self/fd"))
    old_cwd = os.getcwd()
    with pytest.raises(FileNotFoundError) as missing_dir:
        spawner.spawn(["/bin/true"], {}, str(tmp_path / "gone"))
    assert str(tmp_path / "gone") in str(missing_dir.value)
    with pytest.raises(FileNotFoundError):
        spawner.spawn([str(tmp_path / "no-such-program")], {}, str(tmp_path))
    assert os.getcwd() == old_cwd
    assert set(os.listdir("/proc/self/fd")) == fds
    os.waitpid(-1, 0)  # the /bin/true above
