"""When a schedule fires: the first fire strictly after an instant, in a task's timezone.

Pure: a function of (schedule, timezone, instant) alone, so the daemon, `torch next`, `torch why`
and the tests all get the same answers.

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

import math
from datetime import UTC, datetime, timezone, tzinfo
from typing import Final, cast

from gotorch.cron_spec import MAX_YEAR, CronSpec, next_wall
from gotorch.schedule import Dst, Fire, Schedule
from gotorch.tz_offsets import EPOCH, SHIFT, change_in, epoch_floor, offset_at

__all__ = ["fires", "next_fire", "next_fire_ts", "repeats_at_least_hourly"]

_NEVER: Final = -(1 << 62)
_MAX_TS: Final = int((datetime(MAX_YEAR, 12, 31, tzinfo=UTC) - EPOCH).total_seconds())


def _next_cron(spec: CronSpec, tz: tzinfo, after: int) -> tuple[int, Dst | None] | None:
    """First fire strictly after instant ``after`` under the DST policy."""
    u = after + 1  # earliest instant still to consider
    if isinstance(tz, timezone):  # fixed offset: wall clock and instants move together
        o = offset_at(tz, u)
        w = next_wall(spec, u + o)
        return None if w is None else (w - o, None)
    # Walk constant-offset segments. Inside one, wall time and instant move together, so the first
    # matching wall time at or after u's is the first fire -- unless an offset change is near, which
    # we locate exactly by bisection and step across.
    while True:
        if u > _MAX_TS:
            return None
        o = offset_at(tz, u)
        o_before = offset_at(tz, u - SHIFT)
        rep_end = _NEVER
        if o_before != o:
            p = change_in(tz, u - SHIFT, u, o_before)
            if o_before > o:
                # Wall times below rep_end were already lived through before this fall-back.
                rep_end = p + o_before
            elif p == u and spec.fixed_hour:
                # u is exactly a spring-forward instant: it is the run of any time in the gap.
                w = next_wall(spec, p + o_before)
                if w is not None and w < p + o:
                    return p, "gap"
        o_after = offset_at(tz, u + SHIFT)
        t = change_in(tz, u, u + SHIFT, o) if o_after != o else None
        lo_wall = u + o
        if spec.fixed_hour and rep_end > lo_wall:
            lo_wall = rep_end  # a fixed time runs only at its first occurrence
        w = next_wall(spec, lo_wall)
        if w is None:
            return None
        c = w - o
        if t is None:
            if c <= u + SHIFT:
                return c, ("repeat" if w < rep_end else None)
            if offset_at(tz, c - SHIFT) == o and offset_at(tz, c) == o:
                # No offset change within SHIFT before c, so c really shows wall w. No instant
                # before c - SHIFT can show w or later either: its offset would have to be more than
                # SHIFT above o, which is later at c.
                return c, None
            # The same argument: no fire before c - SHIFT. Any change is located from there.
            u = max(u + SHIFT + 1, c - SHIFT)
            continue
        if c < t:
            return c, ("repeat" if w < rep_end else None)
        o_next = offset_at(tz, t)
        if spec.fixed_hour and o_next > o and w < t + o_next:
            return t, "gap"  # the wall time fell into the spring-forward gap
        u = t


def _next_ts(schedule: Schedule, tz: tzinfo, after: int) -> tuple[int, Dst | None] | None:
    if schedule.kind == "cron":
        return _next_cron(cast(CronSpec, schedule.spec), tz, after)
    if schedule.kind == "every":
        k = schedule.interval
        nxt = (after // k + 1) * k
        return None if nxt > _MAX_TS else (nxt, None)
    return None  # @reboot has no next fire


def next_fire(schedule: Schedule, tz: tzinfo, after: datetime) -> Fire | None:
    """The first fire strictly after ``after`` (any aware datetime), in ``tz``; None for @reboot.

    Raises ValueError for a naive ``after``.
    """
    found = _next_ts(schedule, tz, epoch_floor(after))
    if found is None:
        return None
    return Fire(at=datetime.fromtimestamp(found[0], tz), dst=found[1])


def fires(schedule: Schedule, tz: tzinfo, after: datetime, n: int) -> list[Fire]:
    """The next ``n`` fires strictly after ``after``, in strictly increasing order of instants."""
    out: list[Fire] = []
    ts = epoch_floor(after)
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
