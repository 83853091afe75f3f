"""Passwords, visitor tokens, the client address behind reverse proxies, and
the throttle on failed logins, in memory and in Redis."""

from __future__ import annotations

import secrets

import pytest

from hub.errors import TooManyRequests
from hub.security import (
    LoginThrottle,
    VisitorTokens,
    client_address,
    hash_password,
    trusted_peer,
    verify_password,
)
from tests.services import REDIS_URL, redis_client


def test_passwords_are_salted_argon2_and_verified() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and first.startswith("$argon2id$")
    assert verify_password(first, "correct horse")
    assert not verify_password(first, "wrong horse")
    assert not verify_password("not a hash", "correct horse")


def test_visitor_tokens_are_signed() -> None:
    tokens = VisitorTokens("secret")
    visitor, token = tokens.issue()
    assert tokens.verify(token) == visitor
    assert VisitorTokens("another secret").verify(token) is None
    assert tokens.verify(token[:-2] + "xx") is None


@pytest.mark.parametrize(
    ("remote", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.9", None, [], "203.0.113.9"),
        # An untrusted peer's header is whatever it chose to write.
        ("203.0.113.9", "10.0.0.1", [], "203.0.113.9"),
        ("10.0.0.2", "198.51.100.7", ["10.0.0.0/8"], "198.51.100.7"),
        # The client wrote a hop of its own in front; the proxy appended the real one.
        ("10.0.0.2", "1.2.3.4, 198.51.100.7", ["10.0.0.0/8"], "198.51.100.7"),
        # Two trusted proxies in a row.
        ("10.0.0.2", "198.51.100.7, 10.0.0.3", ["10.0.0.0/8"], "198.51.100.7"),
        ("10.0.0.2", "", ["10.0.0.0/8"], "10.0.0.2"),
    ],
)
def test_client_address(remote: str, forwarded: str | None, trusted: list[str], expected: str) -> None:
    assert client_address(remote, forwarded, trusted) == expected


def test_trusted_peer_ignores_bad_entries() -> None:
    assert trusted_peer("10.1.2.3", ["not-an-ip", "10.0.0.0/8"])
    assert not trusted_peer("not-an-ip", ["10.0.0.0/8"])
    assert not trusted_peer(None, ["10.0.0.0/8"])


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_failed_logins_are_throttled_per_account_and_address(backend: str) -> None:
    if backend == "memory":
        await _throttled(None)
        return
    async for _ in redis_client():  # fails in CI, skips locally, when Redis is absent
        await _throttled(REDIS_URL)


async def _throttled(url: str | None) -> None:
    # Fresh names per run: Redis keeps the windows between runs.
    run = secrets.token_hex(4)
    who, here, there = f"ana-{run}@example.com", f"2001:db8::{run}", f"2001:db8:1::{run}"
    throttle = LoginThrottle(url, per_account="3/15 minutes", per_address="5/15 minutes")
    for _ in range(3):
        await throttle.check(who, here)
        await throttle.failed(who, here)
    with pytest.raises(TooManyRequests) as refused:
        await throttle.check(who.upper(), here)
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 15 * 60
    # The same account from another address, and another account here, still may try...
    await throttle.check(who, there)
    await throttle.check("bob-" + who, here)
    # ...until the address itself has failed too often.
    await throttle.failed("bob-" + who, here)
    await throttle.failed("cy-" + who, here)
    with pytest.raises(TooManyRequests):
        await throttle.check("dee-" + who, here)
