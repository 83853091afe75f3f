"""Engines and units of work.

SQLite allows one writer at a time. Rather than letting concurrent transactions
collide ("database is locked", or a deadlock when two readers upgrade), writes go
through one dedicated connection that opens transactions with ``BEGIN IMMEDIATE``;
reads use a pool of their own and never wait for the writer (WAL). On PostgreSQL
both are the same pooled engine: its row locks do the job.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool

from hub import codec
from storage import sqlite_driver

# session.info keys: how long this process leases the outbox rows it writes,
# and the rows a transaction wrote (handed to ``Database.on_commit``).
OUTBOX_LEASE_KEY = "outbox_lease_seconds"
OUTBOX_WRITTEN_KEY = "outbox_written"

# PostgreSQL SQLSTATE classes about the server or the connection, not the
# statement's data: 08 connection exception, 28 invalid authorization,
# 3D invalid catalog name (the database is gone), 40 transaction rollback
# (serialization failure, deadlock: a retry succeeds), 53 insufficient
# resources (disk full, too many connections), 57 operator intervention
# (shutdown, "cannot connect now" while starting), 58 system error (I/O).
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "28", "3D", "40", "53", "57", "58"})

#: Whether a :class:`Database` made in this context may create its SQLite file
#: when it is not there (SQLite does so on connecting). ``crm-hub`` turns it
#: off for its commands: only ``migrate`` makes the file (owner-only, with the
#: schema in it), and a command run before it must fail without leaving an
#: empty database behind with the umask's mode. Tests and tools that set up a
#: scratch database keep the default.
SQLITE_MAY_CREATE: ContextVar[bool] = ContextVar("sqlite_may_create", default=True)


def fast_sqlite_url(url: str) -> str:
    """The same database through :mod:`storage.sqlite_driver`, which saves
    three of the four thread round trips aiosqlite makes per statement."""
    parsed = make_url(url)
    if parsed.drivername != "sqlite+aiosqlite":
        return url
    return parsed.set(drivername=f"sqlite+{sqlite_driver.DRIVER}").render_as_string(hide_password=False)


def _sqlite_engine(url: str, *, writer: bool, echo: bool, create: bool) -> AsyncEngine:
    engine = create_async_engine(
        fast_sqlite_url(url),
        echo=echo,
        json_serializer=codec.dumps,
        json_deserializer=codec.loads,
        poolclass=AsyncAdaptedQueuePool,
        pool_size=1 if writer else 4,
        max_overflow=0,
        pool_timeout=60,
        connect_args={"timeout": 30},
    )
    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"
    database = make_url(url).database
    if not create and database and database != ":memory:" and not database.startswith("file:"):
        # SQLite's own "open, never create": a missing file fails the connection
        # with "unable to open database file".
        readwrite = f"file:{urllib.parse.quote(str(Path(database).absolute()))}?mode=rw"

        @event.listens_for(engine.sync_engine, "do_connect")
        def _no_create(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
            cargs[0] = readwrite
            cparams["uri"] = True

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        _journal_mode_wal(cur)
        # NORMAL under WAL loses nothing when the process dies, only on power loss
        # of the machine; FULL would halve commit throughput for that.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


def _journal_mode_wal(cur: Any) -> None:
    """WAL, as every connection asks. Processes opening the file together
    (web and workers starting at once) can meet another one's WAL recovery,
    which answers "database is locked" at once instead of waiting the busy
    timeout: tried again for a few seconds rather than failing the start."""
    deadline = time.monotonic() + 10
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError, as its adapter raises it
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Database:
    """Owns the engines; created by the composition root, never at import time."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        if self.dialect == "sqlite":
            create = SQLITE_MAY_CREATE.get()
            self.write_engine = _sqlite_engine(url, writer=True, echo=echo, create=create)
            self.read_engine = _sqlite_engine(url, writer=False, echo=echo, create=create)
        else:
            self.write_engine = create_async_engine(
                url,
                echo=echo,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                json_serializer=codec.dumps,
                json_deserializer=codec.loads,
            )
            self.read_engine = self.write_engine
        self._writer = async_sessionmaker(self.write_engine, expire_on_commit=False)
        # Set by a process that runs an outbox relay: outbox rows written through
        # this Database are leased to it and passed to ``on_commit`` after commit.
        self.outbox_lease_seconds: float | None = None
        self.on_commit: Callable[[list[tuple[int, str, dict[str, Any]]]], None] | None = None
        self._reader = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A unit of work: commits when the block ends normally, rolls back on any
        exception, so nothing is ever half-written."""
        async with self._writer() as session:
            if self.outbox_lease_seconds:
                session.info[OUTBOX_LEASE_KEY] = self.outbox_lease_seconds
            async with session.begin():
                yield session
            written = session.info.pop(OUTBOX_WRITTEN_KEY, None)
            if written and self.on_commit is not None:
                self.on_commit(written)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        # Closing (not rolling back) ends the read transaction without expiring
        # what was loaded, so callers can use the objects afterwards.
        async with self._reader() as session:
            yield session

    async def ping(self) -> None:
        async with self.read_engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


def outage(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the database, the network or the disk
    failing rather than from the work in hand (a mail being stored, an event
    being handled): such a failure hits all work alike until it passes (a
    database restart, a lost connection, a full disk), so it says nothing
    against the item and must not bring it closer to a placeholder or a dead
    letter.

    Told by the kind of error, as DB-API and PostgreSQL define the kinds:
    OperationalError and InterfaceError are DB-API's errors of the database's
    operation and of the driver (SQLite's "database is locked" is one);
    SQLAlchemy sets ``connection_invalidated`` on an error it found the
    connection dead after (asyncpg's errors arrive as plain DBAPIError); a
    PostgreSQL SQLSTATE in a class about the server, not the data; the pool's
    TimeoutError; OSError (a refused, reset or timed-out connection, which
    asyncpg lets through unwrapped, or a full or read-only attachment disk:
    file names there are random, never the item's). Errors about the data
    (IntegrityError, SQLSTATE 22 and 23, a parser's ValueError) are the
    item's. Causes and contexts count too: an outage that broke the
    rollback of a failed transaction is still an outage."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        err = pending.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError | sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
            return True
        if isinstance(err, sa_exc.DBAPIError):
            if err.connection_invalidated:
                return True
            if err.orig is not None:
                pending.append(err.orig)  # the driver's error, which has the SQLSTATE
        sqlstate = getattr(err, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES:
            return True
        pending.extend(e for e in (err.__cause__, err.__context__) if e is not None)
    return False
