"""How the daemon and a reload process talk, against real processes.

A spare is given the running config ahead of time (reload_client.preload); the answer comes before the
packed config of the next reload (Loaded.blob_later).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gotorch import loader, reload_client, reload_process
from gotorch.config import parse_config
from gotorch.hosts import host_addresses
from gotorch.loader import Base, Loaded, LoadFailed, pack_config, unpack_config
from gotorch.reload_client import load_in_child, preload

HEAD = 'version: 1\ndefaults: {timezone: UTC}\ntasks:\n'
TASK = '  - {{name: {name}, schedule: "@yearly", command: "true"}}\n'


def _file(*names: str) -> str:
    return HEAD + "".join(TASK.format(name=n) for n in names)


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every message the daemon side writes to a reload process, as written."""
    sent: list[bytes] = []
    real = reload_client._send

    async def send(loop: asyncio.AbstractEventLoop, fd: int, data: bytes, *, close: bool = True) -> None:
        sent.append(bytes(data))
        await real(loop, fd, data, close=close)

    monkeypatch.setattr(reload_client, "_send", send)
    yield sent


def _base(text: str) -> Base:
    return Base(pack_config(parse_config(text, "tasks.yaml", check_accounts=False)), host_addresses("127.0.0.1"))


def _reload(path: Path, ahead: Base | None, base: Base | None) -> Loaded | LoadFailed:
    async def go() -> Loaded | LoadFailed:
        spare = reload_process.spawn()
        try:
            await preload(spare, ahead)
            got = await load_in_child(path, "127.0.0.1", base, settle=False, process=spare)
            if isinstance(got, Loaded) and got.blob_later is not None:
                got = replace(got, blob=await got.blob_later, blob_later=None)
            return got
        finally:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(spare.pid, 0)
    return asyncio.run(go())


def _request_base(sent: list[bytes]) -> object:
    request = pickle.loads(sent[-1])  # (fingerprint, path, host_ips, settle, base)
    return request[4]


def test_the_preloaded_base_is_not_sent_again_and_the_answer_is_against_it(tmp_path: Path,
                                                                           requests: list[bytes]) -> None:
    (tmp_path / "tasks.yaml").write_text(_file("a", "b", "new"))
    base = _base(_file("a", "b"))
    got = _reload(tmp_path / "tasks.yaml", base, base)
    assert isinstance(got, Loaded), got
    assert got.plan.added == ("new",) and got.plan.removed == () and got.plan.changed == ()
    assert len(requests) == 2 and _request_base(requests) == reload_process.PRELOADED
    assert len(requests[1]) < 1000  # the path and settings only


def test_a_base_that_changed_since_the_preload_is_sent_whole(tmp_path: Path, requests: list[bytes]) -> None:
    (tmp_path / "tasks.yaml").write_text(_file("a", "b", "new"))
    stale, current = _base(_file("a", "old")), _base(_file("a", "b"))
    got = _reload(tmp_path / "tasks.yaml", stale, current)
    assert isinstance(got, Loaded), got
    assert got.plan.added == ("new",) and got.plan.removed == ()  # against current, not the preload
    sent = _request_base(requests)
    assert isinstance(sent, Base) and sent.config == current.config


def test_a_process_primed_with_nothing_gets_the_base_in_the_request(tmp_path: Path, requests: list[bytes]) -> None:
    (tmp_path / "tasks.yaml").write_text(_file("a", "new"))
    base = _base(_file("a"))
    got = _reload(tmp_path / "tasks.yaml", None, base)
    assert isinstance(got, Loaded) and got.plan.added == ("new",), got
    assert isinstance(_request_base(requests), Base)


def test_an_unusable_preload_fails_the_reload_as_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The preload cannot be unpacked, yet the request relies on it: retried, never a wrong diff.
    (tmp_path / "tasks.yaml").write_text(_file("a"))
    broken = Base(b"not a packed config", host_addresses("127.0.0.1"))
    monkeypatch.setattr(reload_client, "_same_base", lambda a, b: True)
    got = _reload(tmp_path / "tasks.yaml", broken, broken)
    assert isinstance(got, LoadFailed) and got.transient, got
    assert "could not unpack" in got.errors[0].problem


def test_preload_twice_is_refused() -> None:
    async def go() -> None:
        spare = reload_process.spawn()
        try:
            await preload(spare, None)
            with pytest.raises(RuntimeError):
                await preload(spare, None)
        finally:
            spare.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(spare.pid, 0)
    asyncio.run(go())


def test_the_answer_comes_first_and_the_next_base_after_it(tmp_path: Path) -> None:
    (tmp_path / "tasks.yaml").write_text(_file("a", "b"))

    async def go() -> tuple[Loaded | LoadFailed, bool, bytes]:
        got = await load_in_child(tmp_path / "tasks.yaml", "127.0.0.1", _base(_file("a")), settle=False)
        assert isinstance(got, Loaded) and got.blob == b"" and got.blob_later is not None
        early = got.blob_later.done()
        return got, early, await asyncio.wait_for(got.blob_later, 20)

    started = time.monotonic()
    got, _, blob = asyncio.run(go())
    assert time.monotonic() - started < 20
    assert isinstance(got, Loaded)
    config = unpack_config(blob)  # the next reload's base: the config the answer describes
    assert config.digest == got.digest and [t.name for t in config.tasks] == ["a", "b"]
    assert config.sources is not None and set(config.sources) == {"a", "b"}


def test_a_failed_load_has_nothing_to_follow(tmp_path: Path) -> None:
    (tmp_path / "tasks.yaml").write_text("version: 1\ntasks: [{name: a}]\n")
    got = asyncio.run(load_in_child(tmp_path / "tasks.yaml", "127.0.0.1", None, settle=False))
    assert isinstance(got, LoadFailed) and not got.transient, got


def test_a_daemon_of_the_older_protocol_is_told_to_restart_in_its_own_format(tmp_path: Path) -> None:
    # During an upgrade the running (old) daemon starts reload processes from the new files: it
    # sends a bare pickle and reads a bare pickle, and must hear "restart", not a garbled answer.
    (tmp_path / "tasks.yaml").write_text(_file("a"))
    process = reload_process.spawn()
    try:
        os.set_blocking(process.request_fd, True)
        os.write(process.request_fd, pickle.dumps(("old-code", str(tmp_path / "tasks.yaml"), "127.0.0.1", False, None)))
        os.close(process.request_fd)
        process.request_fd = -1
        os.set_blocking(process.answer_fd, True)
        data = b""
        while chunk := os.read(process.answer_fd, 1 << 16):
            data += chunk
    finally:
        process.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(process.pid, 0)
    got = pickle.loads(data)
    assert isinstance(got, LoadFailed) and "restart the daemon" in got.errors[0].hint, got


def test_the_config_a_daemon_starts_with_lets_its_first_reload_reuse_every_entry(tmp_path: Path) -> None:
    # Without the entries' digests in the start-up Base, the first reload validated all 10,000
    # tasks again (0.6 s instead of 0.25 s): its process knows an entry only by its digest.
    path = tmp_path / "tasks.yaml"
    path.write_text(_file("a", "b"))
    config, packed = loader.load_to_run(path, "UTC")
    assert config.sources is None, "the daemon's own copy goes without them"
    assert unpack_config(packed) == config
    prepared = loader.prepare(Base(packed, host_addresses("127.0.0.1")))
    assert {t.name for t in prepared.known.values()} == {"a", "b"}
    assert loader.load_to_run(path, "UTC", keyed=False)[1] == b""  # a mere check needs none
