"""A server of its own (``goldkey serve``) builds every workspace's profile facts in the background
at start-up, so the first live estimate costs what the next one does."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from goldkey.app import create_app
from goldkey.collect.tracking import normalise_event, now_micros
from goldkey.runtime import Goldkey
from goldkey.settings import Settings


def test_serve_warms_the_facts_of_every_workspace(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    gk = Goldkey.open(settings)
    try:
        ids = []
        for name in ("warm-a", "warm-b"):
            ws = gk.workspaces.create(name).workspace_id
            ids.append(ws)
            evs = [normalise_event({"type": "identify", "userId": f"u{i}", "traits": {"city": "上海", "age": 30 + i}},
                                   received_at=now_micros()) for i in range(5)]
            gk.writer.submit_events(ws, evs).result()
    finally:
        gk.close()

    app = create_app(settings)
    with TestClient(app):
        facts = app.state.gk.facts
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(facts.current(ws) is None for ws in ids):
            time.sleep(0.1)
        built = {ws: facts.current(ws) for ws in ids}
        assert all(info is not None and info.profiles == 5 for info in built.values()), built
        # the estimate reuses that build (nothing changed since)
        seg = app.state.gk.segments
        assert seg.estimate(ids[0], {"kind": "attribute", "field": "attributes.city", "op": "eq",
                                     "value": "上海"})["size"] == 5
        assert facts.current(ids[0]) is built[ids[0]]
