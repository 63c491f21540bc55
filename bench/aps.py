"""APScheduler 3.x as a benchmark contender: a BlockingScheduler that runs a torch task file.

Usage: aps.py TASKFILE

Every task of the file (read like the floor reads it, bench/floor.py) becomes a job with a
CronTrigger built from its six-field, seconds-first schedule (second, minute, hour, day, month,
day_of_week, in UTC). The job starts the task's command as the floor does (stdin /dev/null, stdout and
stderr PIPE'd, a session of its own) with TORCH_SCHEDULED_AT set to the exact run time the scheduler
fired it for; finished children are reaped at each start, the rest at exit.

The scheduled time: APScheduler hands a job's run times to the executor, not to the job. The executor
here is the default thread pool (10 workers) with one change, in `_do_submit_job`: the run times are
executed one by one through APScheduler's own `run_job` (misfire check, events), each with its run
time in a thread-local that the job reads. Job defaults: coalesce off, max_instances 1,000 (never
skips), misfire_grace_time 1 h; everything else is APScheduler's default (memory job store, logging
unconfigured, so only warnings reach stderr).

SIGUSR2 re-reads the task file in a thread and adds the jobs of new task names with add_job (which
wakes the scheduler). SIGTERM shuts the scheduler down. stdout gets the same JSON events as the
floor's: `ready` once the scheduler has started (every job's first run time computed) and
`reload.applied`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import EVENT_SCHEDULER_STARTED, SchedulerEvent
from apscheduler.executors.base import run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from floor import Task, load_tasks, log_event

_fired_for = threading.local()  # .run_time: the run time the current job thread is executing


def _run_stamped(job: Job, jobstore_alias: str, run_times: list[datetime], logger_name: str) -> list[Any]:
    events: list[Any] = []
    for run_time in run_times:
        _fired_for.run_time = run_time
        events += run_job(job, jobstore_alias, [run_time], logger_name)
    return events


class StampedThreadPoolExecutor(ThreadPoolExecutor):  # type: ignore[misc]
    """The default executor, except that a job can read the run time it was fired for."""

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        # BasePoolExecutor._do_submit_job with _run_stamped in place of run_job.
        def callback(f: Future[list[Any]]) -> None:
            exc = f.exception()
            if exc:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, f.result())

        f = self._pool.submit(_run_stamped, job, job._jobstore_alias, run_times, self._logger.name)
        f.add_done_callback(callback)


def trigger(schedule: str) -> CronTrigger:
    """A CronTrigger from a six-field, seconds-first schedule, in UTC."""
    second, minute, hour, day, month, dow = schedule.split()
    if dow != "*" and any(c.isdigit() for c in dow):
        # APScheduler numbers days of the week from Monday = 0, cron from Sunday = 0.
        raise ValueError(f"numeric day of week is not translated: {schedule!r}")
    return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=dow,
                       timezone="UTC")


class Spawner:
    """The job function: start the task's command for the run time being executed; reap finished ones."""

    def __init__(self) -> None:
        self.path_env = os.environ.get("PATH", "/usr/bin:/bin")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.lock = threading.Lock()

    def fire(self, command: list[str], env: dict[str, str]) -> None:
        stamp = _fired_for.run_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        p = subprocess.Popen(command, env={"PATH": self.path_env, **env, "TORCH_SCHEDULED_AT": stamp},
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
        with self.lock:
            self.procs = [q for q in self.procs if q.poll() is None]
            self.procs.append(p)

    def wait(self) -> None:
        with self.lock:
            for p in self.procs:
                p.wait()


def main() -> None:
    path = sys.argv[1]
    scheduler = BlockingScheduler(
        executors={"default": StampedThreadPoolExecutor()},
        job_defaults={"coalesce": False, "max_instances": 1000, "misfire_grace_time": 3600},
        timezone="UTC")
    spawner = Spawner()
    names: set[str] = set()

    def add(tasks: list[Task]) -> list[str]:
        added = [t for t in tasks if t.name not in names]
        for t in added:
            scheduler.add_job(spawner.fire, trigger(t.schedule), args=(t.command, t.env), id=t.name, name=t.name)
            names.add(t.name)
        return [t.name for t in added]

    def reload() -> None:
        t0 = datetime.now(UTC)
        added = add(load_tasks(path))
        log_event("reload.applied", added=added, parse_ms=(datetime.now(UTC) - t0).total_seconds() * 1000)

    def started(_: SchedulerEvent) -> None:
        log_event("ready", tasks=len(names))

    add(load_tasks(path))
    scheduler.add_listener(started, EVENT_SCHEDULER_STARTED)
    signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=reload, daemon=True).start())
    signal.signal(signal.SIGTERM, lambda *_: scheduler.shutdown(wait=False))
    scheduler.start()  # returns after shutdown
    spawner.wait()


if __name__ == "__main__":
    main()
