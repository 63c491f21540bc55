"""The Debian package, end to end on this machine: build it, install it, use it, purge it.

`packaging/deb/build.sh` builds the .deb (torch and its dependencies from the package registry into
/opt/torch); `dpkg -i` installs it system-wide; then `/usr/bin/torch --version`, `torch check` of the
installed sample, `systemd-analyze verify` of the installed units, a background daemon on the
package's own paths; finally `dpkg --purge`, after which nothing the package installed or created
may be left. Needs root and dpkg; the purge happens whatever fails before it.

Installing is system-wide, so the test takes a machine-wide lock (another test run on this machine
waits for it) and refuses to touch a torch package that was installed before it started.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import shutil
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "packaging" / "deb" / "build.sh"
WHEELHOUSE = ROOT / ".venv" / "wheelhouse"
PACKAGE = "torch"
LOCK = Path("/run/lock/torch-packaging-test.lock")
UNITS = ["/lib/systemd/system/torch.service", "/lib/systemd/system/torch-forking.service"]
# What the package creates besides its files (maintainer scripts, the daemon, systemd enablement).
CREATED = [
    "/opt/torch", "/etc/torch", "/var/lib/torch", "/var/log/torch", "/run/torch", "/usr/bin/torch",
    "/etc/logrotate.d/torch", "/usr/share/doc/torch", "/usr/share/torch",
    "/etc/systemd/system/multi-user.target.wants/torch.service",
    "/etc/systemd/system/multi-user.target.wants/torch-forking.service",
    "/etc/systemd/system/torch.service",
    "/var/lib/systemd/deb-systemd-helper-enabled/torch.service.dsh-also",
    "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/torch.service",
    "/var/lib/systemd/deb-systemd-helper-masked/torch.service",
]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "installs a .deb system-wide with dpkg -i: needs root"
    missing = [t for t in ("dpkg", "dpkg-deb", "dpkg-query") if shutil.which(t) is None]
    if missing:
        return f"needs Debian's package tools; missing: {', '.join(missing)}"
    if not Path("/usr/bin/python3").exists():
        return "the package's virtual environment needs Debian's /usr/bin/python3"
    return None


def _env() -> dict[str, str]:
    """The environment of an administrator's shell: no test overrides, no virtual environment on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TORCH_", "PYTHON", "NOTIFY_SOCKET")) and k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _run(*cmd: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, env=_env(), timeout=timeout, cwd="/",
                       stdin=subprocess.DEVNULL)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def _status() -> str:
    """dpkg's status of the package ('' when dpkg has never heard of it)."""
    r = _run("dpkg-query", "-W", "-f=${Status}", PACKAGE, check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def _installed_or_left(status: str) -> bool:
    return status != "" and not status.endswith(" not-installed")


@pytest.fixture
def machine_lock() -> Iterator[None]:
    """Serialize with any other run of this test on this machine (dpkg and /opt/torch are shared)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _deb_paths(deb: Path) -> list[str]:
    """Every path in the package's data archive, as installed ('/opt/torch/...')."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return sorted({"/" + m.name.removeprefix("./").rstrip("/") for m in tar.getmembers()} - {"/", "/."})


def _verify_units() -> None:
    """`systemd-analyze verify` on our units. Only its words about our own units count: this machine
    (a container whose PID 1 is not systemd) may have other, unrelated units it complains about."""
    r = _run("systemd-analyze", "verify", *UNITS, check=False, timeout=60)
    out = (r.stdout + r.stderr).strip()
    ours = [line for line in out.splitlines()
            if re.match(r"\s*(torch|torch-forking)\.service\b", line) or any(u in line for u in UNITS)]
    assert not ours, f"systemd-analyze verify (exit {r.returncode}) about our units:\n" + "\n".join(ours)
    if r.returncode != 0:
        assert out, f"systemd-analyze verify exited {r.returncode} without saying why"


def test_build_install_use_purge(machine_lock: None, tmp_path: Path) -> None:
    before = _status()
    if _installed_or_left(before):
        pytest.skip(f"a {PACKAGE} package is already on this machine ({before}); this test installs and purges "
                    "the package and does not touch an installation it did not make")
    stray = [p for p in CREATED if os.path.lexists(p)]
    if stray:
        pytest.skip(f"leftovers of an earlier torch installation exist ({', '.join(stray)}); this test would "
                    "not be able to tell its own leftovers from them")

    # Build from this checkout into a directory of our own, from the wheels `dev.py setup` collected:
    # tests use no network beyond loopback (build.sh without TORCH_WHEELHOUSE uses the registry).
    if not WHEELHOUSE.is_dir():
        pytest.skip(f"no wheelhouse at {WHEELHOUSE}: run `python3 dev.py setup` (it collects the wheels)")
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(BUILD), str(out)], capture_output=True, text=True,
                       env={**_env(), "TORCH_WHEELHOUSE": str(WHEELHOUSE)}, timeout=400)
    assert r.returncode == 0, f"build.sh failed ({r.returncode}):\n{r.stderr[-4000:]}"
    deb = Path(r.stdout.strip().splitlines()[-1])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert deb.parent == out and deb.name.startswith(f"{PACKAGE}_{version}-") and deb.suffix == ".deb", r.stdout
    fields = _run("dpkg-deb", "--field", str(deb), "Package", "Depends").stdout
    assert f"Package: {PACKAGE}" in fields and "python3 (>= 3.11)" in fields, fields
    contents = _deb_paths(deb)
    for path in ("/opt/torch/bin/torch", "/usr/bin/torch", "/etc/torch/tasks.yaml", *UNITS, "/etc/logrotate.d/torch",
                 "/usr/share/bash-completion/completions/torch", "/usr/share/zsh/vendor-completions/_torch",
                 "/usr/share/torch/hooks/mail.sh", "/usr/share/torch/hooks/webhook.sh",
                 "/usr/share/torch/hooks/healthchecks.sh"):
        assert path in contents, f"{path} is not in the package"
    # What existed before installing (/, /usr, /etc...) may stay; everything else must go with the purge.
    existed = {p for p in contents if os.path.lexists(p)}

    listed: list[str] = []
    try:
        _run("dpkg", "-i", str(deb))
        listed = [line for line in _run("dpkg", "-L", PACKAGE).stdout.splitlines() if line not in ("", "/.")]
        assert set(contents) <= set(listed)
        assert _status() == "install ok installed"

        # The command and the sample configuration, from /usr/bin as an administrator would run them.
        assert os.path.realpath("/usr/bin/torch") == "/opt/torch/bin/torch"
        assert _run("/usr/bin/torch", "--version").stdout.strip() == f"torch, version {version}"
        check = _run("/usr/bin/torch", "check", "/etc/torch/tasks.yaml")
        assert "/etc/torch/tasks.yaml: OK" in check.stdout
        conffiles = _run("dpkg-query", "-W", "-f=${Conffiles}", PACKAGE).stdout
        assert "/etc/torch/tasks.yaml" in conffiles and "/etc/logrotate.d/torch" in conffiles, conffiles
        for d in ("/var/lib/torch", "/var/log/torch"):
            assert Path(d).is_dir() and Path(d).stat().st_mode & 0o777 == 0o750, d
        # The environment was relocated: nothing in it names the build directory (build.sh's mktemp).
        assert Path("/opt/torch/bin/torch").read_text().startswith("#!/opt/torch/bin/python\n")
        assert "/opt/torch" in Path("/opt/torch/pyvenv.cfg").read_text()
        naming_build = [str(f) for f in Path("/opt/torch").rglob("*")
                        if f.is_file() and not f.is_symlink() and b"/torch-deb." in f.read_bytes()]
        assert not naming_build, naming_build

        # Completion scripts: generated for `torch`, and the bash one is valid bash.
        _run("bash", "-n", "/usr/share/bash-completion/completions/torch")
        assert "complete -o nosort -F _torch_completion torch" in \
            Path("/usr/share/bash-completion/completions/torch").read_text()
        assert Path("/usr/share/zsh/vendor-completions/_torch").read_text().startswith("#compdef torch")
        completion = subprocess.run(["/usr/bin/torch"], capture_output=True, text=True, timeout=60, cwd="/",
                                    env={**_env(), "_TORCH_COMPLETE": "bash_complete", "COMP_WORDS": "torch st",
                                         "COMP_CWORD": "1"})
        assert {"plain,start", "plain,stop", "plain,status"} <= set(completion.stdout.split()), completion

        _verify_units()

        # The installed daemon on the package's paths (the double-fork start, as torch-forking.service
        # does it): it writes /run/torch and /var/log/torch, which the purge must remove as well.
        _run("/usr/bin/torch", "start", "-c", "/etc/torch/tasks.yaml", timeout=90)
        st = _run("/usr/bin/torch", "status").stdout
        assert "generation 1" in st, st
        log = Path("/var/log/torch/torch.log")
        assert Path("/run/torch/torch.pid").exists() and "daemon.start" in log.read_text()
        if shutil.which("logrotate"):
            # A forced rotation with the package's configuration: the old log is renamed, and the
            # postrotate SIGHUP makes the daemon write on in a new torch.log at once.
            state = str(tmp_path / "logrotate.state")
            lr = _run("logrotate", "--verbose", "--force", "--state", state, "/etc/logrotate.d/torch")
            assert "error" not in (lr.stdout + lr.stderr).lower(), lr.stderr
            assert "daemon.start" in Path("/var/log/torch/torch.log.1").read_text()
            wait_until(lambda: "log.reopened" in log.read_text(), 10, what="log.reopened in the new torch.log")
            assert "daemon.start" not in log.read_text()
        _run("/usr/bin/torch", "stop", "--timeout", "30", "--kill", timeout=60)

        # Reinstalling runs the maintainer scripts' upgrade path; an administrator's edit of the
        # conffile survives it, and `dpkg -r` (remove, not purge) keeps configuration and state.
        Path("/etc/torch/tasks.yaml").write_text("version: 1\ntasks: []\n")
        _run("dpkg", "-i", str(deb))
        assert Path("/etc/torch/tasks.yaml").read_text() == "version: 1\ntasks: []\n"
        _run("dpkg", "-r", PACKAGE)
        assert _status().endswith("config-files"), _status()
        assert not os.path.lexists("/usr/bin/torch") and not os.path.lexists("/opt/torch")
        assert Path("/etc/torch/tasks.yaml").exists() and any(Path("/var/log/torch").iterdir())
    finally:
        # Always purge, whatever failed above (prerm also stops a daemon that is still running).
        purge = _run("dpkg", "--purge", PACKAGE, check=False) if _installed_or_left(_status()) else None

    assert purge is not None and purge.returncode == 0, purge
    assert not _installed_or_left(_status()), _status()
    left = [p for p in [*listed, *contents] if p not in existed and os.path.lexists(p)]
    assert not left, f"left behind by the purge: {left}"
    left = [p for p in CREATED if os.path.lexists(p)]
    assert not left, f"left behind by the purge: {left}"
