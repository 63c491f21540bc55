"""torch benchmarks: one command (`python3 dev.py bench [SCENARIO...]`) prints every figure.

Scenarios:
  load      parse + validate a 10,000-task file (target <= 3 s)
  runs      torch vs the floor loop (sleep to the boundary + Popen): lateness from the scheduled
            boundary to the child's exec, measured by the child itself (bench/recorder.c, compiled
            with the system C compiler), daemon CPU and RSS:
              A  1 task/s, p99 lateness
              B  10,000 tasks loaded, 10 due/s: p99 lateness, daemon CPU, steady RSS
              C  200 due on one second: last start
              D  10,000 loaded, none due: daemon CPU
  reload    a 1/s task while a 10,000-task file (BENCH_TASKS) is reloaded 3 times (every task
            changed): fires per second (exactly one each), worst lateness, reload parse/apply times
  hostile   a 1/s task while huge, heavy, alias-bomb and FIFO task files replace the real one: time to
            reject each, fires per second, worst lateness, daemon RSS before and after
  reload-memory  daemon RSS while two configs of 20,000 yearly tasks alternate 60 times
  history   200 runs/s with history on and off (--no-history), interleaved (bench/history.py):
            p50/p99 lateness and daemon CPU/RSS per mode, the p99 cost of history (target <= 1 ms),
            rows written and dropped (target 0), database size per 100,000 runs; and
            `torch history TASK` on a 1,000,000-row database (target < 200 ms)
  http      `--http` (bench/web.py): 10 tasks/s with 8 clients fetching /metrics and / as fast as they can
            vs none, interleaved: the p99 lateness cost (target <= 1 ms); `/` latency with 1,000 tasks
            (target p95 < 50 ms), and what a page refresh costs the web process and the daemon
  peers     torch vs the floor loop (bench/floor.py) vs APScheduler 3.x (bench/aps.py, the `bench`
            extra) on the same task files, interleaved floor/aps/torch for BENCH_REPEATS repeats
            (default 2) (bench/peers.py): 1 task/s; 10,000 loaded with 10 due/s; 200 due at once;
            10,000 idle; reload adding a 1/s task; and torch alone: `torch check` of 10,000 tasks,
            100,000 tasks loaded. Per figure, per contender: median [min..max], the ratios
            torch/floor and torch/APScheduler, the target and PASS/FAIL. Its parts can be run alone:
            part names after `peers` (`python3 dev.py bench peers 1tps burst`) or
            BENCH_PEERS=1tps,burst; parts: 1tps 10k burst idle reload check 100k. BENCH_TORCH_ARGS adds
            arguments to torch's `start` (`--no-history`: what history costs).
  fleet     a `fleet: once` 1/s task on 3 daemons sharing one etcd (Debian's etcd-server, on loopback) vs
            the same task without fleet on the same 3 daemons: p50/p99/max lateness, instants run twice
            or nowhere (bench/fleet.py; skipped when etcd is not installed)
  all       load, peers (every part), hostile, history, http and fleet, each printing as above, then one table of
            every figure: torch's median [min..max] over repeats (or pairs or runs, as the row says), the
            floor's and APScheduler's where they ran the same, torch/floor, torch/aps, target, PASS/FAIL
            (bench/table.py); and the figures of $TORCH_FUZZ_REPORT, if that file exists (JSON written
            by `TORCH_FUZZ_REPORT=PATH python -m pytest tests/test_reload_fuzz.py`). `--quick` (any
            scenario): BENCH_SECONDS=10, BENCH_1TPS_SECONDS=30, BENCH_REPEATS=1 and BENCH_PEERS_REPEATS=2
            unless set: `all --quick` takes 10-15 minutes on 2 cores.
  profile   not in `all` nor the default set: `profile [1tps|10k|burst|idle]` (default 10k) runs the daemon on
            that peers scenario and prints its CPU per thread and per loop callback, per run started
            (thread CPU time, not wall time: bench/cpu_profile.py)
  soak      not in CI, nor in `all` or the default set: 50 runs/s with output and history, a reload every
            10 s, for BENCH_SOAK_SECONDS (default 1800): slopes of the daemon's RSS and fds, zombies,
            missed and doubled fires (bench/soak.py)
Set BENCH_SECONDS to change the measuring window of each scenario (default 30; history: 60 per run;
peers 1tps: BENCH_1TPS_SECONDS, default 100).
With no scenario named: load runs reload hostile reload-memory history http peers.
Every daemon runs a copy of gotorch/ taken when the benchmark starts (see `torch_code`), so edits to
the checkout during a long run do not change the code measured, nor fail its reloads.
"""

from __future__ import annotations

import atexit
import compileall
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from gen import task_file
from table import Row, print_rows

from gotorch.config import load_config


def bench_load() -> list[Row]:
    """Time `load_config` (YAML + validation + first next-fire of every schedule) on 10,000 tasks."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tasks.yaml"
        path.write_text(task_file(10_000))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            cfg = load_config(path)
            times.append(time.perf_counter() - t0)
        size = path.stat().st_size
    print(f"load: 10,000 tasks ({size / 1e6:.1f} MB, {len(cfg.tasks)} valid): "
          f"best {min(times):.2f} s, median {statistics.median(times):.2f} s (target <= 3 s)")
    return [Row("load", "parse + validate 10,000 tasks (s, 3 runs)", times, ("max", 3.0))]


HERE = Path(__file__).resolve().parent
WINDOW = int(os.environ.get("BENCH_SECONDS", "30"))


def _compile_recorder(d: Path) -> Path:
    """bench/recorder.c built static (no dynamic loader between exec and its clock read), else dynamic."""
    exe = d / "recorder"
    src = str(HERE / "recorder.c")
    if subprocess.run(["cc", "-O2", "-static", "-o", str(exe), src], capture_output=True).returncode != 0:
        subprocess.run(["cc", "-O2", "-o", str(exe), src], check=True)
    return exe


def _lateness_ms(record: Path) -> dict[int, list[float]]:
    """Lateness in ms of every recorded exec, grouped by scheduled second."""
    by_second: dict[int, list[float]] = {}
    if not record.exists():
        return by_second
    for line in record.read_text().splitlines():
        sched, ns = line.split()
        by_second.setdefault(int(sched), []).append((int(ns) - int(sched) * 1_000_000_000) / 1e6)
    return by_second


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _torch_tasks(recorder: Path, record: Path, due: list[str], idle: int) -> str:
    lines = ["version: 1", "defaults: {timezone: UTC, max_instances: 5}", "tasks:"]
    for i, sched in enumerate(due):
        lines.append(f'  - {{name: due-{i}, schedule: "{sched}", command: [{recorder}], '
                     f'env: {{RECORD_FILE: {record}}}}}')
    for i in range(idle):  # loaded but not due while we measure (1 January only)
        sched = f"{i % 60} {i // 60 % 60} {i % 24} 1 1 *"
        lines.append(f'  - {{name: idle-{i}, schedule: "{sched}", command: [/bin/true]}}')
    return "\n".join(lines) + "\n"


def torch_code() -> dict[str, str]:
    """The environment for a `python -m gotorch` that runs the code as it was when the benchmark began.

    A copy of the gotorch package (compiled), made once per benchmark process and removed at exit:
    the daemons started over a long run (and their reload processes, which must run the very code
    the daemon runs) are then unaffected by edits to the checkout meanwhile. Run the command outside
    the checkout: `-m` puts the working directory first on sys.path.
    """
    code = os.environ.get("BENCH_TORCH_CODE")  # this module is imported twice (as __main__ and as run)
    if not code:
        code = tempfile.mkdtemp(prefix="torch-bench-code-")
        atexit.register(shutil.rmtree, code, True)
        shutil.copytree(HERE.parent / "gotorch", Path(code) / "gotorch",
                        ignore=shutil.ignore_patterns("__pycache__"))
        compileall.compile_dir(Path(code) / "gotorch", quiet=1)
        os.environ["BENCH_TORCH_CODE"] = code
    return dict(os.environ, PYTHONPATH=code)


@contextlib.contextmanager
def _torch(d: Path, tasks: str, args: tuple[str, ...] = ()) -> Iterator[tuple[psutil.Process, Path]]:
    """torch in the foreground on `tasks` (and `args` to `torch start`), ready (daemon.start logged).

    Yields (process, task file); the state directory is d/state.
    """
    # The task file sits in a directory of its own, as /etc/torch does: the daemon watches that
    # directory, and the recorders' busy output file beside it would wake the watcher constantly.
    (d / "etc").mkdir(exist_ok=True)
    cfg = d / "etc" / "tasks.yaml"
    cfg.write_text(tasks)
    log = open(d / "torch.log", "wb")  # noqa: SIM115
    env = dict(torch_code(), TORCH_STATE_DIR=str(d / "state"), TORCH_HOST_IPS="127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-m", "gotorch", "start", "--foreground", "-c", str(cfg), *args],
                            stdout=log, stderr=log, env=env, cwd=d)  # not the checkout's gotorch, first on sys.path
    try:
        while b"daemon.start" not in (d / "torch.log").read_bytes():
            if proc.poll() is not None:
                raise SystemExit((d / "torch.log").read_text()[-2000:])
            time.sleep(0.1)
        yield psutil.Process(proc.pid), cfg
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def _run_torch(d: Path, tasks: str, seconds: int) -> tuple[float, float]:
    """Run torch for `seconds` after it is ready; return (CPU %, RSS MB) over that window."""
    with _torch(d, tasks) as (p, _):
        time.sleep(2)  # let start-up work (first next-fire of every task) settle
        c0, t0 = p.cpu_times(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = p.cpu_times(), time.monotonic()
        rss = p.memory_info().rss / 1e6
    return ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0) * 100, rss


def _run_floor(recorder: Path, record: Path, seconds: int, per_second: int) -> tuple[float, float]:
    """bench/floor.py starting `per_second` recorders every second for `seconds`; (CPU %, RSS MB)."""
    tasks = record.with_suffix(".yaml")
    tasks.write_text(_torch_tasks(recorder, record, ["* * * * * *"] * per_second, 0))
    proc = subprocess.Popen([sys.executable, str(HERE / "floor.py"), str(tasks), str(seconds)],
                            stdout=subprocess.DEVNULL)
    p = psutil.Process(proc.pid)
    time.sleep(1)
    c0, t0 = p.cpu_times(), time.monotonic()
    rss = p.memory_info().rss / 1e6
    while proc.poll() is None:
        try:
            c1, t1 = p.cpu_times(), time.monotonic()
            rss = max(rss, p.memory_info().rss / 1e6)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    return ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0) * 100, rss


def _row(label: str, torch_v: float, floor_v: float | None, target: str, unit: str) -> None:
    ratio = f"{torch_v / floor_v:5.2f}x" if floor_v else "    - "
    floor_s = f"{floor_v:9.2f}" if floor_v is not None else "        -"
    print(f"  {label:<44} torch {torch_v:9.2f} {unit:<3} floor {floor_s} {unit:<3} ratio {ratio}  target {target}")


def bench_runs() -> None:
    """Scenarios A-D against torch and the floor loop, printed side by side."""
    with tempfile.TemporaryDirectory(prefix="torch-bench-") as tmp:
        d = Path(tmp)
        rec = _compile_recorder(d)
        print(f"runs: window {WINDOW} s per scenario, {os.cpu_count()} cores")

        def lat(name: str, due: list[str], idle: int, per_second: int, floor_seconds: int
                ) -> tuple[dict[int, list[float]], dict[int, list[float]], float, float, float, float]:
            sub = d / name
            sub.mkdir()
            cpu, rss = _run_torch(sub, _torch_tasks(rec, sub / "torch.rec", due, idle), WINDOW)
            fcpu, frss = _run_floor(rec, sub / "floor.rec", floor_seconds, per_second)
            return _lateness_ms(sub / "torch.rec"), _lateness_ms(sub / "floor.rec"), cpu, rss, fcpu, frss

        t, f, cpu, rss, fcpu, frss = lat("A", ["* * * * * *"], 0, 1, WINDOW)
        tv = [x for v in t.values() for x in v]
        fv = [x for v in f.values() for x in v]
        print(f"A  1 task/s ({len(tv)} torch fires, {len(fv)} floor fires)")
        _row("p50 lateness", _pct(tv, 50), _pct(fv, 50), "-", "ms")
        _row("p99 lateness", _pct(tv, 99), _pct(fv, 99), "<= 1.5 ms", "ms")

        t, f, cpu, rss, fcpu, frss = lat("B", ["* * * * * *"] * 10, 9_990, 10, WINDOW)
        tv = [x for v in t.values() for x in v]
        fv = [x for v in f.values() for x in v]
        print(f"B  10,000 loaded, 10 due/s ({len(tv)} torch fires, {len(fv)} floor fires)")
        _row("p99 lateness", _pct(tv, 99), _pct(fv, 99), "<= 5 ms", "ms")
        _row("daemon CPU", cpu, fcpu, "<= 0.3 %", "%")
        _row("steady daemon RSS", rss, frss, "<= 50 MB", "MB")

        t, f, *_ = lat("C", ["*/5 * * * * *"] * 200, 0, 200, max(4, WINDOW // 5))
        last_t = [max(v) for v in t.values() if len(v) >= 200]
        last_f = [max(v) for v in f.values() if len(v) >= 200]
        print(f"C  200 due on one second ({len(last_t)} torch samples, {len(last_f)} floor samples)")
        _row("last start (median of samples)", statistics.median(last_t) if last_t else float("nan"),
             statistics.median(last_f) if last_f else None, "<= 70 ms", "ms")

        sub = d / "D"
        sub.mkdir()
        cpu, rss = _run_torch(sub, _torch_tasks(rec, sub / "torch.rec", [], 10_000), WINDOW)
        print("D  10,000 loaded, none due")
        _row("daemon CPU", cpu, None, "<= 0.1 %", "%")
        _row("daemon RSS", rss, None, "-", "MB")


def _window(d: Path, record: Path, first: int, last: int) -> tuple[list[dict[str, Any]], range, list[int], float]:
    """The daemon's events, and for the seconds first..last: fires per second and the worst lateness (ms)."""
    events = [json.loads(x) for x in (d / "torch.log").read_text().splitlines() if x.startswith("{")]
    lat = _lateness_ms(record)
    window = range(first, last + 1)
    counts = [len(lat.get(s, [])) for s in window]
    return events, window, counts, max(max(lat[s]) for s in window if s in lat)


def bench_reload() -> None:
    """A 1/s task keeps firing once per second while a 10,000-task file (BENCH_TASKS) is reloaded."""
    n_tasks = int(os.environ.get("BENCH_TASKS", "10000"))

    with tempfile.TemporaryDirectory(prefix="torch-bench-") as tmp:
        d = Path(tmp)
        rec = _compile_recorder(d)
        record = d / "torch.rec"
        with _torch(d, _torch_tasks(rec, record, ["* * * * * *"], n_tasks)) as (_, cfg):
            log = d / "torch.log"
            while b'"run.start"' not in log.read_bytes():  # start-up applied: the 1/s task has fired
                time.sleep(0.1)
            time.sleep(2)
            first = int(time.time())
            for i in range(3):
                # Change every idle task (new command): the diff touches all 10,000.
                text = cfg.read_text().replace(f"command: [/bin/true{'' if i == 0 else f', {i}'}]",
                                               f"command: [/bin/true, {i + 1}]")
                tmpf = d / "etc" / ".tasks.yaml.new"
                tmpf.write_text(text)
                os.rename(tmpf, cfg)  # the watcher picks it up: rename-over, as git does
                deadline = time.monotonic() + 300
                while log.read_bytes().count(b'"reload.applied"') <= i and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(2)
            last = int(time.time()) - 2
        events, window, counts, worst = _window(d, record, first, last)
        reloads = [e for e in events if e.get("event") == "reload.applied"]
    print(f"reload: {len(reloads)} reloads of {n_tasks:,} changed tasks while a 1/s task runs, "
          f"{len(window)} s window")
    for r in reloads:
        print(f"  generation {r['generation']}: parse {r['parse_ms']:.0f} ms (child process), "
              f"apply {r['apply_ms']:.0f} ms (loop), {r.get('changed_count', len(r['changed']))} changed")
    print(f"  fires per second: min {min(counts)} max {max(counts)} (want exactly 1); "
          f"seconds with 0: {counts.count(0)}, with >1: {sum(1 for c in counts if c > 1)}")
    print(f"  worst lateness of the 1/s task during the window: {worst:.1f} ms")


HOSTILE_REJECT_S = 10.0  # each hostile file rejected within this long of the rename (0.5 s of it debounce)
HOSTILE_GROWTH_MB = 5.0  # the daemon's RSS after all of them, against before
HOSTILE_CHILD_MB = 1150.0  # the reload child's highest RSS seen: its address space is capped at ~26 MB + 1 GiB


class _PeakChildRss:
    """The highest RSS of any child of `p` (the reload process), sampled every 20 ms in a thread.

    Finding the children scans all of /proc (~6 ms of CPU): done every 0.5 s only, which finds the
    reload process, started ahead of time, before it is given a file; its RSS is read every 20 ms.
    """

    def __init__(self, p: psutil.Process) -> None:
        self.p, self.peak_mb, self.stop = p, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        children: list[psutil.Process] = []
        tick = 0
        while not self.stop.wait(0.02):
            if tick % 25 == 0:
                with contextlib.suppress(psutil.Error):
                    children = self.p.children()
            tick += 1
            for c in children:
                with contextlib.suppress(psutil.Error):
                    self.peak_mb = max(self.peak_mb, c.memory_info().rss / 1e6)

    def close(self) -> float:
        self.stop.set()
        self.thread.join()
        return self.peak_mb


def bench_hostile() -> list[Row]:
    """A 1/s task while hostile files are put in the task file's place: none may delay or skip a fire."""
    def sparse(size: int) -> Callable[[Path], None]:
        def make(p: Path) -> None:
            with open(p, "wb") as f:
                f.truncate(size)
        return make

    def heavy(p: Path) -> None:  # just under the 10 MiB cap, ~5 million YAML values
        p.write_text("version: 1\ntasks: []\njunk: [" + "a," * 4_900_000 + "a]\n")

    def bomb(p: Path) -> None:  # aliases of aliases: a few hundred bytes that expand to 10^9 values
        levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
        levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
        p.write_text("version: 1\ntasks:\n  - name: bomb\n    schedule: '@daily'\n"
                     f"    command: [{', '.join(levels)}]\n")

    cases: list[tuple[str, Callable[[Path], None]]] = [
        ("50 MB of NULs", sparse(50_000_000)), ("1 GiB of NULs", sparse(1 << 30)),
        ("9.8 MB, 4.9M values", heavy), ("alias bomb", bomb), ("FIFO", lambda p: os.mkfifo(p, 0o644)),
    ]
    with tempfile.TemporaryDirectory(prefix="torch-bench-") as tmp:
        d = Path(tmp)
        rec = _compile_recorder(d)
        record = d / "torch.rec"
        with _torch(d, _torch_tasks(rec, record, ["* * * * * *"], 0)) as (p, cfg):
            time.sleep(3)
            first = int(time.time())
            rss0 = p.memory_info().rss / 1e6
            sampler = _PeakChildRss(p)
            results = []
            for label, make in cases:
                log_before = (d / "torch.log").read_text().count('"reload.failed"')
                tmpf = d / "etc" / ".incoming"
                make(tmpf)
                t0 = time.monotonic()
                os.rename(tmpf, cfg)
                while (d / "torch.log").read_text().count('"reload.failed"') == log_before:
                    time.sleep(0.05)
                results.append((label, time.monotonic() - t0))
                time.sleep(1)
            last = int(time.time()) - 2
            rss1 = p.memory_info().rss / 1e6
            child = sampler.close()
        events, window, counts, worst = _window(d, record, first, last)
        failed = [e for e in events if e.get("event") == "reload.failed"]
    print(f"hostile: {len(cases)} hostile task files while a 1/s task runs, {len(window)} s window")
    for (label, took), ev in zip(results, failed, strict=False):
        print(f"  {label:22s} rejected {took:5.2f} s after the rename (incl. 0.5 s debounce): {ev['errors'][0][:90]}")
    print(f"  fires per second: min {min(counts)} max {max(counts)} (want exactly 1); "
          f"seconds with 0: {counts.count(0)}, with >1: {sum(1 for c in counts if c > 1)}")
    print(f"  worst lateness of the 1/s task: {worst:.1f} ms; daemon RSS {rss0:.0f} -> {rss1:.0f} MB; "
          f"reload child's highest RSS seen {child:.0f} MB")
    group = f"hostile task files ({len(cases)})"
    slowest = max(t for _, t in results)
    return [Row(group, "slowest rejection after the rename (s)", [slowest], ("max", HOSTILE_REJECT_S)),
            Row(group, "daemon RSS growth (MB)", [rss1 - rss0], ("max", HOSTILE_GROWTH_MB)),
            Row(group, "reload child's highest RSS (MB, 20 ms samples)", [child], ("max", HOSTILE_CHILD_MB)),
            Row(group, "1/s task seconds without exactly 1 fire", [float(sum(c != 1 for c in counts))], ("max", 0)),
            Row(group, "worst lateness of the 1/s task (ms)", [worst], ("max", 3.0))]


def bench_reload_memory() -> None:
    """Daemon RSS while two configs of 20,000 yearly tasks alternate (every task changes each time)."""
    reloads = int(os.environ.get("BENCH_RELOADS", "60"))

    def config(variant: int) -> str:
        lines = ["version: 1", "defaults: {timezone: UTC}", "tasks:"]
        for i in range(20_000):
            sched = f"{i % 60} {i // 60 % 60} {i % 24} {1 + i % 28} {1 + i % 12} *"
            lines.append(f'  - {{name: y{i}, schedule: "{sched}", command: [/bin/true, "{variant}"]}}')
        return "\n".join(lines) + "\n"

    texts = [config(0), config(1)]
    with tempfile.TemporaryDirectory(prefix="torch-bench-") as tmp:
        d = Path(tmp)
        with _torch(d, texts[0]) as (p, cfg):
            time.sleep(2)
            rss = [p.memory_info().rss / 1e6]
            log = d / "torch.log"
            for i in range(1, reloads + 1):
                before = log.read_bytes().count(b'"reload.applied"')
                tmpf = d / "etc" / ".incoming"
                tmpf.write_text(texts[i % 2])
                old = time.time() - 5
                os.utime(tmpf, (old, old))  # an old file: no settle wait, each reload applies at once
                os.rename(tmpf, cfg)
                p.send_signal(signal.SIGUSR2)
                while log.read_bytes().count(b'"reload.applied"') == before:
                    time.sleep(0.05)
                if i % 10 == 0:
                    rss.append(p.memory_info().rss / 1e6)
    print(f"reload-memory: {reloads} reloads alternating two configs of 20,000 yearly tasks")
    print("  daemon RSS every 10 reloads (MB): " + " ".join(f"{r:.0f}" for r in rss))


def bench_history() -> list[Row]:
    """bench/history.py, imported only when chosen (it imports this module's helpers)."""
    from history import bench_history as run_it

    return run_it()


def bench_http() -> list[Row]:
    """bench/web.py, imported only when chosen (it imports this module's helpers)."""
    from web import bench_http as run_it

    return run_it()


PEER_PARTS = ["1tps", "10k", "burst", "idle", "reload", "check", "100k"]
_peer_parts: list[str] = []  # chosen on the command line after `peers`, or by BENCH_PEERS


def bench_peers() -> list[Row]:
    """bench/peers.py, imported only when chosen (it imports this module's helpers)."""
    from peers import bench_peers as run_it

    env = [p for p in os.environ.get("BENCH_PEERS", "").split(",") if p]
    return run_it(_peer_parts or env or PEER_PARTS)


PROFILE_PARTS = ["1tps", "10k", "burst", "idle"]
_profile_parts: list[str] = []


def bench_profile() -> list[Row]:
    """bench/cpu_profile.py: the daemon's CPU per loop callback and per thread, per run, on one peers scenario."""
    from cpu_profile import bench_profile as run_it

    return run_it(_profile_parts)


def bench_soak() -> list[Row]:
    """bench/soak.py, imported only when chosen (it imports this module's helpers)."""
    from soak import bench_soak as run_it

    return run_it()


def bench_fleet() -> list[Row]:
    """bench/fleet.py: a `fleet: once` 1/s task's lateness vs the same task without fleet (needs etcd)."""
    from fleet import bench_fleet as run_it

    return run_it()


def _fuzz_report() -> list[Row]:
    """Rows of the JSON report tests/test_reload_fuzz.py writes to $TORCH_FUZZ_REPORT, if that file exists.

    The same targets as the hostile scenario's: this is that scenario's question over hundreds of files.
    """
    path = os.environ.get("TORCH_FUZZ_REPORT")
    if not path or not Path(path).is_file():
        return []
    try:
        r = json.loads(Path(path).read_text())
        kb = 1024 / 1e6  # /proc's kB are KiB; MB here are 10^6 bytes, as psutil's figures elsewhere
        growth = max(b - a for a, b in zip(r["daemon_rss_start_kb"], r["daemon_rss_max_kb"], strict=True)) * kb
        group = f"reload fuzz, {r['files']} files on {r['daemons']} daemons (tests/test_reload_fuzz.py)"
        return [Row(group, f"slowest rejection (s; {r['worst_reject_kind']}, {r['worst_reject_mode']})",
                    [float(r["worst_reject_s"])], ("max", HOSTILE_REJECT_S)),
                *(Row(group, f"median rejection, by {mode} (s)", [float(r["median_reject_s_by_mode"][key])])
                  for key, mode in (("signal", "SIGUSR2"), ("edit", "file edit"))),
                Row(group, "daemon RSS growth, most of a daemon (MB)", [growth], ("max", HOSTILE_GROWTH_MB)),
                Row(group, "reload process's highest RSS (MB)", [r["reload_child_peak_kb"] * kb],
                    ("max", HOSTILE_CHILD_MB)),
                Row(group, "validator crashes", [float(len(r["validator_crashes"]))], ("max", 0))]
    except (ValueError, KeyError, TypeError) as e:
        print(f"fuzz report {path}: not the report tests/test_reload_fuzz.py writes ({e!r}); left out")
        return []


# What `all` runs: every figure the issues asked for (`runs`, `reload` and `reload-memory` measure
# what `peers` measures better, or are not asked for: run them by name).
ALL = ["load", "peers", "hostile", "history", "http", "fleet"]
QUICK = {"BENCH_SECONDS": "10", "BENCH_1TPS_SECONDS": "30", "BENCH_REPEATS": "1", "BENCH_PEERS_REPEATS": "2"}


def bench_all() -> list[Row]:
    """ALL, each printing as it goes, then one table of their figures."""
    rows: list[Row] = []
    took = []
    started = time.monotonic()
    load0 = os.getloadavg()[0]
    for name in ALL:
        t0 = time.monotonic()
        print(f"== {name}", flush=True)
        got = SCENARIOS[name]()
        rows += got or []
        took.append(f"{name} {time.monotonic() - t0:.0f} s")
    rows += _fuzz_report()
    print()
    print_rows(rows, title=f"all: every figure ({os.cpu_count()} cores, load average {load0:.1f} at the start, "
                           f"{os.getloadavg()[0]:.1f} at the end; BENCH_SECONDS "
                           f"{os.environ.get('BENCH_SECONDS', 'default')}, BENCH_REPEATS "
                           f"{os.environ.get('BENCH_REPEATS', 'default')}); torch/floor/APScheduler cells: "
                           "median [min..max] over repeats (or pairs, or runs, as the figure says)")
    print(f"  took {time.monotonic() - started:.0f} s: {', '.join(took)}")
    return rows


SCENARIOS: dict[str, Callable[[], list[Row] | None]] = {
    "load": bench_load, "runs": bench_runs, "reload": bench_reload, "hostile": bench_hostile,
    "reload-memory": bench_reload_memory, "history": bench_history, "http": bench_http, "peers": bench_peers,
    "all": bench_all, "soak": bench_soak, "fleet": bench_fleet, "profile": bench_profile,
}
BY_DEFAULT = ["load", "runs", "reload", "hostile", "reload-memory", "history", "http", "peers"]


def main() -> None:
    global WINDOW
    args = sys.argv[1:]
    if "--quick" in args:  # shorter windows, fewer repeats: before any scenario module reads them
        args.remove("--quick")
        for key, value in QUICK.items():
            os.environ.setdefault(key, value)
        WINDOW = int(os.environ["BENCH_SECONDS"])
    chosen: list[str] = []
    for name in args:
        if name in PEER_PARTS and chosen and chosen[-1] == "peers":
            _peer_parts.append(name)
        elif name in PROFILE_PARTS and chosen and chosen[-1] == "profile":
            _profile_parts.append(name)
        elif name in SCENARIOS:
            chosen.append(name)
        else:
            sys.exit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)} "
                     f"(peers parts, after `peers`: {', '.join(PEER_PARTS)}; --quick)")
    for name in chosen or BY_DEFAULT:
        SCENARIOS[name]()


if __name__ == "__main__":
    main()
