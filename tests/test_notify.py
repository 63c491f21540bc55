"""sd_notify against the real daemon: what systemd sees of `torch start --foreground` under Type=notify.

A Unix datagram socket stands in for systemd's notification socket (NOTIFY_SOCKET), once as a path
(as systemd sets it) and once in the abstract namespace (`@name`, as some container managers do).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import Torch

pytestmark = pytest.mark.integration

CONFIG = """\
version: 1
tasks:
  - name: here
    schedule: "0 0 * * * *"
    command: [/bin/true]
  - name: elsewhere
    schedule: "0 0 * * * *"
    ips: [192.0.2.1]
    command: [/bin/true]
"""

ADDED = """\
  - name: added
    schedule: "0 30 * * * *"
    command: [/bin/true]
"""


class NotifyListener:
    """A minimal sd_notify receiver: every datagram parsed into a dict of its KEY=VALUE lines."""

    def __init__(self, tmp: Path, kind: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        path = tmp / "notify.sock"
        if kind == "abstract" or len(str(path)) > 100:  # sun_path holds 108 bytes
            name = f"torch-test-notify-{os.getpid()}-{secrets.token_hex(4)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.received: list[dict[str, str]] = []

    def close(self) -> None:
        self.sock.close()

    def until(self, key: str, timeout: float = 30, status: str = "") -> list[dict[str, str]]:
        """Receive until a datagram sets `key` (and its STATUS contains `status`); return what came in."""
        got: list[dict[str, str]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} (STATUS containing {status!r}) within {timeout} s; "
                                     f"received so far: {self.received}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.received.append(msg)
            got.append(msg)
            if key in msg and status in msg.get("STATUS", ""):
                return got


def kinds(messages: list[dict[str, str]]) -> str:
    """The state changes in order, one letter each: R(EADY), L (RELOADING), S(TOPPING)."""
    out = ""
    for m in messages:
        for key, letter in (("RELOADING", "L"), ("STOPPING", "S"), ("READY", "R")):
            if m.get(key) == "1":
                out += letter
    return out


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_reloading_stopping(torch_daemon: Torch, kind: str) -> None:
    listener = NotifyListener(torch_daemon.tmp, kind)
    try:
        torch_daemon.write(CONFIG)
        proc = torch_daemon.start(NOTIFY_SOCKET=listener.address)

        # Start-up: READY=1 (with the main pid and a status line), and nothing else before it.
        first = listener.until("READY")
        assert kinds(first) == "R", first
        ready = first[-1]
        assert ready["MAINPID"] == str(proc.pid)
        assert re.fullmatch(r"generation 1, 1 of 2 tasks here, hash [0-9a-f]{12}", ready["STATUS"]), ready

        # Editing the file is enough: the daemon notices and reloads by itself, RELOADING=1 then READY=1.
        new = torch_daemon.config.with_suffix(".new")
        new.write_text(CONFIG + ADDED)
        os.replace(new, torch_daemon.config)  # as editors and `git checkout` do
        edit = listener.until("READY", status="generation 2")
        assert kinds(edit).endswith("LR"), edit
        reloading = [m for m in edit if m.get("RELOADING") == "1"][-1]
        assert reloading["STATUS"].startswith("reloading (file), generation 1,"), reloading
        assert int(reloading["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
        assert re.fullmatch(r"generation 2, 2 of 3 tasks here, hash [0-9a-f]{12}", edit[-1]["STATUS"]), edit

        # `torch reload` (the unit's ExecReload): SIGUSR2, and again RELOADING=1 then READY=1.
        time.sleep(1.0)  # let the watcher's debounce window pass, so this reload is its own
        r = torch_daemon.run("reload")
        assert r.returncode == 0, r.stderr
        assert "no changes (generation 2" in r.stdout
        listener.until("RELOADING", status="reloading (SIGUSR2), generation 2")
        usr2 = listener.until("READY")
        assert kinds(usr2) == "R" and usr2[-1]["STATUS"].startswith("generation 2, 2 of 3 tasks here"), usr2

        # SIGTERM (systemctl stop): STOPPING=1, then the process exits 0.
        assert torch_daemon.stop(signal.SIGTERM) == 0
        stopping = listener.until("STOPPING", timeout=10)
        assert stopping[-1]["STATUS"].startswith("stopping, generation 2"), stopping

        # The whole conversation: READY, one or more RELOADING/READY pairs, STOPPING, and nothing after.
        listener.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.sock.recv(4096)
        assert re.fullmatch(r"R(LR)+S", kinds(listener.received)), listener.received
    finally:
        listener.close()


def test_no_notify_socket_is_fine(torch_daemon: Torch) -> None:
    """Without NOTIFY_SOCKET (or with one nobody listens on) the daemon runs and stops as usual."""
    torch_daemon.write(CONFIG)
    gone = torch_daemon.tmp / "nobody-listens.sock"
    torch_daemon.start(NOTIFY_SOCKET=str(gone))
    torch_daemon.wait_event("watch.start")  # the watcher starts after daemon.start; edit only once it runs
    new = torch_daemon.config.with_suffix(".new")
    new.write_text(CONFIG + ADDED)
    os.replace(new, torch_daemon.config)
    torch_daemon.wait_event("reload.applied", generation=2)
    assert torch_daemon.stop() == 0
