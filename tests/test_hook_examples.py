"""The alert hook examples in packaging/hooks, run as torch runs them, against local receivers."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

HOOKS = Path(__file__).resolve().parent.parent / "packaging" / "hooks"


def _env(tmp_path: Path, status: str = "failed") -> dict[str, str]:
    out = tmp_path / "output"
    out.write_bytes(b"line one\n[... 10 bytes elided ...]\nthe last line\n")
    return dict(os.environ, TORCH_TASK="backup", TORCH_RUN_ID="ab12-3", TORCH_STATUS=status, TORCH_EXIT_CODE="2",
                TORCH_SIGNAL="", TORCH_ATTEMPT="1", TORCH_SCHEDULED_AT="2027-01-01T00:00:00Z",
                TORCH_STARTED_AT="2027-01-01T00:00:00Z", TORCH_DURATION_S="1.500", TORCH_CONSECUTIVE_FAILURES="2",
                TORCH_HOST="web1", TORCH_OUTPUT_FILE=str(out))


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Receiver.got.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.got = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
def test_webhook_posts_the_status_and_the_outputs_tail_as_json(tmp_path: Path, receiver: str) -> None:
    r = subprocess.run([HOOKS / "webhook.sh", f"{receiver}/hook"], env=_env(tmp_path), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    ((path, body),) = _Receiver.got
    doc = json.loads(body)
    assert path == "/hook" and doc["task"] == "backup" and doc["status"] == "failed" and doc["host"] == "web1"
    assert doc["exit_code"] == "2" and doc["output_tail"].endswith("the last line\n")
    assert doc["text"] == "torch: backup on web1: failed"


@needs_curl
@pytest.mark.parametrize("status, path", [("failed", "/uuid/fail"), ("overdue", "/uuid/fail"), ("ok", "/uuid")])
def test_healthchecks_pings_fail_on_failure_and_the_url_on_recovery(tmp_path: Path, receiver: str, status: str,
                                                                    path: str) -> None:
    r = subprocess.run([HOOKS / "healthchecks.sh", f"{receiver}/uuid"], env=_env(tmp_path, status),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    ((got_path, body),) = _Receiver.got
    assert got_path == path and body.endswith(b"the last line\n")


def test_mail_sends_one_message_with_the_status_and_output(tmp_path: Path) -> None:
    sendmail = tmp_path / "sendmail"
    sendmail.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\ncat > {tmp_path}/message\n")
    sendmail.chmod(0o755)
    r = subprocess.run([HOOKS / "mail.sh", "ops@example.com"], env=dict(_env(tmp_path), SENDMAIL=str(sendmail)),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    message = (tmp_path / "message").read_text()
    assert (tmp_path / "args").read_text().strip() == "-t"
    assert message.startswith("To: ops@example.com\nSubject: [torch] backup on web1: failed\n\n")
    assert "run ab12-3 (attempt 1)" in message and "failures in a row: 2" in message
    assert message.endswith("the last line\n")
