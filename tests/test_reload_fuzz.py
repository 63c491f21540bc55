"""Reload fuzz: 500 broken task files fed to running daemons by SIGUSR2 and by edits.

Each daemon runs `fuzz_files.VALID` (a 1/s sentinel, a daemon-type task and two others). Every fed
file is invalid (torch check's validator, in this process, says so; a drawn mutation that stayed
valid is discarded), and for each one the test checks that the daemon

* stays alive and refuses it: every reload it logs while the file is there is a `reload.failed`
  at generation 1 (the start-up config, whose hash status still shows afterwards);
* does so within REJECT_BOUND_S, with exactly the errors torch check gives for the file (so the
  rejection was of this file), none an internal error unless the validator itself raises on it;
* never runs anything a YAML tag asked for;

and, over the whole run, that each sentinel fired exactly once in every second (no double; a gap
only where the daemon logged a `missed` fire, at most MISSED_ALLOWED, as the other real-clock tests
allow on a starved host), the daemon-type task never ended, the daemon's RSS stayed flat, and a
valid file afterwards is applied as generation 2. The worst rejection time and memory (daemon RSS,
reload process peak, sampled) are printed (`-s`) and, with TORCH_FUZZ_REPORT=PATH, written there
as JSON.

Files come from the hypothesis strategies of tests/fuzz_files.py, drawn up front, each kind in turn
by an inner `@given` (derandomized, no database, generate phase only: the same files on every run,
and no shrinking, which would feed everything again on a failure). Drawing inside the feed loop
would tie hypothesis's example loop to live daemons, and one @given per file would start a daemon
per file. What no strategy can draw (a directory, FIFO, socket or symlink in the file's place, a
file nobody may trust, 50 MB, 9.8 MB) is put at fixed positions, one in every SPECIAL_EVERY files.

Why several daemons: a reload seen by the watcher waits out its 0.5 s debounce, and a SIGUSR2
reload takes 0.12-0.3 s (it starts a fresh interpreter at nice 10). One daemon alternating both
ways needs ~0.31 s a file (measured): ~155 s for 500 files on a 2-core host. The daemons are
independent, so TORCH_FUZZ_DAEMONS (default 3) of them are fed in parallel, each alternating
SIGUSR2 and edits (in place and rename-over): 500 files take 60-85 s on a 2-core host busy with
other test runs. TORCH_FUZZ_EXAMPLES (default 500) sets the number of files.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings

from gotorch import control
from gotorch.config import ConfigInvalid, load_config, parse_bytes
from gotorch.hosts import local_timezone
from gotorch.trustedfs import MAX_TASK_FILE
from tests import fuzz_files
from tests.conftest import MISSED_ALLOWED, Torch, missed_seconds, pids_with_env, wait_until

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("TORCH_FUZZ_EXAMPLES", "500"))
DAEMONS = max(1, int(os.environ.get("TORCH_FUZZ_DAEMONS", "3")))
REJECT_BOUND_S = 30.0  # generous: the slowest file (an alias bomb, 50 MB) takes well under 2 s
SPECIAL_EVERY = 20
# Delivery, per daemon, in turn: SIGUSR2 after a rename-over, an in-place edit the watcher sees,
# SIGUSR2 after an in-place write, a rename-over the watcher sees.
MODES = (("signal", "rename"), ("edit", "inplace"), ("signal", "inplace"), ("edit", "rename"))
# The daemon's RSS may grow by this much over the whole run (it never parses a file itself).
DAEMON_GROWTH_BOUND_KB = 64 * 1024
# A reload process may use 1 GiB more than after its imports (reload_process.CHILD_EXTRA_MEMORY).
CHILD_BOUND_KB = (1 << 30) // 1024 + 200 * 1024


@dataclass
class Item:
    """One file to feed: its kind, bytes (None for specials, made at feed time) and expected errors."""

    position: int
    kind: str
    data: bytes | None = None
    expected: list[dict[str, Any]] | None = None
    raw: bytes = b""  # data before the placeholders were filled in


@dataclass
class Result:
    kind: str
    mode: str
    seconds: float
    child_peak_kb: int = 0
    rss_delta_kb: int = 0  # of the daemon, from before to after this file


@dataclass
class Feeder:
    """One daemon and the files it is fed."""

    index: int
    torch: Torch
    out: Path
    pwned: Path
    items: list[Item] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    child_peak_kb: int = 0  # of the reload process(es) seen while the current file was fed
    error: BaseException | None = None
    crashes: list[str] = field(default_factory=list)  # files the validator raised on (bugs)
    hash0: str = ""
    rss_start_kb: int = 0
    rss_max_kb: int = 0
    rss_last_kb: int = 0
    window: tuple[float, float] = (0.0, 0.0)  # wall-clock start and end of the feeding
    log: LogTail = field(init=False)

    def __post_init__(self) -> None:
        self.log = LogTail(self.torch.stderr_path)

    @property
    def config(self) -> Path:
        return self.torch.config

    @property
    def me(self) -> str:
        # Unique on the host: a daemon adopts any process running a task of its config's name (see
        # fuzz_files.ME), and another run of this test may be going on (pytest -n, a second checkout).
        return f"{os.getpid()}-{self.index}"

    @property
    def sentinel(self) -> str:
        return f"sentinel-{self.me}"

    @property
    def keeper(self) -> str:
        return f"keeper-{self.me}"

    def fill(self, data: bytes) -> bytes:
        """`data` (with fuzz_files placeholders) for this daemon."""
        return fuzz_files.materialise(data, str(self.out), str(self.pwned), self.me)

    def valid(self) -> bytes:
        """The valid file this daemon runs."""
        return self.fill(fuzz_files.VALID.encode())

    def status(self) -> dict[str, Any]:
        reply = control.request(self.torch.state / "torch.sock", {"cmd": "status"}, timeout=10)
        assert reply.get("ok"), reply
        status: dict[str, Any] = reply["status"]
        return status


def _tz() -> str:
    return local_timezone().key


def _expected(data: bytes, filename: str) -> list[dict[str, Any]] | None:
    """The errors `torch check` reports for these bytes as the file `filename` (None: it is valid).

    Where the validator itself raises something else (a bug: see
    test_a_standard_tag_on_text_it_cannot_be_is_a_config_error), the reload process reports it as an
    internal error: that is what is expected then.
    """
    try:
        parse_bytes(data, filename, default_timezone=_tz())
    except ConfigInvalid as exc:
        return [e.as_dict() for e in exc.errors]
    except Exception as exc:
        return [{"crash": f"internal error while loading: {exc!r}"}]
    return None


def _layout(root: Path) -> list[Feeder]:
    feeders = []
    for k in range(DAEMONS):
        d = root / f"d{k}"
        d.mkdir(mode=0o755)
        feeders.append(Feeder(k, Torch(d), d / "sentinel.out", d / "pwned"))
    return feeders


def _draw(feeders: list[Feeder]) -> list[Item]:
    """EXAMPLES items: specials at fixed positions, the rest drawn by hypothesis, each proven invalid."""
    items: list[Item | None] = [None] * EXAMPLES
    for n, p in enumerate(range(SPECIAL_EVERY // 3, EXAMPLES, SPECIAL_EVERY)):
        items[p] = Item(p, fuzz_files.SPECIALS[n % len(fuzz_files.SPECIALS)])
    free = [p for p, it in enumerate(items) if it is None]
    # Each kind in turn (st.one_of would favour its first strategies), each drawn by its own run;
    # alias bombs every other turn: each costs seconds of CPU (here and in the reload process).
    turns = [k for cycle in range(2) for k in fuzz_files.STRATEGIES if k != "alias-bomb" or cycle == 0]
    wanted: dict[str, list[int]] = {k: [] for k in fuzz_files.STRATEGIES}
    for n, p in enumerate(free):
        wanted[turns[n % len(turns)]].append(p)
    discarded: dict[str, int] = {}
    drawn = 0
    for kind, positions in wanted.items():
        if positions:
            drawn += _draw_kind(kind, positions, feeders, items, discarded)
    print(f"\nreload fuzz: {drawn} drawn files ({len(items) - drawn} special), "
          f"valid mutations discarded: {discarded}")
    assert all(it is not None for it in items)
    return [it for it in items if it is not None]


def _draw_kind(kind: str, positions: list[int], feeders: list[Feeder], items: list[Item | None],
               discarded: dict[str, int]) -> int:
    """Fill `positions` with invalid files drawn from the strategy for `kind`; return how many."""
    todo = list(positions)

    @settings(max_examples=len(positions), derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
    @given(fuzz_files.STRATEGIES[kind])
    def collect(candidate: fuzz_files.Candidate) -> None:
        if not todo:
            return
        f = feeders[todo[0] % len(feeders)]
        content = f.fill(candidate.data)
        if kind in fuzz_files.INVALID_BY_CONSTRUCTION:
            expected = None  # worked out while feeding, in parallel with the waiting
        else:
            expected = _expected(content, str(f.config))
            if expected is None:
                discarded[kind] = discarded.get(kind, 0) + 1
            assume(expected is not None)  # a mutation that stayed valid is not what this test feeds
        p = todo.pop(0)
        items[p] = Item(p, candidate.kind, content, expected, candidate.data)

    collect()
    got = [items[p] for p in positions if items[p] is not None]
    assert got, f"hypothesis drew no invalid {kind} file"
    # A small space (yaml-oddity is a list) runs out: its files are fed again, elsewhere and otherwise.
    for n, p in enumerate(todo):
        again = got[n % len(got)]
        assert again is not None and again.data is not None
        f = feeders[p % len(feeders)]
        items[p] = Item(p, again.kind, f.fill(again.raw))
    return len(positions)


# --- putting a file in place ------------------------------------------------------------------------


def _clear(path: Path) -> bool:
    """Remove whatever is at `path` (file, directory, FIFO, socket, symlink); True if something was."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        os.rmdir(path)
    else:
        os.unlink(path)
    return True


def _plain_file_there(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o644


def _write(path: Path, data: bytes, how: str, mode: int = 0o644, uid: int = 0) -> None:
    """Write `data` at `path` in place (truncate and write) or by renaming a new file over it."""
    if how == "inplace" and mode == 0o644 and uid == 0 and _plain_file_there(path):
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(data)
        return
    tmp = path.with_name(".incoming")
    _clear(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.chown(tmp, uid, 0)
    _replace(path, tmp)


def _replace(path: Path, tmp: Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)  # rename cannot replace a directory with a file
    os.rename(tmp, path)


def _padded(head: bytes, size: int, tail: bytes = b"") -> bytes:
    line = b"# padding " + b"x" * 69 + b"\n"
    n = max(0, size - len(head) - len(tail)) // len(line)
    return head + line * n + tail


def _billion_laughs(f: Feeder) -> bytes:
    anchors = "".join(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9))
    text = f.valid().decode().replace(f'command: echo "$TORCH_SCHEDULED_AT" >> {f.out}', "command: *a8", 1)
    return ("version: 1\nlaughs:\n  a0: &a0 [lol, lol]\n" + anchors + text.replace("version: 1\n", "", 1)).encode()


def _place(f: Feeder, item: Item, how: str) -> None:
    """Put `item` in the place of the daemon's task file."""
    path = f.config
    valid = f.valid()
    if item.data is not None:
        _write(path, item.data, how)
        return
    kind = item.kind
    tmp = path.with_name(".incoming")
    _clear(tmp)
    if kind == "directory":
        _clear(path)
        os.mkdir(path, 0o755)
    elif kind == "missing":
        _clear(path)
    elif kind == "fifo":
        os.mkfifo(tmp, 0o644)
        _replace(path, tmp)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(tmp))
        os.chmod(tmp, 0o644)
        _replace(path, tmp)
    elif kind.startswith("symlink-"):
        target = {"symlink-loop": path.name, "symlink-dev-zero": "/dev/zero",
                  "symlink-dangling": str(path.with_name("nowhere.yaml"))}[kind]
        os.symlink(target, tmp)
        _replace(path, tmp)
    elif kind == "world-writable":
        _write(path, valid, "rename", mode=0o666)
    elif kind == "group-writable":
        _write(path, valid, "rename", mode=0o664)
    elif kind == "not-root-owned":
        _write(path, valid, "rename", uid=65534)
    elif kind == "big-50MB":  # a valid file, but for its size: refused before a byte is read
        _write(path, _padded(valid, 50_000_000), how)
    elif kind == "big-9MiB":  # just under the limit, so parsed: invalid only at its very end
        _write(path, _padded(valid, MAX_TASK_FILE - 200_000, b"late_unknown_key: 1\n"), how)
    elif kind == "billion-laughs":
        _write(path, _billion_laughs(f), how)
    else:
        raise AssertionError(f"unknown special {kind}")


def _special_expected(f: Feeder) -> list[dict[str, Any]]:
    """What `torch check` (with the daemon's trust rules) says about what is now in the file's place."""
    try:
        load_config(f.config, default_timezone=_tz(), trust_euid=0)
    except ConfigInvalid as exc:
        return [e.as_dict() for e in exc.errors]
    raise AssertionError(f"{f.config} is valid: the special file was not put in place")


# --- feeding -----------------------------------------------------------------------------------------


class LogTail:
    """The daemon's JSON log, read as it grows: its reload outcomes, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.reloads: list[dict[str, Any]] = []  # reload.failed / applied / unchanged, one per completed reload

    def poll(self) -> int:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if b'"event": "reload.' not in line:
                continue
            ev = json.loads(line)
            if ev["event"] in ("reload.failed", "reload.applied", "reload.unchanged"):
                self.reloads.append(ev)
        return len(self.reloads)


def _errors_match(got: list[str], expected: list[dict[str, Any]], special: bool) -> bool:
    if "crash" in expected[0]:  # the validator raised (a bug): the reload process says so, and refuses
        return len(got) == 1 and expected[0]["crash"] in got[0]
    if special:  # the daemon's hint may differ (it retries what may pass by itself): compare the problems
        return len(got) == len(expected) and all(e["problem"] in g for g, e in zip(got, expected, strict=True))
    return got == [e["message"] for e in expected]


def _feed(f: Feeder, abort: threading.Event) -> None:
    try:
        for i, item in enumerate(f.items):
            if abort.is_set():  # another daemon's feed failed: its failure is the news
                return
            _feed_one(f, i, item)
    except BaseException as exc:  # reported by the main thread
        f.error = exc
        abort.set()


def _feed_one(f: Feeder, i: int, item: Item) -> None:
    delivery, how = MODES[i % len(MODES)]
    proc = f.torch.proc
    assert proc is not None
    what = f"daemon {f.index}: {item.kind} #{item.position} ({delivery}/{how})"
    f.child_peak_kb = 0
    seen = f.log.poll()
    _place(f, item, how)
    t0 = time.monotonic()
    if delivery == "signal":
        os.kill(proc.pid, signal.SIGUSR2)
    if item.data is None:
        expected = _special_expected(f)
    else:
        expected = item.expected or _expected(item.data, str(f.config))
        assert expected is not None, f"{what}: torch check finds this file valid"
    # The rejection of this file is the first reload.failed logged since it was put in place with
    # the errors torch check gives for it: a reload that began before (a debounced edit of the
    # previous file, a retry) may end after, with the previous file's errors. The log is read, not
    # status polled: a status reply carries the last reload's errors, megabytes for some files (see
    # test_errors_stay_small_whatever_a_value_expands_to), and each poll would cost the daemon that.
    deadline = t0 + REJECT_BOUND_S
    while True:
        assert proc.poll() is None, f"{what}: daemon died (exit {proc.returncode})"
        f.log.poll()
        for ev in f.log.reloads[seen:]:
            if any("not the ones the daemon runs" in e for e in ev.get("errors", [])):
                pytest.fail(f"gotorch's files changed on disk during the test (an edit?): {ev['errors']}")
            assert ev["event"] == "reload.failed" and ev["generation"] == 1, f"{what}: a reload was not refused: {ev}"
        ours = [ev for ev in f.log.reloads[seen:] if _errors_match(ev["errors"], expected, item.data is None)]
        if ours:
            break
        assert time.monotonic() < deadline, (
            f"{what}: not rejected within {REJECT_BOUND_S:g} s; expected {expected}, "
            f"the reloads since it was put in place: {f.log.reloads[seen:]}")
        time.sleep(0.01)
    took = time.monotonic() - t0
    rss = _status_kb(proc.pid, "VmRSS")
    f.results.append(Result(item.kind, delivery, took, f.child_peak_kb, rss - f.rss_last_kb))
    f.rss_last_kb = rss
    if "crash" in expected[0]:
        f.crashes.append(f"{item.kind}: {expected[0]['crash']}")
    else:
        assert not any("internal error" in m for m in ours[0]["errors"]), f"{what}: {ours[0]['errors']}"
    assert not f.pwned.exists(), f"{what}: a YAML tag ran a command"


# --- memory ------------------------------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _reload_children(pid: int) -> list[int]:
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for c in children:
            try:
                if b"gotorch.reload_process" in Path(f"/proc/{c}/cmdline").read_bytes():
                    out.append(int(c))
            except OSError:
                continue
    return out


def _sample(feeders: list[Feeder], stop: threading.Event) -> None:
    while not stop.is_set():
        for f in feeders:
            assert f.torch.proc is not None
            pid = f.torch.proc.pid
            f.rss_max_kb = max(f.rss_max_kb, _status_kb(pid, "VmRSS"))
            for child in _reload_children(pid):
                f.child_peak_kb = max(f.child_peak_kb, _status_kb(child, "VmHWM"))
        stop.wait(0.02)


# --- checks after the run ----------------------------------------------------------------------------


def _sentinel_seconds(out: Path) -> list[int]:
    return [int(datetime.strptime(line.strip(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
            for line in out.read_text().splitlines() if line.strip()]


def _check_sentinel(f: Feeder) -> dict[str, int]:
    """Every whole second of the fuzz window fired exactly once; a gap only where `missed` was logged."""
    seconds = _sentinel_seconds(f.out)
    doubles = sorted({s for s in seconds if seconds.count(s) > 1})
    assert not doubles, f"daemon {f.index}: the sentinel fired twice for {doubles}"
    since, until = int(f.window[0]) + 1, int(f.window[1]) - 1
    fired = {s for s in seconds if since <= s <= until}
    gaps = sorted(set(range(since, until + 1)) - fired)
    logged = missed_seconds(f.torch, f.sentinel)
    unlogged = [s for s in gaps if s not in logged]
    assert not unlogged, f"daemon {f.index}: the sentinel silently missed {unlogged} (window {since}..{until})"
    assert len(gaps) <= MISSED_ALLOWED, f"daemon {f.index}: the sentinel missed {gaps} (logged as missed)"
    return {"seconds": until - since + 1, "missed_logged": len(gaps)}


def _check_log(f: Feeder) -> None:
    """Every reload of the run failed, the config is the start-up one, the daemon-type task never restarted."""
    status = f.status()
    assert status["generation"] == 1 and status["hash"] == f.hash0, status
    assert status["reloads"] == f.log.poll(), f"daemon {f.index}: status and log disagree on the reload count"
    outcomes = {ev["event"] for ev in f.log.reloads}
    assert outcomes == {"reload.failed"}, f"daemon {f.index}: {outcomes}"
    ended = f.torch.find("run.end", task=f.keeper)
    assert ended is None, f"daemon {f.index}: the daemon-type task ended: {ended}"
    assert len(f.torch.events("run.start", task=f.keeper)) == 1


def _check_still_reloads(f: Feeder) -> None:
    """A valid file afterwards is applied as the next generation: the fuzz left nothing wedged."""
    text = f.valid() + b'  - {name: after-fuzz, schedule: "0 0 0 1 1 *", command: "true"}\n'
    _write(f.config, text, "rename")
    assert f.torch.proc is not None
    os.kill(f.torch.proc.pid, signal.SIGUSR2)
    (applied,) = f.torch.wait_event("reload.applied", timeout=30)
    assert applied["added"] == ["after-fuzz"] and applied["generation"] == 2, applied
    assert applied["removed"] == [] and applied["changed"] == [], applied
    status = f.status()
    assert status["generation"] == 2 and status["last_reload"]["ok"] is True, status


def _report(feeders: list[Feeder], took: float, sentinel: list[dict[str, int]]) -> dict[str, Any]:
    results = [r for f in feeders for r in f.results]
    worst = max(results, key=lambda r: r.seconds)
    by_mode = {m: max((r.seconds for r in results if r.mode == m), default=0.0) for m in ("signal", "edit")}
    median_by_mode = {m: statistics.median([r.seconds for r in results if r.mode == m] or [0.0])
                      for m in ("signal", "edit")}
    kinds: dict[str, float] = {}
    for r in results:
        kinds[r.kind] = max(kinds.get(r.kind, 0.0), r.seconds)
    child = max(results, key=lambda r: r.child_peak_kb)
    growth = max(results, key=lambda r: r.rss_delta_kb)
    report = {
        "files": len(results), "daemons": len(feeders), "seconds": round(took, 1),
        "worst_reject_s": round(worst.seconds, 3), "worst_reject_kind": worst.kind, "worst_reject_mode": worst.mode,
        "worst_reject_s_by_mode": {k: round(v, 3) for k, v in by_mode.items()},
        "median_reject_s_by_mode": {k: round(v, 3) for k, v in median_by_mode.items()},
        "slowest_kinds_s": dict(sorted(((k, round(v, 3)) for k, v in kinds.items()), key=lambda kv: -kv[1])[:6]),
        "daemon_rss_start_kb": [f.rss_start_kb for f in feeders],
        "daemon_rss_max_kb": [f.rss_max_kb for f in feeders],
        "daemon_vmhwm_kb": [_status_kb(f.torch.proc.pid, "VmHWM") for f in feeders if f.torch.proc is not None],
        "daemon_rss_biggest_step_kb": growth.rss_delta_kb, "daemon_rss_biggest_step_kind": growth.kind,
        "reload_child_peak_kb": child.child_peak_kb, "reload_child_peak_kind": child.kind,
        "sentinel": sentinel,
        "validator_crashes": sorted({c for f in feeders for c in f.crashes}),
    }
    print("reload fuzz report: " + json.dumps(report, indent=1))
    path = os.environ.get("TORCH_FUZZ_REPORT")
    if path:
        Path(path).write_text(json.dumps(report, indent=1) + "\n")
    return report


@pytest.mark.timeout(600)
def test_reload_fuzz_never_kills_changes_or_stalls_the_daemon(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    feeders = _layout(tmp_path)
    items = _draw(feeders)
    for item in items:
        feeders[item.position % len(feeders)].items.append(item)
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(feeders, stop), daemon=True)
    try:
        for f in feeders:
            f.torch.write(f.valid().decode())
            f.torch.start()
        for f in feeders:
            wait_until(lambda f=f: f.out.exists() and len(f.out.read_text().splitlines()) >= 2, 20,
                       what=f"daemon {f.index}: two sentinel fires")
            f.torch.wait_event("run.start", task=f.keeper)
            s = f.status()
            assert s["generation"] == 1
            f.hash0 = s["hash"]
            assert f.torch.proc is not None
            f.rss_start_kb = f.rss_last_kb = _status_kb(f.torch.proc.pid, "VmRSS")
        sampler.start()
        t0 = time.monotonic()
        abort = threading.Event()
        threads = [threading.Thread(target=_feed, args=(f, abort)) for f in feeders]
        for f, th in zip(feeders, threads, strict=True):
            f.window = (time.time(), 0.0)
            th.start()
        for f, th in zip(feeders, threads, strict=True):
            th.join()
            f.window = (f.window[0], time.time())
        took = time.monotonic() - t0
        stop.set()
        sampler.join()
        errors = [f.error for f in feeders if f.error is not None]
        if errors:
            with contextlib.suppress(ValueError):  # what was measured until then, if anything
                _report(feeders, took, [])
            raise errors[0]
        time.sleep(1.5)  # the last second of the window has fired and been written
        sentinel = [_check_sentinel(f) for f in feeders]
        for f in feeders:
            _check_log(f)
        report = _report(feeders, took, sentinel)
        for f in feeders:
            _check_still_reloads(f)
        assert report["files"] == EXAMPLES
        assert report["worst_reject_s"] < REJECT_BOUND_S
        for f in feeders:
            grown = f.rss_max_kb - f.rss_start_kb
            assert grown < DAEMON_GROWTH_BOUND_KB, f"daemon {f.index}: RSS grew by {grown} kB during the fuzz"
        assert report["reload_child_peak_kb"] < CHILD_BOUND_KB, report
        for f in feeders:
            assert f.torch.stop(timeout=30) == 0
    finally:
        stop.set()
        for f in feeders:
            proc = f.torch.proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            for pid in pids_with_env("TORCH_STATE_DIR", str(f.torch.state)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# --- what the fuzz found in the validator (in-process: no daemon needed to show them) ----------------


@pytest.mark.parametrize("value", ["!!bool maybe", "!!timestamp x"])
def test_a_standard_tag_on_text_it_cannot_be_is_a_config_error(value: str) -> None:
    # `!!bool`/`!!timestamp` are allowed tags (_PLAIN_TAGS), but their constructors fail on other text
    # with KeyError / AttributeError, not a YAMLError: `torch check` died with a traceback, and a reload
    # was refused as "internal error while loading: KeyError('maybe'); please report it".
    text = f'version: 1\ntasks:\n  - name: t\n    schedule: "@yearly"\n    command: "true"\n    enabled: {value}\n'
    with pytest.raises(ConfigInvalid):
        parse_bytes(text.encode(), "tasks.yaml", default_timezone="UTC")


def test_errors_stay_small_whatever_a_value_expands_to() -> None:
    # Within the 2,000,000-value budget, 10,000 aliases of a 1,000-character string are one value of
    # 10 MB: the error for it quoted all of it (`quote it, e.g. X: "[...]"`). A reload of such a
    # 1.4 KB file gave the daemon a 10 MB reload.failed log line and a 10 MB `last_reload` (every
    # status request re-encodes it, 2 s each), and took its RSS from 34 to 112 MB; 10 KB of file
    # (100 MB of error) took it to 800 MB, blocked its loop past a second (a `missed` fire), and
    # `torch status` then ran for 4 minutes.
    anchors = "x:\n  a0: &a0 ['" + "y" * 1000 + "']\n" + "".join(
        f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 5))
    text = anchors + ('version: 1\ntasks:\n  - name: t\n    schedule: "@yearly"\n    command: "true"\n'
                      "    env: {X: *a4}\n")
    assert len(text) < 2000
    with pytest.raises(ConfigInvalid) as caught:
        parse_bytes(text.encode(), "tasks.yaml", default_timezone="UTC")
    size = sum(len(str(e)) for e in caught.value.errors)
    assert size < 64 * 1024, f"{len(text)} bytes of file gave {size:,} characters of errors"
