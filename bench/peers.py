"""The `peers` scenario: torch against the floor loop and APScheduler 3.x, on the same task files.

Contenders, each a process of its own whose CPU and RSS are measured alike (psutil, the process only,
not its children):
  floor  bench/floor.py: sleep to each boundary and Popen the due tasks of a precomputed plan
  aps    bench/aps.py: APScheduler's BlockingScheduler, a CronTrigger job per task, default thread pool
  torch  the real daemon, `torch start --foreground` with default settings (history and output capture on;
         BENCH_TORCH_ARGS adds arguments, e.g. `--no-history` to see what history costs)
Every contender starts bench/recorder (a static C program) with TORCH_SCHEDULED_AT set to the boundary
it fires for; the recorder appends its own exec time to $RECORD_FILE, so lateness is measured alike.

Parts (all by default; choose with `python3 dev.py bench peers PART...` or BENCH_PEERS=PART,PART):
  1tps    one task `* * * * * *`: p50 and p99 lateness
  10k     10,000 loaded, 10 distinct due each second (9,000 `S M,M+15,M+30,M+45 * * * *` in 150 groups
          of 60 + 1,000 daily tasks hours away): p99 lateness, CPU over the window, RSS at its end
  burst   200 tasks `*/5 * * * * *`: per fired second the last start after the boundary; the median
  idle    10,000 daily tasks hours away, none due: RSS and CPU
  reload  the 10,000 idle tasks plus a 1/s task; RELOADS times, at a random fraction of a second, the file is
          replaced (rename over, mtime 5 s in the past) by one with another 1/s task and SIGUSR2 sent
          (floor and aps re-read the file in a thread on SIGUSR2): trigger to the new task's first exec,
          boundaries between them, boundaries skipped after the contender logged the reload applied,
          the 1/s task's worst lateness from trigger-2 s to trigger+5 s; medians of a run's reloads
  check   torch only: `torch check -c FILE` on the 10k set, wall time, median of 3
  100k    torch only: 100,000 daily tasks loaded: start to daemon.start, RSS
For each of BENCH_PEERS_REPEATS, else BENCH_REPEATS, repeats (default 2), each part runs floor, aps
and torch one after the other; the table at the end (bench/table.py) gives each figure per contender
as median [min..max] over the repeats, with torch/floor and torch/aps (ratios of the medians) and the
target. Lateness counts the fires of whole seconds
inside the window: BENCH_SECONDS (default 30; for 1tps BENCH_1TPS_SECONDS, default 100, so that its p99
is not the maximum of 30 samples), after SETTLE seconds from the contender being ready.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from math import ceil, floor, inf, nan
from pathlib import Path

import psutil
from run import HERE, _compile_recorder, _lateness_ms, _pct, _torch, torch_code
from table import Row, Target, print_rows

WINDOW = int(os.environ.get("BENCH_SECONDS", "30"))
# One fire a second: a 30 s window holds 30 samples, and their p99 is their maximum, one hiccup of
# the machine's. 100 s puts p99 between the two largest of 100, for every contender alike.
ONE_TPS_WINDOW = int(os.environ.get("BENCH_1TPS_SECONDS") or max(WINDOW, 100))
REPEATS = int(os.environ.get("BENCH_PEERS_REPEATS") or os.environ.get("BENCH_REPEATS", "2"))
SETTLE = 3.0  # seconds from ready to the start of the window
RELOADS = 3
# BENCH_CONTENDERS=torch,floor: a subset, to iterate on one contender (the table then shows the others empty).
CONTENDERS = tuple(os.environ.get("BENCH_CONTENDERS", "floor,aps,torch").split(","))
# BENCH_TORCH_ARGS="--no-history": more arguments to torch's `start`, to see what a feature costs
# (the table still says "torch"; the default measures the daemon as shipped).
TORCH_ARGS = tuple(os.environ.get("BENCH_TORCH_ARGS", "").split())
Entry = tuple[str, str, Path | None]  # task name, schedule, record file (None: a dormant /bin/true)
Figures = dict[str, float]


def _yaml(rec: Path, entries: list[Entry]) -> str:
    lines = ["version: 1", "defaults: {timezone: UTC, max_instances: 5}", "tasks:"]
    for name, sched, record in entries:
        run = f"command: [{rec}], env: {{RECORD_FILE: {record}}}" if record else "command: [/bin/true]"
        lines.append(f'  - {{name: {name}, schedule: "{sched}", {run}}}')
    return "\n".join(lines) + "\n"


def _dormant(n: int) -> list[Entry]:
    """Daily tasks 6 to 17 hours from now: none is due while we measure."""
    hour = time.gmtime().tm_hour
    return [(f"idle-{i}", f"{i % 60} {i // 60 % 60} {(hour + 6 + i % 12) % 24} * * *", None) for i in range(n)]


def _spread(record: Path) -> list[Entry]:
    """9,000 tasks of which exactly 10 are due each second, plus 1,000 dormant ones."""
    due = []
    for g in range(150):
        m = g % 15
        due += [(f"g{g}-{s}", f"{s} {m},{m + 15},{m + 30},{m + 45} * * * *", record) for s in range(60)]
    return due + _dormant(1_000)


@contextlib.contextmanager
def _contender(kind: str, d: Path, tasks: str) -> Iterator[tuple[psutil.Process, Path]]:
    """`kind` running `tasks`, ready; yields (process, task file). Every contender logs to d/torch.log."""
    if kind == "torch":
        with _torch(d, tasks, TORCH_ARGS) as got:
            yield got
        return
    (d / "etc").mkdir(exist_ok=True)
    cfg = d / "etc" / "tasks.yaml"
    cfg.write_text(tasks)
    script = ["floor.py", str(cfg), str(max(WINDOW, ONE_TPS_WINDOW) + 300)] if kind == "floor" else ["aps.py", str(cfg)]
    log = d / "torch.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(HERE / script[0]), *script[1:]], stdout=out, stderr=out)
        try:
            while b'"ready"' not in log.read_bytes():
                if proc.poll() is not None:
                    raise SystemExit(log.read_text()[-2000:])
                time.sleep(0.1)
            yield psutil.Process(proc.pid), cfg
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


@dataclass
class Window:
    """What was measured over the window: its whole seconds, CPU (% of one core) and RSS at its end."""

    seconds: range
    cpu: float
    rss: float


def _measure(p: psutil.Process, seconds: int = WINDOW) -> Window:
    time.sleep(SETTLE)
    c0, t0, w0 = p.cpu_times(), time.monotonic(), time.time()
    time.sleep(seconds)
    c1, t1, w1 = p.cpu_times(), time.monotonic(), time.time()
    cpu = ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0) * 100
    return Window(range(int(w0) + 1, int(w1)), cpu, p.memory_info().rss / 1e6)


def _in(record: Path, seconds: range) -> dict[int, list[float]]:
    return {s: v for s, v in _lateness_ms(record).items() if s in seconds}


def one_tps(kind: str, d: Path, rec: Path) -> Figures:
    with _contender(kind, d, _yaml(rec, [("tick", "* * * * * *", d / "rec")])) as (p, _):
        w = _measure(p, ONE_TPS_WINDOW)
    lat = [x for v in _in(d / "rec", w.seconds).values() for x in v]
    return {"p50": _pct(lat, 50), "p99": _pct(lat, 99)}


def ten_k(kind: str, d: Path, rec: Path) -> Figures:
    with _contender(kind, d, _yaml(rec, _spread(d / "rec"))) as (p, _):
        w = _measure(p)
    lat = [x for v in _in(d / "rec", w.seconds).values() for x in v]
    return {"p99": _pct(lat, 99), "cpu": w.cpu, "rss": w.rss, "fires": len(lat) / (10 * len(w.seconds))}


def burst(kind: str, d: Path, rec: Path) -> Figures:
    entries: list[Entry] = [(f"b{i}", "*/5 * * * * *", d / "rec") for i in range(200)]
    with _contender(kind, d, _yaml(rec, entries)) as (p, _):
        w = _measure(p)
    by_second = _in(d / "rec", w.seconds)
    last = [max(v) for v in by_second.values() if len(v) == 200]
    return {"last": statistics.median(last) if last else nan, "complete": len(last) / max(1, len(by_second))}


def idle(kind: str, d: Path, rec: Path) -> Figures:
    with _contender(kind, d, _yaml(rec, _dormant(10_000))) as (p, _):
        w = _measure(p)
    return {"rss": w.rss, "cpu": w.cpu}


def _events(d: Path) -> list[dict[str, object]]:
    out = []
    for line in (d / "torch.log").read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            if isinstance(e, dict):
                out.append(e)
    return out


def _when(e: dict[str, object]) -> float:
    """The wall time of a log event: the floor and aps log `ts`, torch an ISO `timestamp`."""
    ts = e.get("ts")
    return float(ts) if isinstance(ts, float) else datetime.fromisoformat(str(e["timestamp"])).timestamp()


def _names(added: object) -> list[str]:
    return [str(x) for x in added] if isinstance(added, list) else []


def reload(kind: str, d: Path, rec: Path) -> Figures:
    # The idle set: the 1/s task's lateness then shows what the reload costs it, not the other
    # recorders of the same second (that is the 10k part's p99).
    base = [*_dormant(10_000), ("tick", "* * * * * *", d / "tick.rec")]
    new: list[Entry] = [(f"new-{i}", "* * * * * *", d / f"new-{i}.rec") for i in range(RELOADS)]
    triggers = []
    with _contender(kind, d, _yaml(rec, base)) as (p, cfg):
        time.sleep(SETTLE)
        for i in range(RELOADS):
            incoming = cfg.parent / ".tasks.yaml.new"
            incoming.write_text(_yaml(rec, base + new[:i + 1]))
            old = time.time() - 5
            os.utime(incoming, (old, old))  # an old file: no settle wait for its mtime
            at = int(time.time()) + 1 + random.random()
            time.sleep(at - time.time())
            triggers.append(time.time())
            os.rename(incoming, cfg)
            p.send_signal(signal.SIGUSR2)
            while time.time() < triggers[-1] + 6.5 or not (d / f"new-{i}.rec").exists():
                if time.time() > triggers[-1] + 30:
                    break
                time.sleep(0.1)
    applied = [e for e in _events(d) if e.get("event") == "reload.applied"]
    tick = _lateness_ms(d / "tick.rec")
    first_s, between, skipped, worst, missing = [], [], [], [], 0
    for i, trig in enumerate(triggers):
        fires = (d / f"new-{i}.rec").read_text().split() if (d / f"new-{i}.rec").exists() else []
        when = [_when(e) for e in applied if f"new-{i}" in _names(e.get("added")) and _when(e) >= trig - 0.01]
        if len(fires) < 2 or not when:
            first_s.append(inf)
            between.append(inf)
            skipped.append(inf)
        else:
            sched, ns = int(fires[0]), int(fires[1])  # the first line: the first fire
            first_s.append(ns / 1e9 - trig)
            between.append(sched - ceil(trig))
            skipped.append(max(0, sched - ceil(when[0])))
        around = range(floor(trig) - 2, floor(trig) + 6)
        missing += sum(1 for s in around if len(tick.get(s, [])) != 1)
        worst.append(max((x for s in around for x in tick.get(s, [])), default=nan))
    return {"first": statistics.median(first_s), "between": statistics.median(between),
            "skipped": max(skipped), "worst": statistics.median(worst), "missing": missing}


PARTS: dict[str, tuple[str, Callable[[str, Path, Path], Figures]]] = {
    "1tps": ("1 task/s", one_tps), "10k": ("10,000 loaded, 10 distinct due each second", ten_k),
    "burst": ("200 due at the same second", burst), "idle": ("10,000 idle, none due", idle),
    "reload": (f"reload of 10,000 adding one 1/s task ({RELOADS} reloads per run)", reload),
}
# Rows per part: figure key, label, and the target: ("floor", x) torch <= x times the floor's median,
# ("max", x) torch's median <= x, None: reported only.
ROWS: dict[str, list[tuple[str, str, Target]]] = {
    "1tps": [("p50", "p50 lateness (ms)", None), ("p99", "p99 lateness (ms)", ("floor", 1.1))],
    "10k": [("p99", "p99 lateness (ms)", ("floor", 1.1)), ("cpu", "CPU (% of a core)", ("max", 0.25)),
            ("rss", "RSS (MB)", ("max", 50)), ("fires", "fires / due", None)],
    "burst": [("last", "last start after the boundary (ms)", ("floor", 1.1)),
              ("complete", "seconds with all 200 fired", None)],
    "idle": [("rss", "RSS (MB)", ("max", 50)), ("cpu", "CPU (% of a core)", None)],
    "reload": [("first", "trigger to first fire (s)", ("max", 1.0)),
               ("between", "boundaries between trigger and first fire", None),
               ("skipped", "boundaries skipped after the reload applied", ("max", 0)),
               ("worst", "worst lateness of the 1/s task (ms)", ("max", 3.0)),
               ("missing", "1/s task seconds without exactly 1 fire", ("max", 0))],
}


def _rows(name: str, results: dict[str, dict[str, list[float]]]) -> list[Row]:
    return [Row(PARTS[name][0], label, results["torch"][key], target, results["floor"][key], results["aps"][key])
            for key, label, target in ROWS[name]]


def _torch_only(d: Path, rec: Path, parts: list[str]) -> list[Row]:
    rows = []
    if "check" in parts:
        cfg = d / "check" / "tasks.yaml"
        cfg.parent.mkdir()
        cfg.write_text(_yaml(rec, _spread(d / "rec")))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gotorch", "check", "-c", str(cfg)],
                           check=True, capture_output=True, env=torch_code(), cwd=d)
            times.append(time.perf_counter() - t0)
        rows.append(Row("torch alone", "`torch check` of the 10k file (s, 3 runs)", times, ("max", 1.0)))
    if "100k" in parts:
        sub = d / "100k"
        sub.mkdir()
        t0 = time.time()
        with _torch(sub, _yaml(rec, _dormant(100_000))) as (p, _):
            time.sleep(SETTLE)
            rss = p.memory_info().rss / 1e6
        start = next(_when(e) for e in _events(sub) if e.get("event") == "daemon.start")
        rows += [Row("torch alone", "100,000 tasks: start to daemon.start (s)", [start - t0]),
                 Row("torch alone", "100,000 tasks: RSS (MB)", [rss])]
    return rows


def bench_peers(parts: list[str]) -> list[Row]:
    """The chosen parts, printed as they run and then as one table; returns the table's rows."""
    unknown = set(parts) - set(PARTS) - {"check", "100k"}
    if unknown:
        sys.exit(f"unknown peers part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}, check, 100k")
    peers = [p for p in parts if p in PARTS]
    print(f"peers: {', '.join(parts)}; window {WINDOW} s (1tps {ONE_TPS_WINDOW} s) after {SETTLE:g} s settle, "
          f"{REPEATS} repeats "
          f"(floor, aps, torch interleaved), {os.cpu_count()} cores; cells: median [min..max] over repeats")
    results: dict[str, dict[str, dict[str, list[float]]]] = {
        n: {k: {key: [] for key, _, _ in ROWS[n]} for k in ("floor", "aps", "torch")} for n in peers}
    with tempfile.TemporaryDirectory(prefix="torch-bench-") as tmp:
        d = Path(tmp)
        rec = _compile_recorder(d)
        for rep in range(REPEATS if peers else 0):
            for name in peers:
                for kind in CONTENDERS:
                    sub = d / f"{name}-{kind}-{rep}"
                    sub.mkdir()
                    load = os.getloadavg()[0]  # other work on the machine shows in lateness: say how much
                    got = PARTS[name][1](kind, sub, rec)
                    for key, v in got.items():
                        results[name][kind][key].append(v)
                    print(f"  run {rep + 1} {name} {kind}: " + ", ".join(f"{k} {v:.2f}" for k, v in got.items())
                          + f" (load before {load:.1f})", flush=True)
        rows = [row for name in peers for row in _rows(name, results[name])] + _torch_only(d, rec, parts)
    print_rows(rows, title="peers: cells median [min..max] over repeats; ratios of torch's median to the others'")
    return rows
