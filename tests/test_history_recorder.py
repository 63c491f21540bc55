"""history.recorder: events in, rows out (a fake sink and clock; no thread, no database)."""

from __future__ import annotations

from gotorch.events import MissedFires, RunEnded, RunOutput, RunStarted, Skipped
from gotorch.history.recorder import Recorder
from gotorch.history.rows import NonRun, Row, RunBegan, RunFinished, RunsLost
from gotorch.history.schema import HEAD_BYTES, TAIL_BYTES


class Sink:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def put(self, row: Row) -> bool:
        self.rows.append(row)
        return True


def recorder() -> tuple[Recorder, Sink]:
    sink = Sink()
    rec = Recorder(sink, "host1", clock=lambda: 1_800_000_100.0)
    rec.set_config(3, "abc123")
    return rec, sink


def test_a_run_becomes_a_row_at_start_and_its_end_with_the_head_and_tail_of_its_output() -> None:
    rec, sink = recorder()
    rec(RunStarted("t", "r1", 42, "2027-01-15T08:00:00Z", 2.5, "schedule", 1, 1_800_000_000.0, 1_800_000_000.0025))
    line = "x" * 99  # 100 bytes with its newline
    for _ in range(200):  # 20,000 bytes: 2 KiB head, 6 KiB tail, the rest elided
        rec(RunOutput("t", "r1", "stdout", line))
    rec(RunEnded("t", "r1", 42, "failed", 3, None, 1.5, 20_000, 5, None, "schedule", 1, 1_800_000_000.0, 0.25, 9000))
    began, finished = sink.rows
    assert isinstance(began, RunBegan) and isinstance(finished, RunFinished)
    assert (began.run_id, began.task, began.trigger, began.pid, began.generation, began.config_hash) == (
        "r1", "t", "schedule", 42, 3, "abc123")
    assert began.scheduled_at == 1_800_000_000.0 and began.lateness_ms == 2.5 and began.host == "host1"
    assert len(finished.output_head) == HEAD_BYTES and len(finished.output_tail) == TAIL_BYTES
    assert finished.output_elided == 20_000 - HEAD_BYTES - TAIL_BYTES
    assert finished.output_tail.endswith(b"x\n")
    assert (finished.status, finished.exit_code, finished.cpu_s, finished.max_rss_kb, finished.dropped_bytes) == (
        "failed", 3, 0.25, 9000, 5)


def test_a_run_that_never_started_is_spawn_failed() -> None:
    rec, sink = recorder()
    rec(RunEnded("t", "r2", None, "failed", None, None, 0.0, 0, 0, "No such file or directory: '/nope'"))
    (row,) = sink.rows
    assert isinstance(row, RunFinished) and row.status == "spawn_failed" and "No such file" in (row.error or "")


def test_non_runs_are_rows_with_their_reason() -> None:
    rec, sink = recorder()
    rec(Skipped("t", "2027-01-15T08:00:01Z", "max_instances", running=1, max_instances=1, blocking_run="r1"))
    rec(MissedFires("t", "2027-01-15T08:00:02Z", "2027-01-15T08:00:09Z", 8, "beyond_grace", True))
    skipped, missed = sink.rows
    assert isinstance(skipped, NonRun) and (skipped.kind, skipped.reason, skipped.detail) == (
        "skipped", "max_instances", "r1")
    assert isinstance(missed, NonRun) and (missed.kind, missed.missed_count) == ("missed", 8)
    assert missed.missed_last is not None and missed.missed_first is not None
    assert missed.missed_last - missed.missed_first == 7
    assert skipped.run_id != missed.run_id


def test_close_lost_runs_hands_over_one_update() -> None:
    rec, sink = recorder()
    rec.close_lost_runs()
    (row,) = sink.rows
    assert isinstance(row, RunsLost) and "kill -9" in row.error


def test_the_reason_a_run_was_stopped_reaches_its_row() -> None:
    rec, sink = recorder()
    rec(RunStarted("t", "r1", 42, None, None, "restart", 1, None, 1_800_000_000.0))
    rec(RunEnded("t", "r1", 42, "killed", None, "SIGTERM", 3.0, 0, 0, reason="daemon stopping (SIGTERM)"))
    rec(RunEnded("t", "r2", 43, "ok", 0, None, 1.0, 0, 0))
    _, stopped, ended = sink.rows
    assert isinstance(stopped, RunFinished) and isinstance(ended, RunFinished)
    assert (stopped.status, stopped.reason) == ("killed", "daemon stopping (SIGTERM)")
    assert ended.reason is None
