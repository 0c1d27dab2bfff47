"""``goldkey insight ...``: run the RFM model and list fitted models.

Not yet registered: add ``app.add_typer(insight_app, name="insight")`` in ``goldkey.cli``. Like
``goldkey traits`` these commands open the data directory themselves, so they run while no server
owns it (with a server running, use the API: ``/api/v1/insight``).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

insight_app = typer.Typer(help="Customer insight: RFM and value tiers, fitted models.", no_args_is_help=True)
console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default ./goldkey-data, or GOLDKEY_DATA_DIR).", show_default=False
    ),
]
Workspace = Annotated[str, typer.Option("--workspace", "-w", help="Workspace id or name.")]


def _run(data_dir: Path | None, workspace: str, fn: Any) -> Any:
    from goldkey.cli import _settings, _workspace_id
    from goldkey.core.errors import GoldkeyError
    from goldkey.insight.api import rfm_service
    from goldkey.runtime import DataDirInUse, Goldkey

    try:
        gk = Goldkey.open(_settings(data_dir))
    except DataDirInUse as exc:
        console.print(f"[red]error:[/red] {exc} (with a server running, use its API: /api/v1/insight)")
        raise typer.Exit(1) from None
    try:
        return fn(rfm_service(gk), _workspace_id(gk, workspace))
    except GoldkeyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        gk.close()


@insight_app.command("rfm")
def rfm(
    workspace: Workspace = "",
    data_dir: DataDir = None,
    as_of: Annotated[datetime | None, typer.Option("--as-of", help="Score as of this instant (UTC).")] = None,
    lookback_days: Annotated[int, typer.Option("--lookback-days", help="Orders of the last N days count.")] = 365,
    definition: Annotated[
        Path | None, typer.Option("--definition", help="A JSON file with the full RFM definition (wins).")
    ] = None,
) -> None:
    """Fit RFM and write scores.rfm_* and the rfm_group / rfm_value_tier tags; prints the report."""
    d: dict[str, Any] = {"lookback_days": lookback_days}
    if as_of is not None:
        d["as_of"] = as_of.isoformat()
    if definition is not None:
        d = json.loads(definition.read_text(encoding="utf-8"))
    report = _run(data_dir, workspace, lambda svc, ws: svc.run(ws, d))
    typer.echo(json.dumps(report, ensure_ascii=False, indent=2))


@insight_app.command("models")
def models(workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """List the latest fitted version of every model (JSON)."""
    out = _run(data_dir, workspace, lambda svc, ws: svc.registry.list(ws))
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2))
