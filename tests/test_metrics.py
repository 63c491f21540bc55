"""Metrics (gotorch.metrics, gotorch.metrics_text): events in, snapshot and Prometheus text out; the alert rules.

The subscriber is fed events as the daemon publishes them, with the scheduler's state given by plain
callables; the text is read back with prometheus_client's own parser. The alert rules are checked and
unit-tested with promtool when it is installed (Debian's `prometheus` package).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gotorch.config import Task, parse_config
from gotorch.events import (
    DaemonStarted,
    Jittered,
    MissedFires,
    ReloadApplied,
    ReloadFailed,
    ReloadUnchanged,
    RunEnded,
    RunOutput,
    RunStarted,
    Skipped,
)
from gotorch.metrics import DURATION_BOUNDS, LATENESS_BOUNDS, SCHEMA, WHOLE_SECOND_ABOVE, Metrics, Snapshot
from gotorch.metrics_text import CONTENT_TYPE, render

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "packaging" / "prometheus" / "alerts.yml"
FIRE = 1_767_225_600.0  # 2026-01-01T00:00:00Z
FIRE_ISO = "2026-01-01T00:00:00Z"
NOW = FIRE + 30
RUN_IDS = itertools.count(1)


def tasks(*lines: str) -> dict[str, Task]:
    """Tasks parsed from `{name: ..., ...}` flow lines (schedule and command filled in)."""
    text = "version: 1\ntasks:\n" + "".join(
        f"  - {{schedule: \"0 * * * * *\", command: x, {line}}}\n" for line in lines)
    return {t.name: t for t in parse_config(text, "t.yaml").tasks}


class Daemon:
    """The scheduler's state as the metrics see it: which tasks run here, runs going, next fires."""

    def __init__(self, *lines: str) -> None:
        self.tasks = tasks(*lines)
        self.running: dict[str, int] = {}
        self.next: dict[str, int] = {}
        self.now = NOW
        self.dropped: int | None = 0
        self.metrics = Metrics(task_of=self.tasks.get, names=self.tasks.keys,
                               running=lambda n: self.running.get(n, 0), next_fire=self.next.get,
                               up_since=FIRE - 3600, history_dropped=lambda: self.dropped, pid=4242,
                               clock=lambda: self.now)

    def remove(self, name: str) -> None:
        """A reload removed `name` (the scheduler forgets it first, then publishes)."""
        del self.tasks[name]


def started(task: str, run_id: str, *, trigger: str = "schedule", late_s: float = 0.002,
            scheduled: float | None = FIRE, at: float | None = None) -> RunStarted:
    """A RunStarted as the runner publishes it (`at`: the start of a run that has no fire second)."""
    at = scheduled + late_s if scheduled is not None else at or NOW
    return RunStarted(task, run_id, 100, FIRE_ISO if scheduled == FIRE else None,
                      late_s * 1000 if scheduled is not None else None, trigger, 1, scheduled, at)


def ended(task: str, run_id: str, status: str = "ok", *, duration: float = 1.0, trigger: str = "schedule",
          attempt: int = 1, pid: int | None = 100) -> RunEnded:
    return RunEnded(task, run_id, pid, status, 0 if status == "ok" else 1, None, duration, 0, 0, None, trigger,
                    attempt, FIRE)


def run(d: Daemon, task: str, status: str = "ok", **kw: Any) -> None:
    """A whole run: started, then ended `status`."""
    run_id = f"{task}-{next(RUN_IDS)}"
    start_kw = {k: v for k, v in kw.items() if k in ("trigger", "late_s", "scheduled")}
    end_kw = {k: v for k, v in kw.items() if k in ("trigger", "duration", "attempt")}
    d.metrics(started(task, run_id, **start_kw))
    d.metrics(ended(task, run_id, status, **end_kw))


def families(text: bytes) -> dict[str, Any]:
    """Metric families of an exposition by name (counters without `_total`, as the parser names them)."""
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def samples(text: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name` (e.g. torch_task_runs_total, x_bucket) by its sorted labels."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for f in text_string_to_metric_families(text.decode()):
        for s in f.samples:
            if isinstance(s, Sample) and s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(text: bytes, name: str, **labels: str) -> float | None:
    return samples(text, name).get(tuple(sorted(labels.items())))


# --- counting --------------------------------------------------------------------------------------------


def test_runs_are_counted_by_status_and_a_run_that_never_started_as_spawn_failed() -> None:
    d = Daemon("name: a")
    for status in ("ok", "ok", "failed", "timeout", "killed"):
        run(d, "a", status)
    d.metrics(ended("a", "never", "failed", pid=None, duration=0.0))
    t = d.metrics.snapshot().tasks["a"]
    assert t.runs == {"ok": 2, "failed": 1, "timeout": 1, "killed": 1, "spawn_failed": 1}
    assert t.duration is not None and t.duration.count == 5, "a run that never started has no duration"


def test_output_lines_and_other_events_change_nothing() -> None:
    d = Daemon("name: a")
    before = d.metrics.snapshot_json()
    d.metrics(RunOutput("a", "r1", "stdout", "hello"))
    assert d.metrics.snapshot_json() == before


def test_durations_fall_into_the_bucket_whose_bound_they_do_not_exceed() -> None:
    d = Daemon("name: a")
    for seconds in (0.05, 0.1, 0.11, 59.0, 86400.0, 90000.0):
        run(d, "a", duration=seconds)
    h = d.metrics.snapshot().tasks["a"].duration
    assert h is not None
    cumulative = dict(zip(DURATION_BOUNDS, h.buckets, strict=True))
    assert cumulative[0.1] == 2  # 0.05 and exactly 0.1 (`le` includes the bound)
    assert cumulative[0.25] == 3 and cumulative[30] == 3 and cumulative[60] == 4
    assert cumulative[86400] == 5 and h.count == 6  # 90000 s only in +Inf
    assert h.sum == pytest.approx(0.05 + 0.1 + 0.11 + 59 + 86400 + 90000)


def test_fire_lateness_is_observed_for_scheduled_and_reboot_runs_only() -> None:
    d = Daemon("name: a")
    run(d, "a", trigger="schedule", late_s=0.0004)
    run(d, "a", trigger="reboot", late_s=0.003)
    run(d, "a", trigger="retry", late_s=40.0)  # its fire's second long ago: a backoff, not lateness
    run(d, "a", trigger="manual", scheduled=None)
    run(d, "a", trigger="manual", late_s=2.0)  # `torch run --in`: asked for, not fired
    h = d.metrics.snapshot().tasks["a"].fire_lateness
    assert h is not None and h.count == 2
    cumulative = dict(zip(LATENESS_BOUNDS, h.buckets, strict=True))
    assert cumulative[0.001] == 1 and cumulative[0.005] == 2
    assert h.sum == pytest.approx(0.0034)


def test_a_fires_jitter_delay_is_not_lateness() -> None:
    d = Daemon("name: a, jitter: 30s")
    d.metrics(Jittered("a", FIRE_ISO, 12.5))
    d.metrics(started("a", "r1", late_s=12.502))
    h = d.metrics.snapshot().tasks["a"].fire_lateness
    assert h is not None and h.count == 1 and h.sum == pytest.approx(0.002)
    assert d.metrics._jitter == {}, "the fire's entry goes with its start"
    d.metrics(Jittered("a", "2026-01-01T00:01:00Z", 5.0))
    d.metrics(Skipped("a", "2026-01-01T00:01:00Z", "reload", detail="cancelled while waiting out its jitter"))
    assert d.metrics._jitter == {}, "and with its skip"


def test_last_run_is_when_the_last_run_started_and_last_success_when_a_success_ended() -> None:
    d = Daemon("name: a")
    assert (d.metrics.snapshot().tasks["a"].last_run, d.metrics.snapshot().tasks["a"].last_success) == (None, None)
    d.metrics(started("a", "r1", late_s=0.5))
    d.now = FIRE + 20
    d.metrics(ended("a", "r1", "ok"))
    t = d.metrics.snapshot().tasks["a"]
    assert t.last_run == FIRE + 0.5 and t.last_success == FIRE + 20
    d.now = FIRE + 100
    d.metrics(started("a", "r2", scheduled=None, trigger="manual", at=FIRE + 100))
    d.metrics(ended("a", "r2", "failed", trigger="manual"))
    t = d.metrics.snapshot().tasks["a"]
    assert t.last_run == FIRE + 100 and t.last_success == FIRE + 20, "a failure leaves last_success alone"
    d.now = FIRE + 200
    d.metrics(ended("a", "r3", "failed", pid=None))
    assert d.metrics.snapshot().tasks["a"].last_run == FIRE + 200, "a run that could not start was still tried"


def test_consecutive_failures_count_fires_failed_for_good_and_a_success_resets_them() -> None:
    d = Daemon("name: a, retries: 1", "name: b")
    run(d, "a", "failed", attempt=1)  # retried: not yet failed for good
    assert d.metrics.snapshot().tasks["a"].consecutive_failures == 0
    run(d, "a", "timeout", trigger="retry", attempt=2)
    run(d, "a", "failed", trigger="manual")  # nobody retries a manual run
    assert d.metrics.snapshot().tasks["a"].consecutive_failures == 2
    run(d, "a", "killed")  # stopped on request: neither a failure nor a success
    assert d.metrics.snapshot().tasks["a"].consecutive_failures == 2
    run(d, "a", "ok")
    assert d.metrics.snapshot().tasks["a"].consecutive_failures == 0
    d.metrics(ended("b", "never", "failed", pid=None))  # spawn_failed is a failure (not retried by default)
    assert d.metrics.snapshot().tasks["b"].consecutive_failures == 1


def test_skipped_and_missed_fires_are_counted_per_task_and_reason() -> None:
    d = Daemon("name: a", "name: b")
    for reason in ("max_instances", "max_instances", "paused"):
        d.metrics(Skipped("a", FIRE_ISO, reason))
    d.metrics(MissedFires("b", FIRE_ISO, "2026-01-01T00:04:00Z", 5, "daemon late", True))
    d.metrics(MissedFires("b", FIRE_ISO, FIRE_ISO, 1, "clock jump", True))
    snap = d.metrics.snapshot()
    assert snap.tasks["a"].skipped == {"max_instances": 2, "paused": 1} and snap.tasks["a"].missed == 0
    assert snap.tasks["b"].skipped == {} and snap.tasks["b"].missed == 6


def test_hook_runs_are_counted_under_their_task_apart_from_its_runs() -> None:
    d = Daemon("name: backup")
    run(d, "backup", "failed")
    for status in ("ok", "failed"):
        d.metrics(started("backup:on_failure", f"h-{status}", trigger="hook", scheduled=None))
        d.metrics(ended("backup:on_failure", f"h-{status}", status, trigger="hook"))
    d.metrics(ended("backup:on_recovery", "h3", "failed", trigger="hook", pid=None))
    snap = d.metrics.snapshot()
    assert set(snap.tasks) == {"backup"}, "a hook is no task of its own"
    t = snap.tasks["backup"]
    assert t.runs == {"failed": 1} and t.consecutive_failures == 1
    assert t.hook_runs == {"on_failure": {"ok": 1, "failed": 1}, "on_recovery": {"spawn_failed": 1}}
    assert t.duration is not None and t.duration.count == 1


def test_counters_survive_a_reload_and_a_removed_tasks_series_disappear() -> None:
    d = Daemon("name: kept", "name: gone", "name: changed")
    for name in ("kept", "gone", "changed"):
        run(d, name, "ok")
        run(d, name, "failed")
    d.metrics(Jittered("gone", FIRE_ISO, 3.0))
    d.metrics(RunStarted("gone", "still-running", 7, FIRE_ISO, 1.0, "schedule", 1, FIRE, FIRE + 1))
    d.remove("gone")
    d.tasks["changed"] = tasks("name: changed, timeout: 5s")["changed"]
    d.metrics(ReloadApplied("file", 2, "bbbbbbbbbbbb", (), ("gone",), ("changed",), 2, 1.0, 1.0))
    snap = d.metrics.snapshot()
    assert set(snap.tasks) == {"kept", "changed"}
    assert snap.tasks["kept"].runs == snap.tasks["changed"].runs == {"ok": 1, "failed": 1}
    assert snap.tasks["changed"].consecutive_failures == 1
    assert d.metrics._jitter == {} and "gone" not in d.metrics._series
    d.metrics(ended("gone", "still-running", "ok"))  # a run of the removed task ends later
    assert "gone" not in d.metrics.snapshot().tasks and "gone" not in d.metrics._series


def test_config_generation_hash_and_reload_outcome_follow_the_daemons_events() -> None:
    d = Daemon("name: a")
    d.metrics(DaemonStarted(1, "tasks.yaml", "aaaaaaaaaaaa", 1, True, ["127.0.0.1"], 1, 0))
    snap = d.metrics.snapshot()
    assert (snap.config_generation, snap.config_hash, snap.last_reload_success) == (1, "aaaaaaaaaaaa", True)
    d.metrics(ReloadFailed("file", 1, ["tasks.yaml:3:5: bad schedule"]))
    assert not d.metrics.snapshot().last_reload_success
    d.metrics(ReloadUnchanged("file", 1))
    assert d.metrics.snapshot().last_reload_success
    d.metrics(ReloadFailed("SIGUSR2", 1, ["nope"]))
    d.metrics(ReloadApplied("retry", 2, "bbbbbbbbbbbb", (), (), (), 1, 1.0, 1.0))
    snap = d.metrics.snapshot()
    assert (snap.config_generation, snap.config_hash, snap.last_reload_success) == (2, "bbbbbbbbbbbb", True)


def test_a_snapshot_lists_every_task_here_with_the_schedulers_gauges_of_the_moment() -> None:
    d = Daemon("name: a", "name: quiet")
    d.running["a"] = 2
    d.next.update({"a": int(FIRE) + 60, "quiet": int(FIRE) + 3600})
    snap = d.metrics.snapshot()
    assert set(snap.tasks) == {"a", "quiet"}, "also the tasks that did nothing yet"
    assert (snap.tasks["a"].running, snap.tasks["a"].next_fire) == (2, FIRE + 60)
    quiet = snap.tasks["quiet"]
    assert (quiet.runs, quiet.duration, quiet.last_run, quiet.next_fire) == ({}, None, None, FIRE + 3600)
    assert (snap.pid, snap.up_since, snap.taken_at, snap.history_rows_dropped) == (4242, FIRE - 3600, NOW, 0)


def test_a_snapshot_survives_json_and_another_schema_is_refused() -> None:
    d = Daemon("name: a")
    run(d, "a", "failed", duration=3.0)
    raw = d.metrics.snapshot_json()
    again = Snapshot.from_json(json.loads(json.dumps(raw)))
    assert again == d.metrics.snapshot()
    assert raw["schema"] == SCHEMA == 1
    with pytest.raises(ValueError, match="schema 2"):
        Snapshot.from_json({**raw, "schema": 2})
    with pytest.raises(ValueError, match="malformed"):
        Snapshot.from_json({k: v for k, v in raw.items() if k != "daemon"})
    bad = json.loads(json.dumps(raw))
    bad["tasks"]["a"]["duration"]["counts"].pop()
    with pytest.raises(ValueError, match="buckets"):
        Snapshot.from_json(bad)


def test_the_reply_waits_for_a_quiet_moment_and_for_a_whole_second_with_a_big_config() -> None:
    asked: list[bool] = []

    async def quiet(whole_second: bool) -> None:
        asked.append(whole_second)

    for count in (3, WHOLE_SECOND_ABOVE + 1):
        names = {f"t{i}": tasks("name: t")["t"] for i in range(count)}
        m = Metrics(task_of=names.get, names=names.keys, running=lambda _n: 0, next_fire=lambda _n: None,
                    up_since=FIRE, quiet=quiet)
        reply = asyncio.run(m.reply())
        assert reply["ok"] is True and len(reply["metrics"]["tasks"]) == count
    assert asked == [False, True]


# --- the text ---------------------------------------------------------------------------------------------


def busy_daemon() -> Daemon:
    d = Daemon("name: backup, retries: 0", "name: idle")
    d.metrics(DaemonStarted(1, "tasks.yaml", "0123456789ab", 1, True, ["127.0.0.1"], 2, 0))
    run(d, "backup", "ok", duration=0.3, late_s=0.0007)
    run(d, "backup", "failed", duration=70.0, late_s=0.02)
    d.metrics(Skipped("backup", FIRE_ISO, "paused"))
    d.metrics(MissedFires("backup", FIRE_ISO, FIRE_ISO, 2, "daemon late", True))
    d.metrics(ended("backup:on_failure", "h1", "ok", trigger="hook"))
    d.running["backup"] = 1
    d.next["backup"] = int(FIRE) + 60
    d.dropped = 7
    return d


def test_the_text_has_every_required_metric_with_its_type() -> None:
    text = render(busy_daemon().metrics.snapshot_json(), None)
    fams = {name: f.type for name, f in families(text).items()}
    assert fams == {
        "torch_task_runs": "counter", "torch_task_skipped": "counter", "torch_task_missed": "counter",
        "torch_task_hook_runs": "counter", "torch_task_duration_seconds": "histogram",
        "torch_task_fire_lateness_seconds": "histogram", "torch_task_running": "gauge",
        "torch_task_consecutive_failures": "gauge", "torch_task_last_run_timestamp_seconds": "gauge",
        "torch_task_last_success_timestamp_seconds": "gauge", "torch_task_next_fire_timestamp_seconds": "gauge",
        "torch_config_generation": "gauge", "torch_config_last_reload_success": "gauge",
        "torch_config_info": "gauge", "torch_history_rows_dropped": "counter", "torch_log_lines_dropped": "counter",
        "torch_up_since_timestamp_seconds": "gauge",
    }
    assert all(f.documentation for f in families(text).values()), "every metric has its HELP"
    assert CONTENT_TYPE.startswith("text/plain; version=")


def test_the_text_carries_the_counts_and_gauges_of_the_snapshot() -> None:
    text = render(busy_daemon().metrics.snapshot_json(), None)
    assert value(text, "torch_task_runs_total", task="backup", status="ok") == 1
    assert value(text, "torch_task_runs_total", task="backup", status="failed") == 1
    # Never-seen statuses the alerts watch start at 0, so that increase() sees their first change.
    assert value(text, "torch_task_runs_total", task="idle", status="failed") == 0
    assert value(text, "torch_task_skipped_total", task="idle", reason="max_instances") == 0
    assert value(text, "torch_task_skipped_total", task="backup", reason="paused") == 1
    assert value(text, "torch_task_missed_total", task="backup") == 2
    assert value(text, "torch_task_hook_runs_total", task="backup", hook="on_failure", status="ok") == 1
    assert value(text, "torch_task_running", task="backup") == 1
    assert value(text, "torch_task_consecutive_failures", task="backup") == 1
    assert value(text, "torch_task_next_fire_timestamp_seconds", task="backup") == FIRE + 60
    assert value(text, "torch_task_last_run_timestamp_seconds", task="backup") == FIRE + 0.02
    assert value(text, "torch_task_last_success_timestamp_seconds", task="backup") == NOW
    assert value(text, "torch_task_last_run_timestamp_seconds", task="idle") is None, "no run yet: no sample"
    assert value(text, "torch_config_generation") == 1 and value(text, "torch_config_last_reload_success") == 1
    assert value(text, "torch_config_info", hash="0123456789ab") == 1
    assert value(text, "torch_history_rows_dropped_total") == 7
    assert value(text, "torch_up_since_timestamp_seconds") == FIRE - 3600


def test_histograms_are_cumulative_up_to_inf_with_count_and_sum() -> None:
    text = render(busy_daemon().metrics.snapshot_json(), None)
    buckets = {dict(k)["le"]: v for k, v in samples(text, "torch_task_duration_seconds_bucket").items()
               if dict(k)["task"] == "backup"}
    assert len(buckets) == len(DURATION_BOUNDS) + 1
    assert (buckets["0.25"], buckets["0.5"], buckets["60.0"], buckets["120.0"], buckets["+Inf"]) == (0, 1, 1, 2, 2)
    assert value(text, "torch_task_duration_seconds_count", task="backup") == 2
    assert value(text, "torch_task_duration_seconds_sum", task="backup") == pytest.approx(70.3)
    lateness = {dict(k)["le"]: v for k, v in samples(text, "torch_task_fire_lateness_seconds_bucket").items()}
    assert (lateness["0.001"], lateness["0.01"], lateness["0.025"], lateness["60.0"]) == (1, 1, 2, 2)
    assert not any(dict(k)["task"] == "idle" for k in samples(text, "torch_task_duration_seconds_bucket")), \
        "no histogram series before a task's first run"


def test_a_removed_tasks_series_are_gone_from_the_text() -> None:
    d = busy_daemon()
    d.remove("backup")
    d.metrics(ReloadApplied("file", 2, "bbbbbbbbbbbb", (), ("backup",), (), 1, 1.0, 1.0))
    text = render(d.metrics.snapshot_json(), None)
    assert 'task="backup"' not in text.decode() and 'task="idle"' in text.decode()
    assert value(text, "torch_config_info", hash="bbbbbbbbbbbb") == 1
    assert value(text, "torch_config_info", hash="0123456789ab") is None


def test_without_history_the_dropped_rows_counter_is_absent() -> None:
    d = Daemon("name: a")
    d.dropped = None
    assert "torch_history_rows_dropped" not in families(render(d.metrics.snapshot_json(), None))


def test_process_metrics_describe_the_daemon_process_not_the_caller() -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        text = render(Daemon("name: a").metrics.snapshot_json(), other.pid)
        started_at = value(text, "process_start_time_seconds")
        assert started_at == pytest.approx(psutil.Process(other.pid).create_time(), abs=1.0)
        assert started_at != pytest.approx(psutil.Process().create_time(), abs=0.001)
        assert value(text, "process_resident_memory_bytes") and value(text, "process_open_fds")
    finally:
        other.kill()
        other.wait()
    assert "process_start_time_seconds" not in render(Daemon("name: a").metrics.snapshot_json(), None).decode()


def test_a_snapshot_of_another_schema_cannot_be_rendered() -> None:
    with pytest.raises(ValueError, match="schema"):
        render({"schema": 99}, None)


# --- the alert rules (promtool) -----------------------------------------------------------------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install "
                                    "prometheus); the alert rules and exposition lint are not checked")


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin.decode() if stdin is not None else None,
                          capture_output=True, text=True, timeout=60)


@needs_promtool
def test_the_shipped_alert_rules_pass_promtool_check() -> None:
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@needs_promtool
def test_the_rendered_text_passes_promtools_lint() -> None:
    r = promtool("check", "metrics", stdin=render(busy_daemon().metrics.snapshot_json(), None))
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


# promtool's unit tests: series in, alerts expected at given times (evaluation starts at Unix time 0).
RULE_TESTS = """\
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # a failed for good at 2m, succeeded again at 30m; b failed once and recovered at once.
      - series: 'torch_task_consecutive_failures{{instance="h1", task="a"}}'
        values: '0 0 1x27 0x10'
      - series: 'torch_task_consecutive_failures{{instance="h1", task="b"}}'
        values: '0 1 0x38'
    alert_rule_test:
      - {{eval_time: 10m, alertname: TorchTaskFailing, exp_alerts: []}}
      - eval_time: 20m
        alertname: TorchTaskFailing
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h1, task: a}}
            exp_annotations:
              summary: "torch task a is failing on h1"
              description: "The last 1 fire(s) of a failed (after their retries) and it has not succeeded
                since. On the host: `torch history a` and `torch logs a` show what happened."
      - {{eval_time: 35m, alertname: TorchTaskFailing, exp_alerts: []}}

  - interval: 1m
    input_series:
      # Both run every 10 minutes (last run start and next fire move together). ok succeeds each time;
      # stale last succeeded at 0 and keeps failing: 3 x 10 min later it alerts (after 5 min more).
      - series: 'torch_task_last_run_timestamp_seconds{{instance="h1", task="stale"}}'
        values: '0x9 600x9 1200x9 1800x9 2400x9 3000x9'
      - series: 'torch_task_next_fire_timestamp_seconds{{instance="h1", task="stale"}}'
        values: '600x9 1200x9 1800x9 2400x9 3000x9 3600x9'
      - series: 'torch_task_last_success_timestamp_seconds{{instance="h1", task="stale"}}'
        values: '0x59'
      - series: 'torch_task_last_run_timestamp_seconds{{instance="h1", task="ok"}}'
        values: '0x9 600x9 1200x9 1800x9 2400x9 3000x9'
      - series: 'torch_task_next_fire_timestamp_seconds{{instance="h1", task="ok"}}'
        values: '600x9 1200x9 1800x9 2400x9 3000x9 3600x9'
      - series: 'torch_task_last_success_timestamp_seconds{{instance="h1", task="ok"}}'
        values: '1x9 601x9 1201x9 1801x9 2401x9 3001x9'
    alert_rule_test:
      - {{eval_time: 30m, alertname: TorchTaskNotSucceeding, exp_alerts: []}}
      - eval_time: 40m
        alertname: TorchTaskNotSucceeding
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h1, task: stale}}
            exp_annotations:
              summary: "torch task stale has not succeeded for 40m 0s on h1"
              description: "stale last succeeded 40m 0s ago, more than 3 times its interval. It runs but
                does not succeed: see `torch history stale` on the host."

  - interval: 1m
    input_series:
      - series: 'torch_task_skipped_total{{instance="h1", task="slow", reason="max_instances"}}'
        values: '0x5 1 2 3 4 5x60'
      - series: 'torch_task_skipped_total{{instance="h1", task="slow", reason="paused"}}'
        values: '0x5 1 2 3 4 5x60'
      - series: 'torch_task_missed_total{{instance="h1", task="late"}}'
        values: '0x10 3x60'
    alert_rule_test:
      - {{eval_time: 4m, alertname: TorchTaskOverrunning, exp_alerts: []}}
      - eval_time: 10m
        alertname: TorchTaskOverrunning
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h1, task: slow, reason: max_instances}}
            exp_annotations:
              summary: "torch task slow skips fires on h1: its runs overrun"
              description: "5 fire(s) of slow were skipped in the last 30 minutes because max_instances runs
                were still going. `torch status` on the host shows the runs; consider a `timeout` for the task."
      - {{eval_time: 50m, alertname: TorchTaskOverrunning, exp_alerts: []}}
      - {{eval_time: 5m, alertname: TorchMissedFires, exp_alerts: []}}
      - eval_time: 12m
        alertname: TorchMissedFires
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h1, task: late}}
            exp_annotations:
              summary: "torch missed fires of late on h1"
              description: "3 fire(s) of late were missed in the last 15 minutes (the daemon was late, the host
                suspended or its clock jumped). `torch why late` and the log's `missed` events on the host tell
                which and why."
      - {{eval_time: 40m, alertname: TorchMissedFires, exp_alerts: []}}

  - interval: 1m
    input_series:
      - series: 'torch_config_last_reload_success{{instance="h1"}}'
        values: '1x5 0x10 1x10'
      - series: 'torch_history_rows_dropped_total{{instance="h1"}}'
        values: '0x5 40x30'
      - series: 'torch_up_since_timestamp_seconds{{instance="h1"}}'
        values: '0x9 600x30'
      - series: 'torch_task_fire_lateness_seconds_bucket{{instance="h1", task="a", le="1.0"}}'
        values: '0+60x10 600x30'
      - series: 'torch_task_fire_lateness_seconds_bucket{{instance="h1", task="a", le="2.5"}}'
        values: '0+60x10 600+60x30'
      - series: 'torch_task_fire_lateness_seconds_bucket{{instance="h1", task="a", le="+Inf"}}'
        values: '0+60x10 600+60x30'
    alert_rule_test:
      - {{eval_time: 8m, alertname: TorchReloadFailing, exp_alerts: []}}
      - eval_time: 12m
        alertname: TorchReloadFailing
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h1}}
            exp_annotations:
              summary: "torch on h1 cannot load its task file"
              description: "The last reload of the task file failed; the previous config (see torch_config_info)
                runs on. `torch status` on the host lists the errors with their line and column."
      - {{eval_time: 20m, alertname: TorchReloadFailing, exp_alerts: []}}
      - eval_time: 10m
        alertname: TorchHistoryRowsDropped
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h1}}
            exp_annotations:
              summary: "torch on h1 is losing run history"
              description: "40 history row(s) could not be written in the last 15 minutes. The log's `history.*`
                errors on the host say why (full disk, read-only or corrupt database)."
      - {{eval_time: 30m, alertname: TorchHistoryRowsDropped, exp_alerts: []}}
      - eval_time: 12m
        alertname: TorchDaemonRestarted
        exp_alerts:
          - exp_labels: {{severity: info, instance: h1}}
            exp_annotations:
              summary: "torch on h1 restarted"
              description: "The torch daemon started again in the last 15 minutes; its metrics (counters,
                failure streaks, last success) start from zero."
      - {{eval_time: 10m, alertname: TorchFiresLate, exp_alerts: []}}
      - eval_time: 35m
        alertname: TorchFiresLate
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h1}}
            exp_annotations:
              summary: "torch on h1 starts fires late"
              description: "99% of fires started within 2.485s of their second over the last 10 minutes
                (normally about a millisecond): the host is overloaded or the daemon stalls."
"""


@needs_promtool
def test_the_alert_rules_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(RULE_TESTS.format(rules=json.dumps(str(ALERTS))))
    r = promtool("test", "rules", str(tests))
    assert r.returncode == 0, textwrap.indent(r.stdout + r.stderr, "  ")
