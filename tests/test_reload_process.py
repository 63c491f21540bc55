"""The reload's own process (gotorch.reload_process) and how the daemon talks to it (reload_client.load_in_child)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
import resource
import signal
import subprocess
import types
from pathlib import Path
from typing import Any

import pytest

from gotorch import log, reload_process
from gotorch.config import parse_config
from gotorch.hosts import host_addresses
from gotorch.loader import Loaded, LoadFailed, read_settled
from gotorch.reload_client import load_in_child

TASKS = 'version: 1\ntasks:\n  - {name: t, schedule: "@yearly", command: "true", ips: [127.0.0.1]}\n'


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _load(path: Path, **kw: Any) -> Loaded | LoadFailed:
    """load_in_child in a loop of its own; its process is reaped here (the daemon's Runner.reap does it there)."""
    spawned: list[int] = []
    real_spawn = reload_process.spawn

    def spawn() -> reload_process.ReloadProcess:
        p = real_spawn()
        spawned.append(p.pid)
        return p

    reload_process.spawn = spawn  # type: ignore[assignment]
    try:
        return asyncio.run(load_in_child(path, **kw))
    finally:
        reload_process.spawn = real_spawn  # type: ignore[assignment]
        for pid in spawned:
            _reap(pid)


def test_empty_host_ips_variable_means_the_interfaces_as_at_start(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # `TORCH_HOST_IPS=` (set, empty) is "unset" at start; the reload process once got [] instead and
    # every task with `ips:` was dropped by the first reload.
    (tmp_path / "tasks.yaml").write_text(TASKS)
    monkeypatch.setenv("TORCH_HOST_IPS", "")
    got = _load(tmp_path / "tasks.yaml", host_ips=None)
    assert isinstance(got, Loaded), got
    assert got.addresses == host_addresses(None) and got.addresses
    assert got.here == {"t": "127.0.0.1"}


def test_reload_process_of_other_code_is_refused_with_restart_advice(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # After an upgrade on disk the daemon runs the old code; a new interpreter would load the new one,
    # and pickles of one version do not fit the other's classes.
    (tmp_path / "tasks.yaml").write_text(TASKS)
    monkeypatch.setattr(reload_process, "code_fingerprint", lambda: "not-this-code")
    got = _load(tmp_path / "tasks.yaml", host_ips="127.0.0.1")
    assert isinstance(got, LoadFailed) and not got.transient
    assert "restart the daemon" in got.errors[0].hint


def test_reload_process_ignores_pythonpath_and_the_working_directory(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # It runs as root: a PYTHONPATH (or a cwd) someone else can write must not get code imported.
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "imported"
    for name in ("pickle.py", "yaml.py", "zlib.py"):
        (evil / name).write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('evil')\n")
    (tmp_path / "tasks.yaml").write_text(TASKS)
    monkeypatch.setenv("PYTHONPATH", str(evil))
    monkeypatch.chdir(evil)
    got = _load(tmp_path / "tasks.yaml", host_ips="127.0.0.1")
    assert isinstance(got, Loaded), got
    assert not marker.exists()


def test_exited_works_for_a_pidfd_numbered_beyond_select_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1600:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below 1600")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1600), hard))
    try:
        p = reload_process.spawn()
        assert p.pidfd is not None
        high = os.dup2(p.pidfd, 1500)
        os.close(p.pidfd)
        p.pidfd = high
        assert not p.exited()
        os.kill(p.pid, signal.SIGKILL)
        _reap(p.pid)
        assert p.exited()
        p.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_settle_never_spins_on_a_modification_time_in_the_future(tmp_path: Path) -> None:
    f = tmp_path / "tasks.yaml"
    f.write_text("x")
    mtime = max(f.stat().st_mtime, f.stat().st_ctime)
    clock = types.SimpleNamespace(now=mtime - 0.35, slept=[])

    def sleep(s: float) -> None:
        clock.slept.append(s)
        clock.now += s

    assert read_settled(str(f), os.geteuid(), settle=0.0, now=lambda: clock.now, sleep=sleep).data == b"x"
    assert clock.slept == [0.1]  # a real wait before the re-read (it was sleep(0): a busy loop)


def test_queued_and_retried_reloads_keep_waiting_for_the_file_to_settle(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # An edit seen by the watcher may be half-written: the reload it queues behind a running one,
    # and the retry of one that failed for it, must wait for the file too.
    import gotorch.service as service_module
    from gotorch.config_errors import ConfigError

    config = parse_config(TASKS, "t.yaml", check_accounts=False)
    asked: list[bool] = []

    async def fake_load(path: Path, host_ips: str | None, base: object, *, settle: bool, **_: object) -> object:
        asked.append(settle)
        await asyncio.sleep(0.05)
        return LoadFailed([ConfigError("t.yaml", 0, 0, "", "still being written")], transient=True)

    monkeypatch.setattr(service_module, "load_in_child", fake_load)
    monkeypatch.setattr(service_module, "RETRY_FIRST_S", 0.05)

    async def main() -> None:
        s = service_module.Service(Path("t.yaml"), config, paths=types.SimpleNamespace(state_dir=tmp_path),  # type: ignore[arg-type]
                                   addresses=[], watch=False)
        s.loop = asyncio.get_running_loop()
        s.scheduler = service_module.Scheduler(s.loop, state_dir=tmp_path)
        s.request_reload("SIGUSR2")  # explicit: read at once
        s.request_reload("file")  # queued behind it
        while len(asked) < 3:  # the explicit one, the queued watcher one, the retry of that one
            await asyncio.sleep(0.02)
        s._cancel_reload()

    asyncio.run(main())
    assert asked[:3] == [False, True, True]


def test_log_line_torn_by_a_full_disk_does_not_swallow_the_next_line(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "torch.log"
    log.configure(file=path)
    real_write = os.write
    calls = {"n": 0}

    def write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:  # half of the first line goes out, then the disk is full
            return real_write(fd, bytes(data[: len(data) // 2]))
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    try:
        log.log_event(_Ev("first"))
        log.log_event(_Ev("second"))
    finally:
        monkeypatch.setattr(os, "write", real_write)
        log.configure(stream=io.StringIO())
    lines = path.read_text().splitlines()
    # The torn line is ended; the write that failed is reported (one line lost: the newline's write
    # failed with it, so "first" stays torn) before the next line, which is whole.
    assert len(lines) == 3 and json.loads(lines[2])["event"] == "second", lines
    assert json.loads(lines[1])["event"] == "log.lines_lost" and json.loads(lines[1])["lines"] == 1, lines


class _Ev:
    """The least an event needs to be logged."""

    def __init__(self, name: str) -> None:
        self.name = name

    def severity(self) -> str:
        return "info"

    def data(self) -> dict[str, Any]:
        return {"what": self.name * 20}


def _modules_after(argv_head: list[str], imports: str) -> dict[str, bool]:
    """Which of asyncio and ssl a fresh interpreter started with `argv_head` has after `imports`."""
    code = (f"import sys; sys.path.append({reload_process._ROOT!r}); {imports}; "
            "import json; print(json.dumps({m: m in sys.modules for m in ('asyncio', 'ssl')}))")
    out = subprocess.run([*argv_head, "-c", code], capture_output=True, text=True, check=True,
                         env=reload_process.clean_env())
    got: dict[str, bool] = json.loads(out.stdout)
    return got


def test_helper_processes_import_no_event_loop_and_the_daemon_no_openssl() -> None:
    argv = reload_process.python_argv("gotorch.reload_process")
    head = argv[:argv.index("-c")]
    assert head[1:] == ["-I", "-X", reload_process.HELPER_OPTION]
    # What the reload and fence processes import, up to their work: asyncio's ~90 ms is not among it.
    assert _modules_after(head, "import gotorch.reload_process, gotorch.loader, gotorch.fleet.fence") == {
        "asyncio": False, "ssl": False}
    # The daemon's own interpreter has asyncio, still without ssl (OpenSSL's ~5 MB resident).
    assert _modules_after([head[0], "-I"], "import gotorch.service") == {"asyncio": True, "ssl": False}
