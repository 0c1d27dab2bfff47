"""Users, their role in each workspace, and their sign-in sessions.

A user is a person identified by a lower-cased e-mail; what they may open are their **grants**, one
per workspace, each with a role: ``admin`` (everything, including keys, channels and users),
``marketer`` (audiences, campaigns, journeys, tags, imports), ``analyst`` (reads everything, runs
insight models and reports, changes no configuration) and ``viewer`` (reads). The roles are ordered;
a route names the least role it needs (``goldkey.api.roles``).

Passwords are hashed with scrypt (n = 2^14, r = 8, p = 1, a 16-byte random salt, a 64-byte key) and
stored as ``scrypt$n$r$p$salt$hash``, so the cost can be raised later while old hashes still verify.
A sign-in with an unknown e-mail verifies against a dummy hash, so it costs the same time as a wrong
password. A sign-in gives a session token ``gks_…`` (only its SHA-256 is stored) that lasts 12 hours
from its last use (sliding). After ``LOGIN_MAX_FAILURES`` failed sign-ins for one e-mail within
``LOGIN_WINDOW`` the next ones are refused (TooManyAttempts, 429 with Retry-After) until the oldest
of them leaves the window.

Every grant change, sign-in and failed sign-in is written to the audit log: in each workspace the
user is granted (actor ``user:<user_id>`` or the admin who changed it), and failed sign-ins also once
under the workspace id ``*`` (no workspace), which is what the rate limit counts.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from threading import Lock
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from goldkey.core.clock import as_utc, to_iso, utcnow
from goldkey.core.errors import Conflict, Forbidden, GoldkeyError, InvalidInput, NotFound, Unauthorized
from goldkey.core.ids import new_id, new_secret
from goldkey.govern import audit
from goldkey.govern.workspaces import Credential, hash_secret
from goldkey.store.operational import audit_log, user_grants, user_sessions, users, workspaces

ROLES = ("viewer", "analyst", "marketer", "admin")
"""The roles, least to most: each may do what the ones before it may."""

PASSWORD_MIN_LENGTH = 10
PASSWORD_MAX_LENGTH = 1024
SESSION_LIFETIME = timedelta(hours=12)
# a session's expiry is pushed forward at most this often (not a write on every request)
SESSION_RENEW_AFTER = timedelta(minutes=1)
# how long a verified session is trusted in this process without asking the store again; logout,
# disabling and grant changes made through this service drop it at once
SESSION_CACHE_SECONDS = 10.0
LOGIN_MAX_FAILURES = 10
LOGIN_WINDOW = timedelta(minutes=15)
NO_WORKSPACE = "*"  # the audit log's workspace_id for sign-in failures that concern no workspace
SESSION_PREFIX = "gks_"
WORKSPACE_HEADER = "X-Goldkey-Workspace"

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES, KEY_BYTES = 16, 64

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class TooManyAttempts(GoldkeyError):
    """Too many failed sign-ins for this e-mail: retry after ``retry_after`` seconds."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:  # noqa: D107
        super().__init__(message)
        self.retry_after = retry_after


def role_rank(role: str) -> int:
    """Return the role's place in ``ROLES`` (viewer 0 … admin 3); raise InvalidInput for another."""
    try:
        return ROLES.index(role)
    except ValueError:
        raise InvalidInput(f"unknown role {role!r}; use one of {', '.join(ROLES)}", field="role") from None


# --------------------------------------------------------------------------- passwords


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * r * (n + p + 2))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Return the stored form of ``password``: ``scrypt$n$r$p$salt$hash`` (salt and hash base64)."""
    salt = os.urandom(SALT_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(_scrypt(password, salt, n, r, p, KEY_BYTES))}"


def verify_password(password: str, stored: str) -> bool:
    """Return whether ``password`` matches ``stored`` (as ``hash_password`` wrote it, whatever its
    cost parameters). A malformed stored hash never matches."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(key)
        got = _scrypt(password, _unb64(salt), int(n), int(r), int(p), len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


@functools.cache
def _dummy_hash() -> str:
    """A hash no password matches, verified for unknown e-mails so that they cost the same time."""
    return hash_password(secrets.token_hex(16))


def new_password() -> str:
    """Return a random initial password (16 URL-safe characters)."""
    return secrets.token_urlsafe(12)


def check_password(password: object, field: str = "password") -> str:
    """Return ``password`` if acceptable; raise InvalidInput naming ``field`` otherwise."""
    if not isinstance(password, str):
        raise InvalidInput("must be a string", field=field)
    if len(password) < PASSWORD_MIN_LENGTH:
        raise InvalidInput(f"must be at least {PASSWORD_MIN_LENGTH} characters long", field=field)
    if len(password) > PASSWORD_MAX_LENGTH:
        raise InvalidInput(f"must be at most {PASSWORD_MAX_LENGTH} characters long", field=field)
    return password


def normalize_email(email: object) -> str:
    """Return the e-mail trimmed and lower-cased; raise InvalidInput (field ``email``)."""
    if not isinstance(email, str) or not email.strip():
        raise InvalidInput("an e-mail address is required", field="email")
    addr = email.strip().lower()
    if len(addr) > 254 or not _EMAIL.match(addr):
        raise InvalidInput(f"{email.strip()!r} is not an e-mail address", field="email")
    return addr


def _check_name(name: object) -> str:
    if name is None:
        return ""
    if not isinstance(name, str):
        raise InvalidInput("must be a string", field="name")
    if len(name.strip()) > 200:
        raise InvalidInput("must be at most 200 characters long", field="name")
    return name.strip()


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class SessionUser:
    """What a live session token stands for."""

    user_id: str
    email: str
    name: str
    grants: dict[str, str]  # workspace_id -> role
    expires_at: datetime
    renewed_at: datetime
    token_hash: str


def _user_public(row: Any) -> dict[str, Any]:
    return {"user_id": row.user_id, "email": row.email, "name": row.name,
            "created_at": to_iso(row.created_at), "disabled_at": to_iso(row.disabled_at)}


class UserService:
    """Users, grants and sessions over the operational store. ``clock`` gives the current time
    (tests pass their own to step through expiry)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.clock = clock
        self._cache: dict[str, tuple[SessionUser, float]] = {}
        self._lock = Lock()

    # -- users ------------------------------------------------------------------------------------

    def create_user(self, email: object, password: object, name: object = "") -> dict[str, Any]:
        """Create a user; return its public fields (user_id, email, name, created_at, disabled_at).

        Raises InvalidInput naming ``email``, ``password`` or ``name``; Conflict when the e-mail is taken.
        """
        addr = normalize_email(email)
        pw = check_password(password)
        nm = _check_name(name)
        pw_hash = hash_password(pw)
        with self.engine.begin() as conn:
            if conn.execute(sa.select(users.c.user_id).where(users.c.email == addr)).first():
                raise Conflict(f"a user with the e-mail {addr!r} exists already")
            uid = new_id("usr")
            conn.execute(users.insert().values(user_id=uid, email=addr, name=nm, password_hash=pw_hash,
                                               created_at=self.clock()))
            row = conn.execute(sa.select(users).where(users.c.user_id == uid)).one()
        return _user_public(row)

    def find(self, email: object) -> dict[str, Any] | None:
        """Return the user with this e-mail (any case), or None. Raises InvalidInput for a malformed e-mail."""
        addr = normalize_email(email)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.email == addr)).first()
        return _user_public(row) if row else None

    def get(self, user_id: str) -> dict[str, Any]:
        """Return the user's public fields; raise NotFound."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.user_id == user_id)).first()
        if row is None:
            raise NotFound(f"user {user_id!r} not found")
        return _user_public(row)

    def set_password(self, user_id: str, password: object) -> None:
        """Replace the user's password and end their sessions. Raises InvalidInput, NotFound."""
        pw_hash = hash_password(check_password(password))
        with self.engine.begin() as conn:
            n = conn.execute(users.update().where(users.c.user_id == user_id).values(password_hash=pw_hash)).rowcount
            if not n:
                raise NotFound(f"user {user_id!r} not found")
            self._end_sessions(conn, user_id)

    def disable(self, user_id: str, *, actor: str) -> dict[str, Any]:
        """Disable the user (sign-in refused, sessions ended; grants kept) and return it. Raises NotFound."""
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(users).where(users.c.user_id == user_id)).first()
            if row is None:
                raise NotFound(f"user {user_id!r} not found")
            if row.disabled_at is None:
                conn.execute(users.update().where(users.c.user_id == user_id).values(disabled_at=now))
                self._end_sessions(conn, user_id)
                for ws in self._granted(conn, user_id):
                    _audit(conn, ws, actor, "user.disable", user_id, {"email": row.email}, now)
            row = conn.execute(sa.select(users).where(users.c.user_id == user_id)).one()
        return _user_public(row)

    # -- grants -----------------------------------------------------------------------------------

    def grant(self, workspace_id: str, user_id: str, role: str, *, actor: str) -> dict[str, Any]:
        """Give the user ``role`` in the workspace (a new grant or a changed role) and return the
        user as ``list_users`` shows it. Raises InvalidInput (role), NotFound (user or workspace),
        Conflict when it would demote the workspace's last admin."""
        role_rank(role)
        now = self.clock()
        with self.engine.begin() as conn:
            user = conn.execute(sa.select(users).where(users.c.user_id == user_id)).first()
            if user is None:
                raise NotFound(f"user {user_id!r} not found")
            if not conn.execute(sa.select(workspaces.c.workspace_id).where(
                    workspaces.c.workspace_id == workspace_id)).first():
                raise NotFound(f"workspace {workspace_id!r} not found")
            g = user_grants.c
            old = conn.execute(sa.select(g.role).where(g.user_id == user_id, g.workspace_id == workspace_id)).scalar()
            if old == role:
                pass
            elif old is None:
                conn.execute(user_grants.insert().values(user_id=user_id, workspace_id=workspace_id, role=role,
                                                         created_at=now, created_by=actor[:100]))
                _audit(conn, workspace_id, actor, "user.grant", user_id, {"email": user.email, "role": role}, now)
            else:
                if old == "admin":
                    self._keep_an_admin(conn, workspace_id, user_id, "change the role of")
                conn.execute(user_grants.update().where(g.user_id == user_id, g.workspace_id == workspace_id)
                             .values(role=role))
                _audit(conn, workspace_id, actor, "user.role_change", user_id,
                       {"email": user.email, "from": old, "to": role}, now)
        self._forget_all()
        return self.member(workspace_id, user_id)

    def revoke(self, workspace_id: str, user_id: str, *, actor: str) -> None:
        """Remove the user's grant in the workspace (the user stays). Raises NotFound when there is
        no such grant, Conflict for the workspace's last admin."""
        now = self.clock()
        g = user_grants.c
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(g.role, users.c.email).join(users, users.c.user_id == g.user_id)
                               .where(g.user_id == user_id, g.workspace_id == workspace_id)).first()
            if row is None:
                raise NotFound(f"user {user_id!r} has no role in this workspace")
            if row.role == "admin":
                self._keep_an_admin(conn, workspace_id, user_id, "remove")
            conn.execute(user_grants.delete().where(g.user_id == user_id, g.workspace_id == workspace_id))
            _audit(conn, workspace_id, actor, "user.revoke", user_id, {"email": row.email, "role": row.role}, now)
        self._forget_all()

    def _keep_an_admin(self, conn: sa.Connection, workspace_id: str, user_id: str, doing: str) -> None:
        g = user_grants.c
        others = conn.execute(
            sa.select(sa.func.count()).select_from(user_grants.join(users, users.c.user_id == g.user_id)).where(
                g.workspace_id == workspace_id, g.role == "admin", g.user_id != user_id,
                users.c.disabled_at.is_(None))
        ).scalar_one()
        if not others:
            raise Conflict(f"cannot {doing} the last admin of workspace {workspace_id}: "
                           "make another user admin first")

    def invite(self, workspace_id: str, email: object, name: object, role: str, *, actor: str) -> dict[str, Any]:
        """Grant ``role`` in the workspace to the user with this e-mail, creating the user with a
        random initial password when there is none. Return the user as ``list_users`` shows it plus
        ``created`` and ``initial_password`` (only for a created user: shown once, never stored).

        Raises InvalidInput (email, name, role); Conflict when the user already has a role here or
        is disabled; NotFound for an unknown workspace.
        """
        role_rank(role)
        addr = normalize_email(email)
        nm = _check_name(name)
        existing = self.find(addr)
        password: str | None = None
        if existing is None:
            password = new_password()
            try:
                existing = self.create_user(addr, password, nm)
            except Conflict:  # created meanwhile by another request
                existing, password = self.find(addr), None
                assert existing is not None
        else:
            if existing["disabled_at"] is not None:
                raise Conflict(f"the user {addr!r} is disabled")
            with self.engine.connect() as conn:
                had = conn.execute(sa.select(user_grants.c.role).where(
                    user_grants.c.user_id == existing["user_id"], user_grants.c.workspace_id == workspace_id)).scalar()
            if had is not None:
                raise Conflict(f"{addr} already has the {had} role in this workspace; change it instead")
        out = self.grant(workspace_id, existing["user_id"], role, actor=actor)
        return {**out, "created": password is not None, "initial_password": password}

    def member(self, workspace_id: str, user_id: str) -> dict[str, Any]:
        """Return one user of the workspace as ``list_users`` shows it; raise NotFound."""
        rows = self._members(workspace_id, user_id)
        if not rows:
            raise NotFound(f"user {user_id!r} has no role in this workspace")
        return rows[0]

    def list_users(self, workspace_id: str) -> list[dict[str, Any]]:
        """Return the workspace's users by e-mail: user_id, email, name, role, granted_at,
        granted_by, disabled_at."""
        return self._members(workspace_id, None)

    def _members(self, workspace_id: str, user_id: str | None) -> list[dict[str, Any]]:
        g, u = user_grants.c, users.c
        q = (sa.select(u.user_id, u.email, u.name, u.disabled_at, g.role, g.created_at, g.created_by)
             .join(users, u.user_id == g.user_id).where(g.workspace_id == workspace_id))
        if user_id is not None:
            q = q.where(g.user_id == user_id)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(u.email)).all()
        return [{"user_id": r.user_id, "email": r.email, "name": r.name, "role": r.role,
                 "granted_at": to_iso(r.created_at), "granted_by": r.created_by,
                 "disabled_at": to_iso(r.disabled_at)} for r in rows]

    def grants(self, user_id: str) -> list[dict[str, Any]]:
        """Return the user's grants with the workspaces' names: [{workspace_id, name, role}], by name."""
        g = user_grants.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(g.workspace_id, workspaces.c.name, g.role)
                .join(workspaces, workspaces.c.workspace_id == g.workspace_id)
                .where(g.user_id == user_id).order_by(workspaces.c.name)
            ).all()
        return [{"workspace_id": r.workspace_id, "name": r.name, "role": r.role} for r in rows]

    @staticmethod
    def _granted(conn: sa.Connection, user_id: str) -> list[str]:
        q = sa.select(user_grants.c.workspace_id).where(user_grants.c.user_id == user_id)
        return list(conn.execute(q).scalars())

    # -- sign-in ----------------------------------------------------------------------------------

    def login(self, email: object, password: object) -> dict[str, Any]:
        """Sign in: return {token, expires_at, user, grants}. The token is shown only here.

        Raises InvalidInput for a missing e-mail or password, TooManyAttempts after too many
        failures for this e-mail, Unauthorized for a wrong e-mail or password or a disabled user.
        """
        if not isinstance(email, str) or not email.strip():
            raise InvalidInput("an e-mail address is required", field="email")
        if not isinstance(password, str) or not password:
            raise InvalidInput("a password is required", field="password")
        addr = email.strip().lower()[:254]
        now = self.clock()
        self._check_rate(addr, now)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.email == addr)).first()
        # an unknown e-mail is checked against a dummy hash: the answer takes as long as a wrong password
        ok = verify_password(password[:PASSWORD_MAX_LENGTH], row.password_hash if row else _dummy_hash())
        if row is None or not ok:
            self._failed(addr, row.user_id if row else None, "wrong password" if row else "unknown e-mail", now)
            raise Unauthorized("wrong e-mail or password")
        if row.disabled_at is not None:
            self._failed(addr, row.user_id, "disabled", now)
            raise Unauthorized("this user is disabled; ask an admin of your workspace")
        token = new_secret(SESSION_PREFIX.rstrip("_"))
        expires = now + SESSION_LIFETIME
        with self.engine.begin() as conn:
            conn.execute(user_sessions.insert().values(token_hash=hash_secret(token), user_id=row.user_id,
                                                       created_at=now, expires_at=expires, last_used_at=now))
            for ws in self._granted(conn, row.user_id) or [NO_WORKSPACE]:
                _audit(conn, ws, f"user:{row.user_id}", "auth.login", row.user_id, {"email": addr}, now)
        return {"token": token, "expires_at": to_iso(expires), "user": _user_public(row),
                "grants": self.grants(row.user_id)}

    def _check_rate(self, addr: str, now: datetime) -> None:
        a = audit_log.c
        with self.engine.connect() as conn:
            recent = conn.execute(
                sa.select(a.at).where(a.workspace_id == NO_WORKSPACE, a.action == "auth.login_failed",
                                      a.target == addr[:200], a.at >= now - LOGIN_WINDOW)
                .order_by(a.at.desc()).limit(LOGIN_MAX_FAILURES)
            ).scalars().all()
        if len(recent) >= LOGIN_MAX_FAILURES:
            oldest = as_utc(recent[-1])
            assert oldest is not None
            wait = max(1, math.ceil((oldest + LOGIN_WINDOW - now).total_seconds()))
            raise TooManyAttempts(
                f"too many failed sign-ins for {addr}: try again in {wait} seconds", retry_after=wait)

    def _failed(self, addr: str, user_id: str | None, reason: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            _audit(conn, NO_WORKSPACE, "anonymous", "auth.login_failed", addr[:200], {"reason": reason}, now)
            if user_id is not None:
                for ws in self._granted(conn, user_id):
                    _audit(conn, ws, "anonymous", "auth.login_failed", user_id,
                           {"email": addr, "reason": reason}, now)

    def authenticate(self, token: str) -> SessionUser:
        """Return what a live session token stands for, pushing its expiry forward (at most once per
        ``SESSION_RENEW_AFTER``). Raises Unauthorized for an unknown, expired, ended or disabled one."""
        h = hash_secret(token)
        now = self.clock()
        hit = self._cache.get(h)
        if hit is not None:
            s, until = hit
            if until > time.monotonic() and now < s.expires_at and now - s.renewed_at < SESSION_RENEW_AFTER:
                return s
        sc, uc = user_sessions.c, users.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(sc.user_id, sc.expires_at, sc.last_used_at, sc.revoked_at, uc.email, uc.name,
                          uc.disabled_at).join(users, uc.user_id == sc.user_id).where(sc.token_hash == h)
            ).first()
            expires = as_utc(row.expires_at) if row else None
            if row is not None and row.disabled_at is not None:
                self._forget(h)
                raise Unauthorized("this user is disabled; ask an admin of your workspace")
            if row is None or row.revoked_at is not None or expires is None or expires <= now:
                self._forget(h)
                raise Unauthorized("the session has expired or was signed out; sign in again")
            grants = {g.workspace_id: g.role for g in conn.execute(
                sa.select(user_grants.c.workspace_id, user_grants.c.role).where(user_grants.c.user_id == row.user_id))}
        renewed = as_utc(row.last_used_at) or now
        if now - renewed >= SESSION_RENEW_AFTER:
            renewed, expires = now, now + SESSION_LIFETIME
            with self.engine.begin() as conn:
                conn.execute(user_sessions.update().where(sc.token_hash == h, sc.revoked_at.is_(None))
                             .values(last_used_at=now, expires_at=expires))
        s = SessionUser(row.user_id, row.email, row.name, grants, expires, renewed, h)
        with self._lock:
            if len(self._cache) >= 100_000:
                self._cache.clear()
            self._cache[h] = (s, time.monotonic() + SESSION_CACHE_SECONDS)
        return s

    def credential(self, token: str, workspace_id: str | None) -> Credential:
        """Return the Credential of a session token in a workspace: the one named (the
        ``X-Goldkey-Workspace`` header) or, when none is named, the user's only one.

        Raises Unauthorized (as ``authenticate``), Forbidden when the user has no role in the
        workspace named, InvalidInput (field ``X-Goldkey-Workspace``) when none is named and the user
        has several.
        """
        s = self.authenticate(token)
        if workspace_id:
            role = s.grants.get(workspace_id)
            if role is None:
                raise Forbidden(f"{s.email} has no role in workspace {workspace_id}")
        elif len(s.grants) == 1:
            workspace_id, role = next(iter(s.grants.items()))
        elif not s.grants:
            raise Forbidden(f"{s.email} has no role in any workspace; ask a workspace admin")
        else:
            raise InvalidInput(f"{s.email} has roles in {len(s.grants)} workspaces: name one in the "
                               f"{WORKSPACE_HEADER} header", field=WORKSPACE_HEADER)
        return Credential(workspace_id, "user", s.user_id, role, s.user_id)

    def logout(self, token: str) -> None:
        """End the session (refused from the next request). Raises Unauthorized when it is not live."""
        s = self.authenticate(token)
        with self.engine.begin() as conn:
            conn.execute(user_sessions.update().where(user_sessions.c.token_hash == s.token_hash)
                         .values(revoked_at=self.clock()))
        self._forget(s.token_hash)

    def _end_sessions(self, conn: sa.Connection, user_id: str) -> None:
        sc = user_sessions.c
        conn.execute(user_sessions.update().where(sc.user_id == user_id, sc.revoked_at.is_(None))
                     .values(revoked_at=self.clock()))
        self._forget_all()

    def _forget(self, token_hash: str) -> None:
        with self._lock:
            self._cache.pop(token_hash, None)

    def _forget_all(self) -> None:
        with self._lock:
            self._cache.clear()


def _audit(conn: sa.Connection, workspace_id: str, actor: str, action: str, target: str,
           detail: dict[str, Any], at: datetime) -> None:
    audit.write(conn, workspace_id, actor, action, target, detail, at=at)
