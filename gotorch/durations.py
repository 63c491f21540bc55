"""Human durations and byte sizes as written in the task file (`90s`, `1h30m`, `64KiB`)."""

from __future__ import annotations

import math
import re

_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?")
_UNIT_SECONDS = (86400.0, 3600.0, 60.0, 1.0, 0.001)
_SIZE_RE = re.compile(r"(\d+)\s*([KMG]i?B|B)?", re.IGNORECASE)
_SIZE_FACTORS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}

# Longest duration accepted anywhere (100 years). Far beyond any real timeout, grace or jitter, and
# small enough that every later use stays finite and in range: `now - misfire_grace` must remain a
# date the schedule code can compute from, timers must be finite. It is above @every's own 3650-day
# limit on purpose, so `@every 3651d` keeps its more specific message.
MAX_DURATION = 36500 * 86400
# Largest byte size accepted: what a signed 64-bit counter holds (8 EiB), i.e. "no limit" in effect.
MAX_SIZE = 2**63 - 1

DURATION_HINT = (f"write a number of seconds or a duration like 90s, 5m, 1h30m, 2d"
                 f" (at most {MAX_DURATION // 86400} days)")
SIZE_HINT = "write a number of bytes or a size like 64KiB, 1MiB (at most 2**63-1 bytes)"


def parse_duration(value: object) -> float:
    """Return seconds for `value` (a number of seconds or a string like `1h30m`); ValueError if malformed.

    NaN, infinities and anything longer than MAX_DURATION (either sign) are ValueErrors too: YAML
    reads `.nan`/`.inf` as floats, and such values broke every later use (timers, catch-up windows).
    Otherwise the sign is the caller's business: negative numbers are returned as-is so the caller
    can say "must be positive" rather than "malformed".
    """
    if isinstance(value, bool):  # YAML `yes`/`true` is a bool, and bool is an int subclass
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        # An int is bounded before float(): float() of a 400-digit YAML integer raises OverflowError.
        return _bounded_seconds(value, value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration")
    text = value.strip().lower()
    # The regexes admit digits only, so "nan", "inf" and "1e400" never get here; a long enough run of
    # digits still becomes float("inf"), which _bounded_seconds rejects.
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return _bounded_seconds(float(text), value)
    m = _DURATION_RE.fullmatch(text)
    if not text or m is None or not any(m.groups()):
        raise ValueError(f"{value!r} is not a duration")
    return _bounded_seconds(sum(float(g) * f for g, f in zip(m.groups(), _UNIT_SECONDS, strict=True) if g), value)


def _bounded_seconds(seconds: float, value: object) -> float:
    """`seconds` as a float, or ValueError if it is not finite or longer than MAX_DURATION."""
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite duration")
    if abs(seconds) > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than {MAX_DURATION // 86400} days")
    return float(seconds)


def parse_size(value: object) -> int:
    """Return bytes for `value` (an int or a string like `64KiB`); ValueError if malformed.

    Floats (including YAML's `.nan` and `.inf`) are not sizes, and neither is anything above
    MAX_SIZE (either sign). Otherwise the sign is the caller's business, as for parse_duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.fullmatch(value.strip())
        if m is None:
            raise ValueError(f"{value!r} is not a size")
        n = int(m.group(1)) * _SIZE_FACTORS[(m.group(2) or "b").lower()]
    else:
        raise ValueError(f"{value!r} is not a size")
    if abs(n) > MAX_SIZE:
        raise ValueError(f"{value!r} is larger than 2**63-1 bytes")
    return n


def format_duration(seconds: float) -> str:
    """Render seconds the way a user would write them in the task file (`1h30m`, `90s` -> `1m30s`)."""
    if not math.isfinite(seconds):  # validation rejects these; a Task built by hand must not crash a listing
        return f"{seconds}s"
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    if rest or not parts:
        parts.append(f"{rest}s")
    return "".join(parts)


def format_span(seconds: float, minimum: int = 0) -> str:
    """`45s`, `12m`, `3h5m`, `2d4h`: an age or a wait, precise when short, coarser when long."""
    s = max(minimum, round(seconds))
    if s >= 86400:
        s -= s % 3600
    elif s >= 3600:
        s -= s % 60
    return format_duration(s)
