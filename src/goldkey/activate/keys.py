"""The installation's activation key: encrypts channel credentials and signs tracking tokens.

The key is 32 random bytes in ``<data_dir>/secrets/activation.key`` (mode 0600), created on first
use, so no secret ever sits in the repository or in the operational store in clear text. Channel
credentials are encrypted with Fernet (AES-128-CBC + HMAC-SHA256, the ``cryptography`` library);
tracking tokens (open pixel, click redirect, unsubscribe) are HMAC-SHA256 signed with a sub-key,
so nobody can forge a token for another person's message. Several processes that share one
PostgreSQL store must share this file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken

from goldkey.core.errors import NotFound


def load_or_create_key(data_dir: Path) -> bytes:
    """Return the installation's 32-byte key, creating the key file (0600) when it is missing."""
    path = data_dir / "secrets" / "activation.key"
    if path.exists():
        return base64.urlsafe_b64decode(path.read_bytes().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, base64.urlsafe_b64encode(key))
    finally:
        os.close(fd)
    return key


class Keys:
    """Encryption of channel secrets and signing of tracking tokens with one master key."""

    def __init__(self, master: bytes) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(self._derive(master, b"channel-secrets")))
        self._sign_key = self._derive(master, b"tracking-tokens")

    @staticmethod
    def _derive(master: bytes, label: bytes) -> bytes:
        return hmac.new(master, label, hashlib.sha256).digest()

    # -- channel secrets ---------------------------------------------------------------------
    def encrypt(self, secrets: dict[str, str]) -> str:
        """Return the Fernet token of ``secrets`` (empty string for none)."""
        return self._fernet.encrypt(orjson.dumps(secrets)).decode() if secrets else ""

    def decrypt(self, token: str) -> dict[str, str]:
        """Return the secrets in ``token``; raise ValueError when the key does not match."""
        if not token:
            return {}
        try:
            return orjson.loads(self._fernet.decrypt(token.encode()))  # type: ignore[no-any-return]
        except InvalidToken:
            raise ValueError("channel secrets cannot be decrypted with this installation's key") from None

    # -- tracking tokens -----------------------------------------------------------------------
    def sign(self, kind: str, *parts: Any) -> str:
        """A URL-safe token carrying ``parts`` for one ``kind`` of link (o, c, u, r)."""
        body = base64.urlsafe_b64encode(orjson.dumps([kind, *parts])).rstrip(b"=")
        mac = base64.urlsafe_b64encode(hmac.new(self._sign_key, body, hashlib.sha256).digest()[:16]).rstrip(b"=")
        return (body + b"." + mac).decode()

    def verify(self, kind: str, token: str) -> list[Any]:
        """The parts of a token made by ``sign(kind, ...)``; raise NotFound for anything else
        (a forged, altered or other-kind token looks like a link that does not exist)."""
        body, _, mac = token.encode().partition(b".")
        want = base64.urlsafe_b64encode(hmac.new(self._sign_key, body, hashlib.sha256).digest()[:16]).rstrip(b"=")
        if not body or not hmac.compare_digest(mac, want):
            raise NotFound("unknown link")
        data = orjson.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
        if not isinstance(data, list) or not data or data[0] != kind:
            raise NotFound("unknown link")
        return data[1:]
