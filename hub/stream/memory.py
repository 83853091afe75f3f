"""The embedded stream: asyncio queues in the one process that runs everything.

Not durable by itself: the outbox row of an event stays in the database until
every consumer group has handled it (``on_done``), so a crash loses nothing: the
relay publishes the remaining rows again at start-up.

Events are partitioned by key (the ticket id) and each partition is drained by
one task, so events of one ticket are handled in order while different tickets
are handled concurrently.

A failed event is retried after a backoff in seconds, and goes to the dead
letter (``on_dead``) after ``max_deliveries`` failures. Meanwhile only the
later events of its key wait behind it (in order); the partition's other keys
go on. A failure caused by an outage (the database unreachable) does not count
(``Stream.is_outage``) and is waited out in place. Whatever the
stream takes and cannot finish (the dead-letter write failed, its task was
stopped) stays in the outbox and is handed back through ``on_abandoned``.
"""

from __future__ import annotations

import asyncio
import collections
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


class _Partition:
    """What one partition's task holds besides its queue."""

    def __init__(self, queue: asyncio.Queue[Event | _Retry]) -> None:
        self.queue = queue
        # Events taken from the queue and not yet handled or parked, by
        # identity: if the task stops, their rows must be published again.
        self.open_: dict[int, Event] = {}
        # Keys with an event waiting for its retry -> their later events, in
        # order: they wait behind it, the partition's other keys do not.
        self.held: dict[str, collections.deque[Event]] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _Retry:
    """Put in the partition's queue when a failed event's backoff is over."""

    owner: _Partition
    event: Event
    tries: int
    strikes: int


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
        self._groups: dict[str, list[asyncio.Queue[Event | _Retry]]] = {}
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

    def _queues(self, group: str) -> list[asyncio.Queue[Event | _Retry]]:
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

    async def _drain(self, queue: asyncio.Queue[Event | _Retry], handler: EventHandler) -> None:
        part = _Partition(queue)
        try:
            while True:
                check_cancelled()  # a handler may have swallowed it (see there)
                items = [await queue.get()]
                while len(items) < self.max_batch and not queue.empty():
                    items.append(queue.get_nowait())
                try:
                    await self._handle(items, handler, part)
                except Exception:
                    # Only a bug gets here (handler errors are caught below); the
                    # partition must outlive it, or its tickets would stall.
                    log.exception("event partition failed; its events are published again")
                    self._abandon(part)
                    part = _Partition(queue)
        finally:
            # Stopped (or failed, above): whatever it took and did not finish
            # (events waiting for a retry, or behind one) is published again.
            self._abandon(part)

    def _abandon(self, part: _Partition) -> None:
        for timer in part.timers.values():
            timer.cancel()
        part.timers.clear()
        part.held.clear()
        events, part.open_ = list(part.open_.values()), {}
        if events:
            self._drop(events)

    async def _handle(self, items: list[Event | _Retry], handler: EventHandler, part: _Partition) -> None:
        batch: list[Event] = []
        retries: list[_Retry] = []
        for item in items:
            if isinstance(item, _Retry):
                # One left in the queue by a partition task that stopped since:
                # its event was handed back then.
                if item.owner is part:
                    retries.append(item)
                continue
            part.open_[id(item)] = item
            held = part.held.get(item.key)
            if held is not None:
                held.append(item)  # its ticket's earlier event waits for a retry
            else:
                batch.append(item)
        if batch:
            await self._handle_batch(batch, handler, part)
        for retry in retries:
            part.timers.pop(retry.event.key, None)
            later = await self._try(retry.event, handler, part, tries=retry.tries, strikes=retry.strikes)
            if later is not None:
                self._schedule(later)
            else:
                await self._release(retry.event.key, handler, part)

    async def _handle_batch(self, batch: list[Event], handler: EventHandler, part: _Partition) -> None:
        try:
            await handler(batch)
        except Exception as exc:  # noqa: BLE001 - retried one by one below
            if len(batch) == 1:
                retry = await self._try(batch[0], handler, part, tries=1, failure=exc)
                if retry is not None:
                    part.held[batch[0].key] = collections.deque()
                    self._schedule(retry)
                return
            await self._one_by_one(batch, handler, part)
            return
        await self._done(batch, part.open_)

    async def _one_by_one(self, events: Sequence[Event], handler: EventHandler, part: _Partition) -> None:
        for event in events:
            held = part.held.get(event.key)
            if held is not None:
                held.append(event)
                continue
            retry = await self._try(event, handler, part)
            if retry is not None:
                part.held[event.key] = collections.deque()
                self._schedule(retry)

    async def _release(self, key: str, handler: EventHandler, part: _Partition) -> None:
        """The event a key's later events waited for is handled or parked:
        they go now, in order, unless one of them fails in turn."""
        held = part.held.pop(key, None)
        while held:
            event = held.popleft()
            retry = await self._try(event, handler, part)
            if retry is not None:
                part.held[key] = held
                self._schedule(retry)
                return

    def _schedule(self, retry: _Retry) -> None:
        # Off the partition's path: its other tickets go on meanwhile, and the
        # events of this ticket wait in ``held`` (their order is kept).
        part = retry.owner
        loop = asyncio.get_running_loop()
        part.timers[retry.event.key] = loop.call_later(self._delay(retry.tries), part.queue.put_nowait, retry)

    def _failed(self, event: Event, attempt: int, exc: Exception) -> str:
        error = f"{type(exc).__name__}: {exc}"
        metrics.STREAM_FAILURES.inc()
        log.warning("event handler failed", extra={"kind": event.kind, "try": attempt, "error": error})
        return error

    def _delay(self, tries: int) -> float:
        return float(min(self.max_retry_delay, self.retry_delay * 2 ** min(tries - 1, 30)))

    async def _try(
        self,
        event: Event,
        handler: EventHandler,
        part: _Partition,
        *,
        tries: int = 0,
        strikes: int = 0,
        failure: Exception | None = None,
    ) -> _Retry | None:
        """Hand ``event`` alone to ``handler`` (``failure``: what its try
        number ``tries`` just raised) until it is handled or parked, or fails
        on its own: then returns its retry, to be scheduled after its backoff.

        ``tries`` is what handlers see (as with Redis' ``times_delivered``:
        the bot hands off after a few); ``strikes`` only counts failures that
        are the event's own, and decides the dead letter. An outage is waited
        out in place: every event fails alike meanwhile, so holding up the
        partition costs nothing, and the order of the retries is kept."""
        while True:
            if failure is None:
                tries += 1
                try:
                    await handler([dataclasses.replace(event, deliveries=tries)])
                except Exception as exc:  # noqa: BLE001 - counted, then retried or dead-lettered
                    failure = exc
                else:
                    await self._done([event], part.open_)
                    return None
            error = self._failed(event, tries, failure)
            outage = await self.is_outage(failure)
            failure = None
            if outage:
                await asyncio.sleep(self._delay(tries))
                continue
            strikes += 1
            if strikes >= self.max_deliveries:
                await self._dead_letter(event, error, part.open_, deliveries=tries)
                return None
            return _Retry(part, event, tries, strikes)

    async def _dead_letter(self, event: Event, error: str, open_: dict[int, Event], *, deliveries: int) -> None:
        log.error(
            "event dead-lettered",
            extra={"kind": event.kind, "outbox_id": event.outbox_id, "deliveries": deliveries, "error": error},
        )
        if self.on_dead is not None:
            try:
                await self.on_dead(dataclasses.replace(event, deliveries=deliveries), error)
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
