"""The plan: what a new config changes, keyed by task name. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from gotorch.config import Config, Task
from gotorch.hosts import IPAddress, match


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
    changed: list[str] = []
    unchanged: list[str] = []
    for n, task in new.items():
        if n in old:
            before = old[n]
            (unchanged if before is task or before == task else changed).append(n)
    return Plan(
        added=tuple(sorted(n for n in new if n not in old)),
        removed=tuple(sorted(n for n in old if n not in new)),
        changed=tuple(sorted(changed)),
        unchanged=tuple(sorted(unchanged)),
    )


# Fields that say what torch does around a task's runs, not how a run starts or when: a reload that
# changes only these updates the task in place, without restarting its daemon copies or dropping
# fires waiting out their jitter.
BOOKKEEPING_FIELDS = ("history_keep", "retries", "retry_backoff", "retry_on", "on_failure", "on_recovery",
                      "failure_threshold", "warn_after", "hook_timeout")


def runs_unchanged(old: Task, new: Task) -> bool:
    """Whether `old` and `new` differ only in bookkeeping fields (e.g. how much history to keep)."""
    return dataclasses.replace(old, **{f: getattr(new, f) for f in BOOKKEEPING_FIELDS}) == new


def applicable(config: Config, addresses: list[IPAddress]) -> tuple[dict[str, tuple[Task, str | None]], list[str]]:
    """Tasks of `config` that run on a host with `addresses` (enabled, allow-list matched), and the rest."""
    here: dict[str, tuple[Task, str | None]] = {}
    skipped: list[str] = []
    for t in config.tasks:
        m = match(t.ips, addresses)
        if t.enabled and m.applies:
            here[t.name] = (t, str(m.address) if m.address is not None else None)
        else:
            skipped.append(t.name)
    return here, skipped


def reload_plan(running: Mapping[str, tuple[Task, str | None]], here: Mapping[str, tuple[Task, str | None]]
                ) -> Plan:
    """What applying `here` (name -> (task, matched address)) over `running` changes, for `apply_plan`.

    Added, removed and changed as `diff` says; `unchanged` lists only the names whose entry must
    still be refreshed: an equal task that is a new object (its line moved) or a new matched address.
    Names whose task is the very same object with the same address need nothing at all.
    """
    old = {n: t for n, (t, _) in running.items()}
    new = {n: t for n, (t, _) in here.items()}
    p = diff(old, new)
    refresh = tuple(n for n in p.unchanged if running[n][0] is not here[n][0] or running[n][1] != here[n][1])
    return Plan(p.added, p.removed, p.changed, refresh)
