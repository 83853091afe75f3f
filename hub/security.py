"""Passwords, API tokens, web chat visitor tokens, and the throttle on
failed logins."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeSerializer
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from hub.errors import TooManyRequests

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

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


class LocalWindows:
    """Sliding-window counters kept in this process, with the approximation
    limits' sliding window counter makes in Redis: a use is allowed while the
    uses of the current fixed window, plus those of the previous one weighted
    by how much of it the sliding window still covers, stay within the limit.

    Not limits' asyncio MemoryStorage: after every use it sweeps all its keys
    (with a thread hop for each moving-window key), which cost the web chat a
    tenth of its throughput under load and grows with the number of visitors.
    Here stale keys go at most once a minute, in one pass."""

    PRUNE_SECONDS = 60.0

    def __init__(self) -> None:
        #: name -> (period in seconds, index of its current window, uses in it, uses in the one before)
        self._windows: dict[str, tuple[int, int, int, int]] = {}
        self._pruned = 0.0

    def hit(self, item: RateLimitItem, key: str, *, now: float | None = None) -> float | None:
        """Count one use; None when allowed, else the seconds until there is room."""
        now = time.time() if now is None else now
        period = item.get_expiry()
        index = int(now // period)
        name = f"{item.amount}/{period}/{key}"
        _, start, current, previous = self._windows.get(name, (period, index, 0, 0))
        if start != index:
            previous, current = (current if start == index - 1 else 0), 0
        elapsed = now - index * period
        limit = item.amount
        if current >= limit:
            # Room once this window is over and it weighs little enough in the next.
            wait = period - elapsed + period * (1 - (limit - 1) / current)
        elif previous * (1 - elapsed / period) + current + 1 > limit:
            # Room once the previous window weighs (limit - current - 1) / previous.
            wait = period * (1 - (limit - current - 1) / previous) - elapsed
        else:
            self._windows[name] = (period, index, current + 1, previous)
            self._prune(now)
            return None
        self._windows[name] = (period, index, current, previous)
        return max(wait, 1.0)

    def _prune(self, now: float) -> None:
        if now - self._pruned < self.PRUNE_SECONDS:
            return
        self._pruned = now
        # A key whose last use is two windows back counts nothing any more.
        self._windows = {n: w for n, w in self._windows.items() if int(now // w[0]) - w[1] <= 1}

    def __len__(self) -> int:
        return len(self._windows)


class LoginThrottle:
    """Failed logins, counted in a moving window per account and client
    address, and per client address alone: a guesser is slowed to a handful
    of tries per account, while a colleague's typos at the same office
    address do not lock anyone else out. Counts live in Redis when the hub
    has it (every web process sees them), else in the process.

    A try is counted before its password is checked, not after: the check
    (Argon2) is slow, so guesses sent in parallel would all be checked before
    the first of them was counted. While it is checked, a try is *in flight*
    (kept apart from the failures, so a login that succeeds leaves nothing
    behind); a try is refused when the failures in the window plus the tries
    in flight, itself included, exceed the limit. In Redis the tries in
    flight are a sorted set per key, each try a member that lapses after
    ``IN_FLIGHT_SECONDS`` should its process die before taking it back."""

    IN_FLIGHT_SECONDS = 60.0
    MAX_CONNECTIONS = 50

    def __init__(
        self,
        redis_url: str | None,
        *,
        per_account: str = "10/15 minutes",
        per_address: str = "100/15 minutes",
        key_prefix: str = "crm-hub-login",
    ) -> None:
        """``key_prefix``: where its counts live in Redis; hubs sharing one Redis
        give each their own (see :func:`throttle_prefix`), or one hub's failed
        logins and web chat visitors would count against another's."""
        storage: Storage
        self._prefix = key_prefix
        self._redis: aioredis.Redis | None = None
        if redis_url:
            # Imported here: redis (and the tracing it pulls in) costs every
            # command that imports this module 20 MB, and only scale mode needs it.
            import redis.asyncio as aioredis

            # The web chat counts every visitor frame here (hub.web.chat), hundreds
            # at once under load: a blocking pool makes them wait for one of a
            # bounded set of connections, where redis-py's default pool fails
            # with "Too many connections" past 100.
            pool = aioredis.BlockingConnectionPool.from_url(
                redis_url,
                max_connections=self.MAX_CONNECTIONS,
                timeout=10,
                socket_timeout=5.0,
                socket_connect_timeout=5.0,
            )
            uri = redis_url.replace("rediss://", "async+rediss://", 1).replace("redis://", "async+redis://", 1)
            # limits documents connection_pool but types its options as scalars.
            storage = RedisStorage(
                uri,
                implementation="redispy",
                key_prefix=key_prefix,
                connection_pool=pool,  # type: ignore[arg-type]
            )
            self._redis = aioredis.Redis(connection_pool=pool)
        else:
            storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        # Uses other than logins (web chat frames, uploads): a sliding window
        # counter, O(1) per use where a moving window keeps every use.
        self._counter = SlidingWindowCounterRateLimiter(storage) if redis_url else None
        self._local = LocalWindows()
        self._account: RateLimitItem = parse(per_account)
        self._address: RateLimitItem = parse(per_address)
        #: Tries in flight per key, when the counts live in this process.
        self._in_flight: dict[str, int] = {}

    def _keys(self, email: str, address: str) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
        return [(self._account, ("account", email.strip().lower(), address)), (self._address, ("address", address))]

    @contextlib.asynccontextmanager
    async def attempt(self, email: str, address: str) -> AsyncIterator[LoginAttempt]:
        """One login try, counted for as long as the block runs: refused
        (:class:`TooManyRequests`) on entry when the window is full; call
        :meth:`LoginAttempt.failed` in the block when the password was wrong."""
        keys = self._keys(email, address)
        token = secrets.token_hex(8)
        held: list[str] = []
        try:
            refused_for: float | None = None
            for item, key in keys:
                name = "/".join(key)
                in_flight = await self._take(name, token)
                held.append(name)
                stats = await self._limiter.get_window_stats(item, *key)
                failures = item.amount - stats.remaining
                if failures + in_flight > item.amount:
                    # A full window frees up when its oldest failure lapses;
                    # tries in flight are over in about a second.
                    wait = stats.reset_time - time.time() if failures >= item.amount else 1.0
                    refused_for = max(refused_for or 0.0, wait)
            if refused_for is not None:
                raise TooManyRequests(
                    "too many failed logins from this address; try again later", retry_after=refused_for
                )
            yield LoginAttempt(self._limiter, keys)
        finally:
            await self._give_back(held, token)

    async def over_limit(self, item: RateLimitItem, *key: str, here: bool = False) -> float | None:
        """Count one use of ``key`` against ``item`` in a sliding window (in
        Redis when the hub has it, so every web process counts together;
        ``here``: in this process only, for counts on a hot path that one
        process sees); None when it is allowed, else the seconds until the
        window has room. A refused use is not counted. Callers namespace
        ``key`` so that it never meets a login's."""
        if self._counter is None or here:
            return self._local.hit(item, "/".join(key))
        if await self._counter.hit(item, *key):
            return None
        stats = await self._counter.get_window_stats(item, *key)
        return max(stats.reset_time - time.time(), 1.0)

    async def _take(self, name: str, token: str) -> int:
        """Count a try in flight under ``name``; how many are now, itself included."""
        if self._redis is None:
            self._in_flight[name] = self._in_flight.get(name, 0) + 1
            return self._in_flight[name]
        now = time.time()
        key = f"{self._prefix}:in-flight:{name}"
        # One transaction: no other try can count in between.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {token: now + self.IN_FLIGHT_SECONDS})
            pipe.zcard(key)
            pipe.expire(key, math.ceil(self.IN_FLIGHT_SECONDS) + 1)
            _, _, count, _ = await pipe.execute()
        return int(count)

    async def _give_back(self, names: list[str], token: str) -> None:
        """The try is over: no longer in flight under any of ``names``."""
        if self._redis is None:
            for name in names:
                left = self._in_flight.get(name, 0) - 1
                if left > 0:
                    self._in_flight[name] = left
                else:
                    self._in_flight.pop(name, None)
            return
        if not names:
            return
        redis = self._redis

        async def remove() -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zrem(f"{self._prefix}:in-flight:{name}", token)
                await pipe.execute()

        try:
            # Shielded: a request cancelled here must still give its try back.
            await asyncio.shield(remove())
        except Exception:
            # It lapses by itself after IN_FLIGHT_SECONDS.
            log.warning("could not take back a login try in flight", exc_info=True)

    async def close(self) -> None:
        if self._redis is not None:
            # The limiter's client shares this pool; closing it closes both.
            await self._redis.connection_pool.disconnect()
            await self._redis.aclose()


def throttle_prefix(stream: str) -> str:
    """The throttle's Redis key prefix for a hub whose event stream is
    ``stream`` (``redis.stream``, which hubs sharing one Redis already keep
    apart)."""
    return f"{stream}:limits"


class LoginAttempt:
    """A login try in flight (:meth:`LoginThrottle.attempt`)."""

    def __init__(self, limiter: MovingWindowRateLimiter, keys: list[tuple[RateLimitItem, tuple[str, ...]]]) -> None:
        self._limiter = limiter
        self._keys = keys

    async def failed(self) -> None:
        """The password was wrong: a failure in every window. Called inside
        the block, so it is recorded before the try stops being in flight:
        at no moment does the try count as neither."""
        for item, key in self._keys:
            await self._limiter.hit(item, *key)
