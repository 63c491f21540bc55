"""How a run's processes are stopped: its process group, and whatever left the group carrying its id.

TERM, then KILL after a grace period, to the run's process group and to every process carrying its
TORCH_RUN_KEY outside the group (setsid, double fork), found by scanning /proc. That scan is done on
kill paths only, never on spawn. The KILL outlives the run: processes it started in reaction to the
TERM get their own TERM when it ends (`settle`), and the KILL, due until nothing carries its id,
rescans /proc rather than trusting what the TERM found. (A cgroup per run would catch even a process
that scrubs its environment, but needs a delegated, writable cgroup v2 subtree, which the shipped
unit does not give: ProtectControlGroups=yes, no Delegate=.)

The runner (gotorch.runner) decides when and why a run is stopped; this module only signals, and
publishes a RunSignalled event for each signal sent. It lives in the runner's loop, like the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gotorch import accounts, procfs
from gotorch.events import Bus, RunSignalled
from gotorch.run_env import RUN_KEY_VAR

if TYPE_CHECKING:
    from gotorch.runner import Run

# After a SIGKILL, how many more times /proc is scanned for processes that an escaped process forked
# between the scan and its own KILL (there is a rescan only after a pass that killed escapees).
KILL_RESCANS = 5


def pids_by_run_id(run_ids: Iterable[str], uids: Iterable[int] | None = None) -> dict[str, list[int]]:
    """Every process (but us) of `uids` carrying one of `run_ids` as TORCH_RUN_KEY, by run id: a /proc scan.

    This is how we find processes that left their run's process group (setsid, double fork); kill
    paths only, never on spawn.
    """
    return procfs.pids_by_env(RUN_KEY_VAR, run_ids, uids)


@dataclass(slots=True)
class _Escalation:
    """A SIGKILL due after a SIGTERM, with the escaped processes that have had a TERM."""

    run: Run
    handle: asyncio.TimerHandle
    escaped: list[int]
    reason: str


class Stopper:
    """Signals runs' processes for one runner; keeps the SIGKILLs due after a TERM.

    `running()` gives the runs not yet ended: whose users' processes a scan of /proc looks at.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, bus: Bus, running: Callable[[], Iterable[Run]]) -> None:
        self._loop = loop
        self._bus = bus
        self._running = running
        # Pending SIGKILLs by run id. They outlive their run: a run may end (leader reaped) while
        # TERM-ignoring members of its group still have to be killed.
        self._escalations: dict[str, _Escalation] = {}

    def escalating(self, run_id: str) -> bool:
        """Whether a SIGKILL is due for that run (its TERM was sent)."""
        return run_id in self._escalations

    def uids(self, also: Iterable[Run] = ()) -> set[int]:
        """Whose processes may carry a run's id: ours, root's, and each running run's user's."""
        uids = {0, os.geteuid()}
        # Runs still being stopped count too: their processes may outlive their main one.
        for run in [*self._running(), *(e.run for e in self._escalations.values()), *also]:
            if run.spec.user is not None:
                with contextlib.suppress(KeyError):
                    uids.add(accounts.user(run.spec.user).pw_uid)
        return uids

    def term_then_kill(self, run: Run, grace: float, reason: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send `sig` (TERM) now and SIGKILL after `grace` seconds; a stop already under way keeps its clock."""
        if run.spec.run_id in self._escalations:
            return  # a TERM is already counting down to its KILL; do not restart the clock
        escaped = self.send(run, sig, reason)
        handle = self._loop.call_later(grace, self._escalate, run, reason)
        self._escalations[run.spec.run_id] = _Escalation(run, handle, escaped, reason)

    def cancel(self, run_id: str) -> bool:
        """Drop the SIGKILL due for that run (its caller kills it now); True if one was due."""
        pending = self._escalations.pop(run_id, None)
        if pending is None:
            return False
        pending.handle.cancel()
        return True

    def cancel_all(self) -> list[Run]:
        """Drop every SIGKILL due (shutdown kills them all at once); the runs they were for."""
        pending = list(self._escalations.values())
        self._escalations.clear()
        for p in pending:
            p.handle.cancel()
        return [p.run for p in pending]

    def _escalate(self, run: Run, reason: str) -> None:
        self._escalations.pop(run.spec.run_id, None)
        # All of /proc again, not only the escapees known so far: processes started in reaction to
        # the TERM (a trap running `setsid x &`) did not exist then. The scan costs ~7 us per
        # process on the loop thread; that is fine here, KILLs are rare.
        self.kill_all([run], reason)

    def settle(self, run: Run) -> None:
        """At the end of a run whose SIGKILL is pending: TERM the escapees it started meanwhile.

        A run may answer its TERM by starting processes outside its group (a trap running
        `setsid x &`) and then exit. They did not exist when the TERM was sent, so they get theirs
        now. The KILL stays due whatever this scan finds: a process caught in the middle of an
        exec shows an empty environment in /proc, so "nothing carries the id" cannot be trusted
        here (a test caught exactly that about one time in three); the KILL rescans at its due time.
        """
        pending = self._escalations.get(run.spec.run_id)
        if pending is None:
            return
        # One full scan per signalled run that ends: a kill path, so affordable.
        found = pids_by_run_id((run.spec.run_id,), self.uids()).get(run.spec.run_id, [])
        late = [p for p in self.outside_group(run, found) if p not in pending.escaped]
        if late:
            pending.escaped.extend(self.send(run, signal.SIGTERM, pending.reason, late, group=False))

    def _group_is_ours(self, run: Run) -> bool:
        # The group id is the leader's pid. While the leader is unreaped (even a zombie) the number
        # is ours. Once reaped, it stays reserved as long as any group member lives; it can only be
        # reused once the group is empty, and then by a new process with exactly that pid. So: if
        # the leader is reaped and its pid exists again, the group is someone else's.
        if run.adopted:
            # Not our child: nothing holds its pid for us. The number is the run's while it is free
            # (its group may live on) or held by the process that has the run's start time.
            st = procfs.stat(run.pid)
            return st is None or st.start == run.proc_start
        return not run.exited or not procfs.exists(run.pid)

    def _signal_group(self, run: Run, sig: signal.Signals) -> bool:
        """Signal the run's process group if it is still the run's; True if it had a member."""
        if not self._group_is_ours(run):
            return False
        try:
            os.killpg(run.pid, sig)
            if sig == signal.SIGTERM:
                # A stopped process would not act on TERM until continued.
                os.killpg(run.pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def outside_group(self, run: Run, pids: Iterable[int]) -> list[int]:
        """Those of `pids` that exist outside the run's group (members get the group's signals)."""
        group_ok = self._group_is_ours(run)
        return [pid for pid in pids
                if (st := procfs.stat(pid)) is not None and not (group_ok and st.pgrp == run.pid)]

    def _signal_outside(self, run: Run, sig: signal.Signals, pids: Iterable[int]) -> list[int]:
        """Signal those of `pids` that are outside the run's group; return them."""
        outside = self.outside_group(run, pids)
        for pid in outside:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                if sig == signal.SIGTERM:
                    os.kill(pid, signal.SIGCONT)
        return outside

    def _log_signal(self, run: Run, sig: signal.Signals, reason: str, group: bool, escaped: list[int]) -> None:
        self._bus.publish(RunSignalled(run.spec.task, run.spec.run_id, run.pid, sig.name, reason, group, escaped))

    def send(self, run: Run, sig: signal.Signals, reason: str,
             escaped: Iterable[int] | None = None, *, group: bool = True) -> list[int]:
        """Signal the run's process group, plus every process carrying its run id outside the group.

        `escaped` short-cuts the /proc scan when the caller scanned for many runs at once;
        `group=False` leaves the group alone. Returns the processes signalled outside the group.
        """
        group_hit = self._signal_group(run, sig) if group else False
        pids = list(escaped) if escaped is not None else pids_by_run_id((run.spec.run_id,), self.uids()).get(
            run.spec.run_id, [])
        outside = self._signal_outside(run, sig, pids)
        self._log_signal(run, sig, reason, group_hit, outside)
        return outside

    def kill_all(self, runs: Iterable[Run], reason: str) -> None:
        """SIGKILL the runs' process groups and every process that carries one of their run ids.

        The groups go first: once a KILL is pending for a process, the kernel fails its forks, so a
        scan of /proc made afterwards sees every process that left a group. Those are killed one by
        one, and one of them may fork between the scan and its own KILL: after a pass that killed
        any, /proc is scanned again, at most KILL_RESCANS times. A pass that kills nobody ends it.
        """
        by_id = {run.spec.run_id: run for run in runs}
        group_hit = {rid: self._signal_group(run, signal.SIGKILL) for rid, run in by_id.items()}
        killed: set[int] = set()
        for rescan in range(KILL_RESCANS + 1):
            found = pids_by_run_id(by_id, self.uids(by_id.values()))
            any_killed = False
            for rid, run in by_id.items():
                outside = self._signal_outside(
                    run, signal.SIGKILL, [p for p in found.get(rid, ()) if p not in killed])
                if rescan == 0 or outside:
                    self._log_signal(run, signal.SIGKILL, reason, rescan == 0 and group_hit[rid], outside)
                killed.update(outside)
                any_killed = any_killed or bool(outside)
            if not any_killed:
                return
