"""`torch run`, `torch kill`, `torch watch`, `torch pause`, `torch resume`: steering the running daemon.

Each sends one protocol-v1 request (gotorch.control) and prints the reply, or the stream of replies.
Exit codes: 0 done; 1 refused, failed or nothing to do (the message says which); 2 usage; `run
--wait` exits with the run's own code (128+N for signal N, 124 for a timeout, 127 if it could not
start).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from gotorch import control
from gotorch.cli_options import config_option, json_option, parse_time, state_dir_option
from gotorch.durations import parse_duration
from gotorch.hosts import local_timezone

EXIT_TIMEOUT = 124  # like timeout(1)
EXIT_NOT_STARTED = 127  # like a shell's "command not found"


def _socket(state_dir: str | None) -> Path:
    from gotorch.daemon import resolve_paths

    return resolve_paths(state_dir).socket


def _ask(state_dir: str | None, message: dict[str, Any]) -> dict[str, Any]:
    try:
        reply = control.request(_socket(state_dir), message)
    except (OSError, ValueError) as exc:
        click.echo(f"torch: the daemon does not answer ({exc}); is it running?", err=True)
        sys.exit(1)
    if not reply.get("ok"):
        click.echo(f"torch: {reply.get('error', 'refused')}", err=True)
        sys.exit(1)
    return reply


def _stream(state_dir: str | None, message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    try:
        yield from control.stream(_socket(state_dir), message)
    except (OSError, ValueError) as exc:
        click.echo(f"torch: the daemon does not answer ({exc}); is it running?", err=True)
        sys.exit(1)


def exit_code_of(end: dict[str, Any]) -> int:
    """The exit code `run --wait` returns for a run's end, as a shell would report the command's."""
    status = end.get("status")
    if status == "timeout":
        return EXIT_TIMEOUT
    if end.get("signal"):
        try:
            return 128 + int(signal.Signals[str(end["signal"])])
        except KeyError:
            return 128
    if status == "spawn_failed":
        return EXIT_NOT_STARTED
    if isinstance(end.get("exit_code"), int):
        return int(end["exit_code"])
    return 0 if status == "ok" else 1


@click.command("run")
@click.argument("task")
@config_option
@state_dir_option
@click.option("--wait", is_flag=True, help="Wait for the run's end and exit with its exit code.")
@click.option("--follow", is_flag=True, help="Print the run's output lines as they come (implies --wait).")
@click.option("--force", is_flag=True, help="Start even if max_instances runs are going.")
@click.option("--in", "in_", metavar="DURATION", help="Run once, this long from now (e.g. 10m).")
@click.option("--at", "at_", metavar="TIME", help="Run once at this ISO-8601 time (no offset: local time).")
def run(task: str, config_opt: str | None, state_dir: str | None, wait: bool, follow: bool, force: bool,
        in_: str | None, at_: str | None) -> None:
    """Fire TASK now (or once later): prints the run id. Refused past max_instances unless --force."""
    if in_ is not None and at_ is not None:
        raise click.UsageError("give --in or --at, not both")
    at: float | None = None
    if in_ is not None:
        try:
            at = time.time() + parse_duration(in_)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--in") from None
    elif at_ is not None:
        at = parse_time(at_, "--at")
    request = {"cmd": "run", "task": task, "force": force, "at": at, "wait": wait or follow, "follow": follow}
    if not (wait or follow):
        reply = _ask(state_dir, request)
        click.echo(reply["run_id"])
        _paused_note(task, reply)
        if reply.get("pending"):
            click.echo(f"pending: runs at {_local(reply['at'])}; cancel with `torch kill {task} --pending`", err=True)
        return
    code = 1
    for msg in _stream(state_dir, request):
        if msg.get("ok") is False:
            click.echo(f"torch: {msg.get('error', 'refused')}", err=True)
            sys.exit(1)
        event = msg.get("event")
        if "run_id" in msg and event is None:
            click.echo(msg["run_id"], err=follow)  # with --follow, stdout is the run's output only
            _paused_note(task, msg)
        elif event == "output":
            click.echo(msg["line"])
        elif event == "end":
            code = exit_code_of(msg)
            what = msg["status"] + (f" ({msg['signal']})" if msg.get("signal") else
                                    f" (exit {msg['exit_code']})" if msg.get("exit_code") else "")
            click.echo(f"run ended: {what}" + (f": {msg['error']}" if msg.get("error") else ""), err=True)
            sys.exit(code)
    click.echo("torch: the daemon ended the stream before the run ended (stopping?)", err=True)
    sys.exit(code)


def _paused_note(task: str, reply: dict[str, Any]) -> None:
    if reply.get("paused"):
        click.echo(f"note: {task} is {reply['paused']}; this manual run goes ahead anyway", err=True)


@click.command("kill")
@click.argument("task")
@config_option
@state_dir_option
@click.option("--run", "run_id", metavar="ID", help="Only this run of TASK.")
@click.option("--signal", "signame", default="TERM", show_default=True, metavar="SIG",
              help="The first signal (then KILL after the task's kill_timeout).")
@click.option("--pending", is_flag=True, help="Cancel TASK's pending `torch run --in/--at` runs instead.")
def kill(task: str, config_opt: str | None, state_dir: str | None, run_id: str | None, signame: str,
         pending: bool) -> None:
    """Stop TASK's running runs (its whole process groups); exit 1 if nothing was running."""
    reply = _ask(state_dir, {"cmd": "kill", "task": task, "run": run_id, "signal": signame, "pending": pending})
    if pending:
        for rid in reply["cancelled"]:
            click.echo(f"cancelled {rid}")
        if not reply["cancelled"]:
            click.echo(f"torch: no pending run of {task}", err=True)
            sys.exit(1)
        return
    for rid in reply["signalled"]:
        click.echo(f"{reply['signal']} sent to {rid}")
    if not reply["signalled"]:
        click.echo(f"torch: nothing of {task} is running" + (f" as run {run_id}" if run_id else ""), err=True)
        sys.exit(1)


@click.command("watch")
@click.argument("tasks", nargs=-1)
@config_option
@state_dir_option
@json_option
@click.option("--output", is_flag=True, help="Also show each output line of the runs.")
def watch(tasks: tuple[str, ...], config_opt: str | None, state_dir: str | None, as_json: bool,
          output: bool) -> None:
    """Follow the daemon live (runs, skipped and missed fires, reloads) until Ctrl-C."""
    try:
        for msg in _stream(state_dir, {"cmd": "watch", "tasks": list(tasks), "output": output}):
            if msg.get("ok") is False:
                click.echo(f"torch: {msg.get('error')}", err=True)
                sys.exit(1)
            if msg.get("event") == "watch.start":
                continue
            click.echo(json.dumps(msg) if as_json else _watch_line(msg))
    except KeyboardInterrupt:
        return
    click.echo("torch: the daemon ended the stream (stopped?)", err=True)
    sys.exit(1)


@click.command("pause")
@click.argument("tasks", nargs=-1, required=True)
@config_option
@state_dir_option
@click.option("--for", "for_", metavar="DURATION", help="Resume by itself after this long (e.g. 2h); "
              "default: until `torch resume`.")
@click.option("--reason", metavar="TEXT", help="Why, for status and the log (one line).")
def pause(tasks: tuple[str, ...], config_opt: str | None, state_dir: str | None, for_: str | None,
          reason: str | None) -> None:
    """Hold TASKS: their fires are skipped (reason `paused`) until resumed; survives a daemon restart.

    Running runs of a cron task go on; a daemon-type task is stopped, and started again on resume.
    Pausing a paused task sets its hold anew (a new --for; the old reason unless --reason is given).
    Exit 1 (nothing paused) if a name is not in the task file.
    """
    seconds: float | None = None
    if for_ is not None:
        try:
            seconds = parse_duration(for_)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--for") from None
        if seconds <= 0:
            raise click.BadParameter(f"{for_!r}: must be longer than 0 s", param_hint="--for")
    reply = _ask(state_dir, {"cmd": "pause", "tasks": list(tasks), "for": seconds, "reason": reason})
    for h in reply["paused"]:
        until = f"until {_local(h['until'])}" if h["until"] else f"until `torch resume {h['task']}`"
        click.echo(f"{'hold updated on' if h['updated'] else 'paused'} {h['task']} {until}"
                   + (f" ({h['reason']})" if h["reason"] else ""))
    _unsaved_warning(reply)


@click.command("resume")
@click.argument("tasks", nargs=-1, required=True)
@config_option
@state_dir_option
def resume(tasks: tuple[str, ...], config_opt: str | None, state_dir: str | None) -> None:
    """End the holds on TASKS now; exit 1 if one of them was not paused (the others are resumed)."""
    reply = _ask(state_dir, {"cmd": "resume", "tasks": list(tasks)})
    for name in reply["resumed"]:
        click.echo(f"resumed {name}")
    if reply["not_paused"]:
        click.echo(f"torch: not paused: {', '.join(reply['not_paused'])}", err=True)
    _unsaved_warning(reply)
    if reply["not_paused"]:
        sys.exit(1)


def _unsaved_warning(reply: dict[str, Any]) -> None:
    """The holds are in force but not on disk: say so loudly and exit 1 (a restart would undo them)."""
    if not reply.get("saved", True):
        click.echo(f"torch: warning: {reply.get('warning')}", err=True)
        sys.exit(1)


def _watch_line(msg: dict[str, Any]) -> str:
    """`12:00:01 run.end backup run=ab12-3 status=ok duration_s=1.2`: one event for a person."""
    when = datetime.fromtimestamp(float(msg.get("ts", time.time())), local_timezone()).strftime("%H:%M:%S")
    event, task = msg.get("event", "?"), msg.get("task")
    if event == "run.output":
        return f"{when} {task} {msg.get('run_id')} | {msg.get('line', '')}"
    skip = {"event", "level", "ts", "task", "line"}
    fields = " ".join(f"{k}={v}" for k, v in msg.items() if k not in skip and v not in (None, "", [], ()))
    return " ".join(x for x in (when, str(event), task, fields) if x)


def _local(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(local_timezone()).isoformat()
