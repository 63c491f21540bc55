"""Watch the task file for edits: in place, rename-over (editors, git checkout) and delete+create.

We watch the file's directory, not the file: a rename-over replaces the inode a file watch would
follow. The watchdog thread only posts to the event loop; debouncing happens in the loop, so a
burst of events (write, chmod, rename) becomes a single reload.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from gotorch.threads import signals_blocked

DEBOUNCE = 0.5
# Reading the file (our own reload) produces "opened"/"closed_no_write": they must not trigger anything.
RELEVANT = {"created", "modified", "moved", "deleted", "closed"}


class _Handler(FileSystemEventHandler):
    def __init__(self, names: set[str], post: Callable[[], None]) -> None:
        self.names = names
        self.post = post

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in RELEVANT or event.is_directory:
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(p and Path(str(p)).name in self.names for p in paths):
            self.post()


class FileWatcher:
    """Calls `on_change()` in the loop, debounced, after the watched file changed in any way."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: Path, on_change: Callable[[], None],
                 debounce: float = DEBOUNCE) -> None:
        self.loop = loop
        self.path = path
        self.on_change = on_change
        self.debounce = debounce
        self.mode = "inotify"
        self._timer: asyncio.TimerHandle | None = None
        self._observer: Any = None

    def start(self) -> str:
        """Start watching; fall back to polling if inotify is unavailable. Returns the mode used."""
        # A symlinked task file (/etc/torch/tasks.yaml -> /srv/tasks-repo/tasks.yaml) changes where
        # the link points to: watch the target's directory too.
        watched = {self.path.parent: {self.path.name}}
        target = self.path.resolve()
        watched.setdefault(target.parent, set()).add(target.name)
        # watchdog starts threads in the constructor, in schedule() and in start(): all inherit the mask.
        with signals_blocked():
            try:
                obs = Observer()
                for directory, names in watched.items():
                    obs.schedule(_Handler(names, self._post), str(directory), recursive=False)
                obs.start()
            except OSError:
                obs = PollingObserver(timeout=1)
                for directory, names in watched.items():
                    obs.schedule(_Handler(names, self._post), str(directory), recursive=False)
                obs.start()
                self.mode = "polling"
        self._observer = obs
        return self.mode

    def _post(self) -> None:  # watchdog thread
        self.loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:  # loop
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.debounce, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.on_change()

    def stop(self) -> None:
        """Stop the observer thread and any pending debounce."""
        if self._timer is not None:
            self._timer.cancel()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
