"""A zone's UTC offset at an instant, and where it changes: the one part of the search that asks tzinfo.

The bound every caller relies on: no single offset change is larger than SHIFT, no two changes are
closer, and no offset lies further above an earlier one (gotorch.fire_times' docstring).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

SECOND_TD: Final = timedelta(seconds=1)
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# The bound (see the module docstring) is not an hour or two: Pacific/Apia skipped 24 hours in
# 2011, and its offset has been both -11:30 (1911-1950) and +14 (2011-2021), 25.5 hours apart.
SHIFT: Final = 26 * 3600
# Probing SHIFT before an instant in year 1 would leave datetime's range; no zone changes offset
# that early, so the offset a day later stands in.
_MIN_PROBE: Final = int((datetime(1, 1, 2, tzinfo=UTC) - EPOCH).total_seconds())


def offset_at(tz: tzinfo, ts: int) -> int:
    """UTC offset of ``tz`` at instant ``ts``, in seconds."""
    if ts < _MIN_PROBE:
        ts = _MIN_PROBE
    off = datetime.fromtimestamp(ts, tz).utcoffset()
    return 0 if off is None else off // SECOND_TD


def _first_change(tz: tzinfo, lo: int, hi: int, o_lo: int) -> int:
    """Smallest instant in (lo, hi] whose offset differs from ``o_lo`` (the offset at lo)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if offset_at(tz, mid) == o_lo:
            lo = mid
        else:
            hi = mid
    return hi


# Transitions already located: (id(zone), instant // SHIFT) -> (zone, instant). Every call within
# SHIFT of a transition sees it in a probe window; remembering it spares a bisection over a day-wide
# window each time (a 1/s task would otherwise re-bisect it for 26 hours). Keyed by id because some
# tzinfo classes (dateutil's) are unhashable; the entry keeps its zone alive, so the id stays its own.
# Bounded by clearing when full.
_located: dict[tuple[int, int], tuple[tzinfo, int]] = {}
_LOCATED_MAX: Final = 1024


def change_in(tz: tzinfo, lo: int, hi: int, o_lo: int) -> int:
    """The offset change in (lo, hi], where hi - lo <= SHIFT and the offset at hi is not ``o_lo``.

    There is exactly one (changes are more than SHIFT apart), so a remembered change in the window is it.
    """
    for k in (hi // SHIFT, lo // SHIFT):
        found = _located.get((id(tz), k))
        if found is not None and found[0] is tz and lo < found[1] <= hi:
            return found[1]
    t = _first_change(tz, lo, hi, o_lo)
    if len(_located) >= _LOCATED_MAX:
        _located.clear()
    _located[(id(tz), t // SHIFT)] = (tz, t)
    return t


def epoch_floor(dt: datetime) -> int:
    """Unix seconds of an aware datetime, floored exactly (no float rounding)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"need a timezone-aware datetime, got naive {dt.isoformat()}")
    return (dt - EPOCH) // SECOND_TD
