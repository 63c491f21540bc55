"""The `soak` scenario (not in CI, not in `all`): torch for a long while at 50 runs/s with a reload every 10 s.

  torch with default settings (history and output capture on) runs BENCH_SOAK_TASKS (default 50)
  tasks `* * * * * *`, each bench/recorder (a static C program) recording its TORCH_SCHEDULED_AT to a
  file of its own and writing a line to its stdout; beside them a few hundred dormant tasks. Every
  10 s, at a random fraction of a second, the task file is replaced (rename over) by the other of two
  valid configurations: they differ in the environment of every other firing task (changed tasks)
  and in which dormant tasks exist (added and removed ones). Every other reload also sends SIGUSR2
  (with the file's mtime in the past: read at once); the others are left to the file watcher.
  For BENCH_SOAK_SECONDS (default 1800), every 10 s (half a second after a boundary, when that
  second's runs are done), it samples the daemon's RSS, its open fds (/proc/PID/fd), its threads,
  the RSS of its other children (the reload process waiting, or parsing), and its zombie children.

  At the end: the slope of the daemon's RSS (KB/min) and of its fds (per min), a least-squares line
  over the samples after BENCH_SOAK_WARMUP seconds (default 300, at most a quarter of the run);
  zombies (a zombie child seen in two samples in a row, 10 s apart, is one the daemon did not reap;
  one seen once may just have exited); per task, the seconds of the measured window without a fire
  (missed) and with more than one (doubled), from the recorders' files; the reloads applied and
  failed. Targets: RSS slope <= SOAK_RSS_SLOPE_KB KB/min (a leak of 35 bytes per run at 50 runs/s
  would exceed it), fd slope <= SOAK_FD_SLOPE per min (3 fds in half an hour), persistent zombies 0,
  missed 0, doubled 0, failed reloads 0. A short run (BENCH_SOAK_SECONDS=120) is a smoke check: its
  slopes rest on a few samples and say little.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from run import _compile_recorder, _lateness_ms, _pct, _torch
from table import Row, print_rows

SECONDS = int(os.environ.get("BENCH_SOAK_SECONDS", "1800"))
TASKS = int(os.environ.get("BENCH_SOAK_TASKS", "50"))
WARMUP = min(int(os.environ.get("BENCH_SOAK_WARMUP", "300")), SECONDS // 4)
PERIOD = 10.0  # seconds between samples, and between reloads
DORMANT = 200  # per configuration; the two share half of them
SOAK_RSS_SLOPE_KB = 100.0
SOAK_FD_SLOPE = 0.1


def _config(rec: Path, records: Path, variant: int) -> str:
    """Configuration 0 or 1: the same TASKS firing tasks (every other one's env differs), other dormant ones."""
    lines = ["version: 1", "defaults: {timezone: UTC}", "tasks:"]
    for i in range(TASKS):
        extra = f", SOAK_VARIANT: '{variant}'" if i % 2 == 0 else ""
        lines.append(f'  - {{name: soak-{i}, schedule: "* * * * * *", command: [{rec}], '
                     f"env: {{RECORD_FILE: {records / f'soak-{i}.rec'}, RECORD_STDOUT: 'run of soak-{i}'{extra}}}}}")
    hour = time.gmtime().tm_hour
    first = variant * DORMANT // 2
    for i in range(first, first + DORMANT):  # daily, 6 to 17 hours away: never due here
        lines.append(f'  - {{name: dormant-{i}, schedule: "{i % 60} {i // 60 % 60} {(hour + 6 + i % 12) % 24} * * *", '
                     f"command: [/bin/true, '{i}']}}")
    return "\n".join(lines) + "\n"


@dataclass
class Sample:
    """One look at the daemon."""

    t: float  # seconds since the soak began
    rss_kb: float
    fds: int
    threads: int
    other_rss_kb: float  # its children other than runs (the reload process), summed
    zombies: frozenset[int]


def _sample(p: psutil.Process, t: float, recorder_name: str) -> Sample:
    other = 0.0
    zombies = set()
    for c in p.children():
        with contextlib.suppress(psutil.Error):
            if c.status() == psutil.STATUS_ZOMBIE:
                zombies.add(c.pid)
            elif c.name() != recorder_name:
                other += c.memory_info().rss / 1024
    return Sample(t, p.memory_info().rss / 1024, len(os.listdir(f"/proc/{p.pid}/fd")), p.num_threads(), other,
                  frozenset(zombies))


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs; nan with fewer than 3 points."""
    if len(xs) < 3 or len(set(xs)) < 2:
        return float("nan")
    return statistics.linear_regression(xs, ys).slope


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            if isinstance(e, dict):
                out.append(e)
    return out


def bench_soak() -> list[Row]:
    print(f"soak: {TASKS} tasks every second ({TASKS} runs/s, recorder with output, history on), a reload every "
          f"{PERIOD:g} s alternating two configs, {SECONDS} s, samples every {PERIOD:g} s, warm-up {WARMUP} s; "
          f"{os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="torch-soak-") as tmp:
        d = Path(tmp)
        rec = _compile_recorder(d)
        records = d / "records"
        records.mkdir()
        texts = [_config(rec, records, 0), _config(rec, records, 1)]
        samples: list[Sample] = []
        reloads = 0
        with _torch(d, texts[0]) as (p, cfg):
            c0 = p.cpu_times()
            t0 = time.time()
            first_second = int(t0) + 2  # whole seconds from here on are counted
            next_sample = int(t0) + 1.5
            next_reload = next_sample + PERIOD / 2 + random.random()
            while True:
                now = time.time()
                if now - t0 >= SECONDS:
                    break
                time.sleep(max(0.0, min(next_sample, next_reload) - now))
                if time.time() >= next_reload:
                    reloads += 1
                    incoming = cfg.parent / ".tasks.yaml.new"
                    incoming.write_text(texts[reloads % 2])
                    by_signal = reloads % 2 == 0
                    if by_signal:
                        old = time.time() - 5
                        os.utime(incoming, (old, old))  # an old file: read at once, no settle wait
                    os.rename(incoming, cfg)
                    if by_signal:
                        p.send_signal(signal.SIGUSR2)
                    next_reload = int(next_reload + PERIOD) + random.random()
                if time.time() >= next_sample:
                    samples.append(_sample(p, time.time() - t0, rec.name))
                    s = samples[-1]
                    if len(samples) % 6 == 1:
                        print(f"  t {s.t:6.0f} s: RSS {s.rss_kb / 1024:6.1f} MB, fds {s.fds}, threads {s.threads}, "
                              f"reload process {s.other_rss_kb / 1024:5.1f} MB, zombies {len(s.zombies)}, "
                              f"reloads {reloads}", flush=True)
                    next_sample += PERIOD
            last_second = int(time.time()) - 2
            c1 = p.cpu_times()
            cpu = ((c1.user + c1.system) - (c0.user + c0.system)) / (time.time() - t0) * 100
            end = _sample(p, time.time() - t0, rec.name)
        events = _events(d / "torch.log")
        window = range(first_second, last_second + 1)
        missed = doubled = fires = 0
        worst_task = (0, 0, "")
        lateness: list[float] = []
        for i in range(TASKS):
            by_second = _lateness_ms(records / f"soak-{i}.rec")
            counts = [len(by_second.get(s, [])) for s in window]
            m, dbl = counts.count(0), sum(1 for c in counts if c > 1)
            missed, doubled, fires = missed + m, doubled + dbl, fires + sum(counts)
            if m + dbl > worst_task[0] + worst_task[1]:
                worst_task = (m, dbl, f"soak-{i}")
            lateness += [x for s in window for x in by_second.get(s, [])]
    names = [str(e.get("event")) for e in events]
    later = [s for s in samples if s.t >= WARMUP]
    xs = [s.t / 60 for s in later]
    rss_slope = _slope(xs, [s.rss_kb for s in later])
    fd_slope = _slope(xs, [float(s.fds) for s in later])
    persistent: set[int] = set()
    for a, b in itertools.pairwise(samples):
        persistent |= a.zombies & b.zombies
    persistent |= (samples[-1].zombies & end.zombies) if samples else set()
    transient = max((len(s.zombies) for s in samples), default=0)
    print(f"soak: {len(samples)} samples over {SECONDS} s, {reloads} reloads triggered; "
          f"window {len(window)} s x {TASKS} tasks = {len(window) * TASKS:,} fires due, {fires:,} recorded")
    print(f"  daemon RSS {samples[0].rss_kb / 1024:.1f} MB first, {min(s.rss_kb for s in later) / 1024:.1f}.."
          f"{max(s.rss_kb for s in later) / 1024:.1f} MB after warm-up, {end.rss_kb / 1024:.1f} MB last; "
          f"fds {min(s.fds for s in later)}..{max(s.fds for s in later)}; threads "
          f"{min(s.threads for s in later)}..{max(s.threads for s in later)}; daemon CPU {cpu:.1f} % of a core")
    print(f"  reload process RSS: max {max(s.other_rss_kb for s in samples) / 1024:.1f} MB; reloads applied "
          f"{names.count('reload.applied')}, unchanged {names.count('reload.unchanged')}, failed "
          f"{names.count('reload.failed')}; zombies: most in one sample {transient}, seen in two samples in a row "
          f"{len(persistent)}")
    for msg in sorted({str(e.get("errors"))[:200] for e in events if e.get("event") == "reload.failed"})[:3]:
        print(f"    reload.failed: {msg}")
    print(f"  lateness p50 {_pct(lateness, 50):.2f} ms, p99 {_pct(lateness, 99):.2f} ms, max "
          f"{max(lateness, default=float('nan')):.1f} ms; missed {missed}, doubled {doubled}"
          + (f" (most in {worst_task[2]}: missed {worst_task[0]}, doubled {worst_task[1]})"
             if missed + doubled else ""))
    group = f"soak, {TASKS} runs/s, a reload every {PERIOD:g} s, {SECONDS} s"
    rows = [Row(group, f"daemon RSS slope after {WARMUP} s (KB/min)", [rss_slope], ("max", SOAK_RSS_SLOPE_KB)),
            Row(group, f"daemon open fds slope after {WARMUP} s (per min)", [fd_slope], ("max", SOAK_FD_SLOPE)),
            Row(group, "daemon RSS at the end (MB)", [end.rss_kb / 1024]),
            Row(group, "reload process RSS, highest sample (MB)", [max(s.other_rss_kb for s in samples) / 1024]),
            Row(group, "zombie children seen in 2 samples in a row", [float(len(persistent))], ("max", 0)),
            Row(group, "zombie children in one sample, most", [float(transient)]),
            Row(group, "missed fires (task-seconds without a fire)", [float(missed)], ("max", 0)),
            Row(group, "doubled fires (task-seconds with more than 1)", [float(doubled)], ("max", 0)),
            Row(group, "reloads failed", [float(names.count("reload.failed"))], ("max", 0)),
            Row(group, "p99 lateness (ms)", [_pct(lateness, 99)]),
            Row(group, "daemon CPU (% of a core)", [cpu])]
    print_rows(rows)
    return rows
