"""Who a run runs as and what environment it gets: cron-like, the daemon's own never leaking in.

Cached in the accounts cache (they sit on the spawn path), so `accounts.clear()`, on every reload,
forgets them with the lookups they were made from.
"""

from __future__ import annotations

import functools
import os
import pwd
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from gotorch import accounts

if TYPE_CHECKING:
    from gotorch.runner import RunSpec

ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
RUN_ID_VAR = "TORCH_RUN_ID"
# What the kill paths look for in /proc to find a run's escaped processes: the run's own id, always
# (TORCH_RUN_ID of an alert hook names the run it reports on, and that run's kill must not take
# the hook with it).
RUN_KEY_VAR = "TORCH_RUN_KEY"


def _lookup_user(user: str | None) -> pwd.struct_passwd | None:
    """The passwd entry of `user`, or of the daemon's effective uid when None (None if it has none)."""
    if user is None:
        try:
            return accounts.user_by_id(os.geteuid())
        except KeyError:
            # Containers often run as a uid without a passwd entry; that must not stop runs.
            return None
    return accounts.user(user)  # KeyError("unknown user ...") fails the spawn


def _lookup_gid(group: str) -> int:
    """The gid of `group`; a number names a gid even without a group entry (Popen takes numbers)."""
    try:
        return accounts.group(group).gr_gid
    except KeyError:
        if group.isascii() and group.isdigit():
            return int(group)
        raise


@dataclass(frozen=True, slots=True)
class Identity:
    """What Popen needs to run as someone: None means "keep the daemon's"."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...] | None
    home_cwd: str


@accounts.cached
def identity(user: str | None, group: str | None) -> Identity:
    """The uid, gid and supplementary groups of a run as `user` (None: the daemon's) with `group`.

    The supplementary groups are what initgroups(user, gid) sets, as login, su and systemd's
    User=+Group= do: the run's gid plus every group that lists the user as a member. So with
    `group:`, the user's primary group is left out unless the group database lists the user in it.
    """
    pw = _lookup_user(user)
    gid_wanted = _lookup_gid(group) if group is not None else None
    euid, egid = os.geteuid(), os.getegid()
    home = pw.pw_dir if pw is not None else "/"
    # cron starts jobs in the user's home; an account whose home is missing (nobody: /nonexistent)
    # gets "/" rather than a failed spawn.
    home_cwd = home if os.path.isdir(home) else "/"
    if pw is not None and pw.pw_uid != euid:
        run_gid = gid_wanted if gid_wanted is not None else pw.pw_gid
        # Passing numbers, not names, keeps Popen from doing its own NSS lookups on every spawn.
        groups = tuple(os.getgrouplist(pw.pw_name, run_gid))
        return Identity(pw.pw_uid, run_gid, groups, home_cwd)
    gid = gid_wanted if gid_wanted is not None and gid_wanted != egid else None
    if gid_wanted is not None and pw is not None and euid == 0:
        # Root running a task as itself with `group:`: the same rule, or the daemon's own groups
        # (its primary group among them) would stay. An unprivileged daemon may not setgroups().
        return Identity(None, gid, tuple(os.getgrouplist(pw.pw_name, gid_wanted)), home_cwd)
    return Identity(None, gid, None, home_cwd)


@accounts.cached
def base_env(user: str | None) -> Mapping[str, str]:
    """The cron-like base environment of `user` (None: the daemon's user). Cached; read-only.

    PATH, HOME, USER, LOGNAME and SHELL, nothing else: the daemon's own environment never leaks.
    """
    pw = _lookup_user(user)
    uid = pw.pw_uid if pw is not None else os.geteuid()
    name = pw.pw_name if pw is not None else str(uid)
    return MappingProxyType({
        "PATH": ROOT_PATH if uid == 0 else USER_PATH,
        "HOME": pw.pw_dir if pw is not None and pw.pw_dir else "/",
        "USER": name,
        "LOGNAME": name,
        "SHELL": pw.pw_shell if pw is not None and pw.pw_shell else "/bin/sh",
    })


@functools.lru_cache(maxsize=256)
def iso_utc(ts: float) -> str:
    """`ts` as an ISO 8601 UTC time to the second (2026-01-02T03:04:05Z)."""
    # Cached: the runs of one second share their fire time, and strftime looks at the zone file each call.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def build_env(spec: RunSpec) -> dict[str, str]:
    """The complete environment of a run: base of its user, then the task's env, then TORCH_*.

    TORCH_* come last so a task cannot spoof the run id we use to find its escaped processes.
    """
    env = dict(base_env(spec.user))
    env.update(spec.env)
    env["TORCH_TASK"] = spec.task
    env[RUN_ID_VAR] = spec.run_id
    if spec.scheduled_ts is not None:
        env["TORCH_SCHEDULED_AT"] = iso_utc(spec.scheduled_ts)
    else:
        # A task env entry of that name must not masquerade as a fire time.
        env.pop("TORCH_SCHEDULED_AT", None)
    env.update(spec.report_env)
    env[RUN_KEY_VAR] = spec.run_id
    env["TORCH_RUN_TASK"] = spec.task  # the run's own task (a hook's TORCH_TASK is the one it reports on)
    return env
