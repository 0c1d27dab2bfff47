"""``goldkey insight show WHAT [TARGET]``: the insight API's reads from the command line.

Every read route under ``/api/v1/insights`` has its form here, printed as the same JSON: a
profile's churn / propensity reasons and recommendations, a SKU's similar items, the CLV and
lifecycle summaries, the affinity rules and category gaps, and the feedback topics and current
service alerts. Like the other insight commands it opens the data directory itself; with a server
running, use the API.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from goldkey.insight.cli import DataDir, Workspace, _open_gk


class Show(StrEnum):
    reasons = "reasons"
    recommendations = "recommendations"
    similar = "similar"
    clv_summary = "clv-summary"
    lifecycle_summary = "lifecycle-summary"
    rules = "rules"
    gaps = "gaps"
    feedback_topics = "feedback-topics"
    feedback_alerts = "feedback-alerts"


# what needs a TARGET argument, and what it is
_TARGET = {Show.reasons: "a profile id", Show.recommendations: "a profile id", Show.similar: "a SKU"}


def _read(gk: Any, ws: str, what: Show, target: str | None, scope: str, level: str, limit: int,
          category_a: str | None, category_b: str | None) -> Any:
    from goldkey.insight.affinity import AffinityService
    from goldkey.insight.churn_api import churn_service
    from goldkey.insight.clv_api import clv_service
    from goldkey.insight.lifecycle import LifecycleService
    from goldkey.insight.recommend import RecommendService
    from goldkey.insight.text_api import text_service

    if what is Show.reasons:
        return churn_service(gk).reasons(ws, target, gk.profiles)
    if what is Show.recommendations:
        return RecommendService.from_goldkey(gk).for_profile(ws, target)
    if what is Show.similar:
        return RecommendService.from_goldkey(gk).similar(ws, target, limit)
    if what is Show.clv_summary:
        return clv_service(gk).summary(ws)
    if what is Show.lifecycle_summary:
        return LifecycleService.from_goldkey(gk).summary(ws)
    if what is Show.rules:
        return AffinityService.from_goldkey(gk).rules(ws, scope=scope, level=level, limit=limit)  # type: ignore[arg-type]
    if what is Show.gaps:
        return AffinityService.from_goldkey(gk).gaps(ws, category_a=category_a, category_b=category_b)
    if what is Show.feedback_topics:
        return text_service(gk).topic_summary(ws)
    return {"alerts": text_service(gk).alerts(ws)}


def register(app: typer.Typer) -> None:
    """Add ``show`` to ``goldkey insight``."""

    @app.command("show")
    def show(
        what: Annotated[Show, typer.Argument(help="What to read.")],
        target: Annotated[str | None, typer.Argument(help="reasons / recommendations: a profile id; similar: a SKU.")]
        = None,
        workspace: Workspace = "",
        data_dir: DataDir = None,
        scope: Annotated[str, typer.Option("--scope", help="rules: basket or customer.")] = "basket",
        level: Annotated[str, typer.Option("--level", help="rules: sku or category.")] = "sku",
        limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="rules / similar: at most this many.")]
        = 20,
        category_a: Annotated[str | None, typer.Option("--category-a", help="gaps: bought this ...")] = None,
        category_b: Annotated[str | None, typer.Option("--category-b", help="gaps: ... never this.")] = None,
    ) -> None:
        """Read an insight result (JSON), as the API's read routes give it: reasons, recommendations,
        similar, clv-summary, lifecycle-summary, rules, gaps, feedback-topics, feedback-alerts."""
        if what in _TARGET and not target:
            typer.echo(f"error: show {what.value} needs {_TARGET[what]}", err=True)
            raise typer.Exit(1)
        out = _open_gk(data_dir, workspace, lambda gk, ws: _read(gk, ws, what, target, scope, level, limit,
                                                                  category_a, category_b))
        typer.echo(json.dumps(out, ensure_ascii=False, indent=2, default=str))
