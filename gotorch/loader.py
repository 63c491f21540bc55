"""Loading the task file for the daemon: trusted, settled, and for reloads parsed in a child process.

`load_to_run` and `load_for_daemon` are what `torch start` and `torch reload` run in their own process. A running
daemon instead reloads through `reload_client.load_in_child`: a child process (gotorch.reload_process, a fresh
interpreter started ahead of time, not a fork) reads, waits for the file to settle, validates,
pre-computes next fires and sends back the difference from what the daemon runs. So, whatever the
file is:

* the event loop never waits for the read (a FIFO, a hung NFS server) or for the parse, and no
  parse competes with the loop for the GIL (a 50 MB file held it for seconds in a thread);
* the parse's memory is the child's, bounded by RLIMIT_AS and returned to the system when it exits
  (a 1 GiB file left the daemon at 400 MB RSS);
* stopping the daemon never waits for a reload: the child is killed like any other child.

Failures come back as `LoadFailed`; `transient` ones (the file briefly missing during a checkout,
still being written, an I/O error, no memory or processes for the child) are worth retrying.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import pickle
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gotorch import accounts, reload_process
from gotorch.config import Config, ConfigError, ConfigInvalid, Task, compacted, parse_bytes, read_task_file
from gotorch.firequeue import FireHints, precompute
from gotorch.fleet.settings import FleetSettings
from gotorch.hosts import IPAddress, host_addresses, local_timezone
from gotorch.plan import Plan, applicable, reload_plan
from gotorch.trustedfs import FileBytes, Untrusted, read_file

if TYPE_CHECKING:
    import asyncio  # a Future in Loaded; the loop's side of a reload is gotorch.reload_client

# A file modified less than this long ago may still be being written: wait until it has not changed
# for this long (a slow `scp`, an editor writing in pieces) before applying it. With the watcher's 0.5 s
# debounce an edit is usually settled when its reload starts, so this rarely adds any wait.
SETTLE_S = 0.5
# Give up waiting for a file that never stops changing (a log someone pointed us at?) after this.
SETTLE_MAX_S = 30.0
CHILD_EXTRA_MEMORY = reload_process.CHILD_EXTRA_MEMORY


def load_for_daemon(path: Path, default_timezone: str, *, collect: bool = True) -> Config:
    """Load the task file the daemon will run: the trust checks of `trustedfs`, then validation."""
    return load_to_run(path, default_timezone, collect=collect, keyed=False)[0]


def load_to_run(path: Path, default_timezone: str, *, collect: bool = True,
                keyed: bool = True) -> tuple[Config, bytes]:
    """`load_for_daemon`, and the config packed with the digests of its entries (Config.sources).

    The packed form is the daemon's first reload's Base: that reload's process then takes every
    unchanged entry as it is, as later reloads do (10,000 tasks: its parse 0.6 -> 0.25 s, for ~10 ms
    more at start). The config itself is without them: unpickled beside the tasks, their 1.3 MB
    stayed resident after the daemon dropped them. `keyed=False`: neither digests nor packed form.
    """
    euid = os.geteuid()
    packed = b""
    if keyed:
        # The code that makes the digests is the code the daemon's reload processes are checked
        # against: take its fingerprint now, not after an upgrade on disk in between.
        reload_process.code_fingerprint()

    def load() -> Config:
        nonlocal packed
        config = _validate(read_task_file(path, euid), path, default_timezone, euid, {} if keyed else None)
        if keyed:
            packed = pack_config(config)
            config = replace(config, sources=None)
        return config

    return compacted(load, collect=collect), packed


def _validate(got: FileBytes, path: Path, default_timezone: str, euid: int,
              known: Mapping[bytes, Task] | None = None) -> Config:
    config = parse_bytes(got.data, str(path), default_timezone=default_timezone, known=known)
    if euid != 0:
        problems = account_problems(config, euid)
        if problems:
            raise ConfigInvalid(problems)
    return config


def account_problems(config: Config, euid: int) -> list[ConfigError]:
    """`user:`/`group:` other than the daemon's own need root: refuse them up front, not at every fire."""
    # A uid without a passwd entry (containers) is only known by its number, and so is its group.
    gid = os.getegid()
    own_user, own_group = {str(euid)}, {str(gid)}
    with contextlib.suppress(KeyError):
        own_user.add(accounts.user_by_id(euid).pw_name)
    with contextlib.suppress(KeyError):
        own_group.add(accounts.group_by_id(gid).gr_name)
    out = []
    for t in config.tasks:
        for field_name, value, own in (("user", t.user, own_user), ("group", t.group, own_group)):
            if value is not None and value not in own:
                out.append(ConfigError(config.path, t.line, 1, field_name,
                                       f"runs as {field_name} {value!r}, but torch is not running as root",
                                       f"run the daemon as root, or remove `{field_name}:`", f"'{t.name}'"))
    return out


class Unsettled(Exception):
    """The file kept changing for longer than we are willing to wait."""


def read_settled(path: str, euid: int, *, settle: float = SETTLE_S, max_wait: float = SETTLE_MAX_S,
                 now: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> FileBytes:
    """Read the trusted file at `path` once it has stopped changing.

    A file last modified at least `settle` seconds ago is taken as it is. A younger one is read
    again `settle` seconds later and taken only if nothing changed in between (bytes, inode, size,
    mtime); otherwise we wait again, for at most `max_wait` seconds in all (then Unsettled). A
    modification time in the future (clock skew, NFS) counts as "just now". Clock and sleep are
    injected so the rule is tested without waiting.
    """
    began = now()
    got = read_file(path, euid)
    while True:
        changed = max(got.st.st_mtime, got.st.st_ctime)
        if now() - changed >= settle:
            return got
        if now() - began >= max_wait:
            raise Unsettled(f"{path} was still being written after {max_wait:g} s")
        # Never a busy loop: a modification time in the future (clock skew) waits even when settle is 0.
        sleep(max(settle, 0.1))
        again = read_file(path, euid)
        if again.data == got.data and _same(again.st, got.st):
            return again
        got = again


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)


# --- the child ------------------------------------------------------------------------------------


# Tasks per pickled slice: unpickling 2,000 tasks takes ~20 ms, so the daemon can take a big config
# in between its fires (100,000 tasks are one pickle of 1.3 s otherwise).
SLICE = 2000
# Fresh tasks of at most this many pickled bytes (~100 tasks) unpickle in about a millisecond:
# no need to wait for early in a second, which would put off an added task's first fire by a second.
QUICK_BYTES = 32 * 1024


@dataclass(frozen=True)
class Base:
    """What the daemon runs when it asks for a reload: the child answers with the difference.

    `config` is the pickle of the config last applied (kept as bytes by the daemon, which never
    pays for pickling it again), `addresses` the host addresses it was applied with: the tasks
    running are `applicable(config, addresses)`.
    """

    config: bytes  # pack_config of it
    addresses: list[IPAddress]

    def load(self) -> tuple[Config, dict[str, tuple[Task, str | None]]]:
        """The base config and the tasks it runs here (in the child)."""
        config = unpack_config(self.config)
        return config, applicable(config, self.addresses)[0]


@dataclass(frozen=True)
class Prepared:
    """A Base as the child uses it: unpacked, with the tasks it runs here and its tasks by entry digest."""

    config: Config
    running: dict[str, tuple[Task, str | None]]
    known: dict[bytes, Task]


def prepare(base: Base) -> Prepared:
    """Unpack `base` for a reload (~0.1 s for 10,000 tasks: a spare process does it ahead of time)."""
    config, running = base.load()
    return Prepared(config, running, known_tasks(config))


def known_tasks(config: Config) -> dict[bytes, Task]:
    """The tasks of `config` by the digest of their entry, for the next parse (see gotorch.task_sources)."""
    sources = config.sources or {}
    return {key: t for t in config.tasks if (key := sources.get(t.name)) is not None}


def pack_config(config: Config) -> bytes:
    """The config as the daemon keeps it for its next reload: a compressed pickle (10,000 tasks: ~0.5 MB).

    With the digests of its task entries (Config.sources), when it has them.
    """
    return zlib.compress(pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL), 1)


def unpack_config(blob: bytes) -> Config:
    """The config `pack_config` packed."""
    config: Config = pickle.loads(zlib.decompress(blob))
    return config


@dataclass(frozen=True)
class Loaded:
    """A valid config from the child, as the difference from the daemon's `Base`.

    A reload that changes one task of 10,000 sends that task, not 10,000: the daemon keeps its own
    objects for the rest, so taking the answer costs it a few milliseconds.
    """

    digest: str
    path: str
    addresses: list[IPAddress]
    blob: bytes  # pack_config of the whole new config: the next reload's Base (b"": see blob_later)
    order: tuple[str, ...]  # every task's name, in file order
    fresh: list[bytes]  # pickles of the tasks that are not the base config's, SLICE at a time
    plan: Plan  # against Base.running (see plan.reload_plan)
    here: dict[str, str | None]  # matched address of each name the plan adds, changes or refreshes
    hints: bytes  # pickle of FireHints for the tasks the plan adds or changes
    fleet: FleetSettings | None = None  # the file's `fleet:` block
    # Set by load_in_child when the child sends `blob` after the answer (see reload_process.main):
    # the daemon applies the answer meanwhile; never pickled.
    blob_later: asyncio.Future[bytes] | None = field(default=None, compare=False)

    async def unpack(self, base: Config, quiet: Callable[[], Awaitable[None]],
                     quick: Callable[[], Awaitable[None]] | None = None
                     ) -> tuple[Config, dict[str, tuple[Task, str | None]], FireHints]:
        """The new config, the tasks the plan needs (`apply_plan`) and their next fires.

        `base` must be the config the child was given; fresh tasks are unpickled a slice at a time,
        awaiting `quiet()` before each; a change small enough to take a millisecond or so awaits
        `quick()` instead (a moment that may be later in the second) when given.
        """
        if quick is not None and sum(len(b) for b in self.fresh) <= QUICK_BYTES:
            quiet = quick
        fresh: dict[str, Task] = {}
        for blob in self.fresh:
            await quiet()
            fresh.update((t.name, t) for t in pickle.loads(blob))
            # Long-lived from now on: out of the collector's sight, or a full collection that a
            # tick's allocations happen to trigger would scan them all (20-50 ms for 10,000 tasks).
            gc.freeze()
        if fresh:
            await quiet()
        old = {t.name: t for t in base.tasks} if len(fresh) < len(self.order) else {}
        tasks = tuple(fresh.get(n) or old[n] for n in self.order)
        part = {n: (fresh.get(n) or old[n], ip) for n, ip in self.here.items()}
        hints: FireHints = pickle.loads(self.hints)
        return Config(self.path, tasks, self.digest, self.fleet), part, hints


def _pack(config: Config, addresses: list[IPAddress], loaded_base: tuple[Config, dict[str, tuple[Task, str | None]]]
          | None, wall: float, *, blob: bool = True) -> Loaded:
    """The answer to a daemon running `loaded_base` (None: nothing yet, so everything is new).

    `blob=False`: without the packed config (b""), for the caller to send after the answer.
    """
    dump = functools.partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL)
    base_config, running = loaded_base if loaded_base is not None else (None, {})
    old = {t.name: t for t in base_config.tasks} if base_config is not None else {}
    # A task equal to the base's but on another line is sent too: the daemon's copy says where it is.
    # Identity first: most tasks are the base's own objects (gotorch.task_sources), and comparing
    # 10,000 dataclasses field by field costs tens of ms.
    fresh = [t for t in config.tasks if (o := old.get(t.name)) is not t and (o is None or o != t or o.line != t.line)]
    here, _ = applicable(config, addresses)
    # Unchanged tasks are the daemon's own objects: the plan compares by identity first.
    here = {n: (old[n] if n in old and (old[n] is t or (old[n] == t and old[n].line == t.line)) else t, ip)
            for n, (t, ip) in here.items()}
    plan = reload_plan(running, here)
    touched = (*plan.added, *plan.changed, *plan.unchanged)
    hints = precompute((here[n][0] for n in (*plan.added, *plan.changed)), wall)
    return Loaded(config.digest, config.path, addresses, pack_config(config) if blob else b"",
                  tuple(t.name for t in config.tasks),
                  [dump(fresh[i:i + SLICE]) for i in range(0, len(fresh), SLICE)], plan,
                  {n: here[n][1] for n in touched}, dump(hints), config.fleet)


@dataclass(frozen=True)
class LoadFailed:
    """Why a reload could not produce a config; `transient` failures are retried with backoff."""

    errors: list[ConfigError] = field(default_factory=list)
    transient: bool = False


def _load_here(path: Path, host_ips: str | None, euid: int, base: Base | Prepared | None,
               settle: bool) -> tuple[Loaded | LoadFailed, Config | None]:
    """The child's work: settle, read, validate, compute next fires; every failure as a value.

    A Loaded answer leaves the packed config out (`blob` is b""): the config comes beside it, for
    the caller to pack and send after the answer.
    """
    file = str(path)

    def failed(problem: str, hint: str = "", *, transient: bool) -> LoadFailed:
        return LoadFailed([ConfigError(file, 0, 0, "", problem, hint)], transient)

    accounts.clear()  # a cache inherited or kept from before would miss `useradd`s since
    try:
        got = read_settled(file, euid, settle=SETTLE_S if settle else 0.0)
        prepared = prepare(base) if isinstance(base, Base) else base
        loaded_base = (prepared.config, prepared.running) if prepared is not None else None
        known = prepared.known if prepared is not None else {}
        config = _validate(got, path, local_timezone().key, euid, known)
        addresses = host_addresses(host_ips)
        return _pack(config, addresses, loaded_base, time.time(), blob=False), config
    except ConfigInvalid as exc:
        return LoadFailed(exc.errors), None
    except Untrusted as exc:
        return failed(exc.problem_for(file), exc.hint, transient=False), None
    except Unsettled as exc:
        return failed(str(exc), "torch applies a file once it has not changed for half a second",
                      transient=True), None
    except MemoryError:
        return failed(f"parsing needs more than {CHILD_EXTRA_MEMORY >> 20} MiB of memory",
                      "a task file needs far less: look for huge or repeated (aliased) values", transient=False), None
    except OSError as exc:
        return failed(f"cannot read the task file: {exc.strerror or exc}",
                      "torch retries; check the path and the filesystem", transient=True), None
    except Exception as exc:  # a bug or an unmodelled corner of YAML: say what, do not retry blindly
        return failed(f"internal error while loading: {exc!r}", "please report it", transient=False), None
