"""``goldkey insight feedback``: analyse the workspace's feedback texts (sentiment, topics, alerts).

Not yet registered: add ``register(insight_app)`` in ``goldkey.insight.cli`` (or ``goldkey.cli``).
Like ``goldkey insight rfm`` the command opens the data directory itself, so it runs while no
server owns it (with a server running, use ``POST /api/v1/insights/feedback/analyze``).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from goldkey.insight.cli import DataDir, Workspace, _open_gk

console = Console(stderr=True)



def _open_and_run(data_dir: Path | None, workspace: str, fn: Any) -> Any:
    from goldkey.insight.text_api import text_service

    return _open_gk(data_dir, workspace, lambda gk, ws: fn(text_service(gk), ws),
                    api="POST /api/v1/insights/feedback/analyze")


def feedback(
    workspace: Workspace = "",
    data_dir: DataDir = None,
    as_of: Annotated[datetime | None, typer.Option("--as-of", help="Analyse as of this instant (UTC).")] = None,
    lookback_days: Annotated[int, typer.Option("--lookback-days", help="Feedback of the last N days counts.")] = 365,
    alert_window_days: Annotated[
        int, typer.Option("--alert-window-days", help="Two unresolved contacts on a topic within N days: alert.")
    ] = 30,
) -> None:
    """Score sentiment and topics of every feedback; write feedback_insights, the feedback_sentiment /
    pain_points / pain_<topic> / service_alert tags and Service Alert events; prints the report."""
    d: dict[str, Any] = {"lookback_days": lookback_days, "alert_window_days": alert_window_days}
    if as_of is not None:
        d["as_of"] = as_of.isoformat()

    def run(svc: Any, ws: str) -> Any:
        with Progress(TextColumn("scoring feedback"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("score", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return svc.analyze(ws, d, progress=progress)

    report = _open_and_run(data_dir, workspace, run)
    typer.echo(json.dumps(report, ensure_ascii=False, indent=2))


def register(app: typer.Typer) -> None:
    """Add the ``feedback`` command to the ``goldkey insight`` Typer app."""
    app.command("feedback")(feedback)
