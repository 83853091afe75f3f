"""Passwords, visitor tokens, the client address behind reverse proxies, and
the throttle on failed logins, in memory and in Redis."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from limits import RateLimitItemPerMinute

from hub.errors import TooManyRequests
from hub.security import (
    LocalWindows,
    LoginThrottle,
    VisitorTokens,
    client_address,
    hash_password,
    throttle_prefix,
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


async def _on(backend: str) -> AsyncIterator[str | None]:
    """The throttle's Redis URL for ``backend`` (None: counts in memory)."""
    if backend == "memory":
        yield None
        return
    async for _ in redis_client():  # fails in CI, skips locally, when Redis is absent
        yield REDIS_URL


async def _fail(throttle: LoginThrottle, who: str, where: str) -> None:
    async with throttle.attempt(who, where) as attempt:
        await attempt.failed()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_failed_logins_are_throttled_per_account_and_address(backend: str) -> None:
    async for url in _on(backend):
        await _throttled(url)


async def _throttled(url: str | None) -> None:
    # Fresh names per run: Redis keeps the windows between runs.
    run = secrets.token_hex(4)
    who, here, there = f"ana-{run}@example.com", f"2001:db8::{run}", f"2001:db8:1::{run}"
    throttle = LoginThrottle(url, per_account="3/15 minutes", per_address="5/15 minutes")
    try:
        for _ in range(3):
            await _fail(throttle, who, here)
        with pytest.raises(TooManyRequests) as refused:
            async with throttle.attempt(who.upper(), here):
                pass
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 15 * 60
        # The same account from another address, and another account here, still may try...
        async with throttle.attempt(who, there):
            pass
        async with throttle.attempt("bob-" + who, here):
            pass
        # ...until the address itself has failed too often.
        await _fail(throttle, "bob-" + who, here)
        await _fail(throttle, "cy-" + who, here)
        with pytest.raises(TooManyRequests):
            async with throttle.attempt("dee-" + who, here):
                pass
    finally:
        await throttle.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_tries_in_flight_count_against_the_limit(backend: str) -> None:
    """Guesses sent in parallel: only as many are checked at once as the
    window has room for, and those that fail fill it."""
    async for url in _on(backend):
        await _parallel(url)


async def _parallel(url: str | None) -> None:
    run = secrets.token_hex(4)
    who, here = f"ana-{run}@example.com", f"2001:db8::{run}"
    throttle = LoginThrottle(url, per_account="3/15 minutes", per_address="100/15 minutes")
    release = asyncio.Event()
    entered: list[int] = []

    async def guess(i: int) -> str:
        try:
            async with throttle.attempt(who, here) as attempt:
                entered.append(i)
                await release.wait()  # the slow password check
                await attempt.failed()
        except TooManyRequests:
            return "refused"
        return "checked"

    try:
        tasks = [asyncio.create_task(guess(i)) for i in range(10)]
        async with asyncio.timeout(30):  # a hang fails the test rather than the run
            # Until every guess is either checking its password or refused.
            while len(entered) + sum(t.done() for t in tasks) < 10:
                await asyncio.sleep(0.01)
        assert len(entered) == 3
        release.set()
        assert sorted(await asyncio.gather(*tasks)) == ["checked"] * 3 + ["refused"] * 7
        with pytest.raises(TooManyRequests):
            async with throttle.attempt(who, here):
                pass
    finally:
        release.set()
        await throttle.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_login_that_succeeds_is_not_counted(backend: str) -> None:
    async for url in _on(backend):
        run = secrets.token_hex(4)
        who, here = f"ana-{run}@example.com", f"2001:db8::{run}"
        throttle = LoginThrottle(url, per_account="3/15 minutes", per_address="100/15 minutes")
        try:
            await _fail(throttle, who, here)
            await _fail(throttle, who, here)
            for _ in range(5):  # right passwords: the try is given back
                async with throttle.attempt(who, here):
                    pass
            # A refused try is given back too: it counts neither as a failure nor in flight.
            await _fail(throttle, who, here)
            for _ in range(3):
                with pytest.raises(TooManyRequests):
                    async with throttle.attempt(who, here):
                        pass
        finally:
            await throttle.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_many_uses_counted_at_once_all_get_an_answer(backend: str) -> None:
    # The web chat counts every visitor frame: under load hundreds are counted
    # at the same moment. redis-py's default pool refused the 101st with
    # "Too many connections", which reached the visitor as an internal error.
    async for url in _on(backend):
        run = secrets.token_hex(4)
        throttle = LoginThrottle(url)
        item = RateLimitItemPerMinute(1)
        try:
            waits = await asyncio.gather(*(throttle.over_limit(item, "test", run, str(i % 300)) for i in range(600)))
            # Each of the 300 keys allowed once, then refused with a wait.
            assert sum(w is None for w in waits) == 300
            # Sliding windows: a use refused now has room within two minutes.
            assert all(w is None or 1.0 <= w <= 120.0 for w in waits)
        finally:
            await throttle.close()


def test_local_windows_slide_over_the_previous_minute() -> None:
    windows = LocalWindows()
    item = RateLimitItemPerMinute(10)
    start = 600.0  # the start of a minute
    assert all(windows.hit(item, "v", now=start + i) is None for i in range(10))
    # The eleventh in the same minute waits for this one to end and weigh 9/10 in the next.
    assert windows.hit(item, "v", now=start + 30) == pytest.approx(30 + 6)
    assert windows.hit(item, "other", now=start + 30) is None  # keys count apart
    # Halfway into the next minute the last one weighs half (5 uses): 5 more fit.
    assert all(windows.hit(item, "v", now=start + 90 + i / 10) is None for i in range(5))
    wait = windows.hit(item, "v", now=start + 90.5)
    assert wait is not None and wait > 0
    # Two minutes on, nothing counts any more, and stale keys are dropped.
    assert windows.hit(item, "v", now=start + 240) is None
    assert len(windows) == 1


def test_local_windows_refuse_without_counting() -> None:
    windows = LocalWindows()
    item = RateLimitItemPerMinute(1)
    assert windows.hit(item, "v", now=60.0) is None
    for _ in range(5):
        assert windows.hit(item, "v", now=61.0) is not None
    # In the next minute the one use weighs until the minute is over.
    assert windows.hit(item, "v", now=125.0) is not None
    assert windows.hit(item, "v", now=180.0) is None


async def test_hubs_sharing_one_redis_count_apart() -> None:
    # Two deployments on one Redis (each with its own redis.stream): one's
    # failed logins and web chat visitors must not use up the other's limits.
    async for url in _on("redis"):
        assert url is not None
        run = secrets.token_hex(4)
        who, here = f"ana-{run}@example.com", f"2001:db8::{run}"
        ours = LoginThrottle(url, per_account="2/15 minutes", key_prefix=throttle_prefix(f"a-{run}:events"))
        theirs = LoginThrottle(url, per_account="2/15 minutes", key_prefix=throttle_prefix(f"b-{run}:events"))
        ours_too = LoginThrottle(url, per_account="2/15 minutes", key_prefix=throttle_prefix(f"a-{run}:events"))
        try:
            await _fail(ours, who, here)
            await _fail(ours, who, here)
            with pytest.raises(TooManyRequests):
                async with ours_too.attempt(who, here):  # another web process of the same hub
                    pass
            async with theirs.attempt(who, here):
                pass
            item = RateLimitItemPerMinute(1)
            assert await ours.over_limit(item, "webchat", "new", here) is None
            assert await theirs.over_limit(item, "webchat", "new", here) is None
            assert await ours_too.over_limit(item, "webchat", "new", here) is not None
        finally:
            for throttle in (ours, theirs, ours_too):
                await throttle.close()
