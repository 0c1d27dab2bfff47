"""The shared write-back of model outputs: scores on profiles, per-profile details in the 360° profile."""

from __future__ import annotations

from typing import Any

import pytest

from goldkey.insight.writeback import read_profile_insights, write_profile_insights, write_scores


def _profile(env: Any, user: str) -> str:
    r = env.post("/v1/identify", {"messageId": f"m-{user}", "userId": user, "traits": {"name": user}})
    assert r.status_code == 200, r.text
    r = env.client.get("/api/v1/profiles/lookup", params={"user_id": user}, headers=env.admin_auth())
    assert r.status_code == 200, r.text
    return r.json()["profile_id"]  # type: ignore[no-any-return]


def _scores(env: Any, pid: str) -> dict[str, Any]:
    r = env.client.get(f"/api/v1/profiles/{pid}", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    return r.json()["scores"]  # type: ignore[no-any-return]


def test_scores_are_set_kept_for_other_models_and_removed_when_no_longer_scored(env: Any) -> None:
    ws = env.ws.workspace_id
    a, b = _profile(env, "u-a"), _profile(env, "u-b")
    assert write_scores(env.gk, ws, ("m_x", "m_v"), {a: {"m_x": 0.25, "m_v": 1}, b: {"m_x": 0.75, "m_v": 1}}) == 2
    write_scores(env.gk, ws, ("other",), {a: {"other": 3}})
    assert _scores(env, a) == {"m_x": 0.25, "m_v": 1.0, "other": 3.0}
    # the next run scores only b: a loses this model's fields, keeps the other model's
    assert write_scores(env.gk, ws, ("m_x", "m_v"), {b: {"m_x": 0.5, "m_v": 2}}) == 2
    assert _scores(env, a) == {"other": 3.0}
    assert _scores(env, b) == {"m_x": 0.5, "m_v": 2.0}
    # nothing changed: nothing written
    assert write_scores(env.gk, ws, ("m_x", "m_v"), {b: {"m_x": 0.5, "m_v": 2}}) == 0


def test_profile_insights_replace_the_models_previous_run_and_show_in_the_profile(env: Any) -> None:
    ws = env.ws.workspace_id
    a, b = _profile(env, "u-a"), _profile(env, "u-b")
    write_profile_insights(env.gk, ws, "churn", 1, {a: {"reasons": ["tenure"]}, b: {"reasons": ["price"]}})
    write_profile_insights(env.gk, ws, "recommend", 3, {a: {"items": ["SKU-1"]}})
    write_profile_insights(env.gk, ws, "churn", 2, {b: {"reasons": ["support calls"]}})
    assert read_profile_insights(env.gk.engine, ws, a) == {"recommend": {"version": 3, "items": ["SKU-1"]}}
    r = env.client.get(f"/api/v1/profiles/{b}", headers=env.admin_auth())
    assert r.status_code == 200, r.text
    assert r.json()["insights"] == {"churn": {"version": 2, "reasons": ["support calls"]}}
    # another workspace's token does not see them (it cannot even find the profile)
    other = env.gk.workspaces.create("other-brand")
    r = env.client.get(f"/api/v1/profiles/{b}", headers=env.admin_auth(other.admin_token))
    assert r.status_code == 404


def test_scores_and_model_tags_in_chunks_on_both_operational_stores(env_any: Any, monkeypatch: Any) -> None:
    """The bulk paths (raw DBAPI read, SQLite executemany / PostgreSQL UPDATE ... FROM unnest), cut
    into writer commands of two profiles, give the same result as one pass."""
    import goldkey.audience.tags as tags_mod
    import goldkey.insight.writeback as wb
    from goldkey.core.errors import InvalidInput

    monkeypatch.setattr(wb, "WRITE_CHUNK", 2)
    monkeypatch.setattr(tags_mod, "WRITE_CHUNK", 2)
    env, ws = env_any, env_any.ws.workspace_id
    pids = [_profile(env, f"u-{i}") for i in range(5)]
    write_scores(env.gk, ws, ("other",), {pids[0]: {"other": 7}})
    assert write_scores(env.gk, ws, ("m_x",), {p: {"m_x": i / 4} for i, p in enumerate(pids)}) == 5
    assert [_scores(env, p) for p in pids[:2]] == [{"other": 7.0, "m_x": 0.0}, {"m_x": 0.25}]
    # pids[0] no longer scored, pids[1] gets None (removed), pids[2] unchanged, the rest change
    assert write_scores(env.gk, ws, ("m_x",), {pids[1]: {"m_x": None}, pids[2]: {"m_x": 0.5}, pids[3]: {"m_x": 9},
                                              pids[4]: {"m_x": 9}}) == 4
    assert [_scores(env, p) for p in pids] == [{"other": 7.0}, {}, {"m_x": 0.5}, {"m_x": 9.0}, {"m_x": 9.0}]

    tags = env.gk.tags
    tags.create(ws, {"name": "tier", "kind": "model", "value_type": "enum", "category": "consumption",
                     "values": ["gold", "silver"]})
    tags.create(ws, {"name": "flag", "kind": "model", "value_type": "boolean", "category": "dynamic"})
    w = tags.set_model_values(ws, "tier", {pids[0]: "gold", pids[1]: "silver", pids[2]: "gold", pids[3]: None}, "m")
    assert (w.changed, w.profiles, w.previous) == (3, 3, {})
    assert tags.holders(ws, "tier") == {pids[0]: "gold", pids[1]: "silver", pids[2]: "gold"}
    w = tags.set_model_values(ws, "tier", {pids[0]: "gold", pids[1]: "gold", pids[4]: "silver"}, "m")
    assert w.changes == {pids[1]: "gold", pids[4]: "silver", pids[2]: None} and w.changed == 3
    assert tags.holders(ws, "tier") == {pids[0]: "gold", pids[1]: "gold", pids[4]: "silver"}
    assert tags.set_model_values(ws, "flag", {pids[0]: True, pids[1]: False}, "m").changed == 1
    assert tags.holders(ws, "flag") == {pids[0]: True}
    # the Tag Changed events: one per change, with the previous value
    hist = {(h["profile_id"], h["value"], h["previous"]) for h in tags.history(ws, "tier")}
    assert hist == {(pids[0], "gold", None), (pids[1], "silver", None), (pids[2], "gold", None),
                    (pids[1], "gold", "silver"), (pids[4], "silver", None), (pids[2], None, "gold")}
    # a value the tag does not allow: nothing is written
    with pytest.raises(InvalidInput, match="bronze") as exc:
        tags.set_model_values(ws, "tier", {pids[0]: "bronze"}, "m")
    assert exc.value.field == "value"
    assert tags.holders(ws, "tier")[pids[0]] == "gold"


def test_model_tags_are_set_by_sqlite_itself_unless_a_row_changed_in_between(env: Any, monkeypatch: Any) -> None:
    """A model's tag write on SQLite: a chunk whose rows hold what the model read is written by
    json_set / json_remove in one statement; a chunk with a row changed since (here: a stale
    reading) goes the general way. Both keep the profile's other tags and give the same events."""
    import goldkey.audience.tags as tags_mod

    outcomes: list[int | None] = []
    real = tags_mod._write_expected

    def spy(*args: Any, **kw: Any) -> dict[str, int] | None:
        try:
            done = real(*args, **kw)
        except tags_mod._Stale:  # rolled back, then written the general way
            outcomes.append(None)
            raise
        outcomes.append(None if done is None else sum(done.values()))
        return done

    monkeypatch.setattr(tags_mod, "_write_expected", spy)
    monkeypatch.setattr(tags_mod, "WRITE_CHUNK", 2)
    ws, tags = env.ws.workspace_id, env.gk.tags
    pids = [_profile(env, f"u-{i}") for i in range(4)]
    tags.create(ws, {"name": "flag", "kind": "model", "value_type": "boolean", "category": "dynamic"})
    tags.create(ws, {"name": "阶段", "kind": "model", "value_type": "enum", "category": "consumption",
                     "values": ["新客", "活跃"]})
    assert tags.set_model_values(ws, "flag", {pids[0]: True}, "m").changed == 1
    w = tags.set_model_values(ws, "阶段", {p: "新客" for p in pids}, "m")
    assert w.changed == 4 and outcomes == [1, 2, 2]  # the flag's chunk, then the stage's two
    assert tags.holders(ws, "阶段") == dict.fromkeys(pids, "新客") and tags.holders(ws, "flag") == {pids[0]: True}
    outcomes.clear()
    # the model read no values (stale): the chunk's check fails and it goes the general way, which
    # skips the row already holding the value (and no removal was asked for)
    w = tags.set_model_values(ws, "阶段", {pids[0]: "活跃", pids[1]: None, pids[2]: "新客"}, "m", current={})
    assert outcomes == [None] and w.changed == 1
    assert tags.holders(ws, "阶段") == {pids[0]: "活跃", **dict.fromkeys(pids[1:], "新客")}
    outcomes.clear()
    # read fresh: one change and three removals by the database
    w = tags.set_model_values(ws, "阶段", {pids[0]: "新客"}, "m")
    assert outcomes == [2, 2] and w.changed == 4 and tags.holders(ws, "阶段") == {pids[0]: "新客"}
    assert tags.holders(ws, "flag") == {pids[0]: True}
    hist = sorted((h["profile_id"], h["value"] or "", h["previous"] or "") for h in tags.history(ws, "阶段"))
    assert hist == sorted([*((p, "新客", "") for p in pids), (pids[0], "活跃", "新客"), (pids[0], "新客", "活跃"),
                           *((p, "", "新客") for p in pids[1:])])
    assert all(h["source"] == "m" for h in tags.history(ws, "阶段"))


def test_several_model_tags_are_written_in_one_pass(env_any: Any, monkeypatch: Any) -> None:
    """set_model_values_many (RFM's group and tier): each profile's row is written once for all
    its changed tags, with one Tag Changed event per tag changed; a profile whose tags did not
    change is not touched; a stale reading goes the general way with the same result; on both
    operational stores."""
    import goldkey.audience.tags as tags_mod
    from goldkey.core.errors import InvalidInput

    monkeypatch.setattr(tags_mod, "WRITE_CHUNK", 3)
    fast: list[dict[str, int] | None] = []
    real = tags_mod._write_expected

    def spy(*args: Any, **kw: Any) -> dict[str, int] | None:
        try:
            fast.append(real(*args, **kw))
        except tags_mod._Stale:
            fast.append(None)
            raise
        return fast[-1]

    monkeypatch.setattr(tags_mod, "_write_expected", spy)
    env, ws, tags = env_any, env_any.ws.workspace_id, env_any.gk.tags
    sqlite = env.gk.engine.dialect.name == "sqlite"
    pids = [_profile(env, f"u-{i}") for i in range(5)]
    tags.create(ws, {"name": "grp", "kind": "model", "value_type": "enum", "category": "consumption",
                     "values": ["a", "b"]})
    tags.create(ws, {"name": "tier", "kind": "model", "value_type": "enum", "category": "consumption",
                     "values": ["hi", "lo"]})
    w = tags.set_model_values_many(ws, {"grp": dict.fromkeys(pids[:4], "a"), "tier": {pids[0]: "hi", pids[4]: "lo"}},
                                   "m:v1")
    assert (w["grp"].changed, w["tier"].changed) == (4, 2)
    assert tags.holders(ws, "grp") == dict.fromkeys(pids[:4], "a")
    assert tags.holders(ws, "tier") == {pids[0]: "hi", pids[4]: "lo"}
    # several tags' holders in one read, a manual tag and a tag that does not exist among them
    tags.create(ws, {"name": "vip", "kind": "manual", "value_type": "boolean", "category": "fixed"})
    tags.set_values(ws, "vip", [{"profile_id": pids[2], "value": True}])
    assert tags.holders_many(ws, ["grp", "tier", "vip", "nope"]) == {
        "grp": dict.fromkeys(pids[:4], "a"), "tier": {pids[0]: "hi", pids[4]: "lo"}, "vip": {pids[2]: True}, "nope": {}}
    # p0: both change; p1: group only; p2: unchanged; p3: group removed, tier set; p4: tier removed
    w = tags.set_model_values_many(ws, {"grp": {pids[0]: "b", pids[1]: "b", pids[2]: "a"},
                                        "tier": {pids[0]: "lo", pids[3]: "hi"}}, "m:v2")
    assert w["grp"].changes == {pids[0]: "b", pids[1]: "b", pids[3]: None}
    assert w["tier"].changes == {pids[0]: "lo", pids[3]: "hi", pids[4]: None}
    assert (w["grp"].changed, w["tier"].changed) == (3, 3)
    assert tags.holders(ws, "grp") == {pids[0]: "b", pids[1]: "b", pids[2]: "a"}
    assert tags.holders(ws, "tier") == {pids[0]: "lo", pids[3]: "hi"}
    # on SQLite both runs went the database's way (two chunks each), every group in one statement
    if sqlite:
        assert None not in fast and len(fast) == 4
        assert [sum(f[t] for f in fast[:2]) for t in ("grp", "tier")] == [4, 2]  # type: ignore[index]
        assert [sum(f[t] for f in fast[2:]) for t in ("grp", "tier")] == [3, 3]  # type: ignore[index]
    else:
        assert fast == []
    events = {t: sorted((h["profile_id"], h["value"] or "", h["previous"] or "")
                        for h in tags.history(ws, t) if h["source"] == "m:v2") for t in ("grp", "tier")}
    assert events == {"grp": sorted([(pids[0], "b", "a"), (pids[1], "b", "a"), (pids[3], "", "a")]),
                      "tier": sorted([(pids[0], "lo", "hi"), (pids[3], "hi", ""), (pids[4], "", "lo")])}
    # a stale reading (nothing held, says the caller): the general way writes only the real changes
    w = tags.set_model_values_many(ws, {"grp": {pids[0]: "b", pids[4]: "a"}, "tier": {pids[0]: "hi"}}, "m:v3",
                                   current={"grp": {}, "tier": {}})
    assert (w["grp"].changed, w["tier"].changed) == (1, 1)
    assert tags.holders(ws, "grp") == {pids[0]: "b", pids[1]: "b", pids[2]: "a", pids[4]: "a"}
    assert tags.holders(ws, "tier") == {pids[0]: "hi", pids[3]: "hi"}
    # a bad value of either tag: nothing is written
    with pytest.raises(InvalidInput, match="zz"):
        tags.set_model_values_many(ws, {"grp": {pids[0]: "a"}, "tier": {pids[0]: "zz"}}, "m:v4")
    assert tags.holders(ws, "grp")[pids[0]] == "b"


def test_model_tag_statements_find_each_profile_by_its_key(env: Any) -> None:
    """SQLite's planner must drive a tag's UPDATE (in profiles.tags and in profile_scores.model_tags),
    the model rows' INSERT and a model's score statements from the chunk's ids, each profile found
    by its key: a plan that scans the workspace once per id hung for minutes at 1M profiles."""
    import goldkey.audience.tags as tags_mod
    import goldkey.insight.writeback as wb

    _profile(env, "u-plan")
    ws = env.ws.workspace_id
    statements = [(sql, params) for column in ("tags", "model_tags")
                  for sql, params in ((tags_mod._TAG_SET[column], ('["p1"]', ws, '$."t"', None, '"v"')),
                                      (tags_mod._TAG_REMOVE[column], ('["p1"]', ws, '$."t"', '"v"')))]
    statements.append((tags_mod._MODEL_ROWS, ('["p1"]', ws, "2026-01-01 00:00:00")))
    # a model's scores and tags in one statement per profile, and the live profiles among a chunk
    at = "2026-01-01 00:00:00"
    statements += [(wb._SQLITE_UPDATE, ('{"x":1}', "p1", ws, at)), (wb._SQLITE_INSERT, ('{"x":1}', "p1", ws, at)),
                   (wb._SQLITE_UPDATE_TAGS, ('{"x":1}', "p1", ws, at, '{"t":"v"}')),
                   (wb._SQLITE_INSERT_TAGS, ('{"x":1}', "p1", ws, at, '{"t":"v"}')),
                   (wb._SQLITE_LIVE, ('["p1"]', ws))]
    with env.gk.engine.connect() as c:
        cur = c.connection.cursor()
        try:
            for sql, params in statements:
                cur.execute("EXPLAIN QUERY PLAN " + sql, params)
                plan = " | ".join(str(r[-1]) for r in cur.fetchall())
                assert "SCAN profiles" not in plan and "SCAN profile_scores" not in plan, plan
                assert "(profile_id=?)" in plan or "profile_id=?)" in plan, plan
        finally:
            cur.close()


def test_score_columns_and_insight_texts_on_both_operational_stores(env_any: Any, monkeypatch: Any) -> None:
    """The columnar paths the churn model uses: JSON merge patches applied by the database (SQLite
    json_patch, PostgreSQL jsonb), only changed rows written, NaN removes a field, profiles no longer
    scored lose the model's fields; per-profile details upserted in chunks, unchanged ones untouched."""
    import numpy as np
    import sqlalchemy as sa

    import goldkey.insight.writeback as wb
    from goldkey.insight.writeback import score_patches, write_profile_insight_texts, write_score_columns
    from goldkey.store.operational import profile_insights as t

    monkeypatch.setattr(wb, "WRITE_CHUNK", 2)
    env, ws = env_any, env_any.ws.workspace_id
    pids = [_profile(env, f"u-{i}") for i in range(5)]
    assert score_patches(2, {"a": np.array([0.1, np.nan]), "v": 3}) == ['{"a":0.1,"v":3.0}', '{"a":null,"v":3.0}']
    write_scores(env.gk, ws, ("other",), {pids[0]: {"other": 7}})
    probs = np.array([0.1, 1 / 3, 0.5, 0.7, 0.9])
    assert write_score_columns(env.gk, ws, ("risk", "risk_v"), pids, {"risk": probs, "risk_v": 1}) == 5
    assert _scores(env, pids[0]) == {"other": 7.0, "risk": 0.1, "risk_v": 1.0}
    assert _scores(env, pids[1])["risk"] == 1 / 3  # the float reads back exactly
    # the same again: nothing written
    assert write_score_columns(env.gk, ws, ("risk", "risk_v"), pids, {"risk": probs, "risk_v": 1}) == 0
    # pids[4] no longer scored, pids[3] NaN (removed), pids[2] unchanged, pids[0..1] new values
    probs2 = np.array([0.2, 0.25, 0.5, np.nan])
    assert write_score_columns(env.gk, ws, ("risk", "risk_v"), pids[:4], {"risk": probs2, "risk_v": 1}) == 4
    assert [_scores(env, p) for p in pids] == [{"other": 7.0, "risk": 0.2, "risk_v": 1.0},
                                               {"risk": 0.25, "risk_v": 1.0}, {"risk": 0.5, "risk_v": 1.0},
                                               {"risk_v": 1.0}, {}]
    # a new version (given out of key order) rewrites every scored row without reading it; pids[3],
    # no longer scored, loses the model's fields
    assert write_score_columns(env.gk, ws, ("risk", "risk_v"), [pids[2], pids[0], pids[1]],
                               {"risk": np.array([0.5, 0.2, 0.25]), "risk_v": 2}) == 4
    assert [_scores(env, p) for p in pids] == [{"other": 7.0, "risk": 0.2, "risk_v": 2.0},
                                               {"risk": 0.25, "risk_v": 2.0}, {"risk": 0.5, "risk_v": 2.0}, {}, {}]
    # unknown ids are not written (only live profiles of the workspace), with or without a version
    assert write_score_columns(env.gk, ws, ("x",), ["nobody"], {"x": np.array([1.0])}) == 0
    assert write_score_columns(env.gk, ws, ("x", "xv"), ["nobody"], {"x": np.array([1.0]), "xv": 1}) == 0

    texts = ['{"score":0.1,"reasons":[]}', '{"score":0.2,"reasons":[{"feature":"f"}]}', '{"score":0.3,"reasons":[]}']
    assert write_profile_insight_texts(env.gk, ws, "m", 1, pids[:3], texts) == 3
    with env.gk.engine.connect() as c:
        before = dict(c.execute(sa.select(t.c.profile_id, t.c.updated_at).where(t.c.model == "m")).all())
    # version 2: pids[0] unchanged text, pids[1] changed, pids[2] gone, pids[3] new
    assert write_profile_insight_texts(env.gk, ws, "m", 2, [pids[0], pids[1], pids[3]],
                                       [texts[0], '{"score":0.5,"reasons":[]}', texts[2]]) == 3
    assert read_profile_insights(env.gk.engine, ws, pids[0]) == {"m": {"version": 2, "score": 0.1, "reasons": []}}
    assert read_profile_insights(env.gk.engine, ws, pids[1])["m"] == {"version": 2, "score": 0.5, "reasons": []}
    assert read_profile_insights(env.gk.engine, ws, pids[2]) == {}
    assert read_profile_insights(env.gk.engine, ws, pids[3])["m"]["version"] == 2
    with env.gk.engine.connect() as c:
        after = dict(c.execute(sa.select(t.c.profile_id, t.c.updated_at).where(t.c.model == "m")).all())
    assert after[pids[0]] == before[pids[0]]  # unchanged details keep their updated_at
    with pytest.raises(ValueError, match="2 profiles but 1 payloads"):
        write_profile_insight_texts(env.gk, ws, "m", 3, pids[:2], texts[:1])


def test_rows_are_written_in_key_order() -> None:
    """A model's results arrive in the feature query's order; the write-back puts them (and the
    texts that go with them) in primary-key order, so a chunk touches neighbouring pages."""
    from goldkey.insight.writeback import in_key_order

    assert in_key_order(["p3", "p1", "p2"], ['{"a":3}', '{"a":1}', '{"a":2}'], ["c", "a", "b"]) == (
        ["p1", "p2", "p3"], ['{"a":1}', '{"a":2}', '{"a":3}'], ["a", "b", "c"])
    assert in_key_order([], []) == ([], [])


def test_profile_reasons_go_to_the_analytical_store_replacing_the_models_previous_version(
        env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from goldkey.insight import writeback
    from goldkey.insight.writeback import read_profile_reasons, write_profile_reasons

    monkeypatch.setattr(writeback, "REASONS_CHUNK", 2)  # several transactions
    an = env.gk.analytical
    ws = env.ws.workspace_id
    other = env.gk.workspaces.create("Other brand").workspace_id
    pids = ["p5", "p1", "p4", "p2", "p3"]  # not in key order
    texts = [f'{{"score":0.{i},"reasons":[{{"feature":"f{i}"}}]}}' for i in range(5)]
    assert write_profile_reasons(an, ws, "churn", 1, pids, texts) == 5
    assert write_profile_reasons(an, other, "churn", 7, ["p1"], ['{"score":0.9,"reasons":[]}']) == 1
    assert write_profile_reasons(an, ws, "propensity_x", 1, ["p1"], ['{"score":0.8,"reasons":[]}']) == 1
    assert read_profile_reasons(an, ws, "p1") == {
        "churn": {"version": 1, "score": 0.1, "reasons": [{"feature": "f1"}]},
        "propensity_x": {"version": 1, "score": 0.8, "reasons": []}}
    stored = an.query("SELECT profile_id FROM profile_reasons WHERE workspace_id = ? AND model = 'churn'", [ws])
    assert [r[0] for r in stored] == sorted(pids)  # written in key order
    # version 2 scores fewer profiles: the others lose their churn reasons, other models and
    # workspaces keep theirs
    assert write_profile_reasons(an, ws, "churn", 2, ["p2", "p1"], ['{"score":0.5,"reasons":[]}'] * 2) == 2
    assert read_profile_reasons(an, ws, "p1")["churn"] == {"version": 2, "score": 0.5, "reasons": []}
    assert read_profile_reasons(an, ws, "p5") == {}
    assert read_profile_reasons(an, other, "p1") == {"churn": {"version": 7, "score": 0.9, "reasons": []}}
    assert read_profile_reasons(an, ws, "p1")["propensity_x"]["version"] == 1
    # while a run writes, a profile may hold two versions: readers see the newest
    with an.transaction() as con:
        con.execute("INSERT INTO profile_reasons VALUES (?, 'churn', 3, 'p2', '{\"score\":0.7,\"reasons\":[]}')", [ws])
    assert read_profile_reasons(an, ws, "p2")["churn"]["version"] == 3
    # a version written again (a run that was interrupted) replaces its rows, no duplicates
    assert write_profile_reasons(an, ws, "churn", 3, ["p2"], ['{"score":0.6,"reasons":[]}']) == 1
    assert an.query("SELECT count(*) FROM profile_reasons WHERE workspace_id = ? AND model = 'churn'", [ws]) == [(1,)]
    assert read_profile_reasons(an, ws, "p2")["churn"]["score"] == 0.6
    # two runs that overlapped: the older one finishing last never deletes the newer one's rows
    assert write_profile_reasons(an, ws, "churn", 6, ["p2"], ['{"score":0.2,"reasons":[]}']) == 1
    assert write_profile_reasons(an, ws, "churn", 5, ["p1", "p2"], ['{"score":0.1,"reasons":[]}'] * 2) == 2
    assert read_profile_reasons(an, ws, "p2")["churn"] == {"version": 6, "score": 0.2, "reasons": []}
    assert read_profile_reasons(an, ws, "p1")["churn"]["version"] == 5  # left to the next run
    assert write_profile_reasons(an, ws, "churn", 7, ["p2"], ['{"score":0.3,"reasons":[]}']) == 1
    assert read_profile_reasons(an, ws, "p1") == {"propensity_x": {"version": 1, "score": 0.8, "reasons": []}}
    with pytest.raises(ValueError, match="2 profiles but 1 payloads"):
        write_profile_reasons(an, ws, "churn", 8, ["p1", "p2"], texts[:1])


def test_a_models_scores_and_tags_are_written_in_one_pass_on_both_operational_stores(
        env_any: Any, monkeypatch: Any) -> None:
    """write_model_outputs (RFM, lifecycle): each profile's row gets the model's scores and its tags in
    one statement, in writer commands of two profiles; a profile whose tags alone change, a profile
    no longer scored or tagged, and a profile merged away since the plan are each handled; one Tag
    Changed event per live profile and tag changed, with the previous value."""
    import pyarrow as pa
    import sqlalchemy as sa

    import goldkey.insight.writeback as wb
    from goldkey.core.errors import InvalidInput
    from goldkey.store.operational import profiles

    monkeypatch.setattr(wb, "WRITE_CHUNK", 2)
    env, ws, tags = env_any, env_any.ws.workspace_id, env_any.gk.tags
    p = [_profile(env, f"u-{i}") for i in range(5)]
    tags.create(ws, {"name": "grp", "kind": "model", "value_type": "enum", "category": "consumption",
                     "values": ["a", "b"]})
    tags.create(ws, {"name": "flag", "kind": "model", "value_type": "boolean", "category": "dynamic"})
    write_scores(env.gk, ws, ("other",), {p[2]: {"other": 1}})

    def table(ids: list[str], xs: list[float]) -> pa.Table:
        return pa.table({"profile_id": ids, "m_x": xs})

    plans = tags.plan_model_values(ws, {"grp": {p[0]: "a", p[1]: "a", p[2]: "b"}, "flag": {p[0]: True}})
    w = wb.write_model_table(env.gk, ws, ("m_x", "m_v"), table([p[3], p[1], p[0]], [3.0, 1.0, 0.5]), {"m_v": 1},
                             tags=plans, source="m:v1")
    # p0, p1: scores and tags; p2: tags only (its row held another model's score); p3: scores only
    assert (w.written, w.tags) == (4, {"grp": 3, "flag": 1})
    assert set(w.timings_ms) == {"find", "rows", "events"}
    assert tags.holders(ws, "grp") == {p[0]: "a", p[1]: "a", p[2]: "b"} and tags.holders(ws, "flag") == {p[0]: True}
    assert [_scores(env, x) for x in p[:4]] == [{"m_x": 0.5, "m_v": 1.0}, {"m_x": 1.0, "m_v": 1.0}, {"other": 1.0},
                                                {"m_x": 3.0, "m_v": 1.0}]
    r = env.client.get(f"/api/v1/profiles/{p[2]}", headers=env.admin_auth())
    assert r.json()["tags"] == {"grp": "b"}

    # u-4 becomes u-1: p4 is merged into p1; then a run planned with p4 still in it: p4 is not written
    # and has no event
    assert env.post("/v1/alias", {"previousId": "u-4", "userId": "u-1", "messageId": "al"}).status_code == 200
    with env.gk.engine.connect() as c:
        assert c.execute(sa.select(profiles.c.merged_into).where(profiles.c.profile_id == p[4])).scalar() == p[1]
    gone, kept = p[4], p[1]
    plans = tags.plan_model_values(ws, {"grp": {p[0]: "b", gone: "b", kept: "b"}, "flag": {}})
    assert plans["grp"].changes == {p[0]: "b", gone: "b", kept: "b", p[2]: None}
    w = wb.write_model_table(env.gk, ws, ("m_x", "m_v"), table([p[0], gone, kept], [0.5, 2.0, 2.0]), {"m_v": 2},
                             tags=plans, source="m:v2")
    assert tags.holders(ws, "grp") == {p[0]: "b", kept: "b"}  # p2 no longer tagged
    assert tags.holders(ws, "flag") == {}
    assert w.tags == {"grp": 3, "flag": 1}  # p0 a->b, kept ->b, p2 b->none; p0's flag removed
    assert _scores(env, p[3]) == {}  # no longer scored
    assert _scores(env, p[0]) == {"m_x": 0.5, "m_v": 2.0}
    events = sorted((h["profile_id"], t, h["value"], h["previous"]) for t in ("grp", "flag")
                    for h in tags.history(ws, t) if h["source"] == "m:v2")
    assert gone not in {e[0] for e in events}
    assert events == sorted([(p[0], "grp", "b", "a"), (kept, "grp", "b", "a"),
                             (p[2], "grp", None, "b"), (p[0], "flag", None, True)])
    # only model tags go with a model's scores
    tags.create(ws, {"name": "vip", "kind": "manual", "value_type": "boolean", "category": "fixed"})
    with pytest.raises(InvalidInput, match="vip") as exc:
        tags.plan_model_values(ws, {"vip": {p[0]: True}})
    assert exc.value.field == "name"
