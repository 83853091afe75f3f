"""Alembic environment: runs migrations over the hub's async engine."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from storage.models import Base

target_metadata = Base.metadata

# Every container of the scale layout runs `crm-hub migrate` as it starts; on
# PostgreSQL they queue on this session lock, so one migrates and the others
# then find the schema current (without it, two CREATE TYPEs race and fail).
# Any fixed 64-bit number works; this one is "crm-migr" in ASCII.
MIGRATION_LOCK_KEY = 0x63726D2D6D696772


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    # Read under the lock: `crm-hub migrate` says whether it created, upgraded or found it current.
    context.config.attributes["revision_before"] = context.get_context().get_current_revision()
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            locked = conn.dialect.name == "postgresql"
            if locked:
                await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                # Taking the lock began a transaction; the migrations run in their own.
                await conn.commit()
            await conn.run_sync(_run)
            await conn.commit()
            if locked:
                # After a failure, closing the connection (dispose) releases it.
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_online())
