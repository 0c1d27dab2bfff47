"""``goldkey insight affinity | recommend | lookalike``: cross-sell from the command line.

Not yet registered: call ``register(insight_app)`` in ``goldkey.insight.cli`` (or ``goldkey.cli``).
Like the other insight commands these open the data directory themselves, so they run while no
server owns it (with a server running, use the API: ``/api/v1/insights``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from goldkey.insight.cli import DataDir, Workspace, _open_gk, read_definition, read_lines
from goldkey.progress import progress_bar

console = Console(stderr=True)

AsOf = Annotated[datetime | None, typer.Option("--as-of", help="Use orders up to this instant (UTC).")]


def _run(data_dir: Path | None, workspace: str, label: str, fn: Callable[[Any, str, Any], Any]) -> Any:
    """Open the instance, run ``fn(gk, workspace_id, progress)`` under a progress bar, close."""

    def go(gk: Any, ws: str) -> Any:
        with progress_bar(console, label + " {task.description}") as bar:
            task = bar.add_task("", total=1)

            def progress(done: int, total: int, what: str) -> None:
                bar.update(task, completed=done, total=total, description=what)

            return fn(gk, ws, progress)

    return _open_gk(data_dir, workspace, go)


def _definition(d: dict[str, Any], file: Path | None) -> dict[str, Any]:
    return read_definition(file) if file is not None else d


def _echo(out: Any) -> None:
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2, default=str))


def register(app: typer.Typer) -> None:
    """Add the ``affinity``, ``recommend`` and ``lookalike`` commands to ``app`` (goldkey insight)."""

    @app.command("affinity")
    def affinity_cmd(
        workspace: Workspace = "",
        data_dir: DataDir = None,
        as_of: AsOf = None,
        min_support: Annotated[float, typer.Option("--min-support", help="Minimum itemset support.")] = 0.01,
        min_confidence: Annotated[float, typer.Option("--min-confidence", help="Minimum confidence.")] = 0.05,
        top: Annotated[int, typer.Option("--top", help="Rules to print per scope/level.")] = 5,
        definition: Annotated[Path | None, typer.Option("--definition", help="JSON definition file (wins).")] = None,
    ) -> None:
        """Mine association rules and category gaps (a new affinity model version); prints the
        report, the top rules by lift and the largest "bought A, never B" gaps."""
        from goldkey.insight.affinity import LEVELS, SCOPES, AffinityService

        d: dict[str, Any] = {"min_support": min_support, "min_confidence": min_confidence}
        if as_of is not None:
            d["as_of"] = as_of.isoformat()
        full = _definition(d, definition)

        def run(gk: Any, ws: str, progress: Any) -> dict[str, Any]:
            svc = AffinityService.from_goldkey(gk)
            rep = svc.run(ws, full, progress=progress)
            rep["top_rules"] = {f"{s}_{lv}": svc.rules(ws, scope=s, level=lv, limit=top)["rules"]  # type: ignore[arg-type]
                                for s in SCOPES for lv in LEVELS}
            rep["top_gaps"] = svc.gaps(ws)["gaps"][:top]
            return rep

        _echo(_run(data_dir, workspace, "affinity", run))

    @app.command("recommend")
    def recommend_cmd(
        workspace: Workspace = "",
        data_dir: DataDir = None,
        as_of: AsOf = None,
        method: Annotated[str, typer.Option("--method", help="auto, popularity, cosine or ease.")] = "auto",
        test_days: Annotated[int, typer.Option("--test-days", help="Evaluation: last N days are the test.")] = 90,
        top_n: Annotated[int, typer.Option("--top-n", help="Recommendations written per customer.")] = 10,
        definition: Annotated[Path | None, typer.Option("--definition", help="JSON definition file (wins).")] = None,
    ) -> None:
        """Train and evaluate recommendations, write each customer's top-N and next best product."""
        from goldkey.insight.recommend import RecommendService

        d: dict[str, Any] = {"method": method, "test_days": test_days, "top_n": top_n}
        if as_of is not None:
            d["as_of"] = as_of.isoformat()
        full = _definition(d, definition)
        _echo(_run(data_dir, workspace, "recommend",
                   lambda gk, ws, p: RecommendService.from_goldkey(gk).train(ws, full, p)))

    @app.command("lookalike")
    def lookalike_cmd(
        workspace: Workspace = "",
        data_dir: DataDir = None,
        segment: Annotated[str | None, typer.Option("--segment", help="Seed: a segment id.")] = None,
        profiles: Annotated[Path | None, typer.Option("--profiles", help="Seed: a file of profile ids, one a line.")
                            ] = None,
        top_n: Annotated[int, typer.Option("--top-n", help="Lookalikes to return.")] = 100,
        method: Annotated[str, typer.Option("--method", help="elkan_noto or bagging.")] = "elkan_noto",
        as_of: AsOf = None,
        name: Annotated[str | None, typer.Option(
            "--name", help="Keep the audience as model lookalike_NAME (scores.lookalike_NAME on the top N).")] = None,
        refit_every_hours: Annotated[int | None, typer.Option(
            "--refit-every-hours", help="With --name: find the audience again this often.")] = None,
    ) -> None:
        """Score every customer against a seed audience; prints the validation and the top N (JSON)."""
        from goldkey.insight.lookalike import LookalikeService

        req: dict[str, Any] = {"top_n": top_n, "method": method}
        if name is not None:
            req["name"] = name
        if refit_every_hours is not None:
            req["refit_every_hours"] = refit_every_hours
        if segment is not None:
            req["segment_id"] = segment
        if profiles is not None:
            req["profile_ids"] = read_lines(profiles)
        if as_of is not None:
            req["as_of"] = as_of.isoformat()
        _echo(_run(data_dir, workspace, "lookalike",
                   lambda gk, ws, p: LookalikeService.from_goldkey(gk).find(ws, req, p)))
