from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from hub.actions import do_ensure_inbox
from hub.core import Channel
from storage.db import Database
from storage.migrate import upgrade_async
from tests import mailservers, services


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async for url in services.fresh_postgres_database():
        yield url


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    async for client in services.redis_client():
        yield client


@pytest.fixture
def redis_url() -> str:
    return services.REDIS_URL


@pytest.fixture
def smtp() -> Iterator[mailservers.SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free local port, keeping what it receives."""
    server = mailservers.SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated, empty database: the same storage tests run on both engines."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
        await upgrade_async(url)
        yield url
    else:
        async for url in services.fresh_postgres_database():
            await upgrade_async(url)
            yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """Config overrides for a whole hub on the default SQLite file, or on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield {}
    else:
        async for url in services.fresh_postgres_database():
            yield {"database.url": url}


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    async with database.write() as session:
        await do_ensure_inbox(session, key="webchat", channel=Channel.WEBCHAT, name="Website")
        await do_ensure_inbox(session, key="sms:+15550001111", channel=Channel.SMS, name="SMS")
    try:
        yield database
    finally:
        await database.dispose()
