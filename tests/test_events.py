"""events: the bus, the log as its subscriber, and the typed events the runner publishes."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys

from gotorch import log
from gotorch.events import (
    LOGGED_NAMES,
    Bus,
    Event,
    ReloadApplied,
    RunEnded,
    RunOutput,
    RunSignalled,
    RunStarted,
    RunTracked,
    Skipped,
)
from gotorch.runner import Runner, RunSpec


def test_bus_delivers_in_subscription_order_and_a_failing_subscriber_costs_no_other(capsys: object) -> None:
    bus = Bus()
    seen: list[str] = []

    def broken(_: Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(lambda e: seen.append(f"first {e.name}"))
    bus.subscribe(broken)
    unsubscribe = bus.subscribe(lambda e: seen.append(f"last {e.name}"))
    bus.publish(Skipped("t", "2027-01-01T00:00:00Z", "max_instances", running=1, max_instances=1))
    assert seen == ["first skipped", "last skipped"] and bus.failures == 1
    unsubscribe()
    bus.publish(Skipped("t", "2027-01-01T00:00:01Z", "stop"))
    assert seen[-1] == "first skipped" and len(seen) == 3


def test_log_subscriber_writes_each_event_as_one_json_line_with_its_fields() -> None:
    buf = io.StringIO()
    log.configure(stream=buf, as_json=True)
    bus = log.logging_bus()
    bus.publish(RunEnded("t", "r1", 42, "failed", 3, None, 0.5, 10, 0))
    bus.publish(Skipped("t", "2027-01-01T00:00:00Z", "reload", detail="cancelled while waiting out its jitter"))
    bus.publish(RunSignalled("t", "r1", 42, "SIGKILL", "timeout", False, []))  # nothing hit: debug, not logged
    ended, skipped = (json.loads(line) for line in buf.getvalue().splitlines())
    assert ended["event"] == "run.end" and ended["level"] == "warning" and "error" not in ended
    assert {k: ended[k] for k in ("task", "run_id", "pid", "status", "exit_code")} == {
        "task": "t", "run_id": "r1", "pid": 42, "status": "failed", "exit_code": 3}
    assert skipped == {**skipped, "event": "skipped", "reason": "reload", "level": "info"}
    assert "running" not in skipped  # fields that do not apply to the reason are left out


def test_reload_applied_logs_at_most_a_thousand_names_per_kind_with_the_count() -> None:
    names = tuple(f"t{i}" for i in range(LOGGED_NAMES + 5))
    data = ReloadApplied("file", 2, "abc", names, (), ("x",), 10, 1.0, 2.0).data()
    assert len(data["added"]) == LOGGED_NAMES and data["added_count"] == LOGGED_NAMES + 5
    assert data["changed"] == ["x"] and "changed_count" not in data and "removed_count" not in data


def test_runner_publishes_typed_events_for_a_run() -> None:
    events: list[Event] = []
    bus = Bus()
    bus.subscribe(events.append)
    loop = asyncio.new_event_loop()
    try:
        ended: list[str] = []
        runner = Runner(loop, lambda run, result: ended.append(result.status), bus)
        loop.add_signal_handler(signal.SIGCHLD, runner.reap)
        runner.start(RunSpec(task="t", run_id=f"ev-{id(events)}", command=(sys.executable, "-c", "print('hi')")))

        async def until_ended() -> None:
            while not ended:
                await asyncio.sleep(0.02)

        loop.run_until_complete(asyncio.wait_for(until_ended(), 20))
    finally:
        loop.remove_signal_handler(signal.SIGCHLD)
        loop.close()
    # A run still going a few ms after its start is also tracked (RunTracked, for adoption after a
    # crash); this one may or may not still be.
    events = [e for e in events if not isinstance(e, RunTracked)]
    kinds = [type(e) for e in events]
    assert kinds == [RunStarted, RunOutput, RunEnded], events
    started, output, end = events
    assert isinstance(output, RunOutput) and output.line == "hi" and output.stream == "stdout"
    assert isinstance(end, RunEnded) and end.status == "ok" and end.exit_code == 0
    assert isinstance(started, RunStarted) and started.pid == end.pid
