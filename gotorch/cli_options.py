"""Options and argument parsers shared by the `torch` subcommands (gotorch.cli, gotorch.cli_control)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from gotorch.hosts import local_timezone

F = TypeVar("F", bound=Callable[..., Any])
CONFIG_ENV = "TORCH_CONFIG"


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


def state_dir_option(f: F) -> F:
    """`--state-dir DIR`: where the daemon keeps pidfile, log, socket and status."""
    return click.option("--state-dir", metavar="DIR", default=None,
                        help="Daemon state directory (default: $TORCH_STATE_DIR, else /run/torch etc. as root, "
                             "XDG dirs otherwise).")(f)


def parse_time(text: str, param: str) -> float:
    """An ISO-8601 time in Unix seconds; without an offset it is local wall time, like `next --from`."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        hint = "a duration (2h, 30m, 1d) or " if param == "--since" else ""
        raise click.BadParameter(f"{text!r} is not {hint}an ISO-8601 time (e.g. 2027-03-28T01:00:00+01:00)",
                                 param_hint=param) from None
    if at.tzinfo is None:  # like `next --from`: a time without offset is local wall time
        at = at.replace(tzinfo=local_timezone())
    return at.timestamp()
