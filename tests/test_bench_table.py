"""The benchmark table's verdicts (bench/table.py): pure logic, judged on hand-made figures."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from table import Row


def test_a_ratio_target_is_judged_against_the_floors_median() -> None:
    assert Row("g", "p99", [2.1, 2.3], ("floor", 1.1), floor=[2.0, 2.2]).verdict() == "PASS"
    assert Row("g", "p99", [2.6, 2.8], ("floor", 1.1), floor=[2.0, 2.2]).verdict() == "FAIL"


def test_an_absolute_target_the_floor_also_misses_is_marked_so() -> None:
    assert Row("g", "cpu", [0.63], ("max", 0.25), floor=[0.30]).verdict() == "FAIL (floor too)"
    assert Row("g", "cpu", [0.63], ("max", 0.25), floor=[0.20]).verdict() == "FAIL"
    assert Row("g", "cpu", [0.24], ("max", 0.25), floor=[0.30]).verdict() == "PASS"
    assert Row("g", "rss", [60.0], ("below", 50.0)).verdict() == "FAIL"  # no floor measured


def test_a_figure_that_was_not_measured_fails() -> None:
    assert Row("g", "p99", [], ("max", 3.0)).verdict() == "FAIL"
    assert Row("g", "p99", [2.0], ("floor", 1.1)).verdict() == "FAIL"
