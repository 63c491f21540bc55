"""Schedules: the syntax, parsing and validation, and the parsed form every other module uses.

This module is pure: nothing here reads the clock or does I/O, so parses may be cached freely.

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

When a parsed schedule fires is worked out in gotorch.fire_times (its docstring gives the DST
policy); the DST warnings `torch check` prints in gotorch.dst_report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Final, Literal, NamedTuple, cast

from gotorch.cron_spec import CronSpec, Days, next_day
from gotorch.cronlib import CroniterError, croniter
from gotorch.durations import parse_duration
from gotorch.pickling import quick_pickle

__all__ = ["Dst", "Fire", "Schedule", "ScheduleError", "forget_parsed", "parse_schedule"]

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
    spec: CronSpec | None = field(default=None, repr=False, compare=False)


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


def _build_spec(fields: list[_Field]) -> CronSpec:
    sec, minute, hour, dom, month, dow = fields
    dom_full = dom.mask == _bits(range(1, 32))
    dow_full = dow.mask == 0x7F
    both = dom.star or dow.star
    every_day = (dom_full and dow_full) if both else (dom_full or dow_full)
    days = Days(
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
    return CronSpec(
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


def _never_fires(spec: CronSpec) -> bool:
    # Whether a day matches depends only on the year's type (leap or not) and the weekday of its
    # 1 January; 2000-2027 contains all fourteen types, so no match there means no match ever.
    return next_day(spec, 2000, 1, 1, 2027) is None


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


def forget_parsed() -> None:
    """Drop the parse caches (a daemon calls this after loading a big file; see config.compacted)."""
    parse_schedule.cache_clear()
    _parse_field.cache_clear()
