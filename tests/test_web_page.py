"""The status page's pure parts: the HTML (escaped), the per-task figures, times, the --http address."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from gotorch.history.query import HistoryRow, RunOutput
from gotorch.history.summary import Result, Running
from gotorch.web import Listen, parse_listen
from gotorch.web.page import Clock, StatusPage, dst_mark, render_run, render_status, stats, visible_text

NOW = datetime(2027, 3, 10, 12, 0, 0, tzinfo=UTC).timestamp()
EVIL = "<script>alert(1)</script>"


def result(status: str, *, kind: str = "run", duration: float | None = 1.0, run_id: str = "r",
           exit_code: int | None = None) -> Result:
    return Result(run_id, kind, status, exit_code, None, None, NOW - 60, duration)


def status_json(**task: object) -> dict[str, object]:
    t = {"name": "backup", "type": "cron", "schedule": "0 0 3 * * *", "timezone": "UTC", "running": 0,
         "next_fire": "2027-03-11T03:00:00Z", "paused": None, **task}
    return {"pid": 42, "uptime_s": 3600.0, "config": "/etc/torch/tasks.yaml", "generation": 3, "hash": "abc123",
            "last_reload": {"ok": True, "at": "2027-03-10T11:00:00Z", "trigger": "file", "errors": []},
            "tasks": [t], "paused": []}


def page(st: dict[str, object] | None, recent: dict[str, list[Result]] | None = None,
         running: dict[str, list[Running]] | None = None, error: str | None = None) -> str:
    return render_status(StatusPage("web1", Clock(ZoneInfo("UTC"), NOW), st, error, recent or {}, running or {}))


def test_stats_count_runs_only_and_take_the_median_duration() -> None:
    results = [result("ok", duration=1), result("failed", duration=3, exit_code=1), result("ok", duration=2),
               result("skipped", kind="skipped", duration=None), result("missed", kind="missed", duration=None),
               result("ok", duration=10)]
    s = stats(results)
    assert (s.runs, s.ok, s.rate, s.p50, s.max) == (4, 3, 0.75, 2.5, 10)
    assert stats([result("skipped", kind="skipped")]).rate is None


def test_everything_from_tasks_and_the_daemon_is_escaped_on_the_status_page() -> None:
    st = status_json(name=EVIL, schedule="0 0 3 * * *", paused={"until": None, "reason": EVIL, "by": EVIL})
    st["config"] = EVIL
    st["last_reload"] = {"ok": False, "at": "2027-03-10T11:00:00Z", "trigger": EVIL, "errors": [{"message": EVIL}]}
    st["paused"] = [{"task": EVIL, "until": None, "reason": EVIL, "by": EVIL}]
    html = page(st, {EVIL: [Result('"><script>x</script>', "run", "failed", 1, None, EVIL, NOW - 5, 0.1)]},
                error=EVIL)
    assert "<script" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5
    assert 'href="/runs/%22%3E%3Cscript%3Ex%3C%2Fscript%3E"' in html  # ids are quoted in links


def test_a_task_row_shows_its_cells_oldest_first_with_tooltips_and_figures() -> None:
    recent = [result("failed", run_id="new", exit_code=3, duration=0.25), result("ok", run_id="old", duration=2)]
    html = page(status_json(running=1), {"backup": recent},
                {"backup": [Running("now", "backup", 4242, NOW - 75)]})
    cells = re.findall(r'<a class="c (\w+)" href="/runs/(\w+)" title="([^"]*)"', html)
    assert cells == [("ok", "old", "ok · 11:59:00 · 2.00s"), ("failed", "new", "failed (exit 3) · 11:59:00 · 250ms")]
    assert html.count('class="c none"') == 18  # room for 20
    assert "every day at 03:00" in html and "0 0 3 * * *" in html
    assert "pid 4242" in html and "1m15s" in html and 'href="/runs/now"' in html
    assert "50%" in html and "1.12s / 2.00s" in html  # p50 of 0.25 s and 2 s, max
    assert "Mar 11 03:00:00" in html and "in 15h" in html


def test_paused_tasks_failed_reloads_and_a_silent_daemon_are_shown() -> None:
    st = status_json(paused={"until": "2027-03-10T13:00:00Z", "reason": "disk full", "by": "root (uid 0)"})
    st["last_reload"] = {"ok": False, "at": "2027-03-10T11:00:00Z", "trigger": "file",
                         "errors": [{"message": "tasks.yaml:3: bad schedule"}]}
    html = page(st)
    assert '<tr class="task paused"' in html and "until 13:00:00" in html
    assert "The last reload failed" in html and "tasks.yaml:3: bad schedule" in html
    silent = page(None, error="no answer on /run/torch/torch.sock")
    assert "not answering" in silent and "no answer on /run/torch/torch.sock" in silent


def test_a_fire_shifted_by_dst_is_marked() -> None:
    # 02:30 does not exist in Berlin on 2027-03-28: the fire runs at 03:00 local (01:00 UTC).
    shifted = int(datetime(2027, 3, 28, 1, 0, tzinfo=UTC).timestamp())
    assert dst_mark("0 30 2 * * *", "Europe/Berlin", shifted) == "gap"
    assert dst_mark("0 30 2 * * *", "Europe/Berlin", shifted + 86400 - 1800) is None
    html = page(status_json(schedule="0 30 2 * * *", timezone="Europe/Berlin", next_fire="2027-03-28T01:00:00Z"))
    assert "DST shifted" in html and "Europe/Berlin" in html


def test_a_run_page_shows_head_elision_and_tail_escaped() -> None:
    out = RunOutput(b"first <b>\x1b[31m\n", b"last & \xff\n", 1234, 2000, 50)
    row = HistoryRow("r1", "backup", "run", "schedule", 1, NOW - 10, NOW - 9.9, NOW - 8, "failed", 2, None, 1.9,
                     100.0, None, out)
    html = render_run(row, "r1", Clock(ZoneInfo("UTC"), NOW))
    assert "first &lt;b&gt;\\x1b[31m" in html and "last &amp; \ufffd" in html
    assert "1,234 bytes elided" in html and "50 more bytes dropped" in html
    assert html.index("first &lt;") < html.index("bytes elided") < html.index("last &amp;")
    assert "failed (exit 2)" in html
    assert "No run" in render_run(None, EVIL, Clock(ZoneInfo("UTC"), NOW)) and "<script" not in render_run(
        None, EVIL, Clock(ZoneInfo("UTC"), NOW))


def test_output_control_bytes_are_made_visible() -> None:
    assert visible_text(b"a\tb\nc\x07\x7f") == "a\tb\nc\\x07\\x7f"


def test_clock_shows_today_another_day_and_another_year() -> None:
    clock = Clock(ZoneInfo("Europe/Berlin"), NOW)
    assert clock.short(NOW) == "13:00:00"
    assert clock.short(NOW - 86400) == "Mar 09 13:00:00"
    assert clock.short(NOW - 365 * 86400) == "2026-03-10 13:00:00"
    summer = datetime(2027, 7, 1, 10, 0, tzinfo=UTC).timestamp()
    assert clock.short(summer) == "Jul 01 12:00:00"  # CEST, +2
    assert clock.relative(NOW + 90) == "in 1m30s" and clock.relative(NOW - 5) == "5s ago"


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:9464", Listen("127.0.0.1", 9464)),
    ("localhost:80", Listen("127.0.0.1", 80)),
    ("[::1]:9464", Listen("::1", 9464)),
    (":9464", Listen("0.0.0.0", 9464)),
    ("10.0.0.5:0", Listen("10.0.0.5", 0)),
])
def test_http_addresses(text: str, want: Listen) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["9464", "host.example:9464", "127.0.0.1:65536", "127.0.0.1:x", "::1:9464",
                                  "[::1]9464"])
def test_http_addresses_that_are_not(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_only_loopback_addresses_count_as_private() -> None:
    assert Listen("127.0.0.1", 1).loopback and Listen("::1", 1).loopback
    assert not Listen("0.0.0.0", 1).loopback and not Listen("10.0.0.1", 1).loopback
    assert str(Listen("::1", 9464)) == "[::1]:9464"
