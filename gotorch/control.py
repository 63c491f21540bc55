"""The control socket, protocol v1: the CLI asks the running daemon over a Unix socket.

Newline-delimited JSON. A client sends one request object carrying `"v": 1` and a `"cmd"`; the
daemon answers with one object carrying `ok` and either the result's fields or `error`. A streaming
request (`watch`, `run --follow`) gets one object per line until the stream ends or the client goes
away. One request per connection.

Who may ask: the socket is created 0600 in the daemon's state directory, and on top of that every
connection's peer credentials (SO_PEERCRED) are checked: only root and the daemon's own uid are
served; anyone else gets a refusal (and the daemon logs it), since a file mode alone can be undone by
a mistaken chmod or an inherited descriptor.

The server runs inside the daemon's event loop, so handlers read and change state without locks.
A client cannot stall the loop or other clients: each connection is its own coroutine, reading a
request is bounded in size and time, and a stream's events wait in a bounded per-client buffer: a
client that does not keep up is told so and disconnected, never waited for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import os
import socket
import stat
import struct
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gotorch.trustedfs import Untrusted, kind_of

PROTOCOL = 1
MAX_REQUEST = 64 * 1024  # bytes of one request line
REQUEST_TIMEOUT_S = 5.0  # a client must send its request within this
WRITE_TIMEOUT_S = 30.0  # a client that reads nothing for this long is dropped
MAX_CLIENTS = 64  # connections served at once; more are refused (each costs an fd and a coroutine)
STREAM_BUFFER = 10_000  # events a streaming client may be behind before it is dropped

Message = dict[str, Any]
Reply = Message | AsyncIterable[Message]


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a connection, as the kernel saw it at connect time."""

    pid: int
    uid: int
    gid: int


Handler = Callable[[Message, Peer], Reply | Awaitable[Reply]]


def peer_of(sock: socket.socket) -> Peer:
    """The connecting process's pid, uid and gid (SO_PEERCRED: set by the kernel, not the client)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def error(message: str, **extra: Any) -> Message:
    """A failed reply."""
    return {"ok": False, "error": message, **extra}


class Stream:
    """A bounded buffer of messages for one streaming client: pushed from the loop, never blocking.

    Iterate it (async) to get the messages; `close()` ends the iteration after what is buffered.
    When more than `limit` messages are waiting, the client is too slow: the stream ends with an
    error saying how many were lost, instead of holding ever more memory for it.
    """

    def __init__(self, limit: int = STREAM_BUFFER) -> None:
        self._items: collections.deque[Message] = collections.deque()
        self._limit = limit
        self._wakeup = asyncio.Event()
        self._closed = False
        self.overflowed = 0
        self.on_close: Callable[[], None] | None = None  # e.g. unsubscribe from the bus

    def push(self, item: Message) -> None:
        """Queue `item` for the client; never blocks."""
        if self._closed:
            return
        if len(self._items) >= self._limit:
            self.overflowed += 1
            self.close()
            return
        self._items.append(item)
        self._wakeup.set()

    def close(self) -> None:
        """End the stream once the buffered messages are sent (idempotent)."""
        if not self._closed:
            self._closed = True
            self._wakeup.set()
            if self.on_close is not None:
                self.on_close()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        try:
            while True:
                while self._items:
                    yield self._items.popleft()
                if self._closed:
                    if self.overflowed:
                        yield error(f"too slow: the client fell {self._limit} events behind; stream ended")
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            self.close()  # the client went away: stop collecting for it


class Server:
    """Serves the control socket at `path` with `handler`; refuses peers whose uid is not allowed."""

    def __init__(self, path: Path, handler: Handler, *, on_refused: Callable[[Peer], None] | None = None,
                 allowed_uids: frozenset[int] | None = None) -> None:
        self.path = path
        self._handler = handler
        self._on_refused = on_refused or (lambda _peer: None)
        self._allowed = allowed_uids if allowed_uids is not None else frozenset({0, os.geteuid()})
        self._clients = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen (replacing a stale socket file); the file is 0600 from its creation on.

        Only a socket is replaced. Anything else in its place (a symlink, a file) was not left by a
        torch: it is refused with its name, where bind() would only say "address already in use".
        """
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)  # lstat: is_socket() would follow a planted symlink
            if stat.S_ISSOCK(st.st_mode):
                self.path.unlink()
            else:
                raise Untrusted(str(self.path), f"is {kind_of(st.st_mode)}, not torch's control socket",
                                f"remove {self.path} (torch recreates it)")
        old = os.umask(0o177)  # no window with looser permissions
        try:
            self._server = await asyncio.start_unix_server(self._on_client, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old)

    def close(self) -> None:
        """Stop listening (connections in progress finish on their own)."""
        if self._server is not None:
            self._server.close()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the client went away or stopped reading: nothing to tell anyone
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        peer = peer_of(sock) if sock is not None else Peer(0, -1, -1)
        if peer.uid not in self._allowed:
            self._on_refused(peer)
            # Read (and ignore) its request first: closing on unread data could reset the connection
            # before the client has read why.
            with contextlib.suppress(ValueError, TimeoutError):
                await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
            await _send(writer, error(f"permission denied: uid {peer.uid} may not control this torch daemon "
                                      "(only root and its own user may)"))
            return
        if self._clients > MAX_CLIENTS:
            await _send(writer, error(f"busy: more than {MAX_CLIENTS} clients connected; try again"))
            return
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
        except ValueError:  # longer than MAX_REQUEST without a newline
            await _send(writer, error(f"bad request: longer than {MAX_REQUEST} bytes"))
            return
        except TimeoutError:
            await _send(writer, error(f"bad request: nothing received within {REQUEST_TIMEOUT_S:g} s"))
            return
        request, problem = _parse(line)
        if problem is not None:
            await _send(writer, problem)
            return
        try:
            reply = self._handler(request, peer)
            if inspect.isawaitable(reply):
                reply = await reply
        except Exception as exc:  # a bug in one command must not take the socket down
            reply = error(f"internal error: {exc!r}")
        if isinstance(reply, dict):
            await _send(writer, reply)
            return
        await self._stream(reply, reader, writer)

    async def _stream(self, replies: AsyncIterable[Message], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        # The client ends a stream by going away: watch for its EOF while sending, and end a Stream
        # at once (it may be waiting for events that come hours later).
        gone = asyncio.ensure_future(reader.read(1))
        close = getattr(replies, "close", None)
        if close is not None:
            gone.add_done_callback(lambda _f: close())
        it = aiter(replies)
        try:
            async for message in it:
                if gone.done():
                    return
                await _send(writer, message)
        finally:
            gone.cancel()
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


def _parse(line: bytes) -> tuple[Message, Message | None]:
    """The request object of `line`, and the error reply to send instead when it is not one."""
    try:
        request = json.loads(line or b"null")
    except ValueError:
        request = None
    if not isinstance(request, dict):
        return {}, error("bad request: expected one JSON object per line")
    if request.get("v") != PROTOCOL:
        return request, error(f"unsupported protocol version {request.get('v')!r}: this daemon speaks "
                              f"v{PROTOCOL}; use the torch command of the same version", protocol=PROTOCOL)
    if not isinstance(request.get("cmd"), str):
        return request, error("bad request: no command (\"cmd\")")
    return request, None


async def _send(writer: asyncio.StreamWriter, message: Message) -> None:
    writer.write(json.dumps(message, default=str).encode() + b"\n")
    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)


# --- the client (the CLI) ------------------------------------------------------------------------


def _connect(path: Path, message: Message, timeout: float | None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the reply may still say why
            s.sendall(json.dumps({"v": PROTOCOL, **message}).encode() + b"\n")
    except BaseException:
        s.close()
        raise
    return s


def _lines(s: socket.socket) -> Iterator[Message]:
    buf = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            if buf.strip():
                raise OSError("the daemon's reply was cut short")
            return
        # Only the new chunk is searched for line ends: rescanning the whole buffer made a 40 MB
        # reply take 9 s to read.
        start = len(buf)
        buf += chunk
        nl = buf.find(b"\n", start)
        while nl >= 0:
            reply = json.loads(bytes(buf[:nl]))
            del buf[:nl + 1]
            if not isinstance(reply, dict):
                raise OSError("unexpected reply from the daemon")
            yield reply
            nl = buf.find(b"\n")


def request(path: Path, message: Message, timeout: float = 5.0) -> Message:
    """Send one request to the daemon at `path` and return its reply; OSError if nobody answers."""
    with _connect(path, message, timeout) as s:
        for reply in _lines(s):
            return reply
    raise OSError("the daemon closed the connection without answering")


def stream(path: Path, message: Message, timeout: float | None = None) -> Iterator[Message]:
    """Send a streaming request and yield each reply line until the daemon ends the stream."""
    with _connect(path, message, timeout) as s:
        yield from _lines(s)
