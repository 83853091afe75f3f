"""The one-hop SQLite cursor must behave like aiosqlite's for everything
SQLAlchemy asks of a cursor: rows, rowcount, lastrowid, executemany, errors,
streamed results, and transactions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import CursorResult, Integer, String, column, insert, select, table, text, update
from sqlalchemy.exc import IntegrityError

from storage import sqlite_driver
from storage.db import Database, fast_sqlite_url

items = table("items", column("id", Integer), column("name", String))


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with db.write() as s:
        await s.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)"))
    yield db
    await db.dispose()


def test_only_aiosqlite_urls_are_rewritten() -> None:
    assert fast_sqlite_url("sqlite+aiosqlite:////tmp/x.db") == f"sqlite+{sqlite_driver.DRIVER}:////tmp/x.db"
    pg = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    assert fast_sqlite_url(pg) == pg


async def test_engines_use_the_one_hop_cursor(sqlite_db: Database) -> None:
    assert sqlite_db.write_engine.dialect.driver == sqlite_driver.DRIVER
    assert sqlite_db.read_engine.dialect.driver == sqlite_driver.DRIVER
    async with sqlite_db.write_engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert type(raw.dbapi_connection).__name__ == "OneHopConnection"


async def test_rows_rowcount_lastrowid_and_executemany(sqlite_db: Database) -> None:
    async with sqlite_db.write() as s:
        res = cast(CursorResult[Any], await s.execute(insert(items).values(name="a")))
        assert res.lastrowid == 1
        await s.execute(insert(items), [{"name": "b"}, {"name": "c"}, {"name": "d"}])
        returned = (await s.execute(insert(items).values(name="e").returning(items.c.id, items.c.name))).all()
        assert [tuple(r) for r in returned] == [(5, "e")]
        renamed = update(items).where(items.c.name.in_(["b", "c"])).values(name=items.c.name + "!")
        changed = cast(CursorResult[Any], await s.execute(renamed))
        assert changed.rowcount == 2
    async with sqlite_db.read() as s:
        names = (await s.scalars(select(items.c.name).order_by(items.c.id))).all()
        assert names == ["a", "b!", "c!", "d", "e"]
        first = (await s.execute(select(items.c.id).order_by(items.c.id))).first()
        assert first is not None and first.id == 1
        streamed = [r.name async for r in await s.stream(select(items.c.name).order_by(items.c.id))]
        assert streamed == names


async def test_errors_are_translated_and_roll_the_transaction_back(sqlite_db: Database) -> None:
    async def insert_twice() -> None:
        async with sqlite_db.write() as s:
            await s.execute(insert(items).values(name="x"))
            await s.execute(insert(items).values(name="x"))

    with pytest.raises(IntegrityError, match="UNIQUE"):
        await insert_twice()
    async with sqlite_db.read() as s:
        assert (await s.scalars(select(items.c.name))).all() == []
    # The connection is still usable after the error.
    async with sqlite_db.write() as s:
        await s.execute(insert(items).values(name="x"))
    async with sqlite_db.read() as s:
        assert (await s.scalars(select(items.c.name))).all() == ["x"]
