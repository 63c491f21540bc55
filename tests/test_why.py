"""`torch why`: the pure decision (gotorch.why) with fixed times and an in-memory history, the queries
it makes (gotorch.history.query) and the CLI against SQLite files built here, as test_history_query does.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner, Result

from gotorch.cli import cli
from gotorch.config import Task
from gotorch.fire_times import next_fire_ts
from gotorch.history import schema
from gotorch.history.query import (
    FireRecord,
    HistoryRow,
    fire_records,
    last_task_row,
    open_readonly,
    rows_around,
)
from gotorch.hosts import match
from gotorch.schedule import parse_schedule
from gotorch.why import (
    Answer,
    HistoryLookup,
    Question,
    explain,
    fires_around,
    previous_fire_ts,
    wall_time_note,
)
from tests.conftest import deny_open

BERLIN = ZoneInfo("Europe/Berlin")
# Fixed, past instants: the CLI refuses an --at in the future, so CLI tests use 2025 (before "now").
T = datetime(2025, 1, 15, 2, 0, tzinfo=UTC).timestamp()  # a fire of DAILY_2AM (UTC)
_ids = itertools.count(1)


def task(name: str = "backup", schedule: str | None = "0 0 2 * * *", **fields: Any) -> Task:
    return Task(name=name, command="true", schedule=None if schedule is None else parse_schedule(schedule),
                line=fields.pop("line", 7), **fields)


def row(task: str = "backup", at: float | None = T, *, kind: str = "run", started: float | None = None,
        **fields: Any) -> HistoryRow:
    """A history row: a finished ok run of the fire `at` unless `fields` say otherwise."""
    started = (at if at is not None else T) + 0.01 if started is None else started
    values: dict[str, Any] = dict(
        run_id=f"r{next(_ids)}", task=task, kind=kind, trigger="schedule", attempt=1, scheduled_at=at,
        started_at=started, ended_at=started + 1.5, status="ok", exit_code=0, signal=None, duration_s=1.5,
        lateness_ms=10.0, reason=None)
    if kind != "run":
        values.update(trigger=None, ended_at=None, status=kind, exit_code=None, duration_s=None, lateness_ms=None)
    values.update(fields)
    return HistoryRow(**values)


def rec(r: HistoryRow, **fields: Any) -> FireRecord:
    return FireRecord(r, **fields)


class FakeHistory:
    """The HistoryLookup protocol over a list of records, with the semantics of the SQL queries."""

    def __init__(self, *records: FireRecord | HistoryRow) -> None:
        self.records = [r if isinstance(r, FireRecord) else FireRecord(r) for r in records]

    def fire_records(self, task: str, scheduled_at: float, jitter: float) -> Sequence[FireRecord]:
        return [r for r in self.records if r.row.task == task and r.concerns(scheduled_at)]

    def last_row(self, task: str, at: float, trigger: str | None = None) -> HistoryRow | None:
        rows = [r.row for r in self.records if r.row.task == task and r.row.started_at is not None
                and r.row.started_at <= at and (trigger is None or r.row.trigger == trigger)]
        return max(rows, key=lambda x: x.started_at or 0.0) if rows else None

    def find_row(self, run_id: str) -> HistoryRow | None:
        return next((r.row for r in self.records if r.row.run_id == run_id), None)

    def rows_around(self, at: float) -> tuple[float | None, float | None]:
        starts = [r.row.started_at for r in self.records if r.row.started_at is not None]
        before = [s for s in starts if s <= at]
        after = [s for s in starts if s > at]
        return (max(before) if before else None), (min(after) if after else None)


def ask(t: Task | None, at: float, history: HistoryLookup | None, *, now: float | None = None, exact: bool = True,
        addresses: Sequence[str] = ("127.0.0.1",), name: str | None = None) -> Answer:
    """explain() with the facts the CLI would gather; times are shown in UTC."""
    addrs = tuple(ipaddress.ip_address(a) for a in addresses)
    timed = t is not None and t.schedule is not None and t.type == "cron" and t.schedule.kind != "reboot"
    q = Question(name or (t.name if t else "backup"), at, now if now is not None else at + 3600, t, "etc/tasks.yaml",
                 exact=exact, addresses=addrs, host=None if t is None else match(t.ips, addrs),
                 fires=fires_around(t.schedule, t.tz, at) if timed and t is not None and t.schedule else None,
                 zone=UTC)
    return explain(q, history)


def first_line(a: Answer) -> str:
    return a.message.splitlines()[0]


# --- previous fires ------------------------------------------------------------------------------


def brute_previous(expr: str, zone: str, at: int, window: int) -> int | None:
    """The last fire <= at, by walking forward fire by fire from `window` seconds before it."""
    sched, tz = parse_schedule(expr), ZoneInfo(zone)
    last = None
    fire = next_fire_ts(sched, tz, at - window - 1)
    while fire is not None and fire <= at:
        last = fire
        fire = next_fire_ts(sched, tz, fire)
    return last


@pytest.mark.parametrize(("expr", "zone", "window"), [
    ("* * * * * *", "UTC", 10),
    ("*/7 * * * * *", "UTC", 60),
    ("0 30 2 * * *", "Europe/Berlin", 3 * 86400),
    ("0 30 * * * *", "Europe/Berlin", 3 * 3600),
    ("0 0 0 1 * *", "America/New_York", 40 * 86400),
    ("0 15 9 * * MON-FRI", "Australia/Lord_Howe", 5 * 86400),
    ("@every 90s", "UTC", 200),
    ("0 0 9 * * *", "Pacific/Apia", 4 * 86400),
])
def test_previous_fire_is_the_last_fire_a_forward_walk_reaches(expr: str, zone: str, window: int) -> None:
    # Around DST changes (Berlin, New York, Lord Howe 2027) and the day Apia skipped (2011-12-30).
    starts = ["2027-03-28T00:00:00+00:00", "2027-10-31T00:00:00+00:00", "2027-11-07T05:00:00+00:00",
              "2027-10-02T15:00:00+00:00", "2011-12-29T09:00:00+00:00", "2027-06-01T12:00:00+00:00"]
    for start in starts:
        base = int(datetime.fromisoformat(start).timestamp())
        for offset in range(0, 2 * 86400, 4721):  # an odd step, to land between and on fires
            at = base + offset
            want = brute_previous(expr, zone, at, window)
            assert previous_fire_ts(parse_schedule(expr), ZoneInfo(zone), at) == want, (expr, zone, at)


def test_previous_fire_of_an_instant_is_itself() -> None:
    assert previous_fire_ts(parse_schedule("0 0 2 * * *"), UTC, int(T)) == int(T)
    assert previous_fire_ts(parse_schedule("0 0 2 * * *"), UTC, int(T) - 1) == int(T) - 86400


def test_previous_fire_of_a_rare_schedule_is_found_years_back() -> None:
    leap = parse_schedule("0 0 0 29 2 *")
    at = int(datetime(2027, 6, 1, tzinfo=UTC).timestamp())
    assert previous_fire_ts(leap, UTC, at) == int(datetime(2024, 2, 29, tzinfo=UTC).timestamp())


def test_reboot_has_no_previous_or_next_fire() -> None:
    around = fires_around(parse_schedule("@reboot"), UTC, T)
    assert around.previous is None and around.next is None


def test_fires_around_carry_the_dst_marks() -> None:
    # 02:30 does not exist in Berlin on 2025-03-30: a fixed-time task runs at the transition, 03:00+02:00.
    noon = datetime.fromisoformat("2025-03-30T12:00+02:00").timestamp()
    gap = fires_around(parse_schedule("0 30 2 * * *"), BERLIN, noon)
    assert gap.previous is not None and gap.previous.at.isoformat() == "2025-03-30T03:00:00+02:00"
    assert gap.previous.dst == "gap"
    assert gap.next is not None and gap.next.at.isoformat() == "2025-03-31T02:30:00+02:00" and gap.next.dst is None
    # An hourly task fires on both passes of the repeated hour on 2025-10-26; the second is marked.
    later = datetime.fromisoformat("2025-10-26T02:40+01:00").timestamp()
    rep = fires_around(parse_schedule("0 30 * * * *"), BERLIN, later)
    assert rep.previous is not None and rep.previous.at.isoformat() == "2025-10-26T02:30:00+01:00"
    assert rep.previous.dst == "repeat"


def test_a_wall_time_in_a_gap_or_overlap_gets_a_note() -> None:
    at, note = wall_time_note(datetime(2025, 3, 30, 2, 30), BERLIN)
    assert at.isoformat() == "2025-03-30T02:30:00+01:00" and at.timestamp() == datetime.fromisoformat(
        "2025-03-30T03:30+02:00").timestamp()
    assert note is not None and "does not exist in Europe/Berlin" in note and "03:30:00+02:00" in note
    at, note = wall_time_note(datetime(2025, 10, 26, 2, 30), BERLIN)
    assert at.utcoffset() == timedelta(hours=2)
    assert note is not None and "happens twice" in note and "+01:00" in note
    assert wall_time_note(datetime(2025, 6, 1, 2, 30), BERLIN) == (datetime(2025, 6, 1, 2, 30, tzinfo=BERLIN), None)


# --- explain: fires with rows --------------------------------------------------------------------


def test_a_fire_with_a_run_is_ran_with_its_id_status_and_duration() -> None:
    r = row(status="failed", exit_code=3, duration_s=2.25, lateness_ms=12.0)
    a = ask(task(), T, FakeHistory(r))
    assert a.kind == "ran" and a.row == r and a.scheduled_at == T
    assert a.message.startswith(f"ran: backup's fire at 2025-01-15 02:00:00+00:00 ran as run {r.run_id}: "
                                "failed (exit 3); started 2025-01-15 02:00:00+00:00 (12 ms late); took 2.25s")


def test_a_fire_that_ran_several_times_shows_the_last_attempt() -> None:
    first = row(status="failed", exit_code=1)
    second = row(attempt=2, started=T + 60, trigger="retry")
    a = ask(task(), T, FakeHistory(second, first))
    assert a.row == second
    assert "attempt 2" in a.message and "2 runs for this fire, the last shown" in a.message


def test_a_run_still_going_or_lost_says_so() -> None:
    a = ask(task(), T, FakeHistory(row(status="running", ended_at=None, exit_code=None, duration_s=None)))
    assert a.kind == "ran" and "running" in a.message and "still running" in a.message
    a = ask(task(), T, FakeHistory(row(status="lost", exit_code=None, duration_s=None)))
    assert a.kind == "ran" and "never recorded" in a.message


def test_a_skipped_fire_names_the_run_that_blocked_it() -> None:
    blocker = row(at=T - 86400, status="running", ended_at=None, exit_code=None, duration_s=None)
    skip = row(kind="skipped", reason="max_instances", started=T + 0.02)
    a = ask(task(), T, FakeHistory(blocker, rec(skip, detail=blocker.run_id)))
    assert a.kind == "skipped" and a.blocking_run == blocker.run_id and a.row == skip
    assert a.message.startswith("skipped: backup's fire at 2025-01-15 02:00:00+00:00 started no run "
                                f"(max_instances): 1 run of it was still going (max_instances: 1); run "
                                f"{blocker.run_id} was in the way (running, started 2025-01-14 02:00:00+00:00, "
                                "still running)")


def test_a_fire_cancelled_by_a_reload_gives_the_reason_and_detail() -> None:
    skip = row(kind="skipped", reason="reload", started=T + 20)
    a = ask(task(jitter=30.0), T, FakeHistory(rec(skip, detail="cancelled while waiting out its jitter")))
    assert a.kind == "skipped" and a.blocking_run is None
    assert "(reload): a reload changed or removed the task" in a.message
    assert a.message.endswith(": cancelled while waiting out its jitter")


def test_a_fire_in_a_missed_window_gives_the_window_count_and_reason() -> None:
    hourly = task(schedule="0 0 * * * *", misfire_grace=60.0)
    missed = row(kind="missed", at=T + 7200, started=T + 7200 + 1800, reason="beyond_grace")
    a = ask(hourly, T + 3600, FakeHistory(rec(missed, missed_first=T, missed_last=T + 7200, missed_count=3)))
    assert a.kind == "missed" and a.window == (T, T + 7200) and a.count == 3 and a.row == missed
    assert a.message == (
        "missed: backup's fire at 2025-01-15 03:00:00+00:00 was not run (beyond_grace): the daemon got to it more "
        "than misfire_grace (1m) late, so it was not caught up (the host was suspended or stalled, or the clock "
        "jumped forward); it is one of 3 fires missed from 2025-01-15 02:00:00+00:00 to 2025-01-15 04:00:00+00:00 "
        "(noticed at 2025-01-15 04:30:00+00:00)")
    assert a.to_json()["window"] == {"from": "2025-01-15T02:00:00+00:00", "to": "2025-01-15T04:00:00+00:00",
                                     "count": 3}


def test_a_run_of_the_fire_wins_over_a_skip_of_it() -> None:
    # After a clock step back a fire may be seen twice: once it was skipped, once it ran.
    a = ask(task(), T, FakeHistory(rec(row(kind="skipped", reason="max_instances")), row(started=T + 5)))
    assert a.kind == "ran"


# --- explain: fires without rows -----------------------------------------------------------------


def test_a_fire_seconds_ago_without_a_row_is_not_recorded_yet() -> None:
    a = ask(task(), T, FakeHistory(row(at=T - 86400)), now=T + 2, exact=False)
    assert a.kind == "not_recorded_yet" and a.scheduled_at == T and a.previous_answer == "ran"
    recent, earlier = a.message.split("\n")
    assert recent == ("not recorded yet: backup's fire at 2025-01-15 02:00:00+00:00 was 2s ago; the daemon "
                      "writes history about once a second")
    assert earlier.startswith("ran: backup's fire at 2025-01-14 02:00:00+00:00 ran as run")


def test_not_recorded_yet_also_explains_the_last_fire_that_should_be_recorded() -> None:
    # A 1/s task with the daemon down: its last fire is always seconds old, the one before says why.
    t = task(schedule="* * * * * *")
    a = ask(t, T + 100, FakeHistory(row(at=T - 20, started=T - 20)), now=T + 100.5, exact=False)
    assert a.kind == "not_recorded_yet" and a.scheduled_at == T + 100 and a.previous_answer == "missed"
    assert a.message.splitlines()[1] == (
        "missed: no record of backup's fire at 2025-01-15 02:01:35+00:00: the daemon was not running or not "
        "recording since 2025-01-15 01:59:40+00:00 (no row of any task)")


def test_jitter_extends_the_time_a_fire_may_be_unrecorded() -> None:
    a = ask(task(jitter=120.0), T, FakeHistory(), now=T + 60, exact=False)
    assert a.kind == "not_recorded_yet" and "jitter (up to 2m)" in a.message
    assert ask(task(jitter=120.0), T, FakeHistory(row("other", started=T - 10)), now=T + 130,
               exact=False).kind == "missed"


def test_a_fire_without_a_row_is_missed_with_the_gap_in_the_history() -> None:
    h = FakeHistory(row(at=T - 86400), row("other", at=None, started=T - 3600),
                    row("other", at=None, started=T + 7200))
    a = ask(task(), T, h)
    assert a.kind == "missed" and a.row is None and a.window == (T - 3600, T + 7200)
    assert a.message == ("missed: no record of backup's fire at 2025-01-15 02:00:00+00:00: the daemon was not "
                         "running or not recording between 2025-01-15 01:00:00+00:00 and 2025-01-15 "
                         "04:00:00+00:00 (no row of any task)")


def test_a_fire_without_a_row_while_other_rows_were_recorded_is_not_blamed_on_downtime() -> None:
    h = FakeHistory(row(at=T - 86400), row("other", at=None, started=T - 2), row("other", at=None, started=T + 3))
    a = ask(task(), T, h)
    assert a.kind == "missed" and a.window == (T - 2, T + 3)
    assert "though the daemon recorded other rows around it" in a.message
    assert "not in its config then" in a.message and "not running" not in a.message


def test_a_fire_after_the_last_row_is_missed_since_then() -> None:
    a = ask(task(), T, FakeHistory(row(at=T - 86400)))
    assert a.kind == "missed" and a.window == (T - 86400 + 0.01, None)
    assert "not running or not recording since 2025-01-14 02:00:00+00:00" in a.message


def test_a_fire_before_the_history_starts_says_so() -> None:
    a = ask(task(), T, FakeHistory(row(at=T + 86400)))
    assert a.kind == "missed" and a.window == (None, T + 86400.01)
    assert "before 2025-01-16 02:00:00+00:00, where the history starts (older rows may have been pruned)" \
        in a.message


def test_a_task_without_rows_before_the_fire_may_have_had_them_pruned() -> None:
    a = ask(task(history_keep=50), T, FakeHistory(row("other", at=None, started=T - 3600), row(at=T + 86400)))
    assert a.kind == "missed" and a.window == (T - 3600, T + 86400.01)
    assert a.message == ("missed: no record of backup's fire at 2025-01-15 02:00:00+00:00, and backup has no rows "
                         "before it at all: its older rows may have been pruned (it keeps its newest 50, none older "
                         "than the daemon's --history-days), or it was not in the task file then; no row of any task "
                         "between 2025-01-15 01:00:00+00:00 and 2025-01-16 02:00:00+00:00")
    near = FakeHistory(row("other", at=None, started=T - 1), row("other", at=None, started=T + 1))
    assert "; the daemon recorded other rows around it" in ask(task(), T, near).message
    # With a row of its own before the fire, its later rows were kept: no such remark.
    a = ask(task(), T, FakeHistory(row(at=T - 86400), row("other", at=None, started=T - 3600)))
    assert "pruned" not in a.message


def test_a_run_torch_stopped_gives_the_reason() -> None:
    r = row(status="killed", signal="SIGTERM", exit_code=None, reason="daemon stopping (SIGTERM)")
    a = ask(task(), T, FakeHistory(r))
    assert a.kind == "ran" and "killed (SIGTERM)" in a.message
    assert "stopped by torch: daemon stopping (SIGTERM)" in a.message


def test_no_history_database_is_no_history() -> None:
    a = ask(task(), T, None)
    assert a.kind == "no_history" and a.scheduled_at == T and "no history yet" in a.message


# --- explain: TIME between fires -----------------------------------------------------------------


def test_a_time_between_fires_is_not_scheduled_and_the_previous_fire_is_explained() -> None:
    r = row()
    a = ask(task(), T + 5 * 3600, FakeHistory(r))
    assert a.kind == "not_scheduled" and a.previous_answer == "ran" and a.row == r
    assert a.scheduled_at == T and a.previous_fire == T and a.next_fire == T + 86400
    head, body = a.message.split("\n")
    assert head == ("not scheduled: backup has no fire at 2025-01-15 07:00:00+00:00 (schedule \"0 0 2 * * *\", UTC); "
                    "previous fire 2025-01-15 02:00:00+00:00, next fire 2025-01-16 02:00:00+00:00")
    assert body.startswith(f"ran: backup's fire at 2025-01-15 02:00:00+00:00 ran as run {r.run_id}")


def test_a_time_on_a_fire_explains_that_fire_directly() -> None:
    a = ask(task(), T + 0.7, FakeHistory(row()))  # within the fire's second
    assert a.kind == "ran" and a.previous_answer is None and a.previous_fire == T and a.next_fire == T + 86400


def test_now_or_a_time_ago_explains_the_last_fire_without_not_scheduled() -> None:
    a = ask(task(), T + 5 * 3600, FakeHistory(row()), exact=False)
    assert a.kind == "ran" and a.scheduled_at == T


def test_a_schedule_with_no_fire_yet_is_not_scheduled() -> None:
    # Only 29 February, asked about early in year 1: there is no earlier fire to explain.
    t = task(schedule="0 0 0 29 2 *")
    at = datetime(1, 1, 5, tzinfo=UTC).timestamp()
    a = ask(t, at, FakeHistory(), exact=False)
    assert a.kind == "not_scheduled" and a.scheduled_at is None and a.previous_answer is None
    assert "has no fire at or before 0001-01-05" in a.message and "next fire 0004-02-29" in a.message


# --- explain: DST --------------------------------------------------------------------------------


def test_a_fixed_time_in_the_spring_gap_is_explained_at_the_instant_it_ran() -> None:
    t = task(schedule="0 30 2 * * *", timezone="Europe/Berlin")
    fire = datetime.fromisoformat("2025-03-30T03:00:00+02:00").timestamp()  # 02:30 did not exist
    r = row(at=fire)
    a = ask(t, fire, FakeHistory(r))
    assert a.kind == "ran" and a.row == r and a.scheduled_at == fire
    assert "(DST: its wall time did not exist that day in Europe/Berlin; this is when torch runs it instead)" \
        in a.message


def test_the_second_pass_of_a_repeated_hour_is_not_scheduled_for_a_fixed_time() -> None:
    t = task(schedule="0 30 2 * * *", timezone="Europe/Berlin")
    first = datetime.fromisoformat("2025-10-26T02:30:00+02:00").timestamp()
    second = datetime.fromisoformat("2025-10-26T02:30:00+01:00").timestamp()
    a = ask(t, second, FakeHistory(row(at=first)))
    assert a.kind == "not_scheduled" and a.previous_answer == "ran"
    assert a.previous_fire == first and a.scheduled_at == first


def test_the_second_pass_of_a_repeated_hour_is_a_fire_of_an_hourly_task() -> None:
    t = task(schedule="0 30 * * * *", timezone="Europe/Berlin")
    second = datetime.fromisoformat("2025-10-26T02:30:00+01:00").timestamp()
    a = ask(t, second, FakeHistory(row(at=second)))
    assert a.kind == "ran" and "(DST: the second pass of the repeated hour in Europe/Berlin)" in a.message


# --- explain: tasks without instants, or not here ---------------------------------------------------


def test_a_disabled_task_names_its_file_and_line() -> None:
    r = row(at=T - 86400)
    a = ask(task(enabled=False, line=12), T, FakeHistory(r))
    assert a.kind == "disabled" and a.row == r
    assert a.message.startswith("disabled: backup is disabled in etc/tasks.yaml:12 (enabled: false); its last row "
                                f"in the history is run {r.run_id}: ok, started 2025-01-14 02:00:00+00:00")


def test_a_task_for_other_hosts_lists_the_addresses_checked_and_the_allow_list() -> None:
    t = task(ips=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32")))
    a = ask(t, T, FakeHistory(), addresses=("127.0.0.1", "198.51.100.3"))
    assert a.kind == "not_on_this_host"
    assert a.addresses == ("127.0.0.1", "198.51.100.3") and a.allow_list == ("10.0.0.0/8", "192.0.2.7/32")
    assert a.message == ("not on this host: backup runs only on hosts with an address in its ips allow-list "
                         "(10.0.0.0/8, 192.0.2.7/32), and none of this host's addresses (127.0.0.1, 198.51.100.3) "
                         "is in it")
    assert ask(t, T, FakeHistory(row()), addresses=("10.1.2.3",)).kind == "ran"


def test_disabled_is_said_before_not_on_this_host() -> None:
    t = task(enabled=False, ips=(ipaddress.ip_network("10.0.0.0/8"),))
    assert ask(t, T, FakeHistory()).kind == "disabled"


def test_a_daemon_task_has_no_instants_and_shows_its_last_copy() -> None:
    t = task(schedule=None, type="daemon", max_instances=2)
    copy = row(at=None, started=T - 600, trigger="restart", status="running", ended_at=None, exit_code=None,
               duration_s=None)
    a = ask(t, T, FakeHistory(copy))
    assert a.kind == "daemon_task" and a.row == copy and a.scheduled_at is None
    assert a.message == ("daemon task: backup has no scheduled instants: torch keeps 2 copies of it running and "
                         "starts a new one (after a backoff) when one exits; its last copy at or before 2025-01-15 "
                         f"02:00:00+00:00: run {copy.run_id}: running, started 2025-01-15 01:50:00+00:00, "
                         "still running")
    assert "no copy of it is recorded" in ask(t, T, FakeHistory()).message


def test_a_reboot_task_shows_the_run_of_the_last_daemon_start() -> None:
    t = task(schedule="@reboot")
    boot = row(at=T - 3600, trigger="reboot")
    manual = row(at=None, started=T - 60, trigger="manual")
    a = ask(t, T, FakeHistory(boot, manual))
    assert a.kind == "reboot" and a.row == boot and a.scheduled_at == T - 3600
    assert a.message.startswith("reboot: backup (@reboot) runs once each time the daemon starts; the last, at the "
                                f"start at 2025-01-15 01:00:00+00:00: run {boot.run_id}: ok")
    assert "no such run is recorded" in ask(t, T - 7200, FakeHistory(boot)).message


def test_an_unknown_task_says_so_and_shows_its_last_row_if_the_history_has_one() -> None:
    r = row("gone", at=T - 86400)
    a = ask(None, T, FakeHistory(r), name="gone")
    assert a.kind == "unknown_task" and a.row == r
    assert a.message == ("no task named 'gone' in etc/tasks.yaml; it is no longer in the task file, but the history "
                         f"remembers it: its last row is run {r.run_id}: ok, started 2025-01-14 02:00:00+00:00, "
                         "ended 2025-01-14 02:00:01+00:00 after 1.50s")
    assert ask(None, T, None, name="gone").message == "no task named 'gone' in etc/tasks.yaml"


def test_json_has_the_stable_keys() -> None:
    got = ask(task(), T, FakeHistory(row(run_id="r-json"))).to_json()
    assert list(got) == ["task", "at", "answer", "previous_answer", "scheduled_at", "run", "blocking_run",
                         "previous_fire", "next_fire", "window", "addresses", "allow_list", "message"]
    assert got["answer"] == "ran" and got["at"] == "2025-01-15T02:00:00+00:00" and got["run"]["run_id"] == "r-json"
    assert got["previous_fire"] == got["scheduled_at"] == "2025-01-15T02:00:00+00:00"
    assert got["next_fire"] == "2025-01-16T02:00:00+00:00" and got["addresses"] == ["127.0.0.1"]
    assert list(got["run"]) == ["run_id", "task", "trigger", "attempt", "scheduled_at", "started_at", "ended_at",
                                "status", "exit_code", "signal", "duration_s", "lateness_ms", "reason", "error"]


# --- the queries ---------------------------------------------------------------------------------


def make_db(path: Path) -> sqlite3.Connection:
    """A migrated history database at `path` (a writable connection, for the test to fill)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous = OFF")  # a test file: a commit per row need not wait for the disk
    schema.migrate(db)
    return db


def add(db: sqlite3.Connection, task: str = "backup", at: float | None = T, started: float | None = None,
        **fields: Any) -> str:
    """Insert one row (a finished ok run of fire `at` unless `fields` say otherwise); return its run id."""
    started = (at if at is not None else T) + 0.01 if started is None else started
    values: dict[str, Any] = {
        "run_id": f"q{next(_ids)}", "task": task, "kind": "run", "trigger": "schedule", "attempt": 1,
        "scheduled_at": at, "started_at": started, "ended_at": started + 1.5, "status": "ok", "exit_code": 0,
        "duration_s": 1.5, "lateness_ms": 10.0, "host": "h", "pid": 100,
    }
    if fields.get("kind", "run") != "run":
        values.update(trigger=None, ended_at=None, exit_code=None, duration_s=None, pid=None, lateness_ms=None,
                      status=fields["kind"])
    values.update(fields)
    db.execute(f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
               list(values.values()))
    db.commit()
    return str(values["run_id"])


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory; local time is UTC so messages are predictable."""
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.delenv("TORCH_STATE_DIR", raising=False)
    monkeypatch.delenv("TORCH_HOST_IPS", raising=False)
    monkeypatch.delenv("TORCH_CONFIG", raising=False)
    return tmp_path


@pytest.fixture
def db(state: Path) -> Iterator[sqlite3.Connection]:
    conn = make_db(state / "history.db")
    yield conn
    conn.close()


def ro(state: Path) -> sqlite3.Connection:
    conn = open_readonly(state / "history.db")
    assert conn is not None
    return conn


def test_fire_records_find_a_late_jittered_run_among_other_fires(state: Path, db: sqlite3.Connection) -> None:
    every10 = [add(db, at=T + i * 10) for i in range(1, 6)]  # later fires, each run on time
    late = add(db, at=T, started=T + 25)  # waited out 25 s of jitter: started after later fires
    add(db, at=T, started=T + 5000, run_id="far")  # beyond the settling time: not read
    conn = ro(state)
    got = fire_records(conn, "backup", T, jitter=30.0)
    assert [r.row.run_id for r in got] == [late] and every10
    conn.close()


def test_fire_records_find_a_missed_window_noticed_later(state: Path, db: sqlite3.Connection) -> None:
    add(db, at=T - 10)
    add(db, kind="missed", at=T + 20, started=T + 3600, reason="beyond_grace", missed_first=T - 0.0,
        missed_last=T + 20, missed_count=3)
    add(db, kind="skipped", at=T + 30, started=T + 3600.5, reason="max_instances", detail="q-blocker")
    conn = ro(state)
    got = fire_records(conn, "backup", T + 10)
    assert [(r.row.kind, r.missed_first, r.missed_last, r.missed_count) for r in got] == [
        ("missed", T, T + 20, 3)]
    skip = fire_records(conn, "backup", T + 30)
    assert [(r.row.kind, r.row.reason, r.detail) for r in skip] == [("skipped", "max_instances", "q-blocker")]
    conn.close()


def test_fire_records_stop_reading_a_settling_time_after_a_later_fire(state: Path, db: sqlite3.Connection) -> None:
    for i in range(1, 1001):  # a 1/s task's later fires
        add(db, at=T + i)
    add(db, at=T, started=T + 2000, run_id="after-1000-rows")  # would be found only by reading them all
    conn = ro(state)
    assert fire_records(conn, "backup", T) == []
    assert [r.row.run_id for r in fire_records(conn, "backup", T, jitter=3000.0)] == ["after-1000-rows"]
    conn.close()


def test_last_task_row_and_rows_around(state: Path, db: sqlite3.Connection) -> None:
    a = add(db, at=T - 100)
    b = add(db, at=T + 100, trigger="reboot")
    add(db, "other", at=None, started=T + 50)
    conn = ro(state)
    last = last_task_row(conn, "backup", T)
    assert last is not None and last.run_id == a
    boot = last_task_row(conn, "backup", T + 200, "reboot")
    assert boot is not None and boot.run_id == b
    assert last_task_row(conn, "backup", T, "reboot") is None
    assert rows_around(conn, T) == (T - 100 + 0.01, T + 50)
    assert rows_around(conn, T - 1000) == (None, T - 100 + 0.01)
    assert rows_around(conn, T + 1000) == (T + 100.01, None)
    conn.close()


def _plans(conn: sqlite3.Connection, call: Any) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    call()
    conn.set_trace_callback(None)
    return [" | ".join(str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}")) for sql in seen]


def test_why_queries_read_through_the_indexes(state: Path, db: sqlite3.Connection) -> None:
    add(db)
    conn = ro(state)
    for p in (_plans(conn, lambda: fire_records(conn, "backup", T)) +
              _plans(conn, lambda: last_task_row(conn, "backup", T, "reboot"))):
        assert "USING INDEX runs_by_task (task=? AND started_at" in p, p
    for p in _plans(conn, lambda: rows_around(conn, T)):
        assert "USING COVERING INDEX runs_by_time" in p, p
    conn.close()


# --- the CLI -------------------------------------------------------------------------------------

TASKS = """\
version: 1
tasks:
  - {name: backup, schedule: "0 0 2 * * *", command: "true"}
  - {name: berlin, schedule: "0 30 2 * * *", command: "true", timezone: Europe/Berlin}
  - {name: paused, schedule: "* * * * * *", command: "true", enabled: false}
  - {name: there, schedule: "* * * * * *", command: "true", ips: [10.9.9.0/24]}
  - {name: keeper, type: daemon, command: "sleep 100"}
  - {name: boot, schedule: "@reboot", command: "true"}
  - {name: tick, schedule: "*/10 * * * * *", command: "true"}
"""


def run_cli(state: Path, *args: str) -> Result:
    cfg = state / "tasks.yaml"
    if not cfg.exists():
        cfg.write_text(TASKS)
    return CliRunner().invoke(cli, ["why", *args, "-c", str(cfg), "--state-dir", str(state),
                                    "--host-ips", "127.0.0.1"])


def test_cli_ran_in_text_and_json(state: Path, db: sqlite3.Connection) -> None:
    rid = add(db, at=T)
    r = run_cli(state, "backup", "--at", "2025-01-15T02:00:00+00:00")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"ran: backup's fire at 2025-01-15 02:00:00+00:00 ran as run {rid}: ok;")
    r = run_cli(state, "backup", "--at", "2025-01-15T02:00:00Z", "--json")
    got = json.loads(r.stdout)
    assert r.exit_code == 0 and got["answer"] == "ran" and got["run"]["run_id"] == rid
    assert got["message"].startswith("ran:") and got["allow_list"] == [] and got["addresses"] == ["127.0.0.1"]


def test_cli_default_time_is_now(state: Path, db: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    now = T + 3 * 3600 + 0.5
    monkeypatch.setattr(time, "time", lambda: now)
    rid = add(db, at=T)
    r = run_cli(state, "backup")
    assert r.exit_code == 0 and r.stdout.startswith(f"ran: backup's fire at 2025-01-15 02:00:00+00:00 ran as run {rid}")
    monkeypatch.setattr(time, "time", lambda: T + 1.5)
    r = run_cli(state, "backup")
    assert r.exit_code == 0 and r.stdout.startswith("ran:")  # the row is there already
    db.execute("DELETE FROM runs")
    db.commit()
    r = run_cli(state, "backup")
    assert r.exit_code == 0 and r.stdout.startswith("not recorded yet:")


def test_cli_at_without_offset_is_the_tasks_zone(state: Path, db: sqlite3.Connection) -> None:
    fire = datetime.fromisoformat("2025-06-02T02:30:00+02:00").timestamp()
    add(db, "berlin", at=fire)
    r = run_cli(state, "berlin", "--at", "2025-06-02T02:30:00")
    assert r.exit_code == 0 and r.stdout.startswith("ran: berlin's fire at 2025-06-02 00:30:00+00:00"), r.output


def test_cli_at_in_a_dst_gap_gets_a_note_and_the_shifted_fire(state: Path, db: sqlite3.Connection) -> None:
    fire = datetime.fromisoformat("2025-03-30T03:00:00+02:00").timestamp()
    add(db, "berlin", at=fire)
    r = run_cli(state, "berlin", "--at", "2025-03-30T02:30:00")
    assert r.exit_code == 0
    assert "note: 2025-03-30 02:30:00 does not exist in Europe/Berlin (DST gap)" in r.stderr
    head, body = r.stdout.splitlines()
    assert head.startswith("not scheduled: berlin has no fire at 2025-03-30 01:30:00+00:00")
    assert body.startswith("ran: berlin's fire at 2025-03-30 01:00:00+00:00 (DST: its wall time did not exist")


def test_cli_at_a_duration_ago(state: Path, db: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: T + 25 * 3600)
    rid = add(db, at=T)
    r = run_cli(state, "backup", "--at", "2h", "--json")
    got = json.loads(r.stdout)
    assert r.exit_code == 0 and got["answer"] == "ran" and got["run"]["run_id"] == rid
    assert got["at"] == "2025-01-16T01:00:00+00:00" and got["scheduled_at"] == "2025-01-15T02:00:00+00:00"


def test_cli_bad_or_future_at_is_a_usage_error(state: Path, db: sqlite3.Connection) -> None:
    for bad in ("yesterday", "-2h", "2999-01-01T00:00:00+00:00"):
        r = run_cli(state, "backup", "--at", bad)
        assert r.exit_code == 2 and "--at" in r.stderr, (bad, r.output)


def test_cli_missed_while_down(state: Path, db: sqlite3.Connection) -> None:
    add(db, at=T - 86400)
    add(db, "tick", at=T - 3600, started=T - 3600)
    add(db, "tick", at=T + 3600, started=T + 3600)
    r = run_cli(state, "backup", "--at", "2025-01-15T02:00:00+00:00", "--json")
    got = json.loads(r.stdout)
    assert r.exit_code == 0 and got["answer"] == "missed" and got["run"] is None
    assert got["window"] == {"from": "2025-01-15T01:00:00+00:00", "to": "2025-01-15T03:00:00+00:00", "count": None}


def test_cli_skipped_names_the_blocking_run(state: Path, db: sqlite3.Connection) -> None:
    blocker = add(db, at=T - 86400, status="running", ended_at=None, exit_code=None, duration_s=None)
    add(db, kind="skipped", at=T, reason="max_instances", detail=blocker)
    r = run_cli(state, "backup", "--at", "2025-01-15T02:00:00Z", "--json")
    got = json.loads(r.stdout)
    assert got["answer"] == "skipped" and got["blocking_run"] == blocker and got["run"]["status"] == "skipped"
    assert f"run {blocker} was in the way (running, started 2025-01-14" in got["message"]


def test_cli_config_answers(state: Path, db: sqlite3.Connection) -> None:
    r = run_cli(state, "paused")
    assert r.exit_code == 0 and r.stdout.startswith(f"disabled: paused is disabled in {state / 'tasks.yaml'}:5")
    r = run_cli(state, "there", "--json")
    got = json.loads(r.stdout)
    assert r.exit_code == 0 and got["answer"] == "not_on_this_host"
    assert got["addresses"] == ["127.0.0.1"] and got["allow_list"] == ["10.9.9.0/24"]
    r = CliRunner().invoke(cli, ["why", "there", "-c", str(state / "tasks.yaml"), "--state-dir", str(state),
                                 "--host-ips", "10.9.9.4", "--at", "2025-01-15T02:00:00Z"])
    assert r.exit_code == 0 and r.stdout.startswith("missed: no record of there's fire at 2025-01-15 02:00:00+00:00")
    assert run_cli(state, "keeper").stdout.startswith("daemon task: keeper has no scheduled instants")
    assert run_cli(state, "boot").stdout.startswith("reboot: boot (@reboot) runs once each time the daemon starts")


def test_cli_unknown_task_exits_1_and_shows_its_last_row(state: Path, db: sqlite3.Connection) -> None:
    r = run_cli(state, "nope")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == f"torch: no task named 'nope' in {state / 'tasks.yaml'}\n"
    rid = add(db, "gone", at=T)
    r = run_cli(state, "gone", "--json")
    assert r.exit_code == 1 and "it is no longer in the task file" in r.stderr and rid in r.stderr
    got = json.loads(r.stdout)
    assert got["answer"] == "unknown_task" and got["run"]["run_id"] == rid


def test_cli_missing_history_is_no_history_and_creates_nothing(state: Path) -> None:
    r = run_cli(state, "backup", "--at", "2025-01-15T02:00:00Z")
    assert r.exit_code == 0 and r.stdout.startswith("no history: backup's fire at 2025-01-15 02:00:00+00:00")
    assert run_cli(state, "paused").stdout.startswith("disabled:")  # answers from the file need no history
    assert not (state / "history.db").exists()


def test_cli_unreadable_history_exits_1(state: Path) -> None:
    (state / "history.db").write_bytes(b"garbage" * 100)
    r = run_cli(state, "backup")
    assert r.exit_code == 1 and "cannot read history database" in r.stderr and "not an SQLite database" in r.stderr


def test_cli_history_without_permission_exits_1(state: Path, db: sqlite3.Connection,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests may run as root, which chmod cannot lock out: make the open fail as it would.
    path = state / "history.db"
    deny_open(monkeypatch, path)
    r = run_cli(state, "backup")
    assert r.exit_code == 1 and r.stdout == ""
    assert f"torch: cannot read history database {path}: permission denied" in r.stderr


def test_cli_history_damaged_past_the_header_exits_1(state: Path, db: sqlite3.Connection,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr("gotorch.history.query.HistoryReader.fire_records", broken)
    r = run_cli(state, "backup", "--at", "2025-01-15T02:00:00Z")
    assert r.exit_code == 1 and "malformed" in r.stderr


# --- a long history --------------------------------------------------------------------------------

BIG_ROWS = 1_000_000
BIG_TASKS = 100
GAP = (400_000, 500_000)  # seconds after T without any row: the daemon was down


@pytest.fixture(scope="module")
def big_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory whose history has 1,000,000 rows: 100 tasks, one row a second, a day-long gap.

    Row i (i seconds after T) is task{i % 100}'s run of its fire at T + i, so task0 ran every 100 s,
    matching `@every 100s` (T is a multiple of 100).
    """
    path = tmp_path_factory.mktemp("bigwhy") / "history.db"
    db = make_db(path)
    db.execute("PRAGMA journal_mode = OFF")  # a scratch file: no rollback journal needed to build it
    db.execute("PRAGMA synchronous = OFF")

    db.execute("PRAGMA cache_size = -200000")  # 200 MB: the indexes are built in memory, not thrashed
    # Generated inside SQLite, in C: twice as fast as a million Python tuples through executemany.
    with db:
        db.execute("""
            WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?2 - 1)
            INSERT INTO runs (run_id, task, kind, scheduled_at, started_at, ended_at, status, exit_code,
                              duration_s, lateness_ms)
            SELECT printf('%08x', i), 'task' || (i % ?3), 'run', ?1 + i, ?1 + i + 0.01, ?1 + i + 0.5, 'ok', 0, 0.5, 3.0
            FROM n WHERE i NOT BETWEEN ?4 AND ?5 - 1""", (T, BIG_ROWS + GAP[1] - GAP[0], BIG_TASKS, *GAP))
    db.close()
    (path.parent / "tasks.yaml").write_text(
        'version: 1\ntasks:\n  - {name: task0, schedule: "@every 100s", command: "true"}\n')
    return path.parent


def test_why_on_a_million_rows_is_fast(big_state: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TZ", "UTC")
    assert T % 100 == 0

    def why(at: float) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        r = CliRunner().invoke(cli, ["why", "task0", "-c", str(big_state / "tasks.yaml"), "--state-dir",
                                     str(big_state), "--host-ips", "127.0.0.1", "--json", "--at",
                                     datetime.fromtimestamp(at, UTC).isoformat()])
        elapsed = time.perf_counter() - started
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout), elapsed

    timings: dict[str, float] = {}
    cases = {
        "ran, first fire of the history": (T, "ran"),
        "ran, last fire of the history": (T + BIG_ROWS + GAP[1] - GAP[0] - 100, "ran"),
        "missed, in the gap": (T + GAP[0] + 50_000, "missed"),
        "not scheduled, between fires": (T + 300_050, "not_scheduled"),
    }
    for label, (at, want) in cases.items():
        got, timings[label] = why(at)
        assert got["answer"] == want, (label, got)
    gap = why(T + GAP[0] + 50_000)[0]["window"]
    assert gap["from"] == datetime.fromtimestamp(T + GAP[0] - 1 + 0.01, UTC).isoformat()
    assert gap["to"] == datetime.fromtimestamp(T + GAP[1] + 0.01, UTC).isoformat()
    with capsys.disabled():
        for label, seconds in timings.items():
            print(f"\nwhy on {BIG_ROWS} rows, {label}: {seconds * 1000:.1f} ms", end="")
        print()
    assert max(timings.values()) < 1.0, timings


def test_fire_records_read_a_handful_of_rows_of_a_long_history(big_state: Path) -> None:
    conn = open_readonly(big_state / "history.db")
    assert conn is not None
    steps = 0

    def progress() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(progress, 1000)  # counts thousands of SQLite VM instructions
    got = fire_records(conn, "task0", T + 300_000)
    assert [r.row.scheduled_at for r in got] == [T + 300_000]
    assert steps < 50, steps  # reading all 10,000 rows of task0 takes thousands
    conn.close()
