"""gotorch.log: lines logged in the loop are written once per loop turn, in order, none lost."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gotorch import log
from gotorch.events import DaemonStopped, LogReopened


@pytest.fixture
def logfile(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    path = state / "torch.log"
    log.configure(file=path)
    try:
        yield path
    finally:
        log.defer_writes(None)
        log.configure(stream=sys.stderr)


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sink = log._sink
    assert isinstance(sink, log.SafeFile)
    calls: list[int] = []
    real = sink._write

    def counted(line: str, lines: int = 1) -> None:
        calls.append(lines)
        real(line, lines)

    monkeypatch.setattr(sink, "_write", counted)
    return calls


def _one_turn(callback: Callable[[], None]) -> None:
    """Run `callback` in a loop whose lines are deferred, then let a few more turns go by."""
    async def main() -> None:
        log.defer_writes(asyncio.get_running_loop())
        asyncio.get_running_loop().call_soon(callback)
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(main())


def test_a_loop_turns_lines_are_written_together_in_order_after_its_callbacks(
        logfile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = _count_writes(monkeypatch)
    seen_during: list[int] = []

    def burst() -> None:
        for pid in (1, 2, 3):
            log.log_event(DaemonStopped(pid))
        seen_during.append(len(_events(logfile)))

    _one_turn(burst)
    assert seen_during == [0]  # nothing written while the turn's callbacks still ran
    assert [e["pid"] for e in _events(logfile)] == [1, 2, 3]
    assert writes == [3]  # one write for the three lines


def test_a_line_from_another_thread_is_written_at_once(logfile: Path) -> None:
    async def main() -> None:
        log.defer_writes(asyncio.get_running_loop())
        t = threading.Thread(target=log.log_event, args=(LogReopened(),))
        t.start()
        t.join()
        assert [e["event"] for e in _events(logfile)] == ["log.reopened"]

    asyncio.run(main())


def test_ending_the_deferral_writes_what_is_still_waiting(logfile: Path) -> None:
    async def main() -> None:
        log.defer_writes(asyncio.get_running_loop())
        log.log_event(DaemonStopped(7))
        assert _events(logfile) == []
        log.defer_writes(None)  # what the service does before its loop goes away
        assert [e["pid"] for e in _events(logfile)] == [7]

    asyncio.run(main())


def test_a_failed_write_counts_every_line_it_carried(logfile: Path) -> None:
    sink = log._sink
    assert isinstance(sink, log.SafeFile)

    async def main() -> None:
        log.defer_writes(asyncio.get_running_loop())
        good = sink._fd
        sink._fd = os.open(os.devnull, os.O_RDONLY)  # every write fails (EBADF), as on a broken disk
        try:
            for pid in (1, 2, 3):
                log.log_event(DaemonStopped(pid))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            os.close(sink._fd)
            sink._fd = good
        assert log.lines_dropped() == 3

    asyncio.run(main())


def test_no_more_than_pending_max_lines_ever_wait(logfile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = _count_writes(monkeypatch)
    seen_during: list[int] = []
    n = log.PENDING_MAX + 5

    def start_up() -> None:  # e.g. a task.applies line per task of a 10,000-task file
        for pid in range(n):
            log.log_event(DaemonStopped(pid))
        seen_during.append(len(_events(logfile)))

    _one_turn(start_up)
    assert seen_during == [log.PENDING_MAX]
    assert [e["pid"] for e in _events(logfile)] == list(range(n))
    assert writes == [log.PENDING_MAX, 5]


def test_a_line_logged_after_its_loop_closed_is_written_at_once(logfile: Path) -> None:
    loop = asyncio.new_event_loop()
    log.defer_writes(loop)
    loop.close()  # without the deferral ended: nothing would ever write what waits
    log.log_event(DaemonStopped(9))
    assert [e["pid"] for e in _events(logfile)] == [9]
