"""Dead letters: kept out of the outbox backlog, counted from where they are
kept (so the count survives a restart), listed and requeued with
``crm-hub events dead-letters``, embedded and on Redis."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner, Result
from prometheus_client import REGISTRY
from sqlalchemy import select

from hub import codec
from hub.cli import main
from hub.config import HubConfig, load_config
from hub.relay import DEAD_LETTERED_ACTION, REQUEUED_ACTION, OutboxRelay
from hub.stream.base import Event
from hub.stream.memory import InProcessStream
from hub.stream.redis import RedisStream
from storage.db import Database
from storage.ingest import add_outbox, outbox_row
from storage.models import AuditLog, OutboxRow
from tests import services
from tests.hub.stream.helpers import eventually


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def cli(config: HubConfig, *args: str) -> Result:
    """``crm-hub`` as a user runs it (in a thread: it runs its own event loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, list(args), obj={"config": config})


class Embedded:
    """A relay and an in-process stream on ``db``, with a step that fails on
    the event ``n == 1`` while ``broken``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.broken = True
        self.handled: Counter[int] = Counter()
        self.stream = InProcessStream(max_deliveries=2, retry_delay=0.01)
        self.relay = OutboxRelay(db, self.stream, poll_seconds=0.05, delete_delay=0.01)
        db.outbox_lease_seconds = self.relay.lease_seconds
        db.on_commit = self.relay.committed
        self.stream.on_dead = self.relay.dead_letter
        self.tasks: list[asyncio.Task[None]] = []

    async def handler(self, batch: Sequence[Event]) -> None:
        if self.broken and any(e.payload["n"] == 1 for e in batch):
            raise ValueError("bug in a step")
        self.handled.update(e.payload["n"] for e in batch)

    async def start(self) -> None:
        await self.stream.start()
        self.tasks = [
            asyncio.create_task(self.relay.run()),
            asyncio.create_task(self.stream.consume("workers", "c1", self.handler)),
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.stream.close()


@pytest.fixture
async def config(db_url: str) -> HubConfig:
    return load_config(None, env={}, overrides={"database.url": db_url})


async def parked(db: Database) -> list[tuple[int, str | None]]:
    async with db.read() as session:
        rows = (await session.execute(select(OutboxRow.id, OutboxRow.dead_letter).order_by(OutboxRow.id))).all()
    return [(r.id, r.dead_letter) for r in rows]


async def test_a_dead_letter_leaves_the_backlog_is_counted_listed_and_requeued(db: Database, config: HubConfig) -> None:
    hub = Embedded(db)
    await hub.start()
    try:
        async with db.write() as session:
            await add_outbox(
                session, [outbox_row("message.received", 5, {"n": 1}), outbox_row("message.received", 6, {"n": 2})]
            )
        await eventually(lambda: _parked(db))
        await eventually(lambda: hub.handled[2] == 1)
        [(outbox_id, error)] = await parked(db)
        assert error == "ValueError: bug in a step"
        # Not a backlog: an alert on "backlog > 0" must not fire for ever.
        assert await hub.relay.backlog() == 0
        assert gauge("hub_outbox_backlog") == 0
        assert await hub.relay.dead_letters() == 1
        assert gauge("hub_stream_dead_letters") == 1
    finally:
        await hub.stop()

    # A restart: the count comes from the database, not a process counter.
    hub = Embedded(db)
    hub.broken = False
    assert await hub.relay.dead_letters() == 1
    assert gauge("hub_stream_dead_letters") == 1

    listed = await cli(config, "events", "dead-letters")
    assert listed.exit_code == 0, listed.output
    header, line = listed.output.strip().splitlines()
    assert header.split("\t") == ["ID", "KIND", "KEY", "DELIVERIES", "WHEN", "ERROR"]
    fields = line.split("\t")
    assert fields[:4] == [str(outbox_id), "message.received", "5", "2"]
    assert fields[5] == "ValueError: bug in a step"

    await hub.start()
    try:
        requeued = await cli(config, "events", "dead-letters", "--requeue", str(outbox_id))
        assert requeued.exit_code == 0, requeued.output
        assert requeued.output.strip() == f"requeued {outbox_id}"
        # The running hub's relay finds it and the fixed step handles it, once.
        await eventually(lambda: hub.handled[1] == 1)
        await eventually(lambda: _outbox_empty(db))
        await asyncio.sleep(0.2)
        assert hub.handled == Counter({1: 1})
    finally:
        await hub.stop()
    assert await hub.relay.dead_letters() == 0
    assert gauge("hub_stream_dead_letters") == 0
    async with db.read() as session:
        audit = (
            await session.execute(
                select(AuditLog.action, AuditLog.entity_id, AuditLog.data).where(
                    AuditLog.action.in_([DEAD_LETTERED_ACTION, REQUEUED_ACTION])
                )
            )
        ).all()
    assert [(a.action, a.entity_id) for a in audit] == [
        (DEAD_LETTERED_ACTION, outbox_id),
        (REQUEUED_ACTION, outbox_id),
    ]
    assert audit[0].data["deliveries"] == 2
    assert audit[1].data["error"] == "ValueError: bug in a step"
    assert (await cli(config, "events", "dead-letters")).output.strip() == "no dead letters"


async def _parked(db: Database) -> bool:
    return any(error for _, error in await parked(db))


async def _outbox_empty(db: Database) -> bool:
    return await parked(db) == []


async def test_requeue_all_and_unknown_ids(db: Database, config: HubConfig) -> None:
    async with db.write() as session:
        await add_outbox(session, [outbox_row("message.received", k, {"n": k}) for k in (1, 2, 3)])
    rows = await parked(db)
    ids = [outbox_id for outbox_id, _ in rows]
    relay = OutboxRelay(db, InProcessStream())
    for outbox_id in ids[:2]:
        await relay.dead_letter(Event(key="1", payload={"kind": "message.received"}, outbox_id=outbox_id), "boom")

    missing = await cli(config, "events", "dead-letters", "--requeue", str(ids[2]))
    assert missing.exit_code != 0
    assert f"not a dead letter: {ids[2]}" in missing.output
    assert (await cli(config, "events", "dead-letters", "--requeue")).exit_code != 0
    assert (await cli(config, "events", "dead-letters", str(ids[0]))).exit_code != 0

    everything = await cli(config, "events", "dead-letters", "--requeue-all")
    assert everything.exit_code == 0, everything.output
    assert everything.output.split() == ["requeued", str(ids[0]), "requeued", str(ids[1])]
    assert await parked(db) == [(i, None) for i in ids]
    assert await relay.dead_letters() == 0


@pytest.fixture
async def redis_stream() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    async for client in services.redis_client():
        name = f"test:events-cli:{secrets.token_hex(6)}"
        try:
            yield client, name
        finally:
            await client.delete(name, f"{name}:dead", f"{name}:errors")


@pytest.mark.redis
async def test_redis_dead_letters_are_listed_counted_and_requeued(
    db: Database, db_url: str, redis_stream: tuple[aioredis.Redis, str]
) -> None:
    client, name = redis_stream
    stream = RedisStream(services.REDIS_URL, name, max_deliveries=1, claim_idle_seconds=0.3, block_ms=100)
    await stream.start()
    tries: Counter[int] = Counter()
    broken = True

    async def handler(batch: Sequence[Event]) -> None:
        tries.update(e.payload["n"] for e in batch)
        if broken and any(e.payload["n"] == 1 for e in batch):
            raise ValueError("bug in a step")

    task = asyncio.create_task(stream.consume("workers", "c1", handler))
    relay = OutboxRelay(db, stream)
    config = load_config(
        None, env={}, overrides={"database.url": db_url, "redis.url": services.REDIS_URL, "redis.stream": name}
    )
    try:
        await stream.publish([Event(key="7", payload={"kind": "message.received", "n": 1}, outbox_id=41)])
        await eventually(lambda: _xlen(client, f"{name}:dead", 1))
        assert await relay.dead_letters() == 1
        assert gauge("hub_stream_dead_letters") == 1

        listed = await cli(config, "events", "dead-letters")
        assert listed.exit_code == 0, listed.output
        [line] = listed.output.strip().splitlines()[1:]
        entry_id, kind, key, _deliveries, _when, error = line.split("\t")
        assert (kind, key, error) == ("message.received", "7", "ValueError: bug in a step")

        broken = False
        before = tries[1]
        requeued = await cli(config, "events", "dead-letters", "--requeue", entry_id)
        assert requeued.exit_code == 0, requeued.output
        await eventually(lambda: tries[1] == before + 1)
        await eventually(lambda: _xlen(client, name, 0))
        assert await client.xlen(f"{name}:dead") == 0
        assert await relay.dead_letters() == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stream.close()
    async with db.read() as session:
        data: Any = await session.scalar(select(AuditLog.data).where(AuditLog.action == REQUEUED_ACTION))
    assert data["entry_id"] == entry_id
    assert data["key"] == "7"
    assert codec.loads(codec.dumps(data)) == data


async def _xlen(client: aioredis.Redis, key: str, n: int) -> bool:
    return int(await client.xlen(key)) == n
