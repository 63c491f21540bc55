"""The fields of a task: each one's validator (value in, converted value out, or `Bad`) and limits.

Pure, as gotorch.config is: the only host lookups are user and group names, which the caller can
switch off (`account_checks`) for a file meant for other hosts.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gotorch import accounts
from gotorch.durations import DURATION_HINT, SIZE_HINT, parse_duration, parse_size
from gotorch.fleet.settings import FLEET_MODES, UNREACHABLE_POLICIES
from gotorch.hosts import IPNetwork
from gotorch.schedule import Schedule, ScheduleError, parse_schedule

TaskType = Literal["cron", "daemon"]
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_INSTANCES = 1000
HISTORY_KEEP = 1000  # rows of run history kept per task unless it (or `defaults:`) says otherwise
# Far beyond what the daemon's age limit leaves of a 1/s task (7.8 million rows in 90 days), and
# small enough to reach SQLite as a number it can hold.
MAX_HISTORY_KEEP = 100_000_000
MAX_RETRIES = 100
MAX_FAILURE_THRESHOLD = 10_000
# What a run can end as that `retry_on` may name: the failures of the run itself, not a stop on request.
RETRYABLE = ("failed", "timeout", "spawn_failed")
# Fields a `defaults:` block may set: everything but a task's identity and what it runs.
NOT_DEFAULTABLE = ("name", "command", "schedule", "type")


class Bad(Exception):
    """A field's value is wrong: what is wrong with it, and how to fix it."""

    def __init__(self, problem: str, hint: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint


def _type_name(v: object) -> str:
    if v is None:
        return "empty"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(v), type(v).__name__)


def _duration(minimum_exclusive: bool) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        try:
            seconds = parse_duration(v)
        except ValueError as exc:
            raise Bad(str(exc), DURATION_HINT) from None
        if seconds < 0 or (minimum_exclusive and seconds == 0):
            bound = "greater than 0" if minimum_exclusive else "0 or more"
            raise Bad(f"{v!r} must be {bound}", DURATION_HINT)
        return seconds

    return check


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise Bad(f"expected a whole number, got {_type_name(v)} {v!r}", "write e.g. 1")
    if v < 1:
        raise Bad(f"{v} must be 1 or more", "use 1 to allow a single instance")
    if v > MAX_INSTANCES:
        # A daemon task starts this many copies at once: a typo must not become a fork storm.
        raise Bad(f"{v} is more than {MAX_INSTANCES:,}", f"use at most {MAX_INSTANCES:,}")
    return v


def _history_keep(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise Bad(f"expected a whole number of rows, got {_type_name(v)} {v!r}",
                   f"write e.g. history_keep: {HISTORY_KEEP}")
    if v < 1:
        raise Bad(f"{v} must be 1 or more",
                   "the history keeps at least the newest row; run the daemon with --no-history to keep none")
    if v > MAX_HISTORY_KEEP:
        raise Bad(f"{v} is more than {MAX_HISTORY_KEEP:,}",
                   f"use at most {MAX_HISTORY_KEEP:,} (rows older than --history-days go anyway)")
    return v


def _count(what: str, lowest: int, highest: int, example: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise Bad(f"expected a whole number, got {_type_name(v)} {v!r}", f"write e.g. {what}: {example}")
        if not lowest <= v <= highest:
            raise Bad(f"{v} is not between {lowest} and {highest:,}", f"write e.g. {what}: {example}")
        return v

    return check


def _retry_on(v: Any) -> tuple[str, ...]:
    items = v if isinstance(v, list) else [v]
    if not items or not all(isinstance(i, str) for i in items):
        raise Bad(f"expected a list of run statuses, got {_type_name(v)} {v!r}",
                   "write e.g. retry_on: [failed, timeout]")
    unknown = [i for i in items if i not in RETRYABLE]
    if unknown:
        raise Bad(f"{unknown[0]!r} is not a status a retry can follow", "use some of: " + ", ".join(RETRYABLE))
    return tuple(dict.fromkeys(items))


def _size(v: Any) -> int:
    try:
        n = parse_size(v)
    except ValueError as exc:
        raise Bad(str(exc), SIZE_HINT) from None
    if n < 0:
        raise Bad(f"{v!r} must be 0 or more", SIZE_HINT)
    return n


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise Bad(f"expected true or false, got {_type_name(v)} {v!r}", "write true or false")
    return v


def _task_type(v: Any) -> TaskType:
    if v == "cron":
        return "cron"
    if v == "daemon":
        return "daemon"
    raise Bad(f"{v!r} is not a task type", "use cron (run on a schedule) or daemon (kept running)")


def _command(v: Any) -> str | tuple[str, ...]:
    if isinstance(v, str):
        if not v.strip():
            raise Bad("is empty", "give a shell command line or a list of arguments")
        return v
    if isinstance(v, list):
        if not v:
            raise Bad("is an empty list", "give the program and its arguments, e.g. [/bin/echo, hi]")
        if not all(isinstance(a, str | int | float) and not isinstance(a, bool) for a in v):
            raise Bad("every argument must be a string", "quote arguments that YAML reads as other types")
        if not str(v[0]).strip():
            raise Bad("the program (first item) is empty", "give the program's path or name first")
        return tuple(str(a) for a in v)
    raise Bad(f"expected a string or a list of arguments, got {_type_name(v)}",
               "a string runs via /bin/sh -c; a list runs without a shell")


def _ips(v: Any) -> tuple[IPNetwork, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        raise Bad("expected a list of addresses", f"write ips: [{v}]")
    if not isinstance(v, list):
        raise Bad(f"expected a list of addresses or networks, got {_type_name(v)}",
                   "write e.g. ips: [10.0.0.5, 10.0.1.0/24]")
    nets: list[IPNetwork] = []
    for item in v:
        if not isinstance(item, str):
            raise Bad(f"{item!r} is not an IP address or network", "quote it as a string, e.g. '10.0.0.5'")
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError as exc:
            if "host bits set" in str(exc):
                loose = ipaddress.ip_network(item.strip(), strict=False)
                raise Bad(f"{item!r} has host bits set", f"did you mean {loose}?") from None
            raise Bad(f"{item!r} is not an IP address or CIDR network",
                       "write an IPv4/IPv6 address or a network like 10.0.1.0/24") from None
    return tuple(nets)


def _account(kind: str, exists: Callable[[str], bool]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise Bad(f"expected a {kind} name, got {_type_name(v)}", f"write the {kind}'s name")
        name = str(v)
        if _ACCOUNT_CHECKS and not exists(name):
            db = "passwd" if kind == "user" else "group"
            raise Bad(f"unknown {kind} {name!r} on this host",
                       f"create the {kind} first, or fix the spelling (see getent {db})")
        return name

    return check


# Set by `account_checks` for the duration of one parse; a module flag keeps the validators plain functions.
_ACCOUNT_CHECKS = True


@contextlib.contextmanager
def account_checks(enabled: bool) -> Iterator[None]:
    """Within the block, `user:` and `group:` must (True) or need not (False) exist on this host."""
    global _ACCOUNT_CHECKS
    _ACCOUNT_CHECKS = enabled
    try:
        yield
    finally:
        _ACCOUNT_CHECKS = True


def _env(v: Any) -> tuple[tuple[str, str], ...]:
    if v is None:
        return ()
    if not isinstance(v, dict):
        raise Bad(f"expected a mapping of NAME: value, got {_type_name(v)}", "write e.g. env: {LANG: C.UTF-8}")
    out: list[tuple[str, str]] = []
    for k, val in v.items():
        if not isinstance(k, str) or not ENV_NAME_RE.fullmatch(k):
            raise Bad(f"{k!r} is not a valid variable name", "use letters, digits and _, not starting with a digit")
        if isinstance(val, bool) or val is None or not isinstance(val, str | int | float):
            raise Bad(f"{k}: value must be a string, got {_type_name(val)}", f"quote it, e.g. {k}: \"{val}\"")
        out.append((k, str(val)))
    return tuple(sorted(out))


def _workdir(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise Bad(f"{v!r} is not an absolute path", "write a path starting with /")
    return v


def _timezone(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise Bad(f"expected an IANA zone name, got {_type_name(v)}", "write e.g. Europe/Berlin or UTC")
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(v, _zone_names(), n=1)
        hint = f"did you mean {close[0]}?" if close else "write an IANA name like Europe/Berlin or UTC"
        raise Bad(f"unknown timezone {v!r}", hint) from None
    return v


@lru_cache(maxsize=1)
def _zone_names() -> list[str]:
    import zoneinfo

    return sorted(zoneinfo.available_timezones())


def _fleet_mode(v: Any) -> str:
    if v not in FLEET_MODES:
        raise Bad(f"{v!r} is not a fleet mode", "write fleet: once (one host of the fleet runs it), or leave it out")
    return str(v)


def _fleet_unreachable(v: Any) -> str:
    if v not in UNREACHABLE_POLICIES:
        raise Bad(f"{v!r} is not skip or run",
                   "write fleet_unreachable: skip (run nowhere while etcd is unreachable) or run (run here anyway)")
    return str(v)


def _name(v: Any) -> str:
    if not isinstance(v, str) or not NAME_RE.fullmatch(v):
        raise Bad(f"{v!r} is not a valid task name",
                   "use 1-64 characters from A-Z a-z 0-9 _ . -")
    return v


def _schedule(v: Any) -> Schedule:
    if not isinstance(v, str):
        raise Bad(f"expected a quoted cron expression, got {_type_name(v)} {v!r}",
                   'quote the schedule, e.g. schedule: "0 */5 * * * *"')
    try:
        return parse_schedule(v)
    except ScheduleError as exc:
        raise Bad(exc.problem, exc.hint) from None


VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "name": _name,
    "schedule": _schedule,
    "command": _command,
    "type": _task_type,
    "ips": _ips,
    "max_instances": _positive_int,
    "timeout": _duration(minimum_exclusive=True),
    "kill_timeout": _duration(minimum_exclusive=True),
    "misfire_grace": _duration(minimum_exclusive=False),
    "jitter": _duration(minimum_exclusive=False),
    "output_limit": _size,
    # Through the accounts cache: whoever clears it (a reload, in the child that validates) clears ours.
    "user": _account("user", accounts.user_exists),
    "group": _account("group", accounts.group_exists),
    "env": _env,
    "workdir": _workdir,
    "timezone": _timezone,
    "enabled": _bool,
    "history_keep": _history_keep,
    "retries": _count("retries", 0, MAX_RETRIES, 3),
    "retry_backoff": _duration(minimum_exclusive=True),
    "retry_on": _retry_on,
    "on_failure": _command,
    "on_recovery": _command,
    "failure_threshold": _count("failure_threshold", 1, MAX_FAILURE_THRESHOLD, 3),
    "warn_after": _duration(minimum_exclusive=True),
    "hook_timeout": _duration(minimum_exclusive=True),
    "fleet": _fleet_mode,
    "fleet_unreachable": _fleet_unreachable,
}
TASK_KEYS = tuple(VALIDATORS)
DEFAULT_KEYS = tuple(k for k in TASK_KEYS if k not in NOT_DEFAULTABLE)
