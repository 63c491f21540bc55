"""The DST policy, pinned with fixed instants (ISO strings with offsets) for 2027 transitions.

Transitions used (checked against zoneinfo in test_transition_dates):
  Europe/Berlin        2027-03-28 02:00 +01:00 -> 03:00 +02:00   2027-10-31 03:00 +02:00 -> 02:00 +01:00
  America/New_York     2027-03-14 02:00 -05:00 -> 03:00 -04:00   2027-11-07 02:00 -04:00 -> 01:00 -05:00
  Australia/Lord_Howe  2027-10-03 02:00 +10:30 -> 02:30 +11:00   2027-04-04 02:00 +11:00 -> 01:30 +10:30

Policy: a fixed time in the spring gap runs once at the transition (dst="gap"); a fixed time in the
repeated hour runs once, at its first occurrence; hour-'*'/step schedules skip gap times and fire on
both passes of the repeated hour (second pass dst="repeat").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from gotorch.schedule import dst_warnings, fires, next_fire, next_fire_ts, parse_schedule

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
            gap = [here.replace(tzinfo=None) - now + before + timedelta(minutes=k) for k in range(240)]
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
