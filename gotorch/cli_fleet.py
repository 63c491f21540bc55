"""`torch fleet status` (live, from etcd) and `torch fleet plan` (offline): the fleet seen from one host.

Exit codes: 0 shown; 1 etcd unreachable or the file invalid; 2 usage, or a file without `fleet:`
(status only). `status` flags a host whose task file hash differs from this file's (a host still on
an old tasks.yaml) and a clock more than 2 s off etcd's.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

from gotorch.cli_options import config_option, json_option

if TYPE_CHECKING:
    from gotorch.config import Task
    from gotorch.fleet.etcd import KeyValue

SKEW_WARN_S = 2.0


@click.group()
def fleet() -> None:
    """Tasks shared by a fleet of hosts through etcd (`fleet: once`)."""


@fleet.command("plan")
@click.argument("file", required=False)
@config_option
@click.option("--hosts", "hosts_text", required=True, metavar="NAME=IP,...",
              help="The fleet to place the tasks on, e.g. web1=10.0.0.5,db1=10.0.0.7 (a name may repeat).")
@json_option
def plan_cmd(file: str | None, config_opt: str | None, hosts_text: str, as_json: bool) -> None:
    """Which host would run which task of FILE, under its `ips` rules (nothing is contacted)."""
    from gotorch.cli import _load_or_exit, resolve_config
    from gotorch.fleet.plan import parse_hosts, placements

    try:
        hosts = parse_hosts(hosts_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--hosts") from None
    config = _load_or_exit(resolve_config(config_opt, file))
    rows = placements(config, hosts)
    if as_json:
        click.echo(json.dumps({"hosts": {n: [str(a) for a in addrs] for n, addrs in hosts.items()},
                               "tasks": [r.to_json() for r in rows]}, indent=2))
        return
    table: list[tuple[str, ...]] = [("TASK", "TYPE", "FLEET", "RUNS ON")]
    for r in rows:
        where = r.runs if not r.hosts or r.runs == "disabled" else \
            f"{'one of' if r.runs == 'one matching host' else 'each of'}: {', '.join(r.hosts)}"
        table.append((r.name, r.type, r.fleet or "-", where))
    _print_table(table)


@fleet.command("status")
@click.argument("file", required=False)
@config_option
@json_option
def status_cmd(file: str | None, config_opt: str | None, as_json: bool) -> None:
    """Live hosts, who holds each fleet daemon task and who claimed each fleet cron task's last fire (etcd)."""
    from gotorch.cli import _load_or_exit, resolve_config
    from gotorch.fleet.etcd import Etcd, Unreachable

    config = _load_or_exit(resolve_config(config_opt, file))
    if config.fleet is None:
        click.echo(f"torch: {config.path} has no `fleet:` block: its tasks are not shared by a fleet", err=True)
        sys.exit(2)
    try:
        etcd = Etcd(config.fleet)
        prefix = config.fleet.prefix
        hosts = etcd.get_prefix(f"{prefix}hosts/")
        elections = etcd.get_prefix(f"{prefix}elect/")
        fires = etcd.get_prefix(f"{prefix}fires/")
    except Unreachable as exc:
        click.echo(f"torch: {exc}", err=True)
        sys.exit(1)
    except ImportError:
        click.echo("torch: talking to etcd needs the etcd extra: pip install 'torch[etcd]'", err=True)
        sys.exit(1)
    report = _report(config.short_hash, config.fleet.cluster, hosts, elections, fires, config.tasks)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"fleet {report['cluster']}: {len(report['hosts'])} hosts; this file's hash {report['config_hash']}")
    table: list[tuple[str, ...]] = [("HOST", "ADDRESSES", "VERSION", "CONFIG", "CLOCK", "")]
    for h in report["hosts"]:
        flags = [f for f, on in (("STALE CONFIG", h["stale"]), ("CLOCK SKEW", h["skewed"])) if on]
        skew = "-" if h["clock_skew_s"] is None else f"{h['clock_skew_s']:+.1f}s"
        table.append((h["name"], ",".join(h["addresses"]), str(h["version"]), str(h["config_hash"]), skew,
                      " ".join(flags)))
    _print_table(table)
    rows: list[tuple[str, ...]] = [("TASK", "TYPE", "HELD BY / LAST CLAIMED BY")]
    for name, held in report["daemon_tasks"].items():
        token = f" (token {held['token']})" if held["host"] else ""
        rows.append((name, "daemon", f"{held['host'] or 'nobody'}{token}"))
    for name, last in report["cron_tasks"].items():
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["scheduled"])) if last["scheduled"] else "-"
        rows.append((name, "cron", f"{last['host'] or '-'} at {when}" if last["scheduled"] else "not run yet"))
    if len(rows) > 1:
        click.echo("")
        _print_table(rows)


def _report(config_hash: str, cluster: str, hosts: list[KeyValue], elections: list[KeyValue],
            fires: list[KeyValue], tasks: Iterable[Task]) -> dict[str, Any]:
    """The JSON of `fleet status` from the keys read (pure)."""
    out_hosts = []
    for h in sorted(hosts, key=lambda kv: kv.key):
        v = h.value
        try:  # what a host wrote: trust its shape no more than its clock
            skew = None if v.get("skew") is None else float(v["skew"])
        except (TypeError, ValueError):
            skew = None
        addresses = v.get("addresses")
        out_hosts.append({
            "name": str(v.get("name", h.key.rsplit("/", 1)[-1])),
            "addresses": [str(a) for a in addresses] if isinstance(addresses, list) else [],
            "version": v.get("version"), "config_hash": v.get("config_hash"), "pid": v.get("pid"),
            "clock_skew_s": skew,
            "stale": v.get("config_hash") != config_hash,  # not on the task file this command was given
            "skewed": skew is not None and abs(skew) > SKEW_WARN_S,
        })
    held = {e.key.rsplit("/", 1)[-1]: e for e in elections}
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    for f in fires:
        task, _, instant = f.key[len(f"/torch/{cluster}/fires/"):].rpartition("/")
        if instant.isdigit() and (task not in last or int(instant) > last[task][0]):
            last[task] = (int(instant), f.value)
    daemon_tasks: dict[str, dict[str, Any]] = {}
    cron_tasks: dict[str, dict[str, Any]] = {}
    for t in tasks:
        if t.fleet != "once":
            continue
        if t.type == "daemon":
            e = held.get(t.name)
            daemon_tasks[t.name] = {"host": e.value.get("host") if e else None,
                                    "token": e.create_revision if e else None}
        else:
            at, value = last.get(t.name, (0, {}))
            cron_tasks[t.name] = {"scheduled": at or None, "host": value.get("host"),
                                  "run_id": value.get("run_id")}
    return {"cluster": cluster, "config_hash": config_hash, "hosts": out_hosts, "daemon_tasks": daemon_tasks,
            "cron_tasks": cron_tasks}


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
