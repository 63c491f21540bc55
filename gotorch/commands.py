"""What the control socket's commands do in the daemon: run a task by hand, kill runs, watch live, hold tasks.

Everything here runs in the event loop (the control server calls it there), so it reads and
changes the scheduler's state without locks, and never blocks: a command that waits (`run --wait`,
`watch`) returns a `control.Stream` fed by the event bus, and the server sends it at the client's
pace.

Manual runs are recorded like any other (trigger `manual`, with who asked). A run asked for later
(`torch run --in 1h`) is a timer held here, not in the scheduler's delayed starts: it must not count
against the task's max_instances while it waits, or it would block the task's scheduled fires.

Holds (`torch pause` / `torch resume`, model and file in gotorch.pauses) live here too: the scheduler
asks `held(name)` before each fire and before (re)starting a daemon-type copy. A hold with an end
has a loop timer that resumes the task then; `held` also compares the end with the wall clock, so a
late timer (a suspended host, a clock step) never makes a hold outlast its end. Each change is saved
to STATE/pauses.json by the store's worker thread, and a pause or resume is answered once it is saved.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gotorch import accounts, pauses
from gotorch.config import Config
from gotorch.control import Message, Peer, Reply, Stream, error
from gotorch.events import (
    Bus,
    Event,
    ManualRunDropped,
    PauseFileFailed,
    PausesRestored,
    RunEnded,
    RunOutput,
    RunStarted,
    Skipped,
    TaskPaused,
    TaskResumed,
)
from gotorch.hosts import IPAddress, match
from gotorch.pauses import Hold, PauseFileError, PauseStore
from gotorch.scheduler import Scheduler

# Events `watch` leaves out unless asked: one per output line, by far the most frequent.
OUTPUT_EVENTS = (RunOutput,)


@dataclass
class PendingRun:
    """A manual run asked for later (`torch run --in/--at`): its timer and who asked."""

    task: str
    run_id: str
    at: float
    requested_by: str
    force: bool
    handle: asyncio.TimerHandle

    def to_json(self) -> dict[str, Any]:
        """For `torch status --json` (`pending_runs`)."""
        return {"task": self.task, "run_id": self.run_id, "at": _iso(self.at), "requested_by": self.requested_by,
                "force": self.force}


def who(peer: Peer) -> str:
    """`root (uid 0)`: the asking user as history and logs show it."""
    try:
        name = accounts.user_by_id(peer.uid).pw_name
    except KeyError:
        return f"uid {peer.uid}"
    return f"{name} (uid {peer.uid})"


def event_json(event: Event) -> Message:
    """One event as `watch --json` prints it: its name, level, time and fields."""
    return {"event": event.name, "level": event.severity(), "ts": time.time(), **event.data()}


class Commands:
    """The daemon side of `torch run`, `torch kill` and `torch watch`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, scheduler: Scheduler, bus: Bus,
                 config: Callable[[], Config], addresses: Callable[[], list[IPAddress]],
                 store: PauseStore | None = None) -> None:
        self._loop = loop
        self._sched = scheduler
        self._bus = bus
        self._config = config
        self._addresses = addresses
        self.pending: dict[str, PendingRun] = {}  # by run id
        self.holds: dict[str, Hold] = {}  # by task name; replaced as a whole on each change (pure model)
        self._store = store  # None: holds are not kept across restarts (tests of the loop alone)
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._expiring: set[str] = set()  # expiries already posted to the loop by `held`
        self._saving: set[asyncio.Task[str | None]] = set()  # background saves (after an expiry)

    # -- run ------------------------------------------------------------------------------------------

    def run(self, request: Message, peer: Peer) -> Reply:
        """Start TASK now, or once at `at` (epoch seconds); with `wait`/`follow`, stream its end (and output)."""
        name = request.get("task")
        if not isinstance(name, str):
            return error("bad request: run needs a task name")
        refusal = self._refusal(name)
        if refusal is not None:
            return error(refusal)
        st = self._sched.states[name]
        force = bool(request.get("force"))
        at = request.get("at")
        if at is not None and (not isinstance(at, int | float) or not math.isfinite(at)):
            return error("bad request: at must be a time in epoch seconds")
        asker = who(peer)
        run_id = self._sched.new_run_id()
        if at is not None and at > time.time():
            handle = self._loop.call_at(self._loop.time() + (at - time.time()), self._pending_due, run_id)
            self.pending[run_id] = PendingRun(name, run_id, float(at), asker, force, handle)
            reply: Message = {"ok": True, "run_id": run_id, "task": name, "at": _iso(at), "pending": True}
        else:
            blocked = None if force else self._in_the_way(name, st.task.max_instances)
            if blocked is not None:
                return error(blocked)
            reply = {"ok": True, "run_id": run_id, "task": name, "at": None, "pending": False}
        hold = self.held(name)
        if hold is not None:  # an explicit run goes ahead; the asker should still know
            reply["paused"] = hold
        stream = self._follow(run_id, bool(request.get("follow"))) if request.get("wait") or request.get(
            "follow") else None
        if not reply["pending"]:
            self._sched.start_manual(st.task, run_id, asker)
        if stream is None:
            return reply
        stream.push(reply)
        return stream

    def _refusal(self, name: str) -> str | None:
        """Why TASK cannot be run here by hand, or None."""
        if self._sched.stopping:
            return "the daemon is stopping"
        st = self._sched.states.get(name)
        if st is not None:
            if st.task.type == "daemon":
                return (f"task {name} is a daemon-type task: torch keeps it running; "
                        f"`torch kill {name}` restarts it")
            return None
        task = self._config().by_name().get(name)
        if task is None:
            return f"no task named {name} in {self._config().path}"
        if not task.enabled:
            return f"task {name} is disabled (enabled: false)"
        addresses = self._addresses()
        m = match(task.ips, addresses)
        if not m.applies:
            return (f"task {name} does not run on this host: its ips {[str(n) for n in task.ips]} match none of "
                    f"this host's addresses {[str(a) for a in addresses]}")
        return f"task {name} is not loaded yet (a reload is being applied); try again"

    def _in_the_way(self, name: str, max_instances: int) -> str | None:
        running = [r.spec.run_id for r in self._sched.runner.runs.values() if r.spec.task == name]
        busy = len(running) + self._sched.delayed.pending(name)
        if busy < max_instances:
            return None
        what = f"run {', '.join(running)}" if running else "a start already waiting"
        return (f"task {name} is at its max_instances ({max_instances}): {what} is in the way; "
                "use --force to start another anyway")

    def _pending_due(self, run_id: str) -> None:
        p = self.pending.pop(run_id, None)
        if p is None:
            return
        st = self._sched.states.get(p.task)
        refusal = self._refusal(p.task)
        blocked = None if refusal is not None or p.force or st is None else \
            self._in_the_way(p.task, st.task.max_instances)
        if refusal is not None or blocked is not None or st is None:
            reason = "max_instances" if blocked is not None else "not_applicable"
            self._bus.publish(Skipped(p.task, _iso(p.at) or "", reason, detail=refusal or blocked,
                                      blocking_run=None))
            self._bus.publish(ManualRunDropped(p.task, run_id, "skipped", refusal or blocked or ""))
            return
        self._sched.start_manual(st.task, run_id, p.requested_by, scheduled=math.floor(p.at))

    def cancel_pending(self, name: str) -> list[str]:
        """Cancel the pending manual runs of `name`; return their run ids."""
        gone = [p for p in self.pending.values() if p.task == name]
        for p in gone:
            p.handle.cancel()
            del self.pending[p.run_id]
            self._bus.publish(ManualRunDropped(p.task, p.run_id, "cancelled", "cancelled by torch kill --pending"))
        return [p.run_id for p in gone]

    def _follow(self, run_id: str, output: bool) -> Stream:
        """A stream of the start, output lines (with `output`) and end of one run, closed at its end."""
        stream = Stream()

        def on_event(event: Event) -> None:
            if getattr(event, "run_id", None) != run_id:
                return
            if isinstance(event, RunOutput):
                if output:
                    stream.push({"event": "output", "stream": event.stream, "line": event.line})
            elif isinstance(event, RunStarted):
                stream.push({"event": "start", "pid": event.pid})
            elif isinstance(event, RunEnded):
                stream.push({"event": "end", "status": event.status if event.pid is not None else "spawn_failed",
                             "exit_code": event.exit_code, "signal": event.signal, "duration_s": event.duration_s,
                             "error": event.error, "reason": event.reason})
                stream.close()
            elif isinstance(event, ManualRunDropped):
                stream.push({"event": "end", "status": event.status, "exit_code": None, "signal": None,
                             "error": event.detail})
                stream.close()

        stream.on_close = self._bus.subscribe(on_event)
        return stream

    # -- kill -----------------------------------------------------------------------------------------

    def kill(self, request: Message, peer: Peer) -> Message:
        """Signal the runs of TASK (or run ID): `signal` (TERM), then KILL after the task's kill_timeout."""
        name = request.get("task")
        if not isinstance(name, str):
            return error("bad request: kill needs a task name")
        if request.get("pending"):
            cancelled = self.cancel_pending(name)
            return {"ok": True, "task": name, "cancelled": cancelled, "signalled": []}
        signame = str(request.get("signal") or "TERM").upper()
        try:
            sig = signal.Signals[signame if signame.startswith("SIG") else f"SIG{signame}"]
        except KeyError:
            return error(f"unknown signal {signame!r}: use a name such as TERM, INT, HUP or KILL")
        run_id = request.get("run")
        runs = [r for r in self._sched.runner.runs.values()
                if r.spec.task == name and (run_id is None or r.spec.run_id == run_id) and not r.exited]
        reason = f"killed by {who(peer)} (torch kill, SIG{sig.name.removeprefix('SIG')})"
        for r in runs:
            self._sched.runner.terminate(r, reason, sig)
        return {"ok": True, "task": name, "signal": sig.name, "signalled": [r.spec.run_id for r in runs],
                "cancelled": []}

    # -- pause / resume ------------------------------------------------------------------------------

    def held(self, name: str) -> str | None:
        """Why `name` is on hold now (the detail of its skipped fires), or None: the scheduler's `held`."""
        h = self.holds.get(name)
        if h is None:
            return None
        if h.active_at(time.time()):
            return h.describe()
        if name not in self._expiring:  # its timer is late: end the hold now, not whenever it comes
            self._expiring.add(name)
            self._loop.call_soon(self._expire, name)
        return None

    def hold_of(self, name: str) -> Hold | None:
        """The hold in force on `name` now, or None (for status)."""
        h = self.holds.get(name)
        return h if h is not None and h.active_at(time.time()) else None

    async def restore_holds(self) -> None:
        """At start, before anything runs: take the holds saved in STATE/pauses.json back into force.

        Holds whose end passed while the daemon was down are dropped (and said so). A file that cannot
        be read or trusted is logged and treated as no holds: the daemon starts anyway.
        """
        if self._store is None:
            return
        try:
            saved = await self._loop.run_in_executor(None, self._store.load)
        except Exception as exc:  # PauseFileError, or a bug: either way the daemon must come up
            message = str(exc) if isinstance(exc, PauseFileError) else f"internal error: {exc!r}"
            self._bus.publish(PauseFileFailed(str(self._store.path), "load", message,
                                              "no task is paused; the file is replaced at the next pause or resume"))
            return
        self.holds, expired = pauses.split_expired(saved, time.time())
        for name in expired:
            self._bus.publish(TaskResumed(name, "expired"))
        for name, h in self.holds.items():
            self._arm(name, h)
        if self.holds:
            self._bus.publish(PausesRestored(sorted(self.holds)))
        if expired:
            await self._save()

    async def pause(self, request: Message, peer: Peer) -> Message:
        """Hold TASKS (all of them, or none if one is unknown): `for` seconds, or until resumed."""
        names = _names(request)
        if isinstance(names, str):
            return error(names)
        duration = request.get("for")
        if duration is not None and (problem := pauses.duration_problem(duration)) is not None:
            return error(f"bad request: for {problem}")
        reason = request.get("reason")
        if reason is not None and (problem := pauses.reason_problem(reason)) is not None:
            return error(f"the reason {problem}")
        if self._sched.stopping:
            return error("the daemon is stopping")
        config = self._config()
        known = config.by_name()
        unknown = [n for n in names if n not in known]
        if unknown:
            # All or nothing: a typo in one name must not leave the operator guessing which are held.
            return error(f"no task named {', '.join(unknown)} in {config.path} (as the daemon last loaded it); "
                         "nothing was paused")
        asker = who(peer)
        before = self.holds
        self.holds = pauses.pause(before, names, now=time.time(), duration=duration, reason=reason, by=asker)
        done = []
        for name in names:
            h = self.holds[name]
            self._arm(name, h)
            self._bus.publish(TaskPaused(name, h.by, h.reason, None if h.until is None else pauses.iso(h.until)))
            self._stop_starts(name, h)
            done.append({"task": name, "updated": name in before and before[name].active_at(time.time()),
                         **h.to_json()})
        problem = await self._save()
        return {"ok": True, "paused": done, **_unsaved(problem)}

    async def resume(self, request: Message, peer: Peer) -> Message:
        """End the holds on TASKS; names not held are reported (`not_paused`), the others resumed anyway."""
        names = _names(request)
        if isinstance(names, str):
            return error(names)
        self.holds, resumed, not_paused = pauses.resume(self.holds, names)
        asker = who(peer)
        for name in resumed:
            self._end(name, asker)
        problem = await self._save() if resumed else None
        return {"ok": True, "resumed": resumed, "not_paused": not_paused, **_unsaved(problem)}

    def _stop_starts(self, name: str, hold: Hold) -> None:
        """A task just held: drop its waiting starts; stop a daemon-type task's copies (cron runs go on)."""
        for entry in self._sched.delayed.cancel(name):
            if entry.kind == "jitter" and entry.scheduled is not None:
                self._bus.publish(Skipped(name, _iso(entry.scheduled) or "", "paused",
                                          detail=f"{hold.describe()}; cancelled while waiting out its jitter"))
        st = self._sched.states.get(name)
        if st is not None and st.task.type == "daemon":
            # Retired copies are not replaced while the hold lasts; if it ends before they do, their
            # successors start at once (no backoff: they did not fail).
            self._sched.supervisor.retire(st, hold.describe())

    def _end(self, name: str, by: str) -> None:
        """A hold is gone (resumed or expired): say so, and bring a daemon-type task back up."""
        handle = self._expiry.pop(name, None)
        if handle is not None:
            handle.cancel()
        self._bus.publish(TaskResumed(name, by))
        st = self._sched.states.get(name)
        if st is not None and st.task.type == "daemon" and not self._sched.stopping:
            self._sched.supervisor.launch(st)

    def _arm(self, name: str, hold: Hold) -> None:
        """(Re)set the timer that ends `name`'s hold at its `until` (none for a hold until resumed)."""
        old = self._expiry.pop(name, None)
        if old is not None:
            old.cancel()
        if hold.until is not None:
            self._expiry[name] = self._loop.call_later(max(0.0, hold.until - time.time()), self._expire, name)

    def _expire(self, name: str) -> None:
        self._expiring.discard(name)
        h = self.holds.get(name)
        if h is None:
            return  # resumed meanwhile
        if h.active_at(time.time()):
            self._arm(name, h)  # early: the wall clock was set back since the timer was armed
            return
        self.holds, _, _ = pauses.resume(self.holds, [name])
        self._end(name, "expired")
        saving = self._loop.create_task(self._save())
        self._saving.add(saving)
        saving.add_done_callback(self._saving.discard)

    async def _save(self) -> str | None:
        """Write the holds as they are now (on the store's thread, after earlier saves); the error, or None."""
        if self._store is None:
            return None
        try:
            await asyncio.wrap_future(self._store.save(pauses.encode(self.holds)))
        except Exception as exc:  # PauseFileError, or a bug: the holds are in force either way
            message = str(exc) if isinstance(exc, PauseFileError) else f"internal error: {exc!r}"
            self._bus.publish(PauseFileFailed(str(self._store.path), "save", message,
                                              "holds stay in force but will not survive a restart"))
            return message
        return None

    async def close(self) -> None:
        """At stop: cancel expiry timers and wait until every save asked for is on disk (off the loop)."""
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        if self._saving:
            await asyncio.gather(*self._saving, return_exceptions=True)
        if self._store is not None:
            await self._loop.run_in_executor(None, self._store.close)

    # -- watch ----------------------------------------------------------------------------------------

    def watch(self, request: Message, peer: Peer) -> Reply:
        """Stream every event (of the named tasks, if any) until the client goes away."""
        tasks = request.get("tasks") or []
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            return error("bad request: tasks must be a list of names")
        wanted = set(tasks)
        output = bool(request.get("output"))
        stream = Stream()

        def on_event(event: Event) -> None:
            if isinstance(event, OUTPUT_EVENTS) and not output:
                return
            if wanted and getattr(event, "task", None) not in wanted:
                return
            stream.push(event_json(event))

        stream.push({"ok": True, "event": "watch.start", "tasks": sorted(wanted)})
        stream.on_close = self._bus.subscribe(on_event)
        return stream


def _names(request: Message) -> list[str] | str:
    """The request's task names (without repeats), or what is wrong with them."""
    names = request.get("tasks")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        return "bad request: tasks must be a non-empty list of task names"
    if len(names) > pauses.MAX_NAMES:
        return f"bad request: more than {pauses.MAX_NAMES} task names"
    return pauses.unique(names)


def _unsaved(problem: str | None) -> Message:
    """The reply's warning when the holds could not be saved (they are in force, but only until a restart)."""
    if problem is None:
        return {"saved": True}
    return {"saved": False, "warning": f"not saved, so it will not survive a daemon restart: {problem}"}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
