"""``goldkey campaign ...``: create, launch (with a progress bar), report and list campaigns.

Not yet registered: add ``app.add_typer(campaign_app, name="campaign")`` in ``goldkey.cli``. Like
``goldkey insight`` these commands open the data directory themselves, so they run while no server
owns it (with a server running, use the API: ``/api/v1/campaigns``). A campaign scheduled for later
(``at`` / recurring) is run by the server's scheduler, not by this command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

campaign_app = typer.Typer(help="Campaigns: create, launch, report, list.", no_args_is_help=True)
console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default ./goldkey-data, or GOLDKEY_DATA_DIR).",
                 show_default=False),
]
Workspace = Annotated[str, typer.Option("--workspace", "-w", help="Workspace id or name.")]


def _run(data_dir: Path | None, workspace: str, fn: Any) -> Any:
    from goldkey.activate.campaigns import CampaignService
    from goldkey.cli import open_data_dir

    return open_data_dir(data_dir, workspace,
                         lambda gk, ws: fn(getattr(gk, "campaigns", None) or CampaignService.from_goldkey(gk), ws),
                         "/api/v1/campaigns")


@campaign_app.command("create")
def create(
    definition: Annotated[Path, typer.Argument(help="A JSON file with the campaign definition.")],
    workspace: Workspace = "",
    data_dir: DataDir = None,
) -> None:
    """Validate and save a campaign (a draft); prints it as JSON."""
    body = json.loads(definition.read_text(encoding="utf-8"))
    out = _run(data_dir, workspace, lambda svc, ws: svc.create(ws, body, actor="cli"))
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2))


def _follow(svc: Any, ws: str, cid: str) -> dict[str, Any]:
    """Launch (a run due now is sent in a worker thread) and show a progress bar until it ends."""
    import threading

    from goldkey.progress import progress_bar

    errors: list[BaseException] = []

    def launch() -> None:
        try:
            svc.launch(ws, cid, wait=True)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    worker = threading.Thread(target=launch, name="goldkey-cli-launch")
    worker.start()
    with progress_bar(console, "sending {task.description}") as bar:
        task = bar.add_task(cid, total=None)
        while worker.is_alive():
            p = svc.progress(ws, cid)
            todo = p["targeted"] - p["members"].get("holdout", 0)
            left = p["members"].get("pending", 0) + p["members"].get("deferred", 0)
            bar.update(task, total=max(todo, 1), completed=max(todo - left, 0))
            worker.join(0.5)
    if errors:
        raise errors[0]
    return svc.get(ws, cid)  # type: ignore[no-any-return]


@campaign_app.command("launch")
def launch(campaign_id: str, workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Start a draft campaign: send now with a progress bar, or schedule it."""
    out = _run(data_dir, workspace, lambda svc, ws: _follow(svc, ws, campaign_id))
    console.print(f"campaign {campaign_id}: [bold]{out['status']}[/bold]"
                  + (f", next run at {out['next_run_at']}" if out.get("next_run_at") else ""))
    typer.echo(json.dumps(out["progress"], ensure_ascii=False, indent=2))


@campaign_app.command("report")
def report(campaign_id: str, workspace: Workspace = "", data_dir: DataDir = None,
           run: Annotated[int | None, typer.Option("--run", help="Run number (default: the latest).")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False) -> None:
    """The funnel per variant and holdout, and the uplift with its 95% interval."""
    rep = _run(data_dir, workspace, lambda svc, ws: svc.report(ws, campaign_id, run))
    if as_json:
        typer.echo(json.dumps(rep, ensure_ascii=False, indent=2))
        return
    t = Table(title=f"{rep['name']} — run {rep['run']} ({rep['conversion']}, {rep['attribution_days']} days)")
    for col in ("arm", "targeted", "suppressed", "sent", "delivered", "opened", "clicked", "converted", "revenue",
                "cost", "ROI", "conv. rate (ITT)"):
        t.add_column(col, justify="right" if col != "arm" else "left")
    for a in rep["arms"]:
        t.add_row(a["arm"], str(a["targeted"]), *(str(a.get(k, "")) for k in (
            "suppressed", "sent", "delivered", "opened", "clicked", "converted", "revenue", "cost", "roi")),
            str(a["itt"]["conversion_rate"]))
    Console().print(t)
    up = rep["uplift"]
    if up.get("available"):
        tr = up["treated"]
        lo, hi = tr["uplift_ci95"]
        typer.echo(f"uplift (treated - holdout): {tr['uplift']:+.4f}  95% CI [{lo:+.4f}, {hi:+.4f}]  "
                   f"incremental revenue/customer {tr['incremental_revenue_per_customer']} "
                   f"CI {tr['incremental_revenue_per_customer_ci95']}")
    else:
        typer.echo(f"uplift: {up['reason']}")


@campaign_app.command("list")
def list_campaigns(workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """The workspace's campaigns (JSON)."""
    out = _run(data_dir, workspace, lambda svc, ws: svc.list(ws))
    typer.echo(json.dumps(out, ensure_ascii=False, indent=2))


trigger_app = typer.Typer(help="Triggers: list, show, pause, resume, delete (create and edit them through the API).",
                          no_args_is_help=True)


def _triggers(data_dir: Path | None, workspace: str, fn: Any, action: str | None = None,
              target: str | None = None) -> Any:
    """Run ``fn(trigger_service, workspace_id)`` on the opened data directory; a change is audited
    as done by ``cli``."""
    from goldkey.activate.triggers import TriggerService
    from goldkey.cli import open_data_dir
    from goldkey.govern.audit import write

    def go(gk: Any, ws: str) -> Any:
        svc = getattr(gk, "triggers", None) or TriggerService.from_goldkey(gk)
        out = fn(svc, ws)
        if action is not None and target is not None:
            with gk.engine.begin() as c:
                write(c, ws, "cli", action, target)
        return out

    return open_data_dir(data_dir, workspace, go, "/api/v1/triggers")


@trigger_app.command("list")
def trigger_list(workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """The workspace's triggers with their status and firing counts."""
    rows = _triggers(data_dir, workspace, lambda svc, ws: svc.list(ws))
    t = Table()
    for col in ("trigger_id", "name", "kind", "status", "firings"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["trigger_id"], escape(r["name"]), r["kind"], r["status"],
                  ", ".join(f"{k} {v}" for k, v in sorted(r["firings"].items())))
    Console().print(t)


@trigger_app.command("show")
def trigger_show(trigger_id: str, workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """One trigger's definition and firing counts (JSON)."""
    typer.echo(json.dumps(_triggers(data_dir, workspace, lambda svc, ws: svc.get(ws, trigger_id)),
                          ensure_ascii=False, indent=2))


@trigger_app.command("pause")
def trigger_pause(trigger_id: str, workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Stop firing (messages already queued are still sent by the server)."""
    out = _triggers(data_dir, workspace, lambda svc, ws: svc.set_active(ws, trigger_id, False), "trigger.pause",
                    trigger_id)
    console.print(f"trigger {trigger_id}: [bold]{out['status']}[/bold]")


@trigger_app.command("resume")
def trigger_resume(trigger_id: str, workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Fire again from now on."""
    out = _triggers(data_dir, workspace, lambda svc, ws: svc.set_active(ws, trigger_id, True), "trigger.resume",
                    trigger_id)
    console.print(f"trigger {trigger_id}: [bold]{out['status']}[/bold]")


@trigger_app.command("delete")
def trigger_delete(trigger_id: str, workspace: Workspace = "", data_dir: DataDir = None) -> None:
    """Delete a trigger; its firings and sent messages stay, its queued messages are not sent."""
    out = _triggers(data_dir, workspace, lambda svc, ws: svc.delete(ws, trigger_id), "trigger.delete", trigger_id)
    console.print(f"deleted trigger {trigger_id} ({escape(out['name'])}); {out['queued_messages_not_sent']} queued "
                  "message(s) not sent")
