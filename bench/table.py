"""Figures as the scenarios return them, and the one table `python3 dev.py bench all` prints of them.

A scenario prints its own detailed lines as it goes and returns a list of Row: one figure each, with
torch's values (one per repeat, or per pair, or a single value), the floor's and APScheduler's when
they ran the same thing, and the target. The summary prints every row under one header.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from math import isnan, nan

# A target: ("floor", x) torch's median <= x times the floor's median; ("max", x) torch's median <= x;
# ("below", x) torch's median < x; None: reported only.
Target = tuple[str, float] | None


@dataclass
class Row:
    """One figure of a scenario."""

    group: str  # what was run: "1 task/s", "history", ...
    label: str  # the figure, with its unit: "p99 lateness (ms)"
    torch: list[float]
    target: Target = None
    floor: list[float] = field(default_factory=list)
    aps: list[float] = field(default_factory=list)

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        kind, x = self.target
        return {"floor": f"<= {x:g}x floor", "max": f"<= {x:g}", "below": f"< {x:g}"}[kind]

    def verdict(self) -> str:
        """PASS, FAIL, or "-" with no target (or nothing measured to judge)."""
        if self.target is None:
            return "-"
        kind, x = self.target
        got = median(self.torch)
        limit = x * median(self.floor) if kind == "floor" else x
        if isnan(got) or isnan(limit):
            return "FAIL"  # not measured: a figure that is missing is not a pass
        if (got < limit if kind == "below" else got <= limit):
            return "PASS"
        # An absolute target that the floor, measured in the same run, misses as well is out of any
        # scheduler's reach on this machine: say so, so the FAIL is read for what it is.
        floor = median(self.floor)
        if kind != "floor" and not isnan(floor) and not (floor < x if kind == "below" else floor <= x):
            return "FAIL (floor too)"
        return "FAIL"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else nan


def cell(values: list[float]) -> str:
    """median [min..max], or the one value; "-" when there is none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} [{min(values):.2f}..{max(values):.2f}]"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not isnan(a) and not isnan(b) else "-"


def print_rows(rows: list[Row], *, title: str = "") -> None:
    """The rows as one table, grouped under their `group` in the order given."""
    widths = {"label": max([len(r.label) for r in rows] + [6]) + 2,
              "cell": max([len(cell(v)) for r in rows for v in (r.torch, r.floor, r.aps)] + [11]) + 2}
    wl, wc = widths["label"], widths["cell"]
    head = (f"  {'figure':<{wl}}{'torch':<{wc}}{'floor':<{wc}}{'APScheduler':<{wc}}"
            f"{'/floor':>8}{'/aps':>8}  {'target':<16}verdict")
    if title:
        print(title)
    print(head)
    print("  " + "-" * (len(head) - 2))
    group = None
    for r in rows:
        if r.group != group:
            group = r.group
            print(f" {group}")
        t = median(r.torch)
        print(f"  {r.label:<{wl}}{cell(r.torch):<{wc}}{cell(r.floor):<{wc}}{cell(r.aps):<{wc}}"
              f"{ratio(t, median(r.floor)):>8}{ratio(t, median(r.aps)):>8}  {r.target_text():<16}{r.verdict()}")
    judged = [r for r in rows if r.target is not None]
    failed = [r for r in judged if r.verdict().startswith("FAIL")]
    print(f"  {len(judged) - len(failed)} of {len(judged)} targets met" + (f", {len(failed)} FAIL" if failed else ""))
