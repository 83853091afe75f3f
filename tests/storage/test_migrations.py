"""The migrations produce exactly the models, on both engines, and upgrading
an up-to-date database is a no-op."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from storage.migrate import upgrade_async
from storage.models import Base


async def test_models_match_migrations(db_url: str) -> None:
    await upgrade_async(db_url)  # a second upgrade changes nothing
    engine = create_async_engine(db_url)

    def diff(conn: Any) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))

    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == []
