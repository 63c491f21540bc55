"""User and group accounts: lookups by name or numeric id, behind one cache that `clear()` empties.

The account databases (NSS: /etc/passwd and /etc/group, or LDAP, sssd...) are consulted for every
task of a task file and on the spawn path, so answers are cached: with a network directory a lookup
can take milliseconds. Cached answers go stale when accounts are added, changed or removed, so
whoever knows that may have happened calls `clear()`: the daemon on every reload, and the reload's
child process before it validates the file (forked from the daemon, it inherits the daemon's cache;
without a clear, a reload after `useradd` could be judged by what the daemon saw before it).

What is cached: entries that were found. A lookup that finds nothing is asked again next time, so
a run due after `useradd` finds its user even before a reload. The exceptions are `user_exists` and
`group_exists`, which keep both answers: a task file naming one unknown account in a thousand tasks
costs one lookup. Values derived from accounts elsewhere (the runner's identities and base
environments) are kept in the same cache through `cached`, so `clear()` forgets them too.

Names that are all (ASCII) digits fall back to numeric ids, as chown(1) does: "1000" is the account
named 1000 if there is one, else the one with id 1000.
"""

from __future__ import annotations

import functools
import grp
import pwd
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

# Far above the accounts a host names in its tasks; only there so the cache cannot grow without end.
MAX_ENTRIES = 4096

# (function, args, kwargs) -> result. One dict for every cached function, so one clear() empties all.
_cache: dict[tuple[object, ...], object] = {}


def clear() -> None:
    """Forget every cached answer (and every value cached through `cached`): accounts may have changed."""
    _cache.clear()


def cached(fn: Callable[P, R]) -> Callable[P, R]:
    """Cache `fn`'s results in the accounts cache, until `clear()`; for values derived from accounts.

    Arguments must be hashable. Exceptions are not cached: the call is made again next time.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        key = (fn, args, tuple(sorted(kwargs.items())) if kwargs else ())
        try:
            return _cache[key]  # type: ignore[return-value]
        except KeyError:
            pass
        value = fn(*args, **kwargs)
        if len(_cache) >= MAX_ENTRIES:
            # Drop the oldest entry: cheap, and a full cache only happens with absurd inputs anyway.
            _cache.pop(next(iter(_cache)), None)
        _cache[key] = value
        return value

    return wrapper


def _number(name: str) -> int | None:
    # ASCII only: str.isdigit() also accepts '²', which int() refuses.
    return int(name) if name.isascii() and name.isdigit() else None


@cached
def user(name: str) -> pwd.struct_passwd:
    """The passwd entry of the user called `name`, else (all digits) of the user with that uid.

    Raises KeyError("unknown user 'NAME'") if there is neither.
    """
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    uid = _number(name)
    if uid is not None:
        try:
            return user_by_id(uid)
        except KeyError:
            pass
    raise KeyError(f"unknown user {name!r}")


@cached
def user_by_id(uid: int) -> pwd.struct_passwd:
    """The passwd entry of uid `uid`. Raises KeyError("no user with uid N") if there is none."""
    try:
        return pwd.getpwuid(uid)
    except (KeyError, OverflowError):  # OverflowError: beyond uid_t, so surely nobody's
        raise KeyError(f"no user with uid {uid}") from None


@cached
def group(name: str) -> grp.struct_group:
    """The group entry of the group called `name`, else (all digits) of the group with that gid.

    Raises KeyError("unknown group 'NAME'") if there is neither.
    """
    try:
        return grp.getgrnam(name)
    except KeyError:
        pass
    gid = _number(name)
    if gid is not None:
        try:
            return group_by_id(gid)
        except KeyError:
            pass
    raise KeyError(f"unknown group {name!r}")


@cached
def group_by_id(gid: int) -> grp.struct_group:
    """The group entry of gid `gid`. Raises KeyError("no group with gid N") if there is none."""
    try:
        return grp.getgrgid(gid)
    except (KeyError, OverflowError):  # OverflowError: beyond gid_t, so surely nobody's
        raise KeyError(f"no group with gid {gid}") from None


@cached
def user_exists(name: str) -> bool:
    """True if `user(name)` finds an entry. Both answers are cached (see the module doc)."""
    try:
        user(name)
    except KeyError:
        return False
    return True


@cached
def group_exists(name: str) -> bool:
    """True if `group(name)` finds an entry. Both answers are cached (see the module doc)."""
    try:
        group(name)
    except KeyError:
        return False
    return True
