"""The sender's claims under stress, on both engines: a send slower than its
lease, a stalled sender's late result, the database failing just after the
provider took a message, and a sweep full of replies that must wait their turn.

Sends are held open by the test (:class:`GatedChannel`) rather than timed; the
only waits are for the lease to run out, and no assertion depends on timing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from channels.base import ChannelAdapter
from hub.actions import do_post_message
from hub.config import WorkersConfig
from hub.core import Author, Channel, DeliveryStatus, InboundMessage, OutboundMessage, SendResult, utcnow
from hub.sender import Sender
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Message, OutboxRow, Ticket
from tests.hub.test_sender import ScriptedChannel, message, reply

#: A lease short enough to run out during a test; renewed every 0.2 s.
SHORT = WorkersConfig(
    send_lease_seconds=0.6, send_backoff_seconds=0.001, send_backoff_max_seconds=0.002, send_max_attempts=3
)
#: A lease that does not run out (nor get renewed) during a test: the tests
#: that need it lapsed expire it by hand, as for a sender that stalled.
LONG = WorkersConfig(send_lease_seconds=60.0, send_backoff_seconds=0.001, send_backoff_max_seconds=0.002)


@dataclass
class Call:
    message: OutboundMessage
    released: asyncio.Event = field(default_factory=asyncio.Event)
    result: SendResult | None = None

    def finish(self, result: SendResult | None = None) -> None:
        """Let the send answer: ``result``, or ``sent`` with id ``ext-<n>``."""
        self.result = result
        self.released.set()


class GatedChannel(ChannelAdapter):
    """Each of the first ``hold`` sends stays open until the test finishes it
    with a result; later ones answer ``sent`` at once."""

    channel: ClassVar[Channel] = Channel.WEBCHAT

    def __init__(self, hold: int = 1) -> None:
        self.hold = hold
        self.calls: list[Call] = []

    async def send(self, message: OutboundMessage) -> SendResult:
        call = Call(message)
        self.calls.append(call)
        n = len(self.calls)
        if n <= self.hold:
            await call.released.wait()
        return call.result or SendResult(status=DeliveryStatus.SENT, external_id=f"ext-{n}")


async def until(condition: Callable[[], Awaitable[bool]], *, within: float = 10.0) -> bool:
    """Wait for ``condition``; False if it did not come within ``within`` seconds
    (the caller's assertions then say what went wrong)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not await condition():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.01)
    return True


async def status_events(db: Database) -> int:
    async with db.read() as s:
        return sum(p["kind"] == "message.status" for p in (await s.scalars(select(OutboxRow.payload))).all())


async def past_the_claimed_lease(db: Database, mid: int) -> None:
    """Wait until the lease the claim of ``mid`` started with has run out, and
    (when the sender renews it, as it must) a renewal is in place."""
    claimed = (await message(db, mid)).lease_until
    assert claimed is not None
    await asyncio.sleep(max(0.0, (claimed - utcnow()).total_seconds()) + 0.05)

    async def renewed() -> bool:
        lease = (await message(db, mid)).lease_until
        return lease is not None and lease > claimed and lease > utcnow()

    await until(renewed, within=3 * SHORT.send_lease_seconds)


async def test_a_send_slower_than_its_lease_goes_out_once(db: Database) -> None:
    chan = GatedChannel()
    worker = Sender(db, {Channel.WEBCHAT: chan}, SHORT)
    another = Sender(db, {Channel.WEBCHAT: chan}, SHORT)
    mid = await reply(db)
    sending = asyncio.create_task(worker.deliver(mid))

    async def started() -> bool:
        return len(chan.calls) == 1

    assert await until(started)
    await past_the_claimed_lease(db, mid)
    await another.sweep_once()  # another worker's sweeper, while the send still runs
    chan.calls[0].finish()
    await sending
    await another.sweep_once()

    assert len(chan.calls) == 1
    m = await message(db, mid)
    assert (m.status, m.attempts, m.external_id, m.lease_until) == ("sent", 1, "ext-1", None)
    assert await status_events(db) == 1


async def test_a_stale_claims_late_result_does_not_overwrite_the_new_claims(db: Database) -> None:
    chan = GatedChannel(hold=2)
    stalled = Sender(db, {Channel.WEBCHAT: chan}, LONG)
    another = Sender(db, {Channel.WEBCHAT: chan}, LONG)
    mid = await reply(db)
    first = asyncio.create_task(stalled.deliver(mid))

    async def calls(n: int) -> bool:
        return len(chan.calls) == n

    assert await until(lambda: calls(1))
    async with db.write() as s:  # the stalled sender's lease ran out
        await s.execute(update(Message).where(Message.id == mid).values(lease_until=utcnow() - timedelta(seconds=1)))
    second = asyncio.create_task(another.sweep_once())  # requeues it, claims it again
    assert await until(lambda: calls(2))
    assert ((await message(db, mid)).status, (await message(db, mid)).attempts) == ("sending", 2)

    chan.calls[0].finish(SendResult(status=DeliveryStatus.FAILED, reason="the stale claim's answer"))
    await first
    m = await message(db, mid)
    assert (m.status, m.attempts, m.status_reason, m.lease_until is not None) == ("sending", 2, None, True)
    assert await status_events(db) == 0

    chan.calls[1].finish(SendResult(status=DeliveryStatus.SENT, external_id="ext-new"))
    await second
    m = await message(db, mid)
    assert (m.status, m.attempts, m.external_id) == ("sent", 2, "ext-new")
    assert await status_events(db) == 1


async def test_a_lapsed_claims_send_is_saved_when_nobody_took_the_message_yet(db: Database) -> None:
    chan = GatedChannel()
    stalled = Sender(db, {Channel.WEBCHAT: chan}, LONG)
    mid = await reply(db)
    sending = asyncio.create_task(stalled.deliver(mid))

    async def started() -> bool:
        return len(chan.calls) == 1

    assert await until(started)
    async with db.write() as s:  # what a sweeper does to a lapsed lease, before any worker claims it
        await s.execute(
            update(Message)
            .where(Message.id == mid)
            .values(status="queued", lease_until=None, next_attempt_at=utcnow() + timedelta(minutes=5))
        )
    chan.calls[0].finish()
    await sending
    m = await message(db, mid)
    assert (m.status, m.attempts, m.external_id) == ("sent", 1, "ext-1")
    async with db.write() as s:
        await s.execute(update(Message).where(Message.id == mid).values(next_attempt_at=utcnow()))
    await stalled.sweep_once()
    assert len(chan.calls) == 1


class DatabaseAway(Sender):
    """Saving a send's outcome fails (the connection dropped) ``failures`` times,
    or until ``back`` is set."""

    def __init__(
        self,
        db: Database,
        channels: Mapping[Channel, ChannelAdapter],
        config: WorkersConfig,
        *,
        failures: int | None = None,
    ) -> None:
        super().__init__(db, channels, config)
        self.failures = failures
        self.tries = 0
        self.back = asyncio.Event()

    async def _record(self, msg: Message, result: SendResult) -> int | None:
        self.tries += 1
        if self.failures is not None and self.tries > self.failures:
            self.back.set()
        if not self.back.is_set():
            raise OperationalError("COMMIT", {}, ConnectionResetError("server closed the connection unexpectedly"))
        return await super()._record(msg, result)


async def test_a_send_whose_record_fails_twice_goes_out_once(db: Database) -> None:
    chan = ScriptedChannel()
    sender = DatabaseAway(db, {Channel.WEBCHAT: chan}, SHORT, failures=2)
    mid = await reply(db)
    await sender.deliver(mid)
    assert sender.tries == 3
    await sender.deliver(mid)  # the stream redelivers the event
    async with db.write() as s:
        await s.execute(update(Message).where(Message.id == mid).values(next_attempt_at=utcnow()))
    await sender.sweep_once()
    assert len(chan.sent) == 1
    m = await message(db, mid)
    assert (m.status, m.attempts, m.external_id, m.lease_until) == ("sent", 1, f"ext-{mid}", None)
    assert await status_events(db) == 1


async def test_the_lease_holds_while_the_database_is_away(db: Database) -> None:
    chan = ScriptedChannel()
    worker = DatabaseAway(db, {Channel.WEBCHAT: chan}, SHORT)
    another = Sender(db, {Channel.WEBCHAT: chan}, SHORT)
    mid = await reply(db)
    sending = asyncio.create_task(worker.deliver(mid))

    async def failing() -> bool:
        return worker.tries >= 1 or sending.done()

    assert await until(failing)
    await past_the_claimed_lease(db, mid)
    await another.sweep_once()
    worker.back.set()
    await sending
    await another.sweep_once()
    assert len(chan.sent) == 1
    m = await message(db, mid)
    assert (m.status, m.attempts) == ("sent", 1)


async def test_replies_waiting_behind_their_ticket_do_not_starve_other_retries(db: Database) -> None:
    blocked = 510  # more than one sweep's batch of 500
    async with db.write() as s:
        results = await ingest_batch(
            s,
            [
                InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id=f"c{i}:x", sender=f"c{i}")
                for i in range(blocked)
            ],
        )
        firsts = []
        for r in results:
            assert isinstance(r, IngestResult)
            ticket = await s.get(Ticket, r.ticket_id)
            assert ticket is not None
            firsts.append((await do_post_message(s, ticket, body="first", author=Author.AGENT)).id)
            # The second reply waits behind the first, which waits for its retry.
            await do_post_message(s, ticket, body="second", author=Author.AGENT)
        await s.execute(
            update(Message)
            .where(Message.id.in_(firsts))
            .values(attempts=3, next_attempt_at=utcnow() + timedelta(minutes=5))
        )
    other = await reply(db, body="unrelated", sender="other")
    async with db.write() as s:  # its first attempt failed; its retry is due
        await s.execute(update(Message).where(Message.id == other).values(attempts=1, next_attempt_at=utcnow()))
    chan = ScriptedChannel()
    sender = Sender(db, {Channel.WEBCHAT: chan}, LONG)
    await sender.sweep_once()
    assert [o.message_id for o in chan.sent] == [other]
    assert (await message(db, other)).status == "sent"
