"""Redis Streams for the workers and Redis pub/sub for the live bus (the scaled-out deployment).

Stream layout, for a stream named ``hub:events``:

* ``hub:events``: the events. An entry is deleted as soon as its consumer group
  has acknowledged it, so ``XLEN`` is the backlog and the stream does not grow
  without bound. Because acknowledging deletes, one stream serves ONE consumer
  group (the hub only has ``workers``); a second group would lose entries.
* ``hub:events:dead``: events that failed ``max_deliveries`` times. Kept until
  an operator deals with them (never trimmed).
* ``hub:events:errors``: a hash of the last handler error of each failing
  entry, so that whichever worker finally dead-letters an entry can say why
  it failed, even if another worker saw the failure.

``publish`` returning means Redis has the entries and the relay deletes the
outbox rows, so Redis must persist them (``appendonly yes``) for the hub to
survive a Redis restart without losing events.

Events of one key (ticket) are NOT handled in order, nor one at a time, once
several consumers share the group: ``XREADGROUP`` hands the next entries to
whichever consumer asks first, without looking at their key, so two workers
may handle a ticket's consecutive events at the same moment, the later one
finishing first (a single consumer reads them in order). A failed event also
stays pending and is retried through ``XAUTOCLAIM`` once it has been idle for
``claim_idle_seconds``, by when later events of its key may have been
handled. So handlers are idempotent and must not assume that an event is the
newest of its ticket, nor that the ticket's earlier events are done: the bot
step waits for its ticket's earlier unanswered messages, and routing applies
a decision only while the ticket is still in the state it was decided for.

An entry being handled (or waiting its turn in a batch) is kept from looking
idle: every third of ``claim_idle_seconds`` its consumer claims it again for
itself with ``JUSTID``, which resets its idle time without counting a delivery.
Only the entries of a consumer that stopped (or a failed event) go idle, so a
slow batch is neither handled twice nor brought closer to the dead letter.

A try that failed because the database was unreachable (``Stream.is_outage``)
gives its delivery back: the entry is claimed again with ``RETRYCOUNT`` one
less, so an outage longer than ``max_deliveries`` retries dead-letters nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from hub import codec, metrics
from hub.stream.base import Event, EventHandler, LiveBus, Stream, check_cancelled

log = logging.getLogger(__name__)

# A handler error is stored with the entry; a traceback-sized message is plenty.
_MAX_ERROR_CHARS = 2000
# The reply shapes parsed here (XREADGROUP, XAUTOCLAIM, pub/sub frames) are
# RESP2's; pinned so that a change of redis-py's default cannot reshape them.
_PROTOCOL = 2
_BACKOFF_BASE = 0.1
_BACKOFF_MAX = 5.0

# KEYS[1]: the stream; ARGV: the group, the consumer, then entry ids. Resets the
# idle time of those entries still pending for this consumer (JUSTID: without
# counting a delivery). In one script, so that an entry acknowledged meanwhile,
# or taken by another worker after all, is not taken back.
_HOLD_SCRIPT = """
local held = 0
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    held = held + 1
  end
end
return held
"""

# KEYS[1]: the stream; ARGV: the group, the consumer. Removes a consumer that
# holds nothing, so the group lists only live workers. In one script: an entry
# read by it in between would be lost from the pending list with it.
_FORGET_SCRIPT = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return 0
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) >= 0 and 1 or 0
"""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]


def _backoff(attempt: int, cap: float = _BACKOFF_MAX) -> float:
    """Capped exponential backoff with jitter: every web and worker process
    loses Redis at the same moment (a restart, a failover), and without it
    they would all reconnect in the same instants, each time."""
    return float(min(cap, _BACKOFF_BASE * 2 ** min(attempt, 16)) * random.uniform(0.5, 1.0))


class RedisStream(Stream):
    durable = True

    def __init__(
        self,
        url: str,
        stream: str = "hub:events",
        *,
        max_deliveries: int = 5,
        claim_idle_seconds: float = 30.0,
        max_batch: int = 200,
        block_ms: int = 1000,
        client_name: str | None = "hub-stream",
    ) -> None:
        super().__init__()
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if claim_idle_seconds <= 0 or max_batch < 1 or block_ms < 1:
            raise ValueError("claim_idle_seconds, max_batch and block_ms must be positive")
        self.url = url
        self.stream = stream
        self.dead_stream = f"{stream}:dead"
        self.errors_key = f"{stream}:errors"
        self.max_deliveries = max_deliveries
        self.claim_idle_seconds = claim_idle_seconds
        self.max_batch = max_batch
        self.block_ms = block_ms
        # Shown by CLIENT LIST: tells the workers' connections apart from the rest.
        self.client_name = client_name
        self._client: aioredis.Redis | None = None
        self._closed = asyncio.Event()
        #: (group, consumer) of every consume loop this process ran.
        self._consumers: set[tuple[str, str]] = set()

    async def start(self) -> None:
        if self._client is not None:
            return
        self._closed.clear()
        self._client = aioredis.Redis.from_url(
            self.url,
            decode_responses=True,
            protocol=_PROTOCOL,
            # A blocking XREADGROUP must not be mistaken for a dead socket.
            socket_timeout=self.block_ms / 1000 + 5.0,
            socket_connect_timeout=5.0,
            client_name=self.client_name,
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        self._closed.set()
        if client is not None:
            await self._forget_consumers(client)
            # Also disconnects the connections consumers are blocked on, so
            # their ``consume`` returns instead of waiting out BLOCK.
            await client.aclose()

    async def _forget_consumers(self, client: aioredis.Redis) -> None:
        """A clean stop: this process's consumers leave the group unless they
        still hold entries (those stay for another worker to claim). Without
        it every restart leaves a dead consumer listed for good."""
        for group, consumer in sorted(self._consumers):
            try:
                await client.eval(_FORGET_SCRIPT, 1, self.stream, group, consumer)
            except (RedisError, OSError) as exc:
                log.warning(
                    "could not remove a stopped consumer from its group",
                    extra={"group": group, "consumer": consumer, "error": _describe(exc)},
                )
        self._consumers.clear()

    def _require(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisStream is not started (or already closed)")
        return self._client

    async def ping(self) -> None:
        await self._require().ping()

    async def backlog(self) -> int:
        return int(await self._require().xlen(self.stream))

    async def dead_letter_count(self) -> int:
        """Entries parked in ``<stream>:dead``."""
        return int(await self._require().xlen(self.dead_stream))

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        client = self._require()
        # No transaction: a half-applied batch is fine because the relay only
        # deletes the outbox rows after ``publish`` returns, so it republishes
        # the whole batch and the idempotent handlers absorb the duplicates.
        async with client.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(
                    self.stream,
                    {
                        "key": event.key,
                        "payload": codec.dumps(event.payload),
                        "outbox_id": str(event.outbox_id),
                    },
                )
            await pipe.execute()
        metrics.STREAM_PUBLISHED.inc(len(events))

    async def consume(self, group: str, consumer: str, handler: EventHandler) -> None:
        client = self._require()
        self._consumers.add((group, consumer))
        loop = asyncio.get_running_loop()
        claim_every = self.claim_idle_seconds / 2
        next_claim = 0.0  # reclaim at once: a restarted worker picks up its own leftovers
        group_ready = False
        failures = 0
        while not self._closed.is_set():
            check_cancelled()
            try:
                if not group_ready:
                    await self._ensure_group(client, group)
                    group_ready = True
                if loop.time() >= next_claim:
                    await self._reclaim(client, group, consumer, handler)
                    next_claim = loop.time() + claim_every
                # Never BLOCK past the next reclaim; BLOCK 0 would mean forever.
                block = max(1, min(self.block_ms, int((next_claim - loop.time()) * 1000)))
                reply = await client.xreadgroup(group, consumer, {self.stream: ">"}, count=self.max_batch, block=block)
                events: list[Event] = []
                broken: list[tuple[str, dict[str, str], str]] = []
                for entry_id, fields in _entries(reply):
                    if fields is None:
                        continue
                    self._decode(entry_id, fields, 1, events, broken)
                if broken:
                    await self._dead_letter(client, group, [(i, f, 1, e) for i, f, e in broken])
                if events:
                    await self._handle(client, group, consumer, handler, events)
                failures = 0
            except ResponseError as exc:
                if self._closed.is_set():
                    return
                if str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    # The stream key or the group was deleted under us (an
                    # operator reset, or a test cleaning up): recreate them.
                    group_ready = False
                    continue
                failures += 1
                log.error("stream consumer error", extra={"group": group, "error": _describe(exc)})
                await self._sleep(_backoff(failures))
            except (RedisError, OSError) as exc:
                if self._closed.is_set():
                    return
                failures += 1
                log.warning(
                    "stream consumer lost Redis; retrying",
                    extra={"group": group, "consumer": consumer, "error": _describe(exc)},
                )
                await self._sleep(_backoff(failures))

    async def _sleep(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: see check_cancelled.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closed.wait()

    async def _ensure_group(self, client: aioredis.Redis, group: str) -> None:
        try:
            # Id 0, not $: events published before the first worker ever
            # started are still delivered.
            await client.xgroup_create(self.stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    def _decode(
        self,
        entry_id: str,
        fields: dict[str, str],
        deliveries: int,
        events: list[Event],
        broken: list[tuple[str, dict[str, str], str]],
    ) -> None:
        try:
            payload = codec.loads(fields["payload"])
            if not isinstance(payload, dict):
                raise TypeError("payload is not a JSON object")
            events.append(
                Event(
                    key=fields.get("key", ""),
                    payload=payload,
                    outbox_id=int(fields.get("outbox_id") or 0),
                    entry_id=entry_id,
                    deliveries=deliveries,
                )
            )
        except (KeyError, ValueError, TypeError) as exc:
            # No handler can ever succeed on it; retrying would only delay
            # the dead letter.
            broken.append((entry_id, fields, f"undecodable entry: {_describe(exc)}"))

    async def _handle(
        self, client: aioredis.Redis, group: str, consumer: str, handler: EventHandler, events: list[Event]
    ) -> None:
        held = {event.entry_id for event in events}
        holder = asyncio.create_task(self._hold(client, group, consumer, held), name=f"{self.stream}:hold:{consumer}")
        try:
            await self._handle_held(client, group, consumer, handler, events, held)
        finally:
            held.clear()
            holder.cancel()
            await asyncio.wait({holder})

    async def _hold(self, client: aioredis.Redis, group: str, consumer: str, held: set[str]) -> None:
        """Until cancelled, keep the ``held`` entries from going idle (see the
        module's docstring)."""
        every = self.claim_idle_seconds / 3
        while True:
            await asyncio.sleep(every)
            if not held:
                continue
            try:
                await client.eval(_HOLD_SCRIPT, 1, self.stream, group, consumer, *sorted(held))
            except (RedisError, OSError) as exc:
                # The handler goes on; at worst another worker reclaims them.
                log.warning(
                    "could not hold on to pending events",
                    extra={"group": group, "consumer": consumer, "error": _describe(exc)},
                )

    async def _handle_held(
        self,
        client: aioredis.Redis,
        group: str,
        consumer: str,
        handler: EventHandler,
        events: list[Event],
        held: set[str],
    ) -> None:
        try:
            await handler(events)
        except Exception as exc:  # noqa: BLE001 - the events are retried one by one below
            if len(events) == 1:
                # Let it go idle, so that it is retried after claim_idle_seconds.
                held.discard(events[0].entry_id)
                await self._failed(client, group, consumer, events[0], exc)
                return
            log.info(
                "event batch failed; retrying one by one",
                extra={"group": group, "size": len(events), "error": _describe(exc)},
            )
        else:
            await self._ack(client, group, events)
            return
        done: list[Event] = []
        for event in events:
            try:
                await handler([event])
            except Exception as exc:  # noqa: BLE001 - left pending, retried after claim_idle_seconds
                held.discard(event.entry_id)
                await self._failed(client, group, consumer, event, exc)
            else:
                done.append(event)
        if done:
            await self._ack(client, group, done)

    async def _failed(self, client: aioredis.Redis, group: str, consumer: str, event: Event, exc: Exception) -> None:
        error = _describe(exc)
        outage = await self.is_outage(exc)
        metrics.STREAM_FAILURES.inc()
        log.warning(
            "event handler failed",
            extra={
                "group": group,
                "kind": event.kind,
                "entry_id": event.entry_id,
                "outbox_id": event.outbox_id,
                "try": event.deliveries,
                "outage": outage,
                "error": error,
            },
            exc_info=exc,
        )
        # Not acked: the entry stays pending and XAUTOCLAIM hands it out again.
        await client.hset(self.errors_key, f"{group}:{event.entry_id}", error)
        if outage:
            # Not the event's fault: this delivery does not count. The claim
            # also resets its idle time, so it is tried again after
            # claim_idle_seconds, not at once.
            await client.xclaim(
                self.stream,
                group,
                consumer,
                0,
                [event.entry_id],
                retrycount=max(event.deliveries - 1, 0),
                justid=True,
            )

    async def _ack(self, client: aioredis.Redis, group: str, events: Sequence[Event]) -> None:
        ids = [event.entry_id for event in events]
        async with client.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, group, *ids)
            pipe.xdel(self.stream, *ids)
            # For every entry, not only redelivered ones: a failure during an
            # outage gives its delivery back (see _failed), so an entry whose
            # error was recorded may well succeed with ``deliveries`` 1, and
            # its field would stay in the hash for ever.
            pipe.hdel(self.errors_key, *(f"{group}:{entry_id}" for entry_id in ids))
            await pipe.execute()
        metrics.STREAM_HANDLED.inc(len(ids))

    async def _reclaim(self, client: aioredis.Redis, group: str, consumer: str, handler: EventHandler) -> None:
        min_idle_ms = max(1, int(self.claim_idle_seconds * 1000))
        cursor = "0-0"
        while True:
            check_cancelled()
            reply = await client.xautoclaim(
                self.stream, group, consumer, min_idle_ms, start_id=cursor, count=self.max_batch
            )
            cursor = str(reply[0])
            claimed: list[tuple[str, dict[str, str] | None]] = list(reply[1])
            if claimed:
                await self._handle_claimed(client, group, consumer, handler, claimed)
            if cursor == "0-0":
                return

    async def _handle_claimed(
        self,
        client: aioredis.Redis,
        group: str,
        consumer: str,
        handler: EventHandler,
        claimed: list[tuple[str, dict[str, str] | None]],
    ) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for entry_id, _ in claimed:
                pipe.xpending_range(self.stream, group, min=entry_id, max=entry_id, count=1)
            pending = await pipe.execute()
        events: list[Event] = []
        broken: list[tuple[str, dict[str, str], str]] = []
        dead: list[tuple[str, dict[str, str], int, str]] = []
        gone: list[str] = []
        for (entry_id, fields), info in zip(claimed, pending, strict=True):
            if not info or info[0]["consumer"] != consumer:
                # Acked meanwhile by the slow (not dead) consumer we took it
                # from, or claimed by another worker: not ours any more.
                continue
            if fields is None:
                gone.append(entry_id)  # deleted from the stream, still pending (Redis < 7)
                continue
            deliveries = int(info[0]["times_delivered"])
            if deliveries > self.max_deliveries:
                dead.append((entry_id, fields, deliveries, ""))
            else:
                self._decode(entry_id, fields, deliveries, events, broken)
        if gone:
            await client.xack(self.stream, group, *gone)
        dead.extend((entry_id, fields, 1, error) for entry_id, fields, error in broken)
        if dead:
            await self._dead_letter(client, group, dead)
        if events:
            metrics.STREAM_RECLAIMED.inc(len(events))
            log.info("reclaimed pending events", extra={"group": group, "count": len(events)})
            await self._handle(client, group, consumer, handler, events)

    async def _dead_letter(
        self, client: aioredis.Redis, group: str, entries: list[tuple[str, dict[str, str], int, str]]
    ) -> None:
        error_fields = [f"{group}:{entry_id}" for entry_id, _, _, _ in entries]
        known = await client.hmget(self.errors_key, error_fields)
        # One transaction: the entry is either still pending or in the dead
        # letter, never both (duplicated) nor neither (lost).
        async with client.pipeline(transaction=True) as pipe:
            for (entry_id, fields, deliveries, error), last_error in zip(entries, known, strict=True):
                record: dict[Any, Any] = {
                    **fields,
                    "entry_id": entry_id,
                    "deliveries": str(deliveries),
                    "group": group,
                    "error": error or last_error or "",
                }
                pipe.xadd(self.dead_stream, record)
            ids = [entry_id for entry_id, _, _, _ in entries]
            pipe.xack(self.stream, group, *ids)
            pipe.xdel(self.stream, *ids)
            pipe.hdel(self.errors_key, *error_fields)
            await pipe.execute()
        metrics.STREAM_DEAD_LETTERED.inc(len(entries))
        for (entry_id, fields, deliveries, error), last_error in zip(entries, known, strict=True):
            log.error(
                "event dead-lettered",
                extra={
                    "group": group,
                    "entry_id": entry_id,
                    "outbox_id": fields.get("outbox_id", ""),
                    "deliveries": deliveries,
                    "error": error or last_error or "",
                },
            )


def _entries(reply: Any) -> list[tuple[str, dict[str, str] | None]]:
    """The entries of an XREADGROUP reply over one stream (RESP2 shape)."""
    if not reply:
        return []
    found: list[tuple[str, dict[str, str] | None]] = []
    for _stream, entries in reply:
        found.extend((str(entry_id), fields) for entry_id, fields in entries)
    return found


def _connected(pubsub: PubSub) -> bool:
    # ``PubSub.connection`` is untyped (mypy infers ``None``).
    connection: Any = getattr(pubsub, "connection", None)
    return connection is not None and bool(connection.is_connected)


LiveQueue = asyncio.Queue[dict[str, Any] | None]  # None: the feed ends (see _end)


@dataclass(eq=False)
class _Channel:
    listeners: set[LiveQueue] = field(default_factory=set)
    # Set once Redis has confirmed the SUBSCRIBE on the current connection.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Listeners whose block has begun (``listen`` yielded).
    open: set[LiveQueue] = field(default_factory=set)
    # Open listeners that may have missed messages: they listened while a
    # connection was lost, or began without a confirmed subscription. Their
    # feeds end once the SUBSCRIBE is confirmed again (see _dispatch).
    missed: set[LiveQueue] = field(default_factory=set)


def _end(queue: LiveQueue) -> None:
    """End a listener's feed. It goes ahead of whatever a full queue holds:
    the listener reloads from the database anyway."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(None)


class RedisLiveBus(LiveBus):
    """Live events through Redis pub/sub, over ONE connection per instance.

    A web process may hold thousands of websocket listeners; they share the
    connection: a reader task dispatches each Redis message to the local
    listeners' queues, and the Redis channel is subscribed when its first
    local listener arrives and unsubscribed when its last one leaves.

    ``listen(channel)`` registers the listener and waits (up to
    ``subscribe_timeout``) for Redis to confirm the subscription before its
    block begins: everything published after that is received.

    If the connection drops, the reader reconnects with capped exponential
    backoff and jitter, and subscribes again to every channel that has
    listeners. Messages published meanwhile are lost, so once a channel's
    subscription is confirmed again, the feed of each of its listeners that
    was listening ends (as does one whose block began before Redis confirmed
    its subscription): its websocket handler closes the socket, and the client
    reconnects and reloads what it missed from the database. Ending the feed
    then, not when the connection drops, makes the client reconnect once,
    when a new subscription will hold, instead of reloading into a
    subscription that would miss messages again.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "hub:live",
        *,
        max_queue: int = 10_000,
        client_name: str | None = "hub-live",
        keepalive_seconds: float = 15.0,
        subscribe_timeout: float = 5.0,
        max_backoff_seconds: float = _BACKOFF_MAX,
        max_publish_connections: int = 32,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_publish_connections = max_publish_connections
        self._max_queue = max_queue
        self._client_name = client_name
        self._keepalive = keepalive_seconds
        self._subscribe_timeout = subscribe_timeout
        self._max_backoff = max_backoff_seconds
        self._channels: dict[str, _Channel] = {}
        # SUBSCRIBEs sent on the current connection and not yet confirmed, per
        # channel: a late confirmation of an earlier SUBSCRIBE (before an
        # UNSUBSCRIBE) must not mark a newer one as ready.
        self._unconfirmed: dict[str, int] = {}
        # Serialises "is this the first/last listener" with the SUBSCRIBE or
        # UNSUBSCRIBE it implies and with the reader's resubscribe on connect,
        # so Redis ends up subscribed to exactly the channels with listeners.
        self._lock = asyncio.Lock()
        self._pub: aioredis.Redis | None = None
        self._outgoing: list[tuple[str, str, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._sub: aioredis.Redis | None = None
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    def _name(self, channel: str) -> str:
        return f"{self.prefix}:{channel}"

    async def start(self) -> None:
        if self._reader is not None:
            return
        self._closed = False
        # Thousands of websockets publish at once: a blocking pool makes them
        # wait for one of a bounded set of connections, where redis-py's
        # default pool would fail with "Too many connections".
        self._pub = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_publish_connections,
                timeout=10,
                protocol=_PROTOCOL,
                socket_timeout=5.0,
                socket_connect_timeout=5.0,
            )
        )
        self._sub = aioredis.Redis.from_url(
            self.url,
            decode_responses=True,
            protocol=_PROTOCOL,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
            client_name=self._client_name,
            # redis-py's own retry would reconnect the pub/sub socket behind
            # our back, without the subscriptions; the reader reconnects instead.
            retry=Retry(NoBackoff(), 0),
        )
        self._reader = asyncio.create_task(self._run_reader(), name="redis-live-bus-reader")

    async def close(self) -> None:
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            # Cancel until it ends: a single cancellation can be swallowed
            # (see check_cancelled) and the reader may be waiting for a frame.
            while not reader.done():
                reader.cancel()
                await asyncio.wait({reader}, timeout=0.1)
        # End every listener's iteration instead of leaving it waiting forever.
        for state in self._channels.values():
            for queue in state.listeners:
                _end(queue)
        self._channels.clear()
        self._unconfirmed.clear()
        if self._flusher is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._flusher, 5.0)
        for *_, fut in self._outgoing:
            if not fut.done():
                fut.set_exception(RuntimeError("RedisLiveBus closed before the message was sent"))
        self._outgoing = []
        for client in (self._pub, self._sub):
            if client is not None:
                await client.aclose()
        self._pub = self._sub = None

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """Publishes made while one pipeline is on the wire go together in the
        next: one round trip per event-loop turn instead of one per message
        (a web process echoes every visitor message). Each caller still waits
        for, and hears about a failure of, its own message."""
        if self._pub is None:
            raise RuntimeError("RedisLiveBus is not started (or already closed)")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outgoing.append((self._name(channel), codec.dumps(message), fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="redis-live-bus-publish")
        await fut

    async def _flush(self) -> None:
        while self._outgoing and self._pub is not None:
            batch, self._outgoing = self._outgoing, []
            try:
                async with self._pub.pipeline(transaction=False) as pipe:
                    for name, data, _ in batch:
                        pipe.publish(name, data)
                    await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - handed to each waiting publisher
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    async def publish_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if self._pub is None:
            raise RuntimeError("RedisLiveBus is not started (or already closed)")
        if not items:
            return
        # One round trip for a worker's whole batch instead of one per event.
        async with self._pub.pipeline(transaction=False) as pipe:
            for channel, message in items:
                pipe.publish(self._name(channel), codec.dumps(message))
            await pipe.execute()

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        if self._closed:
            raise RuntimeError("RedisLiveBus is closed")
        name = self._name(channel)
        queue: LiveQueue = asyncio.Queue(self._max_queue)
        try:
            state = await self._add_listener(name, queue)
            check_cancelled()  # the SUBSCRIBE write may have swallowed it
            try:
                async with asyncio.timeout(self._subscribe_timeout):
                    await state.ready.wait()
            except TimeoutError:
                # Redis is unreachable: listen anyway, the reader subscribes
                # once it reconnects.
                log.warning("live subscription not confirmed yet", extra={"channel": name})
            state.open.add(queue)
            if not state.ready.is_set():
                # What is published until Redis confirms is lost: the feed
                # ends then, so that the client reloads.
                state.missed.add(queue)
            yield _until_closed(queue)
        finally:
            await self._remove_listener(name, queue)

    async def _add_listener(self, name: str, queue: LiveQueue) -> _Channel:
        async with self._lock:
            state = self._channels.get(name)
            if state is None:
                state = self._channels[name] = _Channel()
                await self._send("SUBSCRIBE", name)
            state.listeners.add(queue)
            return state

    async def _remove_listener(self, name: str, queue: LiveQueue) -> None:
        async with self._lock:
            state = self._channels.get(name)
            if state is None:
                return
            state.listeners.discard(queue)
            state.open.discard(queue)
            state.missed.discard(queue)
            if not state.listeners:
                del self._channels[name]
                await self._send("UNSUBSCRIBE", name)

    async def _send(self, command: str, name: str) -> None:
        """Send a (UN)SUBSCRIBE on the current connection; the lock is held."""
        pubsub = self._pubsub
        if pubsub is None or not _connected(pubsub):
            # Between connections: the reader subscribes to every channel
            # with listeners when it reconnects.
            return
        if command == "SUBSCRIBE":
            # Counted before sending: the reader may read the confirmation
            # before this coroutine resumes.
            self._unconfirmed[name] = self._unconfirmed.get(name, 0) + 1
        try:
            # Only sends: the reply is read (and the SUBSCRIBE confirmed) by the reader.
            await pubsub.execute_command(command, name)
        except (RedisError, OSError) as exc:
            # The connection is broken; the reader notices, reconnects and
            # subscribes again from ``self._channels``.
            log.info("live bus %s failed", command, extra={"channel": name, "error": _describe(exc)})

    async def _run_reader(self) -> None:
        failures = 0
        while not self._closed:
            check_cancelled()
            assert self._sub is not None
            pubsub = self._sub.pubsub()
            try:
                await cast(Any, pubsub).connect()  # untyped in redis-py
                async with self._lock:
                    self._pubsub = pubsub
                    self._unconfirmed.clear()
                    names = list(self._channels)
                    if names:
                        self._unconfirmed.update(dict.fromkeys(names, 1))
                        await pubsub.execute_command("SUBSCRIBE", *names)
                failures = 0
                await self._read(pubsub)
            except (RedisError, OSError) as exc:
                failures += 1
                log.warning(
                    "live bus connection lost; reconnecting",
                    extra={"error": _describe(exc), "attempt": failures},
                )
            finally:
                async with self._lock:
                    if self._pubsub is pubsub:
                        self._pubsub = None
                    for state in self._channels.values():
                        state.ready.clear()
                        # Until the next connection is subscribed, what is
                        # published does not reach them.
                        state.missed |= state.open
                await cast(Any, pubsub).aclose()  # untyped in redis-py
            # Backoff grows only while connecting keeps failing: ``failures``
            # is reset once a connection is up.
            await asyncio.sleep(_backoff(failures, self._max_backoff))

    async def _read(self, pubsub: PubSub) -> None:
        """Dispatch frames until the connection fails (raises)."""
        pinged = False
        while not self._closed:
            check_cancelled()
            if not _connected(pubsub):
                # parse_response would reconnect silently, without our
                # subscriptions; start over instead.
                raise RedisConnectionError("live bus connection closed")
            frame = await pubsub.parse_response(block=False, timeout=self._keepalive)
            if frame is None:
                if pinged:
                    # TCP can stay "open" forever after a silent network
                    # failure; an unanswered PING is how we notice.
                    raise RedisConnectionError("no reply to the live bus keepalive PING")
                await pubsub.execute_command("PING")
                pinged = True
                continue
            pinged = False
            self._dispatch(frame)

    def _dispatch(self, frame: Any) -> None:
        if not isinstance(frame, list) or len(frame) < 3:
            return  # a PONG
        kind, name, data = frame[0], frame[1], frame[2]
        if kind == "message":
            state = self._channels.get(name)
            if state is None:
                return  # in flight when its last listener left
            try:
                message = codec.loads(data)
            except ValueError:
                log.warning("undecodable live message dropped", extra={"channel": name})
                return
            for queue in state.listeners:
                try:
                    queue.put_nowait(message)
                except asyncio.QueueFull:
                    # A stuck listener must not grow memory without bound; it
                    # catches up from the database when it reconnects.
                    metrics.LIVE_DROPPED.inc()
        elif kind == "subscribe":
            left = self._unconfirmed.get(name, 0) - 1
            if left > 0:
                self._unconfirmed[name] = left
                return
            self._unconfirmed.pop(name, None)
            state = self._channels.get(name)
            if state is not None:
                state.ready.set()
                # Listening works again: those that missed messages meanwhile
                # learn it now (see the class's docstring).
                for queue in state.missed:
                    _end(queue)
                state.missed.clear()


async def _until_closed(queue: LiveQueue) -> AsyncIterator[dict[str, Any]]:
    """A listener's messages; ``None`` in the queue means the bus closed or
    the listener missed messages (see RedisLiveBus)."""
    while True:
        message = await queue.get()
        if message is None:
            return
        yield message
