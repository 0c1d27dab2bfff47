"""Instants in model definitions and report requests are checked before anything runs: an as_of
before 1900 overflowed the window arithmetic (HTTP 500 on every model run, a traceback in the CLI,
and a feedback-text version saved by the failed run), and an as_of in the future fitted on a future
nobody has seen (churn called every customer of a window not yet over "churned")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

RUNS = [
    ("/api/v1/insights/rfm/run", {}),
    ("/api/v1/insights/clv/run", {}),
    ("/api/v1/insights/lifecycle/run", {}),
    ("/api/v1/insights/clusters/run", {}),
    ("/api/v1/insights/churn/train", {}),
    ("/api/v1/insights/propensity/train", {"category": "care"}),
    ("/api/v1/insights/affinity/run", {}),
    ("/api/v1/insights/recommendations/train", {}),
    ("/api/v1/insights/feedback/analyze", {}),
    ("/api/v1/insights/lookalikes", {"profile_ids": ["p1"]}),
]


@pytest.mark.parametrize("as_of", ["0001-01-01T00:00:00Z", "1899-12-31T23:59:59Z", "50 days ahead"])
def test_every_model_run_refuses_an_as_of_out_of_range(env: Any, as_of: str) -> None:
    if as_of == "50 days ahead":  # computed here: a test id must be the same in every xdist worker
        as_of = (datetime.now(UTC) + timedelta(days=50)).isoformat()
    for path, body in RUNS:
        r = env.client.post(path, json={**body, "as_of": as_of}, headers=env.admin_auth())
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert r.json()["field"] == "as_of", (path, r.text)
    assert env.client.get("/api/v1/models", headers=env.admin_auth()).json() in ([], {"models": []})


def test_report_instants_are_checked(env: Any) -> None:
    for field in ("start", "end"):
        for bad in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):
            for path, body in (("/api/v1/insights/reports/funnel", {"steps": [{"event": "A"}, {"event": "B"}]}),
                               ("/api/v1/insights/reports/cohorts", {})):
                r = env.client.post(path, json={**body, field: bad}, headers=env.admin_auth())
                assert r.status_code == 400 and r.json()["field"] == field, (path, field, bad, r.text)
            r = env.client.get("/api/v1/insights/reports/channels", params={field: bad}, headers=env.admin_auth())
            assert r.status_code == 400 and r.json()["field"] == field, (field, bad, r.text)


def test_refit_every_hours_is_bounded_for_every_model(env: Any) -> None:
    # before: RFM, lifecycle and CLV took 10**15, and the schedule then failed on every look
    for path in ("/api/v1/insights/rfm/run", "/api/v1/insights/lifecycle/run", "/api/v1/insights/clv/run"):
        r = env.client.post(path, json={"refit_every_hours": 10**15}, headers=env.admin_auth())
        assert r.status_code == 400 and r.json()["field"] == "refit_every_hours", (path, r.text)


def test_the_cli_says_so_without_a_traceback(tmp_path: Path) -> None:
    from goldkey.cli import app

    runner = CliRunner()
    d = str(tmp_path)
    assert runner.invoke(app, ["workspace", "create", "A", "--data-dir", d]).exit_code == 0
    for cmd in (["rfm"], ["clv"], ["churn"], ["lifecycle"], ["feedback"]):
        r = runner.invoke(app, ["insight", *cmd, "--as-of", "0001-01-01", "--data-dir", d])
        assert r.exit_code == 1 and "as_of" in r.output and "Traceback" not in r.output, (cmd, r.output)
        assert not isinstance(r.exception, OverflowError), cmd
