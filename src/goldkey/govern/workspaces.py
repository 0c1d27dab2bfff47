"""Workspaces (brands) and their credentials: write keys for ingestion, admin tokens for the API.

Only a SHA-256 hash of each secret is stored; the secret is shown once, when created.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from threading import Lock

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from goldkey.core.clock import as_utc, utcnow
from goldkey.core.errors import Conflict, NotFound, Unauthorized
from goldkey.core.ids import new_id, new_secret
from goldkey.identity.rules import IdentityRules
from goldkey.store.operational import api_keys, workspaces

# how long a verified secret is trusted without asking the store again (a revoked key is refused
# within this time), and how many verified secrets are remembered
KEY_CACHE_SECONDS = 30.0
KEY_CACHE_MAX = 100_000


def hash_secret(secret: str) -> str:
    """Return the stored hash of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewWorkspace:
    """A created workspace with its first secrets (shown only now)."""

    workspace_id: str
    name: str
    write_key: str
    admin_token: str


@dataclass(frozen=True)
class Credential:
    """What a presented secret grants."""

    workspace_id: str
    kind: str  # "write" | "admin" | "user" (a signed-in user's session, see govern/users.py)
    key_id: str  # the key's id; for a user session, the user's id
    role: str | None = None  # admin | marketer | analyst | viewer; None for a write key
    user_id: str | None = None  # set for a user session


class WorkspaceService:
    """Creates workspaces and keys, and authenticates secrets (with an in-memory cache)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # secret hash -> (credential, monotonic expiry): a key revoked in the store is refused
        # again within KEY_CACHE_SECONDS, while the hot path skips the query
        self._cache: dict[str, tuple[Credential, float]] = {}
        self._rules: dict[str, IdentityRules] = {}
        self._lock = Lock()
        # told of every forgotten (revoked) key hash: the collector processes' caches forget it too
        self.on_forget: list[Callable[[str], None]] = []

    def create(self, name: str, rules: IdentityRules | None = None) -> NewWorkspace:
        """Create a workspace with one write key and one admin token; return them.

        Raises Conflict when a workspace of that name exists.
        """
        name = name.strip()
        if not name:
            raise Conflict("workspace name must not be empty")
        with self.engine.begin() as conn:
            if conn.execute(sa.select(workspaces.c.workspace_id).where(workspaces.c.name == name)).first():
                raise Conflict(f"a workspace named {name!r} exists already")
            ws_id = new_id("ws")
            conn.execute(
                workspaces.insert().values(
                    workspace_id=ws_id,
                    name=name,
                    identity_rules=(rules or IdentityRules()).model_dump_json(),
                    created_at=utcnow(),
                )
            )
            write_key = self._new_key(conn, ws_id, "write", "default write key")
            admin = self._new_key(conn, ws_id, "admin", "first admin token")
        return NewWorkspace(ws_id, name, write_key, admin)

    def create_key(self, workspace_id: str, kind: str, label: str = "") -> str:
        """Create another write key or admin token for a workspace and return the secret."""
        if kind not in ("write", "admin"):
            raise Conflict("kind must be 'write' or 'admin'")
        self.get(workspace_id)
        with self.engine.begin() as conn:
            return self._new_key(conn, workspace_id, kind, label)

    def _new_key(self, conn: sa.Connection, ws_id: str, kind: str, label: str) -> str:
        secret = new_secret("gkw" if kind == "write" else "gka")
        conn.execute(
            api_keys.insert().values(
                key_id=new_id("key"),
                workspace_id=ws_id,
                kind=kind,
                key_hash=hash_secret(secret),
                prefix=secret[:8],
                label=label,
                created_at=utcnow(),
            )
        )
        return secret

    def authenticate(self, secret: str, kind: str) -> Credential:
        """Return the credential for ``secret`` if it is a live key of ``kind``.

        Raises Unauthorized for an unknown, revoked or wrong-kind secret.
        """
        return self.authenticate_hash(hash_secret(secret), kind)

    def authenticate_hash(self, h: str, kind: str) -> Credential:
        """``authenticate`` for a secret already hashed with ``hash_secret`` (callers that see the
        same secret on every request remember its hash). Raises Unauthorized as ``authenticate``."""
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and hit[1] > now:
            cred = hit[0]
        else:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(api_keys.c.workspace_id, api_keys.c.kind, api_keys.c.key_id).where(
                        api_keys.c.key_hash == h, api_keys.c.revoked_at.is_(None)
                    )
                ).first()
            if row is None:
                with self._lock:
                    self._cache.pop(h, None)
                raise Unauthorized("unknown or revoked key")
            cred = Credential(row.workspace_id, row.kind, row.key_id, "admin" if row.kind == "admin" else None)
            with self._lock:
                if len(self._cache) >= KEY_CACHE_MAX:
                    self._cache.clear()
                self._cache[h] = (cred, now + KEY_CACHE_SECONDS)
        if cred.kind != kind:
            raise Unauthorized(
                "a write key can only send events; use an admin token"
                if kind == "admin"
                else "an admin token is not a write key"
            )
        return cred

    def forget(self, key_hash: str) -> None:
        """Drop a key from the authentication cache (after revoking it: refused from the next request)."""
        with self._lock:
            self._cache.pop(key_hash, None)
        for tell in list(self.on_forget):
            tell(key_hash)

    def get(self, workspace_id: str) -> dict[str, object]:
        """Return the workspace's public fields; raise NotFound."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(workspaces).where(workspaces.c.workspace_id == workspace_id)).first()
        if row is None:
            raise NotFound(f"workspace {workspace_id} not found")
        return {"workspace_id": row.workspace_id, "name": row.name, "created_at": as_utc(row.created_at)}

    def list(self) -> list[dict[str, object]]:
        """Return all workspaces (id, name, created_at)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(workspaces).order_by(workspaces.c.created_at)).all()
        return [{"workspace_id": r.workspace_id, "name": r.name, "created_at": as_utc(r.created_at)} for r in rows]

    def find_by_name(self, name: str) -> str | None:
        """Return the id of the workspace called ``name``, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(workspaces.c.workspace_id).where(workspaces.c.name == name)).first()
        return row.workspace_id if row else None

    def rules(self, workspace_id: str) -> IdentityRules:
        """Return the workspace's identity rules (cached)."""
        r = self._rules.get(workspace_id)
        if r is None:
            with self.engine.connect() as conn:
                raw = conn.execute(
                    sa.select(workspaces.c.identity_rules).where(workspaces.c.workspace_id == workspace_id)
                ).scalar()
            if raw is None:
                raise NotFound(f"workspace {workspace_id} not found")
            r = IdentityRules.model_validate(orjson.loads(raw))
            self._rules[workspace_id] = r
        return r

    def set_rules(self, workspace_id: str, rules: IdentityRules) -> None:
        """Replace the workspace's identity rules (applies to identifiers seen from now on)."""
        self.get(workspace_id)
        with self.engine.begin() as conn:
            conn.execute(
                workspaces.update()
                .where(workspaces.c.workspace_id == workspace_id)
                .values(identity_rules=rules.model_dump_json())
            )
        self._rules[workspace_id] = rules
