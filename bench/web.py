"""The `http` scenario: what the status page and /metrics cost the firing loop, and how fast `/` is served.

  clients  10 tasks fire every second (the recorder) with `--http`, for BENCH_SECONDS (default 30)
           per run, interleaved BENCH_REPEATS times (default 2) in three modes: `clients`, 8 clients
           fetching `/metrics` and `/` as fast as they can; `control`, no clients but the same CPU
           load put on the host by two SCHED_IDLE busy loops that are not torch; `quiet`, neither.
           Printed: p50/p99 lateness per mode, the p99 cost of the clients against quiet (target
           <= 1 ms) and against control, requests served and their latency, CPU of the daemon, its
           web process and the clients. The control is there because on a small VM any busy CPU
           slows process spawning (10 spawns: 4.4 ms alone, 7.3 ms beside one idle-priority busy
           loop): it says how much of the cost is that, rather than anything torch does. The
           clients are one process of 8 threads at nice BENCH_CLIENT_NICE (default 19, with
           SCHED_IDLE): real clients (Prometheus, browsers) do not run on the daemon's host, and on
           a small machine a load generator at normal priority would take a core from the daemon
           and its runs itself (set 0 to see that too).
  page     1,000 tasks (a year apart) and a history of 30 results each: `/` latency p50/p95/max for
           people looking (one client, PAGE_RATE requests a second; target p95 < 50 ms) and for 8
           clients as fast as they can (throughput bounded by the web process's CPU budget, so
           their latency is queueing), the page's size, what one refresh of the page costs the web
           process (status + history + HTML) and how often it is made, and what the status request
           costs the daemon (its round trip on the control socket).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from run import _compile_recorder, _lateness_ms, _pct, _torch, _torch_tasks
from table import Row

from gotorch import control
from gotorch.history import DB_NAME, schema

WINDOW = int(os.environ.get("BENCH_SECONDS", "30"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "2"))
PER_SECOND = 10
CLIENTS = 8
SETTLE = 2.0
P99_COST_TARGET_MS = 1.0
PAGE_TASKS = 1_000
PAGE_RESULTS = 30
PAGE_TARGET_MS = 50.0
PAGE_RATE = 5.0  # requests a second of the "people looking" client
CLIENT_NICE = int(os.environ.get("BENCH_CLIENT_NICE", "19"))


@dataclass
class Run:
    """One daemon run: fire lateness, and what the clients saw (if any)."""

    mode: str  # clients | control | quiet
    lateness: list[float]
    due: int
    daemon_cpu: float  # % of one CPU
    web_cpu: float
    clients_cpu: float  # the load generator (or the control run's burners)
    host_busy: float  # % of all CPUs busy during the window, everything on the host included
    latency: dict[str, list[float]] = field(default_factory=dict)  # path -> ms per request
    errors: int = 0


def _url(log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"web.listen"' in line:
                return str(json.loads(line)["url"]).rstrip("/")
        time.sleep(0.05)
    raise SystemExit("the daemon did not report web.listen:\n" + log.read_text()[-2000:])


def _web_process(log: Path) -> psutil.Process:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"web.start"' in line:
                return psutil.Process(json.loads(line)["pid"])
        time.sleep(0.05)
    raise SystemExit("the daemon did not report web.start")


def _get(host: str, port: int, path: str) -> tuple[int, int]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, len(resp.read())
    finally:
        conn.close()


def _hammer(url: str, paths: list[str], clients: int, until: float, out: dict[str, list[float]],
            errors: list[int]) -> list[threading.Thread]:
    """`clients` threads each fetching `paths` in turn, as fast as they can, until `until` (monotonic)."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    lock = threading.Lock()

    def client(offset: int) -> None:
        i = offset
        mine: dict[str, list[float]] = {p: [] for p in paths}
        bad = 0
        while time.monotonic() < until:
            path = paths[i % len(paths)]
            i += 1
            t0 = time.perf_counter()
            try:
                status, _ = _get(host, int(port), path)
            except OSError:
                status = 0
            if status != 200:
                bad += 1
            mine[path].append((time.perf_counter() - t0) * 1000)
        with lock:
            for p, v in mine.items():
                out.setdefault(p, []).extend(v)
            errors.append(bad)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    return threads


def _client_process(url: str, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """The 8 clients, in a process of their own at nice CLIENT_NICE; their latencies land in `out` (JSON)."""
    return subprocess.Popen([sys.executable, __file__, "clients", url, str(seconds), str(CLIENT_NICE), str(out)])


def _clients_main(url: str, seconds: float, nice: int, out: Path) -> None:
    os.nice(nice)
    if nice >= 19:  # the load generator is not what is measured: CPU only when nothing else wants it
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    latency: dict[str, list[float]] = {}
    errors: list[int] = []
    for t in _hammer(url, ["/metrics", "/"], CLIENTS, time.monotonic() + seconds, latency, errors):
        t.join()
    out.write_text(json.dumps({"latency": latency, "errors": sum(errors)}))


def _cpu(p: psutil.Process) -> float:
    c = p.cpu_times()
    return c.user + c.system


def _burner_main(share: float) -> None:
    """Use `share` of one CPU at the lowest priority, in 10 ms periods, until killed (the control run)."""
    os.nice(19)
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while True:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.01 * share:
            pass
        time.sleep(0.01 * (1 - share))


def _one(d: Path, recorder: Path, mode: str, burn: float = 0.0) -> Run:
    """One daemon run; `mode` clients (the 8 clients), control (2 burners using `burn` % of a CPU), quiet."""
    with_clients = mode == "clients"
    record = d / "torch.rec"
    tasks = _torch_tasks(recorder, record, ["* * * * * *"] * PER_SECOND, 0)
    with _torch(d, tasks, ("--http", "127.0.0.1:0")) as (daemon, _):
        url = _url(d / "torch.log")
        web = _web_process(d / "torch.log")
        time.sleep(SETTLE)
        c0, w0, t0, wall0, h0 = _cpu(daemon), _cpu(web), time.monotonic(), time.time(), psutil.cpu_times()
        clients = _client_process(url, WINDOW, d / "clients.json") if with_clients else None
        burners = [subprocess.Popen([sys.executable, __file__, "burn", str(burn / 200)])
                   for _ in range(2 if mode == "control" else 0)]
        load = [psutil.Process(p.pid) for p in ([clients] if clients is not None else burners)]
        k0 = sum(_cpu(p) for p in load)
        time.sleep(WINDOW)
        c1, w1, t1, wall1, h1 = _cpu(daemon), _cpu(web), time.monotonic(), time.time(), psutil.cpu_times()
        k1 = sum(_cpu(p) for p in load)
        for b in burners:
            b.kill()
            b.wait()
        if clients is not None:
            clients.wait(timeout=120)
    seconds = range(int(wall0) + 1, int(wall1))
    by_second = _lateness_ms(record)
    lateness = [x for s in seconds for x in by_second.get(s, [])]
    seen = json.loads((d / "clients.json").read_text()) if with_clients else {"latency": {}, "errors": 0}
    idle = (h1.idle - h0.idle) / (t1 - t0) / (os.cpu_count() or 1) * 100
    return Run(mode, lateness, len(seconds) * PER_SECOND, (c1 - c0) / (t1 - t0) * 100,
               (w1 - w0) / (t1 - t0) * 100, (k1 - k0) / (t1 - t0) * 100, 100 - idle, seen["latency"],
               seen["errors"])


def bench_clients(tmp: Path) -> list[Row]:
    """Fire lateness with 8 clients hammering, with a control load of the same CPU, and quiet, interleaved."""
    recorder = _compile_recorder(tmp)
    print(f"http: {PER_SECOND} tasks/s, window {WINDOW} s per run, interleaved x{REPEATS}, {os.cpu_count()} cores; "
          f"modes: clients = {CLIENTS} clients (nice {CLIENT_NICE}) fetching /metrics and / as fast as they can; "
          "control = no clients, two SCHED_IDLE processes (not torch) burning the CPU the clients run used, web "
          "process and clients together; quiet = neither")
    runs: list[Run] = []
    for i in range(REPEATS):
        burn = 0.0
        for mode in ("clients", "control", "quiet"):
            sub = tmp / f"run{i}-{mode}"
            sub.mkdir()
            load = os.getloadavg()[0]
            r = _one(sub, recorder, mode, burn)
            if mode == "clients":
                burn = r.web_cpu + r.clients_cpu
            runs.append(r)
            line = (f"  run {len(runs)} {mode:<7}: {len(r.lateness):,}/{r.due:,} fires, "
                    f"p50 {_pct(r.lateness, 50):6.2f} ms, p99 {_pct(r.lateness, 99):6.2f} ms, "
                    f"max {max(r.lateness, default=float('nan')):6.1f} ms, CPU: daemon {r.daemon_cpu:4.1f} %, "
                    f"web {r.web_cpu:4.1f} %, {'burners' if mode == 'control' else 'clients'} {r.clients_cpu:4.1f} %, "
                    f"host busy {r.host_busy:4.1f} %, load before {load:.1f}")
            if mode == "clients":
                n = sum(len(v) for v in r.latency.values())
                line += f"; {n:,} requests ({n / WINDOW:,.0f}/s), {r.errors} not 200"
            print(line, flush=True)
            for path, ms in sorted(r.latency.items()):
                print(f"    {path:<9} {len(ms):6,} requests  p50 {_pct(ms, 50):6.2f} ms  p95 {_pct(ms, 95):6.2f} ms  "
                      f"p99 {_pct(ms, 99):6.2f} ms  max {max(ms):7.1f} ms")
    pooled = {m: [x for r in runs if r.mode == m for x in r.lateness] for m in ("clients", "control", "quiet")}
    for m, lat in pooled.items():
        print(f"  pooled {m:<7}: p50 {_pct(lat, 50):6.2f} ms  p99 {_pct(lat, 99):6.2f} ms  ({len(lat):,} fires)")
    by_mode = {m: [r for r in runs if r.mode == m] for m in pooled}
    for other in ("quiet", "control"):
        cost = _pct(pooled["clients"], 99) - _pct(pooled[other], 99)
        pairs = ", ".join(f"{_pct(a.lateness, 99) - _pct(b.lateness, 99):+.2f}"
                          for a, b in zip(by_mode["clients"], by_mode[other], strict=False))
        verdict = (f"target <= {P99_COST_TARGET_MS:g} ms: {'ok' if cost <= P99_COST_TARGET_MS else 'OVER TARGET'}; "
                   if other == "quiet" else "the same CPU spent by something else; ")
        print(f"  p99 lateness, clients - {other}: {cost:+.2f} ms ({verdict}run by run: {pairs} ms)")
    group = f"http, {PER_SECOND} tasks/s, {CLIENTS} clients"
    return [Row(group, "p99 lateness, clients - quiet (ms, per pair)",
                [_pct(a.lateness, 99) - _pct(b.lateness, 99) for a, b in zip(by_mode["clients"], by_mode["quiet"],
                                                                              strict=False)],
                ("max", P99_COST_TARGET_MS)),
            Row(group, "p99 lateness, quiet (ms)", [_pct(r.lateness, 99) for r in by_mode["quiet"]]),
            Row(group, "p99 lateness, clients - control (ms, per pair)",
                [_pct(a.lateness, 99) - _pct(b.lateness, 99) for a, b in zip(by_mode["clients"], by_mode["control"],
                                                                              strict=False)])]


def _build_history(state: Path, names: list[str]) -> None:
    """PAGE_RESULTS results of each task (mostly ok; failed, timeout, killed, skipped, missed among them)."""
    state.mkdir(mode=0o750)
    db = sqlite3.connect(state / DB_NAME, isolation_level=None)
    schema.migrate(db)
    db.execute("PRAGMA journal_mode = WAL")
    rng = random.Random(7)
    now = time.time()
    rows = []
    for n, task in enumerate(names):
        for k in range(PAGE_RESULTS):
            at = now - (PAGE_RESULTS - k) * 3600 - n
            status = rng.choices(["ok", "failed", "timeout", "killed", "skipped", "missed"], [90, 4, 2, 1, 2, 1])[0]
            kind = status if status in ("skipped", "missed") else "run"
            dur = None if kind != "run" else rng.uniform(0.01, 30)
            rows.append((f"bench-{n}-{k}", task, kind, "schedule", at, at + 0.002, None if dur is None else at + dur,
                         status, 1 if status == "failed" else None, dur, b"done\n"))
    db.execute("BEGIN")
    db.executemany("INSERT INTO runs (run_id, task, kind, trigger, scheduled_at, started_at, ended_at, status, "
                   "exit_code, duration_s, output_head) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("COMMIT")
    db.close()


def bench_page(tmp: Path) -> list[Row]:
    """`/` with 1,000 tasks and their history: latency for 1 and 8 clients, refresh and status costs."""
    from gotorch.web.feed import Feed

    d = tmp / "page"
    d.mkdir()
    names = [f"idle-{i}" for i in range(PAGE_TASKS)]
    _build_history(d / "state", names)
    recorder = _compile_recorder(tmp)
    tasks = _torch_tasks(recorder, d / "torch.rec", [], PAGE_TASKS)
    with _torch(d, tasks, ("--http", "127.0.0.1:0")) as _:
        url = _url(d / "torch.log")
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        status, size = _get(host, int(port), "/")
        assert status == 200, status
        time.sleep(1.5)
        one = []
        end = time.monotonic() + min(WINDOW, 20)
        while time.monotonic() < end:
            t0 = time.perf_counter()
            status, size = _get(host, int(port), "/")
            one.append((time.perf_counter() - t0) * 1000)
            assert status == 200
            time.sleep(max(0.0, 1 / PAGE_RATE - (time.perf_counter() - t0)))
        many: dict[str, list[float]] = {}
        errors: list[int] = []
        for t in _hammer(url, ["/"], CLIENTS, time.monotonic() + min(WINDOW, 10), many, errors):
            t.join()
        sock = d / "state" / "torch.sock"
        rtt = []
        for _ in range(20):
            t0 = time.perf_counter()
            control.request(sock, {"cmd": "status"})
            rtt.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
        feed = Feed(sock, d / "state" / DB_NAME, None)
        refresh = []
        cpu = []
        for _ in range(10):
            t0, c0 = time.perf_counter(), time.thread_time()
            feed.refresh(["page"])
            refresh.append((time.perf_counter() - t0) * 1000)
            cpu.append(time.thread_time() - c0)
        from gotorch.web.feed import INTERVAL_S, REFRESH_SHARE

        pace = max(INTERVAL_S, statistics.median(cpu) / REFRESH_SHARE)
    ms8 = many.get("/", [])
    ok = "ok" if _pct(one, 95) < PAGE_TARGET_MS else "OVER TARGET"
    span = min(WINDOW, 10)
    print(f"http page: {PAGE_TASKS:,} tasks, {PAGE_RESULTS} history results each; `/` is {size / 1e6:.2f} MB")
    print(f"  `/`, 1 client at {PAGE_RATE:g}/s: {len(one):6,} requests  p50 {_pct(one, 50):6.2f} ms  "
          f"p95 {_pct(one, 95):6.2f} ms  max {max(one):7.1f} ms  target p95 < {PAGE_TARGET_MS:g} ms: {ok}")
    print(f"  `/`, {CLIENTS} clients flat out: {len(ms8):6,} requests ({len(ms8) / span:.0f}/s, bounded by the CPU "
          f"budget)  p50 {_pct(ms8, 50):6.1f} ms  p95 {_pct(ms8, 95):6.1f} ms  max "
          f"{max(ms8, default=float('nan')):7.1f} ms  ({sum(errors)} not 200)")
    print(f"  one refresh of the page in the web process (status request + history + HTML): median "
          f"{statistics.median(refresh):.0f} ms, max {max(refresh):.0f} ms; made every {pace:.1f} s while looked at")
    print(f"  the status request of {PAGE_TASKS:,} tasks, round trip on the control socket (the daemon's share of "
          f"a refresh): median {statistics.median(rtt):.1f} ms, max {max(rtt):.1f} ms")
    return [Row(f"http page, {PAGE_TASKS:,} tasks", f"`/` p95, 1 client at {PAGE_RATE:g}/s (ms)", [_pct(one, 95)],
                ("below", PAGE_TARGET_MS))]


def bench_http() -> list[Row]:
    """Both parts, in one temporary directory."""
    with tempfile.TemporaryDirectory(prefix="torch-bench-") as tmp:
        return bench_clients(Path(tmp)) + bench_page(Path(tmp))


if __name__ == "__main__":
    if sys.argv[1:2] == ["clients"]:
        _clients_main(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    elif sys.argv[1:2] == ["burn"]:
        _burner_main(float(sys.argv[2]))
    else:
        bench_http()
