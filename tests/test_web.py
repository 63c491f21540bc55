"""`torch start --http`: the web process, its routes and its supervision, against the real daemon over real HTTP.

The daemon listens on 127.0.0.1 port 0 (a free port the kernel picks) and says which in its
`web.listen` event. The browser test drives Debian's `chromium` headless and is skipped, saying why,
where it is not installed (CI installs it: .ci/run).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Torch, wait_until

pytestmark = pytest.mark.integration

NEVER = '"0 0 0 1 1 *"'  # once a year: these tasks run only when asked
XSS = "<script>document.title='pwned'</script>"
TASKS = f"""\
version: 1
tasks:
  - {{name: fine, schedule: {NEVER}, command: "echo all good"}}
  - {{name: broken, schedule: "0 30 9 * * MON-FRI", command: "echo oops >&2; exit 3"}}
  - {{name: shouty, schedule: {NEVER}, command: "echo \\"{XSS}\\"; echo '<b>bold</b> & more'"}}
  - {{name: held, schedule: "0 */5 * * * *", command: "true"}}
"""
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def web(torch_daemon: Torch) -> Torch:
    """A daemon (foreground) serving HTTP on a free loopback port; `web_url(torch)` gives its address."""
    torch_daemon.write(TASKS)
    torch_daemon.start("--http", "127.0.0.1:0")
    torch_daemon.wait_event("web.start")
    return torch_daemon


def web_url(t: Torch) -> str:
    """The URL the daemon said it listens on (its last web.listen event)."""
    return str(t.wait_event("web.listen")[-1]["url"]).rstrip("/")


def get(url: str, method: str = "GET", body: bytes | None = None,
        timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request with http.client (no redirects, no proxies): status, headers (lower-case names), body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path or "/", body=body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def web_pids(t: Torch) -> list[int]:
    """Live web processes of this daemon (they carry its TORCH_STATE_DIR, like its runs)."""
    out = []
    for pid in t.run_pids():
        with contextlib.suppress(OSError):
            if b"gotorch.web" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def run_and_wait(t: Torch, task: str) -> str:
    """`torch run TASK --wait`; the run id once its row is in the history (what the page reads)."""
    r = t.run("run", task, "--wait")
    run_id = r.stdout.strip()
    assert run_id, r.stderr
    wait_until(lambda: _row_status(t, run_id) not in (None, "running"), 10, what=f"history row of {run_id}")
    return run_id


def _row_status(t: Torch, run_id: str) -> str | None:
    import sqlite3

    db_path = t.state / "history.db"
    if not db_path.exists():
        return None
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    finally:
        db.close()
    return None if row is None else str(row[0])


def _normalised(status: dict[str, Any]) -> dict[str, Any]:
    """The status without what changes from one second to the next (uptime, how long ago)."""
    st = json.loads(json.dumps(status))
    st.pop("uptime_s", None)
    for t in st["tasks"]:
        if t.get("last_result"):
            t["last_result"].pop("ago_s", None)
    return st  # type: ignore[no-any-return]


def test_routes_answer_with_their_content_types(web: Torch) -> None:
    base = web_url(web)
    run_id = run_and_wait(web, "fine")
    for path, code, ctype in (("/", 200, "text/html; charset=utf-8"), ("/api/status", 200, "application/json"),
                              (f"/runs/{run_id}", 200, "text/html; charset=utf-8"),
                              ("/runs/no-such-run", 404, "text/html; charset=utf-8"),
                              ("/nothing/here", 404, "text/plain; charset=utf-8")):
        status, headers, body = get(base + path)
        assert (status, headers["content-type"]) == (code, ctype), (path, body[:300])
        assert int(headers["content-length"]) == len(body)
        assert headers["cache-control"] == "no-store"
        if ctype.startswith("text/html"):
            assert "script-src" not in headers["content-security-policy"]  # default-src 'none': no script at all
            assert body.startswith(b"<!doctype html>")
    _, _, body = get(f"{base}/runs/{run_id}")
    assert b"all good" in body and b"ok" in body


def test_metrics_route_serves_the_prometheus_text(web: Torch) -> None:
    pytest.importorskip("gotorch.metrics_text", reason="gotorch.metrics_text (the exposition) is not available")
    base = web_url(web)
    run_and_wait(web, "fine")
    run_and_wait(web, "broken")

    def scraped() -> str | None:
        status, headers, body = get(base + "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version="), body[:300]
        text = body.decode()
        return text if re.search(r'torch_task_runs_total\{[^}]*status="failed"[^}]*task="broken"[^}]*\} 1', text) \
            else None

    text = wait_until(scraped, 10, what="the failed run counted in /metrics")
    assert "# TYPE torch_task_runs_total counter" in text


def test_api_status_is_what_torch_status_json_prints(web: Torch) -> None:
    base = web_url(web)
    run_and_wait(web, "fine")
    run_and_wait(web, "broken")
    assert web.run("pause", "held", "--for", "1h", "--reason", "disk <full>").returncode == 0

    def same() -> tuple[dict[str, Any], dict[str, Any]] | None:
        status, headers, body = get(base + "/api/status")
        assert status == 200 and headers["content-type"] == "application/json"
        cli = web.run("status", "--json")
        assert cli.returncode == 0, cli.stderr
        api, want = _normalised(json.loads(body)), _normalised(json.loads(cli.stdout))
        return (api, want) if api == want else None

    api, _ = wait_until(same, 10, what="/api/status equal to `torch status --json`")
    by_name = {t["name"]: t for t in api["tasks"]}
    assert by_name["broken"]["last_result"]["status"] == "failed" and by_name["broken"]["failures_24h"] == 1
    assert by_name["held"]["paused"]["reason"] == "disk <full>"
    assert by_name["broken"]["timezone"]  # the page needs it for the DST mark


def test_head_is_get_without_a_body_and_other_methods_are_refused(web: Torch) -> None:
    base = web_url(web)
    for path in ("/", "/api/status"):
        g_status, g_headers, _ = get(base + path)
        h_status, h_headers, h_body = get(base + path, "HEAD")
        assert (h_status, h_body) == (g_status, b"")
        assert h_headers["content-type"] == g_headers["content-type"]
        assert int(h_headers["content-length"]) > 0
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, body = get(base + "/", method, body=b'{"cmd": "reload"}')
        assert status == 405 and headers["allow"] == "GET, HEAD", (method, body)
    assert not web.events("reload.applied") and not web.events("reload.unchanged")


def test_clients_that_connect_and_send_nothing_do_not_block_other_requests(web: Torch) -> None:
    base = web_url(web)
    parts = urlsplit(base)
    get(base + "/")  # the page is rendered once: what follows measures the server, not the first fetch
    silent = []
    try:
        for _ in range(40):  # five times as many as there are workers
            silent.append(socket.create_connection((parts.hostname or "", parts.port or 0), timeout=5))
        slow = socket.create_connection((parts.hostname or "", parts.port or 0), timeout=5)
        slow.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n")  # a request that never ends, holding one worker
        silent.append(slow)
        for path in ("/", "/api/status", "/", "/api/status"):
            t0 = time.monotonic()
            status, _, _ = get(base + path, timeout=5)
            assert status == 200
            assert time.monotonic() - t0 < 2.0, f"{path} took {time.monotonic() - t0:.2f} s behind silent clients"
    finally:
        for s in silent:
            s.close()


def test_the_web_process_is_restarted_when_killed_and_gone_after_torch_stop(torch_daemon: Torch) -> None:
    t = torch_daemon
    t.write(TASKS)
    r = t.start_bg("--http", "127.0.0.1:0")
    assert r.returncode == 0, r.stderr
    base = web_url(t)
    t.wait_event("web.start")
    assert get(base + "/api/status")[0] == 200
    # One web process (on a starved machine the first may have needed a restart already: wait
    # until a single one serves, and take that one).
    (first,) = wait_until(lambda: (lambda pids: pids if len(pids) == 1 else None)(web_pids(t)), 10,
                          what=lambda: f"a single web process: {web_pids(t)}; {t.events('web.exit')}")
    assert first == t.events("web.start")[-1]["pid"]
    os.kill(first, signal.SIGKILL)
    exit_ev = t.wait_event("web.exit", pid=first)[0]
    assert exit_ev["signal"] == "SIGKILL" and exit_ev["restart_in_s"] == 1.0 and exit_ev["level"] == "warning"
    second = wait_until(lambda: (lambda evs: evs[-1]["pid"] if evs[-1]["pid"] != first else None)(
        t.events("web.start")), 20, what="a new web process")
    assert second != first
    assert wait_until(lambda: get(base + "/api/status")[0] == 200, 10, what="served again after the restart")
    assert web_pids(t) == [second]
    assert t.run("stop").returncode == 0
    assert t.find("web.exit", pid=second)["restart_in_s"] is None
    wait_until(lambda: not web_pids(t), 5, what="no web process left after torch stop")
    with pytest.raises(OSError):
        get(base + "/", timeout=2)


def test_the_web_process_dies_with_a_killed_daemon(web: Torch) -> None:
    pid = web.wait_event("web.start")[0]["pid"]
    assert web.proc is not None
    web.proc.kill()
    web.proc.wait(timeout=10)
    wait_until(lambda: not web_pids(web), 5, what=f"web process {pid} gone with its daemon (PR_SET_PDEATHSIG)")


def test_a_busy_address_is_an_event_and_the_daemon_serves_on(torch_daemon: Torch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        torch_daemon.write(TASKS)
        torch_daemon.start("--http", f"127.0.0.1:{port}")
        err = torch_daemon.wait_event("web.error")[0]
        assert "cannot listen on 127.0.0.1" in err["error"] and err["restart_in_s"] == 1.0
        assert torch_daemon.run("status").returncode == 0  # the daemon itself is fine
    # Freed: the next try (after the backoff) listens and serves.
    ev = torch_daemon.wait_event("web.listen", timeout=10)[0]
    assert ev["address"] == f"127.0.0.1:{port}"
    assert wait_until(lambda: get(ev["url"].rstrip("/") + "/api/status")[0] == 200, 10, what="served")


def test_a_non_loopback_address_is_logged_as_a_warning(torch_daemon: Torch) -> None:
    torch_daemon.write(TASKS)
    torch_daemon.start("--http", "0.0.0.0:0")
    ev = torch_daemon.wait_event("web.exposed")[0]
    assert ev["level"] == "warning" and "reverse proxy" in ev["hint"]


def test_an_address_that_is_not_one_is_a_usage_error(torch_daemon: Torch) -> None:
    torch_daemon.write(TASKS)
    for bad in ("9464", "example.com:9464", "127.0.0.1:99999", "::1:9464"):
        r = torch_daemon.run("start", "-c", str(torch_daemon.config), "--http", bad)
        assert r.returncode == 2 and "--http" in r.stderr, (bad, r.stderr)
    r = torch_daemon.run("start", "-c", str(torch_daemon.config), TORCH_HTTP="nonsense")
    assert r.returncode == 2 and "TORCH_HTTP" in r.stderr


# --- the page in a real browser -----------------------------------------------------------------------------


def _chromium(url: str, tmp: Path, shot: str, size: str = "1280,900") -> str:
    """Load `url` in headless Chromium: save a screenshot to tmp/shot and return the DOM after it ran."""
    profile = tmp / "chromium-profile"  # one per test: parallel tests must not share a profile lock
    r = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                        f"--window-size={size}", f"--screenshot={tmp / shot}", "--dump-dom", url],
                       capture_output=True, text=True, timeout=90, env=dict(os.environ, HOME=str(tmp)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp / shot).stat().st_size > 1000, "no screenshot"
    return r.stdout


@pytest.fixture
def chromium() -> Iterator[None]:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("headless Chromium is not installed (/usr/bin/chromium; Debian: apt-get install chromium); "
                    "CI installs it")
    yield


def test_the_page_in_chromium_shows_every_task_a_failed_run_and_escaped_output(web: Torch, tmp_path: Path,
                                                                               chromium: None) -> None:
    base = web_url(web)
    run_and_wait(web, "fine")
    failed = run_and_wait(web, "broken")
    shouty = run_and_wait(web, "shouty")
    assert web.run("pause", "held", "--reason", "maintenance").returncode == 0
    # The page shows what the feed fetched last: wait until it includes the runs above.
    wait_until(lambda: shouty.encode() in get(base + "/")[2] and b"paused" in get(base + "/")[2], 10,
               what="the page showing the last run")

    dom = _chromium(base + "/", tmp_path, "status-page.png")
    for name in ("fine", "broken", "shouty", "held"):
        assert f'data-task="{name}"' in dom, f"task {name} not on the page"
    cell = re.search(rf'<a class="c failed" href="/runs/{re.escape(failed)}" title="([^"]*)"', dom)
    assert cell is not None, "no failed cell linking to the failed run"
    assert cell.group(1).startswith("failed (exit 3)")
    assert re.search(r'data-task="held".*?pill paused', dom, re.S), "the paused task is not marked"
    assert "every Monday" not in dom and "on weekdays at 09:30" in dom  # the schedule in words
    assert "<title>torch" in dom

    _chromium(base + "/", tmp_path, "status-page-phone.png", size="390,844")

    raw = get(f"{base}/runs/{shouty}")[2].decode()
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in raw and XSS not in raw
    run_dom = _chromium(f"{base}/runs/{shouty}", tmp_path, "run-page.png")
    assert "pwned" not in re.search(r"<title>(.*?)</title>", run_dom, re.S).group(1)  # type: ignore[union-attr]
    assert "<script" not in run_dom, "the output became a script element"
    pre = re.search(r'<pre class="out">(.*?)</pre>', run_dom, re.S)
    assert pre is not None and "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in pre.group(1)
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in pre.group(1)  # shown as text, not markup


def test_the_web_process_imports_nothing_from_the_daemons_working_directory(torch_daemon: Torch) -> None:
    # A foreground daemon started (with the installed `torch` script, as an admin would) from a
    # directory someone else can write: a module planted there must not be imported by the web
    # process, which runs as the daemon's user (root in production).
    import sys

    cwd = torch_daemon.tmp / "shared"
    cwd.mkdir()
    marker = torch_daemon.tmp / "imported"
    for module in ("argparse", "selectors", "gotorch"):
        (cwd / f"{module}.py").write_text(f"open({str(marker)!r}, 'a').write('{module}\\n')\n")
    torch_daemon.write("""\
    version: 1
    tasks:
      - {name: tick, schedule: "* * * * * *", command: "true"}
    """)
    script = Path(sys.executable).parent / "torch"
    err = open(torch_daemon.stderr_path, "ab")  # noqa: SIM115 - the child owns it
    torch_daemon.proc = subprocess.Popen([str(script), "start", "--foreground", "-c", str(torch_daemon.config),
                                          "--http", "127.0.0.1:0"], stdout=err, stderr=err,
                                         stdin=subprocess.DEVNULL, env=torch_daemon.env(), cwd=cwd)
    err.close()
    status, _, body = get(f"{web_url(torch_daemon)}/api/status", timeout=30)
    assert status == 200 and json.loads(body)["running"] is True
    assert not marker.exists(), marker.read_text()
