"""The one thread that writes STATE/history.db: a bounded queue in, batched transactions out.

The event loop must never wait for the disk, so `put` only appends to a bounded queue and the
writer's own thread does everything else: creating and opening the database, migrating it,
batching rows into one transaction each, and surviving what disks do (full, read-only, a corrupt
file, a file removed under it). History is worth less than scheduling: when it cannot be written,
rows are counted as `dropped`, the failure is reported, and the writer tries again later.

Reports go through `on_error(message)`, called from the writer's thread, one line each, starting
with a stable word so the daemon can tell them apart:

    history.open_failed:  the database could not be opened (rows are dropped until it can)
    history.corrupt:      the file was not a database, or was damaged; it was renamed aside
    history.replaced:     the file was removed or replaced under the writer; it was opened again
    history.no_wal:       the filesystem refused WAL mode; history works, but readers block the writer
    history.write_failed: a batch could not be committed (its rows are dropped)
    history.row_failed:   one row was refused (e.g. a duplicate run id); the rest of its batch is kept
    history.prune_failed: old rows could not be deleted (retention); rows are still written, and
                          pruning is tried again after `prune_seconds`
    history.recovered:    writing works again after one of the failures above

Each distinct failure is reported at most once a minute, so a full disk does not flood the log.

Retention lives in this thread too, so the database keeps a single writer. Two limits apply:
rows older than `max_age_days` (by started_at; ended_at for a row without one), and per task
everything beyond its newest `keep` rows (runs and non-runs together; `set_retention` hands the
limits over, and until it is first called only the age limit applies). A row still `running` is
never deleted. Pruning happens in passes: one when the database is opened, an age pass every
`prune_seconds`, and a keep check of a task once it has inserted a tenth of its `keep` since its
last one (so a check, which walks `keep` index entries, costs about ten entries per row inserted,
whatever `keep` is; the task may hold up to 10% more than `keep` in between). A pass is cut into
steps of one short transaction each (at most `prune_batch_rows` deleted), taken only when the queue
is empty or right after a batch of rows was committed: rows never wait behind a big backlog.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from gotorch import trustedfs
from gotorch.history import schema
from gotorch.history.rows import NonRun, Row, RunAdoptedRow, RunBegan, RunFinished, RunProcess, RunsLost
from gotorch.threads import signals_blocked

FILE_MODE = 0o640
# Short: the only other users of the database are readers (`torch history`), which WAL lets run
# beside the writer; a lock held longer than this is someone else's mistake, and waiting for it
# would only let the queue fill up.
BUSY_TIMEOUT_MS = 1000
REPORT_EVERY = 60.0  # seconds between two reports of the same failure
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_COMPANIONS = ("-wal", "-shm")  # SQLite's own files beside the database, in WAL mode
# Rows per task kept when set_retention names no other number (as a task's history_keep defaults).
DEFAULT_KEEP = 1000
# Rows deleted per pruning transaction. Measured with 8 KiB of output per row: 250 rows hold the
# write lock ~5 ms, 500 rows ~20 ms, 1000 rows ~40 ms; the lock should never be held long enough to
# delay the next batch of rows (or a reader's view of the newest ones) noticeably.
PRUNE_BATCH_ROWS = 250
PRUNE_SECONDS = 60.0  # between two age passes; and the wait before pruning again after a failure
_KEEP_SLACK = 10  # a task's keep is checked after keep / _KEEP_SLACK inserts (at least 1)
_SQLITE_INT_MAX = 2**63 - 1

_INSERT_BEGAN = """
INSERT OR REPLACE INTO runs (run_id, task, kind, trigger, attempt, scheduled_at, started_at, host, pid,
                             status, lateness_ms, generation, config_hash, requested_by)
VALUES (?, ?, 'run', ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)
"""
_UPDATE_FINISHED = """
UPDATE runs SET ended_at = ?, status = ?, exit_code = ?, signal = ?, duration_s = ?, cpu_s = ?, max_rss_kb = ?,
                output_head = ?, output_tail = ?, output_elided = ?, output_bytes = ?, dropped_bytes = ?, error = ?,
                reason = ?
WHERE run_id = ?
"""
_INSERT_FINISHED = """
INSERT OR REPLACE INTO runs (run_id, task, kind, trigger, scheduled_at, started_at, ended_at, host, status,
                             exit_code, signal, duration_s, cpu_s, max_rss_kb, generation, config_hash,
                             output_head, output_tail, output_elided, output_bytes, dropped_bytes, error, reason)
VALUES (?, ?, 'run', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# A run that began and finished within one batch: its one row at once (the batch commits as one
# transaction, so nobody could have seen it `running` anyway). At ten runs a second this halves the
# statements, and the writer's CPU with them.
_INSERT_WHOLE = """
INSERT OR REPLACE INTO runs (run_id, task, kind, trigger, attempt, scheduled_at, started_at, host, pid, status,
                             lateness_ms, generation, config_hash, requested_by, ended_at, exit_code, signal,
                             duration_s, cpu_s, max_rss_kb, output_head, output_tail, output_elided, output_bytes,
                             dropped_bytes, error, reason)
VALUES (?, ?, 'run', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_NONRUN = """
INSERT INTO runs (run_id, task, kind, scheduled_at, started_at, host, status, reason, detail,
                  missed_first, missed_last, missed_count, generation, config_hash)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_MARK_LOST = "UPDATE runs SET status = 'lost', ended_at = ?, error = ? WHERE status = 'running'"
_SET_PROCESS = "UPDATE runs SET proc_start = ?, pgid = ? WHERE run_id = ?"
# An adopted run keeps the row its own daemon wrote; one the crash left unwritten is inserted.
_INSERT_ADOPTED = """
INSERT OR IGNORE INTO runs (run_id, task, kind, trigger, attempt, scheduled_at, started_at, host, pid, pgid,
                            proc_start, status, generation, config_hash)
VALUES (?, ?, 'run', ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)
"""

# Retention. Each statement is served by an index (a test checks the query plans): rowid IN
# (... LIMIT ?) because SQLite is usually built without DELETE ... LIMIT.
_PRUNE_OLD = """
DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs WHERE started_at < ? AND status != 'running' LIMIT ?)
"""  # runs_by_time
_PRUNE_OLD_UNSTARTED = """
DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs WHERE started_at IS NULL AND ended_at < ?
                                                         AND status != 'running' LIMIT ?)
"""  # runs_by_time (started_at IS NULL); the writer itself never leaves started_at empty
# The started_at of a task's keep-th newest row: everything older goes. Walks `keep` entries of
# runs_by_task (a covering index: no table reads). Ties at the cutoff are all kept.
_KEEP_CUTOFF = "SELECT started_at FROM runs WHERE task = ? ORDER BY started_at DESC LIMIT 1 OFFSET ?"
_PRUNE_BEYOND = """
DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs WHERE task = ? AND started_at < ?
                                                         AND status != 'running' LIMIT ?)
"""  # runs_by_task
# The tasks that have rows, one index seek each (SELECT DISTINCT would read the whole index at once),
# starting after '' (task names are never empty: config.NAME_RE).
_NEXT_TASK = "SELECT task FROM runs WHERE task > ? ORDER BY task LIMIT 1"


# What one statement's values can make SQLite (or the sqlite3 module) refuse, the batch going on.
_REFUSED = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError)


class _Corrupt(Exception):
    """The database file is not a database, or is damaged."""


def _is_corrupt(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and (code & 0xFF) in (
        _SQLITE_CORRUPT, _SQLITE_NOTADB)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _bounded_output(row: RunFinished) -> tuple[bytes, bytes, int]:
    """Head and tail cut to the schema's sizes, with whatever was cut counted as elided.

    The recorder already keeps them within bounds; this keeps one oversized row from bloating the
    database if it ever does not, and keeps the byte accounting true when it happens.
    """
    head, tail = row.output_head, row.output_tail
    cut = max(0, len(head) - schema.HEAD_BYTES) + max(0, len(tail) - schema.TAIL_BYTES)
    if cut:
        head = head[:schema.HEAD_BYTES]
        tail = tail[-schema.TAIL_BYTES:]
    return head, tail, row.output_elided + cut


class HistoryWriter:
    """The one thread that writes the history database; `put` rows from anywhere, never blocking.

    Counters (`written`, `dropped`, `queued`, `commits`) may be read from any thread.
    """

    def __init__(self, path: Path, on_error: Callable[[str], None], *, max_queue: int = 10_000,
                 batch_rows: int = 500, batch_seconds: float = 1.0, retry_seconds: float = 5.0,
                 max_age_days: float = 90.0, prune_seconds: float = PRUNE_SECONDS,
                 prune_batch_rows: int = PRUNE_BATCH_ROWS, clock: Callable[[], float] = time.time) -> None:
        """Prepare a writer for the database at `path`; nothing is opened until `start`.

        `on_error` receives one-line reports from the writer's thread (see the module doc).
        A batch is committed when `batch_rows` rows are pending or `batch_seconds` after its first
        row; an unopenable database is tried again every `retry_seconds`.
        Rows older than `max_age_days` (0 or less: no age limit) are pruned at open and every
        `prune_seconds`, at most `prune_batch_rows` per transaction; `clock` says what time it is
        (Unix seconds) for the age limit.
        """
        self.path = Path(path)
        self._on_error = on_error
        self._batch_rows = max(1, batch_rows)
        self._batch_seconds = batch_seconds
        self._retry_seconds = retry_seconds
        self._max_age_s = max_age_days * 86400.0 if math.isfinite(max_age_days) and max_age_days > 0 else None
        self._prune_seconds = prune_seconds
        self._prune_batch = max(1, prune_batch_rows)
        self._clock = clock
        # None is only a wake-up call from close(); rows are never None.
        # SimpleQueue: its put is a few hundred nanoseconds of C, Queue's a few microseconds of Python
        # locks and conditions, paid twice a run on the loop. The bound is kept by `put` itself.
        self._queue: queue.SimpleQueue[Row | None] = queue.SimpleQueue()
        self._max_queue = max(1, max_queue)
        self._lock = threading.Lock()
        self._accepted = 0
        self._written = 0
        self._dropped = 0
        self._dropped_in_writer = 0  # of `_dropped`: rows accepted by put, then lost
        self._commits = 0
        self._pruned = 0
        self._prune_passes = 0
        # The newest set_retention, not yet taken by the writer thread (under _lock; the latest wins).
        self._retention_offer: tuple[dict[str, int], int] | None = None
        self._closing = threading.Event()
        self._wake = threading.Event()  # an open batch's early wake-up: full, or closing
        self._thread: threading.Thread | None = None
        # Writer-thread state only:
        self._db: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        self._wal_inode: tuple[int, int] | None = None  # the -wal file SQLite has open, once it exists
        self._next_open = 0.0
        self._reported: dict[str, float] = {}
        self._failing = False  # a failure was reported and no success since: report the recovery
        self._keep: dict[str, int] | None = None  # None until the first set_retention: no keep pruning
        self._default_keep = DEFAULT_KEEP
        self._grown: dict[str, int] = {}  # rows inserted per task since its last keep check
        self._to_check: set[str] = set()  # tasks due a keep check
        self._sweep_all = False  # every task in the database is due a keep check
        self._age_due = False
        self._next_age = 0.0  # monotonic time of the next age pass
        self._prune_hold = 0.0  # after a failure: no pass before this monotonic time
        self._pruning: Iterator[None] | None = None  # the pass under way, one step per next()

    # -- any thread -------------------------------------------------------------------------------

    @property
    def written(self) -> int:
        """Rows committed to the database."""
        with self._lock:
            return self._written

    @property
    def dropped(self) -> int:
        """Rows lost: refused by a full queue (or after close), or in a batch that could not be committed."""
        with self._lock:
            return self._dropped

    @property
    def queued(self) -> int:
        """Rows accepted by `put` and neither written nor dropped yet (in the queue or a pending batch)."""
        with self._lock:
            return self._accepted - self._written - self._dropped_in_writer

    @property
    def commits(self) -> int:
        """Transactions committed (one per batch of rows; pruning's own are not counted)."""
        with self._lock:
            return self._commits

    @property
    def pruned(self) -> int:
        """Rows deleted by retention (age and keep limits)."""
        with self._lock:
            return self._pruned

    @property
    def prune_passes(self) -> int:
        """Pruning passes completed (one at each open, then periodic and per-task ones)."""
        with self._lock:
            return self._prune_passes

    def set_retention(self, keep: Mapping[str, int], default_keep: int = DEFAULT_KEEP) -> None:
        """Hand the writer thread how many rows to keep per task (`default_keep` for tasks not named).

        Never blocks (a short lock): the limits are copied into a field the writer thread takes
        when it next wakes, rather than queued with the rows, so a full queue cannot lose them and
        only the latest call counts. Call it before or after `start`, and again after each reload;
        tasks whose limit went down are checked soon, the others when they next grow.
        """
        offer = ({name: _bounded_keep(n) for name, n in keep.items()}, _bounded_keep(default_keep))
        with self._lock:
            self._retention_offer = offer
        with contextlib.suppress(queue.Full):  # a wake-up call; a full queue wakes the thread anyway
            self._queue.put_nowait(None)

    def start(self) -> None:
        """Start the writer's thread, which opens (or creates) the database itself."""
        if self._thread is not None:
            raise RuntimeError("HistoryWriter.start() called twice")
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        with signals_blocked():
            self._thread.start()

    def put(self, row: Row) -> bool:
        """Queue `row` for writing; never blocks. False (and counted in `dropped`) if the queue is full."""
        if not self._closing.is_set() and self._queue.qsize() < self._max_queue:
            with self._lock:  # counted first, so `queued` never goes below zero
                self._accepted += 1
                full = self._accepted - self._written - self._dropped_in_writer >= self._batch_rows
            self._queue.put(row)
            if full:
                self._wake.set()  # a full batch is waiting: commit it now, not at its due time
            return True
        with self._lock:
            self._dropped += 1
        return False

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued, close the database and stop the thread, waiting at most `timeout` seconds.

        Returns False if the thread was still busy when the time ran out: it is a daemon thread, so
        it cannot hold up the process's exit, and whatever it had not written by then is lost.
        Rows still queued when the thread is gone (or was never started) are counted as dropped.
        """
        self._closing.set()
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            self._wake.set()
            thread.join(timeout)
            if thread.is_alive():
                return False
        self._drop_leftovers()
        return True

    def _drop_leftovers(self) -> None:
        while True:
            try:
                row = self._queue.get_nowait()
            except queue.Empty:
                return
            if row is not None:
                self._count_dropped(1)

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            self._dropped += n
            self._dropped_in_writer += n

    # -- the writer's thread ----------------------------------------------------------------------

    def _run(self) -> None:
        pending: list[Row] = []
        due = 0.0  # monotonic time at which the pending rows are committed
        try:
            self._open()
            while not self._closing.is_set():
                self._take_retention()
                timeout: float | None = None
                now = time.monotonic()
                if pending:
                    timeout = max(0.0, due - now)
                if self._db is None:
                    wait = max(0.0, self._next_open - now)
                    timeout = wait if timeout is None else min(timeout, wait)
                else:
                    prune_wait = self._prune_wait(now)
                    if prune_wait is not None:
                        timeout = prune_wait if timeout is None else min(timeout, prune_wait)
                if pending:
                    # A batch is open: sleep until it is due (or full, or the writer closes) and
                    # then take what came meanwhile at once. Waking for each row would have this
                    # thread contend for the GIL with the loop exactly while it starts a second's
                    # runs, which is when their rows arrive.
                    self._wake.wait(timeout)
                    self._wake.clear()
                    took = self._take_queued(pending)
                    row = pending[-1] if took else None
                else:
                    try:
                        row = self._queue.get(timeout=timeout)
                    except queue.Empty:
                        row = None
                    if row is not None:
                        due = time.monotonic() + _mid_second_delay(self._batch_seconds)
                        pending.append(row)
                        self._take_queued(pending)  # rows that came with it (their wake-up may be spent)
                if self._db is None and time.monotonic() >= self._next_open:
                    self._open()
                committed = False
                if pending and (len(pending) >= self._batch_rows or time.monotonic() >= due):
                    self._commit(pending)
                    pending = []
                    committed = True
                # One pruning step when nothing waits in the queue, or after a commit: under a steady
                # flow of rows, pruning still gets one step per batch.
                if row is None or committed:
                    self._prune_step()
            # Closing: one more try to open (the stop should not wait for the retry timer), then
            # write everything already queued. put() refuses new rows from now on.
            if self._db is None:
                self._open()
            while True:
                with contextlib.suppress(queue.Empty):
                    while len(pending) < self._batch_rows:
                        row = self._queue.get_nowait()
                        if row is not None:
                            pending.append(row)
                if not pending:
                    break
                self._commit(pending)
                pending = []
        except BaseException as exc:  # a bug here must not vanish silently with the thread
            self._count_dropped(len(pending))
            self._report("crashed", f"history.write_failed: the history writer stopped: {_one_line(exc)}", force=True)
            raise
        finally:
            self._close_db()

    def _take_queued(self, pending: list[Row]) -> int:
        """Move what is queued into `pending`, up to a full batch; return how many rows were taken."""
        took = 0
        with contextlib.suppress(queue.Empty):
            while len(pending) < self._batch_rows:
                row = self._queue.get_nowait()
                if row is not None:
                    pending.append(row)
                    took += 1
        return took

    def _report(self, key: str, message: str, *, force: bool = False) -> None:
        """Pass `message` to on_error, unless the failure `key` was reported less than a minute ago."""
        now = time.monotonic()
        last = self._reported.get(key)
        if not force and last is not None and now - last < REPORT_EVERY:
            return
        self._reported[key] = now
        # A failing reporter (the loop already closed, say) must not stop the writer.
        with contextlib.suppress(Exception):
            self._on_error(message)

    def _failed(self, key: str, message: str) -> None:
        self._failing = True
        self._report(key, message)

    def _succeeded(self) -> None:
        if self._failing:
            self._failing = False
            # Rate-limited too: a failure that comes and goes reports at most twice a minute.
            self._report("recovered", f"history.recovered: writing {self.path} again "
                                      f"({self.dropped} history rows dropped since torch started)")

    # -- opening ----------------------------------------------------------------------------------

    def _open(self) -> None:
        """Open the database, or report why not and schedule the next try; never raises OSError/sqlite3.Error."""
        self._next_open = time.monotonic() + self._retry_seconds
        try:
            try:
                self._db = self._connect()
            except _Corrupt as exc:
                aside = self._rename_aside()
                self._report("corrupt", f"history.corrupt: {self.path} is damaged ({exc}); moved it to "
                                        f"{aside.name} and started a new history", force=True)
                self._db = self._connect()
        except (OSError, sqlite3.Error, ValueError, trustedfs.Untrusted, _Corrupt) as exc:
            self._db = None
            self._failed("open:" + _one_line(exc), f"history.open_failed: cannot open {self.path}: "
                                                   f"{_one_line(exc)}; history rows are dropped until it "
                                                   f"can (trying again every {self._retry_seconds:g} s)")
            return
        self._succeeded()
        # A database just opened may hold anything (a long stop, another torch's limits): a full pass.
        self._age_due = True
        self._sweep_all = self._keep is not None
        self._grown.clear()
        self._prune_hold = 0.0
        self._next_age = time.monotonic() + self._prune_seconds

    def _prepare_file(self, path: Path, *, create: bool) -> tuple[int, int] | None:
        """Create (or check) one of the database's files without following a symlink; return its inode.

        A file torch creates gets exactly FILE_MODE, whatever the umask. An existing one must be a
        regular file of ours with a single link (trustedfs.open_state_file); its mode is left alone.
        """
        name = str(path)
        created = False
        try:
            if create:
                try:
                    fd = trustedfs.open_state_file(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
                    created = True
                except FileExistsError:
                    fd = trustedfs.open_state_file(name, os.O_RDWR)
            else:
                fd = trustedfs.open_state_file(name, os.O_RDWR)
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
                raise trustedfs.Untrusted(name, "is a symlink: torch does not write its state through symlinks",
                                          f"remove {name} (torch recreates it)") from None
            raise
        try:
            if created:
                os.fchmod(fd, FILE_MODE)
            st = os.fstat(fd)
        finally:
            # Closed before SQLite opens the file: closing any descriptor of a file drops every
            # POSIX lock this process holds on it, SQLite's included.
            os.close(fd)
        return st.st_dev, st.st_ino

    def _connect(self) -> sqlite3.Connection:
        """Make the files safely, connect, set WAL, check integrity and migrate; raise _Corrupt for a bad file."""
        inode = self._prepare_file(self.path, create=True)
        for suffix in _COMPANIONS:
            # Made (or checked) here so that SQLite, which follows symlinks, finds our own files.
            self._prepare_file(Path(f"{self.path}{suffix}"), create=True)
        self._prepare_file(Path(f"{self.path}-journal"), create=False)  # only used before WAL is on
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                             timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            try:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable to the last checkpoint
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                check = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                if _is_corrupt(exc):
                    raise _Corrupt(_one_line(exc)) from exc
                raise
            if check != "ok":
                raise _Corrupt(f"integrity check: {check}")
            # The path must still name the inode we checked: SQLite itself follows symlinks, so
            # this catches a swap between our checks and its open (only a trusted user could do it,
            # since the state directory is checked, but then nothing is written through it).
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) != inode:
                raise trustedfs.Untrusted(str(self.path), "was replaced while being opened", "check who else "
                                                                                            "writes there")
            if str(mode).lower() != "wal":
                self._report("nowal", f"history.no_wal: {self.path}: WAL mode is not available here "
                                      f"(journal mode {mode}); history still works, but readers block the writer")
            try:
                schema.migrate(db)
            except sqlite3.DatabaseError as exc:
                if _is_corrupt(exc):
                    raise _Corrupt(_one_line(exc)) from exc
                raise
        except BaseException:
            db.close()
            raise
        self._inode = inode
        return db

    def _rename_aside(self) -> Path:
        """Move the damaged database and its companions to `history.db.corrupt-<UTC time>` (kept, not deleted)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        suffixes = ("", *_COMPANIONS, "-journal")
        base = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 0
        while any(os.path.lexists(f"{base}{s}") for s in suffixes):
            n += 1
            base = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{n}")
        for s in suffixes:
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{self.path}{s}", f"{base}{s}")
        return base

    def _close_db(self) -> None:
        db, self._db, self._inode, self._wal_inode = self._db, None, None, None
        self._pruning = None  # its steps hold the old connection; the next open starts a full pass
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def _still_ours(self) -> bool:
        """Whether the path still names the file we have open (an admin may have removed or moved it).

        The -wal file too: SQLite keeps writing into a removed WAL it has open, where no reader
        finds the rows (and a crash loses them). Closing the connection checkpoints that WAL into
        the database through the descriptors it holds, so reopening loses nothing.
        """
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != self._inode:
            return False
        return self._wal_inode is None or _inode_of(f"{self.path}-wal") == self._wal_inode

    # -- writing ----------------------------------------------------------------------------------

    def _commit(self, batch: list[Row]) -> None:
        """Write `batch` in one transaction; on failure report it and count its rows as dropped."""
        if self._db is not None and not self._still_ours():
            self._close_db()
            self._report("replaced", f"history.replaced: {self.path} was removed or replaced; opening it again")
            self._open()
        db = self._db
        if db is None:
            self._count_dropped(len(batch))  # the open failure was reported already
            return
        applied = 0
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for item in _paired(batch):
                    applied += self._apply_one(db, item)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            self._count_dropped(len(batch))
            if _is_corrupt(exc):
                self._close_db()
                aside = self._rename_aside_safely()
                # Reported whatever the rate limit says, as when it is found on open: history was lost.
                self._report("corrupt", f"history.corrupt: {self.path} is damaged ({_one_line(exc)}); "
                                        f"{len(batch)} rows dropped; moved it to {aside} and starting a new "
                                        "history", force=True)
                self._open()
                return
            self._failed("write:" + _one_line(exc), f"history.write_failed: cannot write to {self.path}: "
                                                    f"{_one_line(exc)}; {len(batch)} rows dropped (the next "
                                                    "batches will try again)")
            return
        self._wal_inode = _inode_of(f"{self.path}-wal")
        with self._lock:
            self._written += applied
            self._dropped += len(batch) - applied
            self._dropped_in_writer += len(batch) - applied
            self._commits += 1
        self._succeeded()

    def _rename_aside_safely(self) -> str:
        try:
            return self._rename_aside().name
        except OSError as exc:
            return f"nowhere ({_one_line(exc)})"

    def _apply_one(self, db: sqlite3.Connection, row: Row | _Whole) -> int:
        """Apply one row (or a whole run); how many rows that was, 0 if refused (reported, the batch goes on).

        SQLite undoes just the failing statement on a constraint error, so one bad row (a duplicate
        run id, a value of the wrong type) costs only itself. Errors of the database itself
        (full, I/O, corrupt) are raised and fail the whole batch.
        """
        if isinstance(row, _Whole):
            try:
                self._apply_whole(db, row)
                return 2
            except _REFUSED:  # one of the two is at fault: as rows of their own, the other is still kept
                return self._apply_one(db, row.began) + self._apply_one(db, row.finished)
        try:
            self._apply(db, row)
        except _REFUSED as exc:
            self._failed("row:" + type(exc).__name__, f"history.row_failed: {type(row).__name__} "
                                                      f"{getattr(row, 'run_id', '')} not recorded: {_one_line(exc)}")
            return 0
        return 1

    def _apply_whole(self, db: sqlite3.Connection, whole: _Whole) -> None:
        b, f = whole.began, whole.finished
        head, tail, elided = _bounded_output(f)
        db.execute(_INSERT_WHOLE, (b.run_id, b.task, b.trigger, b.attempt, b.scheduled_at, b.started_at, b.host,
                                   b.pid, f.status, b.lateness_ms, b.generation, b.config_hash, b.requested_by,
                                   f.ended_at, f.exit_code, f.signal, f.duration_s, f.cpu_s, f.max_rss_kb, head,
                                   tail, elided, f.output_bytes, f.dropped_bytes, f.error, f.reason))
        self._grew(b.task)

    def _apply(self, db: sqlite3.Connection, row: Row) -> None:
        """The SQL for one row value."""
        if isinstance(row, RunBegan):
            db.execute(_INSERT_BEGAN, (row.run_id, row.task, row.trigger, row.attempt, row.scheduled_at,
                                       row.started_at, row.host, row.pid, row.lateness_ms, row.generation,
                                       row.config_hash, row.requested_by))
            self._grew(row.task)
        elif isinstance(row, RunFinished):
            head, tail, elided = _bounded_output(row)
            cur = db.execute(_UPDATE_FINISHED, (row.ended_at, row.status, row.exit_code, row.signal, row.duration_s,
                                                row.cpu_s, row.max_rss_kb, head, tail, elided, row.output_bytes,
                                                row.dropped_bytes, row.error, row.reason, row.run_id))
            if cur.rowcount == 0:  # no RunBegan row: the spawn failed, or its RunBegan was dropped
                db.execute(_INSERT_FINISHED, (row.run_id, row.task, row.trigger, row.scheduled_at,
                                              row.ended_at - row.duration_s, row.ended_at, row.host, row.status,
                                              row.exit_code, row.signal, row.duration_s, row.cpu_s, row.max_rss_kb,
                                              row.generation, row.config_hash, head, tail, elided,
                                              row.output_bytes, row.dropped_bytes, row.error, row.reason))
                self._grew(row.task)
        elif isinstance(row, NonRun):
            db.execute(_INSERT_NONRUN, (row.run_id, row.task, row.kind, row.scheduled_at, row.at, row.host,
                                        row.kind, row.reason, row.detail, row.missed_first, row.missed_last,
                                        row.missed_count, row.generation, row.config_hash))
            self._grew(row.task)
        elif isinstance(row, RunProcess):
            db.execute(_SET_PROCESS, (row.proc_start, row.pgid, row.run_id))
        elif isinstance(row, RunsLost):
            if row.keep:
                marks = ",".join("?" * len(row.keep))
                db.execute(f"{_MARK_LOST} AND run_id NOT IN ({marks})", (row.ended_at, row.error, *row.keep))
            else:
                db.execute(_MARK_LOST, (row.ended_at, row.error))
        elif isinstance(row, RunAdoptedRow):
            if db.execute(_INSERT_ADOPTED, (row.run_id, row.task, row.trigger, row.attempt, row.scheduled_at,
                                            row.started_at, row.host, row.pid, row.pid, row.proc_start,
                                            row.generation, row.config_hash)).rowcount:
                self._grew(row.task)
        else:
            raise sqlite3.ProgrammingError(f"not a history row: {row!r}")

    # -- retention (the writer's thread) ----------------------------------------------------------

    def _take_retention(self) -> None:
        """Adopt the limits set_retention offered, if any; mark the tasks whose limit went down."""
        with self._lock:
            offer, self._retention_offer = self._retention_offer, None
        if offer is None:
            return
        keep, default = offer
        old, old_default = self._keep, self._default_keep
        self._keep, self._default_keep = keep, default
        if old is None or default < old_default:
            # Tasks named nowhere (removed ones) are only found in the database itself.
            self._sweep_all = self._db is not None
            if old is None:
                self._grown.clear()
            return
        for name in keep.keys() | old.keys():
            if keep.get(name, default) < old.get(name, old_default):
                self._to_check.add(name)

    def _keep_of(self, task: str) -> int:
        return (self._keep or {}).get(task, self._default_keep)

    def _grew(self, task: str) -> None:
        """Count a row inserted for `task`; mark it due a keep check after a tenth of its keep."""
        if self._keep is None:
            return  # the first set_retention sweeps every task anyway
        n = self._grown.get(task, 0) + 1
        if n >= max(1, self._keep_of(task) // _KEEP_SLACK):
            self._to_check.add(task)
            n = 0
        self._grown[task] = n

    def _prune_wait(self, now: float) -> float | None:
        """Seconds until pruning needs the thread (0: a pass is under way or due now); None: never."""
        if self._pruning is not None:
            return 0.0
        if now < self._prune_hold:
            return self._prune_hold - now
        if self._age_due or self._sweep_all or self._to_check:
            return 0.0
        return max(0.0, self._next_age - now) if self._max_age_s is not None else None

    def _prune_step(self) -> None:
        """Do one bounded step of pruning (one short transaction at most), starting a pass if one is due."""
        db = self._db
        if db is None:
            return
        if self._pruning is None:
            now = time.monotonic()
            if now < self._prune_hold:
                return
            if now >= self._next_age:
                self._age_due = self._age_due or self._max_age_s is not None
                self._next_age = now + self._prune_seconds
            if not (self._age_due or self._sweep_all or self._to_check):
                return
            tasks: Iterable[str] | None = None if self._sweep_all else sorted(self._to_check)
            self._pruning = self._prune_pass(db, self._age_due, tasks if self._keep is not None else ())
            self._age_due = self._sweep_all = False
            self._to_check = set()
        try:
            next(self._pruning)
        except StopIteration:
            self._pruning = None
            with self._lock:
                self._prune_passes += 1
        except Exception as exc:  # pruning is housekeeping: whatever goes wrong, rows are still written
            self._pruning = None
            # Whatever the failed pass had to do is done by a full pass, after a pause.
            self._age_due = self._max_age_s is not None
            self._sweep_all = self._keep is not None
            self._prune_hold = time.monotonic() + self._prune_seconds
            self._report("prune:" + _one_line(exc), f"history.prune_failed: cannot delete old rows from "
                                                    f"{self.path}: {_one_line(exc)}; trying again in "
                                                    f"{self._prune_seconds:g} s")

    def _prune_pass(self, db: sqlite3.Connection, age: bool, tasks: Iterable[str] | None) -> Iterator[None]:
        """The steps of one pass: the age limit, then the keep limit of `tasks` (None: every task found)."""
        if age and self._max_age_s is not None:
            cutoff = self._clock() - self._max_age_s
            for sql in (_PRUNE_OLD, _PRUNE_OLD_UNSTARTED):
                yield from self._delete_batches(db, sql, (cutoff,))
        for task in (self._tasks_in(db) if tasks is None else tasks):
            found = db.execute(_KEEP_CUTOFF, (task, self._keep_of(task) - 1)).fetchone()
            yield
            if found is not None and found[0] is not None:
                yield from self._delete_batches(db, _PRUNE_BEYOND, (task, found[0]))

    def _tasks_in(self, db: sqlite3.Connection) -> Iterator[str]:
        found = db.execute(_NEXT_TASK, ("",)).fetchone()
        while found is not None:
            yield found[0]
            found = db.execute(_NEXT_TASK, (found[0],)).fetchone()

    def _delete_batches(self, db: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> Iterator[None]:
        """Run `sql` (which deletes at most its last parameter's rows), one transaction a step, until it runs dry."""
        while True:
            db.execute("BEGIN IMMEDIATE")
            try:
                deleted = db.execute(sql, (*params, self._prune_batch)).rowcount
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            with self._lock:
                self._pruned += deleted
            yield
            if deleted < self._prune_batch:
                return


class _Whole:
    """A run whose RunBegan and RunFinished are in the same batch: written as one row."""

    __slots__ = ("began", "finished")

    def __init__(self, began: RunBegan, finished: RunFinished) -> None:
        self.began, self.finished = began, finished


def _paired(batch: list[Row]) -> list[Row | _Whole]:
    """`batch` with each run that began and finished in it as one item, at its RunBegan's place.

    Its place, not its RunFinished's: rows about the run in between (RunProcess: its process start
    time) update the row after it is written, as they did. The result is the same table as applying
    the rows one by one.
    """
    items: list[Row | _Whole | None] = list(batch)
    began: dict[str, int] = {}
    for i, row in enumerate(batch):
        if isinstance(row, RunBegan):
            began[row.run_id] = i
        elif isinstance(row, RunFinished):
            j = began.pop(row.run_id, None)
            if j is not None:
                b = items[j]
                assert isinstance(b, RunBegan)
                items[j] = _Whole(b, row)
                items[i] = None
    return [item for item in items if item is not None]


def _bounded_keep(n: int) -> int:
    # At least the newest row, and a number SQLite can bind (an OFFSET beyond int64 would raise).
    return min(max(1, int(n)), _SQLITE_INT_MAX)


def _inode_of(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _mid_second_delay(batch_seconds: float) -> float:
    """Seconds until the next commit: about `batch_seconds`, landing half-way between two seconds.

    Runs start on second boundaries, so "1 s after the first row" would commit right on the next
    boundary, and the commit's Python work would compete with that second's fires for the GIL.
    """
    if batch_seconds < 1.0:  # too short to choose where in the second it falls
        return batch_seconds
    now = time.time()
    # The .5 mark of the second that holds now + batch_seconds - 0.5: a delay in (batch_seconds - 1, batch_seconds].
    return math.floor(now + batch_seconds - 0.5) + 0.5 - now
