"""The `profile` scenario: where the daemon's CPU goes, per loop callback and per thread, per run.

`python3 dev.py bench profile [1tps|10k|burst|idle]` (default 10k) starts the real daemon on that
peers scenario (bench/peers.py) with a hook in its copy of the code (a sitecustomize, active only
while TORCH_BENCH_PROFILE names its output file) that charges the thread CPU time of every asyncio
callback (`time.thread_time_ns` around `Handle._run`) and of the selector's `select` to the
callback's name, and writes the totals once a second. Over a BENCH_SECONDS window after SETTLE
seconds it prints the process's CPU (user, system), each thread's, and the callbacks that used the
most, in ms and in microseconds per run started in the window. Unlike a sampling profiler, the
figures are CPU time, not wall time: a spawn's vfork wait (the parent sleeps until the child's exec)
is not counted as work. The reload process runs with `python -I` and is not hooked.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from peers import SETTLE, WINDOW, _dormant, _spread, _yaml
from run import _compile_recorder, _lateness_ms, _torch, torch_code
from table import Row

HOOK = '''
import os
if os.environ.get("TORCH_BENCH_PROFILE"):
    import asyncio.events, collections, json, selectors, time
    _out = os.environ.pop("TORCH_BENCH_PROFILE")  # not inherited by what the daemon starts
    _stats = collections.defaultdict(lambda: [0, 0])
    _tt, _mono = time.thread_time_ns, time.monotonic
    _next = [0.0]
    _run = asyncio.events.Handle._run
    _select = selectors.EpollSelector.select

    def _dump():
        with open(_out + ".tmp", "w") as f:
            json.dump(_stats, f)
        os.replace(_out + ".tmp", _out)

    def _timed_run(self):
        t0 = _tt()
        _run(self)
        cb = self._callback
        s = _stats[getattr(cb, "__qualname__", None) or type(cb).__name__]
        s[0] += 1
        s[1] += _tt() - t0
        if _mono() >= _next[0]:
            _next[0] = _mono() + 1.0
            _dump()

    def _timed_select(self, timeout=None):
        t0 = _tt()
        try:
            return _select(self, timeout)
        finally:
            s = _stats["(selector.select)"]
            s[0] += 1
            s[1] += _tt() - t0

    asyncio.events.Handle._run = _timed_run
    selectors.EpollSelector.select = _timed_select
'''


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `pid`, by `tid name`."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            s = f.read()
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            name = f.read().strip()
        fields = s[s.rindex(")") + 2:].split()
        out[f"{tid} {name}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _snapshot(path: Path) -> dict[str, list[int]]:
    return json.loads(path.read_text()) if path.exists() else {}


def bench_profile(parts: list[str]) -> list[Row]:
    """Profile the daemon on one peers scenario; print the breakdown (no targets: returns no rows)."""
    part = parts[0] if parts else "10k"
    code = Path(torch_code()["PYTHONPATH"])
    (code / "sitecustomize.py").write_text(HOOK)
    with tempfile.TemporaryDirectory(prefix="torch-profile-") as tmp:
        d = Path(tmp)
        rec = _compile_recorder(d)
        record = d / "rec"
        entries = {"1tps": [("tick", "* * * * * *", record)], "10k": _spread(record),
                   "burst": [(f"b{i}", "*/5 * * * * *", record) for i in range(200)], "idle": _dormant(10_000)}
        if part not in entries:
            raise SystemExit(f"unknown profile part {part!r}; choose from {', '.join(entries)}")
        out = d / "profile.json"
        os.environ["TORCH_BENCH_PROFILE"] = str(out)
        try:
            with _torch(d, _yaml(rec, entries[part])) as (p, _):
                time.sleep(SETTLE)
                a, ta, ca, t0 = _snapshot(out), _threads(p.pid), p.cpu_times(), time.monotonic()
                w0 = time.time()
                time.sleep(WINDOW)
                time.sleep(1.2)  # the hook writes once a second: let it catch up with the window
                b, tb, cb, t1 = _snapshot(out), _threads(p.pid), p.cpu_times(), time.monotonic() - 1.2
                w1 = time.time() - 1.2
        finally:
            os.environ.pop("TORCH_BENCH_PROFILE", None)
            (code / "sitecustomize.py").unlink(missing_ok=True)
        runs = sum(len(v) for s, v in _lateness_ms(record).items() if w0 < s < w1)
        span = t1 - t0
    per_run = f", {runs} runs started in it" if runs else ""
    print(f"profile {part}: window {span:.0f} s{per_run}")
    print(f"  process CPU {((cb.user + cb.system) - (ca.user + ca.system)) / span * 100:.3f} % of a core "
          f"(user {(cb.user - ca.user) / span * 100:.3f}, system {(cb.system - ca.system) / span * 100:.3f})")
    for key in sorted(tb, key=lambda k: int(k.split()[0])):
        used = tb[key] - ta.get(key, 0.0)
        if used <= 0:
            continue
        # Python does not name its threads for the OS: the loop's is the process's own id.
        label = "main (the loop)" if key.split()[0] == str(p.pid) else f"{key} (a helper thread: history writer, ...)"
        print(f"  thread {label}: {used / span * 100:.3f} %" + (f", {used / runs * 1e6:.0f} us a run" if runs else ""))
    diff = {k: (v[0] - a.get(k, [0, 0])[0], v[1] - a.get(k, [0, 0])[1]) for k, v in b.items()}
    total = sum(ns for _, ns in diff.values())
    print(f"  loop callbacks and select, thread CPU: {total / 1e6:.1f} ms in all"
          + (f", {total / 1e3 / runs:.0f} us a run" if runs else ""))
    for name, (calls, ns) in sorted(diff.items(), key=lambda kv: -kv[1][1])[:15]:
        if calls <= 0:
            continue
        each = f"{ns / 1e3 / runs:7.1f} us a run" if runs else ""
        print(f"    {ns / 1e6:8.1f} ms {calls:7d} calls {ns / 1e3 / calls:8.1f} us a call {each}  {name}")
    return []
