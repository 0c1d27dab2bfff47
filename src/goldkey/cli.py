"""The ``goldkey`` command line (Typer)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from goldkey.activate.cli import campaign_app, trigger_app
from goldkey.audience.cli import segment_app, tag_app
from goldkey.audience.traits_cli import traits_app
from goldkey.insight import affinity_cli, churn_cli, clv_cli, lifecycle_cli, read_cli, text_cli
from goldkey.insight.cli import insight_app
from goldkey.progress import progress_bar
from goldkey.settings import Settings

app = typer.Typer(
    help="Goldkey: collect and unify customer data, describe, target and reach customers, measure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
workspace_app = typer.Typer(help="Create and list workspaces (brands).", no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")
user_app = typer.Typer(help="Users and their role in a workspace (admin, marketer, analyst, viewer).",
                       no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(segment_app, name="segment")
app.add_typer(tag_app, name="tag")
app.add_typer(traits_app, name="traits")
app.add_typer(insight_app, name="insight")
app.add_typer(campaign_app, name="campaign")
app.add_typer(trigger_app, name="trigger")
for _model_cli in (clv_cli, churn_cli, lifecycle_cli, affinity_cli, text_cli, read_cli):
    _model_cli.register(insight_app)
console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default ./goldkey-data, or GOLDKEY_DATA_DIR).", show_default=False
    ),
]


def _settings(data_dir: Path | None, **extra: Any) -> Settings:
    values: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return Settings(**values)


def _fail(message: str, code: int = 1) -> None:
    console.print("[red]error:[/red] " + escape(f"{message}"))
    raise typer.Exit(code)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    data_dir: DataDir = None,
    collectors: Annotated[int | None, typer.Option(
        help="Collector processes serving the tracking API on --collect-port (default 0: none).")] = None,
    collect_port: Annotated[int | None, typer.Option(help="Port of the collector processes (default 8001).")] = None,
) -> None:
    """Serve the tracking API and the REST API (with its OpenAPI docs at /docs)."""
    import uvicorn

    from goldkey.app import create_app

    settings = _settings(data_dir, host=host, port=port, collectors=collectors, collect_port=collect_port)
    console.print(f"Goldkey serving on http://{settings.host}:{settings.port}  (data: {settings.data_dir})")
    if settings.collectors:
        console.print(f"tracking API also served by {settings.collectors} collector process(es) on "
                      f"http://{settings.host}:{settings.collect_port}")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


@workspace_app.command("create")
def workspace_create(
    name: Annotated[str, typer.Argument(help="Workspace (brand) name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Create a workspace; print its id, write key and first admin token (shown only once)."""
    from goldkey.core.errors import GoldkeyError
    from goldkey.govern.workspaces import WorkspaceService
    from goldkey.store.operational import create_operational_engine, migrate

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_operational_engine(settings.resolved_operational_url())
    migrate(engine)
    try:
        ws = WorkspaceService(engine).create(name)
    except GoldkeyError as exc:
        _fail(str(exc))
        return
    if as_json:
        print(json.dumps(ws.__dict__))
    else:
        print(f"workspace_id: {ws.workspace_id}\nwrite_key:    {ws.write_key}\nadmin_token:  {ws.admin_token}")


@workspace_app.command("list")
def workspace_list(data_dir: DataDir = None) -> None:
    """List workspaces."""
    from goldkey.govern.workspaces import WorkspaceService
    from goldkey.store.operational import create_operational_engine, migrate

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_operational_engine(settings.resolved_operational_url())
    migrate(engine)
    for w in WorkspaceService(engine).list():
        print(f"{w['workspace_id']}\t{w['name']}")


def _user_service(data_dir: Path | None) -> Any:
    from goldkey.govern.users import UserService
    from goldkey.store.operational import create_operational_engine, migrate

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_operational_engine(settings.resolved_operational_url())
    migrate(engine)
    return UserService(engine)


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Argument(help="The user's e-mail (their sign-in name).")],
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="Workspace id or name.")],
    role: Annotated[str, typer.Option(help="admin | marketer | analyst | viewer")] = "viewer",
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input (else one is generated).")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Create a user with a role in a workspace and print the initial password (shown once). An
    existing user is given the role (their password is not changed)."""
    from goldkey.core.errors import GoldkeyError
    from goldkey.govern.users import role_rank
    from goldkey.govern.workspaces import WorkspaceService

    svc = _user_service(data_dir)
    # before creating anyone: an unknown workspace fails
    workspace = _resolve_workspace(WorkspaceService(svc.engine), workspace)
    try:
        role_rank(role)
        existing = svc.find(email)
        if existing is not None:
            if password_stdin:
                _fail(f"{existing['email']} exists already; its password is not changed here", 2)
            out = svc.grant(workspace, existing["user_id"], role, actor="cli")
            print(f"user_id: {out['user_id']}\nemail:   {out['email']}\nrole:    {out['role']} (existing user)")
            return
        password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
        if password is None:
            from goldkey.govern.users import new_password

            password = new_password()
        user = svc.create_user(email, password, name)
        out = svc.grant(workspace, user["user_id"], role, actor="cli")
    except GoldkeyError as exc:
        _fail(str(exc))
        return
    print(f"user_id:  {out['user_id']}\nemail:    {out['email']}\nrole:     {out['role']}")
    if not password_stdin:
        print(f"password: {password}")


@user_app.command("list")
def user_list(
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="Workspace id or name.")],
    data_dir: DataDir = None,
) -> None:
    """List the users of a workspace: e-mail, role, name, user id (and 'disabled')."""
    from goldkey.govern.workspaces import WorkspaceService

    svc = _user_service(data_dir)
    workspace = _resolve_workspace(WorkspaceService(svc.engine), workspace)
    for u in svc.list_users(workspace):
        print("\t".join([u["email"], u["role"], u["name"], u["user_id"]] + (["disabled"] if u["disabled_at"] else [])))


def _parse_mapping(pairs: list[str], mapping_file: Path | None) -> dict[str, str]:
    mapping: dict[str, str] = {}
    if mapping_file is not None:
        try:
            loaded = json.loads(mapping_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            _fail(f"--mapping-file {mapping_file}: cannot read it as JSON: {exc}", 2)
        if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in loaded.items()):
            _fail(f"--mapping-file {mapping_file}: must be a JSON object of source column -> field names, "
                  'e.g. {"手机号": "phone"}', 2)
        mapping.update(loaded)
    for p in pairs:
        if "=" not in p:
            _fail(f"--map takes SOURCE_COLUMN=field, got {p!r}", 2)
        src, dst = p.split("=", 1)
        mapping[src.strip()] = dst.strip()
    return mapping


@app.command("import")
def import_(
    kind: Annotated[str, typer.Argument(help="customers | orders | products | feedback")],
    file: Annotated[Path, typer.Argument(help="CSV, Excel (.xlsx) or Parquet file.", exists=True, dir_okay=False)],
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="Workspace id or name.")] = "",
    map_: Annotated[list[str], typer.Option("--map", help="SOURCE_COLUMN=field (repeatable).")] = [],  # noqa: B006
    mapping_file: Annotated[Path | None, typer.Option(help="JSON file: {source column: field}.")] = None,
    force: Annotated[bool, typer.Option(help="Import again even if this exact file was imported.")] = False,
    api: Annotated[str | None, typer.Option(help="Send through a running server's API at this URL.")] = None,
    token: Annotated[str | None, typer.Option(envvar="GOLDKEY_ADMIN_TOKEN", help="Admin token for --api.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Import customers, orders (one row per order line), products or feedback.

    Shows a progress bar and ends with rows read / accepted / quarantined. When a server owns the
    data directory, pass --api and --token to import through it.
    """
    mapping = _parse_mapping(map_, mapping_file)
    if api:
        summary = _import_via_api(api, token, kind, file, mapping, force)
    else:
        summary = _import_local(_settings(data_dir), workspace, kind, file, mapping, force)
    s = summary
    # the progress bar goes to stderr, the summary to stdout (so `goldkey import ... > log` keeps it)
    typer.echo(
        f"{s['kind']} {s['filename']}: status {s['status']} — rows read {s['rows_read']}, "
        f"accepted {s['accepted']}, quarantined {s['quarantined']}, duplicates merged {s['duplicates_merged']}"
        f"  (import {s['import_id']})"
    )
    if s["quarantined"]:
        where = f" --data-dir {shlex.quote(str(data_dir))}" if data_dir is not None and not api else ""
        typer.echo(f"  see them with: goldkey quarantine --import-id {s['import_id']}{where}")


def _import_local(
    settings: Settings, workspace: str, kind: str, file: Path, mapping: dict[str, str], force: bool
) -> dict[str, Any]:
    from goldkey.core.errors import GoldkeyError
    from goldkey.runtime import DataDirInUse, Goldkey

    try:
        gk = Goldkey.open(settings)
    except DataDirInUse as exc:
        _fail(f"{exc} (use --api http://HOST:PORT --token ADMIN_TOKEN)")
        raise
    try:
        ws = _workspace_id(gk, workspace)
        with progress_bar(console, "{task.description}") as bar:
            task = bar.add_task("reading", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=stage, completed=done, total=total)

            try:
                return gk.importer.run(ws, kind, file, mapping, force=force, progress=progress).as_dict()
            except GoldkeyError as exc:
                _fail(str(exc))
                raise
    finally:
        gk.close()


def _resolve_workspace(workspaces: Any, workspace: str) -> str:
    """The id of the workspace named by ``workspace`` (an id or a name; empty: the only one there is)
    in ``workspaces`` (a WorkspaceService); exit 2 when there is none."""
    if not workspace:
        all_ws = workspaces.list()
        if len(all_ws) == 1:
            return str(all_ws[0]["workspace_id"])
        _fail("name the workspace with --workspace (id or name)", 2)
    if workspace.startswith("ws_"):
        from goldkey.core.errors import NotFound

        try:  # an id is checked too: a mistyped one must not run a command on a workspace that is not there
            workspaces.get(workspace)
            return workspace
        except NotFound:
            pass
    ws = workspaces.find_by_name(workspace)  # also a name that looks like an id ("ws_europe")
    if ws is None:
        _fail(f"no workspace with id {workspace!r}" if workspace.startswith("ws_") else
              f"no workspace named {workspace!r}", 2)
    return str(ws)


def _workspace_id(gk: Any, workspace: str) -> str:
    return _resolve_workspace(gk.workspaces, workspace)


def open_data_dir(data_dir: Path | None, workspace: str, fn: Any, api: str) -> Any:
    """Open the data directory, run ``fn(gk, workspace_id)``, close; a Goldkey error (or a server
    owning the directory) is an ``error:`` line and exit code 1. The commands that open the data
    directory themselves run through here; ``api`` names the route to use while a server owns it."""
    from goldkey.core.errors import GoldkeyError
    from goldkey.runtime import DataDirInUse, Goldkey

    try:
        gk = Goldkey.open(_settings(data_dir))
    except DataDirInUse as exc:
        console.print("[red]error:[/red] " + escape(f"{exc} (with a server running, use its API: {api})"))
        raise typer.Exit(1) from None
    try:
        return fn(gk, _workspace_id(gk, workspace))
    except GoldkeyError as exc:
        console.print("[red]error:[/red] " + escape(f"{exc}"))
        raise typer.Exit(1) from None
    finally:
        gk.close()


def _import_via_api(
    api: str, token: str | None, kind: str, file: Path, mapping: dict[str, str], force: bool
) -> dict[str, Any]:
    import httpx

    if not token:
        _fail("--api needs --token (or GOLDKEY_ADMIN_TOKEN)", 2)
    with console.status(f"uploading {file.name} to {api} …"), file.open("rb") as f:
        r = httpx.post(
            api.rstrip("/") + "/api/v1/imports",
            headers={"Authorization": f"Bearer {token}"},
            files={"file": (file.name, f)},
            data={"kind": kind, "mapping": json.dumps(mapping), "force": str(force).lower()},
            timeout=3600,
        )
    if r.status_code != 200:
        _fail(f"{r.status_code}: {r.text}")
    return r.json()  # type: ignore[no-any-return]


@app.command()
def quarantine(
    workspace: Annotated[str, typer.Option("--workspace", "-w", help="Workspace id or name.")] = "",
    import_id: Annotated[str | None, typer.Option(help="Only this import's records.")] = None,
    limit: Annotated[int, typer.Option(help="How many records.")] = 50,
    data_dir: DataDir = None,
) -> None:
    """Show quarantined (rejected) records with their reason."""
    import sqlalchemy as sa

    from goldkey.collect.importer import list_quarantine
    from goldkey.govern.workspaces import WorkspaceService
    from goldkey.store.operational import create_operational_engine, imports

    settings = _settings(data_dir)
    if settings.operational_url is None and not (settings.data_dir / "operational.sqlite").exists():
        _fail(f"no Goldkey data in {settings.data_dir} (pass --data-dir, or set GOLDKEY_DATA_DIR)", 2)
    engine = create_operational_engine(settings.resolved_operational_url())
    svc = WorkspaceService(engine)
    if import_id and not workspace:  # the import names its workspace
        with engine.connect() as conn:
            owner = conn.execute(sa.select(imports.c.workspace_id).where(imports.c.import_id == import_id)).scalar()
        if owner is None:
            _fail(f"no import {import_id!r}", 2)
        workspace = str(owner)
    ws = _resolve_workspace(svc, workspace)  # reads the store only: works beside a server
    rows = list_quarantine(engine, ws, import_id, limit)
    for r in rows:
        print(f"{r['source']}\trecord {r['record']}\t{r['field']}\t{r['reason']}")
    console.print(f"{len(rows)} record(s)")


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="Simulated customers across both brands.")] = 50_000,
    events: Annotated[int, typer.Option(help="Approximate tracking events to generate.")] = 2_000_000,
    seed: Annotated[int, typer.Option(help="Seed of the market simulator.")] = 42,
    start: Annotated[str | None, typer.Option(
        help="First day of the market's history, YYYY-MM-DD (default: so that its 540 days end today); "
             "the same seed and start give the same market.")] = None,
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve", help="Keep serving after loading.")] = True,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Generate the demo market, load it through the tracking API and the importers, and serve."""
    import datetime as _dt

    from goldkey.demo.run import run_demo

    first = None
    if start is not None:
        try:
            first = _dt.date.fromisoformat(start)
        except ValueError:
            _fail(f"--start {start!r}: give a date as YYYY-MM-DD", 2)
    settings = _settings(data_dir, host=host, port=port)
    run_demo(settings, customers=customers, events=events, seed=seed, serve_forever=serve_after, console=console,
             start=first)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
