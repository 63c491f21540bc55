"""Unit tests for gotorch.schedule: syntax, aliases, @every, @reboot, errors and the API contract.

All times are fixed; nothing here reads the clock. Expected dates were read off a calendar (2027-01-01
is a Friday), not produced by the code under test.
"""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from gotorch.fire_times import fires, next_fire, next_fire_ts, repeats_at_least_hourly
from gotorch.schedule import Fire, Schedule, ScheduleError, parse_schedule

BERLIN = ZoneInfo("Europe/Berlin")


def utc(text: str) -> datetime:
    """'2027-01-01 00:00:05' -> aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fire_times(expr: str, after: str, n: int) -> list[str]:
    """The next n fires in UTC as 'YYYY-MM-DD HH:MM:SS' strings."""
    got = fires(parse_schedule(expr), UTC, utc(after), n)
    return [f.at.strftime("%Y-%m-%d %H:%M:%S") for f in got]


# --------------------------------------------------------------------------------------------------
# Syntax forms


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        # every second
        ("* * * * * *", "2027-01-01 00:00:00", ["2027-01-01 00:00:01", "2027-01-01 00:00:02"]),
        # seconds step
        (
            "*/15 * * * * *",
            "2027-01-01 00:00:07",
            ["2027-01-01 00:00:15", "2027-01-01 00:00:30", "2027-01-01 00:00:45", "2027-01-01 00:01:00"],
        ),
        # minute step
        ("0 */5 * * * *", "2027-01-01 00:03:00", ["2027-01-01 00:05:00", "2027-01-01 00:10:00"]),
        # range of minutes
        (
            "30 1-3 * * * *",
            "2027-01-01 00:00:00",
            ["2027-01-01 00:01:30", "2027-01-01 00:02:30", "2027-01-01 00:03:30", "2027-01-01 01:01:30"],
        ),
        # stepped range of hours
        (
            "0 0 9-17/4 * * *",
            "2027-01-01 00:00:00",
            ["2027-01-01 09:00:00", "2027-01-01 13:00:00", "2027-01-01 17:00:00", "2027-01-02 09:00:00"],
        ),
        # a/n: from a to the end of the field
        (
            "0 0 10/6 * * *",
            "2027-01-01 00:00:00",
            ["2027-01-01 10:00:00", "2027-01-01 16:00:00", "2027-01-01 22:00:00", "2027-01-02 10:00:00"],
        ),
        # list
        (
            "5,50,10 0 0 * * *",
            "2027-01-01 00:00:00",
            ["2027-01-01 00:00:05", "2027-01-01 00:00:10", "2027-01-01 00:00:50", "2027-01-02 00:00:05"],
        ),
        # list mixing values, ranges and steps
        (
            "0 0,20-21,*/25 0 1 1 *",
            "2027-01-01 00:00:00",
            ["2027-01-01 00:20:00", "2027-01-01 00:21:00", "2027-01-01 00:25:00", "2027-01-01 00:50:00"],
        ),
        # month names, any case
        ("0 0 0 1 JAN,jul *", "2027-01-01 00:00:00", ["2027-07-01 00:00:00", "2028-01-01 00:00:00"]),
        ("0 0 0 1 Feb-Mar *", "2027-01-01 00:00:00", ["2027-02-01 00:00:00", "2027-03-01 00:00:00"]),
        # month step
        (
            "0 0 0 1 */3 *",
            "2027-01-01 00:00:00",
            ["2027-04-01 00:00:00", "2027-07-01 00:00:00", "2027-10-01 00:00:00", "2028-01-01 00:00:00"],
        ),
        # weekday names and ranges (2027-01-01 is a Friday)
        (
            "0 0 0 * * mon-WED",
            "2027-01-01 00:00:00",
            ["2027-01-04 00:00:00", "2027-01-05 00:00:00", "2027-01-06 00:00:00", "2027-01-11 00:00:00"],
        ),
        # Sunday is 0, 7 and SUN
        ("0 0 0 * * 0", "2027-01-01 00:00:00", ["2027-01-03 00:00:00", "2027-01-10 00:00:00"]),
        ("0 0 0 * * 7", "2027-01-01 00:00:00", ["2027-01-03 00:00:00", "2027-01-10 00:00:00"]),
        ("0 0 0 * * SUN", "2027-01-01 00:00:00", ["2027-01-03 00:00:00", "2027-01-10 00:00:00"]),
        # a range ending at 7 includes Sunday
        (
            "0 0 0 * * 5-7",
            "2027-01-01 00:00:00",
            ["2027-01-02 00:00:00", "2027-01-03 00:00:00", "2027-01-08 00:00:00"],
        ),
        # weekday step over 0-7: Sun, Tue, Thu, Sat
        (
            "0 0 0 * * */2",
            "2027-01-01 00:00:00",
            ["2027-01-02 00:00:00", "2027-01-03 00:00:00", "2027-01-05 00:00:00", "2027-01-07 00:00:00"],
        ),
        # 1/3 in day-of-week: Mon, Thu and 7 (Sunday), as in Vixie cron
        (
            "0 0 0 * * 1/3",
            "2027-01-01 00:00:00",
            ["2027-01-03 00:00:00", "2027-01-04 00:00:00", "2027-01-07 00:00:00", "2027-01-10 00:00:00"],
        ),
        # day-of-month step starts at 1
        ("0 0 0 */10 * *", "2027-01-01 00:00:00", ["2027-01-11 00:00:00", "2027-01-21 00:00:00"]),
        # Feb 29 is fine: leap years only
        ("0 0 0 29 2 *", "2027-01-01 00:00:00", ["2028-02-29 00:00:00", "2032-02-29 00:00:00"]),
    ],
)
def test_syntax_forms(expr: str, after: str, expected: list[str]) -> None:
    assert fire_times(expr, after, len(expected)) == expected


@pytest.mark.parametrize("expr", ["5-5 * * * * *", "5-5/20 * * * * *", "5 * * * * *"])
def test_equal_range_means_just_that_value(expr: str) -> None:
    # croniter alone reads 5-5 as the whole field; torch means second 5 only.
    assert fire_times(expr, "2027-01-01 00:00:00", 2) == ["2027-01-01 00:00:05", "2027-01-01 00:01:05"]


def test_equal_range_differs_from_croniter_default() -> None:
    # Documents the croniter pitfall that the normalisation exists for.
    assert croniter.expand("5-5 * * * * *", second_at_beginning=True)[0][5] == ["*"]
    assert parse_schedule("5-5 * * * * *").expr == "5 * * * * *"
    assert parse_schedule("5-5/20 * * * * *").expr == "5 * * * * *"


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        # L: last day of the month
        (
            "0 0 0 L * *",
            "2027-01-01 00:00:00",
            ["2027-01-31 00:00:00", "2027-02-28 00:00:00", "2027-03-31 00:00:00", "2027-04-30 00:00:00"],
        ),
        ("0 0 0 L 2 *", "2027-03-01 00:00:00", ["2028-02-29 00:00:00"]),
        ("0 0 0 1,l * *", "2027-01-01 00:00:00", ["2027-01-31 00:00:00", "2027-02-01 00:00:00"]),
        # LW: last weekday (Jan 31 and Feb 28 2027 are Sundays)
        (
            "0 0 0 LW * *",
            "2027-01-01 00:00:00",
            ["2027-01-29 00:00:00", "2027-02-26 00:00:00", "2027-03-31 00:00:00", "2027-04-30 00:00:00"],
        ),
        # nW: nearest weekday, never leaving the month. 2027-05-01 is a Saturday -> Monday 3rd.
        ("0 0 0 1W * *", "2027-04-30 00:00:00", ["2027-05-03 00:00:00", "2027-06-01 00:00:00"]),
        # 2027-05-15 is a Saturday -> Friday 14th; 2027-05-16 a Sunday -> Monday 17th
        ("0 0 0 15W 5 *", "2027-05-01 00:00:00", ["2027-05-14 00:00:00", "2028-05-15 00:00:00"]),
        ("0 0 0 16w 5 *", "2027-05-01 00:00:00", ["2027-05-17 00:00:00", "2028-05-16 00:00:00"]),
        # 2027-10-31 is a Sunday -> Friday 29th; November has no 31st and is skipped
        ("0 0 0 31W * *", "2027-10-01 00:00:00", ["2027-10-29 00:00:00", "2027-12-31 00:00:00"]),
        # #: nth weekday of the month
        (
            "0 0 0 * * 5#2",
            "2027-01-01 00:00:00",
            ["2027-01-08 00:00:00", "2027-02-12 00:00:00", "2027-03-12 00:00:00"],
        ),
        (
            "0 0 0 * * MON#1",
            "2027-01-01 00:00:00",
            ["2027-01-04 00:00:00", "2027-02-01 00:00:00", "2027-03-01 00:00:00"],
        ),
        # a fifth Friday only in months that have one
        ("0 0 0 * * 5#5", "2027-01-01 00:00:00", ["2027-01-29 00:00:00", "2027-04-30 00:00:00"]),
        # L in day-of-week: last such weekday
        (
            "0 0 0 * * 5L",
            "2027-01-01 00:00:00",
            ["2027-01-29 00:00:00", "2027-02-26 00:00:00", "2027-03-26 00:00:00"],
        ),
        (
            "0 0 0 * * FRIL",
            "2027-01-01 00:00:00",
            ["2027-01-29 00:00:00", "2027-02-26 00:00:00", "2027-03-26 00:00:00"],
        ),
        ("0 0 0 * * 7L", "2027-01-01 00:00:00", ["2027-01-31 00:00:00", "2027-02-28 00:00:00"]),
        # ? is * in the day fields
        ("0 0 12 ? * MON", "2027-01-01 00:00:00", ["2027-01-04 12:00:00", "2027-01-11 12:00:00"]),
        ("0 0 12 1 * ?", "2027-01-01 00:00:00", ["2027-01-01 12:00:00", "2027-02-01 12:00:00"]),
    ],
)
def test_special_day_forms(expr: str, after: str, expected: list[str]) -> None:
    assert fire_times(expr, after, len(expected)) == expected


def test_question_mark_is_star() -> None:
    a = fire_times("0 0 12 ? * MON", "2027-01-01 00:00:00", 5)
    assert a == fire_times("0 0 12 * * MON", "2027-01-01 00:00:00", 5)


# --------------------------------------------------------------------------------------------------
# Day-of-month / day-of-week combination (Vixie/Debian cron, cronsim)


def test_dom_and_dow_or_when_neither_starts_with_star() -> None:
    # The 1st, the 15th and every Monday.
    assert fire_times("0 0 0 1,15 * MON", "2026-12-31 12:00:00", 5) == [
        "2027-01-01 00:00:00",
        "2027-01-04 00:00:00",
        "2027-01-11 00:00:00",
        "2027-01-15 00:00:00",
        "2027-01-18 00:00:00",
    ]


def test_dom_step_with_dow_is_and() -> None:
    # */2 starts with '*': odd days that are also Mondays (Jan 4 is even, Jan 11 is odd).
    assert fire_times("0 0 0 */2 * MON", "2027-01-01 00:00:00", 3) == [
        "2027-01-11 00:00:00",
        "2027-01-25 00:00:00",
        "2027-02-01 00:00:00",
    ]


def test_dow_step_with_dom_is_and() -> None:
    # dow */2 (Sun, Tue, Thu, Sat) AND the 1st-10th.
    assert fire_times("0 0 0 1-10 * */2", "2027-01-01 00:00:00", 3) == [
        "2027-01-02 00:00:00",
        "2027-01-03 00:00:00",
        "2027-01-05 00:00:00",
    ]


def test_croniter_alone_would_or_the_step_case() -> None:
    # Why torch does its own day matching: croniter ORs "*/2" with a weekday.
    it = croniter("0 0 0 */2 * 1", datetime(2027, 1, 1), second_at_beginning=True)
    assert it.get_next(datetime) == datetime(2027, 1, 3)


def test_full_dom_range_with_dow_is_or() -> None:
    # "1-31" does not start with '*': OR, so every day.
    assert fire_times("0 0 0 1-31 * MON", "2027-01-01 00:00:00", 2) == [
        "2027-01-02 00:00:00",
        "2027-01-03 00:00:00",
    ]


# --------------------------------------------------------------------------------------------------
# Aliases, @every, @reboot


@pytest.mark.parametrize(
    ("alias", "expr", "first"),
    [
        ("@yearly", "0 0 0 1 1 *", "2028-01-01 00:00:00"),
        ("@annually", "0 0 0 1 1 *", "2028-01-01 00:00:00"),
        ("@monthly", "0 0 0 1 * *", "2027-02-01 00:00:00"),
        ("@weekly", "0 0 0 * * 0", "2027-01-03 00:00:00"),
        ("@daily", "0 0 0 * * *", "2027-01-02 00:00:00"),
        ("@midnight", "0 0 0 * * *", "2027-01-02 00:00:00"),
        ("@hourly", "0 0 * * * *", "2027-01-01 01:00:00"),
        ("@minutely", "0 * * * * *", "2027-01-01 00:01:00"),
        ("@DAILY", "0 0 0 * * *", "2027-01-02 00:00:00"),
        ("  @hourly  ", "0 0 * * * *", "2027-01-01 01:00:00"),
    ],
)
def test_aliases(alias: str, expr: str, first: str) -> None:
    s = parse_schedule(alias)
    assert s.kind == "cron"
    assert s.text == alias
    assert s.expr == expr
    assert fire_times(alias, "2027-01-01 00:00:00", 1) == [first]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("@every 90s", 90),
        ("@every 5m", 300),
        ("@every 1h30m", 5400),
        ("@every 2h", 7200),
        ("@every 1d", 86400),
        ("@every 1d12h", 129600),
        ("@every 1h 30m 15s", 5415),
        ("@every 90", 90),
        ("@every 1", 1),
        ("@EVERY 10s", 10),
    ],
)
def test_every_durations(text: str, seconds: int) -> None:
    s = parse_schedule(text)
    assert s.kind == "every"
    assert s.interval == seconds


def test_every_is_aligned_to_the_epoch() -> None:
    s = parse_schedule("@every 90s")
    # 2027-01-01 00:00:00 UTC is 1798761600, a multiple of 90.
    assert next_fire_ts(s, UTC, 1798761600) == 1798761690
    assert next_fire_ts(s, UTC, 1798761601) == 1798761690
    assert next_fire_ts(s, UTC, 1798761689) == 1798761690
    # The timezone changes how the instant is expressed, not which instant it is.
    f = next_fire(s, BERLIN, utc("2027-01-01 00:00:00"))
    assert f == Fire(at=datetime(2027, 1, 1, 1, 1, 30, tzinfo=BERLIN), dst=None)
    assert f is not None and f.at.utcoffset() == timedelta(hours=1)


def test_every_day_fires_at_utc_midnight() -> None:
    f = next_fire(parse_schedule("@every 1d"), BERLIN, datetime(2027, 6, 1, 12, tzinfo=BERLIN))
    assert f is not None
    assert f.at.isoformat() == "2027-06-02T02:00:00+02:00"


def test_every_7m_does_not_restart_each_day() -> None:
    # Pure epoch arithmetic: fire times are the multiples of 420 s, whatever the day.
    got = fires(parse_schedule("@every 7m"), UTC, utc("2027-01-01 23:55:00"), 2)
    assert [int(f.at.timestamp()) % 420 for f in got] == [0, 0]
    assert got[1].at - got[0].at == timedelta(minutes=7)


def test_reboot() -> None:
    s = parse_schedule("@reboot")
    assert s.kind == "reboot"
    assert next_fire(s, UTC, utc("2027-01-01 00:00:00")) is None
    assert fires(s, UTC, utc("2027-01-01 00:00:00"), 3) == []
    assert next_fire_ts(s, UTC, 1798761600) is None
    assert repeats_at_least_hourly(s) is False


# --------------------------------------------------------------------------------------------------
# Errors


def error_of(text: str) -> ScheduleError:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text)
    return info.value


def test_five_fields_suggests_second_zero() -> None:
    err = error_of("*/5 * * * *")
    assert "six fields" in err.problem
    assert "seconds first" in err.problem
    assert '"0 */5 * * * *"' in err.hint


def test_five_fields_hint_keeps_the_users_fields() -> None:
    assert '"0 30 2 * * MON-FRI"' in error_of("30 2 * * MON-FRI").hint


def test_seven_fields_mentions_years() -> None:
    err = error_of("0 0 0 1 1 * 2027")
    assert "years (a 7th field) are not supported" in err.problem


@pytest.mark.parametrize("text", ["*", "0 0", "0 0 0 0", "0 0 0 1 1 * 2027 x"])
def test_other_field_counts(text: str) -> None:
    err = error_of(text)
    assert "exactly six fields" in err.problem
    assert f"this has {len(text.split())}" in err.problem


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_empty(text: str) -> None:
    assert "empty" in error_of(text).problem


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("60 * * * * *", "second: 60 is out of range 0-59"),
        ("* 60 * * * *", "minute: 60 is out of range 0-59"),
        ("0 0 25 * * *", "hour: 25 is out of range 0-23"),
        ("0 0 24 * * *", "hour: 24 is out of range 0-23"),
        ("0 0 0 32 * *", "day-of-month: 32 is out of range 1-31"),
        ("0 0 0 0 * *", "day-of-month: 0 is out of range 1-31"),
        ("0 0 0 * 13 *", "month: 13 is out of range 1-12"),
        ("0 0 0 * 0 *", "month: 0 is out of range 1-12"),
        ("0 0 0 * * 8", "day-of-week: 8 is out of range 0-7"),
        ("0 0 1-25 * * *", "hour: 25 is out of range 0-23"),
        ("0 0 0 32W * *", "day-of-month: 32 is out of range 1-31"),
        ("0 0 0 * * 8#1", "day-of-week: 8 is out of range 0-7"),
        ("*/0 * * * * *", "second: step 0 in '*/0' must be >= 1"),
        ("* 0-30/0 * * * *", "minute: step 0 in '0-30/0' must be >= 1"),
        ("* * */x * * *", "hour: step 'x' in '*/x' is not a number"),
        ("* * 1/ * * *", "hour: step '' in '1/' is not a number"),
        ("*/90 * * * * *", "second: step 90 in '*/90' is larger than the field"),
        ("0 0 0 * FOO *", "month: 'FOO' is not a month name or number"),
        ("0 0 0 * * FRY", "day-of-week: 'FRY' is not a weekday name or number"),
        ("0 0 MON * * *", "hour: 'MON' is not a number"),
        ("0 0 0 * JAN-MON *", "month: 'MON' is not a month name or number"),
        ("0 0 22-2 * * *", "hour: range '22-2' goes backwards"),
        ("0 0 0 * * SAT-SUN", "day-of-week: range 'SAT-SUN' goes backwards"),
        ("0 0 0 * * 5#6", "day-of-week: '5#6': the number after '#' must be 1-5"),
        ("0 0 0 * * 5#0", "day-of-week: '5#0': the number after '#' must be 1-5"),
        ("0 0 0 * * L", "day-of-week: 'L' alone is ambiguous"),
        ("0 0 L * * *", "hour: 'L' is not allowed here"),
        ("0 0 0 5L * *", "day-of-month: '5L' is not allowed here"),
        ("0 0 0 W * *", "day-of-month: cannot read 'W'"),
        ("0 0 0 1-5W * *", "day-of-month: cannot read '1-5W'"),
        ("? * * * * *", "second: '?' is only allowed in day-of-month and day-of-week"),
        ("0 0 0 1,,2 * *", "day-of-month: empty item in '1,,2'"),
        ("0 0 0 1, * *", "day-of-month: empty item in '1,'"),
        ("0 0 0 -1 * *", "day-of-month: cannot read '-1'"),
        ("0 0 0 1-2-3 * *", "day-of-month: cannot read '1-2-3'"),
    ],
)
def test_field_errors_name_the_field(text: str, problem: str) -> None:
    err = error_of(text)
    assert err.problem == problem
    assert err.hint


def test_backwards_range_hint() -> None:
    assert "write 22-23,0-2" in error_of("0 0 22-2 * * *").hint


def test_big_step_hint_points_to_every() -> None:
    assert "@every" in error_of("*/90 * * * * *").hint


@pytest.mark.parametrize("text", ["0 0 0 31 2 *", "0 0 0 30 2 *", "0 0 0 31 4,6 *", "0 0 0 30W 2 *", "0 0 0 31 APR *"])
def test_can_never_fire(text: str) -> None:
    err = error_of(text)
    assert "can never fire" in err.problem
    assert "February" in err.hint


def test_croniter_reports_feb_31_only_when_iterating() -> None:
    # The pitfall the "can never fire" check replaces: croniter accepts the expression.
    assert croniter.is_valid("0 0 0 31 2 *", second_at_beginning=True)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("@every", "@every needs an interval"),
        ("@every 0", "@every 0: the interval must be at least 1 second"),
        ("@every 0s", "@every 0s: the interval must be at least 1 second"),
        ("@every 1.5h", "@every: cannot read '1.5h' as an interval"),
        ("@every 500ms", "@every 500ms: the interval must be a whole number of seconds"),
        ("@every 5x", "@every: cannot read '5x' as an interval"),
        ("@every -5", "@every -5: the interval must be at least 1 second"),
        ("@every 30m1h", "@every: cannot read '30m1h' as an interval"),
        ("@every 5 minutes", "@every: cannot read '5 minutes' as an interval"),
        ("@every 3651d", "@every 3651d: the interval is longer than 3650 days"),
        ("@fortnightly", "unknown schedule alias '@fortnightly'"),
        ("@daily 5", "'@daily' takes no argument (got '5')"),
    ],
)
def test_alias_errors(text: str, problem: str) -> None:
    assert error_of(text).problem == problem


def test_schedule_error_shape() -> None:
    err = ScheduleError("the problem", "the hint")
    assert isinstance(err, ValueError)
    assert (err.problem, err.hint) == ("the problem", "the hint")
    assert str(err) == "the problem; the hint"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.problem, copy.hint, str(copy)) == ("the problem", "the hint", "the problem; the hint")


# --------------------------------------------------------------------------------------------------
# API contract


def test_strictly_after() -> None:
    s = parse_schedule("0 0 12 * * *")
    at_fire = utc("2027-01-01 12:00:00")
    f = next_fire(s, UTC, at_fire)
    assert f is not None and f.at == utc("2027-01-02 12:00:00")
    just_before = at_fire - timedelta(microseconds=1)
    f = next_fire(s, UTC, just_before)
    assert f is not None and f.at == at_fire
    just_after = at_fire + timedelta(microseconds=500_000)
    f = next_fire(s, UTC, just_after)
    assert f is not None and f.at == utc("2027-01-02 12:00:00")
    assert next_fire_ts(s, UTC, int(at_fire.timestamp())) == int(at_fire.timestamp()) + 86400
    assert next_fire_ts(s, UTC, int(at_fire.timestamp()) - 1) == int(at_fire.timestamp())


def test_every_second_strictly_after_with_microseconds() -> None:
    f = next_fire(parse_schedule("* * * * * *"), UTC, utc("2027-01-01 00:00:00.999999"))
    assert f is not None and f.at == utc("2027-01-01 00:00:01")


def test_naive_datetime_rejected() -> None:
    s = parse_schedule("0 * * * * *")
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(s, UTC, datetime(2027, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        fires(s, UTC, datetime(2027, 1, 1), 2)


def test_after_in_another_zone_is_the_same_instant() -> None:
    s = parse_schedule("0 0 9 * * *")
    a = next_fire(s, BERLIN, datetime(2027, 1, 1, 10, tzinfo=ZoneInfo("Asia/Tokyo")))
    b = next_fire(s, BERLIN, utc("2027-01-01 01:00:00"))
    assert a == b
    assert a is not None and a.at.isoformat() == "2027-01-01T09:00:00+01:00"
    assert a.at.tzinfo is BERLIN


def test_fixed_offset_timezone() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    f = next_fire(parse_schedule("0 0 9 * * *"), ist, utc("2027-01-01 00:00:00"))
    assert f is not None and f.at.isoformat() == "2027-01-01T09:00:00+05:30"


def test_fires_strictly_increasing_and_n() -> None:
    got = fires(parse_schedule("*/20 * * * * *"), BERLIN, utc("2027-01-01 00:00:00"), 7)
    assert len(got) == 7
    assert all(a.at < b.at for a, b in pairwise(got))
    assert fires(parse_schedule("*/20 * * * * *"), BERLIN, utc("2027-01-01 00:00:00"), 0) == []


@pytest.mark.parametrize(
    "text",
    [
        "* * * * * *",
        "0 */5 * * * *",
        "0 30 2 * * *",
        "0 0 */3 * * *",
        "0 0 0 L * *",
        "0 0 12 * * 5#2",
        "0 15 1,2,3 * * *",
        "@every 7m",
        "@hourly",
        "0 0 0 29 2 *",
    ],
)
@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
def test_next_fire_ts_agrees_with_next_fire(text: str, zone: str) -> None:
    tz = ZoneInfo(zone)
    s = parse_schedule(text)
    # Sample across both 2027 DST transitions of every zone used.
    starts = [
        utc("2027-03-13 12:00:00"),
        utc("2027-03-28 00:30:00"),
        utc("2027-04-03 14:40:00"),
        utc("2027-10-02 15:20:00"),
        utc("2027-10-31 00:10:00"),
        utc("2027-11-07 05:20:00"),
    ]
    for start in starts:
        ts = int(start.timestamp())
        for _ in range(20):
            f = next_fire(s, tz, datetime.fromtimestamp(ts, UTC))
            nts = next_fire_ts(s, tz, ts)
            assert f is not None and nts == int(f.at.timestamp())
            assert nts > ts
            ts = nts


def test_next_fire_ts_accepts_float() -> None:
    s = parse_schedule("* * * * * *")
    assert next_fire_ts(s, UTC, 1798761600.5) == 1798761601  # type: ignore[arg-type]


def test_far_future_returns_none_not_an_error() -> None:
    s = parse_schedule("0 0 0 1 1 *")
    assert next_fire(s, UTC, datetime(9998, 6, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("* * * * * *", True),
        ("0 * * * * *", True),
        ("0 0 * * * *", True),
        ("@hourly", True),
        ("@minutely", True),
        ("0 0 */1 * * *", True),
        ("0 0 0-23 * * *", True),
        ("0 0 */2 * * *", False),
        ("0 0 0-22 * * *", False),
        ("0 0 * * * MON-FRI", False),
        ("0 0 * 1-30 * *", False),
        ("0 0 * * 1-11 *", False),
        ("0 0 * 1-31 * MON", True),  # OR: every day
        ("@daily", False),
        ("@every 1s", True),
        ("@every 3600", True),
        ("@every 3601", False),
        ("@every 2h", False),
        ("@reboot", False),
    ],
)
def test_repeats_at_least_hourly(text: str, expected: bool) -> None:
    assert repeats_at_least_hourly(parse_schedule(text)) is expected


@pytest.mark.parametrize(
    ("text", "fixed"),
    [
        ("0 30 2 * * *", True),
        ("0 0 9-17 * * *", True),
        ("0 0 1,13 * * *", True),
        ("0 0 * * * *", False),
        ("0 0 */2 * * *", False),
        ("0 0 9-17/2 * * *", False),
        ("0 0 9/2 * * *", False),
        ("0 0 0-23 * * *", False),
        ("@daily", True),
        ("@hourly", False),
        ("@every 1h", False),
    ],
)
def test_fixed_hour(text: str, fixed: bool) -> None:
    assert parse_schedule(text).fixed_hour is fixed


def test_schedule_keeps_text_and_normalises_expr() -> None:
    s = parse_schedule("  0  0  9  ?  jan-MAR  mon-fri ")
    assert s.text == "  0  0  9  ?  jan-MAR  mon-fri "
    assert s.kind == "cron"
    assert s.expr == "0 0 9 * 1-3 1-5"
    assert s == parse_schedule("  0  0  9  ?  jan-MAR  mon-fri ")
    assert isinstance(s, Schedule)


def test_tabs_separate_fields() -> None:
    assert parse_schedule("0\t0\t9 * * *").expr == "0 0 9 * * *"
