"""`torch check`, `torch next`, `torch list`: exit codes, output and the JSON shapes scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "etc" / "tasks.yaml"

BERLIN = """\
version: 1
tasks:
  - name: nightly
    schedule: "0 30 2 * * *"
    timezone: Europe/Berlin
    command: /bin/true
  - name: often
    schedule: "0 0 * * * *"
    timezone: Europe/Berlin
    command: /bin/true
  - name: keep
    type: daemon
    command: [sleep, "1000"]
"""


def torch(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "gotorch", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=60)


@pytest.fixture
def berlin(tmp_path: Path) -> Path:
    p = tmp_path / "tasks.yaml"
    p.write_text(BERLIN)
    return p


def test_check_valid_sample() -> None:
    r = torch("check", str(SAMPLE))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_check_default_file_is_etc_tasks_yaml_in_cwd() -> None:
    r = torch("check")
    assert r.returncode == 0 and "etc/tasks.yaml" in r.stdout


def test_check_via_option_and_env(berlin: Path) -> None:
    assert torch("check", "-c", str(berlin)).returncode == 0
    assert torch("check", "--config", str(berlin)).returncode == 0
    r = torch("check", cwd=berlin.parent, TORCH_CONFIG=str(berlin))
    assert r.returncode == 0 and str(berlin) in r.stdout


def test_check_invalid_exit_1_errors_on_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('version: 1\ntasks:\n  - {name: a, schedule: "*/5 * * * *", command: x}\n'
                   '  - {name: b, schedule: "0 0 0 * * *", command: x, timeout: -1}\n')
    r = torch("check", str(bad))
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:3:") and '"0 */5 * * * *"' in lines[0]
    assert lines[1].startswith(f"{bad}:4:") and "task 'b': timeout:" in lines[1]


def test_check_json(tmp_path: Path, berlin: Path) -> None:
    r = torch("check", "--json", str(berlin))
    assert r.returncode == 0
    data = json.loads(r.stdout)
    assert data["valid"] is True and data["tasks"] == 3 and data["errors"] == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntasks:\n  - name: a\n    schedule: */5 * * * * *\n    command: x\n")
    r = torch("check", "--json", str(bad))
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["valid"] is False
    (err,) = data["errors"]
    assert err["line"] == 4 and "quote the schedule" in err["hint"]


def test_check_usage_error_exit_2(berlin: Path) -> None:
    assert torch("check", "--no-such-flag").returncode == 2
    assert torch("check", "-c", str(berlin), "other.yaml").returncode == 2


def test_check_warns_about_dst(berlin: Path) -> None:
    r = torch("check", str(berlin))
    assert r.returncode == 0
    assert "02:30 Europe/Berlin does not exist on" in r.stderr and "torch runs it at 03:00" in r.stderr
    assert "happens twice" in r.stderr


def test_next_json_shape_and_dst(berlin: Path) -> None:
    r = torch("next", str(berlin), "nightly", "-n", "3", "--from", "2027-03-27T00:00:00", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"task": "nightly", "fires": [
        "2027-03-27T02:30:00+01:00", "2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00"]}]


def test_next_from_with_offset_and_all_tasks(berlin: Path) -> None:
    r = torch("next", "-c", str(berlin), "-n", "2", "--from", "2027-10-30T23:30:00+00:00", "--json")
    data = {x["task"]: x["fires"] for x in json.loads(r.stdout)}
    # the repeated hour fires twice for an hourly task (real-time spacing)
    assert data["often"] == ["2027-10-31T02:00:00+02:00", "2027-10-31T02:00:00+01:00"]
    assert data["nightly"] == ["2027-10-31T02:30:00+02:00", "2027-11-01T02:30:00+01:00"]
    assert data["keep"] == []


def test_next_human_marks_shifted(berlin: Path) -> None:
    r = torch("next", str(berlin), "nightly", "-n", "2", "--from", "2027-03-27T12:00:00")
    assert r.returncode == 0
    assert "2027-03-28 03:00:00+02:00" in r.stdout and "DST" in r.stdout


def test_next_unknown_task_is_usage_error(berlin: Path) -> None:
    r = torch("next", str(berlin), "nope")
    assert r.returncode == 2 and "nope" in r.stderr


def test_list_json_and_host_ips(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text('version: 1\ntasks:\n'
                 '  - {name: db, schedule: "@daily", command: x, ips: [10.0.1.0/24, "2001:db8::/32"]}\n'
                 '  - {name: web, schedule: "@daily", command: x, ips: [10.0.2.5]}\n'
                 '  - {name: all, schedule: "@daily", command: x}\n')
    r = torch("list", str(f), "--json", "--host-ips", "10.0.1.7,2001:db8::1")
    assert r.returncode == 0, r.stderr
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert (rows["db"]["applies"], rows["db"]["matched_ip"]) == (True, "10.0.1.7")
    assert (rows["web"]["applies"], rows["web"]["matched_ip"]) == (False, None)
    assert (rows["all"]["applies"], rows["all"]["matched_ip"]) == (True, None)
    r = torch("list", str(f), "--json", TORCH_HOST_IPS="2001:db8::9")
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["db"]["matched_ip"] == "2001:db8::9" and rows["web"]["applies"] is False
    human = torch("list", str(f), "--host-ips", "10.0.2.5")
    assert "web" in human.stdout and "yes (10.0.2.5)" in human.stdout
    assert torch("list", str(f), "--host-ips", "not-an-ip").returncode == 2


def test_state_dir_and_config_accepted_everywhere(berlin: Path, tmp_path: Path) -> None:
    for cmd in ("check", "next", "list"):
        r = torch(cmd, "-c", str(berlin), "--state-dir", str(tmp_path / "s"))
        assert r.returncode == 0, (cmd, r.stderr)
    for cmd in ("stop", "status"):
        r = torch(cmd, "-c", str(berlin), "--state-dir", str(tmp_path / "s"))
        assert r.returncode in (0, 3), (cmd, r.stderr)
        assert "not running" in r.stdout


def test_version() -> None:
    r = torch("--version")
    assert r.returncode == 0 and r.stdout.startswith("torch")
