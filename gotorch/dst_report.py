"""The warnings `torch check` prints for fixed-time fires that hit a DST gap or overlap in the next months."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timezone, tzinfo
from functools import lru_cache

from gotorch.cron_spec import EPOCH_ORD, MAX_YEAR, CronSpec, next_wall
from gotorch.schedule import Schedule
from gotorch.tz_offsets import EPOCH, SECOND_TD, SHIFT, change_in, epoch_floor, offset_at

__all__ = ["dst_warnings"]


@lru_cache(maxsize=512)
def _year_transitions(tz: tzinfo, year: int) -> tuple[tuple[int, int, int], ...]:
    """(instant, offset before, offset after) of each offset change in (1 Jan year, 1 Jan year+1] UTC."""
    if isinstance(tz, timezone):
        return ()
    x = int((datetime(year, 1, 1, tzinfo=UTC) - EPOCH).total_seconds())
    end = x + (366 if calendar.isleap(year) else 365) * 86400
    o = offset_at(tz, x)
    out: list[tuple[int, int, int]] = []
    while x < end:
        nxt = min(x + SHIFT, end)  # no step can hold two changes
        o_nxt = offset_at(tz, nxt)
        if o_nxt == o:
            x = nxt
            continue
        t = change_in(tz, x, nxt, o)
        o_t = offset_at(tz, t)
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
    return date.fromordinal(ws // 86400 + EPOCH_ORD).isoformat()


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


def _matching_walls(spec: CronSpec, lo: int, hi: int) -> list[int]:
    out: list[int] = []
    w = next_wall(spec, lo)
    while w is not None and w < hi:
        out.append(w)
        w = next_wall(spec, w + 1)
    return out


def _add_months(dt: datetime, months: int) -> datetime:
    y, m = divmod(dt.month - 1 + months, 12)
    year = min(dt.year + y, MAX_YEAR)
    month = m + 1
    return dt.replace(year=year, month=month, day=min(dt.day, calendar.monthrange(year, month)[1]))


def dst_warnings(schedule: Schedule, tz: tzinfo, start: datetime, months: int = 12) -> list[str]:
    """Warnings for fixed-time fires in [start, start + months) that hit a DST gap or overlap.

    Only fixed-hour cron schedules get warnings: the others keep real-time spacing by design.
    """
    epoch_floor(start)  # rejects a naive start
    start_ts = -((EPOCH - start) // SECOND_TD)  # ceiling: a fire at the start counts
    if schedule.kind != "cron" or not schedule.fixed_hour or months <= 0 or schedule.spec is None:
        return []
    spec = schedule.spec
    end_ts = epoch_floor(_add_months(start, months))
    zone = getattr(tz, "key", None) or str(tz)
    first_year = datetime.fromtimestamp(start_ts, UTC).year - 1
    # A repeat's first pass, which is what counts, starts up to SHIFT before its transition.
    last_year = min(datetime.fromtimestamp(end_ts + SHIFT, UTC).year, MAX_YEAR)
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
