"""The runner, against real processes: exits, environment, output caps, timeouts, kills, reaping.

Every test runs its own asyncio loop with SIGCHLD wired to `Runner.reap`, as the scheduler does,
and reads the JSON log events the runner wrote. Time windows are generous on purpose: these tests
must not flake on a loaded two-core machine.
"""

from __future__ import annotations

import asyncio
import ctypes
import grp
import io
import itertools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from gotorch import log
from gotorch.accounts import clear as clear_account_cache
from gotorch.events import Bus, Event, RunEnded
from gotorch.run_env import ROOT_PATH, USER_PATH, build_env
from gotorch.runner import Run, Runner, RunResult, RunSpec, set_child_subreaper
from gotorch.scheduler import Scheduler
from tests.conftest import describe_pids, pids_with_env

pytestmark = pytest.mark.integration

_ids = itertools.count(1)


class Harness:
    """A loop, a runner wired like the scheduler wires it, and the events it logged."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.buf = io.StringIO()
        log.configure(stream=self.buf, as_json=True)
        self.results: dict[str, RunResult] = {}
        self.ended: dict[str, Run] = {}
        self.runner = Runner(self.loop, self._on_end)
        self.loop.add_signal_handler(signal.SIGCHLD, self.runner.reap)
        self.closed = False

    def _on_end(self, run: Run, result: RunResult) -> None:
        assert run.spec.run_id not in self.results, "on_end called twice"
        self.results[run.spec.run_id] = result
        self.ended[run.spec.run_id] = run

    def spec(self, command: str | tuple[str, ...], **kw: Any) -> RunSpec:
        kw.setdefault("task", "t")
        kw.setdefault("run_id", f"r{next(_ids)}-{os.getpid()}")
        return RunSpec(command=command, **kw)

    def start(self, command: str | tuple[str, ...], **kw: Any) -> Run:
        run = self.runner.start(self.spec(command, **kw))
        assert run is not None, self.events("run.end")
        return run

    def wait_for(self, pred: Callable[[], bool], timeout: float) -> bool:
        async def poll() -> bool:
            deadline = time.monotonic() + timeout
            while not pred():
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.02)
            return True
        return self.loop.run_until_complete(poll())

    def sleep(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def wait_end(self, run: Run, timeout: float = 20.0) -> RunResult:
        rid = run.spec.run_id
        assert self.wait_for(lambda: rid in self.results, timeout), f"{rid} did not end in {timeout}s"
        return self.results[rid]

    def events(self, name: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        out = [json.loads(line) for line in self.buf.getvalue().splitlines() if line.strip()]
        return [e for e in out if (name is None or e["event"] == name)
                and (run_id is None or e.get("run_id") == run_id)]

    def lines(self, run: Run, stream: str | None = None) -> list[str]:
        return [e["line"] for e in self.events("run.output", run.spec.run_id)
                if stream is None or e["stream"] == stream]

    def wait_lines(self, run: Run, count: int, timeout: float = 10.0) -> list[str]:
        assert self.wait_for(lambda: len(self.lines(run)) >= count, timeout), self.lines(run)
        return self.lines(run)

    def shutdown(self, stop_timeout: float = 2.0, reason: str = "daemon stopping") -> None:
        self.loop.run_until_complete(self.runner.shutdown(stop_timeout, reason))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.shutdown()
        finally:
            self.loop.remove_signal_handler(signal.SIGCHLD)
            self.loop.close()
            log.configure(stream=sys.stderr)


@pytest.fixture(scope="module")
def subreaper() -> Iterator[None]:
    # Per process: makes double-fork tests meaningful (orphans come back to us, as to the daemon).
    assert set_child_subreaper()
    yield
    # Other test modules in this worker start background daemons; they must not come back to us.
    ctypes.CDLL(None, use_errno=True).prctl(36, 0, 0, 0, 0)


@pytest.fixture
def h(subreaper: None) -> Iterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()


def procs(pids: list[int]) -> list[psutil.Process]:
    """Handles that stay correct if a pid is reused later (psutil checks the creation time)."""
    return [psutil.Process(p) for p in pids]


def alive(proc: psutil.Process) -> bool:
    """True while `proc` exists at all, zombies included (a zombie is a reaping bug)."""
    return proc.is_running()


def my_children() -> list[psutil.Process]:
    return psutil.Process().children()


def escaped_pid(lines: list[str]) -> int:
    (pid,) = (int(x.split("=")[1]) for x in lines if x.startswith("escaped="))
    return pid


def wait_gone(h: Harness, ps: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    h.wait_for(lambda: not any(alive(p) for p in ps), timeout)
    return [p for p in ps if alive(p)]


# --- exits -----------------------------------------------------------------------------------------


def test_exit_codes_and_statuses(h: Harness) -> None:
    ok = h.start("exit 0")
    bad = h.start("exit 3")
    sig = h.start("kill -KILL $$")
    r_ok, r_bad, r_sig = h.wait_end(ok), h.wait_end(bad), h.wait_end(sig)
    assert (r_ok.status, r_ok.exit_code, r_ok.signal) == ("ok", 0, None)
    assert (r_bad.status, r_bad.exit_code, r_bad.signal) == ("failed", 3, None)
    # Killed by a signal we did not send: a failure, not "killed".
    assert (r_sig.status, r_sig.exit_code, r_sig.signal) == ("failed", None, "SIGKILL")
    assert ok.exit_status is not None and os.waitstatus_to_exitcode(ok.exit_status) == 0
    assert sig.exit_status is not None and os.waitstatus_to_exitcode(sig.exit_status) == -signal.SIGKILL

    start = h.events("run.start", ok.spec.run_id)
    assert len(start) == 1 and start[0]["pid"] == ok.pid and start[0]["task"] == "t"
    assert start[0]["scheduled_at"] is None and start[0]["lateness_ms"] is None
    (end,) = h.events("run.end", bad.spec.run_id)
    assert end["status"] == "failed" and end["exit_code"] == 3 and end["signal"] is None
    assert end["pid"] == bad.pid and end["duration_s"] >= 0
    assert end["output_bytes"] == 0 and end["dropped_bytes"] == 0
    assert h.runner.runs == {} and h.runner.running_count("t") == 0


def test_runs_and_running_count(h: Harness) -> None:
    a1 = h.start("sleep 1000", task="a")
    a2 = h.start("sleep 1000", task="a")
    b = h.start("sleep 1000", task="b")
    assert h.runner.running_count("a") == 2 and h.runner.running_count("b") == 1
    assert h.runner.running_count("zzz") == 0
    assert set(h.runner.runs) == {a1.spec.run_id, a2.spec.run_id, b.spec.run_id}
    assert h.runner.runs[b.spec.run_id] is b and b.started_at <= time.time()
    h.runner.terminate(a1)
    assert h.wait_end(a1).status == "killed"
    assert h.runner.running_count("a") == 1 and a1.spec.run_id not in h.runner.runs
    h.runner.terminate(a2)
    h.runner.terminate(b)
    h.wait_end(a2)
    h.wait_end(b)
    assert h.runner.running_count("a") == 0 and h.runner.runs == {}


def test_a_batch_spawns_first_and_sets_up_pipes_timers_and_events_at_its_end(h: Harness) -> None:
    with h.runner.batch():
        runs = [h.start("echo out-$TORCH_RUN_ID; echo err >&2", task="a", timeout=30.0) for _ in range(3)]
        # Spawned and counted (max_instances sees them), nothing else yet.
        assert h.runner.running_count("a") == 3
        assert all(r.pid > 0 and not r._streams and r._timeout_handle is None for r in runs)
        with h.runner.batch():  # nested: the outer block does the set-up
            inner = h.start("echo inner", task="a")
        assert not inner._streams
    assert all(len(r._streams) == 2 and r._timeout_handle is not None for r in runs)
    for run in runs:
        assert h.wait_end(run).status == "ok"
        assert h.lines(run) in (["out-" + run.spec.run_id, "err"], ["err", "out-" + run.spec.run_id])
        assert h.events("run.start", run.spec.run_id)
    assert h.wait_end(inner).status == "ok" and h.lines(inner) == ["inner"]


def test_spawn_failures_return_none_and_report_failed(h: Harness) -> None:
    specs = [
        h.spec(("/nonexistent/program",)),
        h.spec("true", workdir="/nonexistent/dir"),
        h.spec("true", user="no-such-user-torch"),
        h.spec(()),
    ]
    for spec in specs:
        assert h.runner.start(spec) is None
        result = h.results[spec.run_id]
        assert result.status == "failed" and result.error, result
        assert result.exit_code is None and result.signal is None
        (end,) = h.events("run.end", spec.run_id)
        assert end["status"] == "failed" and end["error"] == result.error
    assert "no-such-user-torch" in (h.results[specs[2].run_id].error or "")
    assert h.runner.runs == {} and h.runner.running_count("t") == 0

    running = h.start("sleep 1000")
    dup = h.spec("true", run_id=running.spec.run_id)
    assert h.runner.start(dup) is None
    h.runner.kill_now(running)
    h.wait_end(running)


# --- environment and command -----------------------------------------------------------------------


def test_environment_is_clean(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_X", "do-not-leak")
    run = h.start(("/usr/bin/env",), task="envtask", env=(("FOO", "bar baz"), ("TORCH_RUN_ID", "spoof")),
                  scheduled_ts=1806195600.0)
    assert h.wait_end(run).status == "ok"
    env = dict(line.split("=", 1) for line in h.lines(run, "stdout"))
    me = pwd.getpwuid(os.geteuid())
    assert env == {
        "PATH": ROOT_PATH if os.geteuid() == 0 else USER_PATH,
        "HOME": me.pw_dir,
        "USER": me.pw_name,
        "LOGNAME": me.pw_name,
        "SHELL": me.pw_shell,
        "FOO": "bar baz",
        "TORCH_TASK": "envtask",
        "TORCH_RUN_ID": run.spec.run_id,
        "TORCH_SCHEDULED_AT": "2027-03-28T01:00:00Z",
        "TORCH_RUN_KEY": run.spec.run_id,
        "TORCH_RUN_TASK": "envtask",
    }
    (start,) = h.events("run.start", run.spec.run_id)
    assert start["scheduled_at"] == "2027-03-28T01:00:00Z"
    assert isinstance(start["lateness_ms"], float)  # the boundary is in the past: huge, but measured

    daemon_run = build_env(RunSpec("d", "id1", "true", env=(("TORCH_SCHEDULED_AT", "x"),)))
    assert "TORCH_SCHEDULED_AT" not in daemon_run and "SECRET_X" not in daemon_run


def test_task_env_overrides_base(h: Harness) -> None:
    run = h.start('echo "$PATH"', env=(("PATH", "/opt/bin:/bin"),))
    h.wait_end(run)
    assert h.lines(run) == ["/opt/bin:/bin"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_runs_as_another_user(h: Harness) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    run = h.start('id -u; id -g; echo "$HOME $USER $PATH"; pwd', user="nobody")
    assert h.wait_end(run).status == "ok", h.lines(run)
    home_cwd = nobody.pw_dir if os.path.isdir(nobody.pw_dir) else "/"
    assert h.lines(run, "stdout") == [
        str(nobody.pw_uid), str(nobody.pw_gid), f"{nobody.pw_dir} nobody {USER_PATH}", home_cwd]


def test_shell_string_vs_argv_tuple(h: Harness, tmp_path: Any) -> None:
    shell = h.start("echo $((1+2)) | tr 3 4")
    argv = h.start(("echo", "$((1+2))", "|", "tr"))
    cwd = h.start(("pwd",), workdir=str(tmp_path))
    h.wait_end(shell)
    h.wait_end(argv)
    h.wait_end(cwd)
    assert h.lines(shell) == ["4"]
    assert h.lines(argv) == ["$((1+2)) | tr"]
    assert h.lines(cwd) == [str(tmp_path)]


# --- output ----------------------------------------------------------------------------------------


def test_output_lines_are_logged_with_their_stream(h: Harness) -> None:
    run = h.start(r"echo out1; echo err1 >&2; printf 'crlf\r\n'; printf 'bad\377\n'; "
                  r"echo err2 >&2; printf 'no newline at end'")
    result = h.wait_end(run)
    assert h.lines(run, "stdout") == ["out1", "crlf", "bad\ufffd", "no newline at end"]
    assert h.lines(run, "stderr") == ["err1", "err2"]
    expected = len(b"out1\nerr1\ncrlf\r\nbad\377\nerr2\nno newline at end")
    assert (result.output_bytes, result.dropped_bytes) == (expected, 0)
    for event in h.events("run.output", run.spec.run_id):
        assert event["task"] == "t" and event["run_id"] == run.spec.run_id


def test_output_limit_caps_logging_and_counts_dropped(h: Harness) -> None:
    run = h.start("for i in $(seq 1 200); do echo line-$i; done; echo tail >&2", output_limit=100)
    result = h.wait_end(run)
    full = "".join(f"line-{i}\n" for i in range(1, 201)) + "tail\n"
    assert result.status == "ok"
    assert result.output_bytes == 100
    assert result.output_bytes + result.dropped_bytes == len(full)
    lines = h.lines(run, "stdout")
    # Whole lines up to the budget, then the last one cut to what is left of it.
    assert "\n".join(lines) == full[:100].rstrip("\n")
    assert lines[-1] == full[:100].rsplit("\n", 1)[-1] or full[99] == "\n"
    (end,) = h.events("run.end", run.spec.run_id)
    assert (end["output_bytes"], end["dropped_bytes"]) == (100, len(full) - 100)


def test_endless_line_is_logged_in_bounded_pieces(h: Harness) -> None:
    run = h.start((sys.executable, "-c", "import sys; sys.stdout.write('x' * 150000 + '\\n')"),
                  output_limit=1_000_000)
    result = h.wait_end(run)
    lines = h.lines(run)
    assert "".join(lines) == "x" * 150000
    assert len(lines) > 1 and all(len(line) < 200_000 for line in lines)
    assert (result.output_bytes, result.dropped_bytes) == (150001, 0)


def test_one_gigabyte_of_output_keeps_memory_bounded(h: Harness) -> None:
    me = psutil.Process()
    baseline = me.memory_info().rss
    peak = baseline

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, me.memory_info().rss)
            await asyncio.sleep(0.02)

    sampler = h.loop.create_task(sample())
    blob = h.start(r"head -c 1000000000 /dev/zero | tr '\0' 'x'")
    lines = h.start("yes | head -c 200000000", output_limit=1000)
    r_blob, r_lines = h.wait_end(blob, 50), h.wait_end(lines, 50)
    sampler.cancel()
    assert r_blob.status == "ok" and r_lines.status == "ok"
    assert (r_blob.output_bytes, r_blob.output_bytes + r_blob.dropped_bytes) == (65536, 1_000_000_000)
    assert (r_lines.output_bytes, r_lines.output_bytes + r_lines.dropped_bytes) == (1000, 200_000_000)
    assert h.lines(blob) == ["x" * 65536]
    assert h.lines(lines) == ["y"] * 500
    assert peak - baseline < 20 * 1024 * 1024, f"rss grew by {(peak - baseline) / 2**20:.1f} MiB"


def test_pipe_held_by_background_process_ends_run_after_grace(h: Harness) -> None:
    # cron semantics: `x &` may outlive its run; the run must still end (pipes closed after ~1 s).
    run = h.start("sleep 1000 & echo $!")
    t0 = time.monotonic()
    result = h.wait_end(run)
    assert 0.5 < time.monotonic() - t0 < 10
    assert result.status == "ok" and result.duration_s < 1.0
    (bg,) = procs([int(x) for x in h.lines(run)])
    assert alive(bg) and bg.status() != psutil.STATUS_ZOMBIE
    h.shutdown()  # leftovers are orphans of the daemon: shutdown kills and reaps them
    assert not alive(bg)
    assert my_children() == []


# --- timeouts and kills ----------------------------------------------------------------------------


def test_timeout_kills_group_and_all_grandchildren(h: Harness) -> None:
    run = h.start("for i in $(seq 1 20); do sleep 1000 & echo $!; done; wait", timeout=1.0, kill_timeout=10)
    kids = procs([int(x) for x in h.wait_lines(run, 20)])
    assert len(kids) == 20 and all(alive(p) for p in kids)
    result = h.wait_end(run)
    assert result.status == "timeout" and result.reason == "timeout after 1s"
    assert result.signal == "SIGTERM" and result.exit_code is None
    assert 0.9 <= result.duration_s < 9
    assert wait_gone(h, kids) == []
    (timeout_event,) = h.events("run.timeout", run.spec.run_id)
    assert timeout_event["timeout_s"] == 1.0
    (end,) = h.events("run.end", run.spec.run_id)
    assert end["status"] == "timeout" and end["signal"] == "SIGTERM" and end["reason"] == "timeout after 1s"


def test_child_ignoring_sigterm_gets_sigkill_after_kill_timeout(h: Harness) -> None:
    run = h.start("trap '' TERM; echo ready; sleep 1000 & echo $!; wait; wait; sleep 1000",
                  timeout=1.0, kill_timeout=1.5)
    lines = h.wait_lines(run, 2)
    bg = psutil.Process(int(lines[1]))
    result = h.wait_end(run)
    assert (result.status, result.signal) == ("timeout", "SIGKILL")
    assert result.duration_s >= 2.4
    assert wait_gone(h, [bg]) == []
    sent = [e["signal"] for e in h.events("run.signal", run.spec.run_id)]
    assert sent[:2] == ["SIGTERM", "SIGKILL"]


def test_kill_outlives_the_run_for_term_ignoring_grandchild(h: Harness) -> None:
    # The shell dies of SIGTERM at the timeout and the run ends, but the grandchild ignores TERM:
    # the pending SIGKILL must still reach it after kill_timeout.
    # kill_timeout well beyond the 1 s pipe grace after which the run ends: on a loaded machine a
    # shorter one let the KILL come first, and the grandchild was gone before it could be seen alive.
    run = h.start("(trap '' TERM; exec sleep 1000) & echo $!; wait", timeout=0.5, kill_timeout=6.0)
    (bg,) = procs([int(x) for x in h.wait_lines(run, 1)])
    result = h.wait_end(run)
    assert (result.status, result.signal) == ("timeout", "SIGTERM")
    assert alive(bg)
    assert wait_gone(h, [bg], timeout=20) == []
    assert [e["signal"] for e in h.events("run.signal", run.spec.run_id)] == ["SIGTERM", "SIGKILL"]


DOUBLE_FORK = textwrap.dedent("""\
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            print(f"escaped={os.getpid()}", flush=True)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 1)
            os.dup2(null, 2)
            time.sleep(1000)
        os._exit(0)
    os.wait()
    print("parent", flush=True)  # may come before or after the grandchild's line
    if sys.argv[1] == "stay":
        time.sleep(1000)
    """)


def test_terminate_kills_escaped_double_forked_grandchild(h: Harness) -> None:
    run = h.start((sys.executable, "-c", DOUBLE_FORK, "stay"), kill_timeout=10)
    pid = escaped_pid(h.wait_lines(run, 2))
    escaped = psutil.Process(pid)
    assert os.getsid(pid) != run.pid and os.getpgid(pid) != run.pid  # it left the run's group
    assert escaped.ppid() == os.getpid()  # and came back to us, the subreaper
    h.runner.terminate(run)
    result = h.wait_end(run)
    assert (result.status, result.signal) == ("killed", "SIGTERM")
    assert wait_gone(h, [escaped]) == []
    (sig,) = h.events("run.signal", run.spec.run_id)
    assert sig["signal"] == "SIGTERM" and sig["escaped"] == [pid] and sig["reason"] == "terminate"


def test_kill_now_does_not_wait(h: Harness) -> None:
    run = h.start("trap '' TERM; echo ready; sleep 1000", kill_timeout=60)
    h.wait_lines(run, 1)
    h.runner.terminate(run)
    h.sleep(0.3)
    assert run.spec.run_id in h.runner.runs  # TERM is ignored; KILL is a minute away
    h.runner.kill_now(run, "stop forced (second SIGTERM)")
    result = h.wait_end(run, 10)
    # The KILL is what ended it: its reason replaces the TERM's.
    assert (result.status, result.signal, result.reason) == ("killed", "SIGKILL", "stop forced (second SIGTERM)")
    h.runner.kill_now(run)  # on an ended run: harmless
    h.runner.terminate(run)


def test_shutdown_leaves_no_process_and_no_zombie(h: Harness) -> None:
    plain = h.start("echo ready; sleep 1000")
    group = h.start("for i in 1 2 3 4 5; do sleep 1000 & echo $!; done; wait")
    stubborn = h.start("trap '' TERM; sleep 1000 & echo $!; wait; sleep 1000")
    escaper = h.start((sys.executable, "-c", DOUBLE_FORK, "stay"))
    gone_parent = h.start((sys.executable, "-c", DOUBLE_FORK, "exit"))  # ends; its grandchild stays
    nohup = h.start("nohup sleep 1000 >/dev/null 2>&1 & echo $!")
    h.wait_lines(plain, 1)
    pids = [int(x) for x in h.wait_lines(group, 5)]
    pids += [int(h.wait_lines(stubborn, 1)[0])]
    pids += [escaped_pid(h.wait_lines(escaper, 2)), escaped_pid(h.wait_lines(gone_parent, 2))]
    pids += [int(h.wait_lines(nohup, 1)[0])]
    assert h.wait_end(gone_parent).status == "ok" and h.wait_end(nohup).status == "ok"
    running = [plain, group, stubborn, escaper]
    pids += [r.pid for r in running]
    tree = procs(pids)
    assert all(alive(p) for p in tree)

    t0 = time.monotonic()
    h.shutdown(stop_timeout=1.0)
    assert time.monotonic() - t0 < 10
    for run in running:
        assert h.results[run.spec.run_id].status == "killed", run
    assert h.results[stubborn.spec.run_id].signal == "SIGKILL"
    assert h.runner.runs == {}
    assert [p for p in tree if alive(p)] == []
    assert my_children() == []  # nothing left, zombies included
    ends = {e["run_id"] for e in h.events("run.end")}
    assert {r.spec.run_id for r in running} <= ends
    # After shutdown nothing new may start.
    assert h.runner.start(h.spec("true")) is None


def test_runs_stopped_by_shutdown_end_killed_with_the_reason_given(h: Harness) -> None:
    plain = h.start("echo ready; sleep 1000")
    retired = h.start("trap '' TERM; echo ready; sleep 1000", kill_timeout=60)
    done = h.start("echo done")
    h.wait_lines(plain, 1)
    h.wait_lines(retired, 1)
    assert h.wait_end(done).status == "ok"
    h.runner.terminate(retired, "task changed by a reload")  # TERM ignored: still there at shutdown
    h.shutdown(stop_timeout=0.5, reason="daemon stopping (SIGTERM)")
    assert (h.results[plain.spec.run_id].status, h.results[plain.spec.run_id].reason) == (
        "killed", "daemon stopping (SIGTERM)")
    # Being stopped already, it keeps the reason it was stopped for first.
    assert (h.results[retired.spec.run_id].status, h.results[retired.spec.run_id].reason) == (
        "killed", "task changed by a reload")
    assert h.results[done.spec.run_id].reason is None
    (end,) = h.events("run.end", plain.spec.run_id)
    assert end["status"] == "killed" and end["reason"] == "daemon stopping (SIGTERM)"
    (end,) = h.events("run.end", done.spec.run_id)
    assert "reason" not in end  # a run that ended by itself logs no reason, as before


def test_the_stop_signal_is_named_in_the_reason_and_a_second_one_forces_the_stop(
        subreaper: None, tmp_path: Any) -> None:
    loop = asyncio.new_event_loop()
    bus = Bus()
    ended: dict[str, RunEnded] = {}

    def on_event(event: Event) -> None:
        if isinstance(event, RunEnded):
            ended[event.run_id] = event

    bus.subscribe(on_event)
    try:
        sched = Scheduler(loop, state_dir=tmp_path, stop_timeout=60, bus=bus)
        polite = sched.runner.start(RunSpec("t", f"p{next(_ids)}", "sleep 1000"))
        stubborn = sched.runner.start(RunSpec("t", f"s{next(_ids)}", "trap '' TERM; sleep 1000 & wait"))
        assert polite is not None and stubborn is not None

        async def stop() -> None:
            await asyncio.sleep(0.3)  # let the shells set their traps
            sched.request_stop("SIGINT")
            while polite.spec.run_id not in ended:
                await asyncio.sleep(0.02)
            sched.request_stop("SIGTERM")  # the stubborn one would hold the stop for 60 s
            await asyncio.wait_for(sched.wait_stopped(), 20)

        loop.run_until_complete(stop())
        assert (ended[polite.spec.run_id].status, ended[polite.spec.run_id].reason) == (
            "killed", "daemon stopping (SIGINT)")
        assert (ended[stubborn.spec.run_id].status, ended[stubborn.spec.run_id].reason) == (
            "killed", "stop forced (second SIGTERM)")
    finally:
        loop.close()


def test_reap_takes_orphans_without_a_run(h: Harness) -> None:
    run = h.start((sys.executable, "-c", DOUBLE_FORK, "exit"))
    escaped = psutil.Process(escaped_pid(h.wait_lines(run, 2)))
    assert h.wait_end(run).status == "ok"
    escaped.kill()
    assert wait_gone(h, [escaped]) == []  # reaped by the SIGCHLD handler, not left a zombie


# --- processes started in reaction to TERM -----------------------------------------------------------

# The run's shell answers TERM by starting a process in a session of its own (it leaves the group, but
# carries TORCH_RUN_ID), then exits 0: the run ends, and the escapee was not there at TERM time.
REACTING_SHELL = "trap '{action}; exit 0' TERM; echo ready; sleep 1000"
# The escapee of the "plain" case: it holds the run's pipes and dies of TERM.
PLAIN_ESCAPEE = 'setsid sleep 1000 & echo "escaped=$!"'
# The escapee of the "stubborn" case: it ignores TERM from birth (it may get one right away), has a
# child of its own at once, and a moment later forks again into yet another session (it records
# that pid: the test checks that the late fork happened).
STUBBORN_ESCAPEE = '(trap "" TERM; exec setsid sh -c "$STUBBORN" </dev/null >/dev/null 2>&1) & echo "escaped=$!"'
STUBBORN = textwrap.dedent("""\
    sleep 1000 &
    sleep 0.5
    setsid sleep 1000 &
    echo $! > "$LATE_PID_FILE"
    sleep 1000
    """)


def run_id_pids(run: Run) -> list[int]:
    """Live processes (zombies count as gone) carrying `run`'s TORCH_RUN_ID, found in /proc."""
    return pids_with_env("TORCH_RUN_ID", run.spec.run_id)


@pytest.mark.parametrize("escapee", ["plain", "stubborn"])
@pytest.mark.parametrize("trigger", ["timeout", "terminate", "shutdown"])
def test_processes_started_in_reaction_to_term_do_not_outlive_the_kill(
        h: Harness, tmp_path: Any, trigger: str, escapee: str) -> None:
    kill_timeout = 1.5
    late_pid_file = tmp_path / "late.pid"
    action = PLAIN_ESCAPEE if escapee == "plain" else STUBBORN_ESCAPEE
    run = h.start(REACTING_SHELL.format(action=action),
                  env=(("STUBBORN", STUBBORN), ("LATE_PID_FILE", str(late_pid_file))),
                  timeout=1.0 if trigger == "timeout" else None, kill_timeout=kill_timeout)
    assert h.wait_lines(run, 1) == ["ready"]
    t0 = time.monotonic()
    if trigger == "terminate":
        h.runner.terminate(run)
    elif trigger == "shutdown":
        h.shutdown(stop_timeout=kill_timeout)
    result = h.wait_end(run)
    assert result.status == ("timeout" if trigger == "timeout" else "killed"), result
    assert (result.exit_code, result.signal) == (0, None)  # the shell itself answered TERM by exiting
    escaped_pid(h.lines(run))  # the trap did start its escapee (else this test proves nothing)
    # Once the run has ended and kill_timeout has passed since the TERM, nothing of it may be left.
    deadline = (1.0 if trigger == "timeout" else 0.0) + kill_timeout + 3.0
    h.wait_for(lambda: not run_id_pids(run), max(0.0, deadline - (time.monotonic() - t0)))
    left = run_id_pids(run)
    assert left == [], describe_pids(left)
    if escapee == "stubborn":
        late = int(late_pid_file.read_text())  # the late fork happened, and it is gone too
        assert late not in pids_with_env("TORCH_RUN_ID")


def test_kill_rescans_for_processes_forked_between_scan_and_kill(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # An escapee that ignores TERM; at the KILL, it forks (modelled by spawning a process with the
    # run's id just before the KILL reaches it): the child was not in the scan, a rescan must find it.
    run = h.start("trap '' TERM; setsid sleep 1000 & echo $!; sleep 1000", kill_timeout=0.5)
    escapee = int(h.wait_lines(run, 1)[0])
    late: list[int] = []
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if pid == escapee and sig == signal.SIGKILL and not late:
            env = {"PATH": "/usr/bin:/bin", "TORCH_RUN_ID": run.spec.run_id, "TORCH_RUN_KEY": run.spec.run_id}
            late.append(os.posix_spawn("/bin/sleep", ["sleep", "1000"], env, setsid=True))
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    h.runner.terminate(run)
    result = h.wait_end(run)
    assert (result.status, result.signal) == ("killed", "SIGKILL")
    assert len(late) == 1, "the escapee was never KILLed on its own"
    h.wait_for(lambda: not run_id_pids(run), 5.0)
    assert run_id_pids(run) == [], describe_pids(run_id_pids(run))


# --- user and group ----------------------------------------------------------------------------------


class Accounts:
    """A throw-away user whose primary group is `primary`, listed as a member of `listed`, and a
    third group `chosen` the user is not in (the task's `group:`)."""

    def __init__(self) -> None:
        suffix = f"{os.getpid()}x{next(_ids)}"
        self.user = f"tqu{suffix}"
        self.primary, self.listed, self.chosen = (f"tq{k}{suffix}" for k in "plc")

    def gid(self, name: str) -> int:
        return grp.getgrnam(name).gr_gid


def _admin(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{argv}: {r.stderr}"


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    if os.geteuid() != 0:
        pytest.skip("creating accounts and running tasks as them needs root")
    if not (shutil.which("useradd") and shutil.which("groupadd")):
        pytest.skip("useradd/groupadd (passwd package) not installed")
    a = Accounts()
    made: list[tuple[str, ...]] = []
    try:
        for group in (a.primary, a.listed, a.chosen):
            _admin("groupadd", group)
            made.append(("groupdel", group))
        _admin("useradd", "-M", "-s", "/bin/sh", "-g", a.primary, "-G", a.listed, a.user)
        made.append(("userdel", a.user))
        clear_account_cache()
        yield a
    finally:
        for argv in reversed(made):
            subprocess.run(argv, capture_output=True, timeout=60)
        clear_account_cache()


SHOW_GROUPS = "grep -E '^(Gid|Groups):' /proc/self/status"


def run_groups(h: Harness, **kw: Any) -> tuple[set[int], set[int]]:
    """(the real/effective/saved/fs gids, the supplementary groups) of a run of SHOW_GROUPS."""
    run = h.start(SHOW_GROUPS, **kw)
    assert h.wait_end(run).status == "ok", h.lines(run)
    fields = dict(line.split(":", 1) for line in h.lines(run, "stdout"))
    return {int(g) for g in fields["Gid"].split()}, {int(g) for g in fields["Groups"].split()}


def test_user_with_group_drops_the_users_primary_group(h: Harness, accounts: Accounts) -> None:
    a = accounts
    primary, listed, chosen = a.gid(a.primary), a.gid(a.listed), a.gid(a.chosen)
    # As initgroups(user, group): the chosen group and the groups listing the user, nothing else.
    assert run_groups(h, user=a.user, group=a.chosen) == ({chosen}, {chosen, listed})
    # Without group: the primary group, as before.
    assert run_groups(h, user=a.user) == ({primary}, {primary, listed})
    # A user listed as a member of its primary group keeps it, as with initgroups.
    _admin("usermod", "-a", "-G", a.primary, a.user)
    clear_account_cache()
    assert run_groups(h, user=a.user, group=a.chosen) == ({chosen}, {chosen, listed, primary})


def test_task_without_user_with_group_drops_the_daemon_users_primary_group(
        h: Harness, accounts: Accounts) -> None:
    # No user: the run is the daemon's user (root here), and `group:` follows the same rule. The
    # daemon carries its primary group as a supplementary one, as after a login or `su`.
    me = pwd.getpwuid(os.geteuid())
    chosen = accounts.gid(accounts.chosen)
    saved = os.getgroups()
    os.setgroups([me.pw_gid])
    try:
        gids, groups = run_groups(h, group=accounts.chosen)
    finally:
        os.setgroups(saved)
    assert gids == {chosen}
    assert groups == set(os.getgrouplist(me.pw_name, chosen))
    if me.pw_name not in grp.getgrgid(me.pw_gid).gr_mem:
        assert me.pw_gid not in groups
