#!/usr/bin/env python3
"""Set up torch's virtual environment and run it or its tests: the README's two commands.

Needs only python3 (3.11+). Creates .venv beside this file, installs torch (editable) with its test,
bench and etcd extras when the installed set is out of date, then runs the requested action inside that venv.

    python3 dev.py run    # torch in the foreground on etc/tasks.yaml
    python3 dev.py test   # ruff, mypy --strict, and the whole pytest suite
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".torch-installed"
WHEELHOUSE = VENV / "wheelhouse"


def _ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"torch needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    # Reinstall only when pyproject.toml changed, so repeated runs start in a second.
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    print("dev.py: installing torch and its test and benchmark dependencies", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[test,bench,etcd]"], check=True)
    # Wheels of torch's runtime dependencies (and its build backend), so the packaging test can build
    # the .deb without the network: tests reach nothing beyond loopback.
    subprocess.run([*pip, "wheel", "--wheel-dir", str(WHEELHOUSE), str(ROOT), "setuptools>=77", "wheel"],
                   check=True)
    STAMP.write_text(want)


def _exec(argv: list[str]) -> None:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(VENV))
    os.chdir(ROOT)
    os.execvpe(argv[0], argv, env)


def main() -> None:
    action = sys.argv[1] if len(sys.argv) > 1 else ""
    rest = sys.argv[2:]
    if action not in {"run", "test", "bench", "setup"}:
        sys.exit("usage: python3 dev.py run|test|bench|setup [ARGS...]")
    _ensure_venv()
    if action == "setup":
        return
    if action == "run":
        # A private state directory beside the checkout: a dev run must not need root or touch /run.
        _exec([str(BIN / "torch"), "start", "--foreground", "-c", "etc/tasks.yaml", "--state-dir", ".torch-state",
               *rest])
    if action == "bench":
        _exec([str(BIN / "python"), "bench/run.py", *rest])
    # test: static checks first (fast, and a type error usually explains a test failure).
    checks = [
        [str(BIN / "ruff"), "check", "gotorch", "tests", "bench"],
        [str(BIN / "mypy"), "--strict", "gotorch"],
    ]
    for cmd in checks:
        print("dev.py: " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)), flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            sys.exit(1)
    _exec([str(BIN / "python"), "-m", "pytest", "-n", "2", "-q", *rest])


if __name__ == "__main__":
    main()
