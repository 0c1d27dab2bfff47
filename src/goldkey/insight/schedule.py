"""The models' refit schedule, run by the server.

Every model whose definition sets ``refit_every_hours`` (RFM and lifecycle by default every 24 hours;
CLV, churn and propensity models when their definition asks) is fitted again on the same definition,
as of now, once that many hours have passed since its latest version. A thread of the server looks
every ``GOLDKEY_REFIT_CHECK_MINUTES`` (15; 0 turns the schedule off) at every workspace's models. A
refit that fails is logged and tried again at the next look; it never stops the others.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)


def refit_due(gk: Any, now: datetime | None = None) -> list[dict[str, Any]]:
    """Refit every model of every workspace that is due; return one entry per refit (workspace,
    model, new version), or per failure (with the error)."""
    from goldkey.insight.churn import ChurnService
    from goldkey.insight.clv import CLVService
    from goldkey.insight.lifecycle import LifecycleService
    from goldkey.insight.rfm import RFMService

    services = {"rfm": RFMService.from_goldkey(gk), "lifecycle": LifecycleService.from_goldkey(gk),
                "clv": CLVService.from_goldkey(gk), "churn": ChurnService.from_goldkey(gk)}
    done: list[dict[str, Any]] = []
    for w in gk.workspaces.list():
        ws = str(w["workspace_id"])
        for name, svc in services.items():
            try:
                got = svc.refit_if_due(ws, now=now)
            except Exception as exc:  # noqa: BLE001 - one model's failure never stops the others
                log.exception("scheduled refit of %s in %s failed", name, ws)
                done.append({"workspace_id": ws, "model": name, "error": str(exc)[:300]})
                continue
            for rep in got if isinstance(got, list) else [got] if got else []:
                done.append({"workspace_id": ws, "model": rep.get("model", name), "version": rep.get("version")})
    return done


class RefitScheduler:
    """The thread that runs :func:`refit_due` every ``interval_s`` seconds (0: never)."""

    def __init__(self, gk: Any, interval_s: float) -> None:
        self.gk = gk
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0

    def start(self) -> None:
        if self.interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="goldkey-refit-schedule", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                for r in refit_due(self.gk):
                    if "error" not in r:
                        log.info("refitted %s of %s: version %s", r["model"], r["workspace_id"], r["version"])
            except Exception:  # noqa: BLE001 - the schedule keeps going
                log.exception("the refit schedule's look failed")
            self.runs += 1
