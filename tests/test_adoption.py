"""adoption.match: which of a crashed daemon's runs are alive (pure: rows and a /proc snapshot in)."""

from __future__ import annotations

import calendar

from gotorch.adoption import OpenRun, Proc, match

T0 = 1_800_000_000.0
STATE = "/var/lib/torch"


def row(run_id: str, pid: int | None, proc_start: int | None = 500, started_at: float | None = T0,
        task: str = "backup") -> OpenRun:
    return OpenRun(run_id, task, pid, started_at, proc_start, "schedule", 1, T0)


def proc(pid: int, start: int = 500, epoch: float = T0, key: str | None = None, state: str = "S",
         session: int | None = None, uid: int = 0, task: str | None = "backup") -> Proc:
    return Proc(pid, uid, state, pid if session is None else session, start, epoch, key, task,
                None if key is None else "2027-01-15T08:00:00Z", STATE)


def nothing_known(_ids: list[str]) -> set[str]:
    return set()


def root_tasks(task: str) -> int | None:
    return 0 if task == "backup" else None


def test_a_live_process_with_the_recorded_pid_and_start_time_is_adopted() -> None:
    found = match([row("r1", 42)], [proc(42)], nothing_known, root_tasks)
    assert [(s.run_id, s.pid, s.recorded) for s in found.survivors] == [("r1", 42, True)] and not found.lost


def test_a_reused_pid_with_another_start_time_is_lost() -> None:
    found = match([row("r1", 42)], [proc(42, start=900, key="r1")], nothing_known, root_tasks)
    assert not found.survivors and [r.run_id for r in found.lost] == ["r1"]


def test_a_zombie_or_a_missing_process_is_lost() -> None:
    found = match([row("r1", 42), row("r2", 43)], [proc(42, state="Z")], nothing_known, root_tasks)
    assert not found.survivors and {r.run_id for r in found.lost} == {"r1", "r2"}


def test_same_pid_and_ticks_in_another_boot_is_lost_unless_it_carries_the_key() -> None:
    other_boot = proc(42, epoch=T0 + 3600)
    assert match([row("r1", 42)], [other_boot], nothing_known, root_tasks).lost
    # The wall clock was stepped meanwhile: the key still says it is the run.
    stepped = proc(42, epoch=T0 + 3600, key="r1")
    assert match([row("r1", 42)], [stepped], nothing_known, root_tasks).survivors


def test_a_row_without_start_time_needs_the_run_key() -> None:
    assert match([row("r1", 42, proc_start=None)], [proc(42, key="r1")], nothing_known, root_tasks).survivors
    assert match([row("r1", 42, proc_start=None)], [proc(42, key="r9")], nothing_known, root_tasks).lost


def test_an_unrecorded_run_is_found_by_its_key_as_its_session_leader() -> None:
    procs = [proc(50, start=600, key="new"), proc(51, start=601, key="new", session=50),
             proc(60, start=700, key="new")]  # a later setsid'd grandchild: not the run
    found = match([], procs, nothing_known, root_tasks, STATE)
    assert [(s.run_id, s.pid, s.recorded, s.trigger) for s in found.survivors] == [("new", 50, False, "schedule")]
    assert found.survivors[0].scheduled_at == calendar.timegm((2027, 1, 15, 8, 0, 0))


def test_a_key_whose_run_ended_is_not_adopted() -> None:
    """A process left behind by a run that ended (`nohup x &` after setsid) is no run."""
    found = match([], [proc(50, key="old")], lambda ids: {"old"} & set(ids), root_tasks, STATE)
    assert not found.survivors


def test_a_process_of_another_user_cannot_pose_as_a_run() -> None:
    """Only the uid the named task runs as counts: another user cannot hold a root task back."""
    assert not match([], [proc(50, key="x", uid=1000)], nothing_known, root_tasks, STATE).survivors
    assert not match([], [proc(50, key="x", task="unknown")], nothing_known, root_tasks, STATE).survivors


def test_a_run_of_another_daemon_on_the_host_is_not_adopted() -> None:
    """Several daemons (state directories) may share a host: each adopts only its own runs."""
    assert match([], [proc(50, key="x")], nothing_known, root_tasks, STATE).survivors
    assert not match([], [proc(50, key="x")], nothing_known, root_tasks, "/srv/other-torch").survivors
