"""The DST policy, pinned with fixed instants (ISO strings with offsets) for 2027 transitions.

Transitions used (checked against zoneinfo in test_transition_dates):
  Europe/Berlin        2027-03-28 02:00 +01:00 -> 03:00 +02:00   2027-10-31 03:00 +02:00 -> 02:00 +01:00
  America/New_York     2027-03-14 02:00 -05:00 -> 03:00 -04:00   2027-11-07 02:00 -04:00 -> 01:00 -05:00
  Australia/Lord_Howe  2027-10-03 02:00 +10:30 -> 02:30 +11:00   2027-04-04 02:00 +11:00 -> 01:30 +10:30

Policy: a fixed time in the spring gap runs once at the transition (dst="gap"); a fixed time in the
repeated hour runs once, at its first occurrence; hour-'*'/step schedules skip gap times and fire on
both passes of the repeated hour (second pass dst="repeat").

The second half holds the policy to transitions that are not an hour: whole calendar days skipped
(Pacific/Apia 2011-12-30, Pacific/Kwajalein 1993-08-21) and repeated (Pacific/Apia 1892-07-04,
America/Sitka 1867), every change of more than three hours in the installed tzdata against a brute
force, and the bound the search assumes against the installed tzdata itself.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import pytest

from gotorch import tz_offsets
from gotorch.dst_report import dst_warnings
from gotorch.fire_times import fires, next_fire, next_fire_ts
from gotorch.schedule import parse_schedule

# The pure-Python zoneinfo, which (unlike the C one) exposes a zone's transition list.
pure_zoneinfo: Any = importlib.import_module("zoneinfo._zoneinfo")

Row = tuple[str, str, str, list[tuple[str, str | None]]]


def run(zone: str, expr: str, after: str, n: int) -> list[tuple[str, str | None]]:
    tz = ZoneInfo(zone)
    got = fires(parse_schedule(expr), tz, datetime.fromisoformat(after), n)
    for f in got:
        assert f.at.tzinfo is tz
    return [(f.at.isoformat(), f.dst) for f in got]


def test_transition_dates() -> None:
    def offset(zone: str, iso_utc: str) -> timedelta | None:
        return datetime.fromisoformat(iso_utc).astimezone(ZoneInfo(zone)).utcoffset()

    h = timedelta(hours=1)
    assert offset("Europe/Berlin", "2027-03-28T00:59:59+00:00") == h
    assert offset("Europe/Berlin", "2027-03-28T01:00:00+00:00") == 2 * h
    assert offset("Europe/Berlin", "2027-10-31T00:59:59+00:00") == 2 * h
    assert offset("Europe/Berlin", "2027-10-31T01:00:00+00:00") == h
    assert offset("America/New_York", "2027-03-14T06:59:59+00:00") == -5 * h
    assert offset("America/New_York", "2027-03-14T07:00:00+00:00") == -4 * h
    assert offset("America/New_York", "2027-11-07T05:59:59+00:00") == -4 * h
    assert offset("America/New_York", "2027-11-07T06:00:00+00:00") == -5 * h
    # Lord Howe: first Sunday of October (15:30Z the day before) and of April (15:00Z the day before).
    assert offset("Australia/Lord_Howe", "2027-10-02T15:29:59+00:00") == 10.5 * h
    assert offset("Australia/Lord_Howe", "2027-10-02T15:30:00+00:00") == 11 * h
    assert offset("Australia/Lord_Howe", "2027-04-03T14:59:59+00:00") == 11 * h
    assert offset("Australia/Lord_Howe", "2027-04-03T15:00:00+00:00") == 10.5 * h


SPRING: list[Row] = [
    # --- Europe/Berlin, 2027-03-28: 02:00-03:00 does not exist
    (
        "Europe/Berlin",
        "0 30 2 * * *",
        "2027-03-27T12:00:00+01:00",
        [("2027-03-28T03:00:00+02:00", "gap"), ("2027-03-29T02:30:00+02:00", None)],
    ),
    (
        "Europe/Berlin",
        "0 0 3 * * *",
        "2027-03-27T12:00:00+01:00",
        [("2027-03-28T03:00:00+02:00", None), ("2027-03-29T03:00:00+02:00", None)],
    ),
    # several nonexistent times and a real 03:00 collapse into one run
    (
        "Europe/Berlin",
        "0 */10 2,3 * * *",
        "2027-03-28T01:00:00+01:00",
        [
            ("2027-03-28T03:00:00+02:00", "gap"),
            ("2027-03-28T03:10:00+02:00", None),
            ("2027-03-28T03:20:00+02:00", None),
        ],
    ),
    # fixed hour, every second of it: the whole hour collapses into one run at 03:00
    (
        "Europe/Berlin",
        "* * 2 * * *",
        "2027-03-28T01:59:59+01:00",
        [("2027-03-28T03:00:00+02:00", "gap"), ("2027-03-29T02:00:00+02:00", None)],
    ),
    # hour '*': nonexistent times are skipped, spacing stays real
    (
        "Europe/Berlin",
        "0 30 * * * *",
        "2027-03-28T00:45:00+01:00",
        [
            ("2027-03-28T01:30:00+01:00", None),
            ("2027-03-28T03:30:00+02:00", None),
            ("2027-03-28T04:30:00+02:00", None),
        ],
    ),
    (
        "Europe/Berlin",
        "0 */20 * * * *",
        "2027-03-28T01:30:00+01:00",
        [
            ("2027-03-28T01:40:00+01:00", None),
            ("2027-03-28T03:00:00+02:00", None),
            ("2027-03-28T03:20:00+02:00", None),
        ],
    ),
    (
        "Europe/Berlin",
        "* * * * * *",
        "2027-03-28T01:59:58+01:00",
        [
            ("2027-03-28T01:59:59+01:00", None),
            ("2027-03-28T03:00:00+02:00", None),
            ("2027-03-28T03:00:01+02:00", None),
        ],
    ),
    # hour step: treated like '*'
    (
        "Europe/Berlin",
        "0 0 1-3/1 * * *",
        "2027-03-28T00:30:00+01:00",
        [
            ("2027-03-28T01:00:00+01:00", None),
            ("2027-03-28T03:00:00+02:00", None),
            ("2027-03-29T01:00:00+02:00", None),
        ],
    ),
    (
        "Europe/Berlin",
        "@hourly",
        "2027-03-28T00:30:00+01:00",
        [
            ("2027-03-28T01:00:00+01:00", None),
            ("2027-03-28T03:00:00+02:00", None),
            ("2027-03-28T04:00:00+02:00", None),
        ],
    ),
    # all 24 hours listed as a range is still "every hour"
    (
        "Europe/Berlin",
        "0 0 0-23 * * *",
        "2027-03-28T01:30:00+01:00",
        [("2027-03-28T03:00:00+02:00", None), ("2027-03-28T04:00:00+02:00", None)],
    ),
    # @every is interval arithmetic on real seconds
    (
        "Europe/Berlin",
        "@every 1h",
        "2027-03-28T00:30:00+01:00",
        [
            ("2027-03-28T01:00:00+01:00", None),
            ("2027-03-28T03:00:00+02:00", None),
            ("2027-03-28T04:00:00+02:00", None),
        ],
    ),
    # starting right at the gap instant: the gap is not revisited
    (
        "Europe/Berlin",
        "0 30 2 * * *",
        "2027-03-28T03:00:00+02:00",
        [("2027-03-29T02:30:00+02:00", None)],
    ),
    # --- America/New_York, 2027-03-14: 02:00-03:00 does not exist
    (
        "America/New_York",
        "0 30 2 * * *",
        "2027-03-13T12:00:00-05:00",
        [("2027-03-14T03:00:00-04:00", "gap"), ("2027-03-15T02:30:00-04:00", None)],
    ),
    (
        "America/New_York",
        "0 15 * * * *",
        "2027-03-14T01:00:00-05:00",
        [("2027-03-14T01:15:00-05:00", None), ("2027-03-14T03:15:00-04:00", None)],
    ),
    # weekly fixed time landing in the gap (2027-03-14 is a Sunday)
    (
        "America/New_York",
        "0 0 2 * * SUN",
        "2027-03-10T00:00:00-05:00",
        [("2027-03-14T03:00:00-04:00", "gap"), ("2027-03-21T02:00:00-04:00", None)],
    ),
    # --- Australia/Lord_Howe, 2027-10-03: 02:00-02:30 does not exist (a 30-minute shift)
    (
        "Australia/Lord_Howe",
        "0 15 2 * * *",
        "2027-10-02T12:00:00+10:30",
        [("2027-10-03T02:30:00+11:00", "gap"), ("2027-10-04T02:15:00+11:00", None)],
    ),
    (
        "Australia/Lord_Howe",
        "0 0 2 * * *",
        "2027-10-02T12:00:00+10:30",
        [("2027-10-03T02:30:00+11:00", "gap"), ("2027-10-04T02:00:00+11:00", None)],
    ),
    # 02:45 exists (after the gap): a normal fire
    (
        "Australia/Lord_Howe",
        "0 45 2 * * *",
        "2027-10-02T12:00:00+10:30",
        [("2027-10-03T02:45:00+11:00", None)],
    ),
    (
        "Australia/Lord_Howe",
        "0 0,30 * * * *",
        "2027-10-03T01:15:00+10:30",
        [
            ("2027-10-03T01:30:00+10:30", None),
            ("2027-10-03T02:30:00+11:00", None),
            ("2027-10-03T03:00:00+11:00", None),
        ],
    ),
    (
        "Australia/Lord_Howe",
        "0 15 * * * *",
        "2027-10-03T00:30:00+10:30",
        [
            ("2027-10-03T01:15:00+10:30", None),
            ("2027-10-03T03:15:00+11:00", None),
        ],
    ),
]

FALL: list[Row] = [
    # --- Europe/Berlin, 2027-10-31: 02:00-03:00 happens twice
    (
        "Europe/Berlin",
        "0 30 2 * * *",
        "2027-10-30T12:00:00+02:00",
        [("2027-10-31T02:30:00+02:00", None), ("2027-11-01T02:30:00+01:00", None)],
    ),
    (
        "Europe/Berlin",
        "0 0 2 * * *",
        "2027-10-30T12:00:00+02:00",
        [("2027-10-31T02:00:00+02:00", None), ("2027-11-01T02:00:00+01:00", None)],
    ),
    # fixed hour with a minute step: first pass only
    (
        "Europe/Berlin",
        "0 */30 2 * * *",
        "2027-10-31T01:00:00+02:00",
        [
            ("2027-10-31T02:00:00+02:00", None),
            ("2027-10-31T02:30:00+02:00", None),
            ("2027-11-01T02:00:00+01:00", None),
        ],
    ),
    # asked from inside the second pass, a fixed time does not run again
    (
        "Europe/Berlin",
        "0 45 2 * * *",
        "2027-10-31T02:10:00+01:00",
        [("2027-11-01T02:45:00+01:00", None)],
    ),
    # hour '*': both passes, the second marked "repeat", in real order
    (
        "Europe/Berlin",
        "0 30 * * * *",
        "2027-10-31T01:00:00+02:00",
        [
            ("2027-10-31T01:30:00+02:00", None),
            ("2027-10-31T02:30:00+02:00", None),
            ("2027-10-31T02:30:00+01:00", "repeat"),
            ("2027-10-31T03:30:00+01:00", None),
        ],
    ),
    (
        "Europe/Berlin",
        "@hourly",
        "2027-10-31T01:30:00+02:00",
        [
            ("2027-10-31T02:00:00+02:00", None),
            ("2027-10-31T02:00:00+01:00", "repeat"),
            ("2027-10-31T03:00:00+01:00", None),
        ],
    ),
    (
        "Europe/Berlin",
        "0 */20 * * * *",
        "2027-10-31T02:30:00+02:00",
        [
            ("2027-10-31T02:40:00+02:00", None),
            ("2027-10-31T02:00:00+01:00", "repeat"),
            ("2027-10-31T02:20:00+01:00", "repeat"),
            ("2027-10-31T02:40:00+01:00", "repeat"),
            ("2027-10-31T03:00:00+01:00", None),
        ],
    ),
    # asked from inside the second pass
    (
        "Europe/Berlin",
        "0 30 * * * *",
        "2027-10-31T02:00:00+01:00",
        [("2027-10-31T02:30:00+01:00", "repeat"), ("2027-10-31T03:30:00+01:00", None)],
    ),
    # asked from the first pass, after its fire: the second pass is next
    (
        "Europe/Berlin",
        "0 30 * * * *",
        "2027-10-31T02:45:00+02:00",
        [("2027-10-31T02:30:00+01:00", "repeat"), ("2027-10-31T03:30:00+01:00", None)],
    ),
    (
        "Europe/Berlin",
        "@every 30m",
        "2027-10-31T02:15:00+02:00",
        [
            ("2027-10-31T02:30:00+02:00", None),
            ("2027-10-31T02:00:00+01:00", None),
            ("2027-10-31T02:30:00+01:00", None),
        ],
    ),
    # --- America/New_York, 2027-11-07: 01:00-02:00 happens twice
    (
        "America/New_York",
        "0 30 1 * * *",
        "2027-11-06T12:00:00-04:00",
        [("2027-11-07T01:30:00-04:00", None), ("2027-11-08T01:30:00-05:00", None)],
    ),
    (
        "America/New_York",
        "0 30 * * * *",
        "2027-11-07T00:45:00-04:00",
        [
            ("2027-11-07T01:30:00-04:00", None),
            ("2027-11-07T01:30:00-05:00", "repeat"),
            ("2027-11-07T02:30:00-05:00", None),
        ],
    ),
    # --- Australia/Lord_Howe, 2027-04-04: 01:30-02:00 happens twice (a 30-minute shift)
    (
        "Australia/Lord_Howe",
        "0 45 1 * * *",
        "2027-04-03T12:00:00+11:00",
        [("2027-04-04T01:45:00+11:00", None), ("2027-04-05T01:45:00+10:30", None)],
    ),
    (
        "Australia/Lord_Howe",
        "0 45 * * * *",
        "2027-04-04T00:50:00+11:00",
        [
            ("2027-04-04T01:45:00+11:00", None),
            ("2027-04-04T01:45:00+10:30", "repeat"),
            ("2027-04-04T02:45:00+10:30", None),
        ],
    ),
    (
        "Australia/Lord_Howe",
        "0 */20 * * * *",
        "2027-04-04T01:10:00+11:00",
        [
            ("2027-04-04T01:20:00+11:00", None),
            ("2027-04-04T01:40:00+11:00", None),
            ("2027-04-04T01:40:00+10:30", "repeat"),
            ("2027-04-04T02:00:00+10:30", None),
        ],
    ),
    # 01:15 is before the repeated half hour: it happens once
    (
        "Australia/Lord_Howe",
        "0 15 * * * *",
        "2027-04-04T00:50:00+11:00",
        [("2027-04-04T01:15:00+11:00", None), ("2027-04-04T02:15:00+10:30", None)],
    ),
]

UTC_ROWS: list[Row] = [
    # No transitions: the Berlin dates are ordinary days.
    ("UTC", "0 30 2 * * *", "2027-03-27T12:00:00+00:00", [("2027-03-28T02:30:00+00:00", None)]),
    ("UTC", "0 30 2 * * *", "2027-10-30T12:00:00+00:00", [("2027-10-31T02:30:00+00:00", None)]),
    (
        "UTC",
        "0 30 * * * *",
        "2027-10-31T01:00:00+00:00",
        [("2027-10-31T01:30:00+00:00", None), ("2027-10-31T02:30:00+00:00", None)],
    ),
]


@pytest.mark.parametrize(("zone", "expr", "after", "expected"), SPRING + FALL + UTC_ROWS)
def test_dst_policy(zone: str, expr: str, after: str, expected: list[tuple[str, str | None]]) -> None:
    assert run(zone, expr, after, len(expected)) == expected


@pytest.mark.parametrize(("zone", "expr", "after", "expected"), SPRING + FALL)
def test_fast_path_agrees(zone: str, expr: str, after: str, expected: list[tuple[str, str | None]]) -> None:
    tz = ZoneInfo(zone)
    s = parse_schedule(expr)
    ts = int(datetime.fromisoformat(after).timestamp())
    for iso, _dst in expected:
        nts = next_fire_ts(s, tz, ts)
        assert nts == int(datetime.fromisoformat(iso).timestamp())
        ts = nts


def test_every_second_across_both_berlin_transitions_is_real_time() -> None:
    # Every real second between 01:00 UTC and 01:00:05 UTC fires, whatever the wall clock does.
    tz = ZoneInfo("Europe/Berlin")
    s = parse_schedule("* * * * * *")
    for start in ("2027-03-28T00:59:57+00:00", "2027-10-31T00:59:57+00:00"):
        got = fires(s, tz, datetime.fromisoformat(start), 6)
        stamps = [int(f.at.timestamp()) for f in got]
        first = int(datetime.fromisoformat(start).timestamp())
        assert stamps == list(range(first + 1, first + 7))


def test_every_minute_through_the_repeated_hour() -> None:
    # 120 real minutes pass between 02:00 CEST and 03:00 CET; all of them fire.
    tz = ZoneInfo("Europe/Berlin")
    got = fires(parse_schedule("0 * * * * *"), tz, datetime.fromisoformat("2027-10-31T01:59:00+02:00"), 121)
    assert got[0].at.isoformat() == "2027-10-31T02:00:00+02:00"
    assert got[-1].at.isoformat() == "2027-10-31T03:00:00+01:00"
    # Compare instants: subtracting datetimes that share a tzinfo would use wall-clock arithmetic.
    stamps = [f.at.timestamp() for f in got]
    assert all(b - a == 60 for a, b in pairwise(stamps))
    assert [f.dst for f in got].count("repeat") == 60


def test_next_fire_from_utc_instant() -> None:
    # The `after` zone does not matter, only the instant.
    f = next_fire(parse_schedule("0 30 2 * * *"), ZoneInfo("Europe/Berlin"), datetime(2027, 3, 28, 0, 0, tzinfo=UTC))
    assert f is not None and (f.at.isoformat(), f.dst) == ("2027-03-28T03:00:00+02:00", "gap")


# --------------------------------------------------------------------------------------------------
# dst_warnings


def warnings(zone: str, expr: str, start: str, months: int = 12) -> list[str]:
    return dst_warnings(parse_schedule(expr), ZoneInfo(zone), datetime.fromisoformat(start), months)


def test_warnings_berlin() -> None:
    assert warnings("Europe/Berlin", "0 30 2 * * *", "2027-01-01T00:00:00+01:00") == [
        "02:30 Europe/Berlin does not exist on 2027-03-28; torch runs it at 03:00",
        "02:30 Europe/Berlin happens twice on 2027-10-31; torch runs it once, at the first (02:30+02:00)",
    ]


def test_warnings_new_york() -> None:
    assert warnings("America/New_York", "0 30 2 * * *", "2027-01-01T00:00:00-05:00") == [
        "02:30 America/New_York does not exist on 2027-03-14; torch runs it at 03:00",
    ]
    assert warnings("America/New_York", "0 30 1 * * *", "2027-01-01T00:00:00-05:00") == [
        "01:30 America/New_York happens twice on 2027-11-07; torch runs it once, at the first (01:30-04:00)",
    ]


def test_warnings_lord_howe() -> None:
    assert warnings("Australia/Lord_Howe", "0 15 2 * * *", "2027-01-01T00:00:00+11:00") == [
        "02:15 Australia/Lord_Howe does not exist on 2027-10-03; torch runs it at 02:30",
    ]
    assert warnings("Australia/Lord_Howe", "0 45 1 * * *", "2027-01-01T00:00:00+11:00") == [
        "01:45 Australia/Lord_Howe happens twice on 2027-04-04; torch runs it once, at the first (01:45+11:00)",
    ]


def test_warnings_several_times() -> None:
    assert warnings("Europe/Berlin", "0 */10 2 * * *", "2027-01-01T00:00:00+01:00") == [
        "02:00, 02:10, 02:20, 02:30, 02:40 and 02:50 Europe/Berlin do not exist on 2027-03-28; "
        "torch runs them once, at 03:00",
        "02:00, 02:10, 02:20, 02:30, 02:40 and 02:50 Europe/Berlin happen twice on 2027-10-31; "
        "torch runs each once, at the first (+02:00)",
    ]
    assert warnings("Europe/Berlin", "* * 2 * * *", "2027-03-01T00:00:00+01:00", 1) == [
        "02:00 to 02:59:59 (3600 times) Europe/Berlin do not exist on 2027-03-28; torch runs them once, at 03:00",
    ]


def test_warnings_window() -> None:
    # Starting after the spring transition leaves only the autumn one; 3 months reach neither.
    assert warnings("Europe/Berlin", "0 30 2 * * *", "2027-04-01T00:00:00+02:00") == [
        "02:30 Europe/Berlin happens twice on 2027-10-31; torch runs it once, at the first (02:30+02:00)",
        "02:30 Europe/Berlin does not exist on 2028-03-26; torch runs it at 03:00",
    ]
    assert warnings("Europe/Berlin", "0 30 2 * * *", "2027-04-01T00:00:00+02:00", 3) == []
    # The window is [start, start + months): a start at the gap run counts.
    assert warnings("Europe/Berlin", "0 30 2 * * *", "2027-03-28T03:00:00+02:00", 1) == [
        "02:30 Europe/Berlin does not exist on 2027-03-28; torch runs it at 03:00",
    ]


def test_warnings_only_for_affected_fixed_times() -> None:
    # Only on days that have a transition: a weekday-only 02:30 misses both 2027 Sundays.
    assert warnings("Europe/Berlin", "0 30 2 * * MON-FRI", "2027-01-01T00:00:00+01:00") == []
    # Times outside the gap and the overlap.
    assert warnings("Europe/Berlin", "0 30 4 * * *", "2027-01-01T00:00:00+01:00") == []


@pytest.mark.parametrize("expr", ["0 30 * * * *", "0 0 */2 * * *", "@hourly", "@every 1h", "@reboot"])
def test_no_warnings_for_interval_schedules(expr: str) -> None:
    assert warnings("Europe/Berlin", expr, "2027-01-01T00:00:00+01:00") == []


def test_no_warnings_in_utc() -> None:
    assert dst_warnings(parse_schedule("0 30 2 * * *"), UTC, datetime(2027, 1, 1, tzinfo=UTC)) == []
    assert warnings("UTC", "0 30 2 * * *", "2027-01-01T00:00:00+00:00") == []


def test_warnings_reject_naive_start() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        dst_warnings(parse_schedule("0 30 2 * * *"), ZoneInfo("Europe/Berlin"), datetime(2027, 1, 1))


# --------------------------------------------------------------------------------------------------
# Brute force: walk real instants one step at a time and apply the policy's definition directly.

ORACLE_CASES = [
    # (expr, seconds, minutes, hours) with every day matching, so membership is easy to state.
    ("0 30 2 * * *", {0}, {30}, {2}),
    ("0 0,15,30,45 1,2 * * *", {0}, {0, 15, 30, 45}, {1, 2}),
    ("0 */10 1-3 * * *", {0}, set(range(0, 60, 10)), {1, 2, 3}),
    ("0 5 * * * *", {0}, {5}, set(range(24))),
    ("0 */7 * * * *", {0}, set(range(0, 60, 7)), set(range(24))),
    ("0 20 */2 * * *", {0}, {20}, set(range(0, 24, 2))),
    ("0 0 0-23 * * *", {0}, {0}, set(range(24))),
    ("0 45 1 * * *", {0}, {45}, {1}),
]
ORACLE_WINDOWS = [
    ("Europe/Berlin", "2027-03-27T22:00:00+00:00"),
    ("Europe/Berlin", "2027-10-30T22:00:00+00:00"),
    ("America/New_York", "2027-03-14T03:00:00+00:00"),
    ("America/New_York", "2027-11-07T02:00:00+00:00"),
    ("Australia/Lord_Howe", "2027-10-02T12:00:00+00:00"),
    ("Australia/Lord_Howe", "2027-04-03T12:00:00+00:00"),
]


def oracle(
    zone: str, start: int, end: int, secs: set[int], mins: set[int], hours: set[int], fixed: bool
) -> list[tuple[int, str | None]]:
    """Fires in (start, end] by definition. Offsets are whole minutes here, so minute steps suffice."""
    tz = ZoneInfo(zone)

    def matches(wall: datetime) -> bool:
        return wall.second in secs and wall.minute in mins and wall.hour in hours

    out: list[tuple[int, str | None]] = []
    for x in range(start - start % 60 + 60, end + 1, 60):
        here = datetime.fromtimestamp(x, tz)
        before = datetime.fromtimestamp(x - 60, tz).utcoffset()
        now = here.utcoffset()
        assert before is not None and now is not None
        if fixed and now > before:
            # x is a spring-forward instant: does any wall minute of the gap match?
            gap_minutes = (now - before) // timedelta(minutes=1)
            gap = [here.replace(tzinfo=None) - now + before + timedelta(minutes=k) for k in range(gap_minutes)]
            if any(matches(w) for w in gap if w < here.replace(tzinfo=None)):
                out.append((x, "gap"))
                continue
        if matches(here):
            if here.fold == 0:
                out.append((x, None))
            elif not fixed:
                out.append((x, "repeat"))
    return out


@pytest.mark.parametrize(("zone", "start_iso"), ORACLE_WINDOWS)
@pytest.mark.parametrize(("expr", "secs", "mins", "hours"), ORACLE_CASES)
def test_against_brute_force(
    zone: str, start_iso: str, expr: str, secs: set[int], mins: set[int], hours: set[int]
) -> None:
    s = parse_schedule(expr)
    start = int(datetime.fromisoformat(start_iso).timestamp())
    end = start + 8 * 3600
    expected = oracle(zone, start, end, secs, mins, hours, s.fixed_hour)
    got: list[tuple[int, str | None]] = []
    for f in fires(s, ZoneInfo(zone), datetime.fromtimestamp(start, UTC), len(expected) + 1):
        if f.at.timestamp() <= end:
            got.append((int(f.at.timestamp()), f.dst))
    assert got == expected


# --------------------------------------------------------------------------------------------------
# Transitions of a whole day. Pacific/Apia went from 2011-12-29 24:00 -10:00 straight to 2011-12-31
# 00:00 +14:00, Pacific/Kwajalein from 1993-08-20 24:00 -12:00 to 1993-08-22 00:00 +12:00: a
# calendar day that never happened. Pacific/Apia lived 1892-07-04 twice (+12:33:04, then -11:26:56);
# America/Sitka lived 1867-10-18 15:30 to 1867-10-19 15:30 twice (+14:58:47, then -09:01:13).

WHOLE_DAYS: list[Row] = [
    (
        "Pacific/Apia",
        "0 0 9 * * *",
        "2011-12-29T00:00:00-10:00",
        [
            ("2011-12-29T09:00:00-10:00", None),
            ("2011-12-31T00:00:00+14:00", "gap"),
            ("2011-12-31T09:00:00+14:00", None),
        ],
    ),
    (
        "Pacific/Kwajalein",
        "0 0 9 * * *",
        "1993-08-20T00:00:00-12:00",
        [
            ("1993-08-20T09:00:00-12:00", None),
            ("1993-08-22T00:00:00+12:00", "gap"),
            ("1993-08-22T09:00:00+12:00", None),
        ],
    ),
    # The skipped midnight and the real one right after the gap are the same instant: one run.
    (
        "Pacific/Apia",
        "0 0 0 * * *",
        "2011-12-29T12:00:00-10:00",
        [("2011-12-31T00:00:00+14:00", "gap"), ("2012-01-01T00:00:00+14:00", None)],
    ),
    # 2011-12-30 was a Friday: a weekly Friday task runs once after the gap rather than skip a week.
    (
        "Pacific/Apia",
        "0 0 9 * * FRI",
        "2011-12-24T00:00:00-10:00",
        [("2011-12-31T00:00:00+14:00", "gap"), ("2012-01-06T09:00:00+14:00", None)],
    ),
    # Asked from after the gap, the gap is not run again.
    (
        "Pacific/Apia",
        "0 0 9 * * *",
        "2011-12-31T05:00:00+14:00",
        [("2011-12-31T09:00:00+14:00", None)],
    ),
    # Hour '*': real spacing, the skipped day's times are simply not there.
    (
        "Pacific/Apia",
        "0 0 * * * *",
        "2011-12-29T22:30:00-10:00",
        [
            ("2011-12-29T23:00:00-10:00", None),
            ("2011-12-31T00:00:00+14:00", None),
            ("2011-12-31T01:00:00+14:00", None),
        ],
    ),
    # Later fires are not lost either: looking ahead across a day-sized change must not skip them.
    (
        "Pacific/Apia",
        "0 0 0 1 * *",
        "2011-12-01T00:00:00-10:00",
        [("2012-01-01T00:00:00+14:00", None), ("2012-02-01T00:00:00+14:00", None)],
    ),
    ("Pacific/Apia", "0 0 0 L * *", "2011-12-01T00:00:00-10:00", [("2011-12-31T00:00:00+14:00", None)]),
    ("Pacific/Apia", "0 0 12 29 2 *", "2010-09-26T00:00:00-11:00", [("2012-02-29T12:00:00+14:00", None)]),
    # A repeated day: a fixed time runs once, on the first pass...
    (
        "Pacific/Apia",
        "0 0 9 * * *",
        "1892-07-03T12:00:00+12:33:04",
        [("1892-07-04T09:00:00+12:33:04", None), ("1892-07-05T09:00:00-11:26:56", None)],
    ),
    # ...also when asked from inside the second pass...
    (
        "Pacific/Apia",
        "0 0 9 * * *",
        "1892-07-04T08:00:00-11:26:56",
        [("1892-07-05T09:00:00-11:26:56", None)],
    ),
    # ...and an hour step fires on both passes.
    (
        "Pacific/Apia",
        "0 0 */6 * * *",
        "1892-07-04T12:00:00+12:33:04",
        [
            ("1892-07-04T18:00:00+12:33:04", None),
            ("1892-07-04T00:00:00-11:26:56", "repeat"),
            ("1892-07-04T06:00:00-11:26:56", "repeat"),
            ("1892-07-04T12:00:00-11:26:56", "repeat"),
            ("1892-07-04T18:00:00-11:26:56", "repeat"),
            ("1892-07-05T00:00:00-11:26:56", None),
        ],
    ),
    # A repeat that crosses midnight: 16:00 of the 18th and 09:00 of the 19th each run once.
    (
        "America/Sitka",
        "0 0 9,16 * * *",
        "1867-10-18T00:00:00+14:58:47",
        [
            ("1867-10-18T09:00:00+14:58:47", None),
            ("1867-10-18T16:00:00+14:58:47", None),
            ("1867-10-19T09:00:00+14:58:47", None),
            ("1867-10-19T16:00:00-09:01:13", None),
        ],
    ),
]


@pytest.mark.parametrize(("zone", "expr", "after", "expected"), WHOLE_DAYS)
def test_whole_day_transitions_follow_the_policy(
    zone: str, expr: str, after: str, expected: list[tuple[str, str | None]]
) -> None:
    assert run(zone, expr, after, len(expected)) == expected
    tz = ZoneInfo(zone)
    ts = int(datetime.fromisoformat(after).timestamp())
    for iso, _dst in expected:
        nts = next_fire_ts(parse_schedule(expr), tz, ts)
        assert nts == int(datetime.fromisoformat(iso).timestamp())
        ts = nts


@pytest.mark.parametrize(
    ("zone", "before", "gap_run"),
    [
        ("Pacific/Apia", "2011-12-29T09:00:00-10:00", "2011-12-31T00:00:00+14:00"),
        ("Pacific/Kwajalein", "1993-08-20T09:00:00-12:00", "1993-08-22T00:00:00+12:00"),
    ],
)
def test_skipped_calendar_day_runs_once_after_gap(zone: str, before: str, gap_run: str) -> None:
    # From every hour of the day before the skipped one, the next run is the gap run, never a day later.
    s = parse_schedule("0 0 9 * * *")
    start = datetime.fromisoformat(before)
    for hours in range(15):
        f = next_fire(s, ZoneInfo(zone), start + timedelta(hours=hours))
        assert f is not None and (f.at.isoformat(), f.dst) == (gap_run, "gap")


def test_repeated_calendar_day_runs_fixed_time_once_and_every_hour_twice() -> None:
    tz = ZoneInfo("Pacific/Apia")
    first_pass = datetime.fromisoformat("1892-07-04T00:00:00+12:33:04")
    after = first_pass - timedelta(seconds=1)
    daily = fires(parse_schedule("0 0 9 * * *"), tz, after, 2)
    assert [(f.at.isoformat(), f.dst) for f in daily] == [
        ("1892-07-04T09:00:00+12:33:04", None),
        ("1892-07-05T09:00:00-11:26:56", None),
    ]
    hourly = fires(parse_schedule("@hourly"), tz, after, 49)
    stamps = [int(f.at.timestamp()) for f in hourly]
    assert all(b - a == 3600 for a, b in pairwise(stamps))  # 48 real hours, one fire each
    assert [f.dst for f in hourly] == [None] * 24 + ["repeat"] * 24 + [None]
    assert hourly[24].at.isoformat() == "1892-07-04T00:00:00-11:26:56"
    assert hourly[48].at.isoformat() == "1892-07-05T00:00:00-11:26:56"


def test_warnings_skipped_day() -> None:
    assert warnings("Pacific/Apia", "0 0 9 * * *", "2011-06-01T00:00:00-11:00") == [
        "09:00 Pacific/Apia does not exist on 2011-12-30; torch runs it at 00:00 on 2011-12-31",
    ]
    assert warnings("Pacific/Kwajalein", "0 30 8,20 * * *", "1993-08-01T00:00:00-12:00", 1) == [
        "08:30 and 20:30 Pacific/Kwajalein do not exist on 1993-08-21; torch runs them once, at 00:00 on 1993-08-22",
    ]


def test_warnings_repeated_day() -> None:
    assert warnings("Pacific/Apia", "0 0 9 * * *", "1892-07-01T00:00:00+12:33:04", 1) == [
        "09:00 Pacific/Apia happens twice on 1892-07-04; torch runs it once, at the first (09:00+12:33:04)",
    ]
    # The repeated 24 hours span two dates, so each time names its own.
    assert warnings("America/Sitka", "0 0 9,16 * * *", "1867-10-01T00:00:00+14:58:47", 1) == [
        "1867-10-18 16:00 and 1867-10-19 09:00 America/Sitka happen twice; "
        "torch runs each once, at the first (+14:58:47)",
    ]


def test_search_near_year_one_stays_in_range() -> None:
    # The search probes a day before its start; at the very start of year 1 that is before datetime's range.
    f = next_fire(parse_schedule("0 0 9 * * *"), ZoneInfo("Pacific/Apia"), datetime(1, 1, 1, tzinfo=UTC))
    assert f is not None and f.at.isoformat() == "0001-01-02T09:00:00+12:33:04"


# --------------------------------------------------------------------------------------------------
# The installed tzdata, read independently of gotorch: every offset change (instant, before, after).


def offset_changes(key: str) -> list[tuple[int, int, int]]:
    """Every UTC-offset change of ``key``, including those its closing rule makes in the years after.

    The pure-Python zoneinfo exposes the transition list; each change found is then checked against
    the ZoneInfo that torch uses, so a misreading of the private attributes fails here, not silently.
    """
    pz: Any = pure_zoneinfo.ZoneInfo.no_cache(key)
    out: list[tuple[int, int, int]] = []
    if pz._tti_before is None:
        return out
    prev = int(pz._tti_before.utcoff.total_seconds())
    for t, tti in zip(pz._trans_utc, pz._ttinfos, strict=True):
        o = int(tti.utcoff.total_seconds())
        if o != prev:
            out.append((t, prev, o))
        prev = o
    rule = pz._tz_after
    if isinstance(rule, pure_zoneinfo._TZStr):  # a DST rule repeats yearly; a few years show its spacing
        last = pz._trans_utc[-1] if pz._trans_utc else 0
        std, dst = int(rule.std.utcoff.total_seconds()), int(rule.dst.utcoff.total_seconds())
        made: list[tuple[int, int]] = []
        for year in range(datetime.fromtimestamp(last, UTC).year, datetime.fromtimestamp(last, UTC).year + 4):
            start, end = rule.transitions(year)  # local standard time and local DST time
            made += [(start - std, dst), (end - dst, std)]
        for t, o in sorted(made):
            if t > last and o != prev:
                out.append((t, prev, o))
                prev = o
    tz = ZoneInfo(key)
    for t, before, after in out:
        assert (utc_offset(tz, t - 1), utc_offset(tz, t)) == (before, after), (key, t)
    return out


def utc_offset(tz: tzinfo, ts: int) -> int:
    off = datetime.fromtimestamp(ts, tz).utcoffset()
    assert off is not None
    return off // timedelta(seconds=1)


@cache
def all_offset_changes() -> dict[str, list[tuple[int, int, int]]]:
    return {key: offset_changes(key) for key in sorted(available_timezones())}


def test_tzdata_fits_the_bound_the_search_assumes() -> None:
    # If a tzdata release breaks this, _SHIFT in gotorch/schedule.py must grow (and stay below the
    # smallest spacing of two changes), or the search can miss or misplace fires near the change.
    bound = tz_offsets.SHIFT
    changes = all_offset_changes()
    assert len(changes) > 300 and sum(map(len, changes.values())) > 10_000  # really read the database
    too_big = [(k, t, b, a) for k, cs in changes.items() for t, b, a in cs if abs(a - b) > bound]
    too_close = [(k, p[0], q[0]) for k, cs in changes.items() for p, q in pairwise(cs) if q[0] - p[0] <= bound]
    too_high: list[tuple[str, int]] = []  # an offset more than the bound above an earlier one
    for key, cs in changes.items():
        lowest = cs[0][1] if cs else 0
        for _t, _before, after in cs:
            if after - lowest > bound:
                too_high.append((key, after - lowest))
            lowest = min(lowest, after)
    assert (too_big, too_close, too_high) == ([], [], [])
    # Whole days are real: the bound is not an hour or two.
    assert (1325239200, -10 * 3600, 14 * 3600) in changes["Pacific/Apia"]


# --------------------------------------------------------------------------------------------------
# Every change of more than three hours, two days either side, against a brute force that knows
# nothing but utcoffset and the policy. Offsets here can have seconds (LMT), so it steps whole wall
# minutes within each constant-offset stretch rather than whole UTC minutes.

EVERY_DAY = set(range(7))
BIG_ORACLE_CASES = [
    # (expr, minutes, hours, weekdays with Sunday 0); second 0.
    ("0 0 9 * * *", {0}, {9}, EVERY_DAY),
    ("0 0 0 * * *", {0}, {0}, EVERY_DAY),
    ("0 30 1,13,23 * * *", {30}, {1, 13, 23}, EVERY_DAY),
    ("0 */20 4 * * *", {0, 20, 40}, {4}, EVERY_DAY),
    ("0 0 * * * *", {0}, set(range(24)), EVERY_DAY),
    ("0 */20 * * * *", {0, 20, 40}, set(range(24)), EVERY_DAY),
    ("0 15 */5 * * *", {15}, {0, 5, 10, 15, 20}, EVERY_DAY),
    # Fires days apart make the search look far ahead of where it starts.
    ("0 30 10 * * WED", {30}, {10}, {3}),
    ("0 0 * * * SUN,THU", {0}, set(range(24)), {0, 4}),
]
DAY = 86400


@cache
def big_transitions() -> list[tuple[str, int]]:
    """(zone, instant) of each distinct change of more than three hours (aliases counted once)."""
    seen: set[tuple[int, int, int]] = set()
    out: list[tuple[str, int]] = []
    for key, cs in all_offset_changes().items():
        for change in cs:
            if abs(change[2] - change[1]) > 3 * 3600 and change not in seen:
                seen.add(change)
                out.append((key, change[0]))
    return out


@cache
def segments(tz: tzinfo, lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    """(first instant, offset) of each constant-offset stretch of [lo, hi], by stepping real minutes."""
    out = [(lo, utc_offset(tz, lo))]
    for x in range(lo, hi, 60):
        if utc_offset(tz, x + 60) != out[-1][1]:
            p = next(y for y in range(x + 1, x + 61) if utc_offset(tz, y) != out[-1][1])
            out.append((p, utc_offset(tz, p)))
    return tuple(out)


def brute_force(
    segs: tuple[tuple[int, int], ...],
    lo: int,
    hi: int,
    mins: set[int],
    hours: set[int],
    days: set[int],
    fixed: bool,
) -> list[tuple[int, str | None]]:
    """Fires in (lo, hi] by the policy's definition, given the zone's offsets over [lo, hi]."""

    def matches(wall: int) -> bool:
        weekday = (wall // DAY + 4) % 7  # 1970-01-01 was a Thursday
        return wall % 60 == 0 and wall // 60 % 60 in mins and wall // 3600 % 24 in hours and weekday in days

    out: list[tuple[int, str | None]] = []
    lived_below = -(1 << 62)  # wall times below this have already happened
    for i, (start, o) in enumerate(segs):
        stop = segs[i + 1][0] if i + 1 < len(segs) else hi + 1
        if i:
            o_prev = segs[i - 1][1]
            lived_below = max(lived_below, start + o_prev)
            gap = range(start + o_prev + (-(start + o_prev)) % 60, start + o, 60)  # empty unless o > o_prev
            if fixed and any(matches(w) for w in gap):
                out.append((start, "gap"))
        for x in range(start + (-(start + o)) % 60, stop, 60):
            if lo < x <= hi and matches(x + o) and not (out and out[-1][0] == x):
                if x + o >= lived_below:
                    out.append((x, None))
                elif not fixed:
                    out.append((x, "repeat"))
    return out


@pytest.mark.parametrize(("expr", "mins", "hours", "days"), BIG_ORACLE_CASES)
def test_big_transitions_against_brute_force(expr: str, mins: set[int], hours: set[int], days: set[int]) -> None:
    s = parse_schedule(expr)
    assert len(big_transitions()) > 20
    wrong = []
    for zone, t in big_transitions():
        lo, hi = t - 2 * DAY, t + 2 * DAY
        expected = brute_force(segments(ZoneInfo(zone), lo, hi), lo, hi, mins, hours, days, s.fixed_hour)
        got = [
            (int(f.at.timestamp()), f.dst)
            for f in fires(s, ZoneInfo(zone), datetime.fromtimestamp(lo, UTC), len(expected) + 1)
            if f.at.timestamp() <= hi
        ]
        if got != expected:
            wrong.append((zone, datetime.fromtimestamp(t, UTC).isoformat(), sorted(set(got) ^ set(expected))))
    assert wrong == []


class Steps(tzinfo):
    """A made-up zone whose offset jumps at given UTC instants, to hold the search to the limits of
    what it assumes rather than to what tzdata happens to contain."""

    key = "Test/Steps"

    def __init__(self, first: int, changes: list[tuple[int, int]]) -> None:
        ends = [t for t, _ in changes] + [1 << 62]
        offsets = [first] + [o for _, o in changes]
        starts = [-(1 << 62)] + [t for t, _ in changes]
        self.spans = list(zip(starts, ends, offsets, strict=True))  # [start, end) at offset

    def _shown_at(self, wall: int) -> list[tuple[int, int]]:
        """(instant, offset) of every instant whose wall clock reads ``wall``, in order."""
        return [(wall - o, o) for start, end, o in self.spans if start <= wall - o < end]

    def fromutc(self, dt: datetime) -> datetime:
        ts = (dt.replace(tzinfo=UTC) - EPOCH) // timedelta(seconds=1)
        o = next(o for start, end, o in self.spans if start <= ts < end)
        fold = [x for x, _ in self._shown_at(ts + o)].index(ts)
        assert fold <= 1
        return (dt + timedelta(seconds=o)).replace(fold=fold)

    def utcoffset(self, dt: datetime | None) -> timedelta:
        assert dt is not None
        wall = (dt.replace(tzinfo=UTC) - EPOCH) // timedelta(seconds=1)
        shown = self._shown_at(wall)
        if shown:
            return timedelta(seconds=shown[min(dt.fold, len(shown) - 1)][1])
        # A wall time in a gap: the offset before it (fold 0), as PEP 495 has it.
        return timedelta(seconds=max((s for s in self.spans if s[0] + s[2] <= wall), default=self.spans[0])[2])

    def dst(self, dt: datetime | None) -> None:
        return None

    def tzname(self, dt: datetime | None) -> str:
        return "Steps"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_search_holds_at_the_limits_of_its_assumptions() -> None:
    # Changes as big as the bound, as close as it allows, and offsets the bound apart: up and down a
    # whole 26 hours, 26 hours and a second apart, with an odd-seconds offset in between.
    bound = tz_offsets.SHIFT
    t0 = int(datetime(2030, 1, 3, 5, 0, 7, tzinfo=UTC).timestamp())
    h = 3600
    offsets = [14 * h, -12 * h, 14 * h, -12 * h, 5 * h + 1234, -12 * h, 14 * h, 13 * h + 59 * 60 + 59]
    steps = Steps(-12 * h, [(t0 + k * (bound + 1), o) for k, o in enumerate(offsets)])
    lo, hi = t0 - 2 * DAY, t0 + len(offsets) * (bound + 1) + 2 * DAY
    segs = segments(steps, lo, hi)
    assert len(segs) == len(offsets) + 1
    for expr, mins, hours, days in BIG_ORACLE_CASES:
        s = parse_schedule(expr)
        expected = brute_force(segs, lo, hi, mins, hours, days, s.fixed_hour)
        got = [
            (int(f.at.timestamp()), f.dst)
            for f in fires(s, steps, datetime.fromtimestamp(lo, UTC), len(expected) + 1)
            if f.at.timestamp() <= hi
        ]
        assert got == expected, expr
        # Each fire asked for on its own, as the daemon does, from just before it.
        for ts, _dst in expected:
            assert next_fire_ts(s, steps, ts - 1) == ts
    # torch check sees every one of those changes too: each gap or repeat holds a whole hour but the last.
    found = dst_warnings(parse_schedule("0 0 0-22 * * *"), steps, datetime(2029, 12, 1, tzinfo=UTC), 2)
    assert [" not exist" in w for w in found] == [k % 2 == 0 for k in range(len(offsets) - 1)]


def test_warnings_repeat_whose_first_pass_is_before_the_window_end() -> None:
    # The window ends 2029-12-31 23:00 UTC; the repeat's transition is in the next UTC year, 2030-01-01
    # 10:00, but the first pass of the 10:00 it repeats was at 22:00 UTC, inside the window.
    t = int(datetime(2030, 1, 1, 10, tzinfo=UTC).timestamp())
    steps = Steps(12 * 3600, [(t, -12 * 3600)])
    assert dst_warnings(
        parse_schedule("0 0 10 * * *"), steps, datetime.fromisoformat("2029-12-01T00:00:00+01:00"), 1
    ) == [
        "10:00 Test/Steps happens twice on 2030-01-01; torch runs it once, at the first (10:00+12:00)",
    ]


class UnhashableSteps(Steps):
    __hash__ = None  # type: ignore[assignment]  # as dateutil's zones are


def test_search_accepts_an_unhashable_tzinfo() -> None:
    # Remembering located transitions must not need the zone to be hashable.
    t = int(datetime(2030, 1, 1, 10, tzinfo=UTC).timestamp())
    steps = UnhashableSteps(-10 * 3600, [(t, 14 * 3600)])
    got = fires(parse_schedule("0 0 9 * * *"), steps, datetime(2029, 12, 31, 12, tzinfo=UTC), 3)
    assert [(f.at.isoformat(), f.dst) for f in got] == [
        ("2029-12-31T09:00:00-10:00", None),
        ("2030-01-02T00:00:00+14:00", "gap"),
        ("2030-01-02T09:00:00+14:00", None),
    ]
