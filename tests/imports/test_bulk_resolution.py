"""Bulk identity resolution on import (``IdentityGraph.resolve_many``) gives the same profiles,
identities, merges, conflicts, attributes and order summaries as resolving the records one by one
(what imports did before), on a file built to hit every path: new customers, known ones, partly
known ones, identifiers shared by different records, blocked values, limits, custom identifier
types (one reusing a built-in type's name), merges whose loser other records name, and orders of
new customers placed several times."""

from __future__ import annotations

import csv
import re
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
import sqlalchemy as sa

from conftest import Env, make_env, operational_url
from goldkey.core.clock import as_utc
from goldkey.identity import graph as graph_module
from goldkey.identity.graph import IdentityGraph, UnitOfWork
from goldkey.identity.rules import CustomIdentifier, IdentityRules
from goldkey.store.operational import identities, identity_conflicts, merges, profiles

MAPPING = {"会员编号": "crm_id", "手机号": "phone", "邮箱": "email", "姓名": "name", "注册时间": "registered_at"}
HEADER = ["会员编号", "手机号", "邮箱", "姓名", "注册时间", "member_card_no", "alt_email"]

ROWS = [
    # all new, nobody else holds them
    ["C001", "13900000001", "new1@x.com", "新一", "2020-01-01 10:00", "", ""],
    # the phone belongs to u1 (tracked): C002 joins u1's profile
    ["C002", "13911112222", "", "老二", "2019-05-01 10:00", "", ""],
    # the e-mail belongs to an anonymous visitor
    ["C003", "", "visitor@x.com", "访客", "2018-01-01 10:00", "", ""],
    # one phone, two customers: the second is refused the phone (a conflict)
    ["C004", "13900000044", "", "甲", "2020-02-01 10:00", "", ""],
    ["C005", "139 0000 0044", "", "乙", "2020-02-02 10:00", "", ""],
    # a blocked phone never links
    ["C008", "+8613800138000", "", "封号", "2020-03-01 10:00", "", ""],
    # nothing but a blocked value: a profile of its own
    ["unknown", "", "", "无名", "2020-03-02 10:00", "", ""],
    ["null", "", "", "无名二", "2020-03-03 10:00", "", ""],
    # u1's phone again with another CRM id: u1's profile holds C002 by now
    ["C010", "13911112222", "", "冲突", "2020-04-01 10:00", "", ""],
    # custom identifier, new and known
    ["C011", "", "", "会员一", "2020-05-01 10:00", "VIP-1", ""],
    ["C012", "", "", "会员二", "2020-05-02 10:00", "VIP-2", ""],
    # known entirely (imported before)
    ["C900", "", "", "老客户", "2015-01-01 10:00", "", ""],
    # an e-mail of a visitor seen after C014 was imported: the visitor merges into C014's profile
    ["", "", "late15@x.com", "早到", "2020-06-01 10:00", "", ""],
    ["C014", "", "late14@x.com", "合并", "2020-06-02 10:00", "", ""],
    ["", "", "late16@x.com", "晚到", "2020-06-03 10:00", "", ""],
    # the custom type named like a built-in one: two e-mails in one record, and one alone
    ["C020", "", "two1@x.com", "双邮", "2020-07-01 10:00", "", "TWO2@x.com"],
    ["C021", "", "", "单邮", "2020-07-02 10:00", "", "only@x.com"],
    ["C022", "", "same@x.com", "同邮", "2020-07-03 10:00", "", "Same@x.com"],
    # the second e-mail of C020, alone: C020 holds it by then
    ["C023", "", "two2@x.com", "后到", "2020-07-04 10:00", "", ""],
    # an earlier registration than what the profile knows moves its first-seen time back
    ["C900B", "13900009000", "", "更早", "2001-01-01 10:00", "", ""],
]

ORDER_HEADER = ["order_id", "ordered_at", "crm_id", "phone", "email", "sku", "category", "quantity", "unit_price"]
ORDER_ROWS = [
    ["O1", "2024-01-01 10:00", "C001", "", "", "A", "lens", "1", "10"],
    ["O2", "2024-01-02 10:00", "", "13900000001", "", "B", "sol", "2", "5"],
    # a new customer ordering three times (one set of identifiers: one new profile)
    ["O3", "2024-01-03 10:00", "", "13700000003", "", "A", "lens", "1", "10"],
    ["O4", "2024-01-04 10:00", "", "13700000003", "", "C", "frame", "1", "99"],
    ["O5", "2024-01-05 10:00", "", "13700000003", "", "", "", "1", "1"],
    # two sets sharing a value: one by one
    ["O6", "2024-01-06 10:00", "C777", "13700000006", "", "A", "lens", "1", "10"],
    ["O7", "2024-01-07 10:00", "", "13700000006", "", "A", "lens", "1", "10"],
    ["O8", "2024-01-08 10:00", "C778", "13700000006", "", "A", "lens", "1", "10"],
    # the merged-away visitor's e-mail
    ["O9", "2024-01-09 10:00", "", "", "late15@x.com", "D", "sun", "1", "50"],
    ["O10", "2024-01-10 10:00", "C014", "", "", "D", "sun", "1", "50"],
]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def reference_resolve_many(
    self: IdentityGraph,
    uow: UnitOfWork,
    workspace_id: str,
    raw_ids: Any,
    at: pl.Series,
    source: str,
    context: dict[str, Any] | None = None,
    attributes: Any = None,
    progress: Any = None,
) -> tuple[list[str], pl.Series]:
    """What imports did before: normalise, prefetch and resolve every record in order."""
    cols = [(t, s.to_list()) for t, s in raw_ids]
    ats = at.to_list()
    norm = [
        self.normalised(workspace_id, [(t, vals[i]) for t, vals in cols if vals[i] is not None])
        for i in range(len(ats))
    ]
    self.prefetch(uow.conn, {(workspace_id, t, v) for ids in norm for t, v in ids})
    pids = [self.resolve(uow, workspace_id, ids, as_utc(a), source, context) for ids, a in zip(norm, ats, strict=True)]
    return pids, pl.Series([False] * len(ats))


def identify(env: Env, mid: str, ts: str, **kw: Any) -> None:
    r = env.post("/v1/identify", {"messageId": mid, "timestamp": ts, **kw})
    assert r.status_code == 200, r.text


def scenario(env: Env, tmp: Path) -> None:
    ws = env.ws.workspace_id
    rules = IdentityRules(
        custom=[
            CustomIdentifier(name="member_card", trait="member_card_no"),
            CustomIdentifier(name="email", trait="alt_email", limit=3),
        ]
    )
    env.gk.workspaces.set_rules(ws, rules)
    identify(env, "t1", "2021-01-01T00:00:00Z", userId="u1", traits={"phone": "13911112222"})
    identify(env, "t2", "2021-01-02T00:00:00Z", anonymousId="anon-1", traits={"email": "visitor@x.com"})
    identify(env, "t3", "2021-01-03T00:00:00Z", userId="u2", traits={"member_card_no": "VIP-2"})
    first = write_csv(
        tmp / "first.csv",
        HEADER,
        [
            ["C900", "", "", "老客户", "2015-01-01 10:00", "", ""],
            ["C900B", "13900009000", "", "更早", "2015-01-02 10:00", "", ""],
            ["C014", "", "", "合并", "2010-01-01 10:00", "", ""],
        ],
    )
    env.gk.importer.run(ws, "customers", first, MAPPING)
    identify(env, "t4", "2021-02-01T00:00:00Z", anonymousId="anon-2", traits={"email": "late14@x.com", "city": "广州"})
    # the visitor also holds late15 and late16: merged into C014's profile by the import below
    identify(env, "t5", "2021-02-02T00:00:00Z", anonymousId="anon-2", traits={"email": "late15@x.com"})
    identify(env, "t6", "2021-02-03T00:00:00Z", anonymousId="anon-2", traits={"email": "late16@x.com"})
    s = env.gk.importer.run(ws, "customers", write_csv(tmp / "crm.csv", HEADER, ROWS), MAPPING)
    assert s.status == "done"
    o = env.gk.importer.run(ws, "orders", write_csv(tmp / "orders.csv", ORDER_HEADER, ORDER_ROWS), {})
    assert o.status == "done" and o.accepted == len(ORDER_ROWS)
    # the same file again: nothing new, nothing lost
    env.gk.importer.run(ws, "customers", tmp / "crm.csv", MAPPING, force=True)


def snapshot(env: Env) -> dict[str, Any]:
    """The workspace's identity graph and profiles with profile ids replaced by stable labels."""
    ws = env.ws.workspace_id
    with env.gk.engine.connect() as conn:
        ids = conn.execute(
            sa.select(identities.c.id_type, identities.c.id_value, identities.c.profile_id, identities.c.source).where(
                identities.c.workspace_id == ws
            )
        ).all()
        profs = conn.execute(sa.select(profiles).where(profiles.c.workspace_id == ws)).all()
        confl = conn.execute(sa.select(identity_conflicts).where(identity_conflicts.c.workspace_id == ws)).all()
        mrg = conn.execute(sa.select(merges).where(merges.c.workspace_id == ws)).all()
    held: dict[str, list[str]] = {}
    for t, v, pid, _ in ids:
        held.setdefault(pid, []).append(f"{t}:{v}")
    label: dict[str, str] = {}
    seen: dict[str, int] = {}
    for p in sorted(profs, key=lambda p: (as_utc(p.first_seen_at), p.profile_id)):
        if p.profile_id in held:
            label[p.profile_id] = "|".join(sorted(held[p.profile_id]))
        else:  # merged away (its identities moved) or never held any; re-imports repeat these
            text = "attrs:" + orjson.dumps(orjson.loads(p.attributes), option=orjson.OPT_SORT_KEYS).decode()
            seen[text] = seen.get(text, 0) + 1
            label[p.profile_id] = f"{text}#{seen[text]}"
    assert len(set(label.values())) == len(label), "labels must tell profiles apart"

    def relabel(text: str) -> str:
        return re.sub(r"prf_[0-9a-z]{26}", lambda m: label.get(m.group(0), "?"), text)

    live = {
        label[p.profile_id]: dict(
            attributes=orjson.loads(p.attributes),
            order_summary=orjson.loads(p.order_summary),
            origin=p.origin,
            first_seen_at=as_utc(p.first_seen_at),
            first_seen_source=p.first_seen_source,
            first_seen_context=orjson.loads(p.first_seen_context),
            last_seen_at=as_utc(p.last_seen_at),
            canonical=label[p.canonical_id],
        )
        for p in profs
        if p.merged_into is None
    }
    dead = sorted((label[p.profile_id], label[p.merged_into], label[p.canonical_id]) for p in profs if p.merged_into)
    orders = env.gk.analytical.query(
        "SELECT order_id, canonical_id FROM orders_resolved WHERE workspace_id = ? ORDER BY order_id", [ws]
    )
    return {
        "identities": sorted((f"{t}:{v}", label[pid], src) for t, v, pid, src in ids),
        "profiles": live,
        "merged": dead,
        "conflicts": sorted((label[c.profile_id], c.id_type, c.id_value, relabel(c.reason)) for c in confl),
        "merges": sorted((label[m.winner_id], label[m.loser_id], m.id_type, m.id_value) for m in mrg),
        "orders": [(o, label.get(c, c)) for o, c in orders],
    }


@contextmanager
def instance(tmp: Path, backend: str) -> Iterator[Env]:
    with operational_url(backend) as url:
        gen = make_env(tmp, url)
        env = next(gen)
        try:
            yield env
        finally:
            gen.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_bulk_resolution_matches_record_by_record(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graph_module, "_COPY_MIN_ROWS", 1)  # PostgreSQL: the COPY path too
    with instance(tmp_path / "bulk", backend) as bulk:
        scenario(bulk, tmp_path / "bulk")
        got = snapshot(bulk)
    with instance(tmp_path / "ref", backend) as ref:
        ref.gk.graph.resolve_many = types.MethodType(reference_resolve_many, ref.gk.graph)  # type: ignore[method-assign]
        scenario(ref, tmp_path / "ref")
        want = snapshot(ref)
    assert got["identities"] == want["identities"]
    assert got["merged"] == want["merged"]
    assert got["merges"] == want["merges"]
    assert got["conflicts"] == want["conflicts"]
    assert got["orders"] == want["orders"]
    assert got["profiles"].keys() == want["profiles"].keys()
    for k, p in want["profiles"].items():
        assert got["profiles"][k] == p, k
    # the scenario does reach every path
    assert want["merges"] and want["conflicts"] and want["merged"]
    assert any(label.startswith("attrs:") for label in want["profiles"])  # blocked-only records
    assert ("email:same@x.com" in {i for i, _, _ in want["identities"]}) and (
        "email:two2@x.com" in {i for i, _, _ in want["identities"]}
    )
    three = [k for k in want["profiles"] if k == "phone:+8613700000003"]
    assert three and want["profiles"][three[0]]["order_summary"]["orders"] == 3


def test_identifiers_created_in_bulk_are_seen_by_later_events(env_any: Env, tmp_path: Path) -> None:
    """The writer's cache may hold "nobody" for an identifier an import then creates in bulk;
    later events must find the imported profile (not create a second owner)."""
    env = env_any
    ws = env.ws.workspace_id
    # alias looks previousId up as a user_id first: the cache now says nobody holds crm-u9
    r = env.post("/v1/alias", {"messageId": "a1", "userId": "new-u", "previousId": "crm-u9"})
    assert r.status_code == 200, r.text
    f = write_csv(tmp_path / "c.csv", ["uid", "crm", "name"], [["crm-u9", "C1", "王芳"], ["crm-u8", "C2", "李雷"]])
    s = env.gk.importer.run(ws, "customers", f, {"uid": "user_id", "crm": "crm_id", "name": "name"})
    assert s.accepted == 2
    r = env.post("/v1/identify", {"messageId": "i1", "userId": "crm-u9", "traits": {"city": "广州"}})
    assert r.status_code == 200, r.text
    p = env.client.get("/api/v1/profiles/lookup", params={"user_id": "crm-u9"}, headers=env.admin_auth()).json()
    q = env.client.get("/api/v1/profiles/lookup", params={"crm_id": "C1"}, headers=env.admin_auth()).json()
    assert p["profile_id"] == q["profile_id"]
    assert p["attributes"]["city"] == "广州" and p["attributes"]["name"] == "王芳"
