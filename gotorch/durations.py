"""Human durations and byte sizes as written in the task file (`90s`, `1h30m`, `64KiB`)."""

from __future__ import annotations

import re

_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?")
_UNIT_SECONDS = (86400.0, 3600.0, 60.0, 1.0, 0.001)
_SIZE_RE = re.compile(r"(\d+)\s*([KMG]i?B|B)?", re.IGNORECASE)
_SIZE_FACTORS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}

DURATION_HINT = "write a number of seconds or a duration like 90s, 5m, 1h30m, 2d"
SIZE_HINT = "write a number of bytes or a size like 64KiB, 1MiB"


def parse_duration(value: object) -> float:
    """Return seconds for `value` (a number of seconds or a string like `1h30m`); ValueError if malformed.

    Sign is the caller's business: negative numbers are returned as-is so the caller can say
    "must be positive" rather than "malformed".
    """
    if isinstance(value, bool):  # YAML `yes`/`true` is a bool, and bool is an int subclass
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration")
    text = value.strip().lower()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    m = _DURATION_RE.fullmatch(text)
    if not text or m is None or not any(m.groups()):
        raise ValueError(f"{value!r} is not a duration")
    return sum(float(g) * f for g, f in zip(m.groups(), _UNIT_SECONDS, strict=True) if g)


def parse_size(value: object) -> int:
    """Return bytes for `value` (an int or a string like `64KiB`); ValueError if malformed."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a size")
    m = _SIZE_RE.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not a size")
    return int(m.group(1)) * _SIZE_FACTORS[(m.group(2) or "b").lower()]


def format_duration(seconds: float) -> str:
    """Render seconds the way a user would write them in the task file (`1h30m`, `90s` -> `1m30s`)."""
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
