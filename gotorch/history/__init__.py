"""Run history: every run and every non-run in SQLite (STATE/history.db).

schema   the tables, their version and the forward migrations
rows     what the recorder hands the writer: one insert or update per fact
writer   the one thread that writes (batched commits, bounded queue, never blocks the loop)
recorder the event-bus subscriber that turns events into rows (in the loop)
query    read-only queries for `torch history`, `torch logs`, `torch why`
"""

from dataclasses import dataclass

DB_NAME = "history.db"  # in the daemon's state directory (gotorch.daemon.Paths.history)


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """The daemon's history options (`torch start --history-days`); no settings at all is `--no-history`."""

    max_age_days: float = 90.0  # rows older than this are pruned; 0 keeps them (history_keep still applies)


DEFAULT_SETTINGS = HistorySettings()
