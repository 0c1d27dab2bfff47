"""Signing in (users and sessions) and the users of a workspace (their roles).

``POST /api/v1/auth/login`` exchanges an e-mail and password for a session token (``gks_…``, 12 h
from its last use); the token is then sent as ``Authorization: Bearer`` with the workspace in
``X-Goldkey-Workspace``. The workspace's users are managed by its admins under
``/api/v1/workspace/users`` (the roles each route needs: ``goldkey.api.roles``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from goldkey.api.deps import GK, Caller, get_gk, user_service
from goldkey.api.schemas import ErrorBody
from goldkey.core.clock import to_iso
from goldkey.core.errors import Unauthorized
from goldkey.govern.audit import actor_of
from goldkey.govern.users import SESSION_PREFIX, SessionUser

router = APIRouter(tags=["auth"])

_session_bearer = HTTPBearer(auto_error=False, scheme_name="sessionToken",
                             description="A user's session token (`gks_…`) from `POST /api/v1/auth/login`.")


def _session(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_session_bearer)]
             ) -> tuple[str, SessionUser]:
    """The caller's session token and what it stands for; raise Unauthorized."""
    token = creds.credentials.strip() if creds is not None and creds.scheme.lower() == "bearer" else ""
    if not token.startswith(SESSION_PREFIX):
        raise Unauthorized("send a session token (gks_…, from POST /api/v1/auth/login) as "
                           "'Authorization: Bearer <token>'")
    return token, user_service(get_gk(request)).authenticate(token)


Session = Annotated[tuple[str, SessionUser], Depends(_session)]


class LoginRequest(BaseModel):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class UserPublic(BaseModel):
    user_id: str
    email: str
    name: str
    created_at: str | None = None
    disabled_at: str | None = None


class Grant(BaseModel):
    workspace_id: str
    name: str = Field(description="The workspace's name.")
    role: str = Field(description="admin | marketer | analyst | viewer")


class LoginResult(BaseModel):
    token: str = Field(description="The session token (gks_…): shown only here; send it as a Bearer token.")
    expires_at: str = Field(description="When it expires unless used: each use moves this 12 hours on.")
    user: UserPublic
    grants: list[Grant]


class Me(BaseModel):
    user: UserPublic
    grants: list[Grant]
    expires_at: str


_ERR: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 429: {"model": ErrorBody}}


@router.post("/api/v1/auth/login", response_model=LoginResult, responses=_ERR)
def login(body: LoginRequest, gk: GK) -> dict[str, Any]:
    """Sign in with e-mail and password; answer a session token and the workspaces the user has a
    role in. 401 for a wrong e-mail or password (the same answer for both); 429 with Retry-After
    after 10 failures for one e-mail within 15 minutes."""
    return user_service(gk).login(body.email, body.password)


@router.post("/api/v1/auth/logout", status_code=204, responses={401: {"model": ErrorBody}})
def logout(session: Session, gk: GK) -> Response:
    """End this session: its token is refused from the next request."""
    user_service(gk).logout(session[0])
    return Response(status_code=204)


@router.get("/api/v1/auth/me", response_model=Me, responses={401: {"model": ErrorBody}})
def me(session: Session, gk: GK) -> dict[str, Any]:
    """The signed-in user, their grants and when the session expires."""
    s = session[1]
    svc = user_service(gk)
    return {"user": svc.get(s.user_id), "grants": svc.grants(s.user_id), "expires_at": to_iso(s.expires_at)}


# --------------------------------------------------------------------------- the workspace's users


class WorkspaceUser(BaseModel):
    """A user of the workspace with their role here."""

    user_id: str
    email: str
    name: str
    role: str = Field(description="admin | marketer | analyst | viewer")
    granted_at: str | None
    granted_by: str
    disabled_at: str | None


class UserInvite(BaseModel):
    email: str = Field(max_length=254)
    name: str = Field("", max_length=200)
    role: str = Field(description="admin | marketer | analyst | viewer")


class UserInvited(WorkspaceUser):
    created: bool = Field(description="True when the user was created by this request.")
    initial_password: str | None = Field(
        description="A created user's initial password: shown only in this answer, never stored.")


class RoleChange(BaseModel):
    role: str = Field(description="admin | marketer | analyst | viewer")


_UERR: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}, 409: {"model": ErrorBody}}


@router.get("/api/v1/workspace/users", response_model=list[WorkspaceUser])
async def list_users(gk: GK, cred: Caller) -> list[dict[str, Any]]:
    """The users with a role in this workspace, by e-mail (admins only)."""
    return await run_in_threadpool(user_service(gk).list_users, cred.workspace_id)


@router.post("/api/v1/workspace/users", response_model=UserInvited, status_code=201, responses=_UERR)
def invite_user(body: UserInvite, gk: GK, cred: Caller) -> dict[str, Any]:
    """Give a user a role in this workspace. A new e-mail creates the user with a random initial
    password, answered only here; an existing user is granted the role (no password then). 409 when
    the user already has a role here."""
    return user_service(gk).invite(cred.workspace_id, body.email, body.name, body.role, actor=actor_of(cred))


@router.put("/api/v1/workspace/users/{user_id}", response_model=WorkspaceUser, responses=_UERR)
def change_role(user_id: str, body: RoleChange, gk: GK, cred: Caller) -> dict[str, Any]:
    """Change the user's role in this workspace. 409 when it would leave the workspace without an admin."""
    svc = user_service(gk)
    svc.member(cred.workspace_id, user_id)  # 404 for a user of another workspace
    return svc.grant(cred.workspace_id, user_id, body.role, actor=actor_of(cred))


@router.delete("/api/v1/workspace/users/{user_id}", status_code=204, responses=_UERR)
def remove_user(user_id: str, gk: GK, cred: Caller) -> Response:
    """Remove the user's role in this workspace (the user keeps their other workspaces). 409 for
    the workspace's last admin."""
    user_service(gk).revoke(cred.workspace_id, user_id, actor=actor_of(cred))
    return Response(status_code=204)
