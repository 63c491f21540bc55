"""The running daemon's body: one asyncio loop, the scheduler in it, and everything that feeds it events.

Signals (gotorch.signals: the real handler only records them and wakes the loop), the file
watcher thread and the control socket only post events to the loop; the loop does the work:

    SIGTERM/SIGINT -> stop      SIGUSR2 / file change -> reload      SIGHUP -> reopen the log
    SIGCHLD -> reap

A reload reads and parses the file in a child process (gotorch.loader), so no file can stall
firing or grow the daemon, then applies the result inside the loop, just after a second's fires.
A file that fails to validate changes nothing: the old config keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gotorch import __version__, accounts, adoption, control, procfs, reload_process, threads
from gotorch import log as logmod
from gotorch.alerts import Alerts
from gotorch.commands import Commands
from gotorch.config import Config, ConfigError, release_free_memory
from gotorch.daemon import Paths
from gotorch.events import (
    ControlRefused,
    DaemonFailed,
    DaemonStarted,
    DaemonStopped,
    HistoryError,
    HostAddressesChanged,
    LogReopened,
    ReloadApplied,
    ReloadFailed,
    ReloadUnchanged,
    RunLost,
    SignalHandlerFailed,
    TaskApplies,
    TaskNotHere,
    WatchStarted,
)
from gotorch.fleet.coordinator import Coordinator
from gotorch.fleet.gate import FleetGate
from gotorch.history import DEFAULT_SETTINGS, HistorySettings
from gotorch.history.recorder import Recorder
from gotorch.history.writer import HistoryWriter
from gotorch.hosts import IPAddress, host_addresses
from gotorch.loader import Base, LoadFailed, pack_config
from gotorch.metrics import Metrics
from gotorch.pauses import PauseStore
from gotorch.plan import applicable, reload_plan
from gotorch.reload_client import load_in_child, preload
from gotorch.reload_process import ReloadProcess
from gotorch.retries import Retries
from gotorch.runner import set_child_subreaper
from gotorch.scheduler import QUICK_UNTIL, Scheduler
from gotorch.signals import SignalRouter
from gotorch.watcher import FileWatcher
from gotorch.web import Listen
from gotorch.web.supervisor import WebSupervisor

# Retry a reload that failed for a transient reason (file briefly missing, I/O error, no memory for the
# loader) after 1 s, doubling to at most a minute, until one succeeds or the file is invalid.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


@dataclass
class Generation:
    """One applied config: its number (1 = the config loaded at start), hash and what it changed."""

    number: int
    digest: str
    applied_at: float
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()


@dataclass
class ReloadResult:
    """The outcome of the last reload attempt, for status and `torch reload`."""

    ok: bool
    at: float
    trigger: str
    errors: list[dict[str, Any]] = field(default_factory=list)


class Service:
    """Wires the Scheduler to signals, reloads and the status file, inside one event loop."""

    def __init__(self, config_path: Path, config: Config, *, paths: Paths, addresses: list[IPAddress],
                 host_ips: str | None = None, stop_timeout: float = 10.0, on_ready: Callable[[], None] | None = None,
                 notify: Callable[[str], None] | None = None, watch: bool = True,
                 history: HistorySettings | None = DEFAULT_SETTINGS, http: Listen | None = None,
                 packed: bytes = b"") -> None:
        self.config_path = config_path
        self.config = config
        self.paths = paths
        self.watch = watch
        self.addresses = addresses
        self.host_ips = host_ips  # the --host-ips override, if any; else interfaces are re-read on reload
        self.stop_timeout = stop_timeout
        self.on_ready = on_ready
        self.notify = notify or (lambda _msg: None)
        self.bus = logmod.logging_bus()
        self.generation = Generation(1, config.digest, time.time())
        self.last_reload: ReloadResult | None = None
        self.reloads = 0  # completed reload attempts, so `torch reload` can tell when its own one is done
        self._reloading = False
        self._reload_again = False
        self._again_trigger = "file"
        # Whether a queued (or retried) reload must wait for the file to settle: a watcher-seen edit
        # may be half-written, and so may whatever a retry re-reads after it.
        self._settle_again = False
        self._reload_task: asyncio.Task[None] | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._retry_delay = 0.0
        self._half_applied = False
        self._config_blob = packed  # pack_config(self.config), for the next reload's Base (see _reload)
        self._blob_later: asyncio.Future[bytes] | None = None  # it, still on its way from the reload process
        self._spare: ReloadProcess | None = None  # a reload process started ahead of time
        self._spare_task: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self.history_settings = history  # None: --no-history
        self.history: HistoryWriter | None = None
        self.recorder: Recorder | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scheduler: Scheduler | None = None
        self.commands: Commands | None = None
        self.watcher: FileWatcher | None = None
        self.http = http  # --http: the status page's web process, supervised by self.web
        self.web: WebSupervisor | None = None
        self.metrics: Metrics | None = None
        self.fleet: FleetGate | None = None  # a `fleet:` block: etcd decides fleet tasks (gotorch.fleet)
        self._fleet_unsubscribe: Callable[[], None] = lambda: None
        self._signals: SignalRouter | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT and every run has ended; return the exit code (0)."""
        logmod.defer_writes(asyncio.get_running_loop())
        try:
            return await self._serve()
        finally:  # however it ends: the wake-up fd must not outlive its socket, no line stays unwritten
            logmod.defer_writes(None)
            if self._signals is not None:
                self._signals.close()
                self._signals = None

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        self.loop = loop
        # The loop must get the GIL back quickly when a boundary comes while the reload thread parses
        # (or the watcher thread works): the default 5 ms hand-over would be 5 ms of lateness.
        sys.setswitchinterval(0.0005)
        loop.set_default_executor(threads.executor(name="torch-io"))  # workers that never take our signals
        subreaper = set_child_subreaper()
        procfs.reserve_descriptor()  # so that a daemon out of descriptors can still find what to kill
        sched = Scheduler(loop, state_dir=self.paths.state_dir, stop_timeout=self.stop_timeout, bus=self.bus)
        self.scheduler = sched
        self.commands = Commands(loop, sched, self.bus, lambda: self.config, lambda: self.addresses,
                                 PauseStore(self.paths.state_dir))
        # Failure handling listens to the runs like the log and the history do.
        self.bus.subscribe(Retries(loop, sched))
        self.bus.subscribe(Alerts(loop, sched, self.paths.state_dir))
        # Metrics count from the first event on; the web process fetches snapshots (`metrics` below).
        self.metrics = Metrics.for_scheduler(
            sched, history_dropped=lambda: self.history.dropped if self.history is not None else None,
            log_dropped=logmod.lines_dropped)
        self.bus.subscribe(self.metrics)
        self._signals = SignalRouter({
            signal.SIGCHLD: sched.runner.reap,
            signal.SIGTERM: lambda: sched.request_stop("SIGTERM"),
            signal.SIGINT: lambda: sched.request_stop("SIGINT"),
            signal.SIGUSR2: lambda: self.request_reload("SIGUSR2"),
            signal.SIGHUP: self._reopen_log,
        }, self._signal_failed)
        self._signals.install(loop)
        sched.before_tick = self._signals.drain
        # Holds first: nothing may start (an @reboot fire, a daemon-type copy) before its hold is known,
        # and no `torch pause` may be answered before the saved holds are read (it would be overwritten).
        await self.commands.restore_holds()
        sched.held = self.commands.held
        # Everything that can fail at start-up (socket, watcher) comes before the first run starts:
        # a daemon that dies during start-up must not leave runs (or a fired @reboot) behind.
        server = control.Server(self.paths.socket, self.handle_request, on_refused=self._control_refused)
        await server.start()
        # Runs a previous daemon left alive (kill -9, OOM kill): found before the history closes the
        # rows of the others as lost, adopted before the first fire (see below).
        found = await loop.run_in_executor(None, self._find_leftovers, *self._run_uids())
        self._start_history(loop, tuple(s.run_id for s in found.survivors))
        for row in found.lost:
            self.bus.publish(RunLost(row.task, row.run_id, row.pid))
        if self.http is not None:  # needs the control socket; its failures are events, never fatal
            self.web = WebSupervisor(loop, self.http, control_socket=self.paths.socket, history=self.paths.history,
                                     bus=self.bus, quiet=sched.quiet_moment)
            self.web.start()
        try:
            if self.watch:
                self.watcher = FileWatcher(loop, self.config_path, lambda: self.request_reload("file"))
                mode = self.watcher.start()
                self.bus.publish(WatchStarted(str(self.config_path), mode))
            here, skipped = applicable(self.config, self.addresses)
            self.bus.publish(DaemonStarted(os.getpid(), str(self.config_path), self.config.short_hash, 1, subreaper,
                                           [str(a) for a in self.addresses], len(here), len(skipped)))
            for name, (t, ip) in here.items():
                self.bus.publish(TaskApplies(name, t.type, ip or "all hosts",
                                             t.schedule.text if t.schedule else None))
            for name in skipped:
                self.bus.publish(TaskNotHere(name))
            self._set_fleet(self.config)  # before any daemon copy starts: fleet ones wait for their election
            sched.runner.seal_descriptors()  # after the watcher's inotify descriptor exists, before any run
            sched.adopt(found.survivors, {n: t for n, (t, _) in here.items()})
            sched.apply(here, at_start=True)
            if self.fleet is not None:
                self.fleet.set_tasks(t for t, _ in here.values())
            # What the first reload is told runs (see _reload): pickled once, before any fire (torch
            # start did, with the entries' digests). And the code this daemon runs, as it is now: a
            # reload process compares its own with it.
            self._config_blob = self._config_blob or pack_config(self.config)
            reload_process.code_fingerprint()
            # Everything loaded so far lives as long as the config: keep the cyclic GC from rescanning
            # it; a full collection over 10,000 tasks would stall a firing second by tens of ms.
            gc.collect()
            release_free_memory()  # what the packing and 10,000 start-up log lines left behind
            gc.freeze()
            sched.arm()
            if self.fleet is not None:
                self.fleet.start()
            self._prepare_spare()
            if self.on_ready is not None:
                self.on_ready()
            self.notify(f"READY=1\nSTATUS={self._status_line()}\nMAINPID={os.getpid()}")
            await sched.wait_stopped_requested()
        finally:
            # Also on an unexpected error: stop every run before going away, never orphan them.
            if not sched.stopping:
                self.bus.publish(DaemonFailed(os.getpid()))
                sched.request_stop("error")
            self.notify(f"STOPPING=1\nSTATUS=stopping, {self._status_line()}")
            self._cancel_reload()
            if self.watcher is not None:
                self.watcher.stop()
            if self.web is not None:  # first: the runs' shutdown would otherwise kill it as an orphan
                await self.web.stop()
            await sched.wait_stopped()
            if self.fleet is not None:  # after our copies are gone: then another host may take them over
                self.fleet.close("daemon stopping")
                await loop.run_in_executor(None, self.fleet.stop)
            await self.commands.close()  # a pause answered just before the stop is on disk
            await self._stop_history(loop)
            server.close()
            with contextlib.suppress(OSError):
                self.paths.socket.unlink()
        self.bus.publish(DaemonStopped(os.getpid()))
        return 0

    # -- the fleet ---------------------------------------------------------------------------------

    def host_name(self) -> str:
        """This host's name in the fleet: TORCH_HOST_NAME, else the host name (with the first address when
        --host-ips/TORCH_HOST_IPS says which addresses to use: several daemons on one machine stay apart)."""
        name = os.environ.get("TORCH_HOST_NAME") or socket.gethostname()
        override = self.host_ips or os.environ.get("TORCH_HOST_IPS")
        if override and self.addresses and "TORCH_HOST_NAME" not in os.environ:
            name = f"{name}@{self.addresses[0]}"
        return name

    def _set_fleet(self, config: Config) -> None:
        """Make the fleet gate match `config`'s `fleet:` block (none: no gate); start it if the loop runs."""
        sched, loop = self.scheduler, self.loop
        assert sched is not None and loop is not None
        if config.fleet is None:
            self.fleet = sched.fleet = None
            return
        settings, name = config.fleet, self.host_name()

        def host() -> dict[str, Any]:  # the coordinator's thread: plain reads of values the loop replaces whole
            return {"name": name, "addresses": [str(a) for a in self.addresses], "version": __version__,
                    "config_hash": self.config.short_hash, "pid": os.getpid(), "state_dir": str(self.paths.state_dir)}

        self.fleet = sched.fleet = FleetGate(
            loop, self.bus, lambda gate: Coordinator(loop, settings, gate, host), new_run_id=sched.new_run_id,
            next_fire=sched.queue.next_fire, start_copies=sched.fleet_start_copies,
            stop_copies=sched.fleet_stop_copies, copies=sched.fleet_copies)
        self.fleet.set_tasks(st.task for st in sched.states.values())
        self._fleet_unsubscribe = self.bus.subscribe(self.fleet)

    async def _refleet(self, config: Config) -> None:
        """After a reload: new fleet settings mean a new gate (our elections end); else new tasks."""
        assert self.scheduler is not None and self.loop is not None
        old = self.fleet
        if old is not None and old.coordinator.settings == config.fleet:
            old.set_tasks(st.task for st in self.scheduler.states.values())
            return
        if old is not None:
            # New settings (another etcd, cluster or TTL): our elections end with the old lease, so
            # our copies go now (KILL: a TERM's grace would outlive the lease we are about to revoke).
            self._fleet_unsubscribe()
            self.fleet = self.scheduler.fleet = None  # no claims to a coordinator that is stopping
            old.close("the fleet settings changed")
            await self.loop.run_in_executor(None, old.stop)
        self._set_fleet(config)  # fleet daemon copies wait for the new gate's elections (_fleet_allows)
        if self.fleet is not None:
            self.fleet.start()

    def _run_uids(self) -> tuple[set[int], dict[str, int]]:
        """Whose processes may be runs (root, us, the tasks' users), and the uid each task runs as."""
        euid = os.geteuid()
        of_task: dict[str, int] = {}
        for t in self.config.tasks:
            if t.user is None:
                of_task[t.name] = euid
            else:
                with contextlib.suppress(KeyError):
                    of_task[t.name] = accounts.user(t.user).pw_uid
        return {0, euid, *of_task.values()}, of_task

    def _find_leftovers(self, uids: set[int], of_task: dict[str, int]) -> adoption.Findings:
        """(A worker thread: it reads the database and /proc.) What the previous daemon left running."""
        history = self.paths.history if self.history_settings is not None else None
        return adoption.find(history, uids, of_task.get, self.paths.state_dir)

    def _start_history(self, loop: asyncio.AbstractEventLoop, adopted: tuple[str, ...] = ()) -> None:
        """STATE/history.db: a writer thread fed by a bus subscriber; runs left open by a crash are lost.

        All but `adopted`: those are alive, and this daemon records their end.
        """
        if self.history_settings is None:
            return
        def on_error(message: str) -> None:  # writer thread
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(self.bus.publish, HistoryError(message))

        self.history = HistoryWriter(self.paths.history, on_error,
                                     max_age_days=self.history_settings.max_age_days)
        self._set_retention()  # before the thread starts, so its first prune knows every task's limit
        self.history.start()
        self.recorder = Recorder(self.history, socket.gethostname())
        self.recorder.set_config(self.generation.number, self.config.short_hash)
        self.recorder.close_lost_runs(adopted)  # before the first run of this daemon starts
        self.bus.subscribe(self.recorder)

    def _set_retention(self) -> None:
        """Tell the writer how many rows each task of the file keeps (tasks elsewhere too: same file)."""
        if self.history is not None:
            self.history.set_retention({t.name: t.history_keep for t in self.config.tasks})

    async def _stop_history(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush and close the history off the loop (a commit may take a while)."""
        if self.history is not None and not await loop.run_in_executor(None, self.history.close):
            self.bus.publish(HistoryError("history.close_timeout: rows still queued at stop were not written"))

    def _cancel_reload(self) -> None:
        """Stop never waits for a reload: cancelling it kills its child process."""
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        if self._reload_task is not None:
            self._reload_task.cancel()
        if self._spare is not None:
            self._spare.kill()
            self._spare = None
        if self._blob_later is not None:  # its process is killed
            self._blob_later.cancel()

    def _control_refused(self, peer: control.Peer) -> None:
        self.bus.publish(ControlRefused(peer.pid, peer.uid, peer.gid))

    def handle_request(self, request: dict[str, Any],
                       peer: control.Peer) -> control.Reply | Awaitable[control.Reply]:
        """Answer a control-socket request from `peer`: status, reload, run, kill, watch, pause, resume, metrics."""
        cmd = request.get("cmd")
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "metrics" and self.metrics is not None:
            return self.metrics.reply()
        if cmd == "reload":
            self.request_reload("socket")
            return {"ok": True, "reloads": self.reloads}
        if self.commands is not None and cmd in ("run", "kill", "watch", "pause", "resume"):
            handler: Callable[[dict[str, Any], control.Peer], control.Reply | Awaitable[control.Reply]] = getattr(
                self.commands, cmd)
            return handler(request, peer)
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _signal_failed(self, signum: int, exc: Exception) -> None:
        self.bus.publish(SignalHandlerFailed(signal.Signals(signum).name, exc))

    def _reopen_log(self) -> None:
        logmod.reopen()
        self.bus.publish(LogReopened())

    # -- reload ------------------------------------------------------------------------------------

    def request_reload(self, trigger: str, *, settle: bool | None = None) -> None:
        """Ask for a reload (from a signal, the file watcher or the control socket). Coalesces bursts.

        `settle`: wait for a recently modified file to stop changing (default: for the watcher's
        reloads only; SIGUSR2 or `torch reload` means the file is ready).
        """
        if settle is None:
            settle = trigger == "file"
        if self.scheduler is None or self.scheduler.stopping:
            return
        if self._reloading:
            self._reload_again = True
            self._again_trigger = trigger  # what the queued reload is logged as: the latest ask
            self._settle_again = self._settle_again or settle
            return
        self._reloading = True
        if self._retry_handle is not None:  # this reload is the retry, or makes it pointless
            self._retry_handle.cancel()
            self._retry_handle = None
        assert self.loop is not None
        # MONOTONIC_USEC lets systemd >= 253 match this RELOADING=1 with the reload it asked for.
        self.notify(f"RELOADING=1\nSTATUS=reloading ({trigger}), {self._status_line()}\n"
                    f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        self._reload_task = self.loop.create_task(self._reload(trigger, settle))

    async def _reload(self, trigger: str, settle: bool) -> None:
        assert self.loop is not None and self.scheduler is not None
        t0 = time.monotonic()
        try:
            # Read, settle and parse in a child process: the loop never waits for the file or the
            # parse, and stop never waits for a reload (the child is killed with the other children).
            sched = self.scheduler
            # The answer is the difference from what runs: that is the last config applied, unless
            # an apply broke off half way (then the whole config comes back and is diffed here).
            await self._settle_blob()
            base = self._base()
            spare, self._spare = self._spare, None
            outcome = await load_in_child(self.config_path, self.host_ips, base, settle=settle, process=spare)
            if isinstance(outcome, LoadFailed):
                self._reload_failed(trigger, outcome.errors, transient=outcome.transient, settle=settle)
                return
            self._retry_delay = 0.0
            if sched.stopping:
                return
            if outcome.digest == self.config.digest and outcome.addresses == self.addresses and not self._half_applied:
                # Same bytes (a touch, a chmod, an editor saving twice): not a new generation.
                self.last_reload = ReloadResult(True, time.time(), trigger)
                self.bus.publish(ReloadUnchanged(trigger, self.generation.number))
                return
            parsed = time.monotonic()
            # The child sent the difference from what runs: only the tasks it adds or changes are
            # unpickled (a slice at a time, each early in a second) and only the plan's names are
            # touched, so a reload that changes one task of 10,000 costs the loop a few ms.
            config, part, hints = await outcome.unpack(self.config, sched.quiet_moment,
                                                       functools.partial(sched.quiet_moment, until=QUICK_UNTIL))
            plan = outcome.plan
            if base is None:  # the plan is against nothing: work it out against what runs
                plan = reload_plan({n: (st.task, st.matched_ip) for n, st in sched.states.items()}, part)
            applying = time.monotonic()
            if sched.stopping:
                return
            accounts.clear()  # accounts named by tasks may have been created or changed since
            # Until the apply completes, states and queue may be part old, part new: then even the
            # old file's bytes must be applied again, not taken as "unchanged".
            self._half_applied = True
            try:
                plan = await sched.apply_plan(plan, part, hints)
            except Exception as exc:  # a bug, not a bad file: say so loudly, keep the daemon up
                self._reload_crashed(trigger, exc)
                return
            if sched.stopping:
                return
            if outcome.addresses != self.addresses:
                self.bus.publish(HostAddressesChanged([str(a) for a in self.addresses],
                                                      [str(a) for a in outcome.addresses]))
                self.addresses = outcome.addresses
            self.config = config
            self._config_blob, self._blob_later = outcome.blob, outcome.blob_later
            await self._refleet(config)
            self._half_applied = False  # last: until here the next reload must not diff against the blob
            big = len(outcome.fresh) > 1
            del outcome, hints, part
            # Freeze what lives on, so later collections do not rescan the config. The old config
            # was freed by reference counting (it holds no cycles); a young collection first, so
            # that no cyclic garbage of the moment (an exception's traceback) is frozen for good.
            gc.collect(1)
            if big:  # thousands of tasks were replaced: give the memory of the old ones back
                release_free_memory()
            gc.freeze()
            self.generation = Generation(self.generation.number + 1, config.digest, time.time(),
                                         plan.added, plan.removed, plan.changed)
            if self.recorder is not None:
                self.recorder.set_config(self.generation.number, config.short_hash)
            self._set_retention()
            self.last_reload = ReloadResult(True, time.time(), trigger)
            self.bus.publish(ReloadApplied(trigger, self.generation.number, config.short_hash, plan.added,
                                           plan.removed, plan.changed, len(self.scheduler.states),
                                           round((parsed - t0) * 1000, 1),
                                           round((time.monotonic() - applying) * 1000, 1)))
        except Exception as exc:  # never let a reload bug take the daemon down
            self._reload_crashed(trigger, exc)
        finally:
            self.reloads += 1
            self._reloading = False
            self._reload_task = None
            if not self.scheduler.stopping:  # after STOPPING=1, systemd must not hear READY=1 again
                self.notify(f"READY=1\nSTATUS={self._status_line()}")
                if self._reload_again:
                    settle_again, self._reload_again, self._settle_again = self._settle_again, False, False
                    self.request_reload(self._again_trigger, settle=settle_again)
                else:
                    self._prepare_spare()

    async def _settle_blob(self) -> None:
        """Wait for the packed config still on its way from the last reload's process (~0.1 s)."""
        pending = self._blob_later
        if pending is None:
            return
        try:
            blob = await asyncio.shield(pending)
        except Exception:  # it died or timed out: the next reload's answer is against nothing
            blob = b""
        if self._blob_later is pending:
            self._config_blob, self._blob_later = blob, None

    def _base(self) -> Base | None:
        """What the next reload's answer is the difference from (None: from nothing)."""
        return Base(self._config_blob, self.addresses) if not self._half_applied and self._config_blob else None

    def _prepare_spare(self) -> None:
        """Start the next reload's process ahead of time, at a quiet moment (its imports take ~0.2 s).

        It is handed the base of that reload at once, and unpacks it while it waits.
        """
        async def spawn_when_quiet() -> None:
            assert self.scheduler is not None
            await self.scheduler.quiet_moment()
            if self._spare is None and not self.scheduler.stopping and not self._reloading:
                try:  # on failure the reload starts one itself, and reports
                    spare = reload_process.spawn()
                except OSError:
                    return
                try:
                    await self._settle_blob()
                    await preload(spare, self._base())
                except BaseException:  # cancelled (stop), or it died: a half-sent frame is no use
                    spare.kill()
                    raise
                if self._spare is None and not self.scheduler.stopping and not self._reloading:
                    self._spare = spare
                else:  # a reload began meanwhile, with a process of its own
                    spare.kill()

        assert self.loop is not None
        self._spare_task = self.loop.create_task(spawn_when_quiet())

    def _reload_failed(self, trigger: str, errors: list[ConfigError], *, transient: bool, settle: bool = False) -> None:
        """Keep the old config; retry a transient failure later, with backoff (1 s doubling to 60 s)."""
        self.last_reload = ReloadResult(False, time.time(), trigger, [e.as_dict() for e in errors])
        retry_in: float | None = None
        if transient and self.scheduler is not None and not self.scheduler.stopping:
            self._retry_delay = min(RETRY_MAX_S, self._retry_delay * 2) if self._retry_delay else RETRY_FIRST_S
            retry_in = self._retry_delay
            assert self.loop is not None
            self._retry_handle = self.loop.call_later(retry_in, functools.partial(self.request_reload, "retry",
                                                                                   settle=settle))
            self._retry_at = time.time() + retry_in
        else:
            self._retry_delay = 0.0
        self.bus.publish(ReloadFailed(trigger, self.generation.number, [str(e) for e in errors], transient, retry_in))

    def _reload_crashed(self, trigger: str, exc: Exception) -> None:
        """A bug, not a bad file: say so loudly (with the traceback), keep the daemon and its config up."""
        message = f"internal error: {exc!r}"
        self.last_reload = ReloadResult(False, time.time(), trigger, [{"message": message}])
        self.bus.publish(ReloadFailed(trigger, self.generation.number, [message], exc=exc))

    # -- status ------------------------------------------------------------------------------------

    def _status_line(self) -> str:
        n = len(self.scheduler.states) if self.scheduler else 0
        total = len(self.config.tasks)
        return (f"generation {self.generation.number}, {n} of {total} tasks here, "
                f"hash {self.generation.digest[:12]}")

    def status(self) -> dict[str, Any]:
        """What `torch status --json` shows about the running daemon."""
        sched = self.scheduler
        tasks = []
        if sched is not None:
            for name, st in sorted(sched.states.items()):
                nxt = sched.queue.next_fire(name)
                tasks.append({
                    "name": name, "type": st.task.type,
                    "schedule": st.task.schedule.text if st.task.schedule else None,
                    "timezone": st.task.timezone,
                    "matched_ip": st.matched_ip,
                    "running": sched.runner.running_count(name),
                    "last_status": st.last_status, "last_end": _iso(st.last_end),
                    "last_scheduled": _iso(st.last_scheduled),
                    "next_fire": _iso(nxt),
                    "restarts": st.restarts,
                    "paused": self._hold_json(name),
                })
        g = self.generation
        return {
            "running": True, "pid": os.getpid(),
            "started_at": _iso(sched.started_at if sched else None),
            "uptime_s": round(time.time() - sched.started_at, 1) if sched else 0,
            "config": str(self.config_path),
            "generation": g.number, "hash": g.digest[:12],
            "generation_applied_at": _iso(g.applied_at),
            "last_change": {"added": list(g.added), "removed": list(g.removed), "changed": list(g.changed)},
            "reloads": self.reloads,
            "reload_pending": self._reloading or self._reload_again,
            "reload_retry_at": _iso(self._retry_at) if self._retry_handle is not None else None,
            "last_reload": None if self.last_reload is None else {
                "ok": self.last_reload.ok, "at": _iso(self.last_reload.at), "trigger": self.last_reload.trigger,
                "errors": self.last_reload.errors},
            "tasks": tasks,
            "fleet": None if self.fleet is None else self.fleet.status(),
            # Runs a previous daemon left alive and this one supervises (gotorch.adoption), still going.
            "adopted_runs": [] if sched is None else [
                {"task": r.spec.task, "run_id": r.spec.run_id, "pid": r.pid, "started_at": _iso(r.started_at)}
                for r in sched.runner.runs.values() if r.adopted],
            "pending_runs": [] if self.commands is None else
            [p.to_json() for p in sorted(self.commands.pending.values(), key=lambda p: p.at)],
            # Every hold in force, also on tasks not loaded here (elsewhere, disabled, removed by a reload).
            "paused": [] if self.commands is None else
            [{"task": n, **h} for n in sorted(self.commands.holds) if (h := self._hold_json(n)) is not None],
        }

    def _hold_json(self, name: str) -> dict[str, Any] | None:
        hold = self.commands.hold_of(name) if self.commands is not None else None
        return hold.to_json() if hold is not None else None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def serve(config_path: Path, loaded: list[tuple[Config, bytes]], *, paths: Paths, host_ips: str | None,
          stop_timeout: float = 10.0, on_ready: Callable[[], None] | None = None,
          notify: Callable[[str], None] | None = None, history: HistorySettings | None = DEFAULT_SETTINGS,
          http: Listen | None = None) -> int:
    """Run the daemon body in this process until stopped; the caller has set up logging and paths.

    `loaded`: the config to run and its packed form with its entries' digests (loader.load_to_run),
    taken out of the list: nothing of the caller's then pins them once a reload replaced them.
    `history` None runs without history (`--no-history`); `http` serves the status page and /metrics there.
    """
    config, packed = loaded.pop()
    service = Service(config_path, config, paths=paths, addresses=host_addresses(host_ips), host_ips=host_ips,
                      stop_timeout=stop_timeout, on_ready=on_ready, notify=notify, history=history, http=http,
                      packed=packed)
    del config, packed  # the service's until a reload replaces them: not pinned by this frame either
    return asyncio.run(service.run())
