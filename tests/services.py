"""Where the tests find PostgreSQL and Redis, and what happens when they are absent.

Locally a missing server skips its tests. In CI (``HUB_REQUIRE_SERVICES=1``, set
by ``.ci/run``) it fails them: a green run must mean they ran.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

POSTGRES_ADMIN_URL = os.environ.get("HUB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRED = os.environ.get("HUB_REQUIRE_SERVICES", "") not in ("", "0", "false")
REPO = Path(__file__).resolve().parent.parent


def unavailable(what: str, error: BaseException) -> None:
    message = f"{what} is not reachable ({type(error).__name__}: {error})"
    if REQUIRED:
        pytest.fail(f"{message}; HUB_REQUIRE_SERVICES is set, so this is a failure", pytrace=False)
    pytest.skip(message)


async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new, empty database for one test; dropped afterwards. Yields an
    SQLAlchemy URL (``postgresql+asyncpg://...``)."""
    name = f"hub_test_{secrets.token_hex(6)}"
    try:
        admin = await asyncio.wait_for(asyncpg.connect(POSTGRES_ADMIN_URL), 5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        unavailable("PostgreSQL", exc)
        raise  # unreachable: unavailable() raises
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(client.ping(), 5)
    except (OSError, aioredis.RedisError, TimeoutError) as exc:
        await client.aclose()
        unavailable("Redis", exc)
    try:
        yield client
    finally:
        await client.aclose()


def shared_data(*parts: str) -> Path:
    """A path under the team's shared test data (``../shared/data`` next to the
    repository, or ``$HUB_SHARED_DATA``). Its licenses keep it out of the
    repository, so tests read it in place; missing, it fails in CI."""
    roots = [REPO.parent / "shared" / "data", Path("/work/shared/data")]  # next to the clone; this workplace's
    if os.environ.get("HUB_SHARED_DATA"):
        roots.insert(0, Path(os.environ["HUB_SHARED_DATA"]))
    for root in roots:
        if root.joinpath(*parts).exists():
            return root.joinpath(*parts)
    path = roots[0].joinpath(*parts)
    unavailable(f"shared test data {path} (set HUB_SHARED_DATA)", FileNotFoundError(str(path)))
    return path
