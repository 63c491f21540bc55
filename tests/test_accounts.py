"""Accounts: one cache for user/group lookups, emptied by `accounts.clear()`; a reload sees new users.

The unit tests stand in for the account database by patching `pwd`/`grp` (no root needed). The
last two tests create a real user with `useradd` (root only): one against the reload's forked child,
one against the real daemon.
"""

from __future__ import annotations

import asyncio
import grp
import itertools
import os
import pwd
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gotorch import accounts, run_env
from gotorch.config import ConfigInvalid, parse_config
from tests.conftest import TICK, Torch, wait_until, zombie_children

_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    # Entries made with a patched database must not outlive the patch (nor leak into other tests).
    accounts.clear()
    yield
    accounts.clear()


def fake_user(name: str, uid: int = 54321, home: str = "/nonexistent-torch-test") -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, uid, "", home, "/bin/sh"))


class FakePasswd:
    """A passwd database by name, on top of the real one, that counts the lookups made by name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.extra: dict[str, pwd.struct_passwd] = {}
        self.calls: list[str] = []
        real = pwd.getpwnam

        def getpwnam(name: str) -> pwd.struct_passwd:
            self.calls.append(name)
            if name in self.extra:
                return self.extra[name]
            return real(name)

        monkeypatch.setattr(pwd, "getpwnam", getpwnam)


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch) -> FakePasswd:
    return FakePasswd(monkeypatch)


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_ids)}"


# --- the cache -------------------------------------------------------------------------------------


def test_found_entries_are_cached_until_clear(db: FakePasswd) -> None:
    name = unique("tqa")
    db.extra[name] = fake_user(name, home="/first")
    assert accounts.user(name).pw_dir == "/first"
    db.extra[name] = fake_user(name, home="/second")  # usermod -d
    assert accounts.user(name).pw_dir == "/first"
    assert db.calls.count(name) == 1
    accounts.clear()
    assert accounts.user(name).pw_dir == "/second"


def test_a_lookup_that_finds_nothing_is_made_again(db: FakePasswd) -> None:
    # A run due right after `useradd` must find its user without waiting for a reload.
    name = unique("tqa")
    with pytest.raises(KeyError, match=f"unknown user '{name}'"):
        accounts.user(name)
    db.extra[name] = fake_user(name)
    assert accounts.user(name).pw_name == name


def test_exists_keeps_both_answers_until_clear(db: FakePasswd) -> None:
    name = unique("tqa")
    for _ in range(3):
        assert not accounts.user_exists(name)
    assert db.calls.count(name) == 1  # one lookup, however many tasks name the account
    db.extra[name] = fake_user(name)  # useradd
    assert not accounts.user_exists(name)  # stale on purpose: only clear() refreshes it
    accounts.clear()
    assert accounts.user_exists(name)


def test_config_validation_uses_the_accounts_cache(db: FakePasswd) -> None:
    # What makes the reload child's clear() sufficient: validation reads through this same cache.
    name = unique("tqa")
    text = textwrap.dedent(f"""\
        version: 1
        tasks:
          - {{name: t, schedule: "* * * * * *", command: "true", user: {name}}}
        """)
    with pytest.raises(ConfigInvalid, match=f"unknown user '{name}'"):
        parse_config(text)
    db.extra[name] = fake_user(name)
    with pytest.raises(ConfigInvalid, match=f"unknown user '{name}'"):
        parse_config(text)
    accounts.clear()
    (task,) = parse_config(text).tasks
    assert task.user == name


def test_runner_identities_live_in_the_accounts_cache(db: FakePasswd) -> None:
    name = unique("tqa")
    db.extra[name] = fake_user(name, home="/first")
    assert run_env.base_env(name)["HOME"] == "/first"
    db.extra[name] = fake_user(name, home="/second")
    assert run_env.base_env(name)["HOME"] == "/first"
    accounts.clear()
    assert run_env.base_env(name)["HOME"] == "/second"
    db.extra[name] = fake_user(name, home="/third")
    accounts.clear()  # what the service calls on every reload
    assert run_env.base_env(name)["HOME"] == "/third"


def test_cached_keeps_results_not_exceptions() -> None:
    calls: list[str] = []

    @accounts.cached
    def derived(x: str, *, fail: bool = False) -> str:
        calls.append(x)
        if fail:
            raise KeyError(x)
        return x.upper()

    assert derived("a") == derived("a") == "A"
    assert calls == ["a"]
    for _ in range(2):
        with pytest.raises(KeyError):
            derived("b", fail=True)
    assert calls == ["a", "b", "b"]
    accounts.clear()
    assert derived("a") == "A"
    assert calls == ["a", "b", "b", "a"]


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounts, "MAX_ENTRIES", 3)
    calls: list[int] = []

    @accounts.cached
    def derived(i: int) -> int:
        calls.append(i)
        return i

    for i in range(10):
        derived(i)
    derived(9)  # among the newest: still there
    derived(0)  # the oldest: dropped long ago
    assert calls == [*range(10), 0]


# --- lookups by name and by number ------------------------------------------------------------------


def test_numbers_name_ids_when_no_account_has_that_name() -> None:
    me = pwd.getpwuid(os.geteuid())
    assert accounts.user(str(me.pw_uid)) == me
    assert accounts.user_by_id(me.pw_uid) == me
    mine = grp.getgrgid(os.getegid())
    assert accounts.group(str(mine.gr_gid)) == mine
    assert accounts.group_by_id(mine.gr_gid) == mine
    assert accounts.user(me.pw_name) == me
    assert accounts.group(mine.gr_name) == mine


@pytest.mark.parametrize("name", ["99999999999999999999999", "4294967295", "²", "no-such-account-xyz"])
def test_impossible_or_unknown_names_are_unknown_not_errors(name: str) -> None:
    # Beyond uid_t/gid_t, or digits int() refuses: once crashed the validation of the whole file.
    assert not accounts.user_exists(name)
    assert not accounts.group_exists(name)
    with pytest.raises(KeyError, match="unknown user"):
        accounts.user(name)
    with pytest.raises(KeyError, match="unknown group"):
        accounts.group(name)


def test_ids_without_entries_are_unknown() -> None:
    with pytest.raises(KeyError, match="no user with uid"):
        accounts.user_by_id(2**40)
    with pytest.raises(KeyError, match="no group with gid"):
        accounts.group_by_id(2**40)


# --- a real new user: the reload child, and the daemon -------------------------------------------


class NewUser:
    """A user name that does not exist yet; `create()` runs useradd. Removed at teardown."""

    def __init__(self) -> None:
        self.name = unique("tqn")  # useradd: at most 32 characters
        self.created = False

    def create(self) -> pwd.struct_passwd:
        r = subprocess.run(["useradd", "-M", "-s", "/bin/sh", self.name], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        self.created = True
        return pwd.getpwnam(self.name)


@pytest.fixture
def new_user() -> Iterator[NewUser]:
    if os.geteuid() != 0:
        pytest.skip("creating a user with useradd, and running a task as it, needs root")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel (passwd package) not installed")
    u = NewUser()
    try:
        yield u
    finally:
        if u.created:
            # -f: a run of the test may still be on its way out.
            subprocess.run(["userdel", "-f", u.name], capture_output=True, timeout=60)


def task_file(out: Path, extra: str = "") -> str:
    """TICK writing to `out`, plus the tasks in `extra` (YAML list items, any indentation)."""
    return TICK.format(out=out) + textwrap.indent(textwrap.dedent(extra), "  ")


def test_reload_child_does_not_trust_the_account_cache_it_inherits(new_user: NewUser, tmp_path: Path) -> None:
    # Imported here: only this test needs the loader (and the scheduling code it brings along).
    from gotorch.loader import Loaded
    from gotorch.reload_client import load_in_child

    path = tmp_path / "tasks.yaml"
    path.write_text(task_file(tmp_path / "out", f"""\
          - {{name: as-new, schedule: "* * * * * *", command: "true", user: {new_user.name}}}
        """))
    # This process plays the daemon: its cache learnt that the user does not exist ...
    with pytest.raises(ConfigInvalid, match="unknown user"):
        parse_config(path.read_text())
    assert not accounts.user_exists(new_user.name)
    new_user.create()
    # ... and the child that validates the reload is forked with that cache.
    before = set(zombie_children(os.getpid()))
    try:
        got = asyncio.run(load_in_child(path, "127.0.0.1"))
    finally:
        # The daemon's Runner.reap would collect the child; here we do.
        for pid in wait_until(lambda: set(zombie_children(os.getpid())) - before, 10, what="the child's exit"):
            os.waitpid(pid, 0)
    assert isinstance(got, Loaded), got


def test_reload_after_useradd_sees_the_new_user(new_user: NewUser, torch_daemon: Torch) -> None:
    # new_user comes first so that it is removed after the daemon (and its runs) are gone.
    t = torch_daemon
    # The run writes where the new user may write: tmp_path's parents are root's alone.
    shared = Path("/tmp") / f"torch-accounts-{new_user.name}"
    shared.mkdir(mode=0o755)
    try:
        whoami = shared / "whoami"
        base = t.tmp / "out"
        t.write(task_file(base))
        t.start()
        with_task = task_file(base, f"""\
              - name: as-new
                schedule: "* * * * * *"
                user: {new_user.name}
                command: id -un > {whoami}
            """)
        # The usual order of mistakes: the task is written before the user exists ...
        t.write(with_task)
        (failed,) = t.wait_event("reload.failed", timeout=20)
        assert any(f"unknown user '{new_user.name}'" in e for e in failed["errors"]), failed
        entry = new_user.create()
        os.chown(shared, entry.pw_uid, entry.pw_gid)
        # ... then useradd, then the file is saved again: this reload must see the new user.
        t.write(with_task)
        (applied,) = t.wait_event("reload.applied", timeout=20)
        assert applied["added"] == ["as-new"], applied
        wait_until(lambda: whoami.exists() and whoami.read_text().strip(), 10, what="a run as the new user")
        assert whoami.read_text().strip() == new_user.name
        assert whoami.stat().st_uid == entry.pw_uid  # the process itself, not torch's log, says who ran
        assert t.stop() == 0
    finally:
        shutil.rmtree(shared, ignore_errors=True)

