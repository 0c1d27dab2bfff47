"""`goldkey segment ...` and `goldkey tag ...` on a local data directory: a customers import, then
tags and segments defined, computed and exported from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from goldkey.cli import app

runner = CliRunner()


def _run(*args: str) -> str:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.stdout


def test_segments_and_tags_from_the_cli(tmp_path: Path) -> None:
    d = str(tmp_path / "data")
    _run("workspace", "create", "Eye Care", "--data-dir", d)
    csv = tmp_path / "c.csv"
    csv.write_text("id,mobile,city,points\nC1,13912345678,上海,120\nC2,13912345679,北京,30\nC3,13912345670,上海,5\n",
                   encoding="utf-8")
    _run("import", "customers", str(csv), "--map", "id=crm_id", "--map", "mobile=phone", "--data-dir", d)

    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"kind": "and", "conditions": [
        {"kind": "attribute", "field": "attributes.city", "op": "eq", "value": "上海"},
        {"kind": "attribute", "field": "attributes.points", "op": "gte", "value": 100}]}), encoding="utf-8")
    est = json.loads(_run("segment", "estimate", "--rule", f"@{rule}", "--data-dir", d))
    assert est["size"] == 1 and est["explanations"][0]["matched"] is True
    seg = json.loads(_run("segment", "create", "上海高积分", "--rule", f"@{rule}", "--data-dir", d))
    out = runner.invoke(app, ["segment", "compute", "--data-dir", d])
    assert out.exit_code == 0 and "1 members (+1 -0)" in out.output, out.output
    listing = _run("segment", "list", "--data-dir", d)
    assert "上海高积分" in listing
    calls = tmp_path / "members.csv"
    out = runner.invoke(app, ["segment", "export", seg["segment_id"], "--out", str(calls), "--data-dir", d])
    assert out.exit_code == 0, out.output
    rows = calls.read_text(encoding="utf-8-sig").splitlines()
    assert len(rows) == 2 and "+86139****5678" in rows[1]

    # a bad rule is refused with the clause's path, and nothing is saved
    bad = runner.invoke(app, ["segment", "create", "bad", "--rule",
                              '{"kind": "attribute", "field": "attributes.cty", "op": "eq", "value": 1}',
                              "--data-dir", d])
    assert bad.exit_code == 1 and "rule.field" in bad.output and "attributes.city" in bad.output

    tag = tmp_path / "tag.json"
    tag.write_text(json.dumps({"name": "shanghai", "kind": "rule", "value_type": "boolean", "category": "fixed",
                               "rules": [{"rule": {"kind": "attribute", "field": "attributes.city", "op": "eq",
                                                   "value": "上海"}}]}), encoding="utf-8")
    _run("tag", "create", f"@{tag}", "--data-dir", d)
    out = runner.invoke(app, ["tag", "compute", "--data-dir", d])
    assert out.exit_code == 0 and "shanghai: 2 profiles, 2 changed" in out.output, out.output
    cov = json.loads(_run("tag", "coverage", "shanghai", "--data-dir", d))
    assert cov["tagged"] == 2 and cov["total_profiles"] == 3

    manual = tmp_path / "manual.json"
    manual.write_text(json.dumps({"name": "vip_list", "kind": "manual", "value_type": "boolean",
                                  "category": "dynamic"}), encoding="utf-8")
    _run("tag", "create", f"@{manual}", "--data-dir", d)
    listfile = tmp_path / "vip.csv"
    listfile.write_text("phone\n139 1234 5679\n13800001111\n", encoding="utf-8")
    out = runner.invoke(app, ["tag", "set", "vip_list", "--file", str(listfile), "--data-dir", d])
    assert out.exit_code == 0 and "2 rows: 1 profiles set, 1 changed, 1 quarantined" in out.output, out.output
    hist = json.loads(_run("tag", "history", "vip_list", "--data-dir", d))
    assert len(hist) == 1 and hist[0]["value"] is True
