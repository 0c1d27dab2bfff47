"""Users and roles through the real app: sign-in, the role each route needs, workspace isolation for
signed-in users, the workspace's users API, and the route table that classifies every admin route.

Runs in-process against a real Goldkey instance (SQLite and DuckDB files) through ``tests/conftest.py``.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi.routing import APIRoute

from goldkey.api import deps
from goldkey.api.roles import AREAS, EXCEPTIONS, least_role
from goldkey.govern.users import LOGIN_MAX_FAILURES, UserService

if TYPE_CHECKING:
    from conftest import Env

PASSWORD = "a long enough password"
RULE = {"kind": "attribute", "field": "profile.origin", "op": "is_set"}


def users(env: Env) -> UserService:
    return deps.user_service(env.gk)


def sign_in(env: Env, email: str, password: str = PASSWORD) -> str:
    r = env.client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def user(env: Env, email: str, role: str, workspace_id: str | None = None) -> dict[str, str]:
    """Create a user with ``role`` in the workspace (the env's by default); return its auth headers."""
    svc = users(env)
    u = svc.find(email) or svc.create_user(email, PASSWORD)
    svc.grant(workspace_id or env.ws.workspace_id, u["user_id"], role, actor="test")
    return {"Authorization": f"Bearer {sign_in(env, email)}"}


def refused(r: Any, status: int, *mentions: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    for m in mentions:
        assert m in r.json()["error"], (m, r.json())


def test_login_me_logout_and_the_rate_limit(env: Env) -> None:
    u = users(env).create_user("Ana@Example.com", PASSWORD, "Ana")
    users(env).grant(env.ws.workspace_id, u["user_id"], "viewer", actor="test")
    r = env.client.post("/api/v1/auth/login", json={"email": "ana@example.com", "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token"].startswith("gks_") and body["user"]["email"] == "ana@example.com"
    assert body["grants"] == [{"workspace_id": env.ws.workspace_id, "name": "Test Brand", "role": "viewer"}]
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert timedelta(hours=11, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=12)
    h = {"Authorization": f"Bearer {body['token']}"}
    me = env.client.get("/api/v1/auth/me", headers=h).json()
    assert me["user"]["user_id"] == u["user_id"] and me["grants"] == body["grants"]
    # an admin token is not a session
    refused(env.client.get("/api/v1/auth/me", headers=env.admin_auth()), 401, "session token")
    assert env.client.post("/api/v1/auth/logout", headers=h).status_code == 204
    refused(env.client.get("/api/v1/auth/me", headers=h), 401, "sign in again")
    refused(env.client.get("/api/v1/segments", headers=h), 401, "sign in again")
    # bad input names the field; a wrong password and an unknown e-mail get the same answer
    refused(env.client.post("/api/v1/auth/login", json={"email": "ana@example.com"}), 422, "password")
    wrong = env.client.post("/api/v1/auth/login", json={"email": "ana@example.com", "password": "nope"})
    unknown = env.client.post("/api/v1/auth/login", json={"email": "zed@example.com", "password": "nope"})
    refused(wrong, 401, "wrong e-mail or password")
    assert unknown.status_code == 401 and unknown.json()["error"] == wrong.json()["error"]
    for _ in range(LOGIN_MAX_FAILURES - 1):
        env.client.post("/api/v1/auth/login", json={"email": "ana@example.com", "password": "nope"})
    r = env.client.post("/api/v1/auth/login", json={"email": "ana@example.com", "password": PASSWORD})
    refused(r, 429, "too many failed sign-ins")
    assert 0 < int(r.headers["Retry-After"]) <= 15 * 60


def test_viewer_reads_but_may_not_write(env: Env) -> None:
    h = user(env, "viewer@example.com", "viewer")
    assert env.client.get("/api/v1/segments", headers=h).status_code == 200
    assert env.client.get("/api/v1/workspace", headers=h).json()["workspace_id"] == env.ws.workspace_id
    r = env.client.post("/api/v1/segments", json={"name": "shanghai", "rule": RULE}, headers=h)
    refused(r, 403, "needs the marketer role", "you are viewer", env.ws.workspace_id)
    refused(env.client.get("/api/v1/workspace/keys", headers=h), 403, "needs the admin role")
    refused(env.client.post("/api/v1/insights/rfm/run", json={}, headers=h), 403, "needs the analyst role")


def test_marketer_creates_a_segment_but_not_a_key(env: Env) -> None:
    h = user(env, "marketer@example.com", "marketer")
    r = env.client.post("/api/v1/segments", json={"name": "shanghai", "rule": RULE}, headers=h)
    assert r.status_code in (200, 201), r.text
    assert [s["name"] for s in env.client.get("/api/v1/segments", headers=env.admin_auth()).json()] == ["shanghai"]
    refused(env.client.post("/api/v1/workspace/keys", json={"kind": "write"}, headers=h), 403,
            "needs the admin role", "you are marketer")
    refused(env.client.post("/api/v1/channels", json={"name": "x", "kind": "sink"}, headers=h), 403, "admin")
    # marketers list channels to pick one for a campaign (no secrets are ever returned)
    assert env.client.get("/api/v1/channels", headers=h).status_code == 200
    refused(env.client.get("/api/v1/workspace/users", headers=h), 403, "needs the admin role")


def _orders(tmp: Path) -> Path:
    path = tmp / "orders.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "ordered_at", "crm_id", "sku", "category", "quantity", "unit_price"])
        for i in range(30):
            w.writerow([f"O{i}", f"2024-0{1 + i % 6}-1{i % 9}T10:00:00Z", f"C{i % 12}", "SKU", "lens", "1",
                        str(50 + 40 * (i % 7))])
    return path


def test_analyst_runs_rfm_but_may_not_create_a_campaign(env: Env, tmp_path: Path) -> None:
    s = env.gk.importer.run(env.ws.workspace_id, "orders", _orders(tmp_path), {})
    assert s.status == "done", s
    h = user(env, "analyst@example.com", "analyst")
    r = env.client.post("/api/v1/insights/rfm/run", json={"as_of": "2024-07-01T00:00:00Z"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["profiles"] > 0
    r = env.client.post("/api/v1/campaigns", json={"name": "spring", "segment_id": "seg_x"}, headers=h)
    refused(r, 403, "needs the marketer role", "you are analyst")
    refused(env.client.post("/api/v1/segments", json={"name": "x", "rule": RULE}, headers=h), 403, "marketer")
    assert env.client.post("/api/v1/segments/estimate", json={"rule": RULE}, headers=h).status_code == 200


def test_a_user_of_workspace_a_never_sees_workspace_b(env: Env) -> None:
    other = env.gk.workspaces.create("Other Brand")
    oh = env.admin_auth(other.admin_token)
    seg_b = env.client.post("/api/v1/segments", json={"name": "B only", "rule": RULE}, headers=oh).json()
    h = user(env, "ana@example.com", "admin")  # admin of A, nothing in B
    # no header: the only workspace granted
    assert env.client.get("/api/v1/workspace", headers=h).json()["workspace_id"] == env.ws.workspace_id
    assert env.client.get("/api/v1/segments", headers=h).json() == []
    assert env.client.get(f"/api/v1/segments/{seg_b['segment_id']}", headers=h).status_code == 404
    # naming B: refused, naming the workspace
    hb = {**h, "X-Goldkey-Workspace": other.workspace_id}
    for path in ("/api/v1/workspace", "/api/v1/segments", f"/api/v1/segments/{seg_b['segment_id']}",
                 "/api/v1/workspace/users"):
        refused(env.client.get(path, headers=hb), 403, other.workspace_id)
    refused(env.client.post("/api/v1/segments", json={"name": "sneaky", "rule": RULE}, headers=hb), 403,
            other.workspace_id)
    assert [s["name"] for s in env.client.get("/api/v1/segments", headers=oh).json()] == ["B only"]
    # granted B as well: B must now be named
    users(env).grant(other.workspace_id, users(env).find("ana@example.com")["user_id"], "viewer", actor="test")
    refused(env.client.get("/api/v1/segments", headers=h), 400, "X-Goldkey-Workspace")
    assert env.client.get("/api/v1/segments", headers=hb).json()[0]["segment_id"] == seg_b["segment_id"]
    refused(env.client.post("/api/v1/segments", json={"name": "x", "rule": RULE}, headers=hb), 403, "marketer")


def test_admin_tokens_keep_working(env: Env) -> None:
    other = env.gk.workspaces.create("Other Brand")
    assert env.client.get("/api/v1/workspace/keys", headers=env.admin_auth()).status_code == 200
    r = env.client.post("/api/v1/segments", json={"name": "s", "rule": RULE}, headers=env.admin_auth())
    assert r.status_code in (200, 201), r.text
    assert env.client.get(f"/api/v1/profiles/{'prf_x'}", headers=env.admin_auth()).status_code == 404
    # a token names its own workspace; naming another is refused
    same = {**env.admin_auth(), "X-Goldkey-Workspace": env.ws.workspace_id}
    assert env.client.get("/api/v1/segments", headers=same).status_code == 200
    refused(env.client.get("/api/v1/segments", headers={**env.admin_auth(), "X-Goldkey-Workspace":
                                                        other.workspace_id}), 403, other.workspace_id)
    refused(env.client.get("/api/v1/segments", headers=env.admin_auth(env.ws.write_key)), 401, "write key")
    refused(env.client.get("/api/v1/segments"), 401, "Authorization")


def test_the_workspace_users_api(env: Env) -> None:
    h = user(env, "boss@example.com", "admin")
    r = env.client.post("/api/v1/workspace/users", json={"email": "New@Example.com", "name": "New", "role": "analyst"},
                        headers=h)
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["created"] and new["email"] == "new@example.com" and new["role"] == "analyst"
    assert new["granted_by"].startswith("user:usr_")
    nh = {"Authorization": f"Bearer {sign_in(env, 'new@example.com', new['initial_password'])}"}
    assert env.client.get("/api/v1/segments", headers=nh).status_code == 200
    refused(env.client.post("/api/v1/workspace/users", json={"email": "new@example.com", "role": "viewer"},
                            headers=h), 409, "already has the analyst role")
    refused(env.client.post("/api/v1/workspace/users", json={"email": "x@example.com", "role": "owner"},
                            headers=h), 400, "role")
    refused(env.client.post("/api/v1/workspace/users", json={"email": "nope", "role": "viewer"}, headers=h),
            400, "email")
    listed = env.client.get("/api/v1/workspace/users", headers=h).json()
    assert [(u["email"], u["role"]) for u in listed] == [("boss@example.com", "admin"), ("new@example.com", "analyst")]
    assert all("password" not in k for u in listed for k in u)
    # change a role: effective from the next request
    r = env.client.put(f"/api/v1/workspace/users/{new['user_id']}", json={"role": "marketer"}, headers=h)
    assert r.status_code == 200 and r.json()["role"] == "marketer"
    assert env.client.post("/api/v1/segments", json={"name": "s", "rule": RULE}, headers=nh).status_code in (200, 201)
    # the last admin stays
    boss = next(u for u in listed if u["email"] == "boss@example.com")
    refused(env.client.delete(f"/api/v1/workspace/users/{boss['user_id']}", headers=h), 409, "last admin")
    refused(env.client.put(f"/api/v1/workspace/users/{boss['user_id']}", json={"role": "viewer"}, headers=h), 409,
            "last admin")
    # an admin token manages users too; a user of another workspace is not found here
    other = env.gk.workspaces.create("Other Brand")
    refused(env.client.put(f"/api/v1/workspace/users/{new['user_id']}", json={"role": "viewer"},
                           headers=env.admin_auth(other.admin_token)), 404)
    assert env.client.delete(f"/api/v1/workspace/users/{new['user_id']}", headers=env.admin_auth()).status_code == 204
    refused(env.client.get("/api/v1/segments", headers=nh), 403, "no role in any workspace")
    actions = [(e["action"], e["actor"][:5]) for e in _audit(env)]
    assert ("user.grant", "user:") in actions and ("user.role_change", "user:") in actions
    assert ("user.revoke", "key:k") in actions


def _audit(env: Env) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from goldkey.store.operational import audit_log

    with env.gk.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log).where(audit_log.c.workspace_id == env.ws.workspace_id)).all()
    return [{"action": r.action, "actor": r.actor} for r in rows]


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    out: list[APIRoute] = []
    for r in routes:
        if isinstance(r, APIRoute):
            out.append(r)
        elif hasattr(r, "original_router"):  # FastAPI's included routers
            out.extend(_api_routes(r.original_router.routes))
    return out


def _uses_caller(dependant: Any) -> bool:
    """Whether a route takes the admin bearer credential (the Caller dependency, or a route's own
    wrapper of it such as the profile reads')."""
    return any(d.call is deps.admin or d.call is deps._bearer or _uses_caller(d) for d in dependant.dependencies)


def test_every_caller_route_has_a_role() -> None:
    from goldkey.app import create_app

    app = create_app()
    routes = _api_routes(app.routes)
    callers = [(m, r.path_format) for r in routes if _uses_caller(r.dependant) for m in sorted(r.methods)]
    assert len(callers) > 100
    missing = [f"{m} {p}" for m, p in callers if least_role(m, p) is None]
    assert not missing, ("routes without an entry in goldkey.api.roles (add an area or an exception): "
                         + ", ".join(missing))
    # every exception names a route that exists, every area holds one
    declared = {(m, r.path_format) for r in routes for m in r.methods}
    assert not [k for k in EXCEPTIONS if k not in declared], "stale exceptions in goldkey.api.roles"
    for area in AREAS:
        assert any(p == area.prefix or p.startswith(area.prefix + "/") for _, p in declared), area
    # the tracking API and sign-in take no admin credential
    assert not any(p.startswith("/v1/") or p.startswith("/api/v1/auth/") for _, p in callers)


def test_the_audit_trail_names_who_made_each_change(env: Env) -> None:
    # before: a signed-in user's trait change and merge undo were recorded as "key:<user id>", and
    # segment, tag and consent changes without any prefix, whoever made them
    uh = user(env, "ana@example.com", "admin")
    uid = users(env).find("ana@example.com")["user_id"]
    kh = env.admin_auth()
    key_id = env.gk.workspaces.authenticate(env.ws.admin_token, "admin").key_id
    for h, suffix in ((uh, "u"), (kh, "k")):
        r = env.client.post("/api/v1/segments", json={"name": f"s{suffix}", "rule": RULE}, headers=h)
        assert r.status_code in (200, 201), r.text
        r = env.client.post("/api/v1/tags", json={"name": f"t{suffix}", "kind": "manual", "value_type": "boolean",
                                                  "category": "fixed"}, headers=h)
        assert r.status_code in (200, 201), r.text
        r = env.client.post("/api/v1/traits", json={"name": f"n{suffix}", "event": "E", "aggregate": "count"},
                            headers=h)
        assert r.status_code in (200, 201), r.text
    rows = [e for e in _audit(env) if e["action"] in ("segment.create", "tag.create", "trait.create")]
    assert len(rows) == 6, rows
    assert sorted(e["actor"] for e in rows) == sorted([f"key:{key_id}"] * 3 + [f"user:{uid}"] * 3)
