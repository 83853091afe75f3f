"""The sender against a scripted channel: retry with backoff then success,
permanent failure with the reason, a crashed sender's lease, per-ticket order;
pacing each inbox to its channel's send rate (on a fake clock: no real sleeps)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import ClassVar

import pytest
from sqlalchemy import select, update

from channels.base import SEND_ATTEMPT, ChannelAdapter
from hub.actions import do_ensure_inbox, do_post_message, do_record_delivery
from hub.config import ConfigError, WorkersConfig, load_config
from hub.core import Author, Channel, DeliveryStatus, InboundMessage, OutboundMessage, SendResult, utcnow
from hub.sender import SWEEP_BATCH, Sender, TokenBucket
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


async def _second_reply(db: Database, first: int, body: str) -> int:
    async with db.write() as s:
        ticket = await s.get(Ticket, (await message(db, first)).ticket_id)
        assert ticket is not None
        return (await do_post_message(s, ticket, body=body, author=Author.AGENT)).id


async def test_a_stored_reply_that_cannot_be_sent_fails_and_frees_the_next(db: Database) -> None:
    """A row no OutboundMessage can be made of (here an attachment larger than
    a browser reads exactly, as the API once let through) fails at once with
    the field named, instead of going round sending -> queued for ever in
    front of every later reply of its ticket."""
    chan = ScriptedChannel()
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST)
    first = await reply(db, "see attached")
    async with db.write() as s:
        await s.execute(
            update(Message)
            .where(Message.id == first)
            .values(
                attachments=[{"url": "/attachments/abc/report.pdf", "content_type": "application/pdf", "size": 2**53}]
            )
        )
    second = await _second_reply(db, first, "a later reply")
    await sender.deliver(first)
    m = await message(db, first)
    assert (m.status, m.attempts) == ("failed", 1)
    assert "attachments.0.size" in (m.status_reason or "")
    assert (await message(db, second)).status == "sent"
    assert [o.body for o in chan.sent] == ["a later reply"]


async def test_a_context_that_cannot_be_loaded_is_a_retryable_failure(db: Database) -> None:
    chan = ScriptedChannel()
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST)

    async def broken(session: object, msg: Message) -> dict[str, object]:
        raise ConnectionResetError("database went away")

    sender.context[Channel.WEBCHAT] = broken
    mid = await reply(db)
    await sender.deliver(mid)
    m = await message(db, mid)
    assert (m.status, m.status_reason) == (
        "queued",
        "could not prepare the send: ConnectionResetError: database went away",
    )
    assert chan.sent == []
    del sender.context[Channel.WEBCHAT]
    await due_now(db)
    await sender.sweep_once()
    assert (await message(db, mid)).status == "sent"


async def test_a_message_claimed_past_its_attempts_fails_without_a_send(db: Database) -> None:
    """Claims that never record an outcome (the sender died, or raised, every
    time) still count: past send_max_attempts the message fails, and the
    ticket's later replies go out."""
    chan = ScriptedChannel()
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST)
    first = await reply(db, "one")
    second = await _second_reply(db, first, "two")
    # As the sweeper leaves it when the last allowed claim's lease ran out.
    async with db.write() as s:
        await s.execute(
            update(Message).where(Message.id == first).values(status="queued", attempts=FAST.send_max_attempts)
        )
    await sender.deliver(first)
    m = await message(db, first)
    assert m.status == "failed"
    assert f"gave up after {FAST.send_max_attempts} attempts" in (m.status_reason or "")
    assert (await message(db, second)).status == "sent"
    assert [o.body for o in chan.sent] == ["two"]


# --- pacing ----------------------------------------------------------------------------


class FakeClock:
    """Monotonic seconds that move only when a test moves them."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class PacedChannel(ScriptedChannel):
    """A channel allowing two sends per second; notes the (fake) time of each send."""

    rate_per_second: ClassVar[float | None] = 2.0

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.times: list[float] = []

    async def send(self, message: OutboundMessage) -> SendResult:
        self.times.append(self.clock())
        return await super().send(message)


class OnePerSecondChannel(PacedChannel):
    rate_per_second: ClassVar[float | None] = 1.0


def paced_sends(bucket: TokenBucket, clock: FakeClock, n: int) -> list[float]:
    """``n`` sends one after another, each waiting for its token: when each went."""
    times = []
    for _ in range(n):
        clock.now += bucket.reserve()
        times.append(clock.now)
    return times


def test_n_sends_at_rate_take_the_expected_time() -> None:
    clock = FakeClock()
    times = paced_sends(TokenBucket(5.0, clock=clock), clock, 20)
    # A burst of five, then one every 1/5 s: the 20th goes (20 - 5) / 5 s later.
    assert times[:5] == [100.0] * 5
    assert times == pytest.approx([100.0] * 5 + [100.0 + k / 5 for k in range(1, 16)])
    assert clock.now == pytest.approx(103.0)

    slow = FakeClock()
    assert paced_sends(TokenBucket(1.0, clock=slow), slow, 4) == pytest.approx([100.0, 101.0, 102.0, 103.0])


def test_callers_at_the_same_moment_get_successive_slots() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, clock=clock)
    assert [bucket.reserve() for _ in range(5)] == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5])


def test_idle_time_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, clock=clock)
    assert [bucket.reserve() for _ in range(2)] == [0.0, 0.0]
    clock.now += 60
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])


def test_a_refunded_token_is_there_for_the_next_send() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, clock=clock)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(1.0)
    bucket.refund()
    assert bucket.reserve() == pytest.approx(1.0)


def test_inboxes_do_not_share_a_bucket_and_no_rate_means_no_bucket(db: Database) -> None:
    clock = FakeClock()
    paced = PacedChannel(clock)
    sender = Sender(db, {Channel.TELEGRAM: paced}, FAST, clock=clock)
    one = sender.bucket("telegram", 1, paced)
    assert one is not None
    assert sender.bucket("telegram", 1, paced) is one
    other = sender.bucket("telegram", 2, paced)
    assert other is not None
    assert other is not one
    assert [one.reserve() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])
    assert other.reserve() == 0.0  # inbox 1's burst left inbox 2's tokens alone
    assert sender.bucket("webchat", 1, ScriptedChannel()) is None


async def post(db: Database, after: int, body: str) -> int:
    """Another agent reply on the ticket of message ``after``."""
    async with db.write() as s:
        ticket = await s.get(Ticket, (await message(db, after)).ticket_id)
        assert ticket is not None
        return (await do_post_message(s, ticket, body=body, author=Author.AGENT)).id


async def test_a_burst_for_one_inbox_is_spread_at_its_rate_in_ticket_order(db: Database) -> None:
    clock = FakeClock()
    chan = PacedChannel(clock)
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST, clock=clock)
    a1 = await reply(db, "a1", sender="visitor-a")
    a2 = await post(db, a1, "a2")
    a3 = await post(db, a1, "a3")
    b1 = await reply(db, "b1", sender="visitor-b")
    c1 = await reply(db, "c1", sender="visitor-c")
    for mid in (a3, a2, a1, b1, c1):  # the later ones of a ticket wait for the first
        await sender.deliver(mid)
    # The burst (two) goes at once; nobody waits in place for the rest.
    assert [o.body for o in chan.sent] == ["a1", "a2"]
    assert clock.now == 100.0
    for _ in range(6):  # the sweeper, every half second of the fake clock
        clock.now += 0.5
        await due_now(db)
        await sender.sweep_once()
    sent = [o.body for o in chan.sent]
    # In order within a ticket; the sweep may take other tickets in any order.
    assert sorted(sent) == ["a1", "a2", "a3", "b1", "c1"]
    assert [b for b in sent if b.startswith("a")] == ["a1", "a2", "a3"]
    # Never more than the rate: one more every half second after the burst.
    assert chan.times == pytest.approx([100.0, 100.0, 100.5, 101.0, 101.5])
    for mid in (a1, a2, a3, b1, c1):
        m = await message(db, mid)
        assert (m.status, m.attempts) == ("sent", 1)


async def test_a_message_without_a_token_is_requeued_for_when_it_is_due(db: Database) -> None:
    clock = FakeClock()
    chan = OnePerSecondChannel(clock)
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST, clock=clock)
    x = await reply(db, "x", sender="visitor-x")
    y = await reply(db, "y", sender="visitor-y")
    y2 = await post(db, y, "y2")
    before = utcnow()
    await sender.deliver(x)  # the inbox's one token
    await sender.deliver(y)  # its token is 1 s away
    await sender.deliver(y2)  # behind y in its ticket: stays queued
    assert [o.body for o in chan.sent] == ["x"]
    m = await message(db, y)
    assert (m.status, m.attempts, m.lease_until) == ("queued", 0, None)
    assert m.next_attempt_at is not None
    assert m.next_attempt_at >= before + timedelta(seconds=1)
    assert (await message(db, y2)).status == "queued"

    clock.now += 1.0
    await due_now(db)
    await sender.sweep_once()  # y goes; y2, next in line, waits for its own token
    assert [o.body for o in chan.sent] == ["x", "y"]
    assert (await message(db, y2)).status == "queued"
    clock.now += 1.0
    await due_now(db)
    await sender.sweep_once()
    assert [o.body for o in chan.sent] == ["x", "y", "y2"]
    assert chan.times == pytest.approx([100.0, 101.0, 102.0])
    for mid in (x, y, y2):
        m = await message(db, mid)
        assert (m.status, m.attempts) == ("sent", 1)


async def test_a_channel_without_a_rate_is_not_paced(db: Database) -> None:
    clock = FakeClock()
    chan = ScriptedChannel()
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST, clock=clock)
    mids = [await reply(db, f"m{i}", sender=f"visitor-{i}") for i in range(6)]
    for mid in mids:
        await sender.deliver(mid)
    assert [o.body for o in chan.sent] == [f"m{i}" for i in range(6)]


async def test_one_inbox_paced_backlog_does_not_starve_the_other_inboxes(db: Database) -> None:
    """More due replies on a one-per-second inbox than a sweep takes: each
    sweep takes of that inbox only what its rate lets go (none claimed just
    to be put back), and another inbox's due reply goes out at once."""
    async with db.write() as s:
        await do_ensure_inbox(s, key="webchat-b", channel=Channel.WEBCHAT, name="Other site")
    clock = FakeClock()
    chan = OnePerSecondChannel(clock)
    sender = CountingSender(db, {Channel.WEBCHAT: chan}, FAST, clock=clock)
    backlog = await replies(db, "webchat", SWEEP_BATCH + 10)
    (other,) = await replies(db, "webchat-b", 1)
    await due_now(db)
    await sender.sweep_once()
    assert (await message(db, other)).status == "sent"
    for _ in range(3):
        clock.now += 1.0
        await due_now(db)
        await sender.sweep_once()
    # One a second on the slow inbox, in order; and no more claims than sends.
    assert [o.message_id for o in chan.sent if o.inbox == "webchat"] == backlog[:4]
    assert sender.claims == len(chan.sent) == 5


class CountingSender(Sender):
    """Counts the claims it makes (each a write, and one more to put it back unsent)."""

    claims = 0

    async def _claim(self, message_id: int) -> Message | None:
        row = await super()._claim(message_id)
        self.claims += row is not None
        return row


async def replies(db: Database, inbox: str, n: int) -> list[int]:
    """One agent reply on each of ``n`` new tickets of ``inbox``."""
    ids: list[int] = []
    async with db.write() as s:
        results = await ingest_batch(
            s,
            [
                InboundMessage(channel=Channel.WEBCHAT, inbox=inbox, external_id=f"{inbox}:{i}", sender=f"{inbox}:{i}")
                for i in range(n)
            ],
        )
        for r in results:
            assert isinstance(r, IngestResult)
            ticket = await s.get(Ticket, r.ticket_id)
            assert ticket is not None
            ids.append((await do_post_message(s, ticket, body=f"reply {len(ids)}", author=Author.AGENT)).id)
    return ids


# --- retrying through an outage ----------------------------------------------------------------


def test_by_default_tries_last_for_the_whole_retry_time() -> None:
    """Retries end by time, not by running out of tries: even with every
    jittered pause at its shortest, the tries outlast send_retry_seconds."""
    config = WorkersConfig()
    assert config.send_retry_seconds >= 3600
    shortest = sum(
        min(config.send_backoff_seconds * 2 ** (n - 1), config.send_backoff_max_seconds) * 0.8
        for n in range(1, config.send_max_attempts)
    )
    assert shortest > config.send_retry_seconds


def test_a_retry_time_that_is_not_positive_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"workers\.send_retry_seconds"):
        load_config(path=None, env={"HUB_SECRET_KEY": "test"}, overrides={"workers.send_retry_seconds": 0})


async def test_an_outage_is_retried_until_send_retry_seconds_after_the_reply_was_written(db: Database) -> None:
    down = SendResult(status=DeliveryStatus.FAILED, reason="SMTP server unreachable", retryable=True)
    config = WorkersConfig(
        send_backoff_seconds=0.001, send_backoff_max_seconds=0.002, send_max_attempts=100, send_retry_seconds=3600
    )
    chan = ScriptedChannel([down] * 30)
    sender = Sender(db, {Channel.WEBCHAT: chan}, config)
    fresh = await reply(db, "fresh", sender="visitor-fresh")
    for _ in range(20):  # well past the old 8 tries
        await due_now(db)
        await sender.sweep_once()
    m = await message(db, fresh)
    assert (m.status, m.attempts) == ("queued", 20)

    stale = await reply(db, "stale", sender="visitor-stale")
    async with db.write() as s:  # written before the retry time began
        await s.execute(
            update(Message).where(Message.id == stale).values(created_at=utcnow() - timedelta(seconds=3601))
        )
    await sender.deliver(stale)
    m = await message(db, stale)
    assert m.status == "failed"
    assert (
        m.status_reason
        == "SMTP server unreachable (gave up after 1 attempts, still failing 1 h 00 min after it was written)"
    )


async def test_a_rate_limit_answer_is_not_an_attempt(db: Database) -> None:
    flood = SendResult(
        status=DeliveryStatus.FAILED, reason="flood control: retry in 0 s", retryable=True, retry_after=0.0
    )
    chan = ScriptedChannel([flood] * (FAST.send_max_attempts + 2))
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST)
    mid = await reply(db)
    await sender.deliver(mid)
    m = await message(db, mid)
    assert (m.status, m.attempts) == ("queued", 0)
    for _ in range(FAST.send_max_attempts + 2):
        await due_now(db)
        await sender.sweep_once()
    m = await message(db, mid)
    assert (m.status, m.attempts) == ("sent", 1)
    assert len(chan.sent) == FAST.send_max_attempts + 3


# --- receipts -------------------------------------------------------------------------------


async def test_a_reply_a_receipt_moved_to_sending_between_tries_is_tried_again(db: Database) -> None:
    """Its send timed out (retryable), then the provider's callback for that
    try said "sending": no sender holds it, yet it is not sent. The sweep
    takes it back, and the next try says it is a retry (the Twilio adapter
    then asks Twilio first, and finds it by the SID the receipt stored)."""
    timed_out = SendResult(status=DeliveryStatus.FAILED, reason="no answer within 15 s", retryable=True)
    chan = ScriptedChannel([timed_out])
    sender = Sender(db, {Channel.WEBCHAT: chan}, FAST)
    first = await reply(db, "one")
    await sender.deliver(first)
    async with db.write() as s:
        assert await do_record_delivery(s, first, DeliveryStatus.SENDING) is not None
    m = await message(db, first)
    assert (m.status, m.lease_until) == ("sending", None)
    second = await _second_reply(db, first, "two")
    await sender.deliver(second)  # waits behind the first
    await due_now(db)
    await sender.sweep_once()
    assert [(await message(db, mid)).status for mid in (first, second)] == ["sent", "sent"]
    assert [(o.body, o.extras[SEND_ATTEMPT]) for o in chan.sent] == [("one", 1), ("one", 2), ("two", 1)]
