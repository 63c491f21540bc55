"""Containment against the real daemon: runs that try to get away, refuse to die, or flood it.

Two nasty tasks run beside a sentinel that fires every second:

* `hydra` ignores SIGTERM and double-forks 200 grandchildren, each `setsid` into a session of its
  own (out of the run's process group, reparented to the daemon, the subreaper), ignoring SIGTERM
  too. Its processes are a symlink to sleep named with a marker unique to the test, so /proc shows
  them by name as well as by their TORCH_RUN_KEY.
* `firehose` ignores SIGTERM and prints 1 GB (one line) against an output_limit of 64 KiB.

For each way a run is stopped (`torch kill TASK`, the task's `timeout`, `torch stop`) the tests check
that nothing of it is left running afterwards (zombies count as gone: this sandbox's PID 1 does not
reap orphans), that exactly output_limit bytes of the flood were kept, that the daemon's memory
stayed bounded, and that the sentinel kept firing every second meanwhile.

(tests/test_runner.py covers the runner's kill paths one process at a time; test_lifecycle.py and
test_scheduler_integration.py a handful of grandchildren per path. These are the 200-session,
all-three-paths versions, against the daemon.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psutil
import pytest

from tests.conftest import MISSED_ALLOWED, Torch, describe_pids, missed_seconds, pids_with_env, wait_until

pytestmark = pytest.mark.integration

GRANDCHILDREN = 200
ONE_GB = 1_000_000_000
LIMIT = 64 * 1024
# How late the sentinel's command may run after its second on a loaded 2-core machine (later than a
# second, the scheduler must report the fire missed instead, which the tests count).
LATE_MAX = 5.0
# Growth of the daemon's RSS allowed while all this goes on.
RSS_GROWTH_MAX = 32 * 1024 * 1024
NEVER = '"0 0 0 1 1 *"'  # these tasks run when asked to


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


class Scene:
    """The task file, the marker and the sentinel's record for one test."""

    def __init__(self, made: list[Scene], t: Torch, hydra_extra: str = "", firehose_extra: str = "") -> None:
        made.append(self)
        self.t = t
        self.run_ids: list[str] = []
        self.out = t.tmp / "sentinel.txt"
        self.mark = t.tmp / f"torch-hydra-{uuid.uuid4().hex[:12]}"
        os.symlink("/bin/sleep", self.mark)
        hydra = (f"trap '' TERM; for i in $(seq {GRANDCHILDREN}); do (setsid {self.mark} 1000 &); done; "
                 f"exec {self.mark} 1000")
        firehose = r"trap '' TERM; head -c 1000000000 /dev/zero | tr '\0' x; echo; echo done; exec sleep 1000"
        t.write(f"""\
        version: 1
        tasks:
          - name: sentinel
            schedule: "* * * * * *"
            command: echo "$TORCH_SCHEDULED_AT $(date +%s.%N)" >> {self.out}
          - name: hydra
            schedule: {NEVER}
            command: {hydra}
            kill_timeout: 2s
            {hydra_extra}
          - name: firehose
            schedule: {NEVER}
            command: {firehose}
            output_limit: 64KiB
            kill_timeout: 2s
            {firehose_extra}
        """)

    def run(self, task: str) -> str:
        r = self.t.run("run", task)
        assert r.returncode == 0, r.stdout + r.stderr
        self.run_ids.append(r.stdout.strip())
        return r.stdout.strip()

    def marked(self) -> list[int]:
        """Live processes running the marker (hydra's main process and its grandchildren)."""
        found = []
        needle = str(self.mark).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if not f.read().startswith(needle):
                        continue
            except OSError:
                continue
            if _alive(int(entry)):
                found.append(int(entry))
        return found

    def left(self, *run_ids: str) -> list[int]:
        """Live processes of these runs: carrying one's TORCH_RUN_ID or TORCH_RUN_KEY, or the marker."""
        pids = set(self.marked())
        for run_id in run_ids:
            pids.update(pids_with_env("TORCH_RUN_KEY", run_id))
            pids.update(pids_with_env("TORCH_RUN_ID", run_id))
        return sorted(pids)

    def wait_hydra(self, run_id: str) -> None:
        """Wait for hydra's main process and all its grandchildren, each in a session of its own."""
        wait_until(lambda: len(self.marked()) >= GRANDCHILDREN + 1, 30,
                   what=lambda: f"{GRANDCHILDREN + 1} hydra processes, have {len(self.marked())}")
        keyed = set(pids_with_env("TORCH_RUN_KEY", run_id))
        sessions = {}
        for pid in self.marked():
            try:
                sessions[pid] = os.getsid(pid)
            except ProcessLookupError:
                continue
        assert set(sessions) <= keyed, "every hydra process carries its run's key"
        leaders = {sid for pid, sid in sessions.items() if sid == pid}
        assert len(leaders) >= GRANDCHILDREN + 1, f"{len(leaders)} sessions: the grandchildren did not escape"

    def assert_sentinel(self, first: float, last: float) -> None:
        """The sentinel fired every second of [first, last], once, on time (or was logged missed)."""
        fires = [(int(_epoch(s)), float(ran))
                 for s, ran in (line.split() for line in self.out.read_text().splitlines())]
        seconds = [s for s, _ in fires]
        assert len(seconds) == len(set(seconds)), f"a second fired twice: {seconds}"
        missed = missed_seconds(self.t, "sentinel")
        assert len(missed) <= MISSED_ALLOWED, f"missed {sorted(missed)}"
        window = range(int(first), int(last) + 1)
        assert sorted({s for s in [*seconds, *missed] if s in window}) == list(window), \
            f"sentinel fires {seconds}, missed {sorted(missed)}, wanted every second of {int(first)}..{int(last)}"
        late = [(s, round(ran - s, 3)) for s, ran in fires if s in window and not 0 <= ran - s < LATE_MAX]
        assert not late, f"sentinel fires that ran late (second, seconds late): {late}"

    def unleash(self) -> tuple[float, str, str]:
        """Start the hydra and the firehose, wait for the hydra's 200 escapees; (when, hydra, flood)."""
        first = time.time()
        hydra = self.run("hydra")
        flood = self.run("firehose")
        self.wait_hydra(hydra)
        return first, hydra, flood

    def assert_firehose_capped(self, end: dict[str, Any], whole: bool = False) -> None:
        """Exactly output_limit bytes of the flood were kept, the rest counted (all of it if `whole`)."""
        assert end["output_bytes"] == LIMIT, end
        total = end["output_bytes"] + end["dropped_bytes"]
        if whole:
            assert total == ONE_GB + len("\ndone\n"), end
        else:
            assert LIMIT < total <= ONE_GB + len("\ndone\n"), end
        lines = [e["line"] for e in self.t.events("run.output", run_id=end["run_id"])]
        assert sum(len(line) for line in lines) <= LIMIT and set("".join(lines)) <= {"x"}, [len(x) for x in lines]


class RssPeak:
    """Samples a process's RSS every 50 ms in a thread; `growth` is the peak over the first sample."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.baseline = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak - self.baseline


def _start_sampled(t: Torch, sampler: list[RssPeak]) -> RssPeak:
    """Start the daemon in the foreground, wait for the sentinel's first run, sample its RSS from then."""
    proc = t.start()
    t.wait_event("run.end", task="sentinel", timeout=20)
    rss = RssPeak(proc.pid)
    sampler.append(rss)
    return rss


@pytest.fixture
def scenes() -> Iterator[list[Scene]]:
    """Scenes a test made; whatever of their runs is still alive at the end is killed."""
    made: list[Scene] = []
    yield made
    for scene in made:
        for pid in scene.left(*scene.run_ids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def sampler() -> Iterator[list[RssPeak]]:
    box: list[RssPeak] = []
    yield box
    for s in box:
        s.stop()


def test_torch_kill_leaves_nothing_of_200_escaped_sessions_while_a_1gb_flood_is_drained(
        torch_daemon: Torch, scenes: list[Scene], sampler: list[RssPeak]) -> None:
    t = torch_daemon
    scene = Scene(scenes, t)
    rss = _start_sampled(t, sampler)
    first, hydra, flood = scene.unleash()

    k = t.run("kill", "hydra")
    assert k.returncode == 0 and hydra in k.stdout, k.stdout + k.stderr
    (end,) = t.wait_event("run.end", timeout=30, run_id=hydra)
    assert end["status"] == "killed" and "torch kill" in str(end["reason"]), end
    wait_until(lambda: not scene.left(hydra), 20, what=lambda: f"hydra gone: {describe_pids(scene.left(hydra))}")
    signals = [(e["signal"], len(e["escaped"])) for e in t.events("run.signal", run_id=hydra)]
    assert signals[0] == ("SIGTERM", GRANDCHILDREN), signals
    assert signals[1][0] == "SIGKILL", signals

    # The flood is printed to its end (1 GB and "done"), and only output_limit of it is kept; then
    # its shell sleeps, ignoring TERM, until torch kill.
    def flood_pids() -> str:
        return describe_pids(pids_with_env("TORCH_RUN_KEY", flood))

    wait_until(lambda: len(pids_with_env("TORCH_RUN_KEY", flood)) == 1 and "sleep" in flood_pids(), 90, interval=0.2,
               what=lambda: f"the flood printed, its shell asleep: {flood_pids()}")
    assert t.run("kill", "firehose").returncode == 0
    (fend,) = t.wait_event("run.end", timeout=30, run_id=flood)
    assert fend["status"] == "killed", fend
    scene.assert_firehose_capped(fend, whole=True)
    wait_until(lambda: not scene.left(flood), 20, what=lambda: describe_pids(scene.left(flood)))
    growth = rss.stop()
    last = time.time()
    assert growth < RSS_GROWTH_MAX, f"the daemon's RSS grew by {growth / 2**20:.1f} MiB"
    wait_until(lambda: scene.out.exists() and int(_epoch(scene.out.read_text().split()[-2])) >= int(last), 10,
               what="the sentinel's fire after the kills")
    assert t.stop() == 0
    scene.assert_sentinel(first, last)


def test_a_timeout_leaves_nothing_of_200_escaped_sessions_or_a_1gb_flood(
        torch_daemon: Torch, scenes: list[Scene], sampler: list[RssPeak]) -> None:
    t = torch_daemon
    # 8 s: long enough for the 200 grandchildren to be seen on a loaded machine.
    scene = Scene(scenes, t, hydra_extra="timeout: 8s", firehose_extra="timeout: 8s")
    rss = _start_sampled(t, sampler)
    first, hydra, flood = scene.unleash()
    ends = {e["run_id"]: e for e in t.wait_event("run.end", timeout=40, count=2, status="timeout")}
    assert set(ends) == {hydra, flood}, ends
    for end in ends.values():
        assert end["reason"] == "timeout after 8s", end
    wait_until(lambda: not scene.left(hydra, flood), 20,
               what=lambda: f"nothing of the runs left: {describe_pids(scene.left(hydra, flood))}")
    scene.assert_firehose_capped(ends[flood])
    signals = [(e["signal"], len(e["escaped"]), e["reason"]) for e in t.events("run.signal", run_id=hydra)]
    assert signals[0] == ("SIGTERM", GRANDCHILDREN, "timeout") and signals[1][0] == "SIGKILL", signals
    growth = rss.stop()
    last = time.time()
    assert growth < RSS_GROWTH_MAX, f"the daemon's RSS grew by {growth / 2**20:.1f} MiB"
    wait_until(lambda: int(_epoch(scene.out.read_text().split()[-2])) >= int(last), 10,
               what="the sentinel's fire after the timeouts")
    assert t.stop() == 0
    scene.assert_sentinel(first, last)


def test_torch_stop_leaves_nothing_of_200_escaped_sessions_or_a_1gb_flood(torch_daemon: Torch,
                                                                        scenes: list[Scene]) -> None:
    t = torch_daemon
    scene = Scene(scenes, t)
    r = t.start_bg("--stop-timeout", "2")
    assert r.returncode == 0, r.stderr
    pid = t.pid()
    assert pid is not None
    t.wait_event("run.end", task="sentinel", timeout=20)
    rss = RssPeak(pid)
    first, hydra, flood = scene.unleash()
    t.wait_event("run.output", timeout=30, run_id=flood)  # the flood is under way
    time.sleep(0.5)
    last = time.time() - 1
    stop = t.run("stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not _alive(pid), "the daemon exited"
    growth = rss.stop()
    # Nothing of the runs, and nothing the daemon started at all, is left.
    wait_until(lambda: not scene.left(hydra, flood), 10,
               what=lambda: f"nothing of the runs left: {describe_pids(scene.left(hydra, flood))}")
    assert t.run_pids() == [], describe_pids(t.run_pids())
    ends = {e["run_id"]: e for e in t.events("run.end")}
    assert ends[hydra]["status"] == "killed" and "daemon stopping" in str(ends[hydra]["reason"]), ends[hydra]
    assert ends[flood]["status"] == "killed", ends[flood]
    scene.assert_firehose_capped(ends[flood])
    assert growth < RSS_GROWTH_MAX, f"the daemon's RSS grew by {growth / 2**20:.1f} MiB"
    scene.assert_sentinel(first, last)
