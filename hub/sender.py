"""Delivers stored outbound messages through their channel's ``send``.

The database row is the work item: a reply is stored ``queued`` before anyone
tries to send it, so nothing an agent was told is saved can be lost. A sender
claims a row (``queued`` -> ``sending`` with a lease) in a conditional update,
so two workers never send the same message; calls the channel outside any
transaction; records the outcome. Retryable failures go back to ``queued``
with exponential backoff and jitter; the rest end ``failed`` with the reason.
A sweeper picks up due retries and rows whose sender died mid-send (lease
expired). Within a ticket, messages go out in the order they were written.

Sends are paced per (channel, inbox) at the adapter's ``rate_per_second`` by a
token bucket in this process (:class:`TokenBucket`): a reply whose token is not
there yet goes back to ``queued``, due when its token is, instead of running
into the provider's flood control. It never waits in place: sends run inside
the workers' event handling, where a sleep would hold up every other ticket's
events behind it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from channels.base import RECIPIENT_UNREACHABLE, SEND_ATTEMPT, SEND_PARTS, ChannelAdapter
from hub import metrics
from hub.channel_actions import do_set_reachability
from hub.config import WorkersConfig
from hub.core import (
    IDENTITY_OF_CHANNEL,
    Attachment,
    Author,
    Channel,
    DeliveryStatus,
    OutboundMessage,
    QuickReply,
    SendResult,
    TicketEventKind,
    utcnow,
)
from storage.db import Database
from storage.ingest import add_outbox, outbox_row
from storage.models import Inbox, Message
from storage.views import message_view

log = logging.getLogger(__name__)

UNSENT = (DeliveryStatus.QUEUED.value, DeliveryStatus.SENDING.value)


class TokenBucket:
    """Sends per second for one (channel, inbox), with a burst of ``burst``.

    Kept in this process's memory, unlike the campaigns' ``Pacer``
    (``hub/campaigns/schedule.py``), which shares one budget among all worker
    processes through the database: replies come in small bursts, a provider
    that is pushed anyway answers with a retryable failure, and a transaction
    per slice of time is more than that needs. The price: each worker process
    paces on its own, so together they may send up to (processes x rate).

    ``reserve`` takes a token now and says how long until it is due; tokens may
    go negative, so every caller gets its own future slot and concurrent callers
    need no lock (nothing here awaits). ``refund`` gives back a token that was
    not used for a send."""

    def __init__(self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, rate) if burst is None else burst
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = max(now, self._at)

    def reserve(self) -> float:
        """Take one token; the seconds until it is due (0: now)."""
        self._refill()
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def refund(self) -> None:
        """Give back a reserved token that no send used."""
        self._refill()
        self._tokens = min(self.burst, self._tokens + 1)


class Sender:
    def __init__(
        self,
        db: Database,
        channels: Mapping[Channel, ChannelAdapter],
        config: WorkersConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (monotonic seconds) paces the sends; tests pass a fake one."""
        self.db = db
        self.channels = channels
        self.config = config
        self._inbox_keys: dict[int, str] = {}
        self._clock = clock
        #: One bucket per (channel, inbox): the provider's limit is per bot or
        #: per sending number, and an inbox is one of those.
        self._buckets: dict[tuple[str, int], TokenBucket] = {}
        #: Per channel, what a send needs from storage beyond the message row
        #: (email: the thread's subject and Message-IDs), merged into
        #: ``OutboundMessage.extras``; registered by the composition root.
        self.context: dict[Channel, Callable[[AsyncSession, Message], Awaitable[dict[str, Any]]]] = {}

    async def deliver(self, message_id: int) -> None:
        """Try to send one message now, if it is due and first in its ticket's line."""
        row = await self._claim(message_id)
        if row is None:
            return
        result = await self._send(row)
        if result is None:  # requeued to wait for its send rate
            return
        next_id = await self._record(row, result)
        if next_id is not None:
            await self.deliver(next_id)

    async def _claim(self, message_id: int) -> Message | None:
        now = utcnow()
        earlier = aliased(Message)
        blocked = exists().where(
            and_(
                earlier.ticket_id == Message.ticket_id,
                earlier.id < Message.id,
                earlier.direction == "out",
                earlier.private.is_(False),
                earlier.status.in_(UNSENT),
            )
        )
        async with self.db.write() as session:
            claimed = (
                await session.execute(
                    update(Message)
                    .where(
                        Message.id == message_id,
                        Message.status == DeliveryStatus.QUEUED.value,
                        (Message.next_attempt_at.is_(None)) | (Message.next_attempt_at <= now),
                        ~blocked,
                    )
                    .values(
                        status=DeliveryStatus.SENDING.value,
                        attempts=Message.attempts + 1,
                        lease_until=now + timedelta(seconds=self.config.send_lease_seconds),
                    )
                    .returning(Message.id)
                    .execution_options(synchronize_session=False)
                )
            ).scalar_one_or_none()
            if claimed is None:
                return None
            msg = await session.get(Message, claimed, populate_existing=True)
            assert msg is not None
            if msg.inbox_id not in self._inbox_keys:
                key = await session.scalar(select(Inbox.key).where(Inbox.id == msg.inbox_id))
                self._inbox_keys[msg.inbox_id] = key or ""
            return msg

    async def _send(self, msg: Message) -> SendResult | None:
        """The channel's answer, or None when the message went back to the
        queue to wait for a token of its inbox's send rate."""
        adapter = self.channels.get(Channel(msg.channel))
        if adapter is None:
            return SendResult(
                status=DeliveryStatus.FAILED, reason=f"the {msg.channel} channel is not configured on this hub"
            )
        recipient = (msg.extras or {}).get("recipient")
        if not recipient:
            return SendResult(status=DeliveryStatus.FAILED, reason="the message has no recipient address")
        out = OutboundMessage(
            message_id=msg.id,
            ticket_id=msg.ticket_id,
            channel=Channel(msg.channel),
            inbox=self._inbox_keys.get(msg.inbox_id, ""),
            recipient=str(recipient),
            body=msg.body,
            author=Author(msg.author),
            attachments=tuple(Attachment.model_validate(a) for a in msg.attachments or []),
            subject=msg.subject,
            quick_replies=tuple(QuickReply.model_validate(q) for q in (msg.extras or {}).get("quick_replies", [])),
            extras={
                "created_at": msg.created_at.isoformat(),
                SEND_ATTEMPT: msg.attempts,
                SEND_PARTS: list((msg.extras or {}).get(SEND_PARTS, [])),
                **await self._context(msg),
            },
        )
        if not await self._pace(msg, adapter):
            return None
        try:
            return await adapter.send(out)
        except Exception as exc:
            log.exception("channel send raised", extra={"channel": msg.channel, "message_id": msg.id})
            return SendResult(status=DeliveryStatus.FAILED, reason=f"{type(exc).__name__}: {exc}", retryable=True)

    def bucket(self, channel: str, inbox_id: int, adapter: ChannelAdapter) -> TokenBucket | None:
        """The send-rate bucket of one inbox (None: the channel sets no rate)."""
        rate = adapter.rate_per_second
        if rate is None:
            return None
        key = (channel, inbox_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(rate, clock=self._clock)
        return bucket

    async def _pace(self, msg: Message, adapter: ChannelAdapter) -> bool:
        """Take a token of the message's inbox. False: none is there yet, and the
        message is back in the queue, due when its token is (it stays first in
        its ticket's line, so order is kept)."""
        bucket = self.bucket(msg.channel, msg.inbox_id, adapter)
        if bucket is None:
            return True
        wait = bucket.reserve()
        if wait > 0:
            # Not ours to keep: the sweep that sends it takes a fresh one.
            bucket.refund()
            await self._requeue(msg, wait)
            return False
        return True

    async def _requeue(self, msg: Message, delay: float) -> None:
        """Undo the claim without an attempt: ``queued`` again, due in ``delay`` seconds."""
        async with self.db.write() as session:
            await session.execute(
                update(Message)
                .where(Message.id == msg.id, Message.status == DeliveryStatus.SENDING.value)
                .values(
                    status=DeliveryStatus.QUEUED.value,
                    attempts=Message.attempts - 1,
                    lease_until=None,
                    next_attempt_at=utcnow() + timedelta(seconds=delay),
                )
                .execution_options(synchronize_session=False)
            )

    async def _context(self, msg: Message) -> dict[str, Any]:
        hook = self.context.get(Channel(msg.channel))
        if hook is None:
            return {}
        async with self.db.read() as session:
            return await hook(session, msg)

    def backoff(self, attempts: int) -> float:
        base = self.config.send_backoff_seconds * 2 ** max(attempts - 1, 0)
        return float(min(base, self.config.send_backoff_max_seconds) * random.uniform(0.8, 1.2))

    async def _record(self, msg: Message, result: SendResult) -> int | None:
        now = utcnow()
        values: dict[str, Any] = {"lease_until": None, "status_reason": result.reason}
        retry = (
            result.status in (DeliveryStatus.FAILED, DeliveryStatus.UNDELIVERED)
            and result.retryable
            and msg.attempts < self.config.send_max_attempts
        )
        if retry:
            delay = max(result.retry_after or 0.0, self.backoff(msg.attempts))
            values.update(status=DeliveryStatus.QUEUED.value, next_attempt_at=now + timedelta(seconds=delay))
        else:
            values.update(status=result.status.value, next_attempt_at=None)
            if result.status not in (DeliveryStatus.FAILED, DeliveryStatus.UNDELIVERED):
                values["sent_at"] = now
            elif result.retryable:
                values["status_reason"] = f"{result.reason} (gave up after {msg.attempts} attempts)"
        if result.external_id:
            values["external_id"] = result.external_id
        if result.extras.get(SEND_PARTS):
            # What a split message delivered so far: a retry resumes after it.
            values["extras"] = {**(msg.extras or {}), SEND_PARTS: list(result.extras[SEND_PARTS])}
        metrics.OUTBOUND.labels(msg.channel, values["status"]).inc()
        async with self.db.write() as session:
            await session.execute(
                update(Message)
                .where(Message.id == msg.id, Message.status == DeliveryStatus.SENDING.value)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            fresh = await session.get(Message, msg.id, populate_existing=True)
            assert fresh is not None
            unreachable = result.extras.get(RECIPIENT_UNREACHABLE)
            if unreachable and (msg.extras or {}).get("recipient"):
                await do_set_reachability(
                    session,
                    kind=IDENTITY_OF_CHANNEL[Channel(msg.channel)],
                    address=str(msg.extras["recipient"]),
                    reason=str(unreachable),
                    ticket_id=msg.ticket_id,
                )
            await add_outbox(
                session,
                [
                    outbox_row(
                        TicketEventKind.MESSAGE_STATUS.value,
                        msg.ticket_id,
                        {"message": message_view(fresh, self._inbox_keys.get(msg.inbox_id))},
                    )
                ],
            )
            if retry:
                return None
            return await session.scalar(
                select(Message.id)
                .where(
                    Message.ticket_id == msg.ticket_id,
                    Message.id > msg.id,
                    Message.direction == "out",
                    Message.private.is_(False),
                    Message.status == DeliveryStatus.QUEUED.value,
                )
                .order_by(Message.id)
                .limit(1)
            )

    async def sweep_once(self) -> int:
        """Requeue sends whose worker died, then try everything that is due."""
        now = utcnow()
        async with self.db.write() as session:
            await session.execute(
                update(Message)
                .where(Message.status == DeliveryStatus.SENDING.value, Message.lease_until < now)
                .values(status=DeliveryStatus.QUEUED.value, lease_until=None, next_attempt_at=now)
                .execution_options(synchronize_session=False)
            )
        async with self.db.read() as session:
            due = (
                await session.scalars(
                    select(Message.id)
                    .where(
                        Message.status == DeliveryStatus.QUEUED.value,
                        Message.direction == "out",
                        Message.next_attempt_at <= now,
                    )
                    .order_by(Message.id)
                    .limit(500)
                )
            ).all()
        sem = asyncio.Semaphore(self.config.concurrency)

        async def one(mid: int) -> None:
            async with sem:
                await self.deliver(mid)

        await asyncio.gather(*(one(mid) for mid in due))
        return len(due)

    async def run_sweeper(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sender sweep failed")
            await asyncio.sleep(self.config.sweep_interval_seconds)
