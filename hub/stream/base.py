"""What the hub needs from a stream, whatever carries it.

Delivery is at least once: an event is acknowledged only after its handler has
committed, so a crash redelivers it, and every handler is idempotent. Events
that keep failing go to a dead letter after ``max_deliveries`` tries, where they
are kept (never dropped) and counted in the metrics. A try that failed
because the database was unreachable does not count (see ``is_outage``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.db import outage


def check_cancelled() -> None:
    """Raise if the current task was asked to stop.

    On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives
    just as what it waits for completes; redis-py uses it around socket writes
    and aiosmtplib around every SMTP reply, so a handler may return normally
    from a cancelled task. Consumer loops check at every turn, or a shutdown
    would wait for ever on a loop that never sees its cancellation.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass(frozen=True, slots=True)
class Event:
    """One event on the stream. ``key`` is the ticket id; ``outbox_id`` is the
    row it came from. Whether a key's events are handled in order depends on
    the stream (see ``Stream.consume``)."""

    key: str
    payload: dict[str, Any]
    outbox_id: int = 0
    # Transport-specific id (a Redis entry id); empty in-process.
    entry_id: str = ""
    deliveries: int = 1
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.payload.get("kind", ""))


# Handles a batch; raising means "not handled": the events are retried.
EventHandler = Callable[[Sequence[Event]], Awaitable[None]]
# Told which outbox rows are safe to delete.
OutboxDone = Callable[[Sequence[int]], Awaitable[None]]
# Told which outbox rows the stream took and will not finish: publish them again.
OutboxAbandoned = Callable[[Sequence[int]], None]
# Raises while what the handlers depend on (the database) is unreachable.
Probe = Callable[[], Awaitable[None]]


class Stream(abc.ABC):
    """Carries committed outbox events to the workers."""

    #: True when ``publish`` returning means the event is stored durably by the
    #: stream itself (Redis): the relay may then delete the outbox row at once.
    #: False (in-process): the row is deleted through ``on_done`` once handled.
    durable: bool = False

    #: How long the probe may take to answer.
    probe_timeout: float = 5.0
    #: How long a failed probe is believed: while the database is down, every
    #: event of a batch fails, and each would otherwise wait for a probe.
    probe_memory: float = 1.0

    def __init__(self) -> None:
        self.on_done: OutboxDone | None = None
        # Set by the relay for a stream that is not durable (see there).
        self.on_abandoned: OutboxAbandoned | None = None
        # Set by the relay: asks the database (see is_outage).
        self.probe: Probe | None = None
        self._down_until = 0.0

    async def is_outage(self, exc: BaseException) -> bool:
        """Whether a handler's ``exc`` is an outage, which does not count
        against the event: while it lasts every event fails alike, and
        dead-lettering them would only park good events.

        The kind of error alone is not enough: a missing attachment file is an
        OSError too, and an event failing on one for ever must still reach the
        dead letter instead of being retried for ever. So the database is
        asked: when it answers, the failure is the event's own."""
        if not outage(exc):
            return False
        if self.probe is None:
            return True
        loop = asyncio.get_running_loop()
        if loop.time() < self._down_until:
            return True
        try:
            async with asyncio.timeout(self.probe_timeout):
                await self.probe()
        except Exception:  # noqa: BLE001 - unreachable is the answer sought
            self._down_until = loop.time() + self.probe_memory
            return True
        return False

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, events: Sequence[Event]) -> None:
        """Hand events to the stream; returns once the stream has them."""

    @abc.abstractmethod
    async def consume(self, group: str, consumer: str, handler: EventHandler) -> None:
        """Deliver events to ``handler`` until cancelled or closed. Several
        consumers of one group share the events; each event goes to one.

        No order is promised between the events of one key: in-process they
        are handled one after another in publish order (one task per key's
        partition), but on Redis several consumers handle a ticket's events
        at once, and a retried event comes after later ones. Handlers must
        hold whatever order they need themselves."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the stream cannot be reached."""

    async def backlog(self) -> int:
        """Events published and not yet acknowledged (for metrics and /readyz)."""
        return 0


class LiveBus(abc.ABC):
    """Fan-out of live events (agent inbox updates, web chat deliveries) to every
    web process. Fire and forget: a process that is not listening misses them,
    which is fine because clients reload state from the database on reconnect;
    a listener that may have missed some has its feed ended (see ``listen``),
    so that its client does reconnect."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...

    async def publish_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Several messages at once (a transport may send them in one round trip)."""
        for channel, message in items:
            await self.publish(channel, message)

    def listeners(self, channel: str) -> int | None:
        """How many listen to ``channel`` anywhere, when this bus can tell
        (in-process it can; across processes it cannot: None)."""
        return None

    @abc.abstractmethod
    def listen(self, channel: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
        """Listen to ``channel``: entering returns once the subscription is in
        place (for Redis: confirmed, or given up on after a timeout), so that
        everything published afterwards is received; the messages come from the
        iterator it yields, until the block ends.

        The iterator ends early when the bus closes, or when messages may have
        been lost (Redis: the connection dropped, or the subscription was not
        confirmed when the block began), as soon as listening again would
        miss nothing. A websocket handler then closes its socket, so that the
        client reconnects and reloads from the database."""

    async def subscribe(self, channel: str) -> AsyncIterator[dict[str, Any]]:
        """Messages published on ``channel`` once iteration has started."""
        async with self.listen(channel) as messages:
            async for message in messages:
                yield message
