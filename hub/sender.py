"""Delivers stored outbound messages through their channel's ``send``.

The database row is the work item: a reply is stored ``queued`` before anyone
tries to send it, so nothing an agent was told is saved can be lost. A sender
claims a row (``queued`` -> ``sending`` with a lease) in a conditional update,
so two workers never send the same message; calls the channel outside any
transaction, renewing the lease while the call runs however long it takes;
records the outcome, retrying that database write in place rather than ever
letting a send that went through lapse back into the queue. Retryable
failures go back to ``queued`` with exponential backoff and jitter, for up to
``send_retry_seconds`` after the message was written (long enough to outlast a
provider's outage) and ``send_max_attempts`` tries; the rest end ``failed``
with the reason. A provider's answer to come back later (a rate limit, with
its ``retry_after``) is not a try, as it says nothing about the message. A
sweeper picks up due retries and rows whose sender died mid-send (lease
expired) or that no sender holds at all (a provider's receipt moved them to
``sending``). Within a ticket, messages go out in the order they were
written; so a row that can never go out must end ``failed`` rather than wait
for ever, or it holds back every later reply of its ticket: one that cannot be
made into an :class:`OutboundMessage` fails at once, and one claimed more than
``send_max_attempts`` times fails without another try.

A claim is known by the ``attempts`` number it set: every write a sender makes
under its claim (renewal, record, requeue) names that number, so a sender that
stalled past its lease while another claimed the message again can no longer
touch the row.

Sends are paced per (channel, inbox) at the adapter's ``rate_per_second`` by a
token bucket in this process (:class:`TokenBucket`): a reply whose token is not
there yet goes back to ``queued``, due when its token is, instead of running
into the provider's flood control. It never waits in place: sends run inside
the workers' event handling, where a sleep would hold up every other ticket's
events behind it. The sweep takes of each inbox no more than its bucket has
tokens for, and goes round the inboxes (each one's oldest first, then each
one's second...): a backlog of one slow inbox would otherwise fill every
sweep, to be claimed and put back unsent, while other inboxes' due retries
never got a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ColumnElement, and_, case, exists, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from channels.base import OPT_OUT_CONFIRMATION, RECIPIENT_UNREACHABLE, SEND_ATTEMPT, SEND_PARTS, ChannelAdapter
from hub import metrics
from hub.channel_actions import do_set_reachability
from hub.config import WorkersConfig
from hub.core import (
    IDENTITY_OF_CHANNEL,
    Channel,
    DeliveryStatus,
    OutboundMessage,
    SendResult,
    TicketEventKind,
    utcnow,
)
from hub.telegram import do_set_telegram_reachability
from storage.db import Database
from storage.ingest import add_outbox, outbox_row
from storage.models import Inbox, Message
from storage.views import message_view

log = logging.getLogger(__name__)

UNSENT = (DeliveryStatus.QUEUED.value, DeliveryStatus.SENDING.value)
CHANNELS = frozenset(c.value for c in Channel)

#: Pauses between tries to save a send's outcome: short at first (a dropped
#: connection is usually back at once), doubling up to the cap.
RECORD_RETRY_FIRST_SECONDS = 0.05
RECORD_RETRY_MAX_SECONDS = 5.0
#: Messages one sweep tries at most.
SWEEP_BATCH = 500


def waits_behind_earlier_reply() -> ColumnElement[bool]:
    """True for an outbound message with an earlier reply of its ticket still
    unsent: it must not overtake that one. Correlated on ``Message``; a range
    scan of ``ix_messages_ticket`` (ticket_id, id)."""
    earlier = aliased(Message)
    return exists().where(
        and_(
            earlier.ticket_id == Message.ticket_id,
            earlier.id < Message.id,
            earlier.direction == "out",
            earlier.private.is_(False),
            earlier.status.in_(UNSENT),
        )
    )


def held_by(msg: Message) -> ColumnElement[bool]:
    """The row is still in the claim that loaded ``msg``. Every claim raises
    ``attempts``, and only the sweeper (which keeps the number),
    :meth:`Sender._requeue` and :meth:`Sender._record` (which take back their
    own claim's raise: no token, or the provider's rate limit) put a row back
    to ``queued``; so any later claim carries a higher number, and a claim
    that lapsed never matches again."""
    return and_(
        Message.id == msg.id,
        Message.status == DeliveryStatus.SENDING.value,
        Message.attempts == msg.attempts,
    )


def _gave_up(attempts: int, failing_for: timedelta | None) -> str:
    """Why retries stopped, for the message's status reason: out of tries, or
    (``failing_for``) out of time."""
    if failing_for is None:
        return f"gave up after {attempts} attempts"
    minutes = max(0, round(failing_for.total_seconds() / 60))
    since = f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
    return f"gave up after {attempts} attempts, still failing {since} after it was written"


def _problem(exc: Exception) -> str:
    """What is wrong, briefly: each invalid field with pydantic's message."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
    return f"{type(exc).__name__}: {exc}"


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

    def available(self) -> int:
        """Whole tokens there now, none taken: sends that need not wait."""
        self._refill()
        return max(0, math.floor(self._tokens))


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
        async with self._holding(row):
            result = self._worn_out(row) or await self._send(row)
            # None: requeued to wait for its send rate.
            next_id = None if result is None else await self._record_surely(row, result)
        if next_id is not None:
            await self.deliver(next_id)

    async def _claim(self, message_id: int) -> Message | None:
        now = utcnow()
        async with self.db.write() as session:
            claimed = (
                await session.execute(
                    update(Message)
                    .where(
                        Message.id == message_id,
                        Message.status == DeliveryStatus.QUEUED.value,
                        (Message.next_attempt_at.is_(None)) | (Message.next_attempt_at <= now),
                        ~waits_behind_earlier_reply(),
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

    @contextlib.asynccontextmanager
    async def _holding(self, msg: Message) -> AsyncIterator[None]:
        """Keep the claim on ``msg`` alive while the block runs. A send has no
        upper bound of our own (an SMTP server may take 30 s per command, a
        Telegram album one upload per file); a lease that lapsed under it would
        let another worker's sweeper send the message a second time."""
        stop = asyncio.Event()
        renewer = asyncio.create_task(self._renew(msg, stop), name=f"send-lease-{msg.id}")
        try:
            yield
        finally:
            stop.set()
            # Shielded: a deliver cancelled at shutdown must not cut a renewal
            # off mid-write; the renewer sees ``stop`` and ends by itself.
            await asyncio.shield(renewer)

    async def _renew(self, msg: Message, stop: asyncio.Event) -> None:
        every = self.config.send_lease_seconds / 3
        wait = every
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
            if stop.is_set():
                return
            try:
                held = await self._extend(msg)
            except Exception:
                # Soon again, not in a third of the lease: the first renewal
                # after the database is back must beat the sweepers to the row.
                log.warning("could not renew a send's lease", exc_info=True, extra={"message_id": msg.id})
                wait = min(every, 1.0)
                continue
            if not held:
                if not stop.is_set():  # else the send was just recorded: nothing was lost
                    log.warning(
                        "lost the lease of a message while sending it; it may go out twice",
                        extra={"message_id": msg.id, "attempt": msg.attempts},
                    )
                return
            wait = every

    async def _extend(self, msg: Message) -> bool:
        """Move the claim's lease on; False when the claim is no longer ours."""
        async with self.db.write() as session:
            renewed = await session.execute(
                update(Message)
                .where(held_by(msg))
                .values(lease_until=utcnow() + timedelta(seconds=self.config.send_lease_seconds))
                .returning(Message.id)
                .execution_options(synchronize_session=False)
            )
            return renewed.scalar_one_or_none() is not None

    def _worn_out(self, msg: Message) -> SendResult | None:
        """A failure without a send for a claim past ``send_max_attempts``.
        Recorded attempts stop there (:meth:`_record` retries only below it),
        so this claim follows ones that never recorded anything: their sender
        died or gave up saving, or the send itself raised. Without this, such
        a message would go round ``sending`` -> ``queued`` for ever, and every
        later reply of its ticket would wait behind it."""
        if msg.attempts <= self.config.send_max_attempts:
            return None
        log.error(
            "a message's sends never finished; giving up on it",
            extra={"channel": msg.channel, "message_id": msg.id, "attempt": msg.attempts},
        )
        return SendResult(
            status=DeliveryStatus.FAILED,
            reason=f"gave up after {msg.attempts - 1} attempts, the last of which never finished "
            "(the sender stopped mid-send; the message may or may not have gone out)",
        )

    async def _send(self, msg: Message) -> SendResult | None:
        """The channel's answer, or None when the message went back to the
        queue to wait for a token of its inbox's send rate."""
        if msg.channel not in CHANNELS:
            return SendResult(status=DeliveryStatus.FAILED, reason=f"unknown channel {msg.channel!r}")
        adapter = self.channels.get(Channel(msg.channel))
        if adapter is None:
            return SendResult(
                status=DeliveryStatus.FAILED, reason=f"the {msg.channel} channel is not configured on this hub"
            )
        recipient = (msg.extras or {}).get("recipient")
        if not recipient:
            return SendResult(status=DeliveryStatus.FAILED, reason="the message has no recipient address")
        try:
            context = await self._context(msg)
        except Exception as exc:
            # Nothing was sent: trying again later is safe, and counts as an attempt.
            log.exception("could not prepare a send", extra={"channel": msg.channel, "message_id": msg.id})
            return SendResult(
                status=DeliveryStatus.FAILED,
                reason=f"could not prepare the send: {type(exc).__name__}: {exc}",
                retryable=True,
            )
        try:
            out = self._outbound(msg, str(recipient), context)
        except (ValueError, TypeError) as exc:
            # The stored row itself is wrong (written by an older version, or
            # let through by a check that was looser than this one): trying
            # again cannot help, and a failure frees the ticket's later replies.
            log.warning(
                "a stored message cannot be sent", exc_info=True, extra={"channel": msg.channel, "message_id": msg.id}
            )
            reason = f"the stored message cannot be sent: {_problem(exc)}"
            return SendResult(status=DeliveryStatus.FAILED, reason=reason)
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
                .where(held_by(msg))
                .values(
                    status=DeliveryStatus.QUEUED.value,
                    attempts=Message.attempts - 1,
                    lease_until=None,
                    next_attempt_at=utcnow() + timedelta(seconds=delay),
                )
                .execution_options(synchronize_session=False)
            )

    def _outbound(self, msg: Message, recipient: str, context: dict[str, Any]) -> OutboundMessage:
        """The stored row as the channel gets it. Validated as a whole, so an
        error names its field (``attachments.0.size``)."""
        extras = msg.extras or {}
        return OutboundMessage.model_validate(
            {
                "message_id": msg.id,
                "ticket_id": msg.ticket_id,
                "channel": msg.channel,
                "inbox": self._inbox_keys.get(msg.inbox_id, ""),
                "recipient": recipient,
                "body": msg.body,
                "author": msg.author,
                "attachments": msg.attachments or (),
                "subject": msg.subject,
                "quick_replies": extras.get("quick_replies", ()),
                "extras": {
                    "created_at": msg.created_at.isoformat(),
                    SEND_ATTEMPT: msg.attempts,
                    SEND_PARTS: list(extras.get(SEND_PARTS, [])),
                    **({OPT_OUT_CONFIRMATION: True} if extras.get(OPT_OUT_CONFIRMATION) is True else {}),
                    **context,
                },
            }
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

    async def _record_surely(self, msg: Message, result: SendResult) -> int | None:
        """:meth:`_record`, tried again until the database takes it. The channel
        has answered: a claim left ``sending`` would lapse and the message go out
        again (email and Telegram cannot tell a retry from a new message). Only
        the database write is repeated, never the send, and the lease is
        renewed meanwhile. Gives up after ``send_record_retry_seconds``."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.config.send_record_retry_seconds
        pause = RECORD_RETRY_FIRST_SECONDS
        while True:
            try:
                return await self._record(msg, result)
            except Exception:
                if loop.time() + pause > give_up_at:
                    log.exception(
                        "gave up saving the outcome of a send; the message may go out again",
                        extra={"channel": msg.channel, "message_id": msg.id, "status": result.status.value},
                    )
                    raise
                log.warning(
                    "could not save the outcome of a send; trying again",
                    exc_info=True,
                    extra={"channel": msg.channel, "message_id": msg.id},
                )
            await asyncio.sleep(pause * random.uniform(0.8, 1.2))
            pause = min(pause * 2, RECORD_RETRY_MAX_SECONDS)

    async def _record(self, msg: Message, result: SendResult) -> int | None:
        """Save the outcome of the claim on ``msg``; the next reply of its ticket
        now free to go, if any. Only writes while the claim is ours or, lapsed,
        nobody else's yet (``queued`` under the same attempt: no sender holds
        it, and a sent message must not be picked up again)."""
        now = utcnow()
        values: dict[str, Any] = {"lease_until": None, "status_reason": result.reason}
        failed = result.status in (DeliveryStatus.FAILED, DeliveryStatus.UNDELIVERED)
        # A provider that says when to come back (flood control, a 429) turned
        # the message away for its rate, as a missing token would have (see
        # _requeue): not a try of the message, so its claim's raise is taken
        # back. Only the time bound below ends such retries.
        waited = failed and result.retryable and result.retry_after is not None
        tries = msg.attempts - 1 if waited else msg.attempts
        retry_until = msg.created_at + timedelta(seconds=self.config.send_retry_seconds)
        retry = failed and result.retryable and tries < self.config.send_max_attempts and now < retry_until
        if retry:
            delay = max(result.retry_after or 0.0, self.backoff(msg.attempts))
            values.update(
                status=DeliveryStatus.QUEUED.value, attempts=tries, next_attempt_at=now + timedelta(seconds=delay)
            )
        else:
            values.update(status=result.status.value, next_attempt_at=None)
            if not failed:
                values["sent_at"] = now
            elif result.retryable:
                gave_up = _gave_up(msg.attempts, None if now < retry_until else now - msg.created_at)
                values["status_reason"] = f"{result.reason} ({gave_up})"
        if result.external_id:
            values["external_id"] = result.external_id
        if result.extras.get(SEND_PARTS):
            # What a split message delivered so far: a retry resumes after it.
            values["extras"] = {**(msg.extras or {}), SEND_PARTS: list(result.extras[SEND_PARTS])}
        async with self.db.write() as session:
            ours = (
                await session.execute(
                    update(Message)
                    .where(
                        Message.id == msg.id,
                        Message.attempts == msg.attempts,
                        Message.status.in_(UNSENT),
                    )
                    .values(**values)
                    .returning(Message.id)
                    .execution_options(synchronize_session=False)
                )
            ).scalar_one_or_none()
            if ours is None:
                # The row says more than our result does: a receipt overtook
                # this record, or our lease lapsed and the message was claimed
                # again (then it may have gone out twice: say so).
                now_attempts = await session.scalar(select(Message.attempts).where(Message.id == msg.id))
                log.log(
                    logging.INFO if now_attempts == msg.attempts else logging.WARNING,
                    "the outcome of a send came after its claim ended; not saved",
                    extra={"channel": msg.channel, "message_id": msg.id, "status": result.status.value},
                )
            else:
                metrics.OUTBOUND.labels(msg.channel, values["status"]).inc()
                fresh = await session.get(Message, msg.id, populate_existing=True)
                assert fresh is not None
                unreachable = result.extras.get(RECIPIENT_UNREACHABLE)
                recipient = (msg.extras or {}).get("recipient")
                if msg.channel == Channel.TELEGRAM.value and recipient and self._inbox_keys.get(msg.inbox_id):
                    # Blocked per bot; and a delivered message proves the chat
                    # reachable through its bot whatever an update said before.
                    if unreachable or result.status is DeliveryStatus.SENT:
                        await do_set_telegram_reachability(
                            session,
                            inbox=self._inbox_keys[msg.inbox_id],
                            chat_id=str(recipient),
                            reason=str(unreachable) if unreachable else None,
                            ticket_id=msg.ticket_id,
                        )
                elif unreachable and recipient:
                    await do_set_reachability(
                        session,
                        kind=IDENTITY_OF_CHANNEL[Channel(msg.channel)],
                        address=str(recipient),
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
            if retry and ours is not None:
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
        """Requeue sends that no live sender holds, then try what is due, a
        fair share of each inbox (see the module's docstring)."""
        now = utcnow()
        # Typed as the column, so that it is stored as the column stores
        # times (naive UTC text on SQLite), inside the CASE too.
        at_now = literal(now, Message.next_attempt_at.type)
        async with self.db.write() as session:
            await session.execute(
                update(Message)
                .where(
                    Message.status == DeliveryStatus.SENDING.value,
                    # No lease: a provider's receipt ("sending") moved it on
                    # while it waited for a retry, and no claim will ever
                    # take it from there. Tried again, it does not go out
                    # twice: a retry asks the provider first (Twilio, the
                    # only one reporting "sending", finds the message by the
                    # SID the receipt stored; see channels/twilio_sms.py).
                    Message.lease_until.is_(None) | (Message.lease_until < now),
                )
                .values(
                    status=DeliveryStatus.QUEUED.value,
                    lease_until=None,
                    # Without a lease, it keeps the backoff of its failed try.
                    next_attempt_at=case(
                        (Message.lease_until.is_(None), func.coalesce(Message.next_attempt_at, at_now)), else_=at_now
                    ),
                )
                .execution_options(synchronize_session=False)
            )
        rank = func.row_number().over(partition_by=Message.inbox_id, order_by=Message.id).label("rank")
        candidates = (
            select(Message.id, Message.channel, Message.inbox_id, rank)
            .where(
                Message.status == DeliveryStatus.QUEUED.value,
                Message.direction == "out",
                Message.next_attempt_at <= now,
                # Else replies waiting behind an earlier one of their
                # ticket (which _claim refuses) fill the batch first,
                # and a provider outage starves every other retry.
                ~waits_behind_earlier_reply(),
            )
            .subquery()
        )
        async with self.db.read() as session:
            due = (
                await session.scalars(
                    select(candidates.c.id)
                    .where(candidates.c.rank <= self._shares(candidates.c.channel, candidates.c.inbox_id))
                    .order_by(candidates.c.rank, candidates.c.id)
                    .limit(SWEEP_BATCH)
                )
            ).all()
        sem = asyncio.Semaphore(self.config.concurrency)

        async def one(mid: int) -> None:
            async with sem:
                await self.deliver(mid)

        await asyncio.gather(*(one(mid) for mid in due))
        return len(due)

    def _shares(self, channel: ColumnElement[str], inbox_id: ColumnElement[int]) -> ColumnElement[int]:
        """How many due messages of an inbox one sweep takes: what its send
        rate lets go now. More would only be claimed and put back unsent."""
        shares: list[tuple[ColumnElement[bool], int]] = [
            (and_(channel == key[0], inbox_id == key[1]), bucket.available()) for key, bucket in self._buckets.items()
        ]
        # Inboxes without a bucket yet: a new one is full.
        shares.extend(
            (channel == c.value, math.floor(max(1.0, adapter.rate_per_second)))
            for c, adapter in self.channels.items()
            if adapter.rate_per_second is not None
        )
        if not shares:
            return literal(SWEEP_BATCH)
        return case(*shares, else_=SWEEP_BATCH)

    async def run_sweeper(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("sender sweep failed")
            await asyncio.sleep(self.config.sweep_interval_seconds)
