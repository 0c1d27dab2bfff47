"""``goldkey segment ...`` and ``goldkey tag ...``: the audience commands on a local data directory."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from goldkey.progress import progress_bar

console = Console(stderr=True)
segment_app = typer.Typer(help="Define, estimate, compute and export segments.", no_args_is_help=True)
tag_app = typer.Typer(help="Define, compute and set tags; coverage and history.", no_args_is_help=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (default ./goldkey-data).",
                                               show_default=False)]
Workspace = Annotated[str, typer.Option("--workspace", "-w", help="Workspace id or name (optional with one).")]
RuleOpt = Annotated[str, typer.Option("--rule", help="The rule: a JSON text, or @file.json.")]


def _fail(message: str, code: int = 1) -> None:
    console.print("[red]error:[/red] " + escape(f"{message}"))
    raise typer.Exit(code)


@contextmanager
def _open(data_dir: Path | None, workspace: str) -> Iterator[tuple[Any, str]]:
    from goldkey.cli import _settings, _workspace_id
    from goldkey.core.errors import GoldkeyError
    from goldkey.runtime import DataDirInUse, Goldkey

    try:
        gk = Goldkey.open(_settings(data_dir))
    except DataDirInUse as exc:
        _fail(f"{exc}; use the REST API of the running server instead")
        raise
    try:
        ws = _workspace_id(gk, workspace)
        try:
            yield gk, ws
        except GoldkeyError as exc:
            _fail(str(exc))
    finally:
        gk.close()


def _json_arg(text: str, what: str) -> Any:
    raw = Path(text[1:]).read_text(encoding="utf-8") if text.startswith("@") else text
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        _fail(f"{what} is not valid JSON: {exc}", 2)


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


# -- segments -------------------------------------------------------------------------------------


@segment_app.command("create")
def segment_create(name: str, rule: RuleOpt, description: str = "",
                   realtime: Annotated[bool, typer.Option("--realtime/--batch-only")] = True,
                   workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Save a segment (version 1); the rule is checked first."""
    with _open(data_dir, workspace) as (gk, ws):
        _print(gk.segments.create(ws, name, _json_arg(rule, "--rule"), description=description, realtime=realtime,
                                  actor="cli"))


@segment_app.command("update")
def segment_update(segment_id: str, rule: Annotated[str | None, typer.Option(help="A new rule (JSON or @file)")] = None,
                   name: str | None = None, description: str | None = None, workspace: Workspace = "",
                   data_dir: DataDir = None) -> None:
    """Change a segment; a changed rule becomes a new version."""
    with _open(data_dir, workspace) as (gk, ws):
        _print(gk.segments.update(ws, segment_id, name=name, description=description,
                                  rule=_json_arg(rule, "--rule") if rule else None, actor="cli"))


@segment_app.command("list")
def segment_list(workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """List segments with their size and when they were computed."""
    with _open(data_dir, workspace) as (gk, ws):
        t = Table("id", "name", "version", "size", "computed", "realtime")
        for s in gk.segments.list(ws):
            t.add_row(s["segment_id"], s["name"], str(s["version"]), str(s["size"] if s["size"] is not None else "-"),
                      s["computed_at"] or "-", "yes" if s["realtime"] else "no")
        Console().print(t)


@segment_app.command("show")
def segment_show(segment_id: str, workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """A segment's rule, versions and size history."""
    with _open(data_dir, workspace) as (gk, ws):
        _print({**gk.segments.get(ws, segment_id), "versions": gk.segments.versions(ws, segment_id),
                "history": gk.segments.history(ws, segment_id)})


@segment_app.command("estimate")
def segment_estimate(rule: RuleOpt, explain: Annotated[list[str] | None, typer.Option(
                     help="Profile ids to explain")] = None, workspace: Workspace = "",
                     data_dir: DataDir = None) -> None:
    """Size of a draft rule now, with explained examples."""
    with _open(data_dir, workspace) as (gk, ws):
        _print(gk.segments.estimate(ws, _json_arg(rule, "--rule"), explain_profiles=explain or []))


@segment_app.command("compute")
def segment_compute(segment_ids: Annotated[list[str] | None, typer.Argument(help="Segments (default: all)")] = None,
                    workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Materialise segments now (records a size snapshot each)."""
    with _open(data_dir, workspace) as (gk, ws):
        ids = segment_ids or [s["segment_id"] for s in gk.segments.list(ws)]
        results = []
        with progress_bar(console, "{task.description}") as bar:
            task = bar.add_task("computing", total=len(ids))
            for sid in ids:
                bar.update(task, description=f"computing {sid}")
                results.append(gk.segments.compute(ws, sid))
                bar.advance(task)
        for r in results:
            console.print(f"{r['segment_id']}: {r['size']} members (+{r['entered']} -{r['exited']}) "
                          f"in {r['took_ms']} ms")


@segment_app.command("members")
def segment_members(segment_id: str, limit: int = 20, offset: int = 0, workspace: Workspace = "",
                    data_dir: DataDir = None) -> None:
    """A page of members (phones masked)."""
    with _open(data_dir, workspace) as (gk, ws):
        _print(gk.segments.members(ws, segment_id, limit=limit, offset=offset))


@segment_app.command("overlap")
def segment_overlap(segment_ids: list[str], workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Sizes and pairwise overlaps of 2-10 segments."""
    with _open(data_dir, workspace) as (gk, ws):
        _print(gk.segments.overlap(ws, segment_ids))


@segment_app.command("export")
def segment_export(segment_id: str,
                   out: Annotated[Path, typer.Option("--out", "-o", help="CSV file to write")],
                   kind: Annotated[str, typer.Option(
                       help="csv | call_list (consented, not suppressed, with a phone)")] = "csv",
                   mask: Annotated[bool, typer.Option("--mask/--no-mask", help="Mask phone numbers")] = True,
                   workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Export the members as CSV, or as an outbound-call list."""
    with _open(data_dir, workspace) as (gk, ws), out.open("w", encoding="utf-8", newline="") as f:
        n = -1
        for chunk in gk.segments.export_csv(ws, segment_id, kind=kind, mask=mask):
            f.write(chunk)
            n += chunk.count("\n")
        console.print(f"{max(n, 0)} rows written to {out}")


@segment_app.command("delete")
def segment_delete(segment_id: str, workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Delete a segment (versions and history stay for the audit trail)."""
    with _open(data_dir, workspace) as (gk, ws):
        gk.segments.delete(ws, segment_id, actor="cli")
        console.print(f"deleted {segment_id}")


# -- tags -----------------------------------------------------------------------------------------


@tag_app.command("create")
def tag_create(definition: Annotated[str, typer.Argument(help="The tag definition: JSON text or @file.json")],
               workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Create a tag from its definition (name, kind, value_type, category, rules ...)."""
    with _open(data_dir, workspace) as (gk, ws):
        _print(gk.tags.create(ws, _json_arg(definition, "the definition"), actor="cli"))


@tag_app.command("list")
def tag_list(category: str | None = None, workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """List tags by category."""
    with _open(data_dir, workspace) as (gk, ws):
        t = Table("name", "kind", "type", "category", "owner", "computed")
        for tg in gk.tags.list(ws, category):
            t.add_row(tg["name"], tg["kind"], tg["value_type"], tg["category"], tg["owner"], tg["computed_at"] or "-")
        Console().print(t)


@tag_app.command("compute")
def tag_compute(names: Annotated[list[str] | None, typer.Argument(help="Rule tags (default: all)")] = None,
                workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Evaluate rule tags over every profile now."""
    with _open(data_dir, workspace) as (gk, ws):
        todo = names or [t["name"] for t in gk.tags.list(ws) if t["kind"] == "rule"]
        with progress_bar(console, "{task.description}") as bar:
            task = bar.add_task("computing", total=len(todo))
            results = []
            for n in todo:
                bar.update(task, description=f"computing {n}")
                results.append(gk.tags.compute(ws, n))
                bar.advance(task)
        for r in results:
            console.print(f"{r['tag']}: {r['profiles']} profiles, {r['changed']} changed, {r['took_ms']} ms")


@tag_app.command("set")
def tag_set(name: str, file: Annotated[Path, typer.Option("--file", "-f", help="CSV: profile_id or an identifier "
                                                           "column (phone, email, crm_id ...), and value")],
            replace: Annotated[bool, typer.Option(help="Remove the tag from profiles not in the file")] = False,
            workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Set a manual tag from a CSV list; unknown profiles go to the quarantine."""
    with _open(data_dir, workspace) as (gk, ws):
        r = gk.tags.import_csv(ws, name, file.read_bytes(), replace=replace)
        console.print(f"{r['rows']} rows: {r['profiles']} profiles set, {r['changed']} changed, "
                      f"{r['quarantined']} quarantined")


@tag_app.command("coverage")
def tag_coverage(name: str, workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """How many profiles carry each value of a tag."""
    with _open(data_dir, workspace) as (gk, ws):
        _print(gk.tags.coverage(ws, name))


@tag_app.command("history")
def tag_history(name: str, profile_id: str | None = None, limit: int = 50, workspace: Workspace = "",
                data_dir: DataDir = None) -> None:
    """Recent changes of a tag (optionally of one profile)."""
    with _open(data_dir, workspace) as (gk, ws):
        _print(gk.tags.history(ws, name, profile_id=profile_id, limit=limit))


@tag_app.command("delete")
def tag_delete(name: str, workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Delete a tag and remove it from every profile."""
    with _open(data_dir, workspace) as (gk, ws):
        console.print(f"deleted {name}; removed from {gk.tags.delete(ws, name, actor='cli')} profiles")
