"""``goldkey insight churn`` and ``goldkey insight propensity``: train, score and write back.

Not yet registered: add ``churn_cli.register(insight_app)`` in ``goldkey.insight.cli``. Like the
other insight commands they open the data directory themselves (with a server running, use the API:
``/api/v1/insights``). A progress bar follows the stages; the report (metrics and the lift table)
is printed as JSON on stdout.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from goldkey.insight.cli import DataDir, Workspace, _open_gk, read_definition

console = Console(stderr=True)

AsOf = Annotated[datetime | None, typer.Option("--as-of", help="Score as of this instant (UTC); labels end here.")]
Horizon = Annotated[int, typer.Option("--horizon-days", help="Label window after the cutoff (days).")]
Lookback = Annotated[int, typer.Option("--lookback-days", help="Feature window before the cutoff (days).")]
Definition = Annotated[Path | None, typer.Option("--definition", help="A JSON file with the full definition (wins).")]
Traits = Annotated[list[str] | None, typer.Option(
    "--trait", help="A computed trait to add as a feature, as of the cutoff (repeatable).")]
Attributes = Annotated[list[str] | None, typer.Option(
    "--attribute", help="A profile attribute to add as a feature: its current value, so one fixed before the "
                        "label window (repeatable).")]


def _train(data_dir: Path | None, workspace: str, method: str, d: dict[str, Any]) -> dict[str, Any]:
    from goldkey.insight.churn_api import churn_service
    from goldkey.insight.evaluation import format_lift_table
    from goldkey.progress import progress_bar

    def go(gk: Any, ws: str) -> dict[str, Any]:
        svc = churn_service(gk)
        with progress_bar(console, "{task.description}") as bar:
            task = bar.add_task("starting", total=7)

            def progress(what: str, done: int, total: int) -> None:
                bar.update(task, description=what, completed=done, total=total)

            report: dict[str, Any] = getattr(svc, method)(ws, d, progress=progress)
        ev = svc.evaluation(ws, report["model"])
        table = next(v for v in ev["versions"] if v["version"] == report["version"])["lift_table"]
        console.print(f"holdout AUC {report['auc']:.4f}  PR-AUC {report['pr_auc']:.4f}  Brier {report['brier']:.4f}  "
                      f"top-decile lift {report['top_decile_lift']:.2f}")
        console.print(format_lift_table(table), markup=False, highlight=False)
        return report

    return _open_gk(data_dir, workspace, go)


def _definition(definition: Path | None, base: dict[str, Any], as_of: datetime | None,
                traits: list[str] | None = None, attributes: list[str] | None = None) -> dict[str, Any]:
    if definition is not None:
        return read_definition(definition)
    if as_of is not None:
        base["as_of"] = as_of.isoformat()
    if traits:
        base["traits"] = traits
    if attributes:
        base["attributes"] = attributes
    return base


def churn(
    workspace: Workspace = "",
    data_dir: DataDir = None,
    as_of: AsOf = None,
    horizon_days: Horizon = 90,
    lookback_days: Lookback = 365,
    orders_only: Annotated[bool, typer.Option("--orders-only", help="Activity = orders (default: orders or events).")]
    = False,
    trait: Traits = None,
    attribute: Attributes = None,
    definition: Definition = None,
) -> None:
    """Train the churn model, write scores.churn_risk and the reasons; prints the report."""
    d = _definition(definition, {"horizon_days": horizon_days, "lookback_days": lookback_days,
                                 "activity": "orders" if orders_only else "orders_and_events"}, as_of,
                    trait, attribute)
    typer.echo(json.dumps(_train(data_dir, workspace, "train_churn", d), ensure_ascii=False, indent=2))


def propensity(
    workspace: Workspace = "",
    data_dir: DataDir = None,
    event: Annotated[str | None, typer.Option("--event", help="Target: the customer does this event.")] = None,
    category: Annotated[str | None, typer.Option("--category", help="Target: the customer buys this category.")]
    = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name suffix ([a-z0-9_]).")] = None,
    as_of: AsOf = None,
    horizon_days: Horizon = 90,  # the API's default too
    lookback_days: Lookback = 365,
    trait: Traits = None,
    attribute: Attributes = None,
    definition: Definition = None,
) -> None:
    """Train a propensity model for an event or a category, write scores.propensity_<name>."""
    base: dict[str, Any] = {"horizon_days": horizon_days, "lookback_days": lookback_days}
    for k, v in (("event", event), ("category", category), ("name", name)):
        if v is not None:
            base[k] = v
    d = _definition(definition, base, as_of, trait, attribute)
    typer.echo(json.dumps(_train(data_dir, workspace, "train_propensity", d), ensure_ascii=False, indent=2))


def register(app: typer.Typer) -> None:
    """Add the ``churn`` and ``propensity`` commands to ``goldkey insight``."""
    app.command("churn")(churn)
    app.command("propensity")(propensity)
