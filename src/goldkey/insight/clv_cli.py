"""``goldkey insight clv``: fit the CLV model (BG/NBD + Gamma-Gamma) and write its scores.

Not yet registered: call ``register(insight_app)`` (``goldkey.insight.clv_cli``) where
``goldkey.cli`` adds the ``insight`` typer. Like ``goldkey insight rfm`` the command opens the data
directory itself, so it runs while no server owns it (with a server running, use the API:
``POST /api/v1/insights/clv/run``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from goldkey.insight.cli import DataDir, Workspace, _open_gk, read_definition

console = Console(stderr=True)


def _open_and_run(data_dir: Path | None, workspace: str, fn: Callable[[Any, str], Any]) -> Any:
    """Run ``fn(clv_service, workspace_id)`` on the opened data directory; errors exit 1."""
    from goldkey.insight.clv_api import clv_service

    return _open_gk(data_dir, workspace, lambda gk, ws: fn(clv_service(gk), ws), api="/api/v1/insights/clv/run")


def clv(
    workspace: Workspace = "",
    data_dir: DataDir = None,
    as_of: Annotated[datetime | None, typer.Option("--as-of", help="Score as of this instant (UTC).")] = None,
    horizon_days: Annotated[
        int, typer.Option("--horizon-days", help="CLV and expected purchases over the next N days.")
    ] = 365,
    definition: Annotated[
        Path | None, typer.Option("--definition", help="A JSON file with the full CLV definition (wins).")
    ] = None,
) -> None:
    """Fit CLV (BG/NBD + Gamma-Gamma) and write scores.clv_*; prints the report (JSON)."""
    d: dict[str, Any] = {"horizon_days": horizon_days}
    if as_of is not None:
        d["as_of"] = as_of.isoformat()
    if definition is not None:
        d = read_definition(definition)

    def fit(svc: Any, ws: str) -> Any:
        from goldkey.progress import progress_bar

        # the stages CLVService.run reports: read, BG/NBD, Gamma-Gamma, score, holdout check, save, write
        with progress_bar(console, "CLV: {task.description}") as bar:
            task = bar.add_task("starting", total=7)
            return svc.run(ws, d, progress=lambda msg: bar.update(task, advance=1, description=msg))

    report = _open_and_run(data_dir, workspace, fit)
    m = report["metrics"]
    console.print(f"[green]CLV v{report['version']}[/green]: {report['profiles']} customers "
                  f"({report['repeat_buyers']} repeat buyers), total CLV {m['clv_total']:,.2f}, "
                  f"mean P(alive) {m['p_alive_mean']:.3f}, {report['took_ms']} ms")
    typer.echo(json.dumps(report, ensure_ascii=False, indent=2))


def register(app: typer.Typer) -> None:
    """Add the ``clv`` command to the ``goldkey insight`` typer (once)."""
    if any(c.name == "clv" for c in app.registered_commands):
        return
    app.command("clv")(clv)
