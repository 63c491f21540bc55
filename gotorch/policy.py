"""Pure policies of the shell: how long a daemon-task copy waits to restart, and a fire's jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

from gotorch.config import Task


@dataclass
class Backoff:
    """Restart delay for a daemon-type task's copy: 1 s doubling to 60 s, reset after 60 s of uptime."""

    initial: float = 1.0
    maximum: float = 60.0
    reset_after: float = 60.0
    current: float = 0.0

    def after_exit(self, uptime: float) -> float:
        """The delay before restarting a copy that ran for `uptime` seconds."""
        if uptime >= self.reset_after or self.current == 0.0:
            self.current = self.initial
        else:
            self.current = min(self.current * 2, self.maximum)
        return self.current


def jitter_delay(task: Task, rng: random.Random) -> float:
    """A random start delay in [0, task.jitter] seconds."""
    return rng.uniform(0.0, task.jitter) if task.jitter > 0 else 0.0
