"""SQLAlchemy's aiosqlite dialect with one thread hop per statement.

aiosqlite runs every call on its connection's thread, and SQLAlchemy's adapter
makes four calls per statement: open a cursor, execute, fetch the rows, close
the cursor. Each call is a round trip to that thread and back through the
event loop, which waits behind whatever else the loop is doing; on the ingest
path those waits, not SQLite, set the pace. This cursor does the four steps in
one call on the connection's thread. Everything else (connections,
transactions, server-side cursors, error translation) is aiosqlite's dialect
unchanged. Engines get it through the ``sqlite+hubsqlite`` URL that
:func:`storage.db.fast_sqlite_url` makes.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

DRIVER = "hubsqlite"
# How long a connection that failed to open is given to stop its thread.
THREAD_STOP_SECONDS = 5.0

# (description, rows or None, rowcount, lastrowid)
_Outcome = tuple[Any, list[Any] | None, int, int | None]


def _run(conn: aiosqlite.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    """On the connection's thread: the whole statement, start to finish."""
    cursor: sqlite3.Cursor = conn._conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # Unlike the parent, open no driver cursor here: _run opens its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    async def _async_soft_close(self) -> None:
        return None  # the driver cursor is closed already; the rows stay here

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            return await_(self._execute_one_hop(operation, parameters, False))
        except Exception as error:  # noqa: BLE001 -- translated to the DBAPI's errors, as the parent does
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            return await_(self._execute_one_hop(operation, seq_of_parameters, True))
        except Exception as error:  # noqa: BLE001 -- translated to the DBAPI's errors, as the parent does
            self._adapt_connection._handle_exception(error)

    async def _execute_one_hop(self, operation: str, parameters: Any, many: bool) -> None:
        async with self._adapt_connection._execute_mutex:
            description, rows, rowcount, lastrowid = await self._connection._execute(
                _run, self._connection, operation, parameters, many
            )
        self._description = description
        self._rowcount = rowcount
        self._lastrowid = lastrowid
        self._rows = collections.deque(rows) if rows is not None else collections.deque()

    def nextset(self) -> None:
        raise NotImplementedError("SQLite has one result set per statement")

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor  # type: ignore[assignment]  # a subclass; the stub pins the exact type


async def _open(*arg: Any, **kw: Any) -> aiosqlite.Connection:
    conn = aiosqlite.connect(*arg, **kw)
    # As SQLAlchemy's adapter does: the thread never keeps a process alive.
    conn._thread.daemon = True
    try:
        return await conn
    except BaseException:
        # A connection that failed to open (no such folder, no permission) queues
        # its thread's stop without waiting for it. Waiting here, while the loop
        # still runs, keeps the thread from answering a loop that has closed
        # meanwhile: a "Event loop is closed" traceback under a command's error.
        await asyncio.to_thread(conn._thread.join, THREAD_STOP_SECONDS)
        raise


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        kw.setdefault("async_creator_fn", _open)
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


class HubSQLiteDialect(SQLiteDialect_aiosqlite):
    driver = DRIVER
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> OneHopDBAPI:
        return OneHopDBAPI(aiosqlite, sqlite3)


registry.register(f"sqlite.{DRIVER}", __name__, "HubSQLiteDialect")
