"""The goldkey command line: workspace creation, local import with its summary, quarantine,
and the refusal to open a data directory another process owns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from goldkey.cli import app
from goldkey.runtime import DataDirInUse, Goldkey
from goldkey.settings import Settings

runner = CliRunner()


def test_workspace_create_import_and_quarantine(tmp_path: Path) -> None:
    d = str(tmp_path / "data")
    r = runner.invoke(app, ["workspace", "create", "Eye Care", "--json", "--data-dir", d])
    assert r.exit_code == 0, r.output
    ws = json.loads(r.stdout)
    assert ws["workspace_id"].startswith("ws_") and ws["write_key"].startswith("gkw_")
    assert ws["admin_token"].startswith("gka_")
    dup = runner.invoke(app, ["workspace", "create", "Eye Care", "--data-dir", d])
    assert dup.exit_code == 1 and "exists already" in dup.output

    csv = tmp_path / "c.csv"
    csv.write_text("id,mobile,mail\nC1,13912345678,a@b.com\nC2,bad-phone,\n", encoding="utf-8")
    r = runner.invoke(
        app,
        [
            "import",
            "customers",
            str(csv),
            "-w",
            "Eye Care",
            "--map",
            "id=crm_id",
            "--map",
            "mobile=phone",
            "--map",
            "mail=email",
            "--data-dir",
            d,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "rows read 2, accepted 1, quarantined 1" in r.stdout  # the summary is on stdout
    r0_output = r.output
    r = runner.invoke(app, ["quarantine", "-w", "Eye Care", "--data-dir", d])
    assert r.exit_code == 0 and "phone" in r.stdout and "record 2" in r.stdout

    r = runner.invoke(app, ["workspace", "list", "--data-dir", d])
    assert "Eye Care" in r.stdout
    # with two workspaces the hint the import prints ("goldkey quarantine --import-id ...") works as
    # printed: the import names its workspace (before: "name the workspace with --workspace")
    assert runner.invoke(app, ["workspace", "create", "Other", "--data-dir", d]).exit_code == 0
    import re

    hint = re.search(r"goldkey (quarantine --import-id imp_\w+ --data-dir \S+)", " ".join(r0_output.split()))
    assert hint, r0_output  # the hint names the data directory the import used
    import shlex

    r = runner.invoke(app, shlex.split(hint.group(1)))  # run exactly as printed
    assert r.exit_code == 0 and "record 2" in r.stdout, r.output
    empty = tmp_path / "nothing-here"
    r = runner.invoke(app, ["quarantine", "--data-dir", str(empty)])
    assert r.exit_code == 2 and "no Goldkey data" in r.output and not empty.exists(), r.output
    r = runner.invoke(app, ["quarantine", "--import-id", "imp_nope", "--data-dir", d])
    assert r.exit_code == 2 and "no import 'imp_nope'" in r.output
    r = runner.invoke(app, ["quarantine", "-w", "ws_nope", "--data-dir", d])
    assert r.exit_code == 2 and "no workspace with id 'ws_nope'" in r.output  # before: "0 record(s)"


def test_bad_mapping_is_a_clear_error(tmp_path: Path) -> None:
    d = str(tmp_path / "data")
    runner.invoke(app, ["workspace", "create", "A", "--data-dir", d])
    csv = tmp_path / "c.csv"
    csv.write_text("id\nC1\n", encoding="utf-8")
    r = runner.invoke(app, ["import", "customers", str(csv), "--map", "id=not_a_field", "--data-dir", d])
    assert r.exit_code == 1 and "not_a_field" in r.output
    # a mapping file that is not JSON, or not an object: a clear error, not a traceback
    for text, says in (("{id: phone", "cannot read it as JSON"), ('["id", "crm_id"]', "must be a JSON object")):
        mf = tmp_path / "m.json"
        mf.write_text(text, encoding="utf-8")
        r = runner.invoke(app, ["import", "customers", str(csv), "--mapping-file", str(mf), "--data-dir", d])
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.output, r.exception)
        assert says in " ".join(r.output.split())


def test_one_process_per_data_dir(tmp_path: Path) -> None:
    gk = Goldkey.open(Settings(data_dir=tmp_path))
    try:
        with pytest.raises(DataDirInUse):
            Goldkey.open(Settings(data_dir=tmp_path))
        r = runner.invoke(app, ["import", "products", str(tmp_path / "goldkey.lock"), "--data-dir", str(tmp_path)])
        assert r.exit_code == 1 and "--api" in r.output
    finally:
        gk.close()


def test_a_mistyped_workspace_id_is_refused_by_every_command(tmp_path: Path) -> None:
    """A ``ws_…`` id is looked up like a name: a typo must not run a model, a segment command or an
    insight read on a workspace that does not exist (it used to pass through and fail later with a
    misleading message, e.g. "no orders to score")."""
    d = str(tmp_path)
    r = runner.invoke(app, ["workspace", "create", "A", "--json", "--data-dir", d])
    ws = json.loads(r.stdout)["workspace_id"]
    for args in (
        ["insight", "rfm"],
        ["insight", "clv"],
        ["insight", "lifecycle"],
        ["insight", "show", "feedback-alerts"],
        ["insight", "churn"],
        ["insight", "affinity"],
        ["insight", "feedback"],
        ["insight", "cohorts"],
        ["segment", "list"],
    ):
        r = runner.invoke(app, [*args, "-w", "ws_nope", "--data-dir", d])
        assert r.exit_code == 2, (args, r.output)
        assert "no workspace with id 'ws_nope'" in r.output, (args, r.output)
    r = runner.invoke(app, ["segment", "list", "-w", ws, "--data-dir", d])
    assert r.exit_code == 0, r.output


def test_error_messages_are_printed_as_text_not_markup(tmp_path: Path) -> None:
    """A value echoed in an error is not read as Rich markup: '[/x]' crashed the command with a
    MarkupError traceback, and a name pattern '^[a-z0-9_]+$' printed as '^+$'."""
    d = str(tmp_path)
    assert runner.invoke(app, ["workspace", "create", "A", "--data-dir", d]).exit_code == 0
    r = runner.invoke(app, ["insight", "propensity", "--category", "[/x]", "--as-of", "2024-07-01", "--data-dir", d])
    assert r.exit_code == 1 and "[/x]" in r.output, (r.output, r.exception)
    r = runner.invoke(app, ["insight", "propensity", "--category", "care", "--name", "中文", "--data-dir", d])
    assert "[a-z0-9_]" in " ".join(r.output.split()), r.output


def test_trigger_commands_list_pause_resume_and_delete(tmp_path: Path) -> None:
    from goldkey.activate.triggers import TriggerService

    d = tmp_path / "data"
    gk = Goldkey.open(Settings(data_dir=d))
    try:
        ws = gk.workspaces.create("Shop").workspace_id
        ch = gk.sender.channels.save(ws, name="sink", kind="sink",
                                     config={"path": "out.jsonl", "simulates": "sms"})
        tid = TriggerService.from_goldkey(gk).create(ws, {
            "name": "流量提醒", "kind": "realtime", "channel_id": ch["channel_id"],
            "event": {"kind": "event", "event": "Data Usage"},
            "template": {"template_id": "t", "variants": {"zh": {"text": "hi"}}}})["trigger_id"]
    finally:
        gk.close()
    args = ["-w", "Shop", "--data-dir", str(d)]
    r = runner.invoke(app, ["trigger", "list", *args])
    assert r.exit_code == 0 and tid in r.output and "active" in r.output, r.output
    r = runner.invoke(app, ["trigger", "pause", tid, *args])
    assert r.exit_code == 0 and "paused" in r.output, r.output
    r = runner.invoke(app, ["trigger", "show", tid, *args])
    assert json.loads(r.stdout)["status"] == "paused"
    assert "active" in runner.invoke(app, ["trigger", "resume", tid, *args]).output
    r = runner.invoke(app, ["trigger", "delete", tid, *args])
    assert r.exit_code == 0 and "0 queued message(s) not sent" in " ".join(r.output.split()), r.output
    r = runner.invoke(app, ["trigger", "show", tid, *args])
    assert r.exit_code == 1 and "not found" in r.output
    gk = Goldkey.open(Settings(data_dir=d))
    try:
        from goldkey.govern.audit import list_entries

        acts = [(e["actor"], e["action"]) for e in list_entries(gk.engine, ws)["items"]]
    finally:
        gk.close()
    assert [a for a in acts if a[1].startswith("trigger.")] == [
        ("cli", "trigger.delete"), ("cli", "trigger.resume"), ("cli", "trigger.pause")]


def test_user_commands_take_a_workspace_name_or_id(tmp_path: Path) -> None:
    d = str(tmp_path)
    ws = json.loads(runner.invoke(app, ["workspace", "create", "明眸 Eye Care", "--json", "--data-dir", d]).stdout)
    r = runner.invoke(app, ["user", "create", "ana@example.com", "-w", "明眸 Eye Care", "--role", "analyst",
                            "--data-dir", d])
    assert r.exit_code == 0 and "role:     analyst" in r.stdout and "password: " in r.stdout, r.output
    r = runner.invoke(app, ["user", "list", "-w", ws["workspace_id"], "--data-dir", d])
    assert r.exit_code == 0 and r.stdout.startswith("ana@example.com\tanalyst"), r.output
    r = runner.invoke(app, ["user", "create", "bo@example.com", "-w", "ws_nope", "--data-dir", d])
    assert r.exit_code == 2 and "no workspace with id 'ws_nope'" in r.output
    assert "bo@example.com" not in runner.invoke(app, ["user", "list", "-w", "明眸 Eye Care", "--data-dir", d]).stdout


def test_a_workspace_named_like_an_id_is_found_by_its_name(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert runner.invoke(app, ["workspace", "create", "ws_europe", "--data-dir", d]).exit_code == 0
    r = runner.invoke(app, ["segment", "list", "-w", "ws_europe", "--data-dir", d])
    assert r.exit_code == 0, r.output
