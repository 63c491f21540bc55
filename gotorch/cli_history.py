"""`torch history`, `torch logs` and `torch why`: the commands that answer from the run history.

They read STATE/history.db directly and read-only (history.query.open_readonly): they work whether
or not the daemon runs, and cannot create or change the database under it.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TypeVar

import click

from gotorch.cli_options import (
    config_option,
    host_ips_option,
    json_option,
    parse_time,
    state_dir_option,
)
from gotorch.durations import format_duration, parse_duration
from gotorch.history.query import (
    NONRUN_STATUSES,
    STATUSES,
    HistoryReader,
    HistoryRow,
    HistoryUnreadable,
    find_row,
    history,
    read_history,
    runs_with_output,
    task_exists,
)
from gotorch.hosts import IPAddress, host_addresses, local_timezone, match


def _history_path(state_dir: str | None) -> Path:
    from gotorch.daemon import resolve_paths

    return resolve_paths(state_dir).history


T = TypeVar("T")


def _read_or_none(state_dir: str | None, work: Callable[[sqlite3.Connection | None], T]) -> T:
    """`work(db)` on the history opened read-only (db None: no history yet); unreadable: message, exit 1."""
    path = _history_path(state_dir)
    try:
        return read_history(path, work)
    except HistoryUnreadable as exc:
        click.echo(f"torch: {exc}", err=True)
        sys.exit(1)
    except sqlite3.Error as exc:  # damage past the header shows only when a query reaches it
        click.echo(f"torch: {HistoryUnreadable(path, str(exc))}", err=True)
        sys.exit(1)


def _read(state_dir: str | None, when_missing: Callable[[], None], work: Callable[[sqlite3.Connection], T]) -> T:
    """`work(db)` on the history opened read-only; missing: call `when_missing`, exit 0; unreadable: exit 1."""

    def or_missing(db: sqlite3.Connection | None) -> T:
        if db is None:
            when_missing()
            sys.exit(0)
        return work(db)

    return _read_or_none(state_dir, or_missing)


def _no_history() -> None:
    click.echo("no history yet", err=True)


def _parse_since(text: str | None, now: float) -> float | None:
    if text is None:
        return None
    try:
        ago = parse_duration(text)
    except ValueError:
        return parse_time(text, "--since")
    if ago < 0:
        raise click.BadParameter(f"{text!r}: a duration ago cannot be negative", param_hint="--since")
    return now - ago


def _parse_statuses(values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for value in values:
        for s in (x.strip() for x in value.split(",")):
            if not s:
                continue
            if s not in STATUSES:  # a typo would otherwise silently match nothing
                raise click.BadParameter(f"unknown status {s!r}; one of {', '.join(STATUSES)}",
                                         param_hint="--status")
            if s not in out:
                out.append(s)
    return out


def _local_time(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, local_timezone()).strftime("%Y-%m-%d %H:%M:%S")


def _run_duration(d: float | None) -> str:
    """`1.52s` under a minute, `3m20s` above; `-` for none."""
    if d is None:
        return "-"
    return f"{d:.2f}s" if d < 60 else format_duration(round(d))


@click.command("history")
@click.argument("tasks", nargs=-1)
@config_option
@state_dir_option
@json_option
@click.option("--status", "statuses", multiple=True, metavar="S[,S]",
              help=f"Only these statuses (repeatable): {', '.join(STATUSES)}.")
@click.option("--since", metavar="DURATION|ISO",
              help="Only rows started that long ago or later (2h, 1d) or at/after this ISO-8601 time.")
@click.option("--until", metavar="ISO", help="Only rows started at/before this ISO-8601 time.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="At most N rows, newest first (0: no limit).")
@click.option("--all", "all_", is_flag=True, help="Include skipped and missed fires, not only runs.")
def history_cmd(tasks: tuple[str, ...], config_opt: str | None, state_dir: str | None, as_json: bool,
                statuses: tuple[str, ...], since: str | None, until: str | None, limit: int, all_: bool) -> None:
    """Show past runs of all tasks (or of the TASKs named), newest first.

    Reads the history database in the state directory; the daemon need not run. A time without
    offset is local time. Exit 0 (also when there is no history yet), 1 if it cannot be read.
    """
    import time

    wanted = _parse_statuses(statuses)
    since_t = _parse_since(since, time.time())
    until_t = None if until is None else parse_time(until, "--until")
    # Asking for skipped or missed rows by status means wanting them: no need to add --all too.
    include_nonruns = all_ or any(s in NONRUN_STATUSES for s in wanted)

    def missing() -> None:
        if as_json:
            click.echo("[]")
        _no_history()

    rows = _read(state_dir, missing, lambda db: history(db, list(tasks), wanted or None, since_t, until_t,
                                                         limit or None, include_nonruns))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return
    if not rows:
        click.echo("no matching runs", err=True)
        return
    table = [("RUN", "TASK", "SCHEDULED", "STARTED", "DURATION", "STATUS", "LATE")]
    for r in rows:
        late = "-" if r.lateness_ms is None else f"{r.lateness_ms:.0f}"
        table.append((r.run_id, r.task, _local_time(r.scheduled_at), _local_time(r.started_at),
                      _run_duration(r.duration_s), r.status_text(), late))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _run_header(row: HistoryRow) -> str:
    how = ", ".join(([row.trigger] if row.trigger else []) + ([f"attempt {row.attempt}"] if row.attempt > 1 else []))
    times = [f"started {_local_time(row.started_at)}"]
    if row.scheduled_at is not None:
        times.insert(0, f"scheduled {_local_time(row.scheduled_at)}")
    if row.ended_at is not None:
        times.append(f"ended {_local_time(row.ended_at)} ({_run_duration(row.duration_s)})")
    how = f" ({how})" if how else ""
    error = f"\n{row.error}" if row.error else ""  # why it could not start, or why its end is unknown
    return f"=== {row.task} run {row.run_id}{how}: {row.status_text()}; {', '.join(times)} ==={error}"


_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


def terminal_safe(data: bytes) -> bytes:
    """`data` with control bytes other than newline and tab written as \\xNN (as journalctl shows them)."""
    return _CONTROL.sub(lambda m: b"\\x%02x" % m.group()[0], data)


def _stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def _echo_output(row: HistoryRow) -> None:
    out = row.output
    assert out is not None  # runs_with_output always reads it
    if not (out.output_head or out.output_tail or out.output_elided):
        click.echo("(no output yet: the run is still running)" if row.status == "running" else "(no output)")
    else:
        # Raw bytes, as the run printed them: `torch logs t > file` gets the original bytes back. On a
        # terminal, control bytes are shown escaped: a task's output (possibly another user's data)
        # must not drive the operator's terminal with escape sequences.
        shown = terminal_safe if _stdout_is_tty() else bytes
        click.echo(shown(out.output_head), nl=False)
        if out.output_elided > 0:
            if not out.output_head.endswith(b"\n"):  # head ends mid-line: the marker gets its own line
                click.echo()
            click.echo(f"[... {out.output_elided} bytes elided ...]")
        click.echo(shown(out.output_tail), nl=False)
        if not (out.output_tail or out.output_head).endswith(b"\n"):
            click.echo()
    if out.dropped_bytes > 0:
        click.echo(f"[... {out.dropped_bytes} more bytes dropped: printed beyond the task's output_limit ...]")


def _no_run_message(db: sqlite3.Connection, task: str, run_id: str | None) -> str:
    """Why `logs` found nothing: a wrong task for the run id, a non-run, or nothing at all."""
    other = find_row(db, run_id) if run_id is not None else None
    if other is not None and other.task != task:
        return f"run {run_id} is a run of task '{other.task}', not of '{task}'"
    if other is not None:
        return f"{run_id} is a {other.kind} fire of task '{task}', not a run: it printed nothing"
    if run_id is not None:
        return f"no run {run_id} of task '{task}' in the history"
    if task_exists(db, task):
        return f"task '{task}' has no runs in the history, only skipped or missed fires (see torch history --all)"
    return f"no task '{task}' in the history"


@click.command()
@click.argument("task")
@config_option
@state_dir_option
@click.option("--run", "run_id", metavar="ID", help="The run with this id (default: the last run).")
@click.option("-n", "count", type=click.IntRange(1, 10000), default=None, help="The last N runs (default 1).")
def logs(task: str, config_opt: str | None, state_dir: str | None, run_id: str | None, count: int | None) -> None:
    """Print the captured output of TASK's last run (or of run ID, or of the last N runs, oldest first).

    Each run is preceded by a header line (run id, status, times). Only the first 2 KiB and the last
    6 KiB of a run's output are kept; a marker line says how much was elided between them.
    Exit 1 if there is no such task or run; 0 if there is no history yet.
    """
    if run_id is not None and count is not None:
        raise click.UsageError("give --run ID or -n N, not both")
    def query(db: sqlite3.Connection) -> list[HistoryRow]:
        found = runs_with_output(db, task, run_id, count or 1)
        if not found:
            click.echo(f"torch: {_no_run_message(db, task, run_id)}", err=True)
            sys.exit(1)
        return found

    rows = _read(state_dir, _no_history, query)
    for i, row in enumerate(rows):
        if i:
            click.echo()
        click.echo(_run_header(row))
        _echo_output(row)


# --- why -------------------------------------------------------------------------------------------


def _parse_at(text: str | None, tz: tzinfo, now: float) -> tuple[float, bool, str | None]:
    """`why --at`: (TIME in Unix seconds, whether it names an instant, a note on a DST wall time).

    A duration is that long ago, like `history --since`, and names no instant ("about 2h ago"); an
    ISO-8601 time without offset is wall time in `tz` (the task's zone), like `next --from`.
    """
    from gotorch.why import wall_time_note

    if text is None:
        return now, False, None
    try:
        ago = parse_duration(text)
    except ValueError:
        pass
    else:
        if ago < 0:
            raise click.BadParameter(f"{text!r}: a duration ago cannot be negative", param_hint="--at")
        return now - ago, False, None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration (2h, 30m, 1d) or an ISO-8601 time "
                                 "(e.g. 2027-03-28T01:00:00+01:00)", param_hint="--at") from None
    note = None
    if at.tzinfo is None:
        at, note = wall_time_note(at, tz)
    return at.timestamp(), True, note


@click.command()
@click.argument("task")
@config_option
@state_dir_option
@json_option
@host_ips_option
@click.option("--at", "at_text", metavar="ISO|DURATION",
              help="Explain the last fire at or before this time: ISO-8601 (no offset: the task's zone) "
                   "or a duration ago (2h); default now.")
def why(task: str, config_opt: str | None, state_dir: str | None, as_json: bool, host_ips: str | None,
        at_text: str | None) -> None:
    """Explain what became of TASK's last scheduled instant (at or before --at, default now).

    The first line starts with the answer: ran, skipped, missed, not scheduled (--at names a time
    with no fire: the fire before it is explained too), not on this host, disabled, daemon task,
    reboot, not recorded yet, no history. Reads the task file and the history database; the daemon
    need not run. Exit 0 with an answer; 1 if TASK is not in the task file or the history cannot
    be read; 2 usage.
    """
    from gotorch.cli import _load_or_exit, resolve_config
    from gotorch.why import Question, explain, fires_around

    now = time.time()
    path = resolve_config(config_opt, None)
    config = _load_or_exit(path)
    t = config.by_name().get(task)
    zone = local_timezone()
    at, exact, note = _parse_at(at_text, t.tz if t is not None else zone, now)
    if at > now + 1:
        raise click.BadParameter(f"{at_text!r} is in the future; `torch next {task} --from ...` shows coming fires",
                                 param_hint="--at")
    if note is not None:
        click.echo(f"torch: note: {note}", err=True)
    addresses: list[IPAddress] = []
    host = None
    fires = None
    if t is not None:
        try:
            addresses = host_addresses(host_ips)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--host-ips / TORCH_HOST_IPS") from None
        host = match(t.ips, addresses)
        if t.type == "cron" and t.schedule is not None and t.schedule.kind != "reboot":
            fires = fires_around(t.schedule, t.tz, at)
    question = Question(task, at, now, t, config.path, exact=exact, addresses=tuple(addresses), host=host,
                        fires=fires, zone=zone)
    answer = _read_or_none(state_dir, lambda db: explain(question, None if db is None else HistoryReader(db)))
    if answer.kind == "unknown_task":
        click.echo(f"torch: {answer.message}", err=True)
    if as_json:
        click.echo(json.dumps(answer.to_json(), indent=2))
    elif answer.kind != "unknown_task":
        click.echo(answer.message)
    if answer.kind == "unknown_task":
        sys.exit(1)
