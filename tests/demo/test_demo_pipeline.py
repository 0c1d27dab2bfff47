"""The demo's whole pipeline at a small size: generate, load through the importers and the
tracking API over HTTP, then check what landed. Keeps `make demo` from breaking silently."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from rich.console import Console

from goldkey.demo.market import MarketManifest
from goldkey.demo.run import run_demo
from goldkey.settings import Settings
from goldkey.store.operational import profiles


def test_demo_pipeline_small(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=0)
    console = Console(file=open(tmp_path / "demo.log", "w"), width=200)  # noqa: SIM115
    result = run_demo(settings, customers=400, events=20_000, seed=7, serve_forever=False, console=console)
    manifest = MarketManifest.load(tmp_path / "data" / "demo-market")
    generated = sum(manifest.counts[f"{b.brand}.events"] for b in manifest.brands)

    assert result.events_sent == generated
    assert result.events_rejected == 0
    assert result.events_accepted + result.events_duplicate == generated
    assert result.events_duplicate == 0
    assert {i["kind"] for i in result.imports} == {"products", "customers", "orders", "feedback"}
    for imp in result.imports:
        assert imp["status"] == "done", imp
        assert imp["accepted"] > 0
        assert imp["accepted"] + imp["quarantined"] + imp["duplicates_merged"] == imp["rows_read"], imp
    bad = sum(i["quarantined"] for i in result.imports)
    assert bad >= 1  # the generator puts dirty rows in every brand's files

    from goldkey.runtime import Goldkey

    gk = Goldkey.open(settings)
    try:
        stored = gk.analytical.query("SELECT count(*) FROM events")[0][0]
        assert stored == result.events_accepted
        with gk.engine.connect() as conn:
            existing = conn.execute(
                sa.select(sa.func.count())
                .select_from(profiles)
                .where(profiles.c.origin == "existing", profiles.c.merged_into.is_(None))
            ).scalar()
            new = conn.execute(
                sa.select(sa.func.count())
                .select_from(profiles)
                .where(profiles.c.origin == "new", profiles.c.merged_into.is_(None))
            ).scalar()
        assert existing > 0 and new > 0
        eyecare = next(b for b in result.brands if b.brand == "eyecare")
        with_orders = gk.analytical.query(
            "SELECT count(DISTINCT canonical_id) FROM orders_resolved WHERE workspace_id = ?", [eyecare.workspace_id]
        )[0][0]
        assert with_orders > 0
    finally:
        gk.close()

    # a second run re-uses the market, re-issues keys and loads nothing twice
    again = run_demo(settings, customers=400, events=20_000, seed=7, serve_forever=False, console=console)
    assert again.events_accepted == 0 and again.events_duplicate == generated
    assert all(i["status"] == "unchanged" for i in again.imports)
