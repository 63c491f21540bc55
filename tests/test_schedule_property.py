"""Property test: torch's cron engine agrees with cronsim, an independent evaluator.

Generated six-field expressions (seconds first) use values, ranges, lists, steps, month and weekday
names, and the day forms both engines share (L, LW, nL, n#k). The main comparison happens in UTC, so
no DST rule is involved; a second one runs in DST zones for schedules whose hour field is '*' or a
step, where torch's policy (real-time spacing) is what cronsim does for six-field expressions. The
fixed-time DST rules have their own tests in test_dst.py.

Deliberate divergences, kept out of the generator:
* ``a-a/n``: torch reads it as just ``a``; cronsim reads it as ``a/n``.
* ``W``, ``?`` and ``FRIL``-style names with L: cronsim does not support them (unit-tested instead).
* Backwards ranges and steps larger than their field: torch rejects them (cronsim rejects the first).
If torch finds that an expression can never fire, cronsim must not find a fire either.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gotorch.fire_times import next_fire
from gotorch.schedule import ScheduleError, parse_schedule

BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
SIZES = (60, 60, 24, 31, 12, 7)
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def token(index: int, value: int, draw: st.DrawFn) -> str:
    """A value as a number or, for months and weekdays, sometimes as a name in random case."""
    name: str | None = None
    if index == 4:
        name = MONTHS[value - 1]
    elif index == 5 and value < 7:
        name = DAYS[value]
    if name is not None and draw(st.booleans()):
        return draw(st.sampled_from([name, name.lower(), name.title()]))
    return str(value)


@st.composite
def item(draw: st.DrawFn, index: int) -> str:
    lo, hi = BOUNDS[index]
    step = st.integers(1, SIZES[index])
    kinds = ["value", "range", "star_step", "range_step", "start_step"]
    if index == 3:
        kinds += ["L", "LW"]
    if index == 5:
        kinds += ["last", "nth"]
    kind = draw(st.sampled_from(kinds))
    if kind == "value":
        return token(index, draw(st.integers(lo, hi)), draw)
    if kind in ("range", "range_step"):
        a = draw(st.integers(lo, hi - 1))
        b = draw(st.integers(a + 1, hi))
        text = f"{token(index, a, draw)}-{token(index, b, draw)}"
        return text if kind == "range" else f"{text}/{draw(step)}"
    if kind == "star_step":
        return f"*/{draw(step)}"
    if kind == "start_step":
        return f"{token(index, draw(st.integers(lo, hi)), draw)}/{draw(step)}"
    if kind == "last":
        return f"{draw(st.integers(0, 7))}L"
    if kind == "nth":
        return f"{token(index, draw(st.integers(0, 7)), draw)}#{draw(st.integers(1, 5))}"
    return kind  # L or LW


@st.composite
def cron_field(draw: st.DrawFn, index: int) -> str:
    # '*' often, so that realistic mostly-star expressions (and the AND/OR day rule) come up.
    if draw(st.integers(0, 3)) == 0:
        return "*"
    return ",".join(draw(st.lists(item(index), min_size=1, max_size=3)))


@st.composite
def expressions(draw: st.DrawFn) -> str:
    return " ".join(draw(cron_field(i)) for i in range(6))


starts = st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2040, 12, 31), timezones=st.just(UTC))


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(expr=expressions(), start=starts)
def test_agrees_with_cronsim(expr: str, start: datetime) -> None:
    try:
        schedule = parse_schedule(expr)
    except ScheduleError as exc:
        # The generator only writes valid syntax, so the one acceptable error is "can never fire";
        # cronsim then rejects it too or finds nothing within its 50-year horizon.
        assert "can never fire" in exc.problem, (expr, exc)
        try:
            found = next(CronSim(expr, start))
        except (CronSimError, StopIteration):
            return
        raise AssertionError(f"{expr!r}: torch says it never fires, cronsim found {found}") from exc

    sim = CronSim(expr, start)
    after = start
    for _ in range(3):
        try:
            expected: datetime | None = next(sim)
        except StopIteration:
            expected = None
        fire = next_fire(schedule, UTC, after)
        if expected is None:
            # cronsim gives up after 50 years without a match; torch searches further.
            assert fire is None or fire.at.year - after.year > 50, (expr, after, fire)
            return
        assert fire is not None, (expr, after, expected)
        assert fire.at == expected, (expr, after)
        assert fire.dst is None
        after = fire.at


# Where the two engines also agree under DST: cronsim evaluates six-field expressions on real time
# (no Debian-cron fix-ups), which is exactly torch's policy for schedules whose hour field is '*' or a
# step. Starts are drawn within a few hours of each zone's 2027 transitions.
DST_STARTS = [
    ("Europe/Berlin", "2027-03-28T00:00:00+01:00"),
    ("Europe/Berlin", "2027-10-31T00:30:00+02:00"),
    ("America/New_York", "2027-03-14T00:00:00-05:00"),
    ("America/New_York", "2027-11-07T00:00:00-04:00"),
    ("Australia/Lord_Howe", "2027-10-03T00:30:00+10:30"),
    ("Australia/Lord_Howe", "2027-04-04T00:30:00+11:00"),
]


@st.composite
def interval_hour_expressions(draw: st.DrawFn) -> str:
    fields = [draw(cron_field(i)) for i in range(6)]
    fields[2] = draw(st.sampled_from(["*", "*/1", "*/2", "*/3", "0-23/2", "1/2", "0/5"]))
    return " ".join(fields)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    expr=interval_hour_expressions(),
    where=st.sampled_from(DST_STARTS),
    offset=st.integers(0, 4 * 3600),
)
def test_agrees_with_cronsim_across_dst_for_interval_hours(expr: str, where: tuple[str, str], offset: int) -> None:
    try:
        schedule = parse_schedule(expr)
    except ScheduleError as exc:
        assert "can never fire" in exc.problem, (expr, exc)
        return
    assert not schedule.fixed_hour
    tz = ZoneInfo(where[0])
    after = datetime.fromtimestamp(datetime.fromisoformat(where[1]).timestamp() + offset, tz)
    sim = CronSim(expr, after)
    for _ in range(4):
        try:
            expected = next(sim)
        except StopIteration:  # nothing within cronsim's 50-year horizon (rare day combinations)
            return
        fire = next_fire(schedule, tz, after)
        assert fire is not None
        assert fire.at.timestamp() == expected.timestamp(), (expr, after.isoformat())
        after = fire.at
