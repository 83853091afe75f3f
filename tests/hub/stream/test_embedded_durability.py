"""The embedded stream and the outbox relay together, on a real database: what
the hub was told is saved outlives a database outage, a failed dead-letter
write, a backlog longer than a lease, and ingest faster than the workers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.core import utcnow
from hub.relay import OutboxRelay
from hub.stream.base import Event, EventHandler
from hub.stream.memory import InProcessStream
from storage.db import Database
from storage.ingest import add_outbox, outbox_row
from storage.models import OutboxRow
from tests.hub.stream.helpers import db_down, eventually


class Embedded:
    """A relay and an in-process stream wired as ``build_hub`` wires them."""

    def __init__(self, db: Database, stream: InProcessStream, relay: OutboxRelay) -> None:
        self.db = db
        self.stream = stream
        self.relay = relay
        self.tasks: list[asyncio.Task[None]] = []

    def consume(self, handler: EventHandler) -> asyncio.Task[None]:
        task = asyncio.create_task(self.stream.consume("workers", "w1", handler))
        self.tasks.append(task)
        return task

    def run_relay(self) -> None:
        self.tasks.append(asyncio.create_task(self.relay.run()))

    async def write(self, tickets: Sequence[int]) -> None:
        """Outbox rows committed by this process (published directly)."""
        async with self.db.write() as session:
            await add_outbox(session, [outbox_row("message.received", t, {}) for t in tickets])

    async def outbox(self, *, leased: bool | None = None) -> int:
        stmt = select(func.count()).select_from(OutboxRow)
        if leased is not None:
            stmt = stmt.where(OutboxRow.lease_until.is_not(None) if leased else OutboxRow.lease_until.is_(None))
        async with self.db.read() as session:
            return int(await session.scalar(stmt) or 0)

    async def outbox_empty(self) -> bool:
        return await self.outbox() == 0


@contextlib.asynccontextmanager
async def embedded(db: Database, stream: InProcessStream, **options: Any) -> AsyncIterator[Embedded]:
    relay = OutboxRelay(db, stream, poll_seconds=0.05, **options)
    db.outbox_lease_seconds = relay.lease_seconds
    db.on_commit = relay.committed
    stream.on_dead = relay.dead_letter
    await stream.start()
    hub = Embedded(db, stream, relay)
    try:
        yield hub
    finally:
        for task in hub.tasks:
            task.cancel()
        await asyncio.gather(*hub.tasks, return_exceptions=True)
        await stream.close()
        db.on_commit = None
        db.outbox_lease_seconds = None


async def test_a_dead_letter_that_cannot_be_written_is_retried_and_the_consumer_lives_on(db: Database) -> None:
    """The handlers fail, and so does parking the event (the database is down):
    the consumer keeps running, and the event, still in the outbox, is handled
    once the database is back."""
    stream = InProcessStream(max_deliveries=2, retry_delay=0.01)
    down = True
    handled: Counter[str] = Counter()  # by ticket: SQLite may give a deleted row's id to the next
    dead_tries = 0

    async def handler(batch: Sequence[Event]) -> None:
        if down:
            raise ValueError("half-written state")  # the event's own failure: counted
        handled.update(e.key for e in batch)

    async with embedded(db, stream) as hub:
        park = hub.relay.dead_letter

        async def dead_letter(event: Event, error: str) -> None:
            nonlocal dead_tries, down
            dead_tries += 1
            if dead_tries == 1:
                down = False  # it comes back right after this failed write
                raise db_down()
            await park(event, error)

        stream.on_dead = dead_letter
        consumer = hub.consume(handler)
        hub.run_relay()
        await hub.write([7])

        await eventually(lambda: bool(handled))
        await eventually(hub.outbox_empty)
        assert not consumer.done()
        assert dead_tries == 1
        assert handled == Counter({"7": 1})
        async with db.read() as session:
            assert await session.scalar(select(func.count()).select_from(OutboxRow)) == 0

        # And the consumer still handles what comes next.
        await hub.write([8])
        await eventually(lambda: len(handled) == 2)
        await eventually(hub.outbox_empty)
        assert handled == Counter({"7": 1, "8": 1})


async def test_polled_rows_are_leased_for_as_long_as_they_may_wait_in_memory(db: Database) -> None:
    async with db.write() as session:  # written without a relay (the CLI, or before a crash)
        await add_outbox(session, [outbox_row("message.received", 1, {})])
    stream = InProcessStream()
    async with embedded(db, stream, lease_seconds=30.0) as hub:
        assert await hub.relay.publish_once() == 1
        async with db.read() as session:
            lease_until = await session.scalar(select(OutboxRow.lease_until))
        # As long as the rows this process writes: a backlog may take minutes.
        assert hub.relay.lease_seconds > 30.0
        assert lease_until is not None
        assert lease_until > utcnow() + timedelta(seconds=hub.relay.lease_seconds - 60)


async def test_a_backlog_outlasting_the_lease_is_handled_once_per_event(db: Database) -> None:
    # Rows left from before a start: all found by polling.
    async with db.write() as session:
        await add_outbox(session, [outbox_row("message.received", t, {}) for t in range(1, 21)])
    stream = InProcessStream(partitions=1)
    seen: Counter[int] = Counter()
    gate = asyncio.Event()

    async def handler(batch: Sequence[Event]) -> None:
        await gate.wait()
        seen.update(e.outbox_id for e in batch)

    async with embedded(db, stream, lease_seconds=0.05) as hub:
        # Far shorter than the backlog takes to drain (600 s in production).
        hub.relay.memory_lease_seconds = 0.05
        hub.consume(handler)
        hub.run_relay()
        await eventually(lambda: _backlog_is(stream, 20))
        # Several polls find every lease lapsed while the events still wait.
        polled = 0
        while polled < 3:
            polled += await hub.relay.publish_once() > 0
            await asyncio.sleep(0.06)
        gate.set()
        await eventually(hub.outbox_empty)
        await eventually(lambda: _backlog_is(stream, 0))
        assert len(seen) == 20
        assert set(seen.values()) == {1}


async def _backlog_is(stream: InProcessStream, n: int) -> bool:
    return await stream.backlog() == n


async def test_direct_publishing_stops_at_max_in_flight_and_the_poller_catches_up_in_order(db: Database) -> None:
    stream = InProcessStream(partitions=1)
    order: list[int] = []  # by ticket, each row its own, numbered in commit order
    gate = asyncio.Event()

    async def handler(batch: Sequence[Event]) -> None:
        await gate.wait()
        order.extend(int(e.key) for e in batch)

    async with embedded(db, stream, max_in_flight=5, batch=1) as hub:
        hub.consume(handler)
        hub.run_relay()
        for ticket in range(1, 21):
            await hub.write([ticket])

        # Five wait in memory; the rest are left in the database, due.
        await eventually(lambda: _backlog_is(stream, 5))
        await eventually(lambda: _outbox_leased(hub, 5))
        assert await hub.outbox() == 20
        assert await stream.backlog() == 5

        gate.set()
        # More while the backlog drains: they must not overtake older ones.
        for ticket in range(21, 31):
            await hub.write([ticket])
        await eventually(hub.outbox_empty)
        await eventually(lambda: len(order) == 30)
        # One partition: every event once, in the order it was committed.
        assert order == list(range(1, 31))


async def _outbox_leased(hub: Embedded, n: int) -> bool:
    return await hub.outbox(leased=True) == n


@pytest.fixture(autouse=True)
def _quiet_stream_logs(caplog: pytest.LogCaptureFixture) -> None:
    # The failures above are wanted; their warnings would only clutter a failure report.
    caplog.set_level("CRITICAL", logger="hub.stream.memory")
