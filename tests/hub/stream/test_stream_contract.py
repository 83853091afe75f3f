"""What every ``Stream`` and ``LiveBus`` must do, checked against both the
in-process implementation and the Redis one (which needs the Redis server)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from hub.stream.base import Event, EventHandler, LiveBus, Stream
from hub.stream.memory import InProcessLiveBus, InProcessStream
from hub.stream.redis import RedisLiveBus, RedisStream
from tests import services
from tests.hub.stream.helpers import WAIT, db_down, eventually

KINDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


def counter_value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def events(ids: Sequence[int], key: Callable[[int], str] = lambda i: f"ticket-{i % 3}") -> list[Event]:
    return [Event(key=key(i), payload={"kind": "message.created", "n": i}, outbox_id=i) for i in ids]


class StreamHarness:
    """Builds started streams of one kind and tears everything down afterwards."""

    def __init__(self, kind: str, client: aioredis.Redis | None) -> None:
        self.kind = kind
        self.client = client
        self.name = f"test:stream:{secrets.token_hex(6)}"
        self.streams: list[Stream] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.dead: list[tuple[int, str]] = []

    async def stream(self, *, max_deliveries: int = 5) -> Stream:
        stream: Stream
        if self.kind == "memory":
            memory = InProcessStream(max_deliveries=max_deliveries, retry_delay=0.01)

            async def on_dead(event: Event, error: str) -> None:
                self.dead.append((event.outbox_id, error))

            memory.on_dead = on_dead
            stream = memory
        else:
            # A short claim_idle_seconds so that retries happen within the test.
            stream = RedisStream(
                services.REDIS_URL,
                self.name,
                max_deliveries=max_deliveries,
                claim_idle_seconds=0.3,
                block_ms=100,
            )
        await stream.start()
        self.streams.append(stream)
        return stream

    def consume(self, stream: Stream, handler: EventHandler, consumer: str = "c1") -> None:
        self.tasks.append(asyncio.create_task(stream.consume("workers", consumer, handler)))

    async def dead_letters(self) -> list[tuple[int, str]]:
        if self.client is None:
            return list(self.dead)
        reply: Any = await self.client.xrange(f"{self.name}:dead")
        return [(int(fields[b"outbox_id"]), fields[b"error"].decode()) for _, fields in reply]

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for stream in self.streams:
            await stream.close()
        if self.client is not None:
            await self.client.delete(self.name, f"{self.name}:dead", f"{self.name}:errors")


@pytest.fixture(params=KINDS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[StreamHarness]:
    if request.param == "memory":
        memory = StreamHarness("memory", None)
        try:
            yield memory
        finally:
            await memory.aclose()
        return
    async for client in services.redis_client():
        remote = StreamHarness("redis", client)
        try:
            yield remote
        finally:
            await remote.aclose()


async def test_published_events_are_handled(harness: StreamHarness) -> None:
    stream = await harness.stream()
    handled: list[Event] = []

    async def handler(batch: Sequence[Event]) -> None:
        handled.extend(batch)

    harness.consume(stream, handler)
    sent = [
        Event(key=f"ticket-{i % 4}", payload={"kind": "message.created", "text": "héllo ✓", "n": i}, outbox_id=i)
        for i in range(1, 31)
    ]
    await stream.publish(sent[:10])
    await stream.publish(sent[10:])

    await eventually(lambda: len(handled) >= 30)
    assert sorted(e.outbox_id for e in handled) == list(range(1, 31))
    by_id = {e.outbox_id: e for e in handled}
    for event in sent:
        assert by_id[event.outbox_id].key == event.key
        assert by_id[event.outbox_id].payload == event.payload
        assert by_id[event.outbox_id].kind == "message.created"


async def test_a_consumer_stops_even_when_a_handler_swallows_its_cancellation(harness: StreamHarness) -> None:
    """Python 3.11's wait_for (inside aiosmtplib, redis-py) may swallow a
    cancellation that lands as its wait completes: the handler then returns
    normally from a cancelled task. The consumer must still stop, or shutting
    the hub down waits for ever."""
    stream = await harness.stream()
    started = asyncio.Event()

    async def swallowing(batch: Sequence[Event]) -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # what wait_for does in that race
            await asyncio.sleep(30)

    task = asyncio.create_task(stream.consume("workers", "c1", swallowing))
    await stream.publish(events([1]))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=10)
    assert done, "the consumer kept running after it was cancelled"


async def test_events_published_before_any_consumer_are_delivered(harness: StreamHarness) -> None:
    stream = await harness.stream()
    await stream.publish(events(range(1, 6)))
    handled: list[int] = []

    async def handler(batch: Sequence[Event]) -> None:
        handled.extend(e.outbox_id for e in batch)

    harness.consume(stream, handler)
    await eventually(lambda: len(handled) >= 5)
    assert sorted(handled) == [1, 2, 3, 4, 5]


async def test_events_of_one_key_are_handled_in_publish_order(harness: StreamHarness) -> None:
    stream = await harness.stream()
    seen: dict[str, list[int]] = {}

    async def handler(batch: Sequence[Event]) -> None:
        for event in batch:
            seen.setdefault(event.key, []).append(event.outbox_id)

    harness.consume(stream, handler)
    for start in range(1, 61, 10):
        await stream.publish(events(range(start, start + 10)))

    await eventually(lambda: sum(map(len, seen.values())) >= 60)
    assert set(seen) == {"ticket-0", "ticket-1", "ticket-2"}
    for key, ids in seen.items():
        assert ids == sorted(ids), key
        assert len(ids) == 20


async def test_a_failure_is_retried_and_the_event_handled_once(harness: StreamHarness) -> None:
    stream = await harness.stream()
    attempts: Counter[int] = Counter()
    completed: Counter[int] = Counter()
    failed = False

    async def handler(batch: Sequence[Event]) -> None:
        nonlocal failed
        attempts.update(e.outbox_id for e in batch)
        if not failed and any(e.outbox_id == 5 for e in batch):
            failed = True
            raise RuntimeError("transient")
        completed.update(e.outbox_id for e in batch)

    harness.consume(stream, handler)
    await stream.publish(events(range(1, 11)))

    await eventually(lambda: len(completed) == 10)
    # Nothing left to redeliver, so the counts below are final.
    await eventually(lambda: _backlog_empty(stream))
    assert failed
    assert attempts[5] >= 2
    assert completed == Counter(range(1, 11))


async def _backlog_empty(stream: Stream) -> bool:
    return await stream.backlog() == 0


async def test_an_always_failing_event_is_dead_lettered_and_others_flow(harness: StreamHarness) -> None:
    stream = await harness.stream(max_deliveries=3)
    alone_attempts = 0
    tries: list[int] = []
    completed: Counter[int] = Counter()

    async def handler(batch: Sequence[Event]) -> None:
        nonlocal alone_attempts
        if any(e.outbox_id == 7 for e in batch):
            if len(batch) == 1:
                alone_attempts += 1
                tries.append(batch[0].deliveries)
            raise ValueError("poison 7")
        completed.update(e.outbox_id for e in batch)

    harness.consume(stream, handler)
    await stream.publish(events(range(1, 13), key=lambda i: "ticket-1"))

    await eventually(lambda: len(completed) == 11)
    await eventually(lambda: _has_dead_letters(harness))
    dead = await harness.dead_letters()
    assert [outbox_id for outbox_id, _ in dead] == [7]
    assert "poison 7" in dead[0][1]
    # Tried alone exactly max_deliveries times, then given up on.
    assert alone_attempts == 3
    # Each try says which it is (the bot hands off when a remote service it
    # needs stays down), in-process as with Redis.
    assert tries == [1, 2, 3]
    await eventually(lambda: _backlog_empty(stream))

    # The stream still works after a dead letter.
    await stream.publish(events(range(13, 16), key=lambda i: "ticket-1"))
    await eventually(lambda: len(completed) == 14)
    assert completed == Counter(i for i in range(1, 16) if i != 7)
    assert 7 not in completed


async def test_a_database_outage_does_not_count_toward_the_dead_letter(harness: StreamHarness) -> None:
    """Six tries fail while the database is down, against a dead letter after
    two: the event is still handled, once, when the database is back."""
    stream = await harness.stream(max_deliveries=2)
    reachable = False
    tries = 0
    handled: list[int] = []

    async def probe() -> None:
        if not reachable:
            raise ConnectionRefusedError("connection refused")

    async def handler(batch: Sequence[Event]) -> None:
        nonlocal reachable, tries
        tries += 1
        if tries < 6:
            raise db_down()
        reachable = True
        handled.extend(e.outbox_id for e in batch)

    stream.probe = probe
    harness.consume(stream, handler)
    await stream.publish(events([1]))
    await eventually(lambda: handled == [1])
    assert tries == 6
    assert await harness.dead_letters() == []
    await eventually(lambda: _backlog_empty(stream))


async def test_an_os_error_while_the_database_answers_counts(harness: StreamHarness) -> None:
    """A missing file is an OSError too: it must not be retried for ever."""
    stream = await harness.stream(max_deliveries=3)

    async def probe() -> None:
        return None

    async def handler(batch: Sequence[Event]) -> None:
        raise FileNotFoundError("attachments/ab/cd.jpg")

    stream.probe = probe
    harness.consume(stream, handler)
    await stream.publish(events([1]))
    await eventually(lambda: _has_dead_letters(harness))
    assert await harness.dead_letters() == [(1, "FileNotFoundError: attachments/ab/cd.jpg")]


async def _has_dead_letters(harness: StreamHarness) -> bool:
    return bool(await harness.dead_letters())


async def test_in_process_on_done_gets_each_outbox_id_once_after_every_group_handled_it() -> None:
    stream = InProcessStream(retry_delay=0.01)
    await stream.start()
    handled: dict[str, set[int]] = {"workers": set(), "audit": set()}
    done: list[int] = []
    early: list[int] = []
    failed = False

    async def on_done(ids: Sequence[int]) -> None:
        for outbox_id in ids:
            if not all(outbox_id in seen for seen in handled.values()):
                early.append(outbox_id)
        done.extend(ids)

    def handler_for(group: str) -> EventHandler:
        async def handler(batch: Sequence[Event]) -> None:
            nonlocal failed
            if group == "audit" and not failed and any(e.outbox_id == 4 for e in batch):
                failed = True
                raise RuntimeError("transient")
            handled[group].update(e.outbox_id for e in batch)

        return handler

    stream.on_done = on_done
    tasks = [asyncio.create_task(stream.consume(group, "c1", handler_for(group))) for group in handled]
    try:
        await asyncio.sleep(0)  # let both groups register before publishing
        await stream.publish(events(range(1, 21)))
        await eventually(lambda: len(done) >= 20)
        await eventually(lambda: _backlog_empty(stream))
        assert sorted(done) == list(range(1, 21))
        assert early == []
        assert failed
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stream.close()


# --- live bus -----------------------------------------------------------------


class BusHarness:
    def __init__(self, kind: str, client: aioredis.Redis | None) -> None:
        self.kind = kind
        self.client = client
        self.prefix = f"test:live:{secrets.token_hex(6)}"
        self.buses: list[LiveBus] = []

    async def bus(self, max_queue: int = 10_000) -> LiveBus:
        bus: LiveBus
        if self.kind == "memory":
            bus = InProcessLiveBus(max_queue=max_queue)
        else:
            bus = RedisLiveBus(services.REDIS_URL, self.prefix, max_queue=max_queue)
        await bus.start()
        self.buses.append(bus)
        return bus

    async def subscribers(self, channel: str) -> int:
        assert self.client is not None
        reply = await self.client.pubsub_numsub(f"{self.prefix}:{channel}")
        return int(reply[0][1])

    async def listen(self, bus: LiveBus, channel: str, remote_subscribers: int = 1) -> Listener:
        """A listener whose subscription is in place when this returns."""
        listener = Listener(bus.subscribe(channel))
        if self.client is None:
            await asyncio.sleep(0.01)  # the in-process bus registers on the first step
        else:
            await eventually(lambda: self._subscribed(channel, remote_subscribers))
        return listener

    async def _subscribed(self, channel: str, count: int) -> bool:
        return await self.subscribers(channel) >= count

    async def aclose(self) -> None:
        for bus in self.buses:
            await bus.close()


class Listener:
    """Iterates a subscription from a task, as a websocket handler would."""

    def __init__(self, iterator: AsyncIterator[dict[str, Any]]) -> None:
        self.iterator = iterator
        self._next: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(anext(iterator))

    async def receive(self, timeout: float = WAIT) -> dict[str, Any]:
        message = await asyncio.wait_for(asyncio.shield(self._next), timeout)
        self._next = asyncio.ensure_future(anext(self.iterator))
        return message

    async def aclose(self) -> None:
        self._next.cancel()
        await asyncio.gather(self._next, return_exceptions=True)
        aclose = getattr(self.iterator, "aclose", None)
        if aclose is not None:
            await aclose()


@pytest.fixture(params=KINDS)
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[BusHarness]:
    if request.param == "memory":
        memory = BusHarness("memory", None)
        try:
            yield memory
        finally:
            await memory.aclose()
        return
    async for client in services.redis_client():
        remote = BusHarness("redis", client)
        try:
            yield remote
        finally:
            await remote.aclose()


async def test_live_messages_reach_every_subscriber_of_their_channel(buses: BusHarness) -> None:
    bus = await buses.bus()
    first = await buses.listen(bus, "inbox")
    second = await buses.listen(bus, "inbox", remote_subscribers=1)
    other = await buses.listen(bus, "ticket-9")
    try:
        await bus.publish("inbox", {"kind": "ticket.updated", "n": 1})
        await bus.publish("ticket-9", {"kind": "message.created", "n": 2})
        await bus.publish("inbox", {"kind": "ticket.updated", "n": 3})

        assert await first.receive() == {"kind": "ticket.updated", "n": 1}
        assert await first.receive() == {"kind": "ticket.updated", "n": 3}
        assert await second.receive() == {"kind": "ticket.updated", "n": 1}
        assert await second.receive() == {"kind": "ticket.updated", "n": 3}
        assert await other.receive() == {"kind": "message.created", "n": 2}
    finally:
        for listener in (first, second, other):
            await listener.aclose()


async def test_live_subscription_ends_and_can_start_again(buses: BusHarness) -> None:
    bus = await buses.bus()
    listener = await buses.listen(bus, "inbox")
    await bus.publish("inbox", {"n": 1})
    assert await listener.receive() == {"n": 1}
    await listener.aclose()
    if buses.client is not None:
        await eventually(lambda: _no_subscribers(buses, "inbox"))

    await bus.publish("inbox", {"n": 2})  # nobody listens: not an error
    again = await buses.listen(bus, "inbox")
    try:
        await bus.publish("inbox", {"n": 3})
        assert await again.receive() == {"n": 3}
    finally:
        await again.aclose()


async def _no_subscribers(buses: BusHarness, channel: str) -> bool:
    return await buses.subscribers(channel) == 0


async def test_a_stuck_live_listener_drops_messages_instead_of_growing(buses: BusHarness) -> None:
    bus = await buses.bus(max_queue=2)
    listener = await buses.listen(bus, "inbox")
    dropped = counter_value("hub_live_events_dropped_total")
    try:
        for n in range(1, 6):
            await bus.publish("inbox", {"n": n})
        # The listener takes at most one message and queues two: the rest is dropped.
        await eventually(lambda: counter_value("hub_live_events_dropped_total") - dropped >= 2)
        got = [(await listener.receive())["n"], (await listener.receive())["n"]]
        assert got[0] == 1
        assert got[1] > got[0]
    finally:
        await listener.aclose()


async def test_listen_is_subscribed_when_its_block_begins(buses: BusHarness) -> None:
    """No waiting, no polling PUBSUB: what another process publishes right after
    `listen` returns is received (the web chat reads history at that point)."""
    listening = await buses.bus()
    # In-process there is no other process: the same bus publishes.
    publishing = listening if buses.kind == "memory" else await buses.bus()
    for n in range(5):  # a fresh subscription each time, each raced at once
        async with listening.listen(f"visitor:{n}") as feed:
            await publishing.publish(f"visitor:{n}", {"type": "message", "id": n})
            assert await asyncio.wait_for(anext(feed), WAIT) == {"type": "message", "id": n}


async def test_the_in_process_bus_forgets_a_channel_once_its_last_listener_left() -> None:
    """Every web chat visitor listens on a channel of their own: what the bus
    keeps for a channel must go with its last listener."""
    bus = InProcessLiveBus()
    await bus.start()
    try:
        async with bus.listen("visitor:a") as feed, bus.listen("visitor:a"):
            await bus.publish("visitor:a", {"n": 1})
            assert await asyncio.wait_for(anext(feed), WAIT) == {"n": 1}
        for n in range(100):
            async with bus.listen(f"visitor:{n}"):
                pass
        assert bus._subscribers == {}
        assert bus.listeners("visitor:a") == 0
    finally:
        await bus.close()
