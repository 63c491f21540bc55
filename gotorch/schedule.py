"""Schedules: parsing, validation and next-fire computation.

This module is pure: nothing here reads the clock or does I/O. The fire times of a schedule are a
function of (schedule, timezone, instant) alone, so the daemon, ``torch validate`` and the tests all
get the same answers, and results may be cached freely.

Syntax
------
A cron schedule has exactly six fields, **seconds first**::

    second minute hour day-of-month month day-of-week

Each field is a comma-separated list of items: ``*``, a value, a range ``a-b``, or a step ``*/n``,
``a-b/n`` or ``a/n`` (``a/n`` means ``a``, ``a+n``, ... up to the field's maximum). Months and weekdays
also take names (``JAN``-``DEC``, ``SUN``-``SAT``, any case). Day-of-week ``0`` and ``7`` are both
Sunday. A range written ``a-a`` means just ``a``, and so does ``a-a/n``. Ranges must go upwards
(``22-2`` is rejected with a hint to write ``22-23,0-2``). A step may not exceed the number of values
in its field: ``*/90`` in the seconds field is rejected with a hint towards ``@every 90s``.

Day fields also take:

* ``?`` -- the same as ``*`` (day-of-month and day-of-week only);
* day-of-month ``L`` (last day of the month), ``LW`` (last weekday, Monday-Friday, of the month) and
  ``15W`` (the weekday nearest the 15th, never crossing into another month; a month without a 15th
  -- or a 31st for ``31W`` -- has no such day, exactly as a plain ``31`` does);
* day-of-week ``5L`` / ``FRIL`` (the last Friday of the month) and ``5#2`` / ``FRI#2`` (the second
  Friday; ``#1`` to ``#5``).

Day-of-month and day-of-week combine as in Vixie/Debian cron (and cronsim): when either field
*starts with* ``*`` (or ``?``), a day must match both fields; otherwise it must match at least one of
them. So ``0 0 0 */2 * MON`` fires on odd-numbered days that are Mondays, while ``0 0 0 1,15 * MON``
fires on the 1st, the 15th and every Monday. (croniter on its own would OR the ``*/2`` case; we do
the day matching ourselves and use croniter only to expand field values.)

Aliases (any case): ``@yearly``/``@annually`` = ``0 0 0 1 1 *``, ``@monthly`` = ``0 0 0 1 * *``,
``@weekly`` = ``0 0 0 * * 0``, ``@daily``/``@midnight`` = ``0 0 0 * * *``, ``@hourly`` =
``0 0 * * * *``, ``@minutely`` = ``0 * * * * *``. ``@reboot`` fires once when the daemon starts and
has no next fire time. ``@every DURATION`` fires at a fixed interval: the duration is a plain number
of seconds (``90``) or units in the order d, h, m, s (``90s``, ``5m``, ``1h30m``, ``2h``, ``1d``,
``1d12h``); ``d`` is exactly 86,400 seconds. It must be at least one second (and at most 3650 days).
An ``@every`` schedule fires at every instant whose Unix time is a multiple of the interval: it is
aligned to the epoch rather than to when torch started, so it needs no state, survives reloads
unchanged and is identical on every host (``@every 1d`` therefore fires at 00:00 UTC, whatever the
task's timezone).

DST policy
----------
Cron schedules are evaluated on the task timezone's wall clock.

1. A fixed time that does not exist (the spring-forward gap) runs once, at the first instant after
   the gap -- the transition itself. Several nonexistent times (02:00, 02:10, ...) collapse into that
   single run, which also absorbs a regular fire at the same instant. Such fires carry ``dst="gap"``.
2. A fixed time that happens twice (fall-back) runs once, at its first occurrence.
3. Schedules whose hour field is ``*``, contains a step (``*/n``, ``a-b/n``, ``a/n``) or covers all 24
   hours keep their real-time spacing instead: wall times in the gap are skipped, and the repeated hour
   fires on both passes (second-pass fires carry ``dst="repeat"``) because it really passes twice.

The gap or the repeat is not always an hour: whole calendar days have been skipped (Pacific/Apia
went from -10 to +14 at the end of 2011-12-29, so 2011-12-30 never happened there; a daily 09:00
runs once, at 2011-12-31 00:00) and repeated (Alaska in 1867, Samoa in 1892), and the policy is the
same whatever the size.

Fires are always returned in order of real instants. The search assumes, as every zone of the tz
database satisfies (tests/test_dst.py checks the installed copy), that a zone's UTC offset changes
by at most 26 hours at a time, never twice within 26 hours, and never ends up more than 26 hours
above an offset it had earlier. (The largest changes are 24 hours; two changes are always days apart.)
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Final, Literal, NamedTuple, cast

from gotorch.cronlib import CroniterError, croniter
from gotorch.durations import parse_duration
from gotorch.pickling import quick_pickle

__all__ = [
    "Fire",
    "Schedule",
    "ScheduleError",
    "dst_warnings",
    "fires",
    "next_fire",
    "next_fire_ts",
    "parse_schedule",
    "repeats_at_least_hourly",
]

Dst = Literal["gap", "repeat"]


class ScheduleError(ValueError):
    """A schedule torch cannot use: ``problem`` says what is wrong, ``hint`` how to fix it."""

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(f"{problem}; {hint}")
        self.problem = problem
        self.hint = hint

    def __reduce__(self) -> tuple[type[ScheduleError], tuple[str, str]]:
        # The default reduce would call ScheduleError(message) and fail; keep both parts.
        return (ScheduleError, (self.problem, self.hint))


@dataclass(frozen=True, slots=True)
class Fire:
    """One fire time: ``at`` is aware and expressed in the task's timezone."""

    at: datetime
    dst: Dst | None = None


class _Days(NamedTuple):
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
class _CronSpec:
    """A validated cron expression in the form the search loop wants."""

    next_sec: tuple[int, ...]  # next_sec[s]: smallest allowed second >= s, or -1
    next_min: tuple[int, ...]
    next_hour: tuple[int, ...]
    first_tod: int  # earliest matching second of a day
    hours_mask: int
    months: int  # bit m set: month m allowed
    days: _Days
    fixed_hour: bool


@quick_pickle
@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule. Build it with :func:`parse_schedule`.

    ``expr`` is the normalised six-field expression (cron and aliases), ``interval`` the period in
    seconds (``@every``), ``fixed_hour`` whether the DST rules for fixed times apply (see the module
    docstring).
    """

    text: str
    kind: Literal["cron", "every", "reboot"]
    expr: str = ""
    interval: int = 0
    fixed_hour: bool = False
    spec: _CronSpec | None = field(default=None, repr=False, compare=False)


# --------------------------------------------------------------------------------------------------
# Parsing

_FIELD_NAMES: Final = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
# Day-of-week runs 0-7 (7 is Sunday again) so that "*/n" and "a/n" step exactly as Vixie cron and
# cronsim do.
_BOUNDS: Final = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW = range(6)
# Where each of our fields sits in croniter's internal (minute-first, seconds-last) result.
_CRONITER_POS: Final = (5, 0, 1, 2, 3, 4)
_MONTHS: Final = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTH_NAMES: Final = {n: i + 1 for i, n in enumerate(_MONTHS)}
_DOW_NAMES: Final = {n: i for i, n in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_FIELDS_HINT: Final = "second minute hour day-of-month month day-of-week"

_ALIASES: Final = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
    "@minutely": "0 * * * * *",
}

_RANGE_RE: Final = re.compile(r"([0-9A-Z]+)(?:-([0-9A-Z]+))?(?:/(.*))?", re.IGNORECASE)
_STAR_STEP_RE: Final = re.compile(r"\*/(.*)")
_NEAREST_RE: Final = re.compile(r"([0-9]+)W", re.IGNORECASE)
_NTH_RE: Final = re.compile(r"([0-9A-Z]+)#(.*)", re.IGNORECASE)
_DIGITS_L_RE: Final = re.compile(r"[0-9]+L", re.IGNORECASE)
_MAX_EVERY: Final = 3650 * 86400


def _croniter_expand(expr: str) -> list[list[int | str]]:
    """Expand a six-field, seconds-first expression with croniter: the one place we call it.

    Always seconds first; callers hand it only forms croniter gets right (no ``a-a``, no day-of-week
    7 in ranges, no L/W/#), because croniter reads ``a-a`` as the whole field.
    """
    expanded, _nth = croniter.expand(expr, second_at_beginning=True)
    return cast(list[list[int | str]], expanded)


@lru_cache(maxsize=4096)
def _expand_values(index: int, text: str) -> int:
    """Bitmask of the values that the plain items ``text`` select in field ``index``."""
    parts = ["*"] * 6
    parts[index] = text
    try:
        values = _croniter_expand(" ".join(parts))[_CRONITER_POS[index]]
    except CroniterError as exc:  # our normalisation should make this unreachable
        raise ScheduleError(f"{_FIELD_NAMES[index]}: cannot expand '{text}'", str(exc)) from exc
    lo, hi = _BOUNDS[index]
    if "*" in values:
        return _bits(range(lo, (6 if index == _DOW else hi) + 1))
    return _bits(int(v) for v in values)


def _bits(values: Iterable[int]) -> int:
    mask = 0
    for v in values:
        mask |= 1 << v
    return mask


class _Field(NamedTuple):
    mask: int
    norm: str
    star: bool  # the field starts with * or ? (decides AND/OR of the day fields)
    interval_like: bool  # contains * or a step (decides the DST rule for the hour field)
    last: bool = False
    last_weekday: bool = False
    nearest: tuple[int, ...] = ()
    nth: tuple[tuple[int, int], ...] = ()
    last_dow: tuple[int, ...] = ()


def _field_error(index: int, problem: str, hint: str) -> ScheduleError:
    return ScheduleError(f"{_FIELD_NAMES[index]}: {problem}", hint)


def _allowed_hint(index: int) -> str:
    lo, hi = _BOUNDS[index]
    if index == _MONTH:
        return f"months are {lo}-{hi} or JAN-DEC"
    if index == _DOW:
        return "weekdays are 0-7 (0 and 7 are Sunday) or SUN-SAT"
    return f"{_FIELD_NAMES[index]} values are {lo}-{hi}"


def _value(index: int, token: str) -> int:
    """One number or name of field ``index``, range-checked."""
    lo, hi = _BOUNDS[index]
    if token.isdigit():
        v = int(token)
        if not lo <= v <= hi:
            raise _field_error(index, f"{v} is out of range {lo}-{hi}", _allowed_hint(index))
        return v
    names = _MONTH_NAMES if index == _MONTH else _DOW_NAMES if index == _DOW else None
    if names is not None and token.upper() in names:
        return names[token.upper()]
    if names is None:
        raise _field_error(index, f"'{token}' is not a number", _allowed_hint(index))
    what = "a month" if index == _MONTH else "a weekday"
    raise _field_error(index, f"'{token}' is not {what} name or number", _allowed_hint(index))


def _step(index: int, item: str, text: str) -> int:
    if not text.isdigit():
        raise _field_error(index, f"step '{text}' in '{item}' is not a number", "write a step like */5")
    step = int(text)
    if step < 1:
        raise _field_error(index, f"step {step} in '{item}' must be >= 1", "write a step like */5")
    lo, hi = _BOUNDS[index]
    size = hi - lo + 1 if index != _DOW else 7
    if step > size:
        hint = f"a {_FIELD_NAMES[index]} step can be at most {size}"
        if index in (_SECOND, _MINUTE, _HOUR):
            hint += "; for a longer interval use @every (e.g. @every 90s)"
        raise _field_error(index, f"step {step} in '{item}' is larger than the field", hint)
    return step


def _plain_parts(index: int, a: int, b: int, step: int) -> list[str]:
    """croniter-safe items selecting a, a+step, ... <= b in field ``index``."""
    if index == _DOW and b == 7:
        # croniter folds 7 to 0 before building ranges; hand it 0-6 and add Sunday ourselves.
        parts = _plain_parts(index, a, 6, step) if a <= 6 else []
        if (7 - a) % step == 0:
            parts.append("0")
        return parts
    if a == b:
        return [str(a)]  # croniter would read a-a as the whole field
    return [f"{a}-{b}" if step == 1 else f"{a}-{b}/{step}"]


@lru_cache(maxsize=16384)
def _parse_field(index: int, raw: str) -> _Field:
    """Validate and normalise one field; the expansion of plain items is croniter's."""
    lo, hi = _BOUNDS[index]
    plain: list[str] = []
    norm: list[str] = []
    interval_like = False
    last = last_weekday = False
    nearest: list[int] = []
    nth: list[tuple[int, int]] = []
    last_dow: list[int] = []
    for orig in raw.split(","):
        # Match on the upper-cased item, but quote what the user wrote.
        item = orig.upper()
        if not item:
            raise _field_error(index, f"empty item in '{raw}'", "separate values with single commas")
        if item in ("*", "?"):
            if item == "?" and index not in (_DOM, _DOW):
                raise _field_error(index, "'?' is only allowed in day-of-month and day-of-week", "use '*'")
            interval_like = True
            plain.append("*")
            norm.append("*")
            continue
        m = _STAR_STEP_RE.fullmatch(orig)
        if m:
            step = _step(index, orig, m.group(1))
            interval_like = True
            plain.extend(_plain_parts(index, lo, hi, step) if step > 1 else ["*"])
            norm.append(f"*/{step}" if step > 1 else "*")
            continue
        if index == _DOM and item in ("L", "LW"):
            last = last or item == "L"
            last_weekday = last_weekday or item == "LW"
            norm.append(item)
            continue
        if index == _DOM and (m := _NEAREST_RE.fullmatch(orig)):
            day = _value(index, m.group(1))
            nearest.append(day)
            norm.append(f"{day}W")
            continue
        if index == _DOW and len(item) > 1 and item.endswith("L"):
            wd = _value(index, orig[:-1]) % 7
            last_dow.append(wd)
            norm.append(f"{wd}L")
            continue
        if index == _DOW and (m := _NTH_RE.fullmatch(orig)):
            wd = _value(index, m.group(1)) % 7
            n_text = m.group(2)
            if not n_text.isdigit() or not 1 <= int(n_text) <= 5:
                raise _field_error(
                    index,
                    f"'{orig}': the number after '#' must be 1-5",
                    "write e.g. 5#2 for the second Friday of the month",
                )
            nth.append((wd, int(n_text)))
            norm.append(f"{wd}#{int(n_text)}")
            continue
        if index == _DOW and item == "L":
            raise _field_error(
                index,
                "'L' alone is ambiguous",
                "write 5L for the last Friday of the month, or put L in day-of-month for its last day",
            )
        if (index != _DOM and item in ("L", "LW")) or (index == _DOM and _DIGITS_L_RE.fullmatch(orig)):
            raise _field_error(index, f"'{orig}' is not allowed here", _syntax_hint(index))
        if index == _DOM and "W" in item:
            raise _field_error(index, f"cannot read '{orig}'", "W needs one day number before it, e.g. 15W")
        m = _RANGE_RE.fullmatch(orig)
        if m is None:
            raise _field_error(index, f"cannot read '{orig}'", _syntax_hint(index))
        a = _value(index, m.group(1))
        b = _value(index, m.group(2)) if m.group(2) is not None else None
        step_text = m.group(3)
        if b is not None and b < a:
            raise _field_error(
                index,
                f"range '{orig}' goes backwards",
                f"ranges must go upwards; write {a}-{hi},{lo}-{b}",
            )
        if step_text is None:
            plain.extend(_plain_parts(index, a, a if b is None else b, 1))
            norm.append(str(a) if b is None or b == a else f"{a}-{b}")
            continue
        step = _step(index, orig, step_text)
        interval_like = True
        end = hi if b is None else b
        plain.extend(_plain_parts(index, a, end, step))
        # a-a/n is just a: say so in the normal form rather than carry a step that never applies.
        norm.append(str(a) if end == a else f"{a}-{end}/{step}")
    if "*" in plain:
        # A '*' item selects the whole field, whatever else the list says.
        mask = _bits(range(lo, (6 if index == _DOW else hi) + 1))
    elif all(p.isdigit() for p in plain):
        # Lone values need no expanding; skipping croniter here keeps a cold parse cheap.
        mask = _bits(int(p) % 7 if index == _DOW else int(p) for p in plain)
    else:
        mask = _expand_values(index, ",".join(plain))
    return _Field(
        mask=mask,
        norm=",".join(norm),
        star=raw[0] in "*?",
        interval_like=interval_like,
        last=last,
        last_weekday=last_weekday,
        nearest=tuple(sorted(set(nearest))),
        nth=tuple(sorted(set(nth))),
        last_dow=tuple(sorted(set(last_dow))),
    )


def _syntax_hint(index: int) -> str:
    base = "use *, a value, a range a-b, a list a,b or a step */n, a-b/n, a/n"
    if index == _DOM:
        return base + "; day-of-month also takes ?, L (last day), LW (last weekday) and nW (e.g. 15W)"
    if index == _DOW:
        return base + "; day-of-week also takes ?, names SUN-SAT, 5L (last Friday) and 5#2 (second Friday)"
    if index == _MONTH:
        return base + "; months also take names JAN-DEC"
    return base


@lru_cache(maxsize=1024)
def _next_table(mask: int, size: int) -> tuple[int, ...]:
    """table[i] = smallest allowed value >= i (or -1); table[size] = -1 to simplify carries."""
    table = [-1] * (size + 1)
    nxt = -1
    for v in range(size - 1, -1, -1):
        if mask >> v & 1:
            nxt = v
        table[v] = nxt
    return tuple(table)


def _build_spec(fields: list[_Field]) -> _CronSpec:
    sec, minute, hour, dom, month, dow = fields
    dom_full = dom.mask == _bits(range(1, 32))
    dow_full = dow.mask == 0x7F
    both = dom.star or dow.star
    every_day = (dom_full and dow_full) if both else (dom_full or dow_full)
    days = _Days(
        dom_mask=dom.mask,
        last=dom.last,
        last_weekday=dom.last_weekday,
        nearest=dom.nearest,
        dow_mask=dow.mask,
        nth=dow.nth,
        last_dow=dow.last_dow,
        both=both,
        every_day=every_day,
    )
    ns, nm, nh = _next_table(sec.mask, 60), _next_table(minute.mask, 60), _next_table(hour.mask, 24)
    all_hours = hour.mask == (1 << 24) - 1
    return _CronSpec(
        next_sec=ns,
        next_min=nm,
        next_hour=nh,
        first_tod=nh[0] * 3600 + nm[0] * 60 + ns[0],
        hours_mask=hour.mask,
        months=month.mask,
        days=days,
        # "0-23" is every hour, not a fixed time: treat it like "*" so real spacing is kept.
        fixed_hour=not hour.interval_like and not all_hours,
    )


def _parse_every(text: str, arg: str) -> Schedule:
    spec = "".join(arg.split())
    hint = "write the interval like 90s, 5m, 1h30m, 2h or 1d, or as a plain number of seconds"
    if not spec:
        raise ScheduleError("@every needs an interval", hint)
    try:
        exact = parse_duration(spec)
    except ValueError:
        raise ScheduleError(f"@every: cannot read '{arg.strip()}' as an interval", hint) from None
    seconds = int(exact)
    if seconds != exact:
        raise ScheduleError(f"@every {arg.strip()}: the interval must be a whole number of seconds", hint)
    if seconds < 1:
        raise ScheduleError(f"@every {arg.strip()}: the interval must be at least 1 second", hint)
    if seconds > _MAX_EVERY:
        raise ScheduleError(
            f"@every {arg.strip()}: the interval is longer than 3650 days",
            "use a cron expression for rare events, e.g. @yearly",
        )
    return Schedule(text=text, kind="every", interval=seconds)


def _never_fires(spec: _CronSpec) -> bool:
    # Whether a day matches depends only on the year's type (leap or not) and the weekday of its
    # 1 January; 2000-2027 contains all fourteen types, so no match there means no match ever.
    return _next_day(spec, 2000, 1, 1, 2027) is None


@lru_cache(maxsize=16384)
def parse_schedule(text: str) -> Schedule:
    """Parse and fully validate a schedule string (including "can never fire").

    Raises :class:`ScheduleError` naming the field at fault and how to fix it.
    """
    stripped = text.strip()
    if not stripped:
        raise ScheduleError(
            "the schedule is empty",
            'write six fields, seconds first, e.g. "0 */5 * * * *", or an alias like @daily',
        )
    if stripped.startswith("@"):
        word, *more = stripped.split(None, 1)
        rest = more[0] if more else ""
        alias = word.lower()
        if alias == "@every":
            return _parse_every(text, rest)
        if rest.strip():
            raise ScheduleError(f"'{word}' takes no argument (got '{rest.strip()}')", f"write just {alias}")
        if alias == "@reboot":
            return Schedule(text=text, kind="reboot")
        if alias not in _ALIASES:
            raise ScheduleError(
                f"unknown schedule alias '{word}'",
                "use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, @minutely, "
                "@reboot or @every <interval>",
            )
        parts = _ALIASES[alias].split()
    else:
        parts = stripped.split()
    if len(parts) == 5:
        raise ScheduleError(
            f"torch needs six fields with seconds first ({_FIELDS_HINT}); this has five",
            f'to run at second 0, write "0 {" ".join(parts)}"',
        )
    if len(parts) == 7:
        raise ScheduleError(
            "years (a 7th field) are not supported",
            f"drop the year; torch takes six fields: {_FIELDS_HINT}",
        )
    if len(parts) != 6:
        raise ScheduleError(
            f"torch needs exactly six fields ({_FIELDS_HINT}); this has {len(parts)}",
            'write e.g. "0 */5 * * * *" (every five minutes) or an alias like @daily',
        )
    fields = [_parse_field(i, p) for i, p in enumerate(parts)]
    spec = _build_spec(fields)
    expr = " ".join(f.norm for f in fields)
    if _never_fires(spec):
        raise ScheduleError(
            f"'{stripped}' can never fire: no date matches its day-of-month, month and day-of-week",
            "February has at most 29 days and April, June, September and November have 30; "
            "check the day fields and the month",
        )
    return Schedule(text=text, kind="cron", expr=expr, fixed_hour=spec.fixed_hour, spec=spec)


# --------------------------------------------------------------------------------------------------
# Wall-clock search. Wall times are "local seconds": seconds since 1970-01-01 00:00 on the zone's own
# clock, i.e. an integer stand-in for a naive local datetime.

_EPOCH_ORD: Final = date(1970, 1, 1).toordinal()
_SECOND_TD: Final = timedelta(seconds=1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_WEEKS_PATTERN: Final = sum(1 << (7 * k) for k in range(5))  # replicate a 7-bit week 5 times
_MAX_YEAR: Final = 9998  # keeps every probe (up to _SHIFT past a fire) inside datetime's range
_MAX_TS: Final = int((datetime(_MAX_YEAR, 12, 31, tzinfo=UTC) - _EPOCH).total_seconds())


def _month_days(days: _Days, y: int, m: int) -> int:
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


def _next_day(spec: _CronSpec, y: int, m: int, d: int, max_year: int) -> tuple[int, int, int] | None:
    """First matching (year, month, day) on or after the given date, up to ``max_year``."""
    months = spec.months
    days = spec.days
    while y <= max_year:
        if months >> m & 1:
            mask = _month_days(days, y, m) >> d
            if mask:
                return y, m, d + (mask & -mask).bit_length() - 1
        d = 1
        m += 1
        if m == 13:
            m = 1
            y += 1
    return None


def _next_tod(spec: _CronSpec, sod: int) -> int:
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


def _next_wall(spec: _CronSpec, ws: int) -> int | None:
    """Smallest matching wall time >= ``ws`` (local seconds), or None before year 9999."""
    days, sod = divmod(ws, 86400)
    day = date.fromordinal(days + _EPOCH_ORD)
    y, m, d = day.year, day.month, day.day
    if spec.months >> m & 1 and _month_days(spec.days, y, m) >> d & 1:
        tod = _next_tod(spec, sod)
        if tod >= 0:
            return days * 86400 + tod
    found = _next_day(spec, y, m, d + 1, min(y + 400, _MAX_YEAR))
    if found is None:
        return None
    return (date(*found).toordinal() - _EPOCH_ORD) * 86400 + spec.first_tod


# --------------------------------------------------------------------------------------------------
# Mapping wall times to instants.

# The bound the search relies on (see the module docstring): no single offset change is larger, no
# two changes are closer, and no offset lies further above an earlier one. It is not an hour or two:
# Pacific/Apia skipped 24 hours in 2011, and its offset has been both -11:30 (1911-1950) and +14
# (2011-2021), 25.5 hours apart.
_SHIFT: Final = 26 * 3600
_NEVER: Final = -(1 << 62)
# Probing _SHIFT before an instant in year 1 would leave datetime's range; no zone changes offset
# that early, so the offset a day later stands in.
_MIN_PROBE: Final = int((datetime(1, 1, 2, tzinfo=UTC) - _EPOCH).total_seconds())


def _off(tz: tzinfo, ts: int) -> int:
    """UTC offset of ``tz`` at instant ``ts``, in seconds."""
    if ts < _MIN_PROBE:
        ts = _MIN_PROBE
    off = datetime.fromtimestamp(ts, tz).utcoffset()
    return 0 if off is None else off // _SECOND_TD


def _first_change(tz: tzinfo, lo: int, hi: int, o_lo: int) -> int:
    """Smallest instant in (lo, hi] whose offset differs from ``o_lo`` (the offset at lo)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _off(tz, mid) == o_lo:
            lo = mid
        else:
            hi = mid
    return hi


# Transitions already located: (id(zone), instant // _SHIFT) -> (zone, instant). Every call within
# _SHIFT of a transition sees it in a probe window; remembering it spares a bisection over a day-wide
# window each time (a 1/s task would otherwise re-bisect it for 26 hours). Keyed by id because some
# tzinfo classes (dateutil's) are unhashable; the entry keeps its zone alive, so the id stays its own.
# Bounded by clearing when full.
_located: dict[tuple[int, int], tuple[tzinfo, int]] = {}
_LOCATED_MAX: Final = 1024


def _change_in(tz: tzinfo, lo: int, hi: int, o_lo: int) -> int:
    """The offset change in (lo, hi], where hi - lo <= _SHIFT and the offset at hi is not ``o_lo``.

    There is exactly one (changes are more than _SHIFT apart), so a remembered change in the window is it.
    """
    for k in (hi // _SHIFT, lo // _SHIFT):
        found = _located.get((id(tz), k))
        if found is not None and found[0] is tz and lo < found[1] <= hi:
            return found[1]
    t = _first_change(tz, lo, hi, o_lo)
    if len(_located) >= _LOCATED_MAX:
        _located.clear()
    _located[(id(tz), t // _SHIFT)] = (tz, t)
    return t


def _next_cron(spec: _CronSpec, tz: tzinfo, after: int) -> tuple[int, Dst | None] | None:
    """First fire strictly after instant ``after`` under the DST policy."""
    u = after + 1  # earliest instant still to consider
    if isinstance(tz, timezone):  # fixed offset: wall clock and instants move together
        o = _off(tz, u)
        w = _next_wall(spec, u + o)
        return None if w is None else (w - o, None)
    # Walk constant-offset segments. Inside one, wall time and instant move together, so the first
    # matching wall time at or after u's is the first fire -- unless an offset change is near, which
    # we locate exactly by bisection and step across.
    while True:
        if u > _MAX_TS:
            return None
        o = _off(tz, u)
        o_before = _off(tz, u - _SHIFT)
        rep_end = _NEVER
        if o_before != o:
            p = _change_in(tz, u - _SHIFT, u, o_before)
            if o_before > o:
                # Wall times below rep_end were already lived through before this fall-back.
                rep_end = p + o_before
            elif p == u and spec.fixed_hour:
                # u is exactly a spring-forward instant: it is the run of any time in the gap.
                w = _next_wall(spec, p + o_before)
                if w is not None and w < p + o:
                    return p, "gap"
        o_after = _off(tz, u + _SHIFT)
        t = _change_in(tz, u, u + _SHIFT, o) if o_after != o else None
        lo_wall = u + o
        if spec.fixed_hour and rep_end > lo_wall:
            lo_wall = rep_end  # a fixed time runs only at its first occurrence
        w = _next_wall(spec, lo_wall)
        if w is None:
            return None
        c = w - o
        if t is None:
            if c <= u + _SHIFT:
                return c, ("repeat" if w < rep_end else None)
            if _off(tz, c - _SHIFT) == o and _off(tz, c) == o:
                # No offset change within _SHIFT before c, so c really shows wall w. No instant
                # before c - _SHIFT can show w or later either: its offset would have to be more than
                # _SHIFT above o, which is later at c.
                return c, None
            # The same argument: no fire before c - _SHIFT. Any change is located from there.
            u = max(u + _SHIFT + 1, c - _SHIFT)
            continue
        if c < t:
            return c, ("repeat" if w < rep_end else None)
        o_next = _off(tz, t)
        if spec.fixed_hour and o_next > o and w < t + o_next:
            return t, "gap"  # the wall time fell into the spring-forward gap
        u = t


def _epoch_floor(dt: datetime) -> int:
    """Unix seconds of an aware datetime, floored exactly (no float rounding)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"need a timezone-aware datetime, got naive {dt.isoformat()}")
    return (dt - _EPOCH) // _SECOND_TD


def _next_ts(schedule: Schedule, tz: tzinfo, after: int) -> tuple[int, Dst | None] | None:
    if schedule.kind == "cron":
        return _next_cron(cast(_CronSpec, schedule.spec), tz, after)
    if schedule.kind == "every":
        k = schedule.interval
        nxt = (after // k + 1) * k
        return None if nxt > _MAX_TS else (nxt, None)
    return None  # @reboot has no next fire


def next_fire(schedule: Schedule, tz: tzinfo, after: datetime) -> Fire | None:
    """The first fire strictly after ``after`` (any aware datetime), in ``tz``; None for @reboot.

    Raises ValueError for a naive ``after``.
    """
    found = _next_ts(schedule, tz, _epoch_floor(after))
    if found is None:
        return None
    return Fire(at=datetime.fromtimestamp(found[0], tz), dst=found[1])


def fires(schedule: Schedule, tz: tzinfo, after: datetime, n: int) -> list[Fire]:
    """The next ``n`` fires strictly after ``after``, in strictly increasing order of instants."""
    out: list[Fire] = []
    ts = _epoch_floor(after)
    while len(out) < n:
        found = _next_ts(schedule, tz, ts)
        if found is None:
            break
        ts = found[0]
        out.append(Fire(at=datetime.fromtimestamp(ts, tz), dst=found[1]))
    return out


def next_fire_ts(schedule: Schedule, tz: tzinfo, after_ts: int) -> int | None:
    """Fast path of :func:`next_fire` on Unix seconds: first fire time strictly after ``after_ts``."""
    found = _next_ts(schedule, tz, after_ts if isinstance(after_ts, int) else math.floor(after_ts))
    return None if found is None else found[0]


def repeats_at_least_hourly(schedule: Schedule) -> bool:
    """True when consecutive fires are never more than one hour apart.

    @every: interval <= 3600 s. Cron: every hour of every day has a fire (then the gap between the
    last fire of one hour and the first of the next is at most an hour, and schedules covering all
    24 hours keep real-time spacing across DST). @reboot: False.
    """
    if schedule.kind == "every":
        return schedule.interval <= 3600
    if schedule.kind == "reboot" or schedule.spec is None:
        return False
    spec = schedule.spec
    return spec.hours_mask == (1 << 24) - 1 and spec.months == 0x1FFE and spec.days.every_day


# --------------------------------------------------------------------------------------------------
# DST warnings for `torch validate`.


@lru_cache(maxsize=512)
def _year_transitions(tz: tzinfo, year: int) -> tuple[tuple[int, int, int], ...]:
    """(instant, offset before, offset after) of each offset change in (1 Jan year, 1 Jan year+1] UTC."""
    if isinstance(tz, timezone):
        return ()
    x = int((datetime(year, 1, 1, tzinfo=UTC) - _EPOCH).total_seconds())
    end = x + (366 if calendar.isleap(year) else 365) * 86400
    o = _off(tz, x)
    out: list[tuple[int, int, int]] = []
    while x < end:
        nxt = min(x + _SHIFT, end)  # no step can hold two changes
        o_nxt = _off(tz, nxt)
        if o_nxt == o:
            x = nxt
            continue
        t = _change_in(tz, x, nxt, o)
        o_t = _off(tz, t)
        out.append((t, o, o_t))
        x, o = t, o_t
    return tuple(out)


def _hm(ws: int) -> str:
    h, rem = divmod(ws % 86400, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}" if s == 0 else f"{h:02d}:{m:02d}:{s:02d}"


def _fmt_offset(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    h, rem = divmod(abs(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")


def _day(ws: int) -> str:
    return date.fromordinal(ws // 86400 + _EPOCH_ORD).isoformat()


def _times(walls: list[int]) -> tuple[str, str]:
    """The wall times as text, and " on <date>" when they share one date.

    A gap or repeat can last a whole day and cross midnight; then each time carries its own date.
    """
    one_day = _day(walls[0]) == _day(walls[-1])
    names = [_hm(w) if one_day else f"{_day(w)} {_hm(w)}" for w in walls]
    on = f" on {_day(walls[0])}" if one_day else ""
    if len(names) == 1:
        return names[0], on
    if len(names) <= 6:
        return ", ".join(names[:-1]) + " and " + names[-1], on
    return f"{names[0]} to {names[-1]} ({len(names)} times)", on


def _matching_walls(spec: _CronSpec, lo: int, hi: int) -> list[int]:
    out: list[int] = []
    w = _next_wall(spec, lo)
    while w is not None and w < hi:
        out.append(w)
        w = _next_wall(spec, w + 1)
    return out


def _add_months(dt: datetime, months: int) -> datetime:
    y, m = divmod(dt.month - 1 + months, 12)
    year = min(dt.year + y, _MAX_YEAR)
    month = m + 1
    return dt.replace(year=year, month=month, day=min(dt.day, calendar.monthrange(year, month)[1]))


def dst_warnings(schedule: Schedule, tz: tzinfo, start: datetime, months: int = 12) -> list[str]:
    """Warnings for fixed-time fires in [start, start + months) that hit a DST gap or overlap.

    Only fixed-hour cron schedules get warnings: the others keep real-time spacing by design.
    """
    _epoch_floor(start)  # rejects a naive start
    start_ts = -((_EPOCH - start) // _SECOND_TD)  # ceiling: a fire at the start counts
    if schedule.kind != "cron" or not schedule.fixed_hour or months <= 0 or schedule.spec is None:
        return []
    spec = schedule.spec
    end_ts = _epoch_floor(_add_months(start, months))
    zone = getattr(tz, "key", None) or str(tz)
    first_year = datetime.fromtimestamp(start_ts, UTC).year - 1
    # A repeat's first pass, which is what counts, starts up to _SHIFT before its transition.
    last_year = min(datetime.fromtimestamp(end_ts + _SHIFT, UTC).year, _MAX_YEAR)
    out: list[str] = []
    for year in range(first_year, last_year + 1):
        for t, before, after in _year_transitions(tz, year):
            if after > before:  # spring forward: walls [t+before, t+after) do not exist
                if not start_ts <= t < end_ts:
                    continue
                walls = _matching_walls(spec, t + before, t + after)
                if not walls:
                    continue
                times, on = _times(walls)
                run = t + after
                # After a gap of a day the run is on a later date than the time it stands for.
                run_on = "" if on == f" on {_day(run)}" else f" on {_day(run)}"
                verb, obj = ("does", "it") if len(walls) == 1 else ("do", "them once,")
                out.append(f"{times} {zone} {verb} not exist{on}; torch runs {obj} at {_hm(run)}{run_on}")
            else:  # fall back: walls [t+after, t+before) happen twice
                walls = [w for w in _matching_walls(spec, t + after, t + before) if start_ts <= w - before < end_ts]
                if not walls:
                    continue
                times, on = _times(walls)
                if len(walls) == 1:
                    tail = f"torch runs it once, at the first ({_hm(walls[0])}{_fmt_offset(before)})"
                    out.append(f"{times} {zone} happens twice{on}; {tail}")
                else:
                    tail = f"torch runs each once, at the first ({_fmt_offset(before)})"
                    out.append(f"{times} {zone} happen twice{on}; {tail}")
    return out


def forget_parsed() -> None:
    """Drop the parse caches (a daemon calls this after loading a big file; see config.compacted)."""
    parse_schedule.cache_clear()
    _parse_field.cache_clear()
