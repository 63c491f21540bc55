"""Metrics of the real daemon, scraped from its real `/metrics` (torch start --http 127.0.0.1:0).

Each scrape is an HTTP GET of the web process's /metrics, read back with prometheus_client's text
parser. The web process asks the daemon at most once a second, so the tests scrape until the
counters they wait for show.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gotorch import control
from tests.conftest import Torch, wait_until

pytestmark = pytest.mark.integration

NEVER = '"0 0 0 1 1 *"'  # once a year: these tasks run only when asked
TASKS = f"""\
version: 1
tasks:
  - {{name: good, schedule: {NEVER}, command: "echo fine"}}
  - {{name: bad, schedule: {NEVER}, command: "exit 3", on_failure: "true"}}
  - {{name: hog, schedule: "* * * * * *", command: "sleep 60", max_instances: 1}}
  - {{name: ticking, schedule: "* * * * * *", command: "true"}}
  - {{name: doomed, schedule: {NEVER}, command: "true"}}
  - {{name: elsewhere, schedule: {NEVER}, command: "true", ips: [10.99.0.1]}}
"""
# The reload: doomed removed, good changed, fresh added, the rest as they were.
RELOADED = f"""\
version: 1
tasks:
  - {{name: good, schedule: {NEVER}, command: "echo still fine"}}
  - {{name: bad, schedule: {NEVER}, command: "exit 3", on_failure: "true"}}
  - {{name: hog, schedule: "* * * * * *", command: "sleep 60", max_instances: 1}}
  - {{name: ticking, schedule: "* * * * * *", command: "true"}}
  - {{name: fresh, schedule: {NEVER}, command: "true"}}
  - {{name: elsewhere, schedule: {NEVER}, command: "true", ips: [10.99.0.1]}}
"""

Labels = tuple[tuple[str, str], ...]


class Scrape:
    """One `metrics` answer of the daemon and its text, with the samples by name and labels."""

    def __init__(self, daemon: Torch) -> None:
        url = str(daemon.wait_event("web.listen")[-1]["url"]).rstrip("/")
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as reply:
            assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
            self.text = reply.read().decode()
        self.samples: dict[str, dict[Labels, float]] = {}
        for family in text_string_to_metric_families(self.text):
            for s in family.samples:
                self.samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value

    def get(self, name: str, **labels: str) -> float | None:
        """The sample `name{labels}`, or None if the text has none."""
        return self.samples.get(name, {}).get(tuple(sorted(labels.items())))

    def tasks(self, name: str = "torch_task_running") -> set[str]:
        """The tasks that have a `name` series."""
        return {dict(labels)["task"] for labels in self.samples.get(name, {})}


def scrape_until(daemon: Torch, predicate: Any, timeout: float = 20, what: str = "") -> Scrape:
    """Scrape until `predicate(scrape)` holds; that scrape."""
    box: list[Scrape] = []

    def ok() -> bool:
        box[:] = [Scrape(daemon)]
        return bool(predicate(box[0]))

    wait_until(ok, timeout, interval=0.2, what=lambda: f"{what}; last text:\n{box[0].text if box else ''}")
    return box[0]


@pytest.fixture
def daemon(torch_daemon: Torch) -> Torch:
    torch_daemon.write(TASKS)
    torch_daemon.start("--http", "127.0.0.1:0")
    return torch_daemon


def test_ok_failed_and_skipped_runs_show_in_the_daemons_metrics(daemon: Torch) -> None:
    for task, code in (("good", 0), ("good", 0), ("bad", 3)):
        r = daemon.run("run", task, "--wait")
        assert r.returncode == code, r.stderr
    s = scrape_until(daemon, lambda s: (s.get("torch_task_skipped_total", task="hog", reason="max_instances") or 0) >= 2
                     and (s.get("torch_task_runs_total", task="ticking", status="ok") or 0) >= 2
                     and s.get("torch_task_hook_runs_total", task="bad", hook="on_failure", status="ok") == 1,
                     what="hog skipped twice, ticking run twice, bad's hook done")
    assert s.get("torch_task_runs_total", task="good", status="ok") == 2
    assert s.get("torch_task_runs_total", task="good", status="failed") == 0
    assert s.get("torch_task_runs_total", task="bad", status="failed") == 1
    assert s.get("torch_task_consecutive_failures", task="bad") == 1
    assert s.get("torch_task_consecutive_failures", task="good") == 0
    assert s.get("torch_task_running", task="hog") == 1
    assert s.get("torch_task_duration_seconds_count", task="good") == 2
    # Manual runs are no fires: the ticking task has lateness, good has none.
    assert (s.get("torch_task_fire_lateness_seconds_count", task="ticking") or 0) >= 2
    assert s.get("torch_task_fire_lateness_seconds_count", task="good") is None
    lateness_sum = s.get("torch_task_fire_lateness_seconds_sum", task="ticking") or 0
    assert 0 < lateness_sum / (s.get("torch_task_fire_lateness_seconds_count", task="ticking") or 1) < 1.0
    now = time.time()
    next_fire = s.get("torch_task_next_fire_timestamp_seconds", task="ticking")
    assert next_fire is not None and now - 1 <= next_fire <= now + 2 and next_fire == int(next_fire)
    assert now - 60 < (s.get("torch_task_last_success_timestamp_seconds", task="good") or 0) <= now
    assert s.get("torch_task_last_success_timestamp_seconds", task="bad") is None
    assert now - 60 < (s.get("torch_task_last_run_timestamp_seconds", task="bad") or 0) <= now
    assert "bad:on_failure" not in s.tasks() and "elsewhere" not in s.tasks()
    assert s.tasks() == {"good", "bad", "hog", "ticking", "doomed"}

    status = json.loads(daemon.run("status", "--json").stdout)
    assert s.get("torch_config_generation") == 1 and s.get("torch_config_last_reload_success") == 1
    assert s.get("torch_config_info", hash=status["hash"]) == 1
    assert s.get("torch_history_rows_dropped_total") == 0
    assert abs((s.get("torch_up_since_timestamp_seconds") or 0) - (now - status["uptime_s"])) < 5
    # Process metrics are the daemon's: its start time, not the test's.
    with open(f"/proc/{daemon.daemon_pid()}/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    started = btime + start_ticks / os.sysconf("SC_CLK_TCK")
    assert s.get("process_start_time_seconds") == pytest.approx(started, abs=0.05)


def test_counters_survive_a_reload_and_a_removed_tasks_series_disappear(daemon: Torch) -> None:
    for task in ("good", "doomed", "bad"):
        daemon.run("run", task, "--wait")
    before = scrape_until(daemon, lambda s: s.get("torch_task_runs_total", task="doomed", status="ok") == 1
                          and s.get("torch_task_runs_total", task="bad", status="failed") == 1, what="three runs")
    hash_before = json.loads(daemon.run("status", "--json").stdout)["hash"]
    ticking_before = before.get("torch_task_runs_total", task="ticking", status="ok") or 0

    daemon.write(RELOADED)
    r = daemon.run("reload")
    assert r.returncode == 0, r.stderr
    after = scrape_until(daemon, lambda s: s.get("torch_config_generation") == 2, what="generation 2")
    assert "doomed" not in after.tasks() and 'task="doomed"' not in after.text
    assert "fresh" in after.tasks() and after.get("torch_task_runs_total", task="fresh", status="ok") == 0
    # good was changed, the others kept: every counter goes on from where it was.
    assert after.get("torch_task_runs_total", task="good", status="ok") == 1
    assert after.get("torch_task_duration_seconds_count", task="good") == 1
    assert after.get("torch_task_runs_total", task="bad", status="failed") == 1
    assert after.get("torch_task_consecutive_failures", task="bad") == 1
    assert (after.get("torch_task_runs_total", task="ticking", status="ok") or 0) >= ticking_before
    hash_after = json.loads(daemon.run("status", "--json").stdout)["hash"]
    assert hash_after != hash_before and after.get("torch_config_info", hash=hash_after) == 1
    assert after.get("torch_config_info", hash=hash_before) is None
    assert after.get("torch_config_last_reload_success") == 1

    # A file that does not validate: the old config runs on, and the metrics say the reload failed.
    daemon.config.write_text("version: 1\ntasks:\n  - {name: broken\n")
    pid = daemon.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGUSR2)
    failed = scrape_until(daemon, lambda s: s.get("torch_config_last_reload_success") == 0, what="reload failed")
    assert failed.get("torch_config_generation") == 2 and failed.get("torch_config_info", hash=hash_after) == 1
    assert failed.get("torch_task_runs_total", task="good", status="ok") == 1

    daemon.write(RELOADED.replace("still fine", "fine again"))
    assert daemon.run("reload").returncode == 0
    fixed = scrape_until(daemon, lambda s: s.get("torch_config_generation") == 3, what="generation 3")
    assert fixed.get("torch_config_last_reload_success") == 1
    assert fixed.get("torch_task_runs_total", task="good", status="ok") == 1


def test_a_metrics_request_is_answered_alongside_the_other_commands(daemon: Torch) -> None:
    reply = control.request(daemon.state / "torch.sock", {"cmd": "metrics"})
    assert reply["ok"] is True and reply["metrics"]["schema"] == 1
    assert set(reply["metrics"]["tasks"]) == {"good", "bad", "hog", "ticking", "doomed"}
    assert control.request(daemon.state / "torch.sock", {"cmd": "status"})["ok"] is True
