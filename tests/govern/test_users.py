"""Users, grants and sessions (goldkey.govern.users) on a real operational store: SQLite and PostgreSQL.

A fake clock steps through the 12-hour sliding expiry and the 15-minute sign-in rate-limit window.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import operational_url
from goldkey.core.errors import Conflict, Forbidden, InvalidInput, Unauthorized
from goldkey.govern.users import (
    LOGIN_MAX_FAILURES,
    LOGIN_WINDOW,
    NO_WORKSPACE,
    SESSION_LIFETIME,
    SESSION_RENEW_AFTER,
    TooManyAttempts,
    UserService,
    hash_password,
    verify_password,
)
from goldkey.govern.workspaces import WorkspaceService, hash_secret
from goldkey.store.operational import audit_log, create_operational_engine, migrate, user_sessions

PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class Store:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.clock = Clock()
        self.users = UserService(engine, clock=self.clock)
        self.ws = WorkspaceService(engine)
        self.a = self.ws.create("Brand A").workspace_id
        self.b = self.ws.create("Brand B").workspace_id

    def audit(self, workspace_id: str, action: str) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(audit_log).where(audit_log.c.workspace_id == workspace_id,
                                                           audit_log.c.action == action)
                                .order_by(audit_log.c.audit_id)).all()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with operational_url(request.param) as url:
        engine = create_operational_engine(url or f"sqlite:///{tmp_path / 'op.db'}")
        migrate(engine)
        try:
            yield Store(engine)
        finally:
            engine.dispose()


def test_hash_format_and_round_trip() -> None:
    stored = hash_password(PASSWORD)
    scheme, n, r, p, salt, key = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert len(base64.b64decode(pad(salt))) == 16 and len(base64.b64decode(pad(key))) == 64
    assert verify_password(PASSWORD, stored)
    assert not verify_password(PASSWORD + "!", stored)
    assert hash_password(PASSWORD) != stored  # a fresh salt each time
    # a hash of another cost still verifies: the parameters travel with it
    cheaper = hash_password(PASSWORD, n=2**12)
    assert cheaper.startswith("scrypt$4096$8$1$") and verify_password(PASSWORD, cheaper)
    for bad in ("", "scrypt$x", "bcrypt$16384$8$1$AAAA$AAAA", "scrypt$16384$8$1$!!$??"):
        assert not verify_password(PASSWORD, bad)


def test_bad_input_names_the_field(store: Store) -> None:
    cases = [(("not-an-email", PASSWORD), "email"), (("ana@example.com", "short"), "password"),
             (("", PASSWORD), "email"), (("ana@example.com", 12345678901), "password")]
    for args, field in cases:
        with pytest.raises(InvalidInput) as exc:
            store.users.create_user(*args)
        assert exc.value.field == field, args
    with pytest.raises(InvalidInput, match="at least 10 characters") as exc:
        store.users.create_user("ana@example.com", "123456789")
    u = store.users.create_user("Ana@Example.COM", PASSWORD, "Ana")
    assert u["email"] == "ana@example.com"
    with pytest.raises(Conflict, match="exists already"):
        store.users.create_user("ANA@example.com", PASSWORD)
    with pytest.raises(InvalidInput, match="unknown role 'owner'") as exc:
        store.users.grant(store.a, u["user_id"], "owner", actor="test")
    assert exc.value.field == "role"


def test_login_wrong_password_unknown_email_and_disabled(store: Store) -> None:
    u = store.users.create_user("ana@example.com", PASSWORD, "Ana")
    store.users.grant(store.a, u["user_id"], "marketer", actor="test")
    with pytest.raises(Unauthorized) as wrong:
        store.users.login("ana@example.com", PASSWORD + "x")
    with pytest.raises(Unauthorized) as unknown:
        store.users.login("nobody@example.com", PASSWORD)
    assert str(wrong.value) == str(unknown.value) == "wrong e-mail or password"  # nothing tells them apart
    out = store.users.login("  ANA@example.com ", PASSWORD)  # any case, trimmed
    assert out["token"].startswith("gks_") and out["user"]["email"] == "ana@example.com"
    assert out["grants"] == [{"workspace_id": store.a, "name": "Brand A", "role": "marketer"}]
    assert out["expires_at"] == (store.clock.now + SESSION_LIFETIME).isoformat().replace("+00:00", "Z")
    # only the token's SHA-256 is stored
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(user_sessions.c.token_hash)).scalars().all() == [hash_secret(out["token"])]
    # every attempt is in the audit log: the failures once without a workspace (what the limit counts)
    # and in the workspace of the known user; the success in the user's workspace
    assert [r.target for r in store.audit(NO_WORKSPACE, "auth.login_failed")] == ["ana@example.com",
                                                                                  "nobody@example.com"]
    assert [r.target for r in store.audit(store.a, "auth.login_failed")] == [u["user_id"]]
    assert [r.actor for r in store.audit(store.a, "auth.login")] == [f"user:{u['user_id']}"]

    store.users.disable(u["user_id"], actor="test")
    with pytest.raises(Unauthorized, match="disabled"):
        store.users.authenticate(out["token"])  # disabling ends the sessions
    with pytest.raises(Unauthorized, match="disabled"):
        store.users.login("ana@example.com", PASSWORD)
    with pytest.raises(Unauthorized, match="wrong e-mail or password"):
        store.users.login("ana@example.com", "not the password")  # a wrong password says nothing more


def test_expiry_sliding_renewal_and_logout(store: Store) -> None:
    u = store.users.create_user("ana@example.com", PASSWORD)
    store.users.grant(store.a, u["user_id"], "viewer", actor="test")
    token = store.users.login("ana@example.com", PASSWORD)["token"]
    start = store.clock.now
    # used within its lifetime, the session moves on: 11 h, 22 h, 33 h after sign-in it is still live
    for _ in range(3):
        store.clock.advance(timedelta(hours=11))
        s = store.users.authenticate(token)
        assert s.expires_at == store.clock.now + SESSION_LIFETIME
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(user_sessions)).one()
    assert row.last_used_at.replace(tzinfo=UTC) == start + timedelta(hours=33)
    # within SESSION_RENEW_AFTER a use does not write again
    store.clock.advance(SESSION_RENEW_AFTER / 2)
    assert store.users.authenticate(token).expires_at == start + timedelta(hours=33) + SESSION_LIFETIME
    # unused for 12 hours: expired
    store.clock.advance(SESSION_LIFETIME)
    with pytest.raises(Unauthorized, match="expired"):
        store.users.authenticate(token)
    # a fresh one, signed out: refused at once
    token = store.users.login("ana@example.com", PASSWORD)["token"]
    assert store.users.authenticate(token).user_id == u["user_id"]
    store.users.logout(token)
    with pytest.raises(Unauthorized):
        store.users.authenticate(token)
    with pytest.raises(Unauthorized):
        store.users.authenticate("gks_never-issued")


def test_rate_limit_after_ten_failures(store: Store) -> None:
    store.users.create_user("ana@example.com", PASSWORD)
    first = store.clock.now
    for i in range(LOGIN_MAX_FAILURES):
        store.clock.now = first + timedelta(seconds=30 * i)
        with pytest.raises(Unauthorized):
            store.users.login("ana@example.com", f"guess number {i}")
    # the eleventh is refused even with the right password, and says when to retry
    with pytest.raises(TooManyAttempts) as exc:
        store.users.login("ANA@example.com", PASSWORD)
    assert exc.value.status_code == 429
    assert exc.value.retry_after == int((first + LOGIN_WINDOW - store.clock.now).total_seconds())
    # another e-mail is not affected
    with pytest.raises(Unauthorized):
        store.users.login("bob@example.com", PASSWORD)
    # once the oldest failure leaves the window, one more attempt is allowed
    store.clock.now = first + LOGIN_WINDOW + timedelta(seconds=1)
    assert store.users.login("ana@example.com", PASSWORD)["token"].startswith("gks_")


def test_grants_roles_and_the_last_admin(store: Store) -> None:
    ana = store.users.create_user("ana@example.com", PASSWORD)["user_id"]
    bob = store.users.create_user("bob@example.com", PASSWORD)["user_id"]
    store.users.grant(store.a, ana, "admin", actor="key:k1")
    store.users.grant(store.a, bob, "viewer", actor="user:" + ana)
    store.users.grant(store.b, bob, "analyst", actor="key:k2")
    assert [(u["email"], u["role"]) for u in store.users.list_users(store.a)] == [
        ("ana@example.com", "admin"), ("bob@example.com", "viewer")]
    assert [u["email"] for u in store.users.list_users(store.b)] == ["bob@example.com"]
    # the last admin can be neither demoted nor removed
    with pytest.raises(Conflict, match="last admin"):
        store.users.grant(store.a, ana, "marketer", actor="test")
    with pytest.raises(Conflict, match="last admin"):
        store.users.revoke(store.a, ana, actor="test")
    store.users.grant(store.a, bob, "admin", actor="user:" + ana)
    store.users.revoke(store.a, ana, actor="user:" + bob)
    assert [u["email"] for u in store.users.list_users(store.a)] == ["bob@example.com"]
    # each change is in the audit log of its workspace, with who did it
    assert [(r.actor, r.target) for r in store.audit(store.a, "user.grant")] == [("key:k1", ana),
                                                                                 ("user:" + ana, bob)]
    change = store.audit(store.a, "user.role_change")
    assert len(change) == 1 and '"from":"viewer","to":"admin"' in change[0].detail
    assert [(r.actor, r.target) for r in store.audit(store.a, "user.revoke")] == [("user:" + bob, ana)]
    assert store.audit(store.b, "user.revoke") == []


def test_invite_creates_once_and_grants_existing_users(store: Store) -> None:
    out = store.users.invite(store.a, "Cai@Example.com", "Cai", "marketer", actor="test")
    assert out["created"] and len(out["initial_password"]) >= 10 and out["role"] == "marketer"
    assert store.users.login("cai@example.com", out["initial_password"])["grants"][0]["role"] == "marketer"
    again = store.users.invite(store.b, "cai@example.com", "", "viewer", actor="test")
    assert not again["created"] and again["initial_password"] is None
    with pytest.raises(Conflict, match="already has the marketer role"):
        store.users.invite(store.a, "cai@example.com", "", "admin", actor="test")


def test_a_session_in_a_workspace(store: Store) -> None:
    ana = store.users.create_user("ana@example.com", PASSWORD)["user_id"]
    store.users.grant(store.a, ana, "analyst", actor="test")
    token = store.users.login("ana@example.com", PASSWORD)["token"]
    # one grant: no header needed
    cred = store.users.credential(token, None)
    assert (cred.workspace_id, cred.kind, cred.role, cred.user_id, cred.key_id) == (store.a, "user", "analyst",
                                                                                    ana, ana)
    with pytest.raises(Forbidden, match=f"no role in workspace {store.b}"):
        store.users.credential(token, store.b)
    # two grants: the header is required
    store.users.grant(store.b, ana, "viewer", actor="test")
    with pytest.raises(InvalidInput, match="X-Goldkey-Workspace") as exc:
        store.users.credential(token, None)
    assert exc.value.field == "X-Goldkey-Workspace"
    assert store.users.credential(token, store.b).role == "viewer"
    # a removed grant is refused from the next request
    store.users.revoke(store.b, ana, actor="test")
    with pytest.raises(Forbidden):
        store.users.credential(token, store.b)
