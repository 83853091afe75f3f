"""The embedded stream: asyncio queues in the one process that runs everything.

Not durable by itself: the outbox row of an event stays in the database until
every consumer group has handled it (``on_done``), so a crash loses nothing: the
relay publishes the remaining rows again at start-up.

Events are partitioned by key (the ticket id) and each partition is drained by
one task, so events of one ticket are handled in order while different tickets
are handled concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from hub import metrics
from hub.stream.base import Event, EventHandler, LiveBus, Stream, check_cancelled

log = logging.getLogger(__name__)

DeadLetter = Callable[[Event, str], Awaitable[None]]


class InProcessStream(Stream):
    durable = False

    def __init__(
        self,
        *,
        partitions: int = 8,
        max_batch: int = 200,
        max_deliveries: int = 5,
        retry_delay: float = 0.05,
    ) -> None:
        super().__init__()
        self.partitions = partitions
        self.max_batch = max_batch
        self.max_deliveries = max_deliveries
        self.retry_delay = retry_delay
        self.on_dead: DeadLetter | None = None
        self._groups: dict[str, list[asyncio.Queue[Event]]] = {}
        self._remaining: dict[int, int] = {}  # outbox id -> groups yet to handle it
        self._in_flight = 0
        self._closed = False

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True

    async def ping(self) -> None:
        if self._closed:
            raise RuntimeError("stream is closed")

    async def backlog(self) -> int:
        return self._in_flight

    def _queues(self, group: str) -> list[asyncio.Queue[Event]]:
        if group not in self._groups:
            self._groups[group] = [asyncio.Queue() for _ in range(self.partitions)]
        return self._groups[group]

    async def publish(self, events: Sequence[Event]) -> None:
        if self._closed:
            raise RuntimeError("stream is closed")
        if not self._groups:
            # Nobody consumes yet: events wait for the first group to register.
            self._queues("workers")
        for event in events:
            part = zlib.crc32(event.key.encode()) % self.partitions
            self._remaining[event.outbox_id] = len(self._groups)
            self._in_flight += 1
            for queues in self._groups.values():
                queues[part].put_nowait(event)
        metrics.STREAM_PUBLISHED.inc(len(events))

    async def consume(self, group: str, consumer: str, handler: EventHandler) -> None:
        queues = self._queues(group)
        async with asyncio.TaskGroup() as tg:
            for i, queue in enumerate(queues):
                tg.create_task(self._drain(queue, handler), name=f"{group}/{consumer}/p{i}")

    async def _drain(self, queue: asyncio.Queue[Event], handler: EventHandler) -> None:
        while True:
            check_cancelled()  # a handler may have swallowed it (see there)
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            await self._handle(batch, handler)

    async def _handle(self, batch: list[Event], handler: EventHandler) -> None:
        try:
            await handler(batch)
        except Exception as exc:  # noqa: BLE001 - retried one by one below
            if len(batch) > 1:
                for event in batch:
                    await self._handle_one(event, handler)
                return
            error = self._failed(batch[0], 1, exc)
            await self._handle_one(batch[0], handler, deliveries=1, error=error)
            return
        await self._done(batch)

    def _failed(self, event: Event, attempt: int, exc: Exception) -> str:
        error = f"{type(exc).__name__}: {exc}"
        metrics.STREAM_FAILURES.inc()
        log.warning("event handler failed", extra={"kind": event.kind, "try": attempt, "error": error})
        return error

    async def _handle_one(self, event: Event, handler: EventHandler, deliveries: int = 0, error: str = "") -> None:
        while deliveries < self.max_deliveries:
            if deliveries:
                await asyncio.sleep(self.retry_delay * 2 ** (deliveries - 1))
            deliveries += 1
            try:
                # Handlers see which try this is, as with Redis (``times_delivered``).
                await handler([dataclasses.replace(event, deliveries=deliveries)])
            except Exception as exc:  # noqa: BLE001 - counted, then dead-lettered
                error = self._failed(event, deliveries, exc)
                continue
            await self._done([event])
            return
        metrics.STREAM_DEAD_LETTERED.inc()
        log.error("event dead-lettered", extra={"kind": event.kind, "outbox_id": event.outbox_id, "error": error})
        self._forget([event])
        if self.on_dead is not None:
            await self.on_dead(event, error)

    def _forget(self, events: Sequence[Event]) -> list[int]:
        finished = []
        for event in events:
            left = self._remaining.get(event.outbox_id, 1) - 1
            if left <= 0:
                self._remaining.pop(event.outbox_id, None)
                self._in_flight -= 1
                finished.append(event.outbox_id)
            else:
                self._remaining[event.outbox_id] = left
        return finished

    async def _done(self, events: Sequence[Event]) -> None:
        metrics.STREAM_HANDLED.inc(len(events))
        finished = self._forget(events)
        if finished and self.on_done is not None:
            await self.on_done(finished)


class InProcessLiveBus(LiveBus):
    def __init__(self, max_queue: int = 10_000) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._max_queue = max_queue

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscribers.clear()

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        for queue in list(self._subscribers.get(channel, ())):
            if queue.qsize() < self._max_queue:
                queue.put_nowait(message)
            else:
                # A stuck listener must not grow memory without bound; it
                # catches up from the database when it reconnects.
                metrics.LIVE_DROPPED.inc()

    def listeners(self, channel: str) -> int | None:
        return len(self._subscribers.get(channel, ()))

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.setdefault(channel, set()).add(queue)
        try:
            yield _messages(queue)
        finally:
            self._subscribers.get(channel, set()).discard(queue)


async def _messages(queue: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    while True:
        yield await queue.get()
