"""The loop that drives firing: wakes on every second boundary, asks the fire queue what is due, and
turns its decisions into runs (jitter first, then the runner); applies reloads without delaying fires.

`Scheduler` is the imperative shell around the pure `FireQueue` (gotorch.firequeue): it owns the
asyncio loop's state (queue, runner, per-task state, delayed starts) and hands daemon-type tasks to
the `Supervisor` (gotorch.supervisor).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from gotorch.adoption import Survivor
from gotorch.config import Task
from gotorch.delayed import DelayedStarts
from gotorch.events import (
    Bus,
    CaughtUp,
    ClockJumped,
    FireFailed,
    Jittered,
    MissedFires,
    Skipped,
    StopForced,
    StopRequested,
    TaskTickFailed,
    TickFailed,
)
from gotorch.firequeue import ClockJump, FireHints, FireNow, FireQueue, Missed, TaskError, next_tick
from gotorch.fleet.gate import FleetGate
from gotorch.log import logging_bus
from gotorch.plan import Plan, diff, runs_unchanged
from gotorch.policy import jitter_delay
from gotorch.runner import Run, Runner, RunResult, RunSpec
from gotorch.supervisor import Supervisor, TaskState

# --- the imperative shell -------------------------------------------------------------------------

# Wake this much before a boundary and finish with a precise sleep: asyncio's timers round to the
# millisecond and may fire late by that much, which would be most of our lateness budget.
EARLY_WAKE = 0.002
# A reload is applied in slices of this many names, each only before this fraction of a second.
APPLY_SLICE = 2000
QUIET_UNTIL = 0.8
# A tick that starts this long after its boundary is a late one (a catch-up after a busy start-up,
# a loop held up): it may end anywhere in its second, so it is no quiet moment (see quiet_moment).
LATE_TICK = 0.05
# Reloads of up to this many tasks are applied in one piece, between two boundaries (see apply_plan).
APPLY_ATOMIC = 10_000
# A plan of up to this many names is applied at the next quiet moment (any time early in a second):
# a few ms. A bigger one waits for a tick, to have nearly a whole second for itself.
APPLY_QUICK = 1000
QUICK_UNTIL = 0.97
QUICK_LAUNCHES = 10


class Scheduler:
    """Owns all mutable daemon state inside one asyncio loop: the queue, the runs, the config.

    Everything that changes state runs as a callback of that loop. Signal handlers and other threads
    only post to it (gotorch.signals, `call_soon_threadsafe`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, state_dir: Path, stop_timeout: float = 10.0,
                 rng: random.Random | None = None, bus: Bus | None = None) -> None:
        self.loop = loop
        self.state_dir = state_dir
        self.stop_timeout = stop_timeout
        self.rng = rng or random.Random()
        self.bus = bus if bus is not None else logging_bus()
        self.queue = FireQueue()
        self.runner = Runner(loop, self._on_run_end, self.bus)
        self.states: dict[str, TaskState] = {}
        self.stopping = False
        self.started_at = time.time()
        self._timer: asyncio.TimerHandle | None = None
        self.delayed = DelayedStarts(loop)
        # Copies of a daemon task start only when it is not on hold and, for a fleet task, when this
        # host holds its election.
        self.supervisor = Supervisor(self.runner, self.delayed, lambda task: self._start(task, None), self.bus,
                                     lambda name: self.held(name) is not None or not self._fleet_allows(name))
        self.fleet: FleetGate | None = None  # a `fleet:` block: etcd decides fleet tasks' fires and copies
        self._seq = itertools.count(1)
        self._id_prefix = f"{os.urandom(5).hex()}-"
        self._done = loop.create_future()
        self._stop_requested = loop.create_future()
        self.before_tick: Callable[[], None] | None = None  # the service drains recorded signals here
        # Why a task is on hold (an operator's `torch pause`), or None: its fires are skipped with
        # reason `paused` and its daemon copies are not (re)started while it is held.
        self.held: Callable[[str], str | None] = lambda _name: None
        self._after_tick: list[asyncio.Future[None]] = []
        self._ticked = 0  # the last second whose tick ran
        self._ticked_late = False  # whether that tick started LATE_TICK or more after its boundary

    # -- configuration -----------------------------------------------------------------------------

    def apply(self, tasks: dict[str, tuple[Task, str | None]], *, at_start: bool = False,
              hints: FireHints | None = None) -> Plan:
        """Make `tasks` (name -> (task, matched local address)) the running set; return what changed.

        Unchanged tasks keep their state and runs. Removed or changed cron tasks fire no more under
        their old definition, but runs already going finish. Removed and changed daemon tasks are
        stopped (TERM, then KILL); changed ones start again with the new definition.
        """
        plan = diff({n: s.task for n, s in self.states.items()}, {n: t for n, (t, _) in tasks.items()})
        self._apply_part(plan, tasks, hints)
        if at_start:
            now = math.floor(time.time())
            for task, _ in tasks.values():
                if task.schedule is not None and task.schedule.kind == "reboot":
                    try:
                        self._fire(FireNow(task, now))
                    except Exception as exc:  # one task's failure must not keep the others from starting
                        self.bus.publish(FireFailed(task.name, _iso(now), exc))
        return plan

    async def apply_plan(self, plan: Plan, tasks: Mapping[str, tuple[Task, str | None]],
                         hints: FireHints | None = None, *, slice_size: int = APPLY_SLICE,
                         atomic_up_to: int = APPLY_ATOMIC) -> Plan:
        """Carry out a reload's `plan` (worked out against the running tasks); `tasks` holds its new tasks.

        `tasks` needs an entry for each name in plan.added, plan.changed and plan.unchanged (an
        unchanged task whose object or matched address is refreshed); names the plan does not
        mention are left as they are, so a reload that changes one task of 10,000 touches one.

        A plan of up to `atomic_up_to` names is applied at once, at a quiet moment (a big one just
        after a second's fires went out, ~100-350 ms for 10,000 tasks): one instant, the old config
        before it and the new one after. A bigger plan is applied `slice_size` names at a time,
        each slice early in a second, so for a few seconds some tasks run their new definition and
        others their old one. Removed names go first: a task renamed in such a reload may start
        under its new name a little later, but never runs under both names at once.
        """
        names = [*plan.removed, *plan.unchanged, *plan.changed, *plan.added]
        # Each daemon-type task added or changed is started during the apply (a spawn, ~0.5 ms).
        launches = sum(1 for n in (*plan.added, *plan.changed) if tasks[n][0].type == "daemon")
        if len(names) <= min(APPLY_QUICK, atomic_up_to) and launches <= QUICK_LAUNCHES:
            # A few ms of work: any moment but the last few ms before a boundary will do, so an added
            # task's first fire is the next boundary.
            await self.quiet_moment(until=QUICK_UNTIL)
            if self.stopping:
                return diff({}, {})
            self._apply_part(plan, tasks, hints)
            return plan
        if len(names) <= atomic_up_to:
            await self.quiet_moment(whole_second=True)
            if self.stopping:
                return diff({}, {})
            self._apply_part(plan, tasks, hints)
            return plan
        kinds = {n: kind for kind in ("removed", "unchanged", "changed", "added") for n in getattr(plan, kind)}
        parts: list[Plan] = []
        for i in range(0, len(names), slice_size):
            await self.quiet_moment()
            if self.stopping:
                break
            chunk = names[i:i + slice_size]
            part = Plan(*(tuple(n for n in chunk if kinds[n] == kind)
                          for kind in ("added", "removed", "changed", "unchanged")))
            self._apply_part(part, tasks, hints)
            gc.freeze()  # the new states and queue entries live on: keep collections from rescanning them
            parts.append(part)
        await self.quiet_moment()
        return Plan(*(tuple(sorted(n for p in parts for n in getattr(p, f))) for f in
                      ("added", "removed", "changed", "unchanged")))

    async def quiet_moment(self, *, whole_second: bool = False, until: float = QUIET_UNTIL) -> None:
        """Return when a slice of work on the loop cannot delay a fire: early in a second, after its tick.

        `whole_second`: only right after a tick, leaving (nearly) a whole second for the work.
        `until`: the fraction of a second after which it is too late (the work must end before the boundary).
        """
        now = time.time()
        frac = now % 1.0
        ticking = self._timer is not None and not self.stopping
        if ticking and (whole_second or frac > until or self._ticked < math.floor(now)):
            # Too late in the second, or this second's fires have not gone out yet (a busy loop).
            await self.after_next_tick()
            if self._ticked_late and self._timer is not None and not self.stopping:
                # It was a late tick, which may have ended just before the next boundary: the next
                # one (on time unless the loop is still held up: only one more wait) is the moment.
                await self.after_next_tick()
        elif frac <= until and not whole_second:
            await asyncio.sleep(0)  # let whatever else is due (reaping, output) run first
        else:  # not ticking (not armed yet, or stopping): just let the boundary pass
            await asyncio.sleep(1.0 - frac + 0.01)

    def _apply_part(self, plan: Plan, tasks: Mapping[str, tuple[Task, str | None]],
                    hints: FireHints | None) -> None:
        """Carry out `plan` (all of a reload, or a slice of its names); `tasks` holds the new tasks."""
        wall = time.time()
        for name in plan.removed:
            self._retire(name, "task removed by a reload")
        # A change of bookkeeping only (history_keep) is applied in place, like an unchanged task.
        in_place = {n for n in plan.changed if runs_unchanged(self.states[n].task, tasks[n][0])}
        for name in plan.changed:
            if name in in_place:
                continue
            if self.states[name].task.type == "daemon":
                self._retire(name, "task changed by a reload")
            else:
                self._cancel_delayed(name, "reload")
        changed = set(plan.changed) - in_place
        for name in (*plan.unchanged, *plan.changed, *plan.added):
            task, ip = tasks[name]
            st = self.states.get(name)
            if st is not None and name not in changed:
                st.task, st.matched_ip = task, ip
                continue
            fresh = TaskState(task, ip)
            if st is not None:  # a changed cron task: its run history carries over
                fresh.last_status, fresh.last_end, fresh.last_scheduled = st.last_status, st.last_end, st.last_scheduled
            self.states[name] = fresh
        covered = (*plan.removed, *plan.changed, *plan.added, *plan.unchanged)
        self.queue.update(covered, (tasks[n][0] for n in covered if n in tasks and tasks[n][0].type == "cron"),
                          wall, hints)
        self._log_task_errors(self.queue.take_errors())
        for name in (*plan.added, *plan.changed):
            if tasks[name][0].type == "daemon" and name not in in_place:
                self.supervisor.launch(self.states[name])

    def _retire(self, name: str, reason: str) -> None:
        st = self.states.pop(name, None)
        self._cancel_delayed(name, "reload")
        if st is not None and st.task.type == "daemon":
            self.supervisor.retire(st, reason)

    def _cancel_delayed(self, name: str, reason: str) -> None:
        for entry in self.delayed.cancel(name):
            if entry.kind == "jitter" and entry.scheduled is not None:
                self.bus.publish(Skipped(name, _iso(entry.scheduled), reason,
                                         detail="cancelled while waiting out its jitter"))

    # -- time --------------------------------------------------------------------------------------

    def arm(self) -> None:
        """Schedule the next tick: at the coming second boundary, or now if a boundary passed untouched."""
        if self.stopping:
            return
        wall = time.time()
        try:
            due = self.queue.next_due()
        except Exception as exc:  # arm() runs in _on_timer's finally: a failure here would end all ticking
            self.bus.publish(TickFailed(_iso(math.floor(wall) + 1), exc))
            due = None
        target = next_tick(wall, due, self._ticked)
        self._timer = self.loop.call_later(max(0.0, target - wall - EARLY_WAKE), self._on_timer, target)

    def _on_timer(self, target: int) -> None:
        try:
            if self.before_tick is not None:
                self.before_tick()
                if self.stopping:
                    return
            remaining = target - time.time()
            if 0 < remaining <= 2 * EARLY_WAKE:
                time.sleep(remaining)
            self._ticked_late = -remaining >= LATE_TICK
            self.tick()
        except Exception as exc:  # never let one bad second stop every later one from firing
            self.bus.publish(TickFailed(_iso(target), exc))
        finally:
            self._ticked = target
            self.arm()
            for fut in self._after_tick:
                if not fut.done():
                    fut.set_result(None)
            self._after_tick.clear()

    async def after_next_tick(self) -> None:
        """Return right after the next second's fires started: the most time until the one after."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self._after_tick.append(fut)
        await fut

    def tick(self) -> None:
        """Fire everything due now. Starts go first; logging and bookkeeping after.

        One task's failure (to start, or to have its fires worked out) is logged and costs no other
        task its fire.
        """
        wall = time.time()
        actions = self.queue.tick(wall, time.monotonic())
        with self.runner.batch():  # every due process first; their pipes and timers after the last
            for a in actions:
                if isinstance(a, FireNow):
                    try:
                        self._fire(a)
                    except Exception as exc:
                        self.bus.publish(FireFailed(a.task.name, _iso(a.scheduled), exc))
        self.queue.settle()
        self.runner.seal_descriptors()  # for the next second's spawns: see gotorch.spawn
        if self.fleet is not None:  # after the fires: claim the next ones, well ahead of their boundary
            self.fleet.prepare(math.floor(wall), lambda name: self.held(name) is not None, self._busy)
        errors: list[TaskError] = []
        for a in actions:
            if isinstance(a, Missed):
                self.bus.publish(MissedFires(a.task, _iso(a.first), _iso(a.last), a.count, a.reason, a.exact))
            elif isinstance(a, ClockJump):
                self.bus.publish(ClockJumped(a.direction, round(a.seconds, 3), a.action))
            elif isinstance(a, TaskError):
                errors.append(a)
        self._log_task_errors([*errors, *self.queue.take_errors()])

    def _log_task_errors(self, errors: list[TaskError]) -> None:
        for e in errors:
            # The traceback on the first failure only: a task that stays broken is re-checked (and
            # reported) up to once a minute.
            self.bus.publish(TaskTickFailed(e.task, _iso(e.second), _iso(e.retry_at), e.attempt,
                                            f"{type(e.error).__name__}: {e.error}",
                                            e.error if e.attempt == 1 else None))

    # -- runs --------------------------------------------------------------------------------------

    def _fire(self, fire: FireNow) -> None:
        task = fire.task
        st = self.states.get(task.name)
        if st is None:
            return
        hold = self.held(task.name)
        if hold is not None:
            self.bus.publish(Skipped(task.name, _iso(fire.scheduled), "paused", detail=hold))
            return
        busy = self.runner.running_count(task.name) + self.delayed.pending(task.name)
        if busy >= task.max_instances:
            # The oldest run of the task is the one in the way (a skip is rare: a scan is fine).
            blocking = next((r.spec.run_id for r in self.runner.runs.values() if r.spec.task == task.name), None)
            self.bus.publish(Skipped(task.name, _iso(fire.scheduled), "max_instances", running=busy,
                                     max_instances=task.max_instances, blocking_run=blocking))
            return
        if fire.caught_up:
            self.bus.publish(CaughtUp(task.name, _iso(fire.scheduled), round(time.time() - fire.scheduled, 3)))
        if task.fleet is not None and self.fleet is None:  # between two gates (a reload of the fleet settings)
            self.bus.publish(Skipped(task.name, _iso(fire.scheduled), "fleet_unreachable",
                                     detail="the fleet settings are being applied"))
            return
        if self.fleet is not None and self.fleet.is_fleet(task):
            scheduled = fire.scheduled
            self.fleet.fire(task, scheduled, lambda run_id: self._fleet_go(task, scheduled, run_id),
                            lambda reason, detail: self.bus.publish(Skipped(task.name, _iso(scheduled), reason,
                                                                            detail=detail)))
            return
        self._go(task, fire.scheduled)

    def _fleet_go(self, task: Task, scheduled: int, run_id: str) -> None:
        # Usually at once; later if the claim's answer was late: the task may be gone by then.
        if task.name in self.states and not self.stopping:
            self._go(task, scheduled, run_id)

    def _go(self, task: Task, scheduled: int, run_id: str | None = None) -> None:
        delay = jitter_delay(task, self.rng)
        if delay > 0:
            self.bus.publish(Jittered(task.name, _iso(scheduled), round(delay, 3)))
            self.delayed.add(task.name, delay, "jitter", scheduled,
                             lambda token: self._after_jitter(task, scheduled, token, run_id))
            return
        self._start_fire(task, scheduled, run_id)

    def _after_jitter(self, task: Task, scheduled: int, token: int, run_id: str | None = None) -> None:
        if self.delayed.take(task.name, token) and task.name in self.states and not self.stopping:
            self._start_fire(task, scheduled, run_id)

    def _start_fire(self, task: Task, scheduled: int, run_id: str | None) -> None:
        if run_id is None:
            self._start(task, scheduled)
        else:  # the run id a fleet claim named: the fleet knows the run by it
            self._start(task, scheduled, run_id=run_id)

    def new_run_id(self) -> str:
        """A run id unique across daemons and hosts (see `_start`)."""
        return f"{self._id_prefix}{next(self._seq):x}"

    def start_manual(self, task: Task, run_id: str, requested_by: str, scheduled: int | None = None) -> None:
        """Start a run someone asked for (`torch run`): trigger `manual`, with who asked.

        The caller has checked that the task applies here and what its max_instances allows.
        """
        self._start(task, scheduled, "manual", run_id=run_id, requested_by=requested_by)

    def start_retry(self, task: Task, scheduled: int | None, attempt: int) -> str:
        """Start attempt `attempt` of the fire `scheduled` of `task` (trigger `retry`); return its run id."""
        run_id = self.new_run_id()
        self._start(task, scheduled, "retry", run_id=run_id, attempt=attempt)
        return run_id

    def start_hook(self, task: Task, hook: str, command: str | tuple[str, ...], report: tuple[tuple[str, str], ...],
                   run_id: str) -> None:
        """Start `task`'s alert hook `hook` (on_failure, on_recovery) as a run of its own, `TASK:hook`.

        It runs as the task's user, in its directory, with its environment and the `report`
        variables (TORCH_TASK, TORCH_RUN_ID, TORCH_STATUS... of the run it reports on), stopped after
        the task's hook_timeout like any run (the whole process group); it is never retried.
        """
        spec = RunSpec(
            task=f"{task.name}:{hook}", run_id=run_id, command=command,
            env=(*task.env, ("TORCH_STATE_DIR", str(self.state_dir))), report_env=report,
            workdir=task.workdir, user=task.user, group=task.group, timeout=task.hook_timeout,
            kill_timeout=task.kill_timeout, output_limit=task.output_limit, trigger="hook",
        )
        self.runner.start(spec)

    def _spec(self, task: Task, run_id: str, scheduled: float | None, trigger: str, requested_by: str | None = None,
              attempt: int = 1) -> RunSpec:
        token = self.fleet.token(task.name) if self.fleet is not None else None
        fleet_env = (("TORCH_FLEET_TOKEN", str(token)),) if token is not None else ()
        return RunSpec(
            task=task.name, run_id=run_id, command=task.command,
            env=(*task.env, ("TORCH_STATE_DIR", str(self.state_dir)), *fleet_env),
            workdir=task.workdir, user=task.user, group=task.group, timeout=task.timeout,
            kill_timeout=task.kill_timeout, output_limit=task.output_limit,
            scheduled_ts=scheduled, trigger=trigger, requested_by=requested_by, attempt=attempt,
        )

    def _start(self, task: Task, scheduled: int | None, trigger: str | None = None, *, run_id: str | None = None,
               requested_by: str | None = None, attempt: int = 1) -> None:
        # Globally unique, not just per daemon: the runner finds escaped processes by TORCH_RUN_ID, and
        # a run id shared with another daemon (or a previous one's leftovers) would get them killed too.
        run_id = run_id or self.new_run_id()
        spec = self._spec(task, run_id, float(scheduled) if scheduled is not None else None,
                          trigger or _trigger_of(task), requested_by, attempt)
        if scheduled is not None:
            st = self.states.get(task.name)
            if st is not None:
                st.last_scheduled = scheduled
        self.runner.start(spec)

    def adopt(self, survivors: Iterable[Survivor], tasks: Mapping[str, Task]) -> None:
        """At start, before `apply`: supervise the runs a previous daemon left alive (gotorch.adoption).

        They count for max_instances like runs of ours, so no copy starts beside them. What this
        config would not run is stopped: a daemon task's copy whose task is gone from this host or
        on hold, and copies beyond a daemon task's max_instances (it was lowered meanwhile).
        Cron runs of a removed task finish, as they would after a reload.
        """
        for found in survivors:
            task = tasks.get(found.task)
            if task is not None:
                spec = self._spec(task, found.run_id, found.scheduled_at, found.trigger, attempt=found.attempt)
            else:
                spec = RunSpec(task=found.task, run_id=found.run_id, command="", scheduled_ts=found.scheduled_at,
                               trigger=found.trigger, attempt=found.attempt)
            run = self.runner.adopt(spec, found.pid, found.started_at, found.proc_start, recorded=found.recorded)
            if task is None and found.trigger == "restart":
                self.runner.terminate(run, "adopted after a daemon restart, but its daemon task no longer runs here")
        for name, task in tasks.items():
            if task.type != "daemon":
                continue
            runs = sorted((r for r in self.runner.runs.values() if r.spec.task == name), key=lambda r: r.started_at)
            hold = self.held(name)
            keep = 0 if hold is not None or task.fleet is not None else task.max_instances
            for run in runs[keep:]:
                self.runner.terminate(run, f"adopted after a daemon restart, but the task is paused ({hold})"
                                      if hold is not None else
                                      "adopted after a daemon restart, but where a fleet task runs is etcd's call"
                                      if task.fleet is not None else
                                      "adopted after a daemon restart, beyond max_instances")

    # -- the fleet (gotorch.fleet.gate calls these) ----------------------------------------------------

    def _busy(self, name: str) -> bool:
        st = self.states.get(name)
        return st is not None and (self.runner.running_count(name) + self.delayed.pending(name)
                                   >= st.task.max_instances)

    def _fleet_allows(self, name: str) -> bool:
        st = self.states.get(name)
        if st is None or not (st.task.fleet == "once" and st.task.type == "daemon"):
            return True
        # No gate yet (a reload is adding the `fleet:` block): nothing runs before an election says so.
        return self.fleet is not None and self.fleet.may_run(st.task)

    def fleet_start_copies(self, name: str) -> None:
        """This host now holds the election of daemon task `name`: start its copies."""
        st = self.states.get(name)
        if st is not None and st.task.type == "daemon" and not self.stopping:
            self.supervisor.launch(st)

    def fleet_copies(self, name: str) -> list[tuple[int, str]]:
        """The process groups (leaders' pids) and run ids of the runs of `name` going now."""
        return [(r.pid, r.spec.run_id) for r in self.runner.runs.values()
                if r.spec.task == name and r.pid and not r.exited]

    def fleet_stop_copies(self, name: str, reason: str, kill_in: float | None) -> int:
        """Stop the copies of `name`: TERM, and KILL after `kill_in` s (0: now; None: its kill_timeout)."""
        runs = [r for r in self.runner.runs.values() if r.spec.task == name]
        for run in runs:
            if kill_in == 0:
                self.runner.kill_now(run, reason)
                continue
            self.runner.terminate(run, reason)
            if kill_in is not None:
                self.loop.call_later(kill_in, self.runner.kill_now, run, reason)
        return len(runs)

    def _on_run_end(self, run: Run, result: RunResult) -> None:
        st = self.states.get(run.spec.task)
        if st is not None:
            st.last_status, st.last_end = result.status, time.time()
        self.supervisor.on_run_end(st, run, result, self.stopping)

    # -- stopping ----------------------------------------------------------------------------------

    def request_stop(self, signame: str) -> None:
        """SIGTERM/SIGINT: stop firing and shut down; a second request kills what is left at once."""
        if self.stopping:
            self.bus.publish(StopForced(signame))
            for run in list(self.runner.runs.values()):
                self.runner.kill_now(run, f"stop forced (second {signame})")
            return
        self.stopping = True
        self._stop_requested.set_result(None)
        self.bus.publish(StopRequested(signame, len(self.runner.runs)))
        if self._timer is not None:
            self._timer.cancel()
        for name in self.delayed.tasks():
            self._cancel_delayed(name, "stop")
        task = self.loop.create_task(self._shutdown(f"daemon stopping ({signame})"))
        task.add_done_callback(lambda _t: None)

    async def _shutdown(self, reason: str) -> None:
        try:
            await self.runner.shutdown(self.stop_timeout, reason)
        finally:
            if not self._done.done():
                self._done.set_result(None)

    async def wait_stopped_requested(self) -> None:
        """Return once SIGTERM/SIGINT asked the scheduler to stop (runs may still be ending)."""
        await self._stop_requested

    async def wait_stopped(self) -> None:
        """Return once a stop was requested and every run has ended."""
        await self._done


def _trigger_of(task: Task) -> str:
    """Why a run of `task` starts, when nobody asked for it by hand: its schedule, or being kept running."""
    if task.type == "daemon":
        return "restart"
    return "reboot" if task.schedule is not None and task.schedule.kind == "reboot" else "schedule"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
