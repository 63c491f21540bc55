"""The control socket (gotorch.control): protocol v1, peer credentials, bounded clients and streams.

Real Unix sockets and a real event loop; the client calls run in a thread, as the CLI would be
another process.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gotorch import control
from gotorch.control import Message, Peer, Reply, Server, Stream


def serve(tmp_path: Path, handler: Callable[[Message, Peer], Reply | Awaitable[Reply]],
          body: Callable[[Path, Server], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        server = Server(tmp_path / "torch.sock", handler, **kw)
        await server.start()
        try:
            await body(server.path, server)
        finally:
            server.close()
    asyncio.run(main())


def in_thread(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def raw(path: Path, data: bytes, timeout: float = 10) -> list[Message]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        if data:
            s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return [json.loads(line) for line in got.splitlines()]


def echo(request: Message, peer: Peer) -> Message:
    return {"ok": True, "cmd": request["cmd"], "uid": peer.uid, "pid": peer.pid}


def test_one_request_one_reply_with_the_peer_credentials(tmp_path: Path) -> None:
    async def body(path: Path, _s: Server) -> None:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        reply = await in_thread(control.request, path, {"cmd": "status"})
        assert reply == {"ok": True, "cmd": "status", "uid": os.geteuid(), "pid": os.getpid()}
    serve(tmp_path, echo, body)


@pytest.mark.parametrize("line, wanted", [
    (b'{"cmd": "status"}\n', "unsupported protocol version None"),
    (b'{"v": 2, "cmd": "status"}\n', "unsupported protocol version 2"),
    (b'{"v": 1}\n', "no command"),
    (b"[1, 2]\n", "one JSON object per line"),
    (b"\xff\xfe not json\n", "one JSON object per line"),
])
def test_bad_requests_get_a_clear_error(tmp_path: Path, line: bytes, wanted: str) -> None:
    async def body(path: Path, _s: Server) -> None:
        replies = await in_thread(raw, path, line)
        assert len(replies) == 1 and replies[0]["ok"] is False and wanted in replies[0]["error"]
    serve(tmp_path, echo, body)


def test_an_oversized_request_is_refused(tmp_path: Path) -> None:
    async def body(path: Path, _s: Server) -> None:
        replies = await in_thread(raw, path, b"x" * (control.MAX_REQUEST + 10))
        assert replies[0]["ok"] is False and "longer than" in replies[0]["error"]
    serve(tmp_path, echo, body)


def test_a_silent_client_neither_blocks_others_nor_stays_forever(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "REQUEST_TIMEOUT_S", 0.5)

    async def body(path: Path, _s: Server) -> None:
        silent = asyncio.ensure_future(in_thread(raw, path, b""))
        await asyncio.sleep(0.1)
        assert (await in_thread(control.request, path, {"cmd": "status"}))["ok"] is True
        assert not silent.done()
        replies = await asyncio.wait_for(silent, 10)
        assert "nothing received" in replies[0]["error"]
    serve(tmp_path, echo, body)


def test_a_handler_that_raises_is_an_error_reply_and_the_server_goes_on(tmp_path: Path) -> None:
    def handler(request: Message, peer: Peer) -> Message:
        if request["cmd"] == "boom":
            raise RuntimeError("bug")
        return echo(request, peer)

    async def body(path: Path, _s: Server) -> None:
        reply = await in_thread(control.request, path, {"cmd": "boom"})
        assert reply["ok"] is False and "internal error" in reply["error"]
        assert (await in_thread(control.request, path, {"cmd": "status"}))["ok"] is True
    serve(tmp_path, handler, body)


def test_a_peer_whose_uid_is_not_allowed_is_refused_and_reported(tmp_path: Path) -> None:
    refused: list[Peer] = []

    async def body(path: Path, _s: Server) -> None:
        reply = await in_thread(control.request, path, {"cmd": "status"})
        assert reply["ok"] is False and "permission denied" in reply["error"]
    serve(tmp_path, echo, body, on_refused=refused.append, allowed_uids=frozenset({os.geteuid() + 12345}))
    assert refused == [Peer(os.getpid(), os.geteuid(), os.getegid())]


def _as_nobody(path: Path) -> int:
    """Connect from a child process running as `nobody`; its exit code says what it got."""
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            reply = control.request(path, {"cmd": "status"})
            os._exit(3 if reply.get("ok") is False and "permission denied" in reply.get("error", "") else 4)
        except BaseException:
            os._exit(5)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as a second uid (nobody)")
def test_another_uid_is_refused_even_when_the_socket_file_lets_it_connect() -> None:
    refused: list[Peer] = []

    async def body(path: Path, _s: Server) -> None:
        # Undo the 0600 (a mistaken chmod, an inherited descriptor): the credential check still holds.
        path.chmod(0o666)
        assert await in_thread(_as_nobody, path) == 3
    # Not under pytest's tmp_path: its 0700 parents would stop `nobody` before the socket does.
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        os.chmod(d, 0o755)
        serve(Path(d), echo, body, on_refused=refused.append)
    assert [p.uid for p in refused] == [pwd.getpwnam("nobody").pw_uid]


def test_a_stream_sends_each_message_until_it_is_closed(tmp_path: Path) -> None:
    streams: list[Stream] = []

    def handler(request: Message, peer: Peer) -> Reply:
        s = Stream()
        streams.append(s)
        return s

    async def body(path: Path, _s: Server) -> None:
        got = asyncio.ensure_future(in_thread(lambda: list(control.stream(path, {"cmd": "watch"}, timeout=10))))
        while not streams:
            await asyncio.sleep(0.01)
        for i in range(3):
            streams[0].push({"ok": True, "i": i})
        streams[0].close()
        assert await asyncio.wait_for(got, 10) == [{"ok": True, "i": i} for i in range(3)]
    serve(tmp_path, handler, body)


def test_a_client_that_falls_behind_is_told_and_dropped() -> None:
    async def main() -> list[Message]:
        s = Stream(limit=5)
        closed: list[bool] = []
        s.on_close = lambda: closed.append(True)
        for i in range(10):
            s.push({"i": i})
        assert closed == [True] and s.overflowed == 1
        return [m async for m in s]

    got = asyncio.run(main())
    assert [m.get("i") for m in got[:5]] == [0, 1, 2, 3, 4]
    assert got[5]["ok"] is False and "too slow" in got[5]["error"] and len(got) == 6


def test_a_client_that_goes_away_ends_its_stream(tmp_path: Path) -> None:
    streams: list[Stream] = []
    closed: list[bool] = []

    def handler(request: Message, peer: Peer) -> Reply:
        s = Stream()
        s.on_close = lambda: closed.append(True)
        s.push({"ok": True, "hello": 1})
        streams.append(s)
        return s

    async def body(path: Path, _s: Server) -> None:
        def client() -> None:
            for _msg in control.stream(path, {"cmd": "watch"}, timeout=10):
                return  # read one line, then hang up

        await in_thread(client)
        for i in range(1000):  # the server notices the hang-up at the latest when it next writes
            if closed:
                break
            streams[0].push({"ok": True, "i": i})
            await asyncio.sleep(0.01)
        assert closed == [True]
    serve(tmp_path, handler, body)
