"""A cron expression compiled for the search: which seconds of a day and which days of a month match.

Pure integer arithmetic on "wall times" (local seconds: seconds since 1970-01-01 00:00 on a zone's
own clock, an integer stand-in for a naive local datetime); gotorch.fire_times maps them to
instants under the DST policy.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date
from typing import Final, NamedTuple

from gotorch.pickling import quick_pickle

EPOCH_ORD: Final = date(1970, 1, 1).toordinal()
_WEEKS_PATTERN: Final = sum(1 << (7 * k) for k in range(5))  # replicate a 7-bit week 5 times
# Keeps every probe (up to tz_offsets.SHIFT past a fire) inside datetime's range.
MAX_YEAR: Final = 9998


class Days(NamedTuple):
    """Everything needed to decide which days of a month match."""

    dom_mask: int  # bit d set: day-of-month d listed
    last: bool  # day-of-month L
    last_weekday: bool  # day-of-month LW
    nearest: tuple[int, ...]  # day-of-month nW
    dow_mask: int  # bit w set: weekday w listed (Sunday = 0)
    nth: tuple[tuple[int, int], ...]  # (weekday, n) for w#n
    last_dow: tuple[int, ...]  # weekdays written wL
    both: bool  # True: a day must match day-of-month AND day-of-week
    every_day: bool  # shortcut: every day of every month matches


@quick_pickle
@dataclass(frozen=True, slots=True)
class CronSpec:
    """A validated cron expression in the form the search loop wants."""

    next_sec: tuple[int, ...]  # next_sec[s]: smallest allowed second >= s, or -1
    next_min: tuple[int, ...]
    next_hour: tuple[int, ...]
    first_tod: int  # earliest matching second of a day
    hours_mask: int
    months: int  # bit m set: month m allowed
    days: Days
    fixed_hour: bool


def month_days(days: Days, y: int, m: int) -> int:
    """Bitmask of the matching days (bit d = day d) of month ``m`` of year ``y``."""
    first_mon0, nd = calendar.monthrange(y, m)
    full = (1 << (nd + 1)) - 2
    if days.every_day:
        return full
    first = (first_mon0 + 1) % 7  # weekday of the 1st, Sunday = 0
    dom = days.dom_mask
    if days.last:
        dom |= 1 << nd
    if days.last_weekday:
        last_wd = (first + nd - 1) % 7
        dom |= 1 << (nd - 1 if last_wd == 6 else nd - 2 if last_wd == 0 else nd)
    for day in days.nearest:
        if day <= nd:
            wd = (first + day - 1) % 7
            if wd == 6:  # Saturday: the Friday before, unless that is last month
                day = day - 1 if day > 1 else day + 2
            elif wd == 0:  # Sunday: the Monday after, unless that is next month
                day = day + 1 if day < nd else day - 2
            dom |= 1 << day
    dow_mask = days.dow_mask
    week = ((dow_mask >> first) | (dow_mask << (7 - first))) & 0x7F  # bit i: weekday of day i+1
    dow = (week * _WEEKS_PATTERN) << 1
    for wd, n in days.nth:
        day = 1 + (wd - first) % 7 + 7 * (n - 1)
        if day <= nd:
            dow |= 1 << day
    if days.last_dow:
        last_wd = (first + nd - 1) % 7
        for wd in days.last_dow:
            dow |= 1 << (nd - (last_wd - wd) % 7)
    return (dom & dow if days.both else dom | dow) & full


def next_day(spec: CronSpec, y: int, m: int, d: int, max_year: int) -> tuple[int, int, int] | None:
    """First matching (year, month, day) on or after the given date, up to ``max_year``."""
    months = spec.months
    days = spec.days
    while y <= max_year:
        if months >> m & 1:
            mask = month_days(days, y, m) >> d
            if mask:
                return y, m, d + (mask & -mask).bit_length() - 1
        d = 1
        m += 1
        if m == 13:
            m = 1
            y += 1
    return None


def next_tod(spec: CronSpec, sod: int) -> int:
    """First matching second-of-day >= ``sod``, or -1 if none is left today."""
    nh, nm, ns = spec.next_hour, spec.next_min, spec.next_sec
    hour, rem = divmod(sod, 3600)
    minute, second = divmod(rem, 60)
    if nh[hour] == hour:
        if nm[minute] == minute:
            s = ns[second]
            if s >= 0:
                return hour * 3600 + minute * 60 + s
            mm = nm[minute + 1]
        else:
            mm = nm[minute]
        if mm >= 0:
            return hour * 3600 + mm * 60 + ns[0]
        h = nh[hour + 1]
    else:
        h = nh[hour]
    if h >= 0:
        return h * 3600 + nm[0] * 60 + ns[0]
    return -1


def next_wall(spec: CronSpec, ws: int) -> int | None:
    """Smallest matching wall time >= ``ws`` (local seconds), or None before year 9999."""
    days, sod = divmod(ws, 86400)
    day = date.fromordinal(days + EPOCH_ORD)
    y, m, d = day.year, day.month, day.day
    if spec.months >> m & 1 and month_days(spec.days, y, m) >> d & 1:
        tod = next_tod(spec, sod)
        if tod >= 0:
            return days * 86400 + tod
    found = next_day(spec, y, m, d + 1, min(y + 400, MAX_YEAR))
    if found is None:
        return None
    return (date(*found).toordinal() - EPOCH_ORD) * 86400 + spec.first_tod
