"""The sender against a scripted channel: retry with backoff then success,
permanent failure with the reason, a crashed sender's lease, per-ticket order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import ClassVar

from sqlalchemy import select, update

from channels.base import ChannelAdapter
from hub.actions import do_post_message
from hub.config import WorkersConfig
from hub.core import Author, Channel, DeliveryStatus, InboundMessage, OutboundMessage, SendResult, utcnow
from hub.sender import Sender
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Message, OutboxRow, Ticket


class ScriptedChannel(ChannelAdapter):
    """Answers each send with the next scripted result (then success)."""

    channel: ClassVar[Channel] = Channel.WEBCHAT

    def __init__(self, script: Sequence[SendResult | Exception] = ()) -> None:
        self.script = list(script)
        self.sent: list[OutboundMessage] = []

    async def send(self, message: OutboundMessage) -> SendResult:
        self.sent.append(message)
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        return SendResult(status=DeliveryStatus.SENT, external_id=f"ext-{message.message_id}")


FAST = WorkersConfig(send_backoff_seconds=0.001, send_backoff_max_seconds=0.002, send_max_attempts=3)


async def reply(db: Database, body: str = "hello", sender: str = "visitor-1") -> int:
    async with db.write() as s:
        (r,) = await ingest_batch(
            s, [InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id=f"{sender}:{body}", sender=sender)]
        )
        assert isinstance(r, IngestResult)
        ticket = await s.get(Ticket, r.ticket_id)
        assert ticket is not None
        msg = await do_post_message(s, ticket, body=body, author=Author.AGENT)
        return msg.id


async def message(db: Database, mid: int) -> Message:
    async with db.read() as s:
        m = await s.get(Message, mid)
        assert m is not None
        return m


async def due_now(db: Database) -> None:
    async with db.write() as s:
        await s.execute(update(Message).where(Message.status == "queued").values(next_attempt_at=utcnow()))


async def test_retryable_failures_then_success(db: Database) -> None:
    chan = ScriptedChannel(
        [
            SendResult(status=DeliveryStatus.FAILED, reason="provider 503", retryable=True),
            ConnectionResetError("peer reset"),
        ]
    )
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST)
    mid = await reply(db)
    await sender.deliver(mid)
    m = await message(db, mid)
    assert m.status == "queued"
    assert m.status_reason == "provider 503"
    assert m.next_attempt_at is not None
    assert m.next_attempt_at > utcnow() - timedelta(seconds=1)
    await due_now(db)
    await sender.sweep_once()
    assert (await message(db, mid)).status_reason == "ConnectionResetError: peer reset"
    await due_now(db)
    await sender.sweep_once()
    m = await message(db, mid)
    assert m.status == "sent"
    assert m.external_id == f"ext-{mid}"
    assert m.attempts == 3
    assert [o.recipient for o in chan.sent] == ["visitor-1"] * 3
    async with db.read() as s:
        kinds = [p["kind"] for p in (await s.scalars(select(OutboxRow.payload))).all()]
    assert kinds.count("message.status") == 3


async def test_permanent_failure_keeps_the_reason(db: Database) -> None:
    chan = ScriptedChannel([SendResult(status=DeliveryStatus.FAILED, reason="number blocked")])
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST)
    mid = await reply(db)
    await sender.deliver(mid)
    m = await message(db, mid)
    assert (m.status, m.status_reason) == ("failed", "number blocked")
    await sender.deliver(mid)  # a redelivered event does not send again
    assert len(chan.sent) == 1


async def test_gives_up_after_max_attempts(db: Database) -> None:
    flaky = SendResult(status=DeliveryStatus.FAILED, reason="timeout", retryable=True)
    chan = ScriptedChannel([flaky] * 5)
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST)
    mid = await reply(db)
    for _ in range(4):
        await due_now(db)
        await sender.sweep_once()
    m = await message(db, mid)
    assert m.status == "failed"
    assert m.status_reason == "timeout (gave up after 3 attempts)"
    assert len(chan.sent) == 3


async def test_lease_of_a_dead_sender_is_taken_over(db: Database) -> None:
    chan = ScriptedChannel()
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST)
    mid = await reply(db)
    async with db.write() as s:  # a sender claimed it, then died
        await s.execute(
            update(Message)
            .where(Message.id == mid)
            .values(status="sending", lease_until=utcnow() - timedelta(seconds=1))
        )
    await sender.sweep_once()
    assert (await message(db, mid)).status == "sent"


async def test_messages_of_a_ticket_go_out_in_order(db: Database) -> None:
    chan = ScriptedChannel([SendResult(status=DeliveryStatus.FAILED, reason="busy", retryable=True)])
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST)
    first = await reply(db, "one")
    async with db.write() as s:
        ticket = await s.get(Ticket, (await message(db, first)).ticket_id)
        assert ticket is not None
        second = (await do_post_message(s, ticket, body="two", author=Author.AGENT)).id
    await sender.deliver(first)  # fails, waits for its retry
    await sender.deliver(second)  # must not overtake the first
    assert (await message(db, second)).status == "queued"
    await due_now(db)
    await sender.sweep_once()
    assert [o.body for o in chan.sent] == ["one", "one", "two"]


async def test_unconfigured_channel_fails_with_a_reason(db: Database) -> None:
    sender = Sender(db, {}, FAST)
    mid = await reply(db)
    await sender.deliver(mid)
    m = await message(db, mid)
    assert m.status == "failed"
    assert "not configured" in (m.status_reason or "")
