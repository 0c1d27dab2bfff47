"""A model run or an orders import cut off part-way (an error, a killed process) leaves the registry
and the profiles agreeing: the version whose write-back did not finish is retired, and order
summaries committed without their orders are recomputed at the next start.

Found by a crash review: ``kill -9`` right after a run saved v2 left GET /models at v2 while every
profile held v1's scores (4 of 6 kills), and the refit schedule, dating the model by v2, left it so
for a day."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from goldkey.insight import registry as reg
from goldkey.insight.rfm import RFMService
from goldkey.runtime import Goldkey
from goldkey.settings import Settings

AS_OF = datetime(2024, 7, 1, tzinfo=UTC)


def _orders(gk: Goldkey, ws: str, tmp: Path) -> None:
    rows = ["order_id,ordered_at,crm_id,sku,category,quantity,unit_price"]
    for c in range(40):
        for k in range(1 + c % 4):
            rows.append(f"O{c}-{k},2024-0{1 + k}-{1 + c % 27:02d} 10:00,C{c},S,lens,1,{10 + c}")
    f = tmp / "orders.csv"
    f.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert gk.importer.run(ws, "orders", f, {}).quarantined == 0


@contextmanager
def _opened(data: Path) -> Iterator[Goldkey]:
    """An instance on ``data`` for a block; closing it is the "stop" a next opening starts after."""
    gk = Goldkey.open(Settings(data_dir=data))
    try:
        yield gk
    finally:
        gk.close()


def _with_orders(gk: Goldkey, tmp: Path) -> str:
    """A new workspace with the orders of :func:`_orders`; its id."""
    ws = gk.workspaces.create("A").workspace_id
    _orders(gk, ws, tmp)
    return ws


def _summaries(gk: Goldkey, ws: str) -> list[str]:
    from goldkey.store.operational import profiles

    with gk.engine.connect() as c:
        return [r.order_summary for r in c.execute(sa.select(profiles.c.order_summary)
                                                   .where(profiles.c.workspace_id == ws))]


def _stored_versions(gk: Goldkey, ws: str) -> set[float]:
    from goldkey.store.operational import profile_scores

    with gk.engine.connect() as c:
        rows = c.execute(sa.select(profile_scores.c.scores).where(profile_scores.c.workspace_id == ws)).all()
    import orjson

    return {orjson.loads(r.scores).get("rfm_model_version") for r in rows}


def test_a_run_that_fails_after_saving_retires_its_version(tmp_path: Path, monkeypatch: Any) -> None:
    with _opened(tmp_path / "d") as gk:
        ws = _with_orders(gk, tmp_path)
        svc = RFMService.from_goldkey(gk)
        svc.run(ws, {"as_of": AS_OF.isoformat()})
        assert _stored_versions(gk, ws) == {1.0}

        import goldkey.insight.rfm as rfm_mod

        def broken(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("the disk is full")

        monkeypatch.setattr(rfm_mod, "write_model_table", broken)
        with pytest.raises(RuntimeError):
            svc.run(ws, {"as_of": AS_OF.isoformat()})
        assert svc.registry.versions(ws, "rfm") == [1]  # v2 never reached the profiles
        assert _stored_versions(gk, ws) == {1.0}
        d = svc.registry.root / ws / "rfm"
        assert [p.name for p in d.iterdir() if p.name.startswith(".interrupted-v2-")]
        assert not (d / ".run").exists()
        monkeypatch.undo()
        # the retired number is never given again: two different fits are never both "v2"
        assert svc.run(ws, {"as_of": AS_OF.isoformat()})["version"] == 3
        assert _stored_versions(gk, ws) == {3.0} and svc.registry.versions(ws, "rfm") == [1, 3]

        # a failure once the outputs started to land keeps the version: the profiles may hold part of
        # it (a write-back goes in chunks), and the next run replaces it
        import goldkey.insight.writeback as wb

        real = wb._apply_patches

        def half(*a: Any, **k: Any) -> Any:
            real(*a, **k)
            raise RuntimeError("cut off after the first chunk")

        monkeypatch.setattr(wb, "_apply_patches", half)
        with pytest.raises(RuntimeError):
            svc.run(ws, {"as_of": AS_OF.isoformat()})
        assert svc.registry.versions(ws, "rfm") == [1, 3, 4]
        assert not (d / ".run").exists()


def test_a_run_cut_off_by_a_killed_process_is_retired_at_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with _opened(data) as gk:
        ws = _with_orders(gk, tmp_path)
        svc = RFMService.from_goldkey(gk)
        svc.run(ws, {"as_of": AS_OF.isoformat()})
        # what a process killed between saving v2 and its write-back leaves: the marker, and v2
        d = (svc.registry.root / ws / "rfm").resolve()
        reg._begin_run(d)
        first = svc.registry.load(ws, "rfm", 1, kind="rfm")
        svc.registry.save(ws, "rfm", kind="rfm", definition=first.definition, artifact=first.artifact, metrics={})
        assert svc.registry.versions(ws, "rfm") == [1, 2]
    with _opened(data) as gk:
        svc = RFMService.from_goldkey(gk)
        assert svc.registry.versions(ws, "rfm") == [1]
        assert svc.registry.list(ws)[0]["version"] == 1 and _stored_versions(gk, ws) == {1.0}
        assert not (d / ".run").exists()


def test_order_summaries_of_an_orders_import_cut_off_between_its_stores_are_recomputed(tmp_path: Path) -> None:
    from goldkey.store.operational import imports, profiles

    data = tmp_path / "d"
    with _opened(data) as gk:
        ws = _with_orders(gk, tmp_path)
        # the operational half of a second import committed (summaries counting its orders), the
        # analytical half never did, and the process died with the import 'running'
        with gk.engine.begin() as c:
            c.execute(profiles.update().where(profiles.c.workspace_id == ws)
                      .values(order_summary='{"orders": 99, "revenue": 1.0}'))
            c.execute(imports.update().where(imports.c.workspace_id == ws).values(status="running"))
    with _opened(data) as gk:
        with gk.engine.connect() as c:
            status = c.execute(sa.select(imports.c.status).where(imports.c.workspace_id == ws)).scalars().all()
        import orjson

        counts = sorted(orjson.loads(text)["orders"] for text in _summaries(gk, ws))
        assert counts == sorted(1 + c % 4 for c in range(40)) and status == ["failed"]


def test_order_summaries_written_by_an_older_version_are_recomputed_once(tmp_path: Path) -> None:
    # summaries written before refunds and cancellations were told from purchases kept counting them
    # until a later orders import touched the profile (review of this session's commits)
    from goldkey.store.operational import profiles

    data = tmp_path / "d"
    with _opened(data) as gk:
        ws = _with_orders(gk, tmp_path)
        with gk.engine.begin() as c:  # what the older version wrote: refunds counted, no currencies
            c.execute(profiles.update().where(profiles.c.workspace_id == ws)
                      .values(order_summary='{"orders": 5, "revenue": 600.0}'))
    (data / ".order-summaries-v2").unlink()  # a data directory of the older version has no marker
    with _opened(data) as gk:
        got = _summaries(gk, ws)
        assert all('"revenue_by_currency"' in g for g in got) and (data / ".order-summaries-v2").exists()
