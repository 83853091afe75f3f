"""The outbox relay in front of a durable stream (Redis) that goes away: what
is committed meanwhile waits in the database rather than in memory, and once
the stream is back every event is published once, though another process's
relay polls the same outbox."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from sqlalchemy import func, select

from hub.relay import OutboxRelay
from hub.stream.base import Event, EventHandler, Stream
from storage.db import Database
from storage.ingest import add_outbox, outbox_row
from storage.models import OutboxRow
from tests.hub.stream.helpers import eventually


class FlakyRedis(Stream):
    """A durable stream that refuses everything while ``down``."""

    durable = True

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        # By the row's own number: SQLite gives the id of a deleted last row
        # to the next one.
        self.published: Counter[int] = Counter()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("Redis is down")

    async def ping(self) -> None:
        self._check()

    async def backlog(self) -> int:
        self._check()
        return 0

    async def publish(self, events: Sequence[Event]) -> None:
        self._check()
        self.published.update(e.payload["n"] for e in events)

    async def consume(self, group: str, consumer: str, handler: EventHandler) -> None:
        await asyncio.Event().wait()


def relay_of(db: Database, stream: Stream) -> OutboxRelay:
    return OutboxRelay(db, stream, lease_seconds=1.0, poll_seconds=0.05, max_in_flight=50, delete_delay=0.01)


async def outbox_rows(db: Database) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(OutboxRow)) or 0)


async def test_events_committed_while_redis_is_down_wait_in_the_database_and_go_out_once(db: Database) -> None:
    stream = FlakyRedis()
    relay = relay_of(db, stream)
    other = relay_of(db, stream)  # another process's: it only polls
    db.outbox_lease_seconds = relay.lease_seconds
    db.on_commit = relay.committed
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(other.run())]
    try:
        async with db.write() as session:  # published at once: Redis is up
            await add_outbox(session, [outbox_row("message.received", 1, {"n": 0})])
        await eventually(lambda: sum(stream.published.values()) == 1)

        stream.down = True
        for batch in range(20):
            async with db.write() as session:
                rows = [outbox_row("message.received", t, {"n": 1 + batch * 10 + t}) for t in range(10)]
                await add_outbox(session, rows)
            await asyncio.sleep(0.01)
        # Longer than the leases of the rows it wrote: had the relay kept them
        # (in memory, without bound), the other's poller would take them too.
        await asyncio.sleep(1.5)
        assert len(relay._direct) <= relay.max_in_flight
        assert sum(stream.published.values()) == 1

        stream.down = False
        await eventually(lambda: sum(stream.published.values()) >= 201)
        await eventually(lambda: _no_rows(db))
        await asyncio.sleep(0.3)  # nothing is published a second time afterwards
        assert stream.published == Counter(range(201))
        assert relay._direct == []
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        db.on_commit = None
        db.outbox_lease_seconds = None


async def _no_rows(db: Database) -> bool:
    return await outbox_rows(db) == 0
