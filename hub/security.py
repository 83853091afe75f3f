"""Passwords, API tokens, web chat visitor tokens, and the throttle on
failed logins."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from collections.abc import Sequence

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeSerializer
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import MovingWindowRateLimiter

from hub.errors import TooManyRequests

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


def trusted_peer(remote: str | None, trusted: Sequence[str]) -> bool:
    """Whether the peer is one of ``server.trusted_proxies`` (addresses or networks)."""
    if not remote or not trusted:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    for entry in trusted:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def client_address(remote: str | None, forwarded_for: str | None, trusted: Sequence[str]) -> str:
    """Who is really asking: behind trusted reverse proxies, the right-most
    X-Forwarded-For hop that is not itself one of them (the left-most hops
    are whatever the client chose to write); otherwise the peer."""
    address = remote or "unknown"
    if not forwarded_for or not trusted_peer(remote, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        address = hop
        if not trusted_peer(hop, trusted):
            break
    return address


class LoginThrottle:
    """Failed logins, counted in a moving window per account and client
    address, and per client address alone: a guesser is slowed to a handful
    of tries per account, while a colleague's typos at the same office
    address do not lock anyone else out. Counts live in Redis when the hub
    has it (every web process sees them), else in the process."""

    def __init__(
        self,
        redis_url: str | None,
        *,
        per_account: str = "10/15 minutes",
        per_address: str = "100/15 minutes",
    ) -> None:
        storage: Storage
        if redis_url:
            uri = redis_url.replace("rediss://", "async+rediss://", 1).replace("redis://", "async+redis://", 1)
            storage = RedisStorage(uri, implementation="redispy", key_prefix="crm-hub-login")
        else:
            storage = MemoryStorage()
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        self._account: RateLimitItem = parse(per_account)
        self._address: RateLimitItem = parse(per_address)

    def _keys(self, email: str, address: str) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
        return [(self._account, ("account", email.strip().lower(), address)), (self._address, ("address", address))]

    async def check(self, email: str, address: str) -> None:
        """Refuse before the password is even checked once the window is full."""
        for item, key in self._keys(email, address):
            if not await self._limiter.test(item, *key):
                stats = await self._limiter.get_window_stats(item, *key)
                raise TooManyRequests(
                    "too many failed logins from this address; try again later",
                    retry_after=stats.reset_time - time.time(),
                )

    async def failed(self, email: str, address: str) -> None:
        for item, key in self._keys(email, address):
            await self._limiter.hit(item, *key)

    async def close(self) -> None:
        if isinstance(self._storage, RedisStorage) and isinstance(self._storage.bridge, RedispyBridge):
            await self._storage.bridge.storage.aclose()
