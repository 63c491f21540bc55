"""The control socket: `torch status` and `torch reload` ask the running daemon over a Unix socket.

One JSON request line in, one JSON reply line out. The socket is created 0600 in the daemon's run
directory, so only the daemon's user (and root) can talk to it; there is no other authentication.
The server runs inside the daemon's event loop, so answering reads state without locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024


async def serve(path: Path, handler: Handler) -> asyncio.AbstractServer:
    """Listen on `path` (replacing a stale socket file) and answer each request line with `handler`."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_socket():
            path.unlink()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            try:
                request = json.loads(line[:MAX_REQUEST] or b"{}")
                reply = handler(request if isinstance(request, dict) else {})
            except ValueError:
                reply = {"ok": False, "error": "bad request: expected one JSON object per line"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    old = os.umask(0o177)  # the socket file is created 0600; no window with looser permissions
    try:
        return await asyncio.start_unix_server(on_client, path=str(path))
    finally:
        os.umask(old)


def request(path: Path, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the daemon at `path`; OSError if nobody answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data or b"{}")
    if not isinstance(reply, dict):
        raise OSError("unexpected reply from the daemon")
    return reply
