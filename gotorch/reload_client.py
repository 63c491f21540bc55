"""The daemon's side of a reload: hand the task file to a reload process and take its answer, never blocking the loop.

gotorch.loader holds what both sides share (the request's `Base`, the `Loaded` and `LoadFailed`
answers, packing) and the load itself, which runs in the reload process (gotorch.reload_process).
This module is the only part of a reload that needs asyncio, so the reload process, which imports
the loader, does without it (~90 ms of imports a reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
from dataclasses import replace
from pathlib import Path

from gotorch import reload_process
from gotorch.config import ConfigError
from gotorch.hosts import HOST_IPS_ENV
from gotorch.loader import Base, Loaded, LoadFailed
from gotorch.reload_process import ReloadProcess

# A child that has not answered by then (a hung network filesystem) is killed; the reload is retried.
CHILD_TIMEOUT_S = 120.0
# The packed config follows the answer within ~0.1 s; a child that sends none by then is killed (the
# next reload then diffs against nothing).
BLOB_TIMEOUT_S = 30.0


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _send(loop: asyncio.AbstractEventLoop, fd: int, data: bytes, *, close: bool = True) -> None:
    """Write `data` to the non-blocking pipe `fd` without blocking the loop, then close it (if `close`)."""
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fd, _set_done, writable)
                try:
                    await writable
                finally:
                    loop.remove_writer(fd)
    finally:
        if close:
            os.close(fd)


async def preload(process: ReloadProcess, base: Base | None) -> None:
    """Send a spare reload process the base of the next reload now (see reload_process.frame).

    It unpacks it while it waits; `load_in_child` then sends only the file's path if the base is
    still the one the daemon runs. OSError if the process is gone.
    """
    if process.primed:
        raise RuntimeError("preload() called twice for one reload process")
    await _send(asyncio.get_running_loop(), process.request_fd,
                reload_process.frame(reload_process.code_fingerprint(), base), close=False)
    process.primed, process.preloaded = True, base


def _retrieved(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()


def _same_base(a: object, b: Base | None) -> bool:
    return isinstance(a, Base) and b is not None and a.config is b.config and a.addresses == b.addresses


async def load_in_child(path: Path, host_ips: str | None, base: Base | None = None, *, settle: bool = True,
                        timeout: float = CHILD_TIMEOUT_S, process: ReloadProcess | None = None) -> Loaded | LoadFailed:
    """Have a reload process (gotorch.reload_process) load `path`; wait for its answer without blocking.

    The answer is the difference from `base`, what the daemon runs (None: from nothing). `settle`:
    wait for a file modified just now to stop changing (see `loader.read_settled`); an explicit reload
    (SIGUSR2, `torch reload`) means the file is ready, and is read at once. `process`: one started
    ahead of time (`reload_process.spawn`), else one is started now.

    The process is reaped by whoever reaps the daemon's children (`Runner.reap`, waitpid(-1)). If
    this coroutine is cancelled (the daemon stops) or times out, the process is killed.
    """
    loop = asyncio.get_running_loop()
    file = str(path)
    if process is None or process.exited():
        if process is not None:
            process.kill()
        try:
            process = reload_process.spawn()
        except OSError as exc:
            return LoadFailed([ConfigError(file, 0, 0, "", f"cannot start the reload process: {exc.strerror or exc}",
                                           "torch retries (process or memory limits?)")], True)
    # The answer comes first, after its length in 8 bytes; a Loaded answer's packed config follows,
    # until end of file (see reload_process.main).
    done: asyncio.Future[bytes] = loop.create_future()
    rest: asyncio.Future[bytes] = loop.create_future()
    buf = bytearray()
    eof = False
    rfd = process.answer_fd

    def readable() -> None:
        nonlocal eof
        try:
            while True:
                chunk = os.read(rfd, 1 << 20)
                if not chunk:
                    eof = True
                    break
                buf.extend(chunk)
        except BlockingIOError:
            pass
        except OSError as exc:
            for fut in (done, rest):
                if not fut.done():
                    fut.set_exception(exc)
            return
        if not done.done() and len(buf) >= 8:
            size = int.from_bytes(buf[:8], "big")
            if len(buf) >= 8 + size:
                done.set_result(bytes(buf[8:8 + size]))
                del buf[:8 + size]
        if eof:
            if not done.done():
                done.set_result(b"")  # it died before answering
            if not rest.done():
                rest.set_result(bytes(buf))

    async def finish() -> bytes:
        # Owns the process from the answer on: reads the packed config, then closes and kills.
        try:
            async with asyncio.timeout(BLOB_TIMEOUT_S):
                return await rest
        finally:
            loop.remove_reader(rfd)
            if not eof:
                process.kill()
            process.close()

    reading = False
    data = b""
    try:
        # The process gets no TORCH_* environment (see reload_process._env): the override travels here.
        if host_ips is None:
            host_ips = os.environ.get(HOST_IPS_ENV) or None  # empty means unset, as host_addresses says
        # The base only if the process does not have it already (a spare primed by `preload`).
        sent: object = reload_process.PRELOADED if _same_base(process.preloaded, base) else base
        request = pickle.dumps((reload_process.code_fingerprint(), file, host_ips, settle, sent),
                               protocol=pickle.HIGHEST_PROTOCOL)
        if not process.primed:
            request = reload_process.frame(reload_process.code_fingerprint(), None) + request
            process.primed = True
        process.request_fd, request_fd = -1, process.request_fd  # _send closes it
        loop.add_reader(rfd, readable)
        reading = True
        async with asyncio.timeout(timeout):
            with contextlib.suppress(BrokenPipeError):  # it died: its answer says so (none)
                await _send(loop, request_fd, request)
            data = await done
    except TimeoutError:
        return LoadFailed([ConfigError(file, 0, 0, "", f"reading and checking the file took over {timeout:g} s",
                                       "torch retries; is the filesystem responding?")], True)
    except OSError as exc:
        return LoadFailed([ConfigError(file, 0, 0, "", f"reload failed: {exc}")], True)
    finally:
        try:
            result = pickle.loads(data) if data else None
        except Exception:
            result = None
        if isinstance(result, Loaded) and not result.blob:
            later = asyncio.ensure_future(finish())
            later.add_done_callback(_retrieved)  # whoever wants it awaits it; nobody else must hear of it
            result = replace(result, blob_later=later)
        else:
            if reading:
                loop.remove_reader(rfd)
            if not eof:  # failed, timed out or cancelled (the daemon stops): it must not outlive it
                process.kill()
            process.close()
    if isinstance(result, Loaded | LoadFailed):
        return result
    return LoadFailed([ConfigError(file, 0, 0, "", "the reload process died without an answer",
                                   "torch retries; see the system log (out of memory?)")], True)
