"""``goldkey insight lifecycle|clusters|funnel|cohorts|channels``.

Not yet registered: call ``register(insight_app)`` (``goldkey.insight.cli``) once. Like ``goldkey
insight rfm`` these commands open the data directory themselves, so they run while no server owns
it (with a server running, use the API: ``/api/v1/insights``). Model runs show a progress bar over
their phases; every command prints its result as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from goldkey.insight.cli import DataDir, Workspace, _open_gk, read_definition

console = Console(stderr=True)

AsOf = Annotated[datetime | None, typer.Option("--as-of", help="As of this instant (UTC; default now).")]
Definition = Annotated[Path | None, typer.Option("--definition", help="A JSON file with the full request (wins).")]


def _open(data_dir: Path | None, workspace: str, fn: Callable[[Any, str], Any]) -> Any:
    return _open_gk(data_dir, workspace, fn)


def _with_bar(label: str, phases: tuple[str, ...], run: Callable[[Callable[[str], None]], Any]) -> Any:
    from goldkey.progress import progress_bar

    with progress_bar(console, f"{label}: {{task.description}}") as bar:
        task = bar.add_task(phases[0], total=len(phases))

        def step(done: str) -> None:
            i = phases.index(done)
            bar.update(task, advance=1, description=phases[i + 1] if i + 1 < len(phases) else "done")

        return run(step)


def _request(definition: Path | None, base: dict[str, Any]) -> dict[str, Any]:
    if definition is not None:
        return read_definition(definition)
    return {k: v for k, v in base.items() if v is not None}


def _echo(out: Any) -> None:
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2, default=str))


def register(app: typer.Typer) -> None:
    """Add the lifecycle, clustering and report commands to ``app`` (``goldkey insight``)."""

    @app.command("lifecycle")
    def lifecycle(workspace: Workspace = "", data_dir: DataDir = None, as_of: AsOf = None,
                  definition: Definition = None,
                  summary: Annotated[bool, typer.Option("--summary", help="Print the latest stages only.")] = False
                  ) -> None:
        """Stage every customer (new, active, growing, at risk, dormant, churned, won back) and write
        the lifecycle_stage tag, scores.lc_* and Lifecycle Stage Changed events."""
        from goldkey.insight.lifecycle import LifecycleService

        if summary:
            _echo(_open(data_dir, workspace, lambda gk, ws: LifecycleService.from_goldkey(gk).summary(ws)))
            return
        d = _request(definition, {"as_of": as_of.isoformat() if as_of else None})

        def go(gk: Any, ws: str) -> Any:
            svc = LifecycleService.from_goldkey(gk)
            return _with_bar("lifecycle", svc.PHASES, lambda step: svc.run(ws, d, progress=step))

        _echo(_open(data_dir, workspace, go))

    @app.command("clusters")
    def clusters(workspace: Workspace = "", data_dir: DataDir = None, as_of: AsOf = None,
                 definition: Definition = None,
                 k: Annotated[int | None, typer.Option("--k", help="Fix k (default: chosen by silhouette).")] = None,
                 show: Annotated[bool, typer.Option("--show", help="Print the latest clustering only.")] = False,
                 save_segment: Annotated[str | None, typer.Option(
                     "--save-segment", help="Save this cluster (e.g. c1) of the latest run as a segment.")] = None
                 ) -> None:
        """Cluster the customers (k-means over standardised value and behaviour features) and write
        the cluster tag; or show the latest clustering, or save one cluster as a segment."""
        from goldkey.insight.clusters import ClusterService

        if show:
            _echo(_open(data_dir, workspace, lambda gk, ws: ClusterService.from_goldkey(gk).describe_latest(ws)))
            return
        if save_segment:
            _echo(_open(data_dir, workspace,
                        lambda gk, ws: ClusterService.from_goldkey(gk).save_segment(ws, save_segment, actor="cli")))
            return
        d = _request(definition, {"as_of": as_of.isoformat() if as_of else None, "k": k})

        def go(gk: Any, ws: str) -> Any:
            svc = ClusterService.from_goldkey(gk)
            return _with_bar("clusters", svc.PHASES, lambda step: svc.run(ws, d, progress=step))

        _echo(_open(data_dir, workspace, go))

    @app.command("funnel")
    def funnel(steps: Annotated[list[str], typer.Argument(help="Event names, in order (2-10).")],
               workspace: Workspace = "", data_dir: DataDir = None,
               start: Annotated[datetime | None, typer.Option("--start", help="Step 1 at or after (UTC).")] = None,
               end: Annotated[datetime | None, typer.Option("--end", help="Step 1 before (UTC; default now).")] = None,
               window_days: Annotated[float, typer.Option("--window-days", help="Conversion window.")] = 7,
               breakdown: Annotated[str | None, typer.Option(
                   "--breakdown", help="properties.<name> or context.<path> of the step-1 event.")] = None,
               definition: Definition = None) -> None:
        """Conversion funnel over a sequence of events (per-step profiles, conversion %, median time)."""
        from goldkey.insight.reports import funnel as run

        req = _request(definition, {"steps": [{"event": s} for s in steps], "window_days": window_days,
                                    "start": start.isoformat() if start else None,
                                    "end": end.isoformat() if end else None, "breakdown": breakdown})
        _echo(_open(data_dir, workspace, lambda gk, ws: run(gk.analytical, ws, req)))

    @app.command("cohorts")
    def cohorts(workspace: Workspace = "", data_dir: DataDir = None,
                cohort_by: Annotated[str, typer.Option("--by", help="first_order or first_event.")] = "first_order",
                activity: Annotated[str, typer.Option("--activity", help="order or event.")] = "order",
                period: Annotated[str, typer.Option("--period", help="month or week.")] = "month",
                periods: Annotated[int, typer.Option("--periods", help="Offsets 0..N-1.")] = 12,
                tz: Annotated[str, typer.Option(
                    "--tz", help="Time zone of the periods (default: the workspace's, its send policy's).")] = "",
                end: Annotated[datetime | None, typer.Option(
                    "--end", help="Activity before this wall-clock time in --tz (default now).")] = None) -> None:
        """Cohort retention table (counts and % per period offset)."""
        from goldkey.insight.reports import cohorts as run
        from goldkey.insight.reports import workspace_timezone

        req = _request(None, {"cohort_by": cohort_by, "activity": activity, "period": period, "periods": periods,
                              "tz": tz or None, "end": end.isoformat() if end else None})
        _echo(_open(data_dir, workspace, lambda gk, ws: run(gk.analytical, ws, req, workspace_timezone(gk, ws))))

    @app.command("channels")
    def channels(workspace: Workspace = "", data_dir: DataDir = None,
                 touch: Annotated[str, typer.Option("--touch", help="event or profile.")] = "event",
                 cost: Annotated[list[str] | None, typer.Option(
                     "--cost", help="Spend per channel, repeatable: wechat:5000 or baidu/cpc:800.")] = None) -> None:
        """Acquisition-channel quality by first-touch UTM source / medium."""
        from goldkey.insight.reports import channels as run

        costs: dict[str, float] = {}
        for c in cost or []:
            key, _, val = c.rpartition(":")
            try:
                costs[key] = float(val)
            except ValueError:
                key = ""
            if not key:
                console.print("[red]error:[/red] " + escape(f"--cost {c!r} must look like source:amount"))
                raise typer.Exit(1)
        req = {"touch": touch, "costs": costs}
        _echo(_open(data_dir, workspace, lambda gk, ws: run(gk.engine, gk.analytical, ws, req)))
