"""The `torch` command line: parse arguments, call one function, format the result.

People get tables and messages; programs get `--json`. Exit codes: 0 ok, 1 failure (invalid file,
daemon error), 2 usage.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from gotorch import __version__
from gotorch.config import Config, ConfigError, ConfigInvalid, Task, load_config
from gotorch.durations import format_duration
from gotorch.hosts import HostMatch, host_addresses, local_timezone, match
from gotorch.schedule import Fire, dst_warnings, fires

F = TypeVar("F", bound=Callable[..., Any])
CONFIG_ENV = "TORCH_CONFIG"
LOCAL_DEFAULT = Path("etc/tasks.yaml")
SYSTEM_DEFAULT = Path("/etc/torch/tasks.yaml")


def default_config_path() -> Path:
    """TORCH_CONFIG, else etc/tasks.yaml in the current directory if present, else /etc/torch/tasks.yaml."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return LOCAL_DEFAULT if LOCAL_DEFAULT.is_file() else SYSTEM_DEFAULT


def resolve_config(option: str | None, positional: str | None) -> Path:
    """Pick the task file from `-c FILE` or the positional FILE; both given and different is a usage error."""
    if option and positional and Path(option) != Path(positional):
        raise click.UsageError(f"two task files given: -c {option} and {positional}; give one")
    chosen = option or positional
    return Path(chosen) if chosen else default_config_path()


def config_option(f: F) -> F:
    """`-c/--config FILE`, accepted after every subcommand name."""
    return click.option("-c", "--config", "config_opt", metavar="FILE",
                        help=f"Task file (default: ${CONFIG_ENV}, ./etc/tasks.yaml, /etc/torch/tasks.yaml).")(f)


def json_option(f: F) -> F:
    """`--json`: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")(f)


def host_ips_option(f: F) -> F:
    """`--host-ips A,B`: this host's addresses, overriding interface discovery."""
    return click.option("--host-ips", metavar="A,B", default=None,
                        help="This host's addresses (default: $TORCH_HOST_IPS, else every interface address).")(f)


def _load(path: Path, *, check_accounts: bool = True) -> Config:
    return load_config(path, check_accounts=check_accounts, default_timezone=local_timezone().key)


def _print_errors(errors: list[ConfigError]) -> None:
    for e in errors:
        click.echo(str(e), err=True)
    n = len(errors)
    click.echo(f"{n} error{'s' if n != 1 else ''}; the file was not accepted", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="torch")
def cli() -> None:
    """torch: a seconds-resolution cron daemon driven by one version-controlled task file."""


# --- check ---------------------------------------------------------------------------------------


def task_warnings(config: Config, now: datetime) -> list[dict[str, Any]]:
    """DST warnings for the next 12 months, located at each task's line."""
    out: list[dict[str, Any]] = []
    for t in config.tasks:
        if t.schedule is None or not t.enabled:
            continue
        for msg in dst_warnings(t.schedule, t.tz, now, 12):
            out.append({"file": config.path, "line": t.line, "task": t.name, "field": "schedule",
                        "message": f"{config.path}:{t.line}: task '{t.name}': schedule: {msg}"})
    return out


@cli.command()
@click.argument("files", nargs=-1)
@config_option
@json_option
@click.option("--no-account-check", is_flag=True,
              help="Do not look up user/group names on this host (for checking a file meant for other hosts).")
def check(files: tuple[str, ...], config_opt: str | None, as_json: bool, no_account_check: bool) -> None:
    """Validate task files: exit 0 valid, 1 invalid (every error on stderr), 2 usage.

    Several FILEs may be given (pre-commit passes every changed file); with --json and more than
    one file the output is a list of the per-file objects.
    """
    paths = [resolve_config(config_opt, f) for f in files] if files else [resolve_config(config_opt, None)]
    reports = [_check_one(p, not no_account_check) for p in paths]
    if as_json:
        click.echo(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        for r in reports:
            if r["valid"]:
                for w in r["warnings"]:
                    click.echo(f"warning: {w['message']}", err=True)
                n = r["tasks"]
                click.echo(f"{r['file']}: OK, {n} task{'s' if n != 1 else ''} (hash {r['hash']})")
            else:
                for e in r["errors"]:
                    click.echo(e["message"], err=True)
                n = len(r["errors"])
                click.echo(f"{r['file']}: {n} error{'s' if n != 1 else ''}; the file was not accepted", err=True)
    if not all(r["valid"] for r in reports):
        sys.exit(1)


def _check_one(path: Path, check_accounts: bool) -> dict[str, Any]:
    try:
        config = _load(path, check_accounts=check_accounts)
    except ConfigInvalid as exc:
        return {"file": str(path), "valid": False, "tasks": 0, "hash": None,
                "errors": [e.as_dict() for e in exc.errors], "warnings": []}
    return {"file": str(path), "valid": True, "tasks": len(config.tasks), "hash": config.short_hash,
            "errors": [], "warnings": task_warnings(config, datetime.now(UTC))}


# --- next ----------------------------------------------------------------------------------------


def _parse_from(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO-8601 time (e.g. 2027-03-28T01:00:00+01:00)",
                                 param_hint="--from") from None


def _split_file_and_tasks(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    # `torch next [FILE] [TASK...]`: the first word is the file when it looks like one.
    if args and ("/" in args[0] or args[0].endswith((".yaml", ".yml")) or Path(args[0]).is_file()):
        return args[0], list(args[1:])
    return None, list(args)


def next_fires(config: Config, names: list[str], n: int, start: datetime | None) -> list[tuple[Task, list[Fire]]]:
    """The next `n` fires of each named task (all tasks if none named), strictly after `start`."""
    by_name = config.by_name()
    unknown = [x for x in names if x not in by_name]
    if unknown:
        raise click.UsageError(f"no task named {', '.join(unknown)} in {config.path}")
    chosen = [by_name[x] for x in names] if names else list(config.tasks)
    out: list[tuple[Task, list[Fire]]] = []
    for t in chosen:
        after = start or datetime.now(UTC)
        if after.tzinfo is None:
            after = after.replace(tzinfo=t.tz)
        got = fires(t.schedule, t.tz, after, n) if t.schedule is not None and t.enabled else []
        out.append((t, got))
    return out


def _fire_note(t: Task, f: Fire) -> str:
    if f.dst == "gap":
        return "  (DST: shifted; the scheduled wall time does not exist this day)"
    if f.dst == "repeat":
        return "  (DST: repeated hour, second pass)"
    return ""


@cli.command("next")
@click.argument("args", nargs=-1)
@config_option
@json_option
@click.option("-n", "count", type=click.IntRange(1, 10000), default=5, show_default=True, help="Fires per task.")
@click.option("--from", "from_", metavar="ISO-8601", help="Start after this time (no offset: the task's zone).")
def next_cmd(args: tuple[str, ...], config_opt: str | None, as_json: bool, count: int, from_: str | None) -> None:
    """Show the next N fire times of each task (or of the TASKs named), in its timezone."""
    file, names = _split_file_and_tasks(args)
    path = resolve_config(config_opt, file)
    try:
        config = _load(path, check_accounts=False)
    except ConfigInvalid as exc:
        _print_errors(exc.errors)
        sys.exit(1)
    result = next_fires(config, names, count, _parse_from(from_))
    if as_json:
        click.echo(json.dumps([{"task": t.name, "fires": [f.at.isoformat() for f in got]} for t, got in result]))
        return
    for t, got in result:
        click.echo(f"{t.name}  ({t.schedule.text if t.schedule else t.type}, {t.timezone})")
        if not got:
            why = ("disabled" if not t.enabled else "daemon task: kept running, no schedule"
                   if t.type == "daemon" else "fires once when the daemon starts")
            click.echo(f"  no scheduled fires: {why}")
        for f in got:
            click.echo(f"  {f.at.isoformat(sep=' ')}{_fire_note(t, f)}")


# --- list ----------------------------------------------------------------------------------------


def _limits(t: Task) -> str:
    parts = [f"max={t.max_instances}"]
    if t.timeout is not None:
        parts.append(f"timeout={format_duration(t.timeout)}")
    if t.jitter:
        parts.append(f"jitter={format_duration(t.jitter)}")
    return " ".join(parts)


def task_rows(config: Config, addresses_override: str | None) -> list[dict[str, Any]]:
    """One row per task: what it is, and whether (and through which address) it applies here."""
    addresses = host_addresses(addresses_override)
    rows = []
    for t in config.tasks:
        m: HostMatch = match(t.ips, addresses)
        rows.append({
            "name": t.name,
            "type": t.type,
            "schedule": t.schedule.text if t.schedule else None,
            "timezone": t.timezone,
            "enabled": t.enabled,
            "applies": m.applies and t.enabled,
            "matched_ip": str(m.address) if m.address is not None else None,
            "ips": [str(n) for n in t.ips],
            "max_instances": t.max_instances,
            "timeout": t.timeout,
            "user": t.user,
        })
    return rows


@cli.command("list")
@click.argument("file", required=False)
@config_option
@json_option
@host_ips_option
def list_cmd(file: str | None, config_opt: str | None, as_json: bool, host_ips: str | None) -> None:
    """List the tasks, and which of them apply to this host."""
    path = resolve_config(config_opt, file)
    try:
        config = _load(path, check_accounts=False)
        rows = task_rows(config, host_ips)
    except ConfigInvalid as exc:
        _print_errors(exc.errors)
        sys.exit(1)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--host-ips / TORCH_HOST_IPS") from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    by_name = config.by_name()
    table = [("NAME", "TYPE", "SCHEDULE", "TZ", "HERE", "LIMITS")]
    for r in rows:
        here = ("disabled" if not r["enabled"] else
                (f"yes ({r['matched_ip']})" if r["matched_ip"] else "yes (all hosts)") if r["applies"] else "no")
        table.append((r["name"], r["type"], r["schedule"] or "-", r["timezone"], here, _limits(by_name[r["name"]])))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# --- start (foreground) -----------------------------------------------------------------------------


def state_dir_option(f: F) -> F:
    """`--state-dir DIR`: where the daemon keeps pidfile, log, socket and status."""
    return click.option("--state-dir", metavar="DIR", default=None,
                        help="Daemon state directory (default: $TORCH_STATE_DIR, else /run/torch etc. as root, "
                             "XDG dirs otherwise).")(f)


@cli.command()
@config_option
@state_dir_option
@host_ips_option
@click.option("--foreground", "-f", is_flag=True, help="Run in this process (systemd Type=notify, containers).")
@click.option("--stop-timeout", type=click.FloatRange(min=0), default=10.0, show_default=True,
              envvar="TORCH_STOP_TIMEOUT", help="Seconds between SIGTERM and SIGKILL for runs at shutdown.")
def start(config_opt: str | None, state_dir: str | None, host_ips: str | None, foreground: bool,
          stop_timeout: float) -> None:
    """Validate the task file and run the daemon."""
    from gotorch import log as logmod
    from gotorch.daemon import resolve_paths, sd_notify
    from gotorch.service import serve

    path = resolve_config(config_opt, None).absolute()
    try:
        config = _load(path)
        host_addresses(host_ips)
    except ConfigInvalid as exc:
        _print_errors(exc.errors)
        sys.exit(1)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--host-ips / TORCH_HOST_IPS") from None
    paths = resolve_paths(state_dir)
    try:
        paths.create()
    except OSError as exc:
        click.echo(f"torch: cannot create state directory: {exc}", err=True)
        sys.exit(1)
    if not foreground:
        click.echo("torch: background start is not implemented yet; use --foreground", err=True)
        sys.exit(2)
    logmod.configure(stream=sys.stderr)
    sys.exit(serve(path, config, state_dir=paths.state_dir, host_ips=host_ips, stop_timeout=stop_timeout,
                   notify=sd_notify))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="torch")
