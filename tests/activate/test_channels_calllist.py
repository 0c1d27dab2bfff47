"""The outbound-call list: only customers with ``call`` consent granted reach it (the same rule as the
segments' call-list export, ``govern.consent.latest_decision``, including a denial on a merged
profile), as CSV rows a call centre can open."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from goldkey.activate.sender import SendRequest
from goldkey.activate.templates import compile_for_workspace

NOON_SH = datetime(2026, 3, 4, 4, 0, tzinfo=UTC)


def test_call_list_reaches_only_call_consented_customers(env: Any, tmp_path: Path) -> None:
    ws, h = env.ws.workspace_id, env.admin_auth()
    people = [("u0", "张三", "granted"), ("u1", "李四", "denied"), ("u2", "王五", None), ("u3", "赵六", "granted")]
    for uid, name, _ in people:
        env.post("/v1/identify", {"userId": uid, "traits": {"name": name, "phone": f"+861391234000{uid[1]}",
                                                            "city": "上海", "member_tier": "gold"}})
    pid = {uid: env.client.get(f"/api/v1/profiles/lookup?user_id={uid}", headers=h).json()["profile_id"]
           for uid, _, _ in people}
    for uid, _, status in people:
        if status:
            r = env.client.put(f"/api/v1/profiles/{pid[uid]}/consents", json={"channel": "call", "status": status},
                               headers=h)
            assert r.status_code == 200, r.text
    # u3 also browsed anonymously and refused calls there; the later denial wins once the profiles merge
    env.post("/v1/identify", {"anonymousId": "anon-3", "traits": {"name": "访客"}})
    visitor = env.client.get("/api/v1/profiles/lookup?anonymous_id=anon-3", headers=h).json()["profile_id"]
    env.client.put(f"/api/v1/profiles/{visitor}/consents", json={"channel": "call", "status": "denied"}, headers=h)
    env.post("/v1/identify", {"userId": "u3", "anonymousId": "anon-3"})

    ch = env.gk.sender.channels.save(ws, name="call centre", kind="call", config={"path": "calls.csv"})
    cid, path = ch["channel_id"], env.gk.sender.channels.file_path(ws, ch["config"]["path"])
    tpl = compile_for_workspace(env.gk.engine, ws, {"variants": {"zh": {
        "text": "回访{{ attributes.name }}：续费优惠"}}})

    rep = env.gk.sender.send(SendRequest(ws, cid, tpl, list(pid.values()), "renewal-calls", now=NOON_SH))
    assert rep.delivery.sent == 1, rep.summary()
    assert rep.suppressed[pid["u1"]] == "opted out of call/marketing"
    assert rep.suppressed[pid["u2"]] == "no consent for call/marketing"
    assert rep.suppressed[pid["u3"]] == "opted out of call/marketing"
    raw = path.read_bytes()
    assert raw.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert rows[0] == ["message_id", "profile_id", "name", "phone", "city", "member_tier", "script"]
    assert [r[1:] for r in rows[1:]] == [[pid["u0"], "张三", "+8613912340000", "上海", "gold", "回访张三：续费优惠"]]
    # the segments' call-list export applies the very same rule
    seg = env.client.post("/api/v1/segments", json={"name": "all", "rule": {
        "kind": "attribute", "field": "profile.origin", "op": "is_set"}}, headers=h).json()
    env.client.post(f"/api/v1/segments/{seg['segment_id']}/compute", headers=h)
    r = env.client.get(f"/api/v1/segments/{seg['segment_id']}/export?kind=call_list&mask=false", headers=h)
    exported = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert exported[1:] == [[pid["u0"], "张三", "+8613912340000", "上海", "gold"]]
    # a do-not-call entry (a suppression on call, or on every channel) keeps a consenting customer
    # off the export as it keeps them off the channel; before, the export read consent alone
    for channel in ("call", "*"):
        r = env.client.post("/api/v1/suppressions", json={"profile_ids": [pid["u0"]], "channel": channel,
                                                          "reason": "do-not-call registry"}, headers=h)
        assert r.status_code == 200 and r.json()["suppressed"] == 1, r.text
        r = env.client.get(f"/api/v1/segments/{seg['segment_id']}/export?kind=call_list&mask=false", headers=h)
        assert list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))[1:] == []
        r = env.client.post("/api/v1/suppressions", json={"profile_ids": [pid["u0"]], "channel": channel,
                                                          "reason": "lifted", "expires_at": "2000-01-01T00:00:00Z"},
                            headers=h)  # an expired suppression stands no more
        assert r.status_code == 200, r.text
    r = env.client.get(f"/api/v1/segments/{seg['segment_id']}/export?kind=call_list&mask=false", headers=h)
    assert len(list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))) == 2


def test_file_channels_write_only_inside_their_workspace_folder(env: Any, tmp_path: Path) -> None:
    """Before, a brand's admin could point a sink or a call list at any file on the server: another
    brand's call list, the stores' own files, a crontab (a call list's script is free text)."""
    ws, h = env.ws.workspace_id, env.admin_auth()
    root = env.gk.settings.resolved_channel_files_dir().resolve()
    other = env.gk.workspaces.create("Other brand").workspace_id
    for kind, path in (("call", "/etc/cron.d/goldkey"), ("call", "../" + other + "/calls.csv"),
                       ("sink", str(root / other / "sent.jsonl")), ("sink", str(tmp_path / "out.jsonl")),
                       ("call", str(env.gk.settings.data_dir / "operational.sqlite")), ("sink", "."),
                       ("sink", ""), ("call", "calls\x00.csv")):
        r = env.client.post("/api/v1/channels", json={"name": f"{kind} {path}"[:200], "kind": kind,
                                                      "config": {"path": path}}, headers=h)
        assert r.status_code == 400 and r.json()["field"] == "config.path", (path, r.text)
        assert "writes only inside this workspace's folder" in r.json()["error"]
    # a file name, or an absolute path inside the folder: stored as the file it names
    for name, path in (("calls", "calls/2026-11.csv"), ("calls 2", str(root / ws / "calls.csv"))):
        r = env.client.post("/api/v1/channels", json={"name": name, "kind": "call", "config": {"path": path}},
                            headers=h)
        assert r.status_code == 201, r.text
        assert r.json()["config"]["path"] in ("calls/2026-11.csv", "calls.csv")  # kept relative to the folder
    r = env.client.post("/api/v1/channels", json={"name": "console", "kind": "sink", "config": {"path": "-"}},
                        headers=h)
    assert r.status_code == 201 and r.json()["config"]["path"] == "-"

    # a channel stored with an outside path (saved before the check existed) is not opened
    import orjson
    import sqlalchemy as sa

    from goldkey.core.errors import InvalidInput
    from goldkey.store.operational import channels

    cid = r.json()["channel_id"]
    with env.gk.engine.begin() as c:
        c.execute(channels.update().where(channels.c.channel_id == cid).values(
            config=orjson.dumps({"path": str(tmp_path / "legacy.jsonl")}).decode(), updated_at=sa.func.now()))
    with pytest.raises(InvalidInput, match="writes only inside this workspace's folder") as ei:
        env.gk.sender.channels.open(ws, cid)
    assert ei.value.field == "config.path"
    # a path is kept relative to the folder: a data directory moved elsewhere (a restored backup)
    # opens the same channels in their new place
    from goldkey.activate.channel_store import ChannelStore

    calls = env.client.get("/api/v1/channels", headers=h).json()
    cid2 = next(c["channel_id"] for c in calls if c["name"] == "calls")
    moved = ChannelStore(env.gk.engine, env.gk.sender.keys, files_dir=tmp_path / "moved")
    assert moved.open(ws, cid2).config.path == str((tmp_path / "moved" / ws / "calls" / "2026-11.csv").resolve())
