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
from rich.markup import escape

insight_app = typer.Typer(help="Customer insight: RFM and value tiers, fitted models.", no_args_is_help=True)
console = Console(stderr=True)


def read_definition(path: Path) -> dict[str, Any]:
    """The JSON object of a ``--definition`` file; a missing, unreadable or malformed file, or one
    that holds no object, is an ``error:`` line and exit code 1, never a traceback."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        console.print("[red]error:[/red] " + escape(f"cannot read the definition {path}: {exc}"))
        raise typer.Exit(1) from None
    if not isinstance(loaded, dict):
        console.print("[red]error:[/red] " + escape(f"the definition {path} must hold a JSON object"))
        raise typer.Exit(1)
    return loaded


def read_lines(path: Path) -> list[str]:
    """The non-empty lines of a text file given on the command line (exit 1 when unreadable)."""
    try:
        return [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        console.print("[red]error:[/red] " + escape(f"cannot read {path}: {exc}"))
        raise typer.Exit(1) from None


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default ./goldkey-data, or GOLDKEY_DATA_DIR).", show_default=False
    ),
]
Workspace = Annotated[str, typer.Option("--workspace", "-w", help="Workspace id or name.")]


def _open_gk(data_dir: Path | None, workspace: str, fn: Any, api: str = "/api/v1/insights") -> Any:
    """``goldkey.cli.open_data_dir`` with the insight API as the route to use beside a server."""
    from goldkey.cli import open_data_dir

    return open_data_dir(data_dir, workspace, fn, api)


def _run(data_dir: Path | None, workspace: str, fn: Any) -> Any:
    from goldkey.insight.api import rfm_service

    return _open_gk(data_dir, workspace, lambda gk, ws: fn(rfm_service(gk), ws))


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
        d = read_definition(definition)

    def fit(svc: Any, ws: str) -> Any:
        from goldkey.progress import progress_bar

        with progress_bar(console, "RFM: {task.description}") as bar:
            task = bar.add_task("starting", total=3)
            return svc.run(ws, d, progress=lambda what, done, total: bar.update(
                task, description=what, completed=done, total=total))

    report = _run(data_dir, workspace, fit)
    typer.echo(json.dumps(report, ensure_ascii=False, indent=2))


@insight_app.command("models")
def models(
    name: Annotated[str | None, typer.Argument(help="One model: its versions (or --version N).")] = None,
    version: Annotated[int | None, typer.Option("--version", help="With NAME: this version only.")] = None,
    workspace: Workspace = "",
    data_dir: DataDir = None,
) -> None:
    """List the latest fitted version of every model, or NAME's versions (definition, metrics) as JSON."""
    from goldkey.core.errors import NotFound

    def read(svc: Any, ws: str) -> Any:
        reg = svc.registry
        if name is None:
            return reg.list(ws)
        if version is not None:
            return reg.load(ws, name, version, kind=reg.kind_of(ws, name)).meta()
        found = reg.all_versions(ws, name)
        if not found:
            raise NotFound(f"model {name!r} has no fitted version yet")
        return found

    typer.echo(json.dumps(_run(data_dir, workspace, read), ensure_ascii=False, indent=2))


@insight_app.command("refit-due")
def refit_due_command(workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Refit, as of now, every model of the workspace whose refit_every_hours have passed (what the
    server's schedule does every GOLDKEY_REFIT_CHECK_MINUTES); prints one line per refit as JSON.
    Exit 1 when a refit failed (the others still run)."""
    import logging

    from goldkey.insight.schedule import refit_due

    # the schedule logs a failed refit with its traceback for the server's log; here the error line
    # below says it (without a handler, logging's last resort would print the traceback)
    logging.getLogger("goldkey.insight.schedule").addHandler(logging.NullHandler())
    done = _open_gk(data_dir, workspace, lambda gk, ws: refit_due(gk, workspace_id=ws))
    typer.echo(json.dumps(done, ensure_ascii=False, indent=2))
    failed = [d for d in done if "error" in d]
    for d in failed:
        console.print("[red]error:[/red] " + escape(f"refit of {d['model']} failed: {d['error']}"))
    if failed:
        raise typer.Exit(1)


@insight_app.command("evaluation")
def evaluation(
    name: Annotated[str, typer.Argument(help="A churn or propensity model, e.g. churn or propensity_solution.")],
    workspace: Workspace = "",
    data_dir: DataDir = None,
) -> None:
    """A churn / propensity model's holdout metrics and lift table, every version (JSON; the latest
    version's lift table also on stderr)."""
    from goldkey.insight.churn import model_evaluation
    from goldkey.insight.evaluation import format_lift_table

    out = _run(data_dir, workspace, lambda svc, ws: model_evaluation(svc.registry, ws, name))
    latest = out["versions"][-1]
    console.print(f"{name} v{latest['version']}: holdout AUC {latest['auc']:.4f}  top-decile lift "
                  f"{latest['top_decile_lift']:.2f}")
    console.print(format_lift_table(latest["lift_table"]), markup=False, highlight=False)
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2))
