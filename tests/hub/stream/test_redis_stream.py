"""Redis Streams behaviour beyond the shared contract: several worker processes
sharing a consumer group, crashed consumers, the dead letter stream, and the
pub/sub live bus across web processes."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from hub.stream.base import Event, EventHandler
from hub.stream.redis import RedisLiveBus, RedisStream, _backoff
from tests.hub.stream.helpers import WAIT, db_down, eventually

pytestmark = pytest.mark.redis


def counter_value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def entries(client: aioredis.Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    """A stream's entries, as text."""
    reply: Any = await client.xrange(key)
    return [(text(entry_id), {text(k): text(v) for k, v in fields.items()}) for entry_id, fields in reply]


class Workers:
    """Streams standing for separate worker processes on one Redis stream."""

    def __init__(self, client: aioredis.Redis, url: str) -> None:
        self.client = client
        self.url = url
        self.name = f"test:stream:{secrets.token_hex(6)}"
        self.client_name = f"hub-stream-test-{secrets.token_hex(4)}"
        self.streams: list[RedisStream] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def stream(self, **options: Any) -> RedisStream:
        options.setdefault("block_ms", 100)
        options.setdefault("client_name", self.client_name)
        stream = RedisStream(self.url, self.name, **options)
        await stream.start()
        self.streams.append(stream)
        return stream

    def consume(self, stream: RedisStream, consumer: str, handler: EventHandler) -> asyncio.Task[None]:
        task = asyncio.create_task(stream.consume("workers", consumer, handler))
        self.tasks.append(task)
        return task

    async def length(self, key: str | None = None) -> int:
        return int(await self.client.xlen(key or self.name))

    async def pending(self) -> int:
        return int((await self.client.xpending(self.name, "workers"))["pending"])

    async def waiting(self, count: int) -> None:
        """Until ``count`` consumers are blocked in XREADGROUP, waiting for new entries."""

        async def enough() -> bool:
            clients = await self.client.client_list()
            blocked = [c for c in clients if c["name"] == self.client_name and c["cmd"] == "xreadgroup"]
            return len(blocked) >= count

        await eventually(enough)

    async def drained(self) -> bool:
        return await self.length() == 0 and await self.pending() == 0

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for stream in self.streams:
            await stream.close()
        await self.client.delete(self.name, f"{self.name}:dead", f"{self.name}:errors")


@pytest.fixture
async def workers(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Workers]:
    group = Workers(redis, redis_url)
    try:
        yield group
    finally:
        await group.aclose()


def event(n: int, key: str = "ticket-1") -> Event:
    return Event(key=key, payload={"kind": "message.created", "n": n}, outbox_id=n)


async def test_an_entry_of_a_killed_consumer_is_reclaimed_and_completed_once(workers: Workers) -> None:
    first = await workers.stream(claim_idle_seconds=0.5)
    second = await workers.stream(claim_idle_seconds=0.5)
    reclaimed = counter_value("hub_stream_reclaimed_total")
    started = asyncio.Event()
    completed: Counter[int] = Counter()
    deliveries: list[int] = []

    async def hangs(batch: Sequence[Event]) -> None:
        started.set()
        await asyncio.Event().wait()  # stuck until its process dies
        completed.update(e.outbox_id for e in batch)

    async def works(batch: Sequence[Event]) -> None:
        deliveries.extend(e.deliveries for e in batch)
        completed.update(e.outbox_id for e in batch)

    dying = workers.consume(first, "worker-1", hangs)
    await first.publish([event(1)])
    await asyncio.wait_for(started.wait(), WAIT)
    dying.cancel()  # the process dies mid-message: never acked
    await asyncio.gather(dying, return_exceptions=True)
    assert await workers.pending() == 1

    workers.consume(second, "worker-2", works)
    await eventually(lambda: completed[1] >= 1)
    await eventually(workers.drained)
    assert completed == Counter({1: 1})
    assert deliveries == [2]
    assert counter_value("hub_stream_reclaimed_total") - reclaimed >= 1


async def test_two_consumers_of_a_group_share_events_without_overlap(workers: Workers) -> None:
    first = await workers.stream(max_batch=10)
    second = await workers.stream(max_batch=10)
    handled: dict[str, list[int]] = {"worker-1": [], "worker-2": []}

    def recorder(name: str) -> EventHandler:
        async def handler(batch: Sequence[Event]) -> None:
            handled[name].extend(e.outbox_id for e in batch)
            await asyncio.sleep(0.005)  # a little work, so the other consumer reads meanwhile

        return handler

    workers.consume(first, "worker-1", recorder("worker-1"))
    workers.consume(second, "worker-2", recorder("worker-2"))
    await workers.waiting(2)

    await first.publish([event(n, key=f"ticket-{n % 7}") for n in range(1, 201)])
    await eventually(lambda: sum(map(len, handled.values())) >= 200)
    await eventually(workers.drained)

    one, two = set(handled["worker-1"]), set(handled["worker-2"])
    assert one.isdisjoint(two)
    assert one | two == set(range(1, 201))
    assert len(handled["worker-1"]) + len(handled["worker-2"]) == 200
    assert one
    assert two


async def test_dead_letter_keeps_the_event_with_its_delivery_count_and_error(workers: Workers) -> None:
    stream = await workers.stream(max_deliveries=2, claim_idle_seconds=0.2)
    dead_lettered = counter_value("hub_stream_dead_lettered_total")
    calls = 0
    entry_ids: set[str] = set()

    async def fails(batch: Sequence[Event]) -> None:
        nonlocal calls
        calls += 1
        entry_ids.update(e.entry_id for e in batch)
        raise ValueError("boom 42")

    workers.consume(stream, "worker-1", fails)
    payload = {"kind": "message.created", "text": "héllo", "attachments": [{"id": 3}]}
    await stream.publish([Event(key="ticket-9", payload=payload, outbox_id=42)])

    dead = f"{workers.name}:dead"
    await eventually(lambda: _has_entries(workers, dead))
    [(_, record)] = await entries(workers.client, dead)
    assert record["key"] == "ticket-9"
    assert json.loads(record["payload"]) == payload
    assert record["outbox_id"] == "42"
    assert record["deliveries"] == "3"  # the delivery that was not attempted any more
    assert record["group"] == "workers"
    assert record["error"] == "ValueError: boom 42"
    assert {record["entry_id"]} == entry_ids
    assert calls == 2
    await eventually(workers.drained)
    assert not await workers.client.exists(f"{workers.name}:errors")
    assert counter_value("hub_stream_dead_lettered_total") - dead_lettered == 1


async def _has_entries(workers: Workers, key: str) -> bool:
    return await workers.length(key) > 0


async def test_an_undecodable_entry_is_dead_lettered_at_once(workers: Workers) -> None:
    stream = await workers.stream()
    handled: list[int] = []

    async def handler(batch: Sequence[Event]) -> None:
        handled.extend(e.outbox_id for e in batch)

    await workers.client.xadd(workers.name, {"key": "ticket-1", "payload": "{not json", "outbox_id": "5"})
    await stream.publish([event(6)])
    workers.consume(stream, "worker-1", handler)

    dead = f"{workers.name}:dead"
    await eventually(lambda: _has_entries(workers, dead))
    await eventually(lambda: handled == [6])
    [(_, fields)] = await entries(workers.client, dead)
    assert fields["outbox_id"] == "5"
    assert fields["error"].startswith("undecodable entry")
    await eventually(workers.drained)


async def test_acked_entries_are_removed_from_the_stream(workers: Workers) -> None:
    stream = await workers.stream()
    handled = 0

    async def handler(batch: Sequence[Event]) -> None:
        nonlocal handled
        handled += len(batch)

    await stream.publish([event(n, key=f"ticket-{n % 5}") for n in range(1, 51)])
    assert await workers.length() == 50
    assert await stream.backlog() == 50
    workers.consume(stream, "worker-1", handler)

    await eventually(lambda: handled >= 50)
    await eventually(lambda: _length_is(workers, 0))
    assert await stream.backlog() == 0
    assert await workers.pending() == 0
    assert handled == 50


async def _length_is(workers: Workers, length: int) -> bool:
    return await workers.length() == length


async def test_consume_returns_when_the_stream_is_closed(workers: Workers) -> None:
    stream = await workers.stream(block_ms=5000)

    async def handler(batch: Sequence[Event]) -> None:
        return None

    task = workers.consume(stream, "worker-1", handler)
    await workers.waiting(1)
    await stream.close()
    await asyncio.wait_for(task, WAIT)


async def test_consumer_recreates_a_deleted_stream_and_group(workers: Workers) -> None:
    stream = await workers.stream()
    handled: list[int] = []

    async def handler(batch: Sequence[Event]) -> None:
        handled.extend(e.outbox_id for e in batch)

    workers.consume(stream, "worker-1", handler)
    await workers.waiting(1)
    await workers.client.delete(workers.name)
    await eventually(lambda: _exists(workers))
    await stream.publish([event(1)])
    await eventually(lambda: handled == [1])


async def _exists(workers: Workers) -> bool:
    return bool(await workers.client.exists(workers.name))


# --- live bus -----------------------------------------------------------------


@pytest.fixture
async def live(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[LiveBuses]:
    buses = LiveBuses(redis, redis_url)
    try:
        yield buses
    finally:
        await buses.aclose()


class LiveBuses:
    """``RedisLiveBus`` instances standing for separate web processes."""

    def __init__(self, client: aioredis.Redis, url: str) -> None:
        self.client = client
        self.url = url
        self.prefix = f"test:live:{secrets.token_hex(6)}"
        self.buses: list[RedisLiveBus] = []

    async def bus(self, **options: Any) -> RedisLiveBus:
        bus = RedisLiveBus(self.url, self.prefix, **options)
        await bus.start()
        self.buses.append(bus)
        return bus

    async def subscribers(self, channel: str) -> int:
        reply = await self.client.pubsub_numsub(f"{self.prefix}:{channel}")
        return int(reply[0][1])

    async def wait_subscribers(self, channel: str, count: int) -> None:
        async def enough() -> bool:
            return await self.subscribers(channel) == count

        await eventually(enough)

    async def aclose(self) -> None:
        for bus in self.buses:
            await bus.close()


class Listener:
    def __init__(self, iterator: AsyncIterator[dict[str, Any]]) -> None:
        self.iterator = iterator
        self.next: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(anext(iterator))

    async def receive(self, timeout: float = WAIT) -> dict[str, Any]:
        message = await asyncio.wait_for(asyncio.shield(self.next), timeout)
        self.next = asyncio.ensure_future(anext(self.iterator))
        return message

    async def aclose(self) -> None:
        self.next.cancel()
        await asyncio.gather(self.next, return_exceptions=True)
        aclose = getattr(self.iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def test_every_web_process_receives_a_live_message(live: LiveBuses) -> None:
    web1, web2, worker = await live.bus(), await live.bus(), await live.bus()
    one, two = Listener(web1.subscribe("agent-7")), Listener(web2.subscribe("agent-7"))
    try:
        await live.wait_subscribers("agent-7", 2)
        await worker.publish("agent-7", {"kind": "ticket.assigned", "ticket": 12})
        assert await one.receive() == {"kind": "ticket.assigned", "ticket": 12}
        assert await two.receive() == {"kind": "ticket.assigned", "ticket": 12}
    finally:
        await one.aclose()
        await two.aclose()


async def test_local_listeners_share_one_redis_subscription(live: LiveBuses) -> None:
    web, worker = await live.bus(), await live.bus()
    listeners = [Listener(web.subscribe("inbox")) for _ in range(3)]
    try:
        await live.wait_subscribers("inbox", 1)
        await worker.publish("inbox", {"n": 1})
        for listener in listeners:
            assert await listener.receive() == {"n": 1}
        assert await live.subscribers("inbox") == 1

        await listeners.pop().aclose()
        await worker.publish("inbox", {"n": 2})
        for listener in listeners:
            assert await listener.receive() == {"n": 2}
        assert await live.subscribers("inbox") == 1
    finally:
        for listener in listeners:
            await listener.aclose()
    # The last local listener gone, the Redis channel is unsubscribed.
    await live.wait_subscribers("inbox", 0)


async def until_it_ends(feed: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a feed still gives before it ends (which it must, and soon)."""

    async def drain() -> list[dict[str, Any]]:
        return [message async for message in feed]

    return await asyncio.wait_for(drain(), WAIT)


async def test_live_bus_reconnects_and_resubscribes(live: LiveBuses) -> None:
    name = f"hub-live-test-{secrets.token_hex(4)}"
    web, worker = await live.bus(client_name=name), await live.bus()
    async with web.listen("inbox") as feed:
        await worker.publish("inbox", {"n": 0})
        assert await asyncio.wait_for(anext(feed), WAIT) == {"n": 0}
        [victim] = [c for c in await live.client.client_list() if c["name"] == name]
        await live.client.client_kill_filter(_id=victim["id"])
        for n in range(1, 20):  # lost while the bus reconnects (fire and forget)
            await worker.publish("inbox", {"n": n})

        # Told instead of left waiting for what will never come: the feed
        # ends (its websocket handler closes, the client reloads), and only
        # once the bus is subscribed again, so a new listener misses nothing.
        remaining = await until_it_ends(feed)
        assert [m["n"] for m in remaining] == list(range(1, len(remaining) + 1))
        assert await live.subscribers("inbox") == 1
        async with web.listen("inbox") as again:
            await worker.publish("inbox", {"n": 20})
            assert await asyncio.wait_for(anext(again), WAIT) == {"n": 20}


async def test_a_listener_that_missed_nothing_keeps_listening_through_a_reconnect_it_did_not_see(
    live: LiveBuses,
) -> None:
    """Only listeners whose block had begun are ended: one still waiting in
    ``listen`` for its subscription gets everything from its block on."""
    name = f"hub-live-test-{secrets.token_hex(4)}"
    web, worker = await live.bus(client_name=name), await live.bus()
    async with web.listen("inbox") as first:
        [victim] = [c for c in await live.client.client_list() if c["name"] == name]
        await live.client.client_kill_filter(_id=victim["id"])
        channel = web._channels[f"{live.prefix}:inbox"]
        await eventually(lambda: not channel.ready.is_set())
        # Entered while the bus reconnects: it waits for the new subscription.
        async with web.listen("inbox") as second:
            assert await until_it_ends(first) == []
            await worker.publish("inbox", {"n": 1})
            assert await asyncio.wait_for(anext(second), WAIT) == {"n": 1}


async def test_an_error_recorded_during_an_outage_is_removed_once_the_event_is_handled(workers: Workers) -> None:
    """A try that failed because the database was down gives its delivery
    back, so the event may succeed on what counts as its first delivery; its
    recorded error must go all the same."""
    stream = await workers.stream(claim_idle_seconds=0.3, block_ms=50)
    db_up = False

    async def probe() -> None:
        if not db_up:
            raise ConnectionRefusedError("database down")

    stream.probe = probe
    stream.probe_memory = 0.0
    handled: list[tuple[int, int]] = []

    async def handler(batch: Sequence[Event]) -> None:
        if not db_up:
            raise db_down()
        handled.extend((e.outbox_id, e.deliveries) for e in batch)

    await stream.publish([event(n, key=f"ticket-{n}") for n in range(1, 6)])
    workers.consume(stream, "worker-1", handler)
    await eventually(lambda: _errors_recorded(workers, 5))
    db_up = True
    await eventually(lambda: len(handled) >= 5)
    await eventually(workers.drained)
    assert sorted(handled) == [(n, 1) for n in range(1, 6)]
    assert await workers.client.hlen(f"{workers.name}:errors") == 0


async def _errors_recorded(workers: Workers, n: int) -> bool:
    return int(await workers.client.hlen(f"{workers.name}:errors")) >= n


def test_reconnect_backoff_grows_to_its_cap_with_jitter() -> None:
    """Every process loses Redis at once: the same delays would bring them
    all back in the same instants."""
    first = [_backoff(0) for _ in range(200)]
    capped = [_backoff(30, cap=5.0) for _ in range(200)]
    assert all(0.05 <= d <= 0.1 for d in first)
    assert all(2.5 <= d <= 5.0 for d in capped)
    assert len(set(capped)) > 100


async def test_closing_the_live_bus_ends_its_listeners(live: LiveBuses) -> None:
    web = await live.bus()
    listener = Listener(web.subscribe("inbox"))
    await live.wait_subscribers("inbox", 1)
    await web.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(listener.next, WAIT)
    await live.wait_subscribers("inbox", 0)


async def test_a_batch_slower_than_claim_idle_is_not_handled_twice(workers: Workers) -> None:
    """A consumer works through a batch one event at a time (inline sends);
    while it does, its entries must not look abandoned to the other worker's
    XAUTOCLAIM, nor gain deliveries towards the dead letter."""
    claim_idle = 0.3
    first = await workers.stream(claim_idle_seconds=claim_idle, max_deliveries=2)
    second = await workers.stream(claim_idle_seconds=claim_idle, max_deliveries=2)
    calls: list[tuple[str, int, int]] = []

    def slow(name: str) -> EventHandler:
        async def handler(batch: Sequence[Event]) -> None:
            for e in batch:
                calls.append((name, e.outbox_id, e.deliveries))
                await asyncio.sleep(claim_idle)  # the whole batch: many times claim_idle

        return handler

    workers.consume(first, "worker-1", slow("worker-1"))
    workers.consume(second, "worker-2", slow("worker-2"))
    await workers.waiting(2)
    await first.publish([event(n) for n in range(1, 6)])

    await eventually(lambda: len(calls) >= 5)
    await eventually(workers.drained)
    assert sorted(outbox_id for _, outbox_id, _ in calls) == [1, 2, 3, 4, 5]
    assert {deliveries for _, _, deliveries in calls} == {1}
    assert await workers.length(f"{workers.name}:dead") == 0


async def test_a_clean_stop_removes_its_consumer_unless_it_holds_entries(workers: Workers) -> None:
    # Every restart of a worker used to leave its consumer listed in the group for good.
    idle = await workers.stream()
    busy = await workers.stream(claim_idle_seconds=60)
    done, started = asyncio.Event(), asyncio.Event()

    async def works(batch: Sequence[Event]) -> None:
        done.set()

    async def hangs(batch: Sequence[Event]) -> None:
        started.set()
        await asyncio.Event().wait()

    async def consumers() -> set[str]:
        return {text(c["name"]) for c in await workers.client.xinfo_consumers(workers.name, "workers")}

    async def stop(task: asyncio.Task[None], stream: RedisStream) -> None:
        # As the hub stops: its consume task cancelled, then the stream closed.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stream.close()

    finishing = workers.consume(idle, "worker-idle", works)
    await workers.waiting(1)
    await idle.publish([event(1)])
    await asyncio.wait_for(done.wait(), WAIT)
    await eventually(workers.drained)
    assert await consumers() == {"worker-idle"}
    await stop(finishing, idle)
    assert await consumers() == set()

    stuck = workers.consume(busy, "worker-busy", hangs)
    await busy.publish([event(2)])
    await asyncio.wait_for(started.wait(), WAIT)
    await stop(stuck, busy)
    # It still holds its entry: it stays, for another worker to claim.
    assert await consumers() == {"worker-busy"}
    assert await workers.pending() == 1
