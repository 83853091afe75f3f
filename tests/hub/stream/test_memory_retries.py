"""The in-process stream retries a failing event off its partition's path: the
partition's other tickets go on while it waits for its backoff, and only the
later events of its own ticket wait behind it."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Sequence

import pytest

from hub.stream.base import Event
from hub.stream.memory import InProcessStream
from tests.hub.stream.helpers import eventually

PARTITIONS = 8
# Long enough that, on a loaded machine, ticket B is handled before A's second
# try; short enough to keep the test quick.
BACKOFF = 3.0


def same_partition_keys() -> tuple[str, str]:
    first = "ticket-1"
    part = zlib.crc32(first.encode()) % PARTITIONS
    other = next(f"ticket-{n}" for n in range(2, 1000) if zlib.crc32(f"ticket-{n}".encode()) % PARTITIONS == part)
    return first, other


A, B = same_partition_keys()


def event(key: str, n: int, *, poison: bool = False) -> Event:
    return Event(key=key, payload={"kind": "message.created", "n": n, "poison": poison}, outbox_id=n)


class World:
    def __init__(self, stream: InProcessStream, *, fail_tries: int) -> None:
        self.stream = stream
        self.fail_tries = fail_tries  # the poison event fails this many tries
        self.log: list[str] = []
        self.dead: list[int] = []
        self.abandoned: list[int] = []

    async def handler(self, batch: Sequence[Event]) -> None:
        if any(e.payload["poison"] for e in batch):
            if len(batch) == 1:
                self.log.append(f"try {batch[0].deliveries} of {batch[0].outbox_id}")
                if batch[0].deliveries > self.fail_tries:
                    self.log.append(f"handled {batch[0].outbox_id}")
                    return
            raise ValueError("poison")
        self.log.extend(f"handled {e.outbox_id}" for e in batch)

    async def on_dead(self, dead: Event, error: str) -> None:
        self.log.append(f"dead {dead.outbox_id} after {dead.deliveries}")
        self.dead.append(dead.outbox_id)

    def on_abandoned(self, ids: Sequence[int]) -> None:
        self.abandoned.extend(ids)


@pytest.fixture
async def stream() -> AsyncIterator[InProcessStream]:
    stream = InProcessStream(partitions=PARTITIONS, max_deliveries=2, retry_delay=BACKOFF)
    await stream.start()
    yield stream
    await stream.close()


async def run(world: World, *, together: bool) -> asyncio.Task[None]:
    world.stream.on_dead = world.on_dead
    world.stream.on_abandoned = world.on_abandoned
    task = asyncio.create_task(world.stream.consume("workers", "c1", world.handler))
    await asyncio.sleep(0)
    events = [event(A, 1, poison=True), event(B, 2), event(A, 3), event(B, 4)]
    if together:  # one batch: it fails as a whole, then goes one by one
        await world.stream.publish(events)
    else:
        for e in events:
            await world.stream.publish([e])
            await asyncio.sleep(0.05)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("together", [False, True], ids=["apart", "one-batch"])
async def test_a_poison_event_holds_up_only_its_own_ticket(stream: InProcessStream, together: bool) -> None:
    world = World(stream, fail_tries=99)
    task = await run(world, together=together)
    try:
        await eventually(lambda: "dead 1 after 2" in world.log, timeout=BACKOFF + 10)
        await eventually(lambda: "handled 3" in world.log)
        await eventually(lambda: stream._in_flight == 0)
    finally:
        await stop(task)
    log = world.log
    # Ticket B went on while A waited for its backoff...
    assert log.index("handled 2") < log.index("try 2 of 1")
    assert log.index("handled 4") < log.index("try 2 of 1")
    # ...and A's later event waited for A's dead letter.
    assert log.index("dead 1 after 2") < log.index("handled 3")
    assert log.count("handled 3") == 1
    assert world.dead == [1]
    assert world.abandoned == []


async def test_a_ticket_s_later_event_waits_for_the_retry_that_succeeds(stream: InProcessStream) -> None:
    world = World(stream, fail_tries=1)
    task = await run(world, together=False)
    try:
        await eventually(lambda: "handled 3" in world.log, timeout=BACKOFF + 10)
        await eventually(lambda: stream._in_flight == 0)
    finally:
        await stop(task)
    log = world.log
    assert log.index("handled 2") < log.index("try 2 of 1")
    assert log.index("try 2 of 1") < log.index("handled 1") < log.index("handled 3")
    assert world.dead == []


async def test_events_waiting_for_a_retry_are_handed_back_when_the_consumer_stops(stream: InProcessStream) -> None:
    world = World(stream, fail_tries=99)
    task = await run(world, together=False)
    await eventually(lambda: "handled 4" in world.log)
    await stop(task)
    # The poison event (waiting for its backoff) and the later event of its
    # ticket (waiting behind it) are published again by the relay.
    assert sorted(world.abandoned) == [1, 3]
    assert stream._in_flight == 0
    assert "try 2 of 1" not in world.log

    # A consumer started again does not run the cancelled retry twice.
    world.log.clear()
    again = asyncio.create_task(stream.consume("workers", "c1", world.handler))
    try:
        await stream.publish([event(A, 5)])
        await eventually(lambda: "handled 5" in world.log)
        await asyncio.sleep(0.2)
    finally:
        await stop(again)
    assert world.log == ["handled 5"]
