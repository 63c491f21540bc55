"""The plan: what a new config changes, keyed by task name. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from gotorch.config import Task


@dataclass(frozen=True)
class Plan:
    """Names of tasks added, removed, changed and unchanged between two configs."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]

    def summary(self) -> str:
        """`+a +b -c ~d`, the form `torch reload` prints; `no changes` when empty."""
        parts = [f"+{n}" for n in self.added] + [f"-{n}" for n in self.removed] + [f"~{n}" for n in self.changed]
        return " ".join(parts) if parts else "no changes"


def diff(old: Mapping[str, Task], new: Mapping[str, Task]) -> Plan:
    """Compare two task sets by name; a task is changed when any field but its line differs."""
    return Plan(
        added=tuple(sorted(n for n in new if n not in old)),
        removed=tuple(sorted(n for n in old if n not in new)),
        changed=tuple(sorted(n for n in new if n in old and new[n] != old[n])),
        unchanged=tuple(sorted(n for n in new if n in old and new[n] == old[n])),
    )


# Fields that say what torch does around a task's runs, not how a run starts or when: a reload that
# changes only these updates the task in place, without restarting its daemon copies or dropping
# fires waiting out their jitter.
BOOKKEEPING_FIELDS = ("history_keep", "retries", "retry_backoff", "retry_on", "on_failure", "on_recovery",
                      "failure_threshold", "warn_after", "hook_timeout")


def runs_unchanged(old: Task, new: Task) -> bool:
    """Whether `old` and `new` differ only in bookkeeping fields (e.g. how much history to keep)."""
    return dataclasses.replace(old, **{f: getattr(new, f) for f in BOOKKEEPING_FIELDS}) == new
