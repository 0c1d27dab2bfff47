"""The models' refit schedule, run by the server.

Every model whose definition sets ``refit_every_hours`` (RFM, lifecycle and CLV by default every
24 hours; churn, propensity, clusters, cross-sell affinity, recommendations, feedback text and
named lookalike audiences when their definition asks) is fitted again on the same definition, as
of now, once that many hours have passed since its latest version. A thread of the server looks
every ``GOLDKEY_REFIT_CHECK_MINUTES`` (15; 0 turns the schedule off) at every workspace's models,
one model at a time: a refit that fails is logged, reported under the model's own name and tried
again at the next look; it never stops the models after it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from goldkey.insight.registry import ModelRegistry, is_due
from goldkey.rules.values import as_of_utc

log = logging.getLogger(__name__)

# the keys a feedback-text version adds to its definition (the shipped models, the lexicon's hash)
_TEXT_RECORDED = ("models", "lexicon")


def _refitters(gk: Any) -> dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[[str, dict[str, Any]], Any]]]:
    """Per model kind: how its stored definition reads (the kind's own parser, so a default such as
    RFM's 24 hours applies to versions stored before the field existed) and how it runs again."""
    from goldkey.insight import affinity, clusters, clv, lifecycle, lookalike, recommend, rfm, text
    from goldkey.insight.churn import ChurnDefinition, ChurnService, PropensityDefinition

    churn = ChurnService.from_goldkey(gk)

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k not in _TEXT_RECORDED}

    return {
        rfm.MODEL_KIND: (rfm.parse_definition, lambda ws, d: rfm.RFMService.from_goldkey(gk).run(ws, d)),
        lifecycle.MODEL_KIND: (lifecycle.parse_definition,
                               lambda ws, d: lifecycle.LifecycleService.from_goldkey(gk).run(ws, d)),
        clv.MODEL_KIND: (clv.parse_definition, lambda ws, d: clv.CLVService.from_goldkey(gk).run(ws, d)),
        "churn": (ChurnDefinition.model_validate, churn.train_churn),
        "propensity": (PropensityDefinition.model_validate, churn.train_propensity),
        clusters.MODEL_KIND: (clusters.parse_definition,
                              lambda ws, d: clusters.ClusterService.from_goldkey(gk).run(ws, d)),
        affinity.MODEL_KIND: (affinity.parse_definition,
                              lambda ws, d: affinity.AffinityService.from_goldkey(gk).run(ws, d)),
        recommend.MODEL_KIND: (recommend.parse_definition,
                               lambda ws, d: recommend.RecommendService.from_goldkey(gk).train(ws, d)),
        text.MODEL_KIND: (lambda d: text.parse_definition(strip(d)),
                          lambda ws, d: text.FeedbackTextService.from_goldkey(gk).analyze(ws, d)),
        lookalike.MODEL_KIND: (lookalike.parse_request,
                               lambda ws, d: lookalike.LookalikeService.from_goldkey(gk).find(ws, d)),
    }


def refit_due(gk: Any, now: datetime | None = None, workspace_id: str | None = None) -> list[dict[str, Any]]:
    """Refit every model of every workspace (or of ``workspace_id``) that is due; return one entry
    per refit (workspace, model, new version), or per failure (with the error)."""
    t = as_of_utc(now)
    registry = ModelRegistry(gk.settings.data_dir / "models")
    kinds = _refitters(gk)
    done: list[dict[str, Any]] = []
    ids = [workspace_id] if workspace_id else [str(w["workspace_id"]) for w in gk.workspaces.list()]
    for ws in ids:
        for meta in registry.list(ws):
            known = kinds.get(str(meta.get("kind")))
            if known is None:
                continue
            parse, run = known
            name = str(meta.get("name"))
            try:
                d = parse(meta["definition"])
                if not is_due(meta["created_at"], d.refit_every_hours, t):
                    continue
                rep = run(ws, d.model_copy(update={"as_of": None}))  # as of now, not the last run's date
            except Exception as exc:  # noqa: BLE001 - one model's failure never stops the others
                log.exception("scheduled refit of %s in %s failed", name, ws)
                done.append({"workspace_id": ws, "model": name, "error": str(exc)[:300]})
                continue
            version = rep.get("version") if isinstance(rep, dict) else getattr(rep, "version", None)
            done.append({"workspace_id": ws, "model": name, "version": version})
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
