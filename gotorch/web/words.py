"""Schedules in words, for the status page: "every 5 minutes", "on weekdays at 09:00".

Pure: a schedule string in, a phrase out (or None when the schedule is not one of the common
patterns; the page then shows only the expression as written). Only patterns whose phrase is exact
are put in words: `*/7` minutes is not "every 7 minutes" (it fires at :56 and again at :00), so it
is left to the expression.
"""

from __future__ import annotations

from functools import lru_cache

from gotorch.durations import format_duration
from gotorch.schedule import ScheduleError, parse_schedule

_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_NTH = ("first", "second", "third", "fourth", "fifth")
_UNITS = ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second"))


@lru_cache(maxsize=16384)
def describe(text: str) -> str | None:
    """`text` (a task's schedule) in words, or None when it is not a common pattern (or not valid)."""
    try:
        schedule = parse_schedule(text)
    except ScheduleError:
        return None
    if schedule.kind == "reboot":
        return "once, when the daemon starts"
    if schedule.kind == "every":
        return "every " + _interval(schedule.interval)
    second, minute, hour, dom, month, dow = schedule.expr.split()
    days = _days(dom, month, dow)
    if days is None:
        return None
    every_day, on_days = days
    times = _times_of_day(second, minute, hour)
    if times is not None:
        return f"{every_day} at {times}"
    often = _frequency(second, minute, hour)
    if often is None:
        return None
    return f"{often} {on_days}".rstrip()


def _interval(seconds: int) -> str:
    for size, unit in _UNITS:
        if seconds % size == 0:
            n = seconds // size
            return unit if n == 1 else f"{n} {unit}s"
    return format_duration(seconds)  # pragma: no cover - every int is a multiple of 1 s


def _numbers(field: str) -> list[int] | None:
    """The values of a field that is a plain list of numbers (`5`, `0,30`), else None."""
    parts = field.split(",")
    if not all(p.isdigit() for p in parts):
        return None
    return [int(p) for p in parts]


def _step(field: str, size: int) -> int | None:
    """n for `*/n` when n divides the field's `size` evenly (so the spacing is exact), else None."""
    if field == "*":
        return 1
    if field.startswith("*/") and field[2:].isdigit() and size % int(field[2:]) == 0:
        return int(field[2:])
    return None


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _clock(h: int, m: int, s: int) -> str:
    return f"{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")


def _times_of_day(second: str, minute: str, hour: str) -> str | None:
    """`03:00`, `08:00 and 20:00`: fixed times of day (at most four of them), else None."""
    s, m, h = _numbers(second), _numbers(minute), _numbers(hour)
    if s is None or m is None or h is None or len(s) != 1 or len(s) * len(m) * len(h) > 4:
        return None
    return _join([_clock(hh, mm, s[0]) for hh in sorted(h) for mm in sorted(m)])


def _frequency(second: str, minute: str, hour: str) -> str | None:
    """`every second`, `every 10 seconds`, `every 5 minutes`, `every hour at :30`, ...; None if irregular."""
    if minute == "*" and hour == "*":
        n = _step(second, 60)
        if n is not None:
            return "every " + _interval(n)
    s = _numbers(second)
    if s is None or len(s) != 1:
        return None
    at_second = f" at second {s[0]}" if s[0] else ""
    if hour == "*":
        n = _step(minute, 60)
        if n is not None:
            return "every " + _interval(60 * n) + at_second
    m = _numbers(minute)
    if m is None or len(m) > 4:
        return None
    n = _step(hour, 24)
    if n is not None:
        if m == [0] and not s[0]:
            return "every " + _interval(3600 * n)  # on the hour goes without saying
        return f"every {_interval(3600 * n)} at " + _join([f":{mm:02d}" + (f":{s[0]:02d}" if s[0] else "")
                                                            for mm in sorted(m)])
    hours = hour.split("-")
    if len(m) == 1 and len(hours) == 2 and all(x.isdigit() for x in hours):
        a, b = (int(x) for x in hours)
        return f"every hour from {_clock(a, m[0], s[0])} to {_clock(b, m[0], s[0])}"
    return None


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _days(dom: str, month: str, dow: str) -> tuple[str, str] | None:
    """How the day fields read: (before "at 03:00", after "every 5 minutes"); None if not common."""
    months = _numbers(month) if month != "*" else []
    if months is None:
        return None
    in_months = f" in {_join([_MONTHS[x - 1] for x in sorted(months)])}" if months else ""
    if dom == "*" and dow == "*":
        return ("every day" + in_months, in_months.strip())
    if dom == "*":
        return _weekdays(dow, in_months)
    if dow != "*":
        return None  # day-of-month OR day-of-week: no short phrase says that right
    if dom == "L":
        day = "the last day"
    elif dom == "LW":
        day = "the last weekday"
    elif dom.endswith("W") and dom[:-1].isdigit():
        day = f"the weekday nearest the {_ordinal(int(dom[:-1]))}"
    else:
        nums = _numbers(dom)
        if nums is None:
            return None
        if len(months) == 1 and len(nums) == 1:  # a date: "on 25 December"
            return (f"every year on {nums[0]} {_MONTHS[months[0] - 1]}", f"on {nums[0]} {_MONTHS[months[0] - 1]}")
        day = "the " + _join([_ordinal(x) for x in sorted(nums)])
    of = f" of {_join([_MONTHS[x - 1] for x in sorted(months)])}" if months else " of every month"
    return (f"on {day}{of}", f"on {day}{of}")


def _weekdays(dow: str, in_months: str) -> tuple[str, str] | None:
    if "#" in dow and "," not in dow:
        wd, n = dow.split("#")
        phrase = f"on the {_NTH[int(n) - 1]} {_DAYS[int(wd) % 7]} of the month{in_months}"
        return (phrase, phrase)
    if dow.endswith("L") and dow[:-1].isdigit():
        phrase = f"on the last {_DAYS[int(dow[:-1]) % 7]} of the month{in_months}"
        return (phrase, phrase)
    if dow == "1-5":
        return ("on weekdays" + in_months, "on weekdays" + in_months)
    nums = _numbers(dow)
    if nums is None:
        return None
    days = sorted({x % 7 for x in nums}, key=lambda d: (d == 0, d))  # Monday first, Sunday last
    if days == [6, 0]:
        return ("every Saturday and Sunday" + in_months, "at weekends" + in_months)
    names = [_DAYS[d] for d in days]
    return ("every " + _join(names) + in_months, "on " + _join([n + "s" for n in names]) + in_months)
