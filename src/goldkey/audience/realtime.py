"""Real-time segment membership: profiles touched by new events are re-evaluated within about a
second, with the in-memory evaluator over their stored values and whole event history, and every
change becomes a ``segment_entered`` / ``segment_exited`` event.

The writer hands each durable commit's profiles to ``RealtimeSegments.notify`` (a set insert, so
ingest never waits); a background thread takes the accumulated set every ``interval`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from goldkey.audience.segments import SegmentService

log = logging.getLogger(__name__)


class RealtimeSegments:
    """Background re-evaluation of real-time segments for recently changed profiles."""

    def __init__(self, segments: SegmentService, interval: float = 1.0, max_batch: int = 5000,
                 refresh_minutes: float = 0.0) -> None:
        self.segments = segments
        self.interval = interval
        self.max_batch = max_batch
        self.refresh_minutes = refresh_minutes
        self._last_schedule = time.monotonic()
        self._pending: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0
        self.changes = 0
        self.last_error: str | None = None

    def attach(self, writer: Any) -> None:
        """Listen to the writer's commits."""
        writer.listeners.append(self._on_commit)

    def _on_commit(self, stored: list[tuple[str, str, Any]]) -> None:
        with self._lock:
            for ws, pid, _ in stored:
                self._pending.setdefault(ws, set()).add(pid)

    def notify(self, ws: str, pids: list[str]) -> None:
        """Mark profiles changed by something other than events (imports, tags, traits)."""
        with self._lock:
            self._pending.setdefault(ws, set()).update(pids)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="goldkey-realtime-segments", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def run_once(self) -> int:
        """Process what is pending now; returns how many membership changes were applied."""
        with self._lock:
            pending, self._pending = self._pending, {}
        n = 0
        todo = list(pending.items())
        for k, (ws, pids) in enumerate(todo):
            ids = sorted(pids)
            for i in range(0, len(ids), self.max_batch):
                try:
                    changed = self.segments.reevaluate(ws, ids[i : i + self.max_batch])
                except Exception:
                    # retried next round: nothing is forgotten
                    self.notify(ws, ids[i:])
                    for ws2, rest in todo[k + 1 :]:
                        self.notify(ws2, list(rest))
                    raise
                for entered, exited in changed.values():
                    n += entered + exited
        self.rounds += 1
        self.changes += n
        return n

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception as exc:  # keep going: the next round retries the next changes
                self.last_error = repr(exc)
                log.exception("real-time segment round failed")
            if self.refresh_minutes > 0 and time.monotonic() - self._last_schedule >= 60:
                self._last_schedule = time.monotonic()
                try:
                    self.refresh_due()
                except Exception as exc:
                    self.last_error = repr(exc)
                    log.exception("scheduled segment refresh failed")

    def refresh_due(self) -> int:
        """Materialise every segment whose last compute is older than ``refresh_minutes`` (each
        compute records a size snapshot, so the size history fills in by itself)."""
        due = self.segments.due_for_refresh(self.refresh_minutes)
        for ws, sid in due:
            if self._stop.is_set():
                break
            self.segments.compute(ws, sid)
        return len(due)
