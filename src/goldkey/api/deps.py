"""Typed dependencies of the API: the running instance and the caller's credential (an admin token
or a signed-in user's session, with the role the route needs checked; see ``goldkey.api.roles``)."""

from __future__ import annotations

import base64
import binascii
from threading import Lock
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from goldkey.api.roles import least_role
from goldkey.core.errors import Forbidden, InvalidInput, Unauthorized
from goldkey.govern.users import ROLES, SESSION_PREFIX, WORKSPACE_HEADER, UserService
from goldkey.govern.workspaces import Credential
from goldkey.runtime import Goldkey


def get_gk(request: Request) -> Goldkey:
    return request.app.state.gk  # type: ignore[no-any-return]


GK = Annotated[Goldkey, Depends(get_gk)]


def write_key_from_header(auth: str | None) -> str | None:
    """Return the write key from an Authorization header: HTTP Basic with the key as user name
    (as Segment's SDKs send it) or Bearer. Raises Unauthorized for a malformed header."""
    if not auth:
        return None
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed Basic authorization header") from None
        return decoded.split(":", 1)[0]
    if scheme.lower() == "bearer":
        return value.strip()
    raise Unauthorized(f"unsupported authorization scheme {scheme!r}; send the write key as HTTP Basic user")


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="adminToken",
    description="An admin token of the workspace (role admin), or a user's session token (`gks_…`, from "
    "`POST /api/v1/auth/login`) with the workspace named in the `X-Goldkey-Workspace` header (optional when "
    "the user has a role in one workspace only). Each route needs a least role: viewer < analyst < marketer "
    "< admin.",
)

_users_lock = Lock()


def user_service(gk: Goldkey) -> UserService:
    """The instance's user service (``gk.users`` once wired in the runtime; built on first use until then)."""
    svc = getattr(gk, "users", None)
    if svc is None:
        with _users_lock:
            svc = getattr(gk, "users", None)
            if svc is None:
                svc = UserService(gk.engine)
                gk.users = svc  # type: ignore[attr-defined]
    return svc  # type: ignore[no-any-return]


def admin(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Credential:
    """The Caller dependency: authenticate the caller and check their role for this route.

    Accepts an admin token (role ``admin`` of its workspace) or a session token ``gks_…`` with the
    workspace in ``X-Goldkey-Workspace``; the least role the route needs comes from
    ``goldkey.api.roles``. Returns the Credential (workspace_id, kind, key_id, role, user_id).
    Raises Unauthorized (no or unknown credential), Forbidden (no role in the workspace named, or a
    role below the route's), InvalidInput (a user of several workspaces who names none).
    """
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials.strip():
        raise Unauthorized("send an admin token or a session token as 'Authorization: Bearer <token>'")
    token = creds.credentials.strip()
    gk = get_gk(request)
    named = request.headers.get(WORKSPACE_HEADER) or None
    if token.startswith(SESSION_PREFIX):
        cred = user_service(gk).credential(token, named)
    else:
        cred = gk.workspaces.authenticate(token, "admin")
        if named is not None and named != cred.workspace_id:
            raise Forbidden(f"this admin token is not one of workspace {named}")
    route = request.scope.get("route")
    path = getattr(route, "path_format", None) or request.url.path
    need = least_role(request.method, path) or "admin"  # an unclassified route: admins only
    role = cred.role or "viewer"
    if ROLES.index(role) < ROLES.index(need):
        raise Forbidden(f"{request.method} {path} needs the {need} role; you are {role} in workspace "
                        f"{cred.workspace_id}")
    return cred


Admin = Annotated[Credential, Depends(admin)]
Caller = Admin
"""The caller of an admin API route: an admin token or a signed-in user, with the role checked."""


async def json_object(request: Request, what: str = "the definition", *, required: bool = False) -> dict[str, Any]:
    """The request's body as a JSON object, whatever its Content-Type (``curl -d`` sends a form
    type); an empty body is ``{}`` unless ``required``. Bad JSON or another JSON value is a 400
    naming ``body``. The routes whose body is a definition with every field optional read it here."""
    raw = await request.body()
    if not raw.strip() and not required:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}", field="body") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"send {what} as a JSON object", field="body")
    return body
