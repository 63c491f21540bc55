"""After a crash: which runs of the previous daemon are still alive (to adopt), and which were lost.

A daemon killed with -9 (or by the OOM killer) leaves its runs behind, reparented to init and still
running. The next daemon must neither start copies beside them (max_instances, a daemon task's copy
count) nor forget them. It finds them two ways:

* the history database: a run's row says `running` from its start, with its pid and, a few ms into
  the run, its process start time (`proc_start`, clock ticks after boot). A pid and a start time name
  one process for the life of the host, so a reused pid is never taken for a run.
* /proc: each run's processes carry TORCH_RUN_KEY=<run id> in their environment. That finds the runs
  started in the last second before the crash, whose rows the writer had not committed yet, and
  the runs of a daemon started with --no-history.

`match` is pure (rows and a /proc snapshot in, a verdict out); `find` takes the snapshot. Both run
before the daemon's first fire, off the event loop.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gotorch import procfs
from gotorch.events import epoch_of
from gotorch.history import query
from gotorch.run_env import RUN_KEY_VAR

TASK_VAR = "TORCH_TASK"
RUN_TASK_VAR = "TORCH_RUN_TASK"  # the run's own task (an alert hook's TORCH_TASK names the task it reports on)
SCHEDULED_VAR = "TORCH_SCHEDULED_AT"
STATE_VAR = "TORCH_STATE_DIR"  # which daemon a run belongs to: several may share a host
# How far a process's start may be from the started_at its row records (taken just after the exec)
# for a row without a start time, or after a reboot that reused pid and tick count: a run that
# started in another boot is always further off than this.
START_SLACK_S = 5.0


@dataclass(frozen=True, slots=True)
class OpenRun:
    """A history row still `running`: the previous daemon did not see this run end."""

    run_id: str
    task: str
    pid: int | None
    started_at: float | None
    proc_start: int | None
    trigger: str
    attempt: int
    scheduled_at: float | None


@dataclass(frozen=True, slots=True)
class Proc:
    """One process of /proc, as far as adoption cares."""

    pid: int
    uid: int
    state: str
    session: int
    start: int  # clock ticks after boot
    start_epoch: float
    run_key: str | None  # its TORCH_RUN_KEY, if it has one (and its environment could be read)
    task: str | None  # its TORCH_TASK
    scheduled_at: str | None  # its TORCH_SCHEDULED_AT
    state_dir: str | None = None  # its TORCH_STATE_DIR: the daemon (state directory) that started it


@dataclass(frozen=True, slots=True)
class Survivor:
    """A run of the previous daemon that is still alive: adopt it."""

    run_id: str
    task: str
    pid: int
    started_at: float
    proc_start: int
    trigger: str
    attempt: int
    scheduled_at: float | None
    recorded: bool  # found through its history row (else only through /proc)


@dataclass(frozen=True, slots=True)
class Findings:
    """What `find` found: runs to adopt, and history rows whose run is gone (to close as `lost`)."""

    survivors: tuple[Survivor, ...] = ()
    lost: tuple[OpenRun, ...] = ()


def _is_run(row: OpenRun, proc: Proc) -> bool:
    """Whether `proc` (with the row's pid) is the process the row's run started."""
    if proc.state == "Z":
        return False
    near = row.started_at is not None and abs(proc.start_epoch - row.started_at) <= START_SLACK_S
    if row.proc_start is not None:
        # The recorded start time is exact; a far-off epoch means the host rebooted since (the
        # same ticks and pid in another boot), unless the process also carries the run's key (the
        # wall clock was stepped since).
        return proc.start == row.proc_start and (near or proc.run_key == row.run_id)
    return proc.run_key == row.run_id


def match(rows: Iterable[OpenRun], procs: Iterable[Proc], known: Callable[[list[str]], set[str]],
          uid_of_task: Callable[[str], int | None], state_dir: str | None = None) -> Findings:
    """Sort the previous daemon's runs into survivors and lost ones.

    `rows`: the history's open rows; `procs`: /proc now (the pids of the rows, and every process
    carrying a run key); `known(ids)`: which of those run ids the history has a row for, open or
    not (a process whose run has ended, e.g. a `nohup x &` left behind, is no run to adopt);
    `uid_of_task(task)`: the uid a task of the current config runs as (None: no such task here).

    A run found only through /proc is adopted when it was started by a daemon of this state
    directory (`state_dir`: other daemons on the host have runs too), its process leads its own
    session (as the runner starts every run) and belongs to the user its task runs as: another user
    cannot plant a process that holds a task back.
    """
    by_pid = {p.pid: p for p in procs}
    survivors: list[Survivor] = []
    lost: list[OpenRun] = []
    seen: set[str] = set()
    for row in rows:
        seen.add(row.run_id)
        proc = by_pid.get(row.pid) if row.pid else None
        if proc is not None and _is_run(row, proc):
            survivors.append(Survivor(row.run_id, row.task, proc.pid,
                                      row.started_at if row.started_at is not None else proc.start_epoch,
                                      proc.start, row.trigger, row.attempt, row.scheduled_at, True))
        else:
            lost.append(row)
    # Unrecorded runs: the earliest session leader carrying each key no row names.
    leaders: dict[str, Proc] = {}
    for p in by_pid.values():
        if p.run_key is None or p.run_key in seen or p.state == "Z" or p.pid != p.session or p.task is None \
                or p.state_dir != state_dir:
            continue
        best = leaders.get(p.run_key)
        if best is None or (p.start, p.pid) < (best.start, best.pid):
            leaders[p.run_key] = p
    recorded = known(list(leaders)) if leaders else set()
    for key, p in sorted(leaders.items()):
        if key in recorded or p.task is None or uid_of_task(p.task) != p.uid:
            continue
        survivors.append(Survivor(key, p.task, p.pid, p.start_epoch, p.start,
                                  "restart" if p.scheduled_at is None else "schedule", 1,
                                  _parse_iso(p.scheduled_at), False))
    return Findings(tuple(survivors), tuple(lost))


def _parse_iso(text: str | None) -> float | None:
    # The runner's TORCH_SCHEDULED_AT: "2027-01-01T00:00:00Z".
    if text is None:
        return None
    try:
        return epoch_of(text)
    except ValueError:
        return None


# --- the impure part: history rows and a /proc snapshot ----------------------------------------------


def open_rows(db: sqlite3.Connection) -> list[OpenRun]:
    """The rows of `db` still `running` (served by the runs_running index)."""
    cols = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    proc_start = "proc_start" if "proc_start" in cols else "NULL"
    return [OpenRun(*r) for r in db.execute(
        f"SELECT run_id, task, pid, started_at, {proc_start}, COALESCE(trigger, 'schedule'), attempt, scheduled_at "
        "FROM runs WHERE status = 'running' AND kind = 'run'")]


def _known(db: sqlite3.Connection | None, ids: list[str]) -> set[str]:
    if db is None or not ids:
        return set()
    found: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        found.update(r[0] for r in db.execute(
            f"SELECT run_id FROM runs WHERE run_id IN ({','.join('?' * len(chunk))})", chunk))
    return found


def _proc(pid: int, booted: float, uids: set[int] | None) -> Proc | None:
    """`pid` as adoption sees it; None if gone, or (with `uids`) owned by someone else."""
    owner = procfs.owner(pid)
    if owner is None or (uids is not None and owner not in uids):
        return None
    st = procfs.stat(pid)
    ids = procfs.uids(pid)
    if st is None or ids is None:
        return None
    # The uid that counts is one the process holds in every slot (real, effective, saved, fs): a
    # user's setuid `su` waiting for a password shows as root's in /proc, but is still the user's.
    uid = ids[0] if len(set(ids)) == 1 else -1
    env = procfs.environ(pid) or b""
    task = procfs.env_value(env, RUN_TASK_VAR) or procfs.env_value(env, TASK_VAR)
    return Proc(pid, uid, st.state, st.session, st.start, procfs.start_epoch(st.start, booted),
                procfs.env_value(env, RUN_KEY_VAR), task,
                procfs.env_value(env, SCHEDULED_VAR), procfs.env_value(env, STATE_VAR))


def snapshot(pids: Iterable[int], uids: Iterable[int]) -> list[Proc]:
    """The processes `pids` (whoever owns them), and every process of `uids` carrying a run key."""
    booted = procfs.boot_time()
    if booted is None:
        return []
    me = os.getpid()
    owners = set(uids)
    wanted = set(pids)
    found: dict[int, Proc] = {}
    for pid in procfs.pids():
        if pid == me:
            continue
        p = _proc(pid, booted, None if pid in wanted else owners)
        if p is not None and (pid in wanted or p.run_key is not None):
            found[pid] = p
    return list(found.values())


def find(history: Path | None, uids: Iterable[int], uid_of_task: Callable[[str], int | None],
         state_dir: Path) -> Findings:
    """Runs the previous daemon left: survivors to adopt and lost rows. Blocking: call it off the loop.

    `history`: STATE/history.db (None with --no-history); `uids`: whose processes may be runs (root,
    the daemon's user, the users tasks run as); `state_dir`: this daemon's (its runs carry it). An
    unreadable database is no reason not to start: then only /proc is looked at.
    """
    db: sqlite3.Connection | None = None
    rows: list[OpenRun] = []
    if history is not None:
        with contextlib.suppress(query.HistoryUnreadable, sqlite3.Error):
            db = query.open_readonly(history)
            if db is not None:
                rows = open_rows(db)
    try:
        procs = snapshot([r.pid for r in rows if r.pid], uids)
        def known(ids: list[str]) -> set[str]:
            try:
                return _known(db, ids)
            except sqlite3.Error:  # cannot tell: a process whose run ended may be adopted, never the reverse
                return set()
        return match(rows, procs, known, uid_of_task, str(state_dir))
    finally:
        if db is not None:
            db.close()
