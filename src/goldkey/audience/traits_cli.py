"""``goldkey traits ...``: define, list, show, delete and compute computed traits.

Registered in ``goldkey.cli`` with ``app.add_typer(traits_app, name="traits")``. Like ``goldkey
import`` these commands open the data directory themselves, so they run while no server owns it
(with a server running, use the API: ``/api/v1/traits``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from goldkey.progress import progress_bar

traits_app = typer.Typer(help="Computed traits: aggregates of events per profile.", no_args_is_help=True)
console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default ./goldkey-data, or GOLDKEY_DATA_DIR).", show_default=False
    ),
]
Workspace = Annotated[str, typer.Option("--workspace", "-w", help="Workspace id or name.")]


def _fail(message: str, code: int = 1) -> None:
    console.print("[red]error:[/red] " + escape(f"{message}"))
    raise typer.Exit(code)


@contextmanager
def _opened(data_dir: Path | None, workspace: str) -> Iterator[tuple[Any, Any, str]]:
    """Open Goldkey on the data directory; yield (goldkey, trait service, workspace id)."""
    from goldkey.audience.facts import FactsCache
    from goldkey.audience.traits import TraitService
    from goldkey.cli import _settings, _workspace_id
    from goldkey.runtime import DataDirInUse, Goldkey

    try:
        gk = Goldkey.open(_settings(data_dir))
    except DataDirInUse as exc:
        _fail(f"{exc} (with a server running, use its API: /api/v1/traits)")
        raise
    try:
        ws = _workspace_id(gk, workspace)
        svc = getattr(gk, "traits", None)
        if svc is None:
            facts = getattr(gk, "facts", None) or FactsCache(gk.engine, gk.analytical)
            svc = TraitService(gk.engine, gk.analytical, gk.writer, facts)
        yield gk, svc, ws
    finally:
        gk.close()


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; a Goldkey error ends the command with its message (exit 2 for bad input)."""
    from goldkey.core.errors import GoldkeyError, InvalidInput

    try:
        return fn(*args, **kwargs)
    except InvalidInput as exc:
        message, code = (f"{exc.field}: {exc.message}" if exc.field else exc.message), 2
    except GoldkeyError as exc:
        message, code = str(exc), 1
    _fail(message, code)  # outside the handler: the exit carries no traceback of the stores


def _definition(
    file: Path | None, name: str | None, aggregate: str | None, event: str | None, event_type: str | None,
    source: str | None, prop: str | None, value_type: str | None, where: list[str], last_days: float | None,
    refresh_every: int | None, description: str | None,
) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            _fail(f"cannot read {file}: {exc}", 2)
        if not isinstance(data, dict):
            _fail(f"{file} must hold one JSON object (a trait definition)", 2)
    given = {"name": name, "aggregate": aggregate, "event": event, "type": event_type, "source": source,
             "property": prop, "value_type": value_type, "refresh_every_minutes": refresh_every,
             "description": description}
    data.update({k: v for k, v in given.items() if v is not None})
    if where:
        filters = []
        for w in where:
            try:
                filters.append(json.loads(w))
            except ValueError as exc:
                _fail(f"--where takes a JSON filter like '{{\"property\": \"sku\", \"op\": \"eq\", \"value\": \"A\"}}'"
                      f": {exc}", 2)
        data["where"] = [*data.get("where", []), *filters]
    if last_days is not None:
        data["window"] = {"last_days": last_days}
    return data


def _json_default(v: Any) -> Any:
    from datetime import datetime

    from goldkey.core.clock import to_iso

    return to_iso(v) if isinstance(v, datetime) else str(v)  # times as the API gives them (ISO, Z)


def _print(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2, default=_json_default))


@traits_app.command("create")
def create(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="JSON file with the definition.",
                                              exists=True, dir_okay=False)] = None,
    name: Annotated[str | None, typer.Option(help="Trait name (letters, digits, underscores).")] = None,
    aggregate: Annotated[str | None, typer.Option(
        help="count | sum | avg | min | max | first | last | distinct_count | most_frequent | days_since_last")] = None,
    event: Annotated[str | None, typer.Option(help="Event name (track) or page/screen name.")] = None,
    event_type: Annotated[str | None, typer.Option("--type", help="Event type (default track).")] = None,
    source: Annotated[str | None, typer.Option(help="events (default) | order_lines")] = None,
    prop: Annotated[str | None, typer.Option("--property", help="Event property or order-line column.")] = None,
    value_type: Annotated[str | None, typer.Option(help="string | number (min/max/first/last/most_frequent).")] = None,
    where: Annotated[list[str], typer.Option(help="A JSON property filter (repeatable).")] = [],  # noqa: B006
    last_days: Annotated[float | None, typer.Option(help="Window: only the last N days.")] = None,
    refresh_every: Annotated[int | None, typer.Option(help="Batch refresh every N minutes (default 60).")] = None,
    description: Annotated[str | None, typer.Option(help="What the trait means.")] = None,
    replace: Annotated[bool, typer.Option(help="Replace the trait of that name if it exists.")] = False,
    workspace: Workspace = "",
    data_dir: DataDir = None,
) -> None:
    """Define a trait from a JSON file (--file) and/or options; options override the file."""
    data = _definition(file, name, aggregate, event, event_type, source, prop, value_type, where, last_days,
                       refresh_every, description)
    with _opened(data_dir, workspace) as (_, svc, ws):
        from goldkey.core.errors import NotFound

        exists = False
        if replace and isinstance(data.get("name"), str):
            try:
                svc.get(ws, data["name"])
                exists = True
            except NotFound:
                pass
        if exists:
            out = _guard(svc.update, ws, data["name"], data, actor="cli")
        else:
            out = _guard(svc.create, ws, data, actor="cli")
    _print(out)


@traits_app.command("list")
def list_(workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """List the workspace's traits with their status."""
    with _opened(data_dir, workspace) as (_, svc, ws):
        rows = svc.list(ws)
    for t in rows:
        when = t["computed_at"].isoformat(timespec="seconds") if t["computed_at"] else "-"
        mode = "incremental" if t["incremental"] else "batch"
        print(f"{t['name']}\t{t['definition']['aggregate']}\t{t['value_type']}\t{mode}\t{t['status']}\t{when}")
    console.print(f"{len(rows)} trait(s)")


@traits_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Trait name.")],
    workspace: Workspace = "",
    data_dir: DataDir = None,
) -> None:
    """Print one trait (definition and status) as JSON."""
    with _opened(data_dir, workspace) as (_, svc, ws):
        out = _guard(svc.get, ws, name)
    _print(out)


@traits_app.command("delete")
def delete(
    name: Annotated[str, typer.Argument(help="Trait name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    workspace: Workspace = "",
    data_dir: DataDir = None,
) -> None:
    """Delete a trait, its catalog field and its values on every profile."""
    if not yes:
        typer.confirm(f"Delete trait {name!r} and its values on every profile?", abort=True)
    with _opened(data_dir, workspace) as (_, svc, ws):
        out = _guard(svc.delete, ws, name, actor="cli")
    console.print(f"deleted {out['name']}: removed from {out['profiles_cleared']} profile(s)")


@traits_app.command("compute")
def compute(
    name: Annotated[list[str], typer.Option("--name", "-n", help="Only this trait (repeatable).")] = [],  # noqa: B006
    workspace: Workspace = "",
    data_dir: DataDir = None,
) -> None:
    """Compute traits now (all, or --name ...) and write the changed values to the profiles."""
    with _opened(data_dir, workspace) as (_, svc, ws):
        with progress_bar(console, "{task.description}") as bar:
            task = bar.add_task("starting", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=stage, completed=done, total=total)

            report = _guard(svc.compute, ws, name or None, progress=progress)
    s = report["seconds"]
    console.print(
        f"[bold]{len(report['traits'])}[/bold] trait(s) computed as of {report['as_of']}: "
        f"{report['profiles_changed']} profile(s) changed, {report['profiles_written']} written — "
        f"aggregate {s['aggregate']:.2f}s, write-back {s['write_back']:.2f}s, total {s['total']:.2f}s"
    )
    for trait, n in sorted(report["profiles_with_value"].items()):
        console.print(f"  {trait}: {n} profile(s) with a value")
