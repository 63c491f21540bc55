"""The history's event-bus subscriber: turns events into rows for the writer thread, in the loop.

It keeps, per running run, only the start and end of its output (HEAD_BYTES and TAIL_BYTES, with the
count of bytes between them), because on-call engineers want the end of a failing job's output,
not only the start. Handing a row over never blocks: a full queue drops it (the writer counts it).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Protocol

from gotorch.events import (
    Event,
    MissedFires,
    RunAdopted,
    RunEnded,
    RunOutput,
    RunStarted,
    RunTracked,
    Skipped,
    epoch_of,
)
from gotorch.history.rows import NonRun, Row, RunAdoptedRow, RunBegan, RunFinished, RunProcess, RunsLost
from gotorch.history.schema import HEAD_BYTES, TAIL_BYTES

LOST = "the daemon that ran it ended without recording its end (crash, kill -9, power loss)"


class RowSink(Protocol):
    """Where rows go: the writer (`put` never blocks; False if the row was dropped)."""

    def put(self, row: Row) -> bool:
        """Queue `row`; False if it had to be dropped."""
        ...


class OutputSample:
    """The first HEAD_BYTES and the last TAIL_BYTES of a run's output, and how much fell between."""

    __slots__ = ("elided", "head", "tail")

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.elided = 0

    def add(self, data: bytes) -> None:
        room = HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            over = len(self.tail) - TAIL_BYTES
            if over > 0:
                del self.tail[:over]
                self.elided += over

    def text(self) -> bytes:
        """Head, a marker line for the elided bytes (as `torch logs` prints it), tail."""
        marker = f"\n[... {self.elided} bytes elided ...]\n".encode() if self.elided else b""
        return bytes(self.head) + marker + bytes(self.tail)


class Recorder:
    """Subscribe an instance to the bus (`bus.subscribe(recorder)`); tell it each new config."""

    def __init__(self, sink: RowSink, host: str, *, clock: Callable[[], float] = time.time) -> None:
        self._sink = sink
        self._host = host
        self._clock = clock
        # By run id, for the runs under way; None until a run prints (most never do).
        self._outputs: dict[str, OutputSample | None] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{os.urandom(4).hex()}-"  # non-runs need ids unique across daemons too
        self.generation = 0
        self.config_hash = ""

    def set_config(self, generation: int, config_hash: str) -> None:
        """The generation and hash that runs started from now on belong to."""
        self.generation, self.config_hash = generation, config_hash

    def close_lost_runs(self, adopted: tuple[str, ...] = ()) -> None:
        """At start, before any run: runs the database still has as running were lost with the last daemon.

        All but `adopted`: the runs found alive, which this daemon supervises from now on.
        """
        self._sink.put(RunsLost(self._clock(), LOST, adopted))

    def __call__(self, event: Event) -> None:
        """Handle one event (a bus subscriber)."""
        if isinstance(event, RunOutput):  # by far the most frequent: first
            outputs = self._outputs
            if event.run_id in outputs:
                out = outputs[event.run_id]
                if out is None:
                    out = outputs[event.run_id] = OutputSample()
                out.add(event.line.encode("utf-8", "replace") + b"\n")
        elif isinstance(event, RunStarted):
            self._outputs[event.run_id] = None
            self._sink.put(RunBegan(
                event.run_id, event.task, event.trigger, event.attempt, event.scheduled_ts,
                event.started_ts if event.started_ts is not None else self._clock(), self._host, event.pid,
                event.lateness_ms, self.generation, self.config_hash, event.requested_by))
        elif isinstance(event, RunEnded):
            out = self._outputs.pop(event.run_id, None)
            head, tail, elided = (bytes(out.head), bytes(out.tail), out.elided) if out is not None else (b"", b"", 0)
            self._sink.put(RunFinished(
                event.run_id, event.task, self._clock(), _status(event), event.exit_code, event.signal,
                event.duration_s, event.cpu_s, event.max_rss_kb, head, tail, elided,
                event.output_bytes, event.dropped_bytes, event.error, event.trigger, event.scheduled_ts,
                self._host, self.generation, self.config_hash, event.reason))
        elif isinstance(event, RunTracked):
            self._sink.put(RunProcess(event.run_id, event.proc_start, event.pgid))
        elif isinstance(event, RunAdopted):
            self._outputs[event.run_id] = None  # what it prints from now on
            self._sink.put(RunAdoptedRow(event.run_id, event.task, event.trigger, event.attempt, event.scheduled_ts,
                                         event.started_ts, self._host, event.pid, event.proc_start,
                                         self.generation, self.config_hash))
        elif isinstance(event, Skipped):
            self._non_run("skipped", event.task, event.scheduled_at, event.reason,
                          event.blocking_run or event.detail)
        elif isinstance(event, MissedFires):
            self._non_run("missed", event.task, event.last, event.reason, None,
                          _ts(event.first), _ts(event.last), event.count)

    def _non_run(self, kind: str, task: str, scheduled_at: str, reason: str | None, detail: str | None,
                 first: float | None = None, last: float | None = None, count: int | None = None) -> None:
        self._sink.put(NonRun(f"{self._prefix}{kind[0]}{next(self._ids):x}", task, kind, self._clock(),
                              _ts(scheduled_at), self._host, reason, detail, first, last, count, self.generation,
                              self.config_hash))


def _status(event: RunEnded) -> str:
    # A run that never started (no pid) is a spawn failure, not a failed run.
    return "spawn_failed" if event.pid is None else event.status


def _ts(iso: str) -> float:
    # The scheduler's ISO seconds: rare events, so parsing is fine here.
    return epoch_of(iso)
