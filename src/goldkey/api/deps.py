"""Typed dependencies of the API: the running instance and the caller's credential."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from goldkey.core.errors import Unauthorized
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


_bearer = HTTPBearer(auto_error=False, scheme_name="adminToken", description="An admin token of the workspace.")


def admin(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Credential:
    """Authenticate an admin token sent as ``Authorization: Bearer``; raise Unauthorized."""
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials.strip():
        raise Unauthorized("send an admin token as 'Authorization: Bearer <token>'")
    return get_gk(request).workspaces.authenticate(creds.credentials.strip(), "admin")


Admin = Annotated[Credential, Depends(admin)]
