"""Reloads of hostile or half-written task files, against the real daemon: nothing wedges, nothing is lost."""

from __future__ import annotations

import collections
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gotorch.loader import read_settled
from tests.conftest import Torch, pids_with_env, wait_until

pytestmark = pytest.mark.integration

SENTINEL = """\
version: 1
tasks:
  - name: sentinel
    schedule: "* * * * * *"
    command: echo "$TORCH_SCHEDULED_AT $(date +%s.%N)" >> {out}
"""


def _fires(out: Path) -> list[tuple[int, float]]:
    """(scheduled second, exec time) of each sentinel run."""
    rows = []
    for line in out.read_text().splitlines():
        at, ran = line.split()
        rows.append((int(datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()), float(ran)))
    return rows


def _assert_every_second_once(out: Path, since: int, until: int) -> float:
    """Every second in [since, until] fired exactly once; return the worst lateness seen."""
    rows = [r for r in _fires(out) if since <= r[0] <= until]
    seconds = [s for s, _ in rows]
    assert sorted(seconds) == list(range(since, until + 1)), f"gaps or doubles: {seconds}"
    return max(ran - s for s, ran in rows)


def _replace(path: Path, make: object) -> None:
    """Put something in the task file's place atomically (rename over it), as a checkout would."""
    tmp = path.with_name(".incoming")
    if callable(make):
        make(tmp)
    os.rename(tmp, path)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_fifo_in_place_of_the_task_file_neither_wedges_reloads_nor_stop(torch_daemon: Torch) -> None:
    out = torch_daemon.tmp / "out"
    torch_daemon.write(SENTINEL.format(out=out))
    assert torch_daemon.start_bg().returncode == 0
    wait_until(out.exists, 10, what="first fire")
    _replace(torch_daemon.config, lambda p: os.mkfifo(p, 0o644))
    (failed,) = torch_daemon.wait_event("reload.failed", timeout=15)
    assert any("is a FIFO, not a regular file" in e for e in failed["errors"]), failed
    # A valid edit afterwards is applied: the FIFO left nothing blocked.
    text = SENTINEL.format(out=out) + '  - {name: after, schedule: "0 0 0 1 1 *", command: "true"}\n'
    _replace(torch_daemon.config, lambda p: p.write_text(text))
    (applied,) = torch_daemon.wait_event("reload.applied", timeout=15)
    assert applied["added"] == ["after"]
    t0 = time.monotonic()
    r = torch_daemon.run("stop", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 10


def test_stop_never_waits_for_a_reload_in_progress(torch_daemon: Torch) -> None:
    out = torch_daemon.tmp / "out"
    text = SENTINEL.format(out=out)
    torch_daemon.write(text)
    assert torch_daemon.start_bg().returncode == 0
    wait_until(out.exists, 10, what="first fire")
    stop = threading.Event()

    def keep_writing() -> None:  # the file never settles, so the reload keeps waiting for it
        n = 0
        while not stop.is_set():
            n += 1
            torch_daemon.config.write_text(text + f"# edit {n}\n")
            time.sleep(0.1)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        time.sleep(2.5)  # the watcher's debounce is 0.5 s: the reload is now waiting for the file
        daemon = torch_daemon.bg_pid
        assert daemon is not None
        t0 = time.monotonic()
        r = torch_daemon.run("stop", "--timeout", "20")
        took = time.monotonic() - t0
    finally:
        stop.set()
        writer.join()
    assert r.returncode == 0, r.stderr
    assert took < 8, f"stop took {took:.1f} s"
    # Nothing of the daemon is left, the reload's child process included.
    wait_until(lambda: not pids_with_env("TORCH_STATE_DIR", str(torch_daemon.state)), 10, what="no process left")


def test_huge_task_files_are_refused_without_missing_or_delaying_a_fire(torch_daemon: Torch) -> None:
    out = torch_daemon.tmp / "out"
    torch_daemon.write(SENTINEL.format(out=out))
    assert torch_daemon.start_bg().returncode == 0
    pid = torch_daemon.bg_pid
    assert pid is not None
    wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 2, 10, what="two fires")
    since = _fires(out)[-1][0] + 1
    rss_before = _rss_kb(pid)

    def sparse(size: int) -> object:
        def make(p: Path) -> None:
            with open(p, "wb") as f:
                f.truncate(size)
        return make

    # 50 MB and 1 GiB of NULs: refused by size, before reading a byte.
    for size in (50 * 1000 * 1000, 1 << 30):
        _replace(torch_daemon.config, sparse(size))
        failed = torch_daemon.wait_event("reload.failed", timeout=15, count=1 if size < (1 << 30) else 2)
        assert any("larger than the 10 MiB limit" in e for e in failed[-1]["errors"]), failed[-1]
    # Just under the cap, but as heavy as YAML gets: millions of tiny values, parsed in a child.
    heavy = "version: 1\ntasks: []\njunk: [" + "a," * (4_900_000) + "a]\n"
    _replace(torch_daemon.config, lambda p: p.write_text(heavy))
    failed = torch_daemon.wait_event("reload.failed", timeout=60, count=3)
    assert failed[-1]["errors"], failed[-1]
    time.sleep(2)
    until = _fires(out)[-1][0]
    assert until - since >= 5
    worst = _assert_every_second_once(out, since, until)
    assert worst < 0.5, f"a fire was {worst:.3f} s late"
    grown = _rss_kb(pid) - rss_before
    assert grown < 30_000, f"daemon RSS grew by {grown} kB"
    assert torch_daemon.run("stop").returncode == 0


def test_slowly_rewritten_file_is_applied_once_settled(torch_daemon: Torch) -> None:
    # The defect: a slow rewrite of identical content was applied half-written (removing, and so
    # killing, the daemon task), then whole again (starting it anew).
    out = torch_daemon.tmp / "out"
    text = SENTINEL.format(out=out) + "  - name: keeper\n    type: daemon\n    command: [sleep, '1000']\n"
    torch_daemon.write(text)
    assert torch_daemon.start_bg().returncode == 0
    (started,) = torch_daemon.wait_event("run.start", task="keeper")
    cut = text.index("  - name: keeper")
    with open(torch_daemon.config, "r+") as f:
        f.truncate(0)
        f.write(text[:cut])  # valid on its own: the sentinel alone
        f.flush()
        for i in range(cut, len(text), 12):
            time.sleep(0.3)  # slower than the watcher's debounce, faster than the settle time
            f.write(text[i:i + 12])
            f.flush()
    torch_daemon.wait_event("reload.unchanged", timeout=15)
    time.sleep(1.5)
    assert torch_daemon.find("reload.applied") is None
    assert torch_daemon.find("run.end", task="keeper") is None
    assert Path(f"/proc/{started['pid']}").exists()
    assert torch_daemon.run("stop").returncode == 0


# --- the settle rule, with an injected clock -------------------------------------------------------


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now
        self.slept: list[float] = []
        self.on_sleep: list[object] = []

    def time(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s
        if self.on_sleep:
            action = self.on_sleep.pop(0)
            if callable(action):
                action()


def test_settle_takes_an_old_file_at_once_and_waits_for_a_young_one(tmp_path: Path) -> None:
    d = tmp_path / "conf"
    d.mkdir(mode=0o755)
    f = d / "tasks.yaml"
    f.write_text("one")
    mtime = f.stat().st_mtime
    clock = _Clock(mtime + 10)
    assert read_settled(str(f), os.geteuid(), now=clock.time, sleep=clock.sleep).data == b"one"
    assert clock.slept == []
    # Modified just now and unchanged half a second later: taken after one wait.
    clock = _Clock(mtime + 0.1)
    assert read_settled(str(f), os.geteuid(), now=clock.time, sleep=clock.sleep).data == b"one"
    assert clock.slept == [0.5]


def test_settle_rereads_a_file_that_changed_meanwhile_and_gives_up_eventually(tmp_path: Path) -> None:
    d = tmp_path / "conf"
    d.mkdir(mode=0o755)
    f = d / "tasks.yaml"
    f.write_text("half")

    def finish() -> None:
        f.write_text("half and the rest")
        os.utime(f, (clock.now - 0.2, clock.now - 0.2))

    clock = _Clock(f.stat().st_mtime + 0.1)
    clock.on_sleep = [finish]
    got = read_settled(str(f), os.geteuid(), now=clock.time, sleep=clock.sleep)
    assert got.data == b"half and the rest" and len(clock.slept) == 2

    def touch() -> None:
        f.write_text(f"still writing {clock.now}")
        os.utime(f, (clock.now, clock.now))

    clock = _Clock(f.stat().st_mtime)
    clock.on_sleep = [touch] * 100
    from gotorch.loader import Unsettled

    with pytest.raises(Unsettled, match="still being written after 3 s"):
        read_settled(str(f), os.geteuid(), now=clock.time, sleep=clock.sleep, max_wait=3)


def _children(pid: int) -> dict[int, str]:
    """The live children of `pid` and their command lines (zombies are gone for our purpose)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(entry.name)] = cmdline
    return out


def test_reload_runs_in_a_fresh_low_priority_process_never_a_fork_of_the_daemon(torch_daemon: Torch) -> None:
    # A fork shares the daemon's memory copy-on-write: while it parsed, the daemon's fires paid for
    # copying every page they touched. The reload's process is a new interpreter, started ahead of
    # time at nice 10, and stopped with the daemon.
    out = torch_daemon.tmp / "out"
    torch_daemon.write(SENTINEL.format(out=out))
    assert torch_daemon.start_bg().returncode == 0
    daemon = torch_daemon.bg_pid
    assert daemon is not None
    wait_until(out.exists, 10, what="first fire")

    def spare() -> list[int]:
        return [p for p, cmd in _children(daemon).items() if "gotorch.reload_process" in cmd]

    (waiting,) = wait_until(spare, 10, what="a reload process started ahead of time")
    assert os.getpriority(os.PRIO_PROCESS, waiting) == 10
    # Millions of tiny values: a parse of seconds, long enough to look at who does it.
    heavy = "version: 1\ntasks: []\njunk: [" + "a," * 3_000_000 + "a]\n"
    _replace(torch_daemon.config, lambda p: p.write_text(heavy))
    seen: set[str] = set()
    sightings: collections.Counter[tuple[int, str]] = collections.Counter()
    deadline = time.monotonic() + 60
    while not torch_daemon.find("reload.failed"):  # what the daemon runs while the file is parsed
        assert time.monotonic() < deadline, "the heavy file was never refused"
        children = _children(daemon)
        seen.update(children.values())
        sightings.update(children.items())
        time.sleep(0.05)
    assert any("gotorch.reload_process" in cmd for cmd in seen), seen
    # A child still showing the daemon's command line in two looks 50 ms apart is a fork; once only,
    # it is a run (or this reload process) between posix_spawn's vfork and its exec, well under 1 ms.
    forks = [cmd for (_, cmd), n in sightings.items() if n >= 2 and " start " in f" {cmd} "]
    assert forks == [], forks
    (next_one,) = wait_until(spare, 10, what="the next reload process, started ahead of time")
    assert torch_daemon.run("stop").returncode == 0
    wait_until(lambda: next_one not in _children(daemon), 10, what="the reload process to be stopped")
