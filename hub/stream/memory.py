"""The embedded stream: asyncio queues in the one process that runs everything.

Not durable by itself: the outbox row of an event stays in the database until
every consumer group has handled it (``on_done``), so a crash loses nothing: the
relay publishes the remaining rows again at start-up.

Events are partitioned by key (the ticket id) and each partition is drained by
one task, so events of one ticket are handled in order while different tickets
are handled concurrently.

A failed event is retried in place, with a backoff in seconds, and goes to the
dead letter (``on_dead``) after ``max_deliveries`` failures. A failure caused by
an outage (the database unreachable) does not count (``Stream.is_outage``). Whatever the
stream takes and cannot finish (the dead-letter write failed, its task was
stopped) stays in the outbox and is handed back through ``on_abandoned``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

from hub import metrics
from hub.stream.base import Event, EventHandler, LiveBus, Stream, check_cancelled

log = logging.getLogger(__name__)

DeadLetter = Callable[[Event, str], Awaitable[None]]
Settled = Literal["handled", "parked", "dropped"]


class InProcessStream(Stream):
    durable = False

    def __init__(
        self,
        *,
        partitions: int = 8,
        max_batch: int = 200,
        max_deliveries: int = 5,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        probe_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.partitions = partitions
        self.max_batch = max_batch
        self.max_deliveries = max_deliveries
        # Seconds, not milliseconds: a database restart takes a second or more,
        # and the retries of an event must outlast a short one.
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.probe_timeout = probe_timeout
        self.on_dead: DeadLetter | None = None
        self._groups: dict[str, list[asyncio.Queue[Event]]] = {}
        self._remaining: dict[int, int] = {}  # outbox id -> groups yet to handle it
        # Outbox ids a group did not handle: their rows must outlive the other
        # groups' success. True: published again (dropped); False: parked.
        self._unfinished: dict[int, bool] = {}
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
        published = 0
        for event in events:
            if event.outbox_id and event.outbox_id in self._remaining:
                # Its row was claimed again (a lapsed lease, a restarted relay)
                # while the event still waits here: a second copy would only be
                # handled twice, and a backlog republished every poll grows.
                continue
            part = zlib.crc32(event.key.encode()) % self.partitions
            self._remaining[event.outbox_id] = len(self._groups)
            self._in_flight += 1
            published += 1
            for queues in self._groups.values():
                queues[part].put_nowait(event)
        metrics.STREAM_PUBLISHED.inc(published)

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
            # Events of the batch not yet handled or parked, by identity: if
            # this task stops, their rows must be published again.
            open_ = {id(event): event for event in batch}
            try:
                await self._handle(batch, handler, open_)
            except asyncio.CancelledError:
                self._drop(list(open_.values()))
                raise
            except Exception:
                # Only a bug gets here (handler errors are caught below); the
                # partition must outlive it, or its tickets would stall.
                log.exception("event partition failed; its events are published again")
                self._drop(list(open_.values()))

    async def _handle(self, batch: list[Event], handler: EventHandler, open_: dict[int, Event]) -> None:
        try:
            await handler(batch)
        except Exception as exc:  # noqa: BLE001 - retried one by one below
            if len(batch) > 1:
                for event in batch:
                    await self._handle_one(event, handler, open_)
                return
            error = self._failed(batch[0], 1, exc)
            strikes = 0 if await self.is_outage(exc) else 1
            await self._handle_one(batch[0], handler, open_, tries=1, strikes=strikes, error=error)
            return
        await self._done(batch, open_)

    def _failed(self, event: Event, attempt: int, exc: Exception) -> str:
        error = f"{type(exc).__name__}: {exc}"
        metrics.STREAM_FAILURES.inc()
        log.warning("event handler failed", extra={"kind": event.kind, "try": attempt, "error": error})
        return error

    def _delay(self, tries: int) -> float:
        return float(min(self.max_retry_delay, self.retry_delay * 2 ** min(tries - 1, 30)))

    async def _handle_one(
        self,
        event: Event,
        handler: EventHandler,
        open_: dict[int, Event],
        *,
        tries: int = 0,
        strikes: int = 0,
        error: str = "",
    ) -> None:
        # ``tries`` is what handlers see (as with Redis' ``times_delivered``:
        # the bot hands off after a few); ``strikes`` only counts failures that
        # are the event's own, and decides the dead letter.
        while strikes < self.max_deliveries:
            if tries:
                await asyncio.sleep(self._delay(tries))
            tries += 1
            try:
                await handler([dataclasses.replace(event, deliveries=tries)])
            except Exception as exc:  # noqa: BLE001 - counted, then dead-lettered
                error = self._failed(event, tries, exc)
                if not await self.is_outage(exc):
                    strikes += 1
                continue
            await self._done([event], open_)
            return
        await self._dead_letter(event, error, open_)

    async def _dead_letter(self, event: Event, error: str, open_: dict[int, Event]) -> None:
        log.error("event dead-lettered", extra={"kind": event.kind, "outbox_id": event.outbox_id, "error": error})
        if self.on_dead is not None:
            try:
                await self.on_dead(event, error)
            except Exception:
                # Raising would end the partition and with it the consumer. The
                # row stays in the outbox; handed back, it is published again
                # and gets another round of tries (by then, the dead-letter
                # write may succeed).
                log.exception(
                    "could not park a dead letter; it will be tried again", extra={"outbox_id": event.outbox_id}
                )
                open_.pop(id(event), None)
                self._drop([event])
                return
        metrics.STREAM_DEAD_LETTERED.inc()
        open_.pop(id(event), None)
        self._settle([event], "parked")

    def _settle(self, events: Sequence[Event], how: Settled) -> tuple[list[int], list[int]]:
        """This group is through with ``events``. Returns the outbox ids every
        group is through with: those handled everywhere (their rows may go) and
        those some group dropped (their rows must be published again)."""
        handled: list[int] = []
        dropped: list[int] = []
        for event in events:
            oid = event.outbox_id
            if how == "dropped":
                self._unfinished[oid] = True
            elif how == "parked":
                self._unfinished.setdefault(oid, False)
            left = self._remaining.get(oid, 1) - 1
            if left > 0:
                self._remaining[oid] = left
                continue
            self._remaining.pop(oid, None)
            self._in_flight -= 1
            unfinished = self._unfinished.pop(oid, None)
            if unfinished is None:
                handled.append(oid)
            elif unfinished:
                dropped.append(oid)
        return handled, dropped

    def _drop(self, events: Sequence[Event]) -> None:
        _, dropped = self._settle(events, "dropped")
        if dropped and self.on_abandoned is not None:
            self.on_abandoned(dropped)

    async def _done(self, events: Sequence[Event], open_: dict[int, Event]) -> None:
        metrics.STREAM_HANDLED.inc(len(events))
        for event in events:
            open_.pop(id(event), None)
        finished, dropped = self._settle(events, "handled")
        if dropped and self.on_abandoned is not None:
            self.on_abandoned(dropped)
        if finished and self.on_done is not None:
            try:
                await self.on_done(finished)
            except Exception:
                log.exception("could not release handled outbox rows; they will be handled again")


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
            listeners = self._subscribers.get(channel)
            if listeners is not None:
                listeners.discard(queue)
                if not listeners:
                    # Every web chat visitor has a channel of their own: an
                    # empty set left behind for each would grow without bound.
                    del self._subscribers[channel]


async def _messages(queue: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    while True:
        yield await queue.get()
