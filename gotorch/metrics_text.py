"""The Prometheus text exposition of a metrics snapshot, for the web process's `/metrics`.

The daemon only counts (gotorch.metrics); the web process fetches its snapshot over the control socket
and calls `render`, so that formatting (and every scrape's cost) stays out of the firing loop.
prometheus_client does the format (escaping, `_total`, histogram `_bucket`/`_count`/`_sum` series):
a custom collector yields the snapshot's numbers on a fresh registry per call, and a ProcessCollector
reads the daemon's own process (not the web process's) from /proc.

Rendering is not cheap: about 48 lines (3 KB) per task that has run, mostly its two histograms, and
0.3 s for 1,000 tasks on the 2-core CI machine (3 ms for 10). So call it off any event loop that must
stay responsive (a worker thread) and cache the bytes along with the snapshot they came from.
Buckets (gotorch.metrics says why): duration_seconds 0.1 0.25 0.5 1 2.5 5 10 30 60 120 300 600 1800
3600 7200 21600 86400; fire_lateness_seconds 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 30 60.

Metrics (every `torch_task_*` carries `task`):

    torch_task_runs_total{status}                 counter  runs ended, by status (ok, failed: always shown)
    torch_task_skipped_total{reason}              counter  fires that started no run (max_instances: always)
    torch_task_missed_total                       counter  fires missed (daemon late, suspended, clock jump)
    torch_task_hook_runs_total{hook,status}       counter  alert hook runs (TASK:on_failure...), by hook and status
    torch_task_duration_seconds                   histogram  run durations (once the task has run)
    torch_task_fire_lateness_seconds              histogram  start minus fire second (and jitter); schedule/reboot
    torch_task_running                            gauge    runs going now
    torch_task_consecutive_failures               gauge    fires failed for good in a row (0 after a success)
    torch_task_last_run_timestamp_seconds         gauge    start of the last run (once there was one)
    torch_task_last_success_timestamp_seconds     gauge    end of the last successful run (once there was one)
    torch_task_next_fire_timestamp_seconds        gauge    the next fire (cron tasks that will fire again)
    torch_config_generation                       gauge    configs applied since start (1 = the one at start)
    torch_config_last_reload_success              gauge    1, or 0 while the last reload attempt failed
    torch_config_info{hash}                       gauge    1, labelled with the running config's short hash
    torch_history_rows_dropped_total              counter  history rows lost (absent with --no-history)
    torch_log_lines_dropped_total                 counter  log lines the log file could not take (disk full)
    torch_up_since_timestamp_seconds              gauge    when the daemon started
    process_*                                     the daemon's CPU, memory, fds and start time
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from gotorch.metrics import HistogramData, Snapshot, TaskMetrics

# What to send as the response's Content-Type with `render`'s bytes.
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Statuses every task shows from the start (0 until they happen), so that `increase()` sees the first
# failure: a series that appears with value 1 has no earlier sample to increase from.
ALWAYS_SHOWN = ("ok", "failed")
# Likewise the skip reason an alert watches (gotorch's alerts.yml: TorchTaskOverrunning).
ALWAYS_SKIPPED = ("max_instances",)


def render(snapshot: dict[str, Any], daemon_pid: int | None) -> bytes:
    """The exposition of `snapshot` (the daemon's `metrics` reply), with process metrics of `daemon_pid`.

    `daemon_pid` None leaves the process metrics out. ValueError if the snapshot is not one this
    version reads (see gotorch.metrics).
    """
    snap = Snapshot.from_json(snapshot)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    if daemon_pid is not None:
        ProcessCollector(pid=lambda: daemon_pid, registry=registry)
    return generate_latest(registry)


class SnapshotCollector(Collector):
    """A prometheus_client collector yielding one snapshot's numbers."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snap = snapshot

    def collect(self) -> Iterator[Metric]:
        """Every metric family of the snapshot (tasks in name order)."""
        snap = self._snap
        tasks = sorted(snap.tasks.items())
        yield from _task_families(tasks, snap.duration_bounds, snap.lateness_bounds)
        yield GaugeMetricFamily("torch_config_generation", "Configs applied since the daemon started "
                                "(1 = the one loaded at start).", value=snap.config_generation)
        yield GaugeMetricFamily("torch_config_last_reload_success", "1 if the last reload attempt succeeded "
                                "(or none was made), 0 while it failed and the previous config runs on.",
                                value=1 if snap.last_reload_success else 0)
        info = GaugeMetricFamily("torch_config_info", "The running config, by its content hash (always 1).",
                                 labels=["hash"])
        info.add_metric([snap.config_hash], 1)
        yield info
        if snap.history_rows_dropped is not None:
            yield CounterMetricFamily("torch_history_rows_dropped_total", "Run-history rows that could not be "
                                      "written (queue full, disk full, database unusable).",
                                      value=snap.history_rows_dropped)
        yield CounterMetricFamily("torch_log_lines_dropped_total", "Log lines that could not be written to the "
                                  "log file (disk full, I/O error).", value=snap.log_lines_dropped)
        yield GaugeMetricFamily("torch_up_since_timestamp_seconds", "When the daemon started (Unix time).",
                                value=snap.up_since)


def _task_families(tasks: list[tuple[str, TaskMetrics]], duration_bounds: tuple[float, ...],
                   lateness_bounds: tuple[float, ...]) -> Iterable[Metric]:
    runs = CounterMetricFamily("torch_task_runs_total", "Runs of the task that ended, by status "
                               "(ok, failed, timeout, killed, spawn_failed).", labels=["task", "status"])
    skipped = CounterMetricFamily("torch_task_skipped_total", "Fires of the task that started no run, by reason "
                                  "(max_instances, paused, reload, stop).", labels=["task", "reason"])
    missed = CounterMetricFamily("torch_task_missed_total", "Fires of the task that were missed (the daemon was "
                                 "late, suspended or the clock jumped).", labels=["task"])
    hooks = CounterMetricFamily("torch_task_hook_runs_total", "Runs of the task's alert hooks that ended, by hook "
                                "(on_failure, on_recovery) and status.", labels=["task", "hook", "status"])
    duration = HistogramMetricFamily("torch_task_duration_seconds", "How long the task's runs took.",
                                     labels=["task"])
    lateness = HistogramMetricFamily("torch_task_fire_lateness_seconds", "How long after its fire second (plus "
                                     "its jitter delay) a scheduled run started.", labels=["task"])
    running = GaugeMetricFamily("torch_task_running", "Runs of the task going now.", labels=["task"])
    failures = GaugeMetricFamily("torch_task_consecutive_failures", "Fires of the task in a row that failed for "
                                 "good (after their retries); 0 after a success.", labels=["task"])
    last_run = GaugeMetricFamily("torch_task_last_run_timestamp_seconds", "When the task's last run started "
                                 "(Unix time).", labels=["task"])
    last_success = GaugeMetricFamily("torch_task_last_success_timestamp_seconds", "When the task's last "
                                     "successful run ended (Unix time).", labels=["task"])
    next_fire = GaugeMetricFamily("torch_task_next_fire_timestamp_seconds", "The task's next fire "
                                  "(Unix time).", labels=["task"])
    duration_les = _les(duration_bounds)
    lateness_les = _les(lateness_bounds)
    for name, t in tasks:
        for status in ALWAYS_SHOWN:
            if status not in t.runs:
                runs.add_metric([name, status], 0)
        for status, n in t.runs.items():
            runs.add_metric([name, status], n)
        for reason in ALWAYS_SKIPPED:
            if reason not in t.skipped:
                skipped.add_metric([name, reason], 0)
        for reason, n in t.skipped.items():
            skipped.add_metric([name, reason], n)
        missed.add_metric([name], t.missed)
        for hook, by_status in t.hook_runs.items():
            for status, n in by_status.items():
                hooks.add_metric([name, hook, status], n)
        if t.duration is not None:
            duration.add_metric([name], _buckets(duration_les, t.duration), t.duration.sum)
        if t.fire_lateness is not None:
            lateness.add_metric([name], _buckets(lateness_les, t.fire_lateness), t.fire_lateness.sum)
        running.add_metric([name], t.running)
        failures.add_metric([name], t.consecutive_failures)
        for family, value in ((last_run, t.last_run), (last_success, t.last_success), (next_fire, t.next_fire)):
            if value is not None:
                family.add_metric([name], value)
    return (runs, skipped, missed, hooks, duration, lateness, running, failures, last_run, last_success, next_fire)


def _les(bounds: tuple[float, ...]) -> list[str]:
    # As prometheus_client writes its own histograms' `le` ("0.1", "60.0"): Python's shortest repr,
    # which is also what Go's strconv gives for these values.
    return [repr(float(b)) for b in bounds]


def _buckets(les: list[str], h: HistogramData) -> list[tuple[str, float]]:
    return [*zip(les, h.buckets, strict=True), ("+Inf", h.count)]
