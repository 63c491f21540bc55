"""The task file: parse `tasks.yaml` and validate it into a `Config`, or report every error at once.

Pure: text in, value or errors out. No clock, no processes. The only host lookups are user and
group names (a task naming an account that does not exist is an error, as in cron), which callers
can switch off for a file meant for other hosts.

Errors read `FILE:LINE:COL: task 'NAME': FIELD: what is wrong; how to fix it`. To get real line
numbers we compose the YAML into nodes (C loader) and walk them ourselves, which also lets us catch
duplicate keys that PyYAML would silently collapse.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import gc
import hashlib
import ipaddress
import os
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from gotorch import accounts, task_sources
from gotorch.config_errors import ConfigError as ConfigError
from gotorch.config_errors import ConfigInvalid as ConfigInvalid
from gotorch.durations import DURATION_HINT, SIZE_HINT, parse_duration, parse_size
from gotorch.fleet.settings import FLEET_MODES, UNREACHABLE_POLICIES, FleetBad, FleetSettings, parse_fleet
from gotorch.hosts import IPNetwork
from gotorch.pickling import quick_pickle
from gotorch.schedule import Schedule, ScheduleError, forget_parsed, parse_schedule
from gotorch.trustedfs import FileBytes, Untrusted, read_file

TaskType = Literal["cron", "daemon"]
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SUPPORTED_VERSIONS = (1,)
MAX_INSTANCES = 1000
HISTORY_KEEP = 1000  # rows of run history kept per task unless it (or `defaults:`) says otherwise
# Far beyond what the daemon's age limit leaves of a 1/s task (7.8 million rows in 90 days), and
# small enough to reach SQLite as a number it can hold.
MAX_HISTORY_KEEP = 100_000_000
MAX_RETRIES = 100
MAX_FAILURE_THRESHOLD = 10_000
# What a run can end as that `retry_on` may name: the failures of the run itself, not a stop on request.
RETRYABLE = ("failed", "timeout", "spawn_failed")
TOP_KEYS = ("version", "defaults", "tasks", "fleet")
# Fields a `defaults:` block may set: everything but a task's identity and what it runs.
NOT_DEFAULTABLE = ("name", "command", "schedule", "type")


@quick_pickle
@dataclass(frozen=True, slots=True)
class Task:
    """One validated task. Equality (minus `line`) is what reload uses to call a task "changed"."""

    name: str
    command: str | tuple[str, ...]
    type: TaskType = "cron"
    schedule: Schedule | None = None
    ips: tuple[IPNetwork, ...] = ()
    max_instances: int = 1
    timeout: float | None = None
    kill_timeout: float = 10.0
    misfire_grace: float = 60.0
    jitter: float = 0.0
    output_limit: int = 64 * 1024
    user: str | None = None
    group: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    timezone: str = "UTC"
    enabled: bool = True
    history_keep: int = HISTORY_KEEP  # newest rows of its run history kept (runs and non-runs)
    # Failures (gotorch.retries, gotorch.alerts): retries of a cron run, and the alert hooks.
    retries: int = 0
    retry_backoff: float = 10.0  # before attempt 2; doubling, at most RETRY_BACKOFF_MAX
    retry_on: tuple[str, ...] = ("failed", "timeout")
    on_failure: str | tuple[str, ...] | None = None
    on_recovery: str | tuple[str, ...] | None = None
    failure_threshold: int = 1
    warn_after: float | None = None
    hook_timeout: float = 60.0
    # Beyond one host (gotorch.fleet): "once" = one matching host of the fleet runs each fire (cron)
    # or holds the copies (daemon); what to do when etcd cannot say who: skip, or run anyway.
    fleet: str | None = None
    fleet_unreachable: str = "skip"
    line: int = field(default=0, compare=False)

    @property
    def tz(self) -> ZoneInfo:
        """The task's zone as a ZoneInfo (cached by zoneinfo itself)."""
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Config:
    """A validated task file and the hash of the exact bytes it came from."""

    path: str
    tasks: tuple[Task, ...]
    digest: str
    fleet: FleetSettings | None = None  # the top-level `fleet:` block, if any
    # The digest of each task's entry (gotorch.task_sources), by name, as parsed: what the next
    # reload's process needs to recognise unchanged entries. Not kept by the running daemon.
    sources: Mapping[str, bytes] | None = field(default=None, compare=False, repr=False)

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of the content hash, for logs and status."""
        return self.digest[:12]

    def by_name(self) -> dict[str, Task]:
        """Tasks keyed by name (names are unique, validation guarantees it)."""
        return {t.name: t for t in self.tasks}


# --- field validators: value -> converted value, or raise _Bad(problem, hint) ---------------------


class _Bad(Exception):
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
            raise _Bad(str(exc), DURATION_HINT) from None
        if seconds < 0 or (minimum_exclusive and seconds == 0):
            bound = "greater than 0" if minimum_exclusive else "0 or more"
            raise _Bad(f"{v!r} must be {bound}", DURATION_HINT)
        return seconds

    return check


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"expected a whole number, got {_type_name(v)} {v!r}", "write e.g. 1")
    if v < 1:
        raise _Bad(f"{v} must be 1 or more", "use 1 to allow a single instance")
    if v > MAX_INSTANCES:
        # A daemon task starts this many copies at once: a typo must not become a fork storm.
        raise _Bad(f"{v} is more than {MAX_INSTANCES:,}", f"use at most {MAX_INSTANCES:,}")
    return v


def _history_keep(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"expected a whole number of rows, got {_type_name(v)} {v!r}",
                   f"write e.g. history_keep: {HISTORY_KEEP}")
    if v < 1:
        raise _Bad(f"{v} must be 1 or more",
                   "the history keeps at least the newest row; run the daemon with --no-history to keep none")
    if v > MAX_HISTORY_KEEP:
        raise _Bad(f"{v} is more than {MAX_HISTORY_KEEP:,}",
                   f"use at most {MAX_HISTORY_KEEP:,} (rows older than --history-days go anyway)")
    return v


def _count(what: str, lowest: int, highest: int, example: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"expected a whole number, got {_type_name(v)} {v!r}", f"write e.g. {what}: {example}")
        if not lowest <= v <= highest:
            raise _Bad(f"{v} is not between {lowest} and {highest:,}", f"write e.g. {what}: {example}")
        return v

    return check


def _retry_on(v: Any) -> tuple[str, ...]:
    items = v if isinstance(v, list) else [v]
    if not items or not all(isinstance(i, str) for i in items):
        raise _Bad(f"expected a list of run statuses, got {_type_name(v)} {v!r}",
                   "write e.g. retry_on: [failed, timeout]")
    unknown = [i for i in items if i not in RETRYABLE]
    if unknown:
        raise _Bad(f"{unknown[0]!r} is not a status a retry can follow", "use some of: " + ", ".join(RETRYABLE))
    return tuple(dict.fromkeys(items))


def _size(v: Any) -> int:
    try:
        n = parse_size(v)
    except ValueError as exc:
        raise _Bad(str(exc), SIZE_HINT) from None
    if n < 0:
        raise _Bad(f"{v!r} must be 0 or more", SIZE_HINT)
    return n


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, got {_type_name(v)} {v!r}", "write true or false")
    return v


def _task_type(v: Any) -> TaskType:
    if v == "cron":
        return "cron"
    if v == "daemon":
        return "daemon"
    raise _Bad(f"{v!r} is not a task type", "use cron (run on a schedule) or daemon (kept running)")


def _command(v: Any) -> str | tuple[str, ...]:
    if isinstance(v, str):
        if not v.strip():
            raise _Bad("is empty", "give a shell command line or a list of arguments")
        return v
    if isinstance(v, list):
        if not v:
            raise _Bad("is an empty list", "give the program and its arguments, e.g. [/bin/echo, hi]")
        if not all(isinstance(a, str | int | float) and not isinstance(a, bool) for a in v):
            raise _Bad("every argument must be a string", "quote arguments that YAML reads as other types")
        if not str(v[0]).strip():
            raise _Bad("the program (first item) is empty", "give the program's path or name first")
        return tuple(str(a) for a in v)
    raise _Bad(f"expected a string or a list of arguments, got {_type_name(v)}",
               "a string runs via /bin/sh -c; a list runs without a shell")


def _ips(v: Any) -> tuple[IPNetwork, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        raise _Bad("expected a list of addresses", f"write ips: [{v}]")
    if not isinstance(v, list):
        raise _Bad(f"expected a list of addresses or networks, got {_type_name(v)}",
                   "write e.g. ips: [10.0.0.5, 10.0.1.0/24]")
    nets: list[IPNetwork] = []
    for item in v:
        if not isinstance(item, str):
            raise _Bad(f"{item!r} is not an IP address or network", "quote it as a string, e.g. '10.0.0.5'")
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError as exc:
            if "host bits set" in str(exc):
                loose = ipaddress.ip_network(item.strip(), strict=False)
                raise _Bad(f"{item!r} has host bits set", f"did you mean {loose}?") from None
            raise _Bad(f"{item!r} is not an IP address or CIDR network",
                       "write an IPv4/IPv6 address or a network like 10.0.1.0/24") from None
    return tuple(nets)


def _account(kind: str, exists: Callable[[str], bool]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise _Bad(f"expected a {kind} name, got {_type_name(v)}", f"write the {kind}'s name")
        name = str(v)
        if _ACCOUNT_CHECKS and not exists(name):
            db = "passwd" if kind == "user" else "group"
            raise _Bad(f"unknown {kind} {name!r} on this host",
                       f"create the {kind} first, or fix the spelling (see getent {db})")
        return name

    return check


# Set by parse_config for the duration of one call; a module flag keeps the validators plain functions.
_ACCOUNT_CHECKS = True


def _env(v: Any) -> tuple[tuple[str, str], ...]:
    if v is None:
        return ()
    if not isinstance(v, dict):
        raise _Bad(f"expected a mapping of NAME: value, got {_type_name(v)}", "write e.g. env: {LANG: C.UTF-8}")
    out: list[tuple[str, str]] = []
    for k, val in v.items():
        if not isinstance(k, str) or not ENV_NAME_RE.fullmatch(k):
            raise _Bad(f"{k!r} is not a valid variable name", "use letters, digits and _, not starting with a digit")
        if isinstance(val, bool) or val is None or not isinstance(val, str | int | float):
            raise _Bad(f"{k}: value must be a string, got {_type_name(val)}", f"quote it, e.g. {k}: \"{val}\"")
        out.append((k, str(val)))
    return tuple(sorted(out))


def _workdir(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise _Bad(f"{v!r} is not an absolute path", "write a path starting with /")
    return v


def _timezone(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _Bad(f"expected an IANA zone name, got {_type_name(v)}", "write e.g. Europe/Berlin or UTC")
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(v, _zone_names(), n=1)
        hint = f"did you mean {close[0]}?" if close else "write an IANA name like Europe/Berlin or UTC"
        raise _Bad(f"unknown timezone {v!r}", hint) from None
    return v


@lru_cache(maxsize=1)
def _zone_names() -> list[str]:
    import zoneinfo

    return sorted(zoneinfo.available_timezones())


def _fleet_mode(v: Any) -> str:
    if v not in FLEET_MODES:
        raise _Bad(f"{v!r} is not a fleet mode", "write fleet: once (one host of the fleet runs it), or leave it out")
    return str(v)


def _fleet_unreachable(v: Any) -> str:
    if v not in UNREACHABLE_POLICIES:
        raise _Bad(f"{v!r} is not skip or run",
                   "write fleet_unreachable: skip (run nowhere while etcd is unreachable) or run (run here anyway)")
    return str(v)


def _name(v: Any) -> str:
    if not isinstance(v, str) or not NAME_RE.fullmatch(v):
        raise _Bad(f"{v!r} is not a valid task name",
                   "use 1-64 characters from A-Z a-z 0-9 _ . -")
    return v


def _schedule(v: Any) -> Schedule:
    if not isinstance(v, str):
        raise _Bad(f"expected a quoted cron expression, got {_type_name(v)} {v!r}",
                   'quote the schedule, e.g. schedule: "0 */5 * * * *"')
    try:
        return parse_schedule(v)
    except ScheduleError as exc:
        raise _Bad(exc.problem, exc.hint) from None


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
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
TASK_KEYS = tuple(_VALIDATORS)
DEFAULT_KEYS = tuple(k for k in TASK_KEYS if k not in NOT_DEFAULTABLE)


# --- YAML nodes with positions -------------------------------------------------------------------


@dataclass
class _Entry:
    key_node: yaml.Node
    value_node: yaml.Node


# Far above any real task file (10,000 tasks are ~200,000 values), far below what hurts.
MAX_VALUES = 2_000_000


# No task file needs more than a handful of levels; libyaml stops at 1,000 but our walk recurses, and
# ~500 levels overflowed Python's stack with a 999-frame traceback.
MAX_DEPTH = 64
# Tags a plain task file can carry: YAML's own types, as the safe resolver assigns them. Anything else
# (`!!python/object:...`, `!custom`) would otherwise be silently read as its bare mapping or string.
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq",
                                                           "merge", "timestamp"))


class _Fatal(Exception):
    """A problem that stops the walk at once: the file as a whole cannot be read as a task file."""

    def __init__(self, node: yaml.Node, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.node = node
        self.problem = problem
        self.hint = hint


_STR_TAG = "tag:yaml.org,2002:str"


def _clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters: an error quotes a value, never all of what its aliases expand to."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _str_pair(x: object) -> bool:
    return type(x) is tuple and len(x) == 2 and type(x[0]) is str and type(x[1]) is str


def _too_big(node: yaml.Node) -> _Fatal:
    return _Fatal(node, f"the file expands to more than {MAX_VALUES:,} values (aliases of aliases?)",
                  "use aliases only for small shared blocks, e.g. `<<: *defaults`")


def _too_deep(node: yaml.Node) -> _Fatal:
    return _Fatal(node, f"values are nested more than {MAX_DEPTH} levels deep",
                  "a task file needs only a few levels: task list, task, env or command list")


def _plain(node: yaml.Node) -> None:
    if node.tag not in _PLAIN_TAGS:
        raise _Fatal(node, f"YAML tag {node.tag!r} is not allowed",
                     "remove the tag: torch reads plain YAML values (strings, numbers, booleans, lists, mappings)")


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _merged_plain(node: yaml.MappingNode) -> None:
    """Refuse a tag on any mapping (or list of mappings) that `node`'s merge keys pull in, at any depth.

    Only merge values are visited: every other node is checked when the walk reaches it. A merged
    mapping already flattened (an anchor merged twice) has no merge keys left, so this stays linear.
    """
    for key, value in node.value:
        if key.tag != _MERGE_TAG:
            continue
        _plain(value)
        for merged in value.value if isinstance(value, yaml.SequenceNode) else [value]:
            if isinstance(merged, yaml.Node):
                _plain(merged)
            if isinstance(merged, yaml.MappingNode):
                _merged_plain(merged)


class _Loader(yaml.CSafeLoader):
    """The C safe loader, with the tag of each plain scalar worked out once per distinct text.

    The C composer asks this Python method for every node's tag; PyYAML's answer for a plain
    scalar runs regular expressions over it. A task file repeats the same keys and values
    thousands of times, so remembering the answer per text saves a fifth of a big file's parse.
    The tag of a plain scalar depends on its text alone: no path resolvers are registered (they
    are a PyYAML extension point torch does not use), so descending and ascending are no-ops.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._plain_tags: dict[str, str] = {}

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = self._plain_tags.get(value)
            if tag is None:
                tag = self._plain_tags[value] = str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]
            return tag
        return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass


class _Walker:
    """Turns composed YAML nodes into Python values while collecting located errors."""

    def __init__(self, filename: str, loader: Any, text: str = "", known: Mapping[bytes, Task] | None = None,
                 check_accounts: bool = True) -> None:
        self.filename = filename
        self.loader = loader
        self.text = text
        self.known = known or {}
        self.keyed = known is not None  # whether to work out the digests of the task entries
        self.check_accounts = check_accounts
        self.sources: dict[str, bytes] = {}  # digest of each task's entry by name (task_sources)
        self.errors: list[ConfigError] = []
        self.budget = MAX_VALUES
        # One object per distinct value (see `shared`), keyed by type too: 1, 1.0 and True are equal.
        self._shared: dict[tuple[type, Any], Any] = {}

    def shared(self, value: Any) -> Any:
        """`value`, or an equal one of the same type seen before in this file.

        10,000 tasks repeat the same few env names, paths and zones. One object for each keeps the
        daemon's copy small: a pickle (how configs reach the daemon) stores a shared object once.
        """
        if isinstance(value, str | float | int) or (
                isinstance(value, tuple) and all(type(x) is str or _str_pair(x) for x in value)):
            return self._shared.setdefault((type(value), value), value)
        return value

    def error(self, node: yaml.Node, field: str, problem: str, hint: str = "", task: str | None = None) -> None:
        mark = node.start_mark
        self.errors.append(ConfigError(self.filename, mark.line + 1, mark.column + 1, field, problem, hint, task))

    def value(self, node: yaml.Node, depth: int = 0) -> Any:
        """Plain Python value of a node (scalars via PyYAML's safe constructor)."""
        self.budget -= 1
        if self.budget < 0:
            # Aliases of aliases expand exponentially ("billion laughs"): a few hundred bytes would
            # otherwise cost the daemon gigabytes while it parses a reload.
            raise _too_big(node)
        if depth > MAX_DEPTH:
            raise _too_deep(node)
        tag = node.tag
        if tag == _STR_TAG and type(node) is yaml.ScalarNode:
            # Most values: the scalar's text is the value, as PyYAML would build it, without its call chain.
            return self._shared.setdefault((str, node.value), node.value)
        if tag not in _PLAIN_TAGS:
            _plain(node)
        if isinstance(node, yaml.MappingNode):
            return {self.value(k, depth + 1): self.value(v, depth + 1) for k, v in self._pairs(node)}
        if isinstance(node, yaml.SequenceNode):
            return [self.value(n, depth + 1) for n in node.value]
        try:
            return self.loader.construct_object(node, deep=True)
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            # An explicit standard tag on text it cannot be (`!!bool maybe`, `!!timestamp x`): PyYAML's
            # constructors fail in their own ways; this is the file's error, not ours.
            raise _Fatal(node, f"{node.tag.rsplit(':', 1)[-1]} value {_clip(repr(node.value))} cannot be read "
                               f"({type(exc).__name__})", "remove the tag, or write a value of that type") from None

    def _pairs(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
        # Merge keys (`<<: *common`) are legitimate YAML reuse: flatten them the way PyYAML would.
        # Flattening copies the merged mappings' pairs and drops the mappings themselves, so their
        # tags would never be seen (`<<: !!python/object:x {...}` was accepted): check them first.
        _merged_plain(node)
        self.loader.flatten_mapping(node)
        return list(node.value)

    def mapping(self, node: yaml.Node, what: str, task: str | None = None) -> dict[str, _Entry] | None:
        """Entries of a mapping node by key, reporting duplicate keys (PyYAML would keep the last silently)."""
        if not isinstance(node, yaml.MappingNode):
            return None
        _plain(node)
        has_merge = any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value)
        seen: dict[str, _Entry] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.value(key_node)
            if not isinstance(key, str):
                self.error(key_node, str(key), f"keys of {what} must be names", "write the key as text", task)
                continue
            if key in seen:
                first = seen[key].key_node.start_mark.line + 1
                self.error(key_node, key, f"duplicate key (first set on line {first})",
                           "keep only one; YAML would silently use the last", task)
                continue
            seen[key] = _Entry(key_node, value_node)
        if has_merge:
            merged = dict(seen)
            for key_node, value_node in self._pairs(node):
                key = self.value(key_node)
                if isinstance(key, str) and key not in seen:
                    merged[key] = _Entry(key_node, value_node)
            return merged
        return seen

    def unknown_keys(self, entries: dict[str, _Entry], allowed: tuple[str, ...], where: str,
                     task: str | None = None, misplaced: tuple[str, ...] = ()) -> Iterator[str]:
        for key, entry in entries.items():
            if key in allowed:
                continue
            if key in misplaced:
                self.error(entry.key_node, key, f"cannot be set in {where}", "set it on each task instead", task)
            else:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"did you mean `{close[0]}`?" if close else "allowed keys: " + ", ".join(allowed)
                self.error(entry.key_node, key, f"unknown key in {where}", hint, task)
            yield key


def _yaml_error(filename: str, exc: yaml.YAMLError, text: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    col = mark.column + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context:
        problem = f"{context}, {problem}"
    hint = "fix the YAML syntax at this position"
    bad_line = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
    if "alias" in problem or re.search(r":\s*\*", bad_line):
        hint = 'quote the schedule: YAML reads a leading * as an alias, write schedule: "*/5 * * * * *"'
    return ConfigError(filename, line, col, "yaml", f"invalid YAML: {problem}", hint)


def parse_config(text: str, filename: str = "tasks.yaml", *, check_accounts: bool = True,
                 default_timezone: str | None = None, known: Mapping[bytes, Task] | None = None) -> Config:
    """Validate task-file `text`; return a Config or raise ConfigInvalid with every error found.

    `default_timezone` is the zone for tasks that name none and have no `defaults.timezone` (the
    host's zone, supplied by the caller so this function reads nothing from the host). `known`:
    tasks of an earlier parse by the digest of their entry (Config.sources): an entry with one of
    those digests is that task again, not validated anew (see gotorch.task_sources). Only with
    `known` (empty for a first parse) are the digests worked out and Config.sources set: ~5 us a
    task that `torch check` and the daemon's start do not need.
    """
    with _collector_paused():
        return _parse_config(text, filename, check_accounts, default_timezone, known)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a file is parsed.

    A parse allocates ~15 objects per task and frees none until the end; each allocation burst makes
    the collector rescan everything built so far. Measured on 10,000 tasks: 1.4 s with it, 0.5 s
    without. The nodes and values hold no reference cycles, so pausing it loses nothing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _parse_config(text: str, filename: str, check_accounts: bool, default_timezone: str | None,
                  known: Mapping[bytes, Task] | None) -> Config:
    global _ACCOUNT_CHECKS
    digest = hashlib.sha256(text.encode()).hexdigest()
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise ConfigInvalid([_yaml_error(filename, exc, text)]) from None
        w = _Walker(filename, loader, text, known, check_accounts)
        _ACCOUNT_CHECKS = check_accounts
        try:
            tasks, fleet = _parse_root(w, root, default_timezone or "UTC")
        except yaml.YAMLError as exc:  # a bad scalar surfaces while constructing values
            raise ConfigInvalid([*w.errors, _yaml_error(filename, exc, text)]) from None
        except (TypeError, ValueError, RecursionError) as exc:
            # Corners of YAML the walker does not model: a list as a mapping key (unhashable), a
            # 1,000-deep chain of merge keys (PyYAML flattens recursively), a 5,000-digit integer.
            raise ConfigInvalid([*w.errors, ConfigError(
                filename, 0, 0, "yaml", f"cannot read the file as a task file ({type(exc).__name__}: {exc})",
                "keep to plain mappings, lists and scalars; keys must be names")]) from None
        except _Fatal as fatal:
            mark = fatal.node.start_mark
            raise ConfigInvalid([*w.errors, ConfigError(filename, mark.line + 1, mark.column + 1, "yaml",
                                                        fatal.problem, fatal.hint)]) from None
        finally:
            _ACCOUNT_CHECKS = True
    finally:
        loader.dispose()
    if w.errors:
        raise ConfigInvalid(sorted(w.errors, key=lambda e: (e.line, e.col)))
    return Config(filename, tuple(tasks), digest, fleet, w.sources if known is not None else None)


def _parse_root(w: _Walker, root: yaml.Node | None, host_tz: str) -> tuple[list[Task], FleetSettings | None]:
    if root is None:
        w.errors.append(ConfigError(w.filename, 1, 1, "", "the file is empty",
                                    "start it with `version: 1` and a `tasks:` list"))
        return [], None
    top = w.mapping(root, "the file")
    if top is None:
        w.error(root, "", "the file must be a mapping with version, defaults and tasks",
                "start it with `version: 1` and a `tasks:` list")
        return [], None
    fleet = _parse_fleet(w, top["fleet"].value_node) if "fleet" in top else None
    tasks = _parse_tasks(w, root, top, host_tz)
    for t in tasks:
        if t.fleet is not None and fleet is None and "fleet" not in top:
            w.errors.append(ConfigError(w.filename, t.line, 1, "fleet", "a `fleet: once` task needs the file's "
                                        "top-level `fleet:` block (where etcd is)",
                                        "add fleet: {endpoints: [...], cluster: NAME}, or remove `fleet:` from "
                                        "the task", f"'{t.name}'"))
        if t.fleet is not None and t.schedule is not None and t.schedule.kind == "reboot":
            w.errors.append(ConfigError(w.filename, t.line, 1, "fleet", "an @reboot task cannot be `fleet: once`: "
                                        "each host boots on its own", "give it a schedule, or make it a daemon task",
                                        f"'{t.name}'"))
    return tasks, fleet


def _parse_fleet(w: _Walker, node: yaml.Node) -> FleetSettings | None:
    _plain(node)
    try:
        return parse_fleet(w.value(node))
    except FleetBad as bad:
        # Point at the field's own line where it has one (fleet.tls.ca: the `ca:` value).
        at = node
        for name in bad.field.split(".")[1:]:
            if not isinstance(at, yaml.MappingNode):
                break
            at = next((v for k, v in at.value if isinstance(k, yaml.ScalarNode) and k.value == name), at)
        w.error(at, bad.field, bad.problem, bad.hint)
        return None


def _parse_tasks(w: _Walker, root: yaml.Node, top: dict[str, _Entry], host_tz: str) -> list[Task]:
    list(w.unknown_keys(top, TOP_KEYS, "the file"))
    version = top.get("version")
    if version is None:
        w.error(root, "version", "missing", "add `version: 1` at the top of the file")
    else:
        v = w.value(version.value_node)
        if isinstance(v, bool) or v not in SUPPORTED_VERSIONS:
            w.error(version.value_node, "version", f"unsupported version {v!r}",
                    "this torch reads version: 1")

    defaults: dict[str, Any] = {}
    if "defaults" in top:
        defaults = _parse_defaults(w, top["defaults"].value_node)
    tz_default = defaults.pop("timezone", host_tz)

    if "tasks" not in top:
        w.error(root, "tasks", "missing", "add a `tasks:` list (it may be empty: tasks: [])")
        return []
    tasks_node = top["tasks"].value_node
    _plain(tasks_node)
    if isinstance(tasks_node, yaml.ScalarNode) and w.value(tasks_node) is None:
        # A file cut off right after `tasks:` (a half-written save) must not remove every task.
        w.error(tasks_node, "tasks", "is empty (null)",
                "list the tasks, or write `tasks: []` to run none on purpose")
        return []
    if not isinstance(tasks_node, yaml.SequenceNode):
        w.error(tasks_node, "tasks", "must be a list of tasks", "start each task with `- name: ...`")
        return []

    tasks: list[Task] = []
    names: dict[str, int] = {}
    context = task_sources.context_key(w.text, top["defaults"].value_node if "defaults" in top else None,
                                       tz_default, w.check_accounts) if w.keyed else None
    for index, node in enumerate(tasks_node.value, start=1):
        key = task_sources.node_key(w.text, node, context) if context is not None else None
        name, task = _known_task(w, node, key)
        if name is None:
            name, task = _parse_task(w, node, index, defaults, tz_default)
        if key is not None and name is not None and task is not None:
            w.sources[name] = key
        if name is not None and name in names:
            w.error(node, "name", f"duplicate task name (first used on line {names[name]})",
                    "task names are the identity across reloads: make each one unique", f"'{name}'")
            continue
        if name is not None:
            names[name] = node.start_mark.line + 1
        if task is not None:
            tasks.append(task)
    return tasks


def _known_task(w: _Walker, node: yaml.Node, key: bytes | None) -> tuple[str | None, Task | None]:
    """The task an earlier parse made of exactly this entry (at this entry's line), if still valid."""
    task = w.known.get(key) if key is not None else None
    if task is None or (w.check_accounts and not task_sources.still_valid(task)):
        return None, None
    line = node.start_mark.line + 1
    return task.name, task if task.line == line else replace(task, line=line)


def _parse_defaults(w: _Walker, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode) and w.value(node) is None:
        return {}
    entries = w.mapping(node, "defaults")
    if entries is None:
        w.error(node, "defaults", "must be a mapping of task fields", "write e.g. defaults: {timezone: UTC}")
        return {}
    bad = set(w.unknown_keys(entries, DEFAULT_KEYS, "defaults", misplaced=NOT_DEFAULTABLE))
    out: dict[str, Any] = {}
    for key, entry in entries.items():
        if key in bad:
            continue
        try:
            out[key] = _VALIDATORS[key](w.value(entry.value_node))
        except _Bad as b:
            w.error(entry.value_node, f"defaults.{key}", b.problem, b.hint)
    return out


def _parse_task(w: _Walker, node: yaml.Node, index: int, defaults: dict[str, Any],
                tz_default: str) -> tuple[str | None, Task | None]:
    """Validate one task; return its name (if readable) and the Task (if it has no errors)."""
    label = f"#{index}"
    if isinstance(node, yaml.MappingNode):
        # Name the task in every message, including duplicate-key ones raised while reading the mapping.
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == "name" and isinstance(v, yaml.ScalarNode) \
                    and NAME_RE.fullmatch(v.value):
                label = f"'{v.value}'"
                break
    entries = w.mapping(node, "a task", label)
    if entries is None:
        w.error(node, "", "each task must be a mapping", "start it with `- name: ...`", label)
        return None, None
    line = node.start_mark.line + 1
    name_entry = entries.get("name")
    if name_entry is not None:
        try:
            label = f"'{_name(w.value(name_entry.value_node))}'"
        except _Bad as b:
            w.error(name_entry.value_node, "name", b.problem, b.hint, label)
            name_entry = None
    bad = set(w.unknown_keys(entries, TASK_KEYS, "a task", label))

    values: dict[str, Any] = dict(defaults)
    ok = name_entry is not None
    if name_entry is None and "name" not in entries:
        w.error(node, "name", "missing", "every task needs a unique `name:`", label)
    for key, entry in entries.items():
        if key in bad or key == "name":
            continue
        try:
            values[key] = _VALIDATORS[key](w.value(entry.value_node))
        except _Bad as b:
            w.error(entry.value_node, key, b.problem, b.hint, label)
            ok = False

    task_type = values.get("type", "cron")
    if "command" not in entries:
        w.error(node, "command", "missing", "give the command to run (a string, or a list of arguments)", label)
        ok = False
    if task_type == "daemon" and "schedule" in entries:
        w.error(entries["schedule"].key_node, "schedule", "a daemon task has no schedule",
                "remove `schedule:` (daemon tasks are kept running), or use type: cron", label)
        ok = False
    if task_type == "cron" and "schedule" not in entries:
        w.error(node, "schedule", "missing",
                'add e.g. schedule: "0 */5 * * * *" (six fields, seconds first), or type: daemon', label)
        ok = False
    if name_entry is None:
        return None, None
    name = label[1:-1]
    if not ok:
        return name, None
    values.setdefault("timezone", tz_default)
    return name, Task(name=name, line=line, **{k: w.shared(v) for k, v in values.items()})


def compacted(load: Callable[[], Config], *, collect: bool = True) -> Config:
    """Run `load` and return its Config rebuilt in fresh memory, giving the parser's garbage back.

    Parsing 10,000 tasks peaks at ~60 MB of YAML nodes with positions. The few MB of tasks that
    survive are scattered over the allocator arenas those nodes used and pin them: a daemon would
    keep ~95 MB resident for ~10 MB of live data. A pickle round trip after the garbage is freed
    lays the config out compactly (measured: 95 -> 50 MB). Only long-lived processes need this.
    `collect=False` skips the full garbage collection, which holds the GIL throughout: a reload
    thread must not stall the loop (the daemon collects right after applying instead).
    """
    blob = pickle.dumps(load(), protocol=pickle.HIGHEST_PROTOCOL)
    forget_parsed()  # the parse caches hold Schedule objects from the scattered arenas too
    if collect:
        gc.collect()
    release_free_memory()
    config: Config = pickle.loads(blob)
    return config


def release_free_memory() -> None:
    """Hand memory the allocator holds but no object uses back to the system (glibc malloc_trim)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim, nothing lost
        ctypes.CDLL(None).malloc_trim(0)


def load_config(path: str | Path, *, check_accounts: bool = True, default_timezone: str | None = None,
                trust_euid: int | None = None) -> Config:
    """Read and validate the task file at `path`; ConfigInvalid (with a located error) if unreadable.

    With `trust_euid`, the file must also be one a daemon running as that uid may trust: see
    `gotorch.trustedfs` (owner and mode of the file and of every directory from `/`, symlinks
    resolved and checked). Either way it is opened without blocking, must be a regular file and is
    read, at most `MAX_TASK_FILE` bytes, from the descriptor that was checked.
    """
    return parse_bytes(read_task_file(path, trust_euid).data, str(path), check_accounts=check_accounts,
                       default_timezone=default_timezone)


def read_task_file(path: str | Path, trust_euid: int | None = None) -> FileBytes:
    """The task file's bytes (see `load_config`), or ConfigInvalid saying why it cannot be used."""
    # Not os.path.abspath: it removes `..` as text, and `link/../x` means the link target's parent.
    p = os.fspath(path) if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    try:
        return read_file(p, os.geteuid() if trust_euid is None else trust_euid, check=trust_euid is not None)
    except Untrusted as exc:
        raise ConfigInvalid([ConfigError(str(path), 0, 0, "", exc.problem_for(p), exc.hint)]) from None
    except OSError as exc:
        raise ConfigInvalid([ConfigError(str(path), 0, 0, "", f"cannot read the task file: {exc.strerror}",
                                         "check the path (-c FILE, TORCH_CONFIG) and its permissions")]) from None


def parse_bytes(raw: bytes, filename: str, *, check_accounts: bool = True,
                default_timezone: str | None = None, known: Mapping[bytes, Task] | None = None) -> Config:
    """Validate the raw bytes of a task file (UTF-8 is checked here, with the line of the first bad byte)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigInvalid([ConfigError(filename, line, 1, "", "the file is not valid UTF-8",
                                         "save it as UTF-8")]) from None
    return parse_config(text, filename, check_accounts=check_accounts, default_timezone=default_timezone,
                        known=known)
