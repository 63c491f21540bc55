"""Pure policies of the shell: restart backoff, a fire's jitter, retries, and when a failure alerts."""

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


RETRY_BACKOFF_MAX = 3600.0  # a retry never waits more than an hour
# Triggers whose runs are retried: the schedule's own. A manual run is watched by whoever started it;
# a hook is never retried.
RETRIED_TRIGGERS = ("schedule", "reboot", "retry")
# Statuses that count as a failure for the alert hooks; `killed` (on request, or at stop) does not.
FAILURES = ("failed", "timeout", "spawn_failed", "lost")


def retry_delay(backoff: float, attempt: int) -> float:
    """Seconds before attempt `attempt + 1`, after attempt `attempt` failed: backoff, doubling, capped."""
    return min(backoff * 2.0 ** max(0, attempt - 1), RETRY_BACKOFF_MAX)


def will_retry(task: Task, trigger: str, status: str, attempt: int) -> bool:
    """Whether a run of `task` that ended `status` on its attempt `attempt` gets another attempt."""
    return (task.type == "cron" and trigger in RETRIED_TRIGGERS and status in task.retry_on
            and attempt <= task.retries)


@dataclass
class FailureStreak:
    """A task's failures in a row (each counted once it failed for good), and whether it was alerted."""

    count: int = 0
    alerted: bool = False

    def failed(self, threshold: int) -> bool:
        """One more failure; True exactly when it reaches `threshold` without an alert yet (alert now)."""
        self.count += 1
        if self.count >= threshold and not self.alerted:
            self.alerted = True
            return True
        return False

    def succeeded(self) -> bool:
        """A success; True if an alert was raised for the streak it ends (report the recovery)."""
        recovered = self.alerted
        self.count, self.alerted = 0, False
        return recovered
