"""The process that reads and checks the task file for a reload: a fresh interpreter, never a fork.

A forked child shares the daemon's memory copy-on-write: until it exits, every page the daemon
writes is first copied, and in a virtual machine that costs ~10 us a page. A parse of 10,000 tasks
lives ~0.5 s, long enough to span a boundary, whose fires then paid 10-20 ms of copying. This
process is started with posix_spawn (vfork: nothing is copied) and is started ahead of time, when
nothing is due, so its imports are done by the time a reload needs it: `spawn()` returns a
`ReloadProcess` waiting on its stdin for one request, it answers on its stdout and exits.

Request: a pickle of (code fingerprint, path, host_ips, settle, base) read to EOF; answer: a pickle of the `Loaded`
or `LoadFailed` of `gotorch.loader`. The child lowers its priority and caps its address space, so a
hostile file costs it, not the daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import pickle
import resource
import select
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import gotorch

# The reload process's niceness; it also runs as SCHED_BATCH (a CPU-bound job: no wake-up preemption).
NICE = 10
# The child may use this much more address space than it has once its imports are done.
CHILD_EXTRA_MEMORY = 1 << 30
# Signals the daemon handles or ignores: the child starts with their default actions.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD)


@dataclass
class ReloadProcess:
    """A started reload process: its pid and pidfd (None on kernels without), request and answer pipes."""

    pid: int
    pidfd: int | None
    request_fd: int  # ours to write the request to (non-blocking), then close
    answer_fd: int  # ours to read the answer from (non-blocking)
    # The preload frame (see main) has been written: the base it carried, None for none.
    primed: bool = False
    preloaded: object = None

    def exited(self) -> bool:
        """Whether the process has already ended (a spare that died while it waited)."""
        if self.pidfd is None or self.pidfd < 0:
            return False
        poller = select.poll()  # not select(): a pidfd may be numbered beyond 1023
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def kill(self) -> None:
        """SIGKILL it (through its pidfd: never a reused pid) and close our ends; reaping is the daemon's."""
        with contextlib.suppress(ProcessLookupError, OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:  # no pidfd (kernel < 5.3): the pid may in theory be reused; accepted on such kernels
                os.kill(self.pid, signal.SIGKILL)
        self.close()

    def close(self) -> None:
        """Close our descriptors (idempotent)."""
        for name in ("request_fd", "answer_fd", "pidfd"):
            fd = getattr(self, name)
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1 if name != "pidfd" else None)


# The -X option that marks torch's own helper processes (gotorch.HELPER_OPTION, repeated for readers).
HELPER_OPTION = gotorch.HELPER_OPTION
# Where the gotorch package is imported from: the child imports the very same files.
_ROOT = str(Path(gotorch.__file__).resolve().parent.parent)


def python_argv(module: str) -> list[str]:
    """argv of a fresh interpreter running `module`'s main(): torch's helper processes (this one, the fence).

    -I: no PYTHON* variables, no user site-packages, no working directory on sys.path: such a
    process runs as root and must import only the interpreter's own packages and torch's. The
    package's root goes last, so nothing there can shadow the standard library. -X torch_helper:
    it runs no event loop, so `gotorch` does not import asyncio for it (see gotorch._lean_imports).
    """
    return [sys.executable, "-I", "-X", HELPER_OPTION, "-c",
            f"import sys; sys.path.append({_ROOT!r}); from {module} import main; main()"]


def _argv() -> list[str]:
    return python_argv("gotorch.reload_process")


def clean_env() -> dict[str, str]:
    """The environment of torch's helper processes (see below)."""
    # Only what a parse can depend on (the zone, the locale, PATH for nothing in particular): not the
    # TORCH_* settings (the request carries them; a TORCH_STATE_DIR would make this helper look
    # like one of the runs, which are found by their environment), nor anything else of root's.
    return {k: v for k, v in os.environ.items() if k in ("PATH", "TZ", "LANG", "LC_ALL", "LC_CTYPE")}


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A digest of the gotorch package's source files, as this process loaded them (first call).

    The daemon and a reload process started later could run different code after an upgrade on
    disk; their pickles would not fit each other's classes. Each compares the other's fingerprint.
    """
    digest = hashlib.sha256()
    for file in sorted(Path(gotorch.__file__).resolve().parent.rglob("*.py")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _high_pipe() -> tuple[int, int]:
    """A close-on-exec pipe numbered 3 or above: dup2 onto 0 or 1 must never be onto itself.

    With the daemon's stdin closed a pipe could get descriptor 0; dup2(0, 0) would keep it
    close-on-exec, and the child would start without its request.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    fds = []
    for fd in (r, w):
        if fd < 3:
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            fd = high
        fds.append(fd)
    return fds[0], fds[1]


def spawn() -> ReloadProcess:
    """Start a reload process that waits for its request. OSError if it cannot be started."""
    if not sys.executable:
        raise OSError("no Python interpreter path (sys.executable is empty)")
    req_r, req_w = _high_pipe()
    ans_r, ans_w = _high_pipe()
    try:
        pid = os.posix_spawn(sys.executable, _argv(), clean_env(), file_actions=[
            (os.POSIX_SPAWN_DUP2, req_r, 0),
            (os.POSIX_SPAWN_DUP2, ans_w, 1),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
        ], setsid=True, setsigdef=_DEFAULT_SIGNALS)
    except BaseException:
        for fd in (req_w, ans_r):
            os.close(fd)
        raise
    finally:
        os.close(req_r)
        os.close(ans_w)
    # At once, not from the child: its start-up (imports, ~0.2 s of CPU) must already yield to the
    # daemon, whose fires on a busy 2-core host were 5-10 ms late behind it.
    with contextlib.suppress(OSError):
        os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))  # posix_spawn refuses SCHED_BATCH
        os.setpriority(os.PRIO_PROCESS, pid, NICE)
    pidfd: int | None = None
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(pid)
    os.set_blocking(req_w, False)
    os.set_blocking(ans_r, False)
    return ReloadProcess(pid, pidfd, req_w, ans_r)


def _vm_size() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


# The request's base when it is the one the preload frame carried.
PRELOADED = "preloaded"


def frame(fingerprint: str, base: object) -> bytes:
    """The preload frame: (fingerprint, base or None) pickled, after its length in 8 bytes.

    A spare process gets it when it is started, so that it unpacks the base (a tenth of a second
    for 10,000 tasks) while it waits, rather than once the reload has been asked for.
    """
    data = pickle.dumps((fingerprint, base), protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(8, "big") + data


def _read_frame(stream: BinaryIO) -> tuple[str, object]:
    size = int.from_bytes(stream.read(8), "big")
    got: tuple[str, object] = pickle.loads(stream.read(size))
    return got


def _write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def main() -> None:
    """The child: read the preload frame and one request from stdin, answer on stdout, exit.

    The answer is a pickle after its length in 8 bytes; a valid config's packed form (its `Loaded`
    has an empty `blob`) follows it, until end of file. Exit status 70 if it could not answer.
    """
    code = 0
    try:
        # What a reload needs, imported before the request comes.
        from gotorch.config_errors import ConfigError
        from gotorch.loader import Base, LoadFailed, _load_here, pack_config, prepare

        os.chdir("/")
        code_fingerprint()  # now, before an upgrade on disk could change the files under us

        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, NICE)  # a parse must not compete with the daemon and the runs
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + CHILD_EXTRA_MEMORY, resource.RLIM_INFINITY))
        prepared = None
        with os.fdopen(0, "rb") as requests:
            # A daemon of a torch before the preload frame sends a bare pickle (protocol byte 0x80;
            # a frame's length starts with 0): it runs other code, and hears so in its own format.
            legacy = requests.peek(1)[:1] == b"\x80"
            if not legacy:
                fingerprint, ahead = _read_frame(requests)
                if isinstance(ahead, Base) and fingerprint == code_fingerprint():
                    with contextlib.suppress(Exception):  # unusable: the request then fails, and is retried
                        prepared = prepare(ahead)
            fingerprint, path, host_ips, settle, base = pickle.loads(requests.read())
        config = None
        if legacy or fingerprint != code_fingerprint():
            answer: object = LoadFailed([ConfigError(
                path, 0, 0, "", "torch's files on disk are not the ones the daemon runs (upgraded?)",
                "restart the daemon (systemctl restart torch) to run the new version")])
            if legacy:
                _write_all(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
                return
        elif base == PRELOADED and prepared is None:
            answer = LoadFailed([ConfigError(path, 0, 0, "", "the reload process could not unpack the running config",
                                             "torch retries with a new process")], transient=True)
        else:
            if base == PRELOADED:
                base = prepared
            answer, config = _load_here(Path(path), host_ips, os.geteuid(), base, settle)
        out = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        _write_all(len(out).to_bytes(8, "big") + out)
        if config is not None:
            # After the answer: the daemon applies it while this packs the config for its next reload
            # (~0.1 s for 10,000 tasks that a reload's first fire need not wait for).
            _write_all(pack_config(config))
    except BaseException:
        code = 70  # the daemon reports "the reload process died"; nothing else can be said from here
    finally:
        os._exit(code)


if __name__ == "__main__":
    main()
