"""The floor: the least a scheduler can do. Sleep to each second boundary and Popen every due task. Nothing else.

Usage: floor.py TASKFILE SECONDS

Reads a torch task file (the subset the benchmarks write: six-field, seconds-first schedules of
numbers, lists, ranges, steps and `*`, read in UTC; `command` a list; `env`), precomputes which tasks
are due in each of the next SECONDS seconds, then from the next boundary on sleeps to each boundary
and starts every due task's command (stdin /dev/null, stdout and stderr PIPE'd, a session of its
own) with TORCH_SCHEDULED_AT set to the boundary, as torch does. Finished children are reaped after
each boundary's starts, the rest at exit. It exits after SECONDS seconds or on SIGTERM.

SIGUSR2 re-reads the task file (yaml CSafeLoader) in a thread and swaps in a plan recomputed from
the next boundary on. The loop itself does not stop for it, but it waits for the GIL: libyaml's
parser holds it while it reads the file, so the loop's boundaries meanwhile are late.

stdout gets one JSON line per event, like torch's log: `ready` once the plan is made, and
`reload.applied` (with the task names added and the re-read time in ms) after each reload.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Lowest and highest value of each schedule field: second, minute, hour, day, month, day of week.
BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
Fields = tuple[frozenset[int] | None, ...]  # None: `*`, any value


@dataclass(frozen=True)
class Task:
    """What the benchmarks' contenders need of a task."""

    name: str
    schedule: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def load_tasks(path: str | Path) -> list[Task]:
    """The tasks of a torch task file, read with libyaml."""
    with open(path, "rb") as f:
        doc = yaml.load(f, Loader=yaml.CSafeLoader)
    out = []
    for t in doc.get("tasks") or []:
        cmd = t["command"]
        command = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(x) for x in cmd]
        out.append(Task(str(t["name"]), str(t["schedule"]), command,
                        {str(k): str(v) for k, v in (t.get("env") or {}).items()}))
    return out


def log_event(event: str, **fields: Any) -> None:
    """One JSON line on stdout: the event name and the wall-clock time, as torch logs it."""
    print(json.dumps({"event": event, "ts": time.time(), **fields}), flush=True)


def _field(text: str, lo: int, hi: int) -> frozenset[int] | None:
    if text == "*":
        return None
    out: set[int] = set()
    for part in text.split(","):
        span, _, step = part.partition("/")
        if span == "*":
            a, b = lo, hi
        elif "-" in span:
            a, b = (int(x) for x in span.split("-"))
        else:
            a = int(span)
            b = hi if step else a
        out.update(range(a, b + 1, int(step or 1)))
    return frozenset(out)


def parse(schedule: str) -> Fields:
    """The six fields of a schedule as sets of values (day of week: 0 and 7 are Sunday)."""
    parts = schedule.split()
    if len(parts) != 6:
        raise ValueError(f"the floor reads six-field schedules only: {schedule!r}")
    f = [_field(p, lo, hi) for p, (lo, hi) in zip(parts, BOUNDS, strict=True)]
    if f[5] is not None:
        f[5] = frozenset(d % 7 for d in f[5])
    return tuple(f)


def plan(tasks: list[Task], start: int, end: int) -> dict[int, list[Task]]:
    """The tasks due in each second of [start, end) (epoch seconds, UTC); seconds with none are left out."""
    # Index by second-of-minute, so each second only looks at the schedules that can fire in it.
    by_second: dict[int, dict[Fields, list[Task]]] = {}
    for t in tasks:
        f = parse(t.schedule)
        for s in f[0] if f[0] is not None else range(60):
            by_second.setdefault(s, {}).setdefault(f[1:], []).append(t)
    out: dict[int, list[Task]] = {}
    for ts in range(start, end):
        candidates = by_second.get(ts % 60)
        if not candidates:
            continue
        tm = time.gmtime(ts)
        now = (tm.tm_min, tm.tm_hour, tm.tm_mday, tm.tm_mon, (tm.tm_wday + 1) % 7)  # cron: Sunday is 0
        due = [task for rest, group in candidates.items()
               if all(f is None or v in f for f, v in zip(rest, now, strict=True)) for task in group]
        if due:
            out[ts] = due
    return out


class Floor:
    """The plan and its reload; the loop is `run`."""

    def __init__(self, path: str, start: int, end: int) -> None:
        self.path, self.end = path, end
        self.next = start  # the next boundary the loop will look up in the plan
        tasks = load_tasks(path)
        self.names = {t.name for t in tasks}
        self.plan = plan(tasks, start, end)

    def reload(self) -> None:
        """Re-read the task file and swap in a new plan (in a thread).

        The new plan starts at the first boundary the loop has not yet looked up, not at the wall
        clock's next second: a loop kept waiting (for the GIL) past a boundary still fires it.
        """
        t0 = time.perf_counter()
        tasks = load_tasks(self.path)
        self.plan = plan(tasks, self.next, self.end)
        added = sorted({t.name for t in tasks} - self.names)
        self.names = {t.name for t in tasks}
        log_event("reload.applied", added=added, parse_ms=(time.perf_counter() - t0) * 1000)

    def run(self, start: int) -> None:
        path_env = os.environ.get("PATH", "/usr/bin:/bin")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for boundary in range(start, self.end):
                self.next = boundary
                delay = boundary - time.time()
                if delay > 0:
                    time.sleep(delay)
                due = self.plan.get(boundary)
                if due:
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(boundary))
                    for t in due:
                        env = {"PATH": path_env, **t.env, "TORCH_SCHEDULED_AT": stamp}
                        procs.append(subprocess.Popen(t.command, env=env, stdin=subprocess.DEVNULL,
                                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                      start_new_session=True))
                procs = [p for p in procs if p.poll() is None]
        finally:
            for p in procs:
                p.wait()


def main() -> None:
    path, seconds = sys.argv[1], int(sys.argv[2])
    now = int(time.time())
    floor = Floor(path, now, now + 1 + seconds)
    signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=floor.reload, daemon=True).start())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log_event("ready", tasks=len(floor.names))
    floor.run(int(time.time()) + 1)  # the plan took a while: its first boundaries may be gone


if __name__ == "__main__":
    main()
