"""The shared write-back of model outputs: scores on profiles, per-profile details in the 360° profile."""

from __future__ import annotations

from typing import Any

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
