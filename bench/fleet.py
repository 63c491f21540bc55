"""`python3 dev.py bench fleet`: fire lateness of a `fleet: once` 1/s task vs the same task without fleet.

Three daemons (hosts 127.0.0.1/2/3, own state directories) share one real etcd (Debian's
etcd-server) on loopback and one task file with a `fleet: once` 1/s task; in the other mode the
same three daemons run the same task without `fleet:`, given to host 1 alone by its `ips`. Modes
alternate for BENCH_REPEATS rounds of BENCH_SECONDS each. The task is bench/recorder.c: it stamps
its own exec time, so lateness is measured from the scheduled boundary to the run's first
instruction, whichever host ran it.
Printed per mode: p50 / p99 / max lateness (median over rounds, [min..max]), fires per second
(exactly 1 expected), and in fleet mode the instants run twice or not at all (0 expected).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from table import Row, print_rows

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _etcd(d: Path) -> Iterator[str]:
    exe = shutil.which("etcd")
    if exe is None:
        raise SystemExit("bench fleet needs etcd (Debian: apt-get install etcd-server)")
    client, peer = _free_port(), _free_port()
    url = f"http://127.0.0.1:{client}"
    log = open(d / "etcd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([exe, "--data-dir", str(d / "etcd"), "--name", "b", "--listen-client-urls", url,
                             "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-cluster", f"b=http://127.0.0.1:{peer}"], stdout=log, stderr=log)
    try:
        import requests
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("etcd did not come up")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _tasks(url: str | None, cluster: str, recorder: Path, record: Path) -> str:
    head = f'fleet: {{endpoints: ["{url}"], cluster: {cluster}}}\n' if url else ""
    # Without fleet, the same three daemons run, and the task's ips give it to host 1 alone: the
    # host's load is the same, only who runs each fire is decided differently.
    fleet = ", fleet: once" if url else ', ips: ["127.0.0.1"]'
    return (f"version: 1\n{head}tasks:\n"
            f'  - {{name: tick, schedule: "* * * * * *"{fleet}, command: [{recorder}], '
            f"env: {{RECORD_FILE: {record}}}}}\n")


@contextlib.contextmanager
def _daemons(d: Path, tasks: str, hosts: int) -> Iterator[None]:
    (d / "etc").mkdir(parents=True, exist_ok=True)
    cfg = d / "etc" / "tasks.yaml"
    cfg.write_text(tasks)
    procs = []
    try:
        for i in range(1, hosts + 1):
            log = d / f"h{i}.log"
            from run import torch_code  # the code as it was when the benchmark began (see run.torch_code)

            env = dict(torch_code(), TORCH_STATE_DIR=str(d / f"h{i}"), TORCH_HOST_IPS=f"127.0.0.{i}")
            with open(log, "wb") as out:
                procs.append(subprocess.Popen([sys.executable, "-m", "gotorch", "start", "--foreground", "-c",
                                               str(cfg)], stdout=out, stderr=out, env=env, cwd=d))
            while b"daemon.start" not in log.read_bytes():
                if procs[-1].poll() is not None:
                    raise SystemExit(log.read_text()[-2000:])
                time.sleep(0.1)
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)


def _window(record: Path, first: int, last: int) -> tuple[list[float], int, int]:
    """Lateness (ms) of the runs of seconds first..last, and how many seconds ran twice / not at all."""
    by: dict[int, list[float]] = {}
    if record.exists():
        for line in record.read_text().splitlines():
            sched, ns = (int(x) for x in line.split())
            if first <= sched <= last:
                by.setdefault(sched, []).append((ns - sched * 1_000_000_000) / 1e6)
    lat = [v for vs in by.values() for v in vs]
    doubled = sum(1 for vs in by.values() if len(vs) > 1)
    missing = sum(1 for s in range(first, last + 1) if s not in by)
    return lat, doubled, missing


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def bench_fleet() -> list[Row]:
    """Print the lateness table (see the module docstring) and return its figures."""
    if shutil.which("etcd") is None:
        print("fleet: skipped: etcd is not installed (Debian: apt-get install etcd-server)")
        return []
    seconds = int(os.environ.get("BENCH_SECONDS", "30"))
    repeats = int(os.environ.get("BENCH_REPEATS", "2"))
    results: dict[str, list[dict[str, float]]] = {"fleet": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="torch-bench-fleet-") as tmp:
        d = Path(tmp)
        os.chmod(d, 0o755)
        from run import _compile_recorder

        recorder = _compile_recorder(d)
        with _etcd(d) as url:
            for r in range(repeats):
                for mode in ("fleet", "plain"):
                    run = d / f"{mode}-{r}"
                    record = run / "record"
                    run.mkdir()
                    os.chmod(run, 0o755)
                    tasks = _tasks(url if mode == "fleet" else None, f"bench{r}", recorder, record)
                    with _daemons(run, tasks, 3):
                        time.sleep(3)  # past start-up: the first claims, the first fires
                        first = int(time.time()) + 1
                        time.sleep(seconds)
                        last = int(time.time()) - 2
                    lat, doubled, missing = _window(record, first, last)
                    results[mode].append({"p50": _pct(lat, 50), "p99": _pct(lat, 99), "max": max(lat or [0.0]),
                                          "fires_per_s": len(lat) / max(1, last - first + 1),
                                          "doubled": doubled, "missing": missing})
                    print(f"  round {r + 1} {mode:5}: p50 {results[mode][-1]['p50']:.2f} ms  "
                          f"p99 {results[mode][-1]['p99']:.2f} ms  doubled {doubled}  missing {missing}", flush=True)
    group = f"fleet: once 1/s task, 3 hosts on one etcd ({repeats} x {seconds} s)"
    rows = []
    for key, label in (("p50", "p50 lateness (ms)"), ("p99", "p99 lateness (ms)"), ("max", "max lateness (ms)")):
        rows.append(Row(group, f"{label}, fleet: once", [x[key] for x in results["fleet"]]))
        rows.append(Row(group, f"{label}, same task without fleet", [x[key] for x in results["plain"]]))
    rows.append(Row(group, "p99 lateness, fleet - without (ms, per round)",
                    [f["p99"] - p["p99"] for f, p in zip(results["fleet"], results["plain"], strict=True)]))
    rows.append(Row(group, "instants run twice, fleet: once", [x["doubled"] for x in results["fleet"]], ("max", 0)))
    rows.append(Row(group, "instants run nowhere, fleet: once", [x["missing"] for x in results["fleet"]],
                    ("max", 0)))
    print_rows(rows, title="fleet: fire lateness with and without `fleet: once` (same 3 daemons, same task)")
    return rows


if __name__ == "__main__":
    bench_fleet()
