"""Generate large task files for the benchmarks (valid, varied, deterministic)."""

from __future__ import annotations

import random

SCHEDULES = ["{s} {m} * * * *", "{s} */5 * * * *", "0 {m} {h} * * MON-FRI", "{s} {m} {h} 1,15 * *",
             "*/30 * * * * *", "0 0 {h} L * *", "@every {e}s", "0 {m} {h} * * 5#2", "{s} {m} 8-18/2 * * *"]


def task_file(n: int, *, seed: int = 1, extra: str = "") -> str:
    """A version-1 task file with `n` cron tasks using a spread of schedule forms and fields."""
    rng = random.Random(seed)
    lines = ["version: 1", "defaults:", "  timezone: Europe/Berlin", "tasks:"]
    for i in range(n):
        sched = rng.choice(SCHEDULES).format(s=rng.randrange(60), m=rng.randrange(60), h=rng.randrange(24),
                                             e=rng.randrange(60, 7200))
        lines.append(f"  - name: task-{i:05d}")
        lines.append(f'    schedule: "{sched}"')
        lines.append(f"    command: [/bin/true, {i}]")
        if i % 3 == 0:
            lines.append(f"    ips: [10.{i % 256}.0.0/16, 192.0.2.{i % 250}]")
        if i % 4 == 0:
            lines.append("    timeout: 5m")
            lines.append("    env: {MODE: bench, LANG: C.UTF-8}")
        if i % 7 == 0:
            lines.append("    timezone: America/New_York")
    return "\n".join(lines) + "\n" + extra
