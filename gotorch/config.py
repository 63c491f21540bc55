"""The task file: parse `tasks.yaml` and validate it into a `Config`, or report every error at once.

Pure: text in, value or errors out. No clock, no processes. The only host lookups are user and
group names (a task naming an account that does not exist is an error, as in cron), which callers
can switch off for a file meant for other hosts.

Errors read `FILE:LINE:COL: task 'NAME': FIELD: what is wrong; how to fix it`. To get real line
numbers we compose the YAML into nodes (C loader) and walk them ourselves (gotorch.yaml_nodes), which
also lets us catch duplicate keys that PyYAML would silently collapse. Each field's validator is in
gotorch.task_fields; this module puts the file together: top level, defaults, tasks.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import os
import pickle
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from gotorch import task_sources
from gotorch.config_errors import ConfigError as ConfigError
from gotorch.config_errors import ConfigInvalid as ConfigInvalid
from gotorch.fleet.settings import FleetBad, FleetSettings, parse_fleet
from gotorch.hosts import IPNetwork
from gotorch.pickling import quick_pickle
from gotorch.schedule import Schedule, forget_parsed
from gotorch.task_fields import (
    DEFAULT_KEYS,
    HISTORY_KEEP,
    NAME_RE,
    NOT_DEFAULTABLE,
    TASK_KEYS,
    VALIDATORS,
    Bad,
    TaskType,
    account_checks,
)
from gotorch.trustedfs import FileBytes, Untrusted, read_file
from gotorch.yaml_nodes import Entry, Fatal, Loader, Walker, plain, yaml_error

SUPPORTED_VERSIONS = (1,)
TOP_KEYS = ("version", "defaults", "tasks", "fleet")


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
    digest = hashlib.sha256(text.encode()).hexdigest()
    loader = Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise ConfigInvalid([yaml_error(filename, exc, text)]) from None
        w = Walker(filename, loader, text, known, check_accounts)
        try:
            with account_checks(check_accounts):
                tasks, fleet = _parse_root(w, root, default_timezone or "UTC")
        except yaml.YAMLError as exc:  # a bad scalar surfaces while constructing values
            raise ConfigInvalid([*w.errors, yaml_error(filename, exc, text)]) from None
        except (TypeError, ValueError, RecursionError) as exc:
            # Corners of YAML the walker does not model: a list as a mapping key (unhashable), a
            # 1,000-deep chain of merge keys (PyYAML flattens recursively), a 5,000-digit integer.
            raise ConfigInvalid([*w.errors, ConfigError(
                filename, 0, 0, "yaml", f"cannot read the file as a task file ({type(exc).__name__}: {exc})",
                "keep to plain mappings, lists and scalars; keys must be names")]) from None
        except Fatal as fatal:
            mark = fatal.node.start_mark
            raise ConfigInvalid([*w.errors, ConfigError(filename, mark.line + 1, mark.column + 1, "yaml",
                                                        fatal.problem, fatal.hint)]) from None
    finally:
        loader.dispose()
    if w.errors:
        raise ConfigInvalid(sorted(w.errors, key=lambda e: (e.line, e.col)))
    return Config(filename, tuple(tasks), digest, fleet, w.sources if known is not None else None)


def _parse_root(w: Walker, root: yaml.Node | None, host_tz: str) -> tuple[list[Task], FleetSettings | None]:
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


def _parse_fleet(w: Walker, node: yaml.Node) -> FleetSettings | None:
    plain(node)
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


def _parse_tasks(w: Walker, root: yaml.Node, top: dict[str, Entry], host_tz: str) -> list[Task]:
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
    plain(tasks_node)
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


def _known_task(w: Walker, node: yaml.Node, key: bytes | None) -> tuple[str | None, Task | None]:
    """The task an earlier parse made of exactly this entry (at this entry's line), if still valid."""
    task = w.known.get(key) if key is not None else None
    if task is None or (w.check_accounts and not task_sources.still_valid(task)):
        return None, None
    line = node.start_mark.line + 1
    return task.name, task if task.line == line else replace(task, line=line)


def _parse_defaults(w: Walker, node: yaml.Node) -> dict[str, Any]:
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
            out[key] = VALIDATORS[key](w.value(entry.value_node))
        except Bad as b:
            w.error(entry.value_node, f"defaults.{key}", b.problem, b.hint)
    return out


def _parse_task(w: Walker, node: yaml.Node, index: int, defaults: dict[str, Any],
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
            label = f"'{VALIDATORS['name'](w.value(name_entry.value_node))}'"
        except Bad as b:
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
            values[key] = VALIDATORS[key](w.value(entry.value_node))
        except Bad as b:
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
