"""Passwords, API tokens and web chat visitor tokens."""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeSerializer

_hasher = PasswordHasher()

MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_api_token() -> tuple[str, str]:
    """A random bearer token and the digest we store of it. Tokens carry 256
    bits of randomness, so a fast hash is enough (no need for a slow KDF)."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class VisitorTokens:
    """Signed tokens naming a web chat visitor. The visitor id inside is random;
    the signature stops anyone from guessing their way into another visitor's
    conversation."""

    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeSerializer(secret_key, salt="webchat-visitor")

    def issue(self, visitor_id: str | None = None) -> tuple[str, str]:
        visitor_id = visitor_id or secrets.token_hex(16)
        return visitor_id, self._serializer.dumps({"v": visitor_id})

    def verify(self, token: str) -> str | None:
        try:
            data = self._serializer.loads(token)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("v"), str):
            return None
        return str(data["v"])
