"""The `torch` command line: parse arguments, call one function, format the result.

People get tables and messages; programs get `--json`. Exit codes: 0 ok, 1 failure (invalid file,
daemon error), 2 usage.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gotorch import __version__
from gotorch.cli_control import kill, pause, resume, run, watch
from gotorch.cli_fleet import fleet
from gotorch.cli_history import history_cmd, logs, why
from gotorch.cli_options import (
    CONFIG_ENV,
    config_option,
    host_ips_option,
    json_option,
    state_dir_option,
)
from gotorch.config_errors import ConfigError, ConfigInvalid
from gotorch.durations import format_duration, format_span
from gotorch.hosts import host_addresses, local_timezone, match
from gotorch.trustedfs import Untrusted

if TYPE_CHECKING:  # the task-file parser (YAML, croniter) loads only for the commands that read one
    from gotorch.config import Config, Task
    from gotorch.schedule import Fire

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


def _load(path: Path, *, check_accounts: bool = True, trusted: bool = False) -> Config:
    from gotorch.config import load_config

    return load_config(path, check_accounts=check_accounts, default_timezone=local_timezone().key,
                       trust_euid=os.geteuid() if trusted else None)


def _load_or_exit(path: Path) -> Config:
    """The task file for a command that only reads it (no account checks); invalid: the errors, exit 1."""
    try:
        return _load(path, check_accounts=False)
    except ConfigInvalid as exc:
        _print_errors(exc.errors)
        sys.exit(1)


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
    from gotorch.dst_report import dst_warnings

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
@state_dir_option
@json_option
@click.option("--no-account-check", is_flag=True,
              help="Do not look up user/group names on this host (for checking a file meant for other hosts).")
@click.option("--no-permission-check", is_flag=True,
              help="Do not apply the daemon's ownership and mode rules to the file and its directories "
                   "(for a checkout that is not where the daemon reads it).")
def check(files: tuple[str, ...], config_opt: str | None, state_dir: str | None, as_json: bool,
          no_account_check: bool, no_permission_check: bool) -> None:
    """Validate task files: exit 0 valid, 1 invalid (every error on stderr), 2 usage.

    Several FILEs may be given (pre-commit passes every changed file); with --json and more than
    one file the output is a list of the per-file objects. Unless --no-permission-check, the file
    must also pass the rules the daemon applies (run as this user): owner and mode of the file and
    of every directory above it, so that "check says OK" means "start accepts it".
    """
    paths = [resolve_config(config_opt, f) for f in files] if files else [resolve_config(config_opt, None)]
    reports = [_check_one(p, not no_account_check, not no_permission_check) for p in paths]
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


def _check_one(path: Path, check_accounts: bool, trusted: bool) -> dict[str, Any]:
    try:
        config = _load(path, check_accounts=check_accounts, trusted=trusted)
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
    from gotorch.fire_times import fires

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


def _fire_note(f: Fire) -> str:
    if f.dst == "gap":
        return "  (DST: shifted; the scheduled wall time does not exist this day)"
    if f.dst == "repeat":
        return "  (DST: repeated hour, second pass)"
    return ""


@cli.command("next")
@click.argument("args", nargs=-1)
@config_option
@state_dir_option
@json_option
@click.option("-n", "count", type=click.IntRange(1, 10000), default=5, show_default=True, help="Fires per task.")
@click.option("--from", "from_", metavar="ISO-8601", help="Start after this time (no offset: the task's zone).")
def next_cmd(args: tuple[str, ...], config_opt: str | None, state_dir: str | None, as_json: bool, count: int,
             from_: str | None) -> None:
    """Show the next N fire times of each task (or of the TASKs named), in its timezone."""
    file, names = _split_file_and_tasks(args)
    path = resolve_config(config_opt, file)
    config = _load_or_exit(path)
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
            click.echo(f"  {f.at.isoformat(sep=' ')}{_fire_note(f)}")


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
        m = match(t.ips, addresses)
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
@state_dir_option
@json_option
@host_ips_option
def list_cmd(file: str | None, config_opt: str | None, state_dir: str | None, as_json: bool,
             host_ips: str | None) -> None:
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


@cli.command()
@config_option
@state_dir_option
@host_ips_option
@click.option("--foreground", "-f", is_flag=True, help="Run in this process (systemd Type=notify, containers).")
@click.option("--stop-timeout", type=click.FloatRange(min=0), default=10.0, show_default=True,
              envvar="TORCH_STOP_TIMEOUT", help="Seconds between SIGTERM and SIGKILL for runs at shutdown.")
@click.option("--history-days", type=click.FloatRange(min=0), default=90.0, show_default=True,
              envvar="TORCH_HISTORY_DAYS",
              help="Delete history rows older than this many days (0: keep them; history_keep still applies).")
@click.option("--no-history", is_flag=True, help="Record no run history (STATE/history.db is left alone).")
@click.option("--http", "http_text", metavar="ADDRESS:PORT", envvar="TORCH_HTTP", default=None,
              help="Serve the status page, /api/status and /metrics here (e.g. 127.0.0.1:9464), from a process "
                   "of its own. Off by default; read-only; put a proxy with authentication in front of any "
                   "address other hosts can reach.")
def start(config_opt: str | None, state_dir: str | None, host_ips: str | None, foreground: bool,
          stop_timeout: float, history_days: float, no_history: bool, http_text: str | None) -> None:
    """Validate the task file, then run the daemon (in the background unless --foreground).

    Exit 0 once the daemon reports it is serving (printing its pid); 1 with the reason otherwise.
    """
    from gotorch import log as logmod
    from gotorch.daemon import AlreadyRunning, Pidfile, daemonize, resolve_paths, sd_notify
    from gotorch.history import HistorySettings
    from gotorch.loader import load_to_run
    from gotorch.service import serve
    from gotorch.web import parse_listen

    path = resolve_config(config_opt, None).absolute()
    history = None if no_history else HistorySettings(max_age_days=history_days)
    try:
        http = parse_listen(http_text) if http_text else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--http / TORCH_HTTP") from None
    try:
        host_addresses(host_ips)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--host-ips / TORCH_HOST_IPS") from None
    try:
        # Handed over in a list that serve() empties: a reload replaces both, and a reference held
        # here (even the argument tuple of a call) would keep them resident for the daemon's life.
        loaded = [load_to_run(path, local_timezone().key)]
    except ConfigInvalid as exc:
        _print_errors(exc.errors)
        sys.exit(1)
    paths = resolve_paths(state_dir)
    pidfile = Pidfile(paths.pidfile)
    try:
        paths.create()
        pidfile.acquire()
    except AlreadyRunning as exc:
        click.echo(f"torch: {exc}", err=True)
        sys.exit(1)
    except (OSError, Untrusted) as exc:
        click.echo(f"torch: cannot use state directory: {exc}", err=True)
        sys.exit(1)
    if pidfile.stale_pid:
        click.echo(f"torch: warning: taking over stale pidfile {paths.pidfile} (pid {pidfile.stale_pid} "
                   "is not running torch)", err=True)

    if foreground:
        try:
            pidfile.write(os.getpid())
        except OSError as exc:
            pidfile.release()
            click.echo(f"torch: cannot write pidfile {paths.pidfile}: {exc}", err=True)
            sys.exit(1)
        logmod.configure(stream=sys.stderr)
        try:
            code = serve(path, loaded, paths=paths, host_ips=host_ips, stop_timeout=stop_timeout,
                         notify=sd_notify, history=history, http=http)
        finally:
            pidfile.release()
        sys.exit(code)

    def body(ready: Callable[[], None], fail: Callable[[str], None]) -> int:
        # In the daemon: handlers, threads and the watcher are created only now, after the fork.
        try:
            logmod.configure(file=paths.logfile)
        except (OSError, Untrusted) as exc:
            fail(f"cannot open log {paths.logfile}: {exc}")
            return 1
        return serve(path, loaded, paths=paths, host_ips=host_ips, stop_timeout=stop_timeout, on_ready=ready,
                     notify=sd_notify, history=history, http=http)

    launch = daemonize(pidfile, body)
    if launch.error is not None:
        click.echo(f"torch: start failed: {launch.error}", err=True)
        sys.exit(1)
    click.echo(f"torch started (pid {launch.pid}); log: {paths.logfile}")


# LSB init-script exit codes: `status` 3 = not running, 4 = unknown (here: not allowed to look).
EXIT_NOT_RUNNING = 3
EXIT_NO_PERMISSION = 4


def _daemon_pid(paths_pidfile: Path) -> int | None:
    from gotorch.daemon import is_torch_process, running_pid

    try:
        pid = running_pid(paths_pidfile)
    except PermissionError:
        click.echo(f"torch: permission denied reading {paths_pidfile}: cannot tell whether torch runs; "
                   "ask as root or as the daemon's user", err=True)
        sys.exit(EXIT_NO_PERMISSION)
    if pid is None:
        return None
    if pid <= 0 or not is_torch_process(pid):
        raise click.ClickException(f"{paths_pidfile} is locked but names pid {pid}, which is not a torch daemon; "
                                   "not signalling it")
    return pid


@cli.command()
@config_option
@state_dir_option
@click.option("--timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to wait for the daemon to exit.")
@click.option("--kill", is_flag=True, help="SIGKILL the daemon if it is still alive at the timeout.")
def stop(config_opt: str | None, state_dir: str | None, timeout: float, kill: bool) -> None:
    """Stop the daemon (SIGTERM), wait until it exited: exit 0; still alive at the timeout: exit 1."""
    import signal
    import time

    from gotorch.daemon import resolve_paths, running_pid

    paths = resolve_paths(state_dir)
    pid = _daemon_pid(paths.pidfile)
    if pid is None:
        click.echo("torch is not running")
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # it exited between the check and the signal
        click.echo("torch is not running")
        return
    deadline = time.monotonic() + timeout
    while running_pid(paths.pidfile) == pid:
        if time.monotonic() > deadline:
            if not kill:
                click.echo(f"torch (pid {pid}) is still running after {timeout:g} s; use --kill to SIGKILL it",
                           err=True)
                sys.exit(1)
            os.kill(pid, signal.SIGKILL)
            click.echo(f"torch (pid {pid}) killed with SIGKILL after {timeout:g} s; its runs may be left behind",
                       err=True)
            kill = False
            deadline = time.monotonic() + 10
        time.sleep(0.05)
    click.echo(f"torch (pid {pid}) stopped")


def _status(paths_socket: Path) -> dict[str, Any] | None:
    from gotorch.control import request

    try:
        reply = request(paths_socket, {"cmd": "status"})
    except (OSError, ValueError):
        return None
    status = reply.get("status")
    return status if isinstance(status, dict) else None


@cli.command()
@config_option
@state_dir_option
@click.option("--timeout", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for the daemon to report the reload.")
def reload(config_opt: str | None, state_dir: str | None, timeout: float) -> None:
    """Validate the task file, make the daemon reload it (SIGUSR2), print +added -removed ~changed."""
    import signal
    import time

    from gotorch.daemon import resolve_paths
    from gotorch.loader import load_for_daemon

    paths = resolve_paths(state_dir)
    pid = _daemon_pid(paths.pidfile)
    if pid is None:
        click.echo("torch is not running", err=True)
        sys.exit(1)
    before = _status(paths.socket)
    if before is None:
        click.echo(f"torch (pid {pid}) does not answer on {paths.socket}", err=True)
        sys.exit(1)
    path = Path(config_opt).absolute() if config_opt else Path(before["config"])
    if path != Path(before["config"]):
        raise click.UsageError(f"the daemon runs {before['config']}, not {path}")
    try:
        load_for_daemon(path, local_timezone().key)
    except ConfigInvalid as exc:
        _print_errors(exc.errors)
        click.echo("the daemon was not asked to reload; it keeps running the previous config", err=True)
        sys.exit(1)
    try:
        os.kill(pid, signal.SIGUSR2)
    except ProcessLookupError:
        click.echo("torch is not running", err=True)
        sys.exit(1)
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(0.05)
        now = _status(paths.socket)
        # A reload already in flight when we signalled is followed by ours: wait until none is pending.
        if now is not None and now["reloads"] > before["reloads"] and not now["reload_pending"]:
            break
        if time.monotonic() > deadline:
            click.echo(f"torch (pid {pid}) did not report the reload within {timeout:g} s", err=True)
            sys.exit(1)
    last = now["last_reload"] or {}
    if not last.get("ok"):
        for e in last.get("errors", []):
            click.echo(e.get("message", str(e)), err=True)
        retry = f"; torch retries at {now['reload_retry_at']}" if now.get("reload_retry_at") else ""
        click.echo(f"reload failed; still running generation {now['generation']}{retry}", err=True)
        sys.exit(1)
    change = now["last_change"]
    parts = [f"+{n}" for n in change["added"]] + [f"-{n}" for n in change["removed"]] + \
            [f"~{n}" for n in change["changed"]]
    if now["generation"] == before["generation"]:
        # The file watcher may have applied this very edit before we looked: say what the running
        # generation changed, so "no changes" is not mistaken for "my edit was ignored".
        click.echo(f"no changes (generation {now['generation']}, hash {now['hash']}; it was applied "
                   f"{now['generation_applied_at']}: {' '.join(parts) or 'no task changes'})")
    else:
        click.echo(f"generation {now['generation']} (hash {now['hash']}): {' '.join(parts) or 'no task changes'}")


@cli.command()
@config_option
@state_dir_option
@json_option
def status(config_opt: str | None, state_dir: str | None, as_json: bool) -> None:
    """Show whether the daemon runs, its config generation, last reload and tasks. Exit 3 if not running."""
    from gotorch.daemon import resolve_paths

    paths = resolve_paths(state_dir)
    pid = _daemon_pid(paths.pidfile)
    st = _status(paths.socket) if pid is not None else None
    if st is None:
        if as_json:
            click.echo(json.dumps({"running": False, "pid": pid}))
        else:
            click.echo("torch is not running" if pid is None else f"torch (pid {pid}) does not answer")
        sys.exit(EXIT_NOT_RUNNING)
    from gotorch.history.summary import add_to_status

    add_to_status(st, paths.history, time.time())
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"torch running, pid {st['pid']}, up {format_duration(round(st['uptime_s']))}")
    for hold in st.get("paused", []):  # right at the top: a paused task is what on-call must not miss
        click.echo(_hold_line(hold, time.time()))
    click.echo(f"config {st['config']}: generation {st['generation']}, hash {st['hash']}")
    lr = st["last_reload"]
    if lr is not None:
        verdict = "ok" if lr["ok"] else f"FAILED ({len(lr['errors'])} errors, old config kept)"
        click.echo(f"last reload {lr['at']} via {lr['trigger']}: {verdict}")
        for e in lr["errors"]:
            click.echo(f"  {e.get('message', e)}")
    if st.get("history_error"):
        click.echo(f"history: {st['history_error']}", err=True)
    fl = st.get("fleet")
    if fl:  # where this host stands in the fleet: etcd's state first, it decides what runs
        etcd = "etcd ok" if fl["reachable"] else f"etcd UNREACHABLE ({fl['error']})" if fl["reachable"] is False \
            else "etcd not contacted yet"
        holds = ", ".join(f"{t} (token {tok})" for t, tok in fl["held"].items()) or "nothing"
        skew = f"; CLOCK SKEW {fl['clock_skew_s']:+.1f}s, not competing" if fl.get("clock_skew_s") is not None else ""
        click.echo(f"fleet {fl['cluster']} as {fl['host']}: {etcd}; holds {holds}{skew}")
    for adopted in st.get("adopted_runs", []):  # a crash happened: say what this daemon took over
        click.echo(f"adopted {adopted['task']} run {adopted['run_id']} (pid {adopted['pid']}, started "
                   f"{_clock(adopted['started_at'], time.time())}) from a previous daemon")
    table = [("TASK", "TYPE", "RUNNING", "LAST", "FAILED 24H", "NEXT")]
    for t in st["tasks"]:
        paused = t.get("paused")
        nxt = t["next_fire"] or "-"
        if paused:
            nxt = f"PAUSED until {_clock(paused['until'], time.time())}" if paused["until"] else "PAUSED"
        table.append((t["name"], t["type"], str(t["running"]), _last_result_text(t), str(t.get("failures_24h", "-")),
                      nxt))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _clock(iso: str, now: float) -> str:
    """A status time in local time: `12:00:03` today, `2025-01-03 12:00:03` on another day."""
    tz = local_timezone()
    at = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(tz)
    same_day = at.date() == datetime.fromtimestamp(now, tz).date()
    return at.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")


def _hold_line(hold: dict[str, Any], now: float) -> str:
    """`PAUSED backup until 12:00:00 (disk full) by root (uid 0), since 11:00:00, 59m left`."""
    why = f" ({hold['reason']})" if hold["reason"] else ""
    line = f"PAUSED {hold['task']} until {_clock(hold['until'], now) if hold['until'] else 'resumed'}{why} " \
           f"by {hold['by']}, since {_clock(hold['since'], now)}"
    if not hold["until"]:
        return f"{line}; `torch resume {hold['task']}` ends it"
    left = datetime.fromisoformat(hold["until"].replace("Z", "+00:00")).timestamp() - now
    return f"{line}, {format_duration(max(1, round(left)))} left"


def _last_result_text(t: dict[str, Any]) -> str:
    """`failed (exit 3) 5m ago`, from the history (else the daemon's own last status, without an age)."""
    last = t.get("last_result")
    if not last:
        return str(t["last_status"] or "-")
    what = str(last["status"])
    if last["exit_code"] not in (None, 0):
        what += f" (exit {last['exit_code']})"
    elif last["signal"]:
        what += f" ({last['signal']})"
    if last["ago_s"] is not None:
        what += f" {format_span(last['ago_s'], minimum=1)} ago"
    return what


cli.add_command(run)
cli.add_command(kill)
cli.add_command(watch)
cli.add_command(pause)
cli.add_command(resume)
cli.add_command(fleet)
cli.add_command(history_cmd)
cli.add_command(logs)
cli.add_command(why)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="torch")

