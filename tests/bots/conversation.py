"""Whole conversations with the bot through fake channels (errbot's test
backend): push a customer's message into a running hub, read what the bot sent
back. Everything else is real: ingest, the outbox, the stream, routing, the
bot's worker step, the sender, SQLite."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import func, select

from bots.kb import KbEntry
from channels.base import ChannelAdapter
from hub import codec
from hub.actions import do_ensure_inbox
from hub.app import Hub, build_hub, start_hub, stop_hub
from hub.bot_actions import do_import_faq
from hub.core import Channel, DeliveryStatus, InboundMessage, OutboundMessage, SendResult
from hub.stream.base import Event
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.migrate import upgrade_async
from storage.models import BotTurn, Message, OutboxRow, Ticket
from tests.hub.helpers import make_config

SMS_INBOX = "sms:+15550001111"

KB: list[dict[str, Any]] = [
    {
        "id": "shipping-time",
        "questions": [
            "how long does shipping take",
            "when will my order arrive",
            "how many days is delivery",
            "delivery time",
            "سفارش من کی می‌رسد",
            "ارسال چند روز طول می‌کشد",
            "زمان تحویل سفارش",
        ],
        "answer": {"en": "Orders arrive in 3 to 5 working days.", "fa": "سفارش‌ها ظرف ۳ تا ۵ روز کاری می‌رسند."},
        "tags": ["shipping"],
    },
    {
        "id": "return-policy",
        "questions": [
            "how do I return an item",
            "can I get a refund",
            "return policy",
            "I want to send it back",
            "چطور کالا را مرجوع کنم",
            "امکان بازگشت وجه هست",
            "شرایط مرجوعی",
        ],
        "answer": {
            "en": "You can return anything within 30 days for a full refund.",
            "fa": "تا ۳۰ روز می‌توانید کالا را مرجوع کنید.",
        },
    },
    {
        "id": "opening-hours",
        "questions": [
            "what are your opening hours",
            "when are you open",
            "are you open on friday",
            "ساعت کاری شما چیست",
            "چه ساعتی باز هستید",
        ],
        "answer": "Saturday to Wednesday, 9:00 to 17:00. / شنبه تا چهارشنبه، 9 تا 17.",
    },
    {
        "id": "pricing",
        "questions": [
            "how much does it cost",
            "what are your prices",
            "pricing plans",
            "قیمت اشتراک چقدر است",
            "هزینه پلن‌ها",
        ],
        "answer": {"en": "Plans start at $29 a month.", "fa": "پلن‌ها از ماهی ۲۹ دلار شروع می‌شوند."},
        "tags": ["pricing"],
        "team": "Sales",
    },
    {
        "id": "password-reset",
        "questions": [
            "I forgot my password",
            "how do I reset my password",
            "cannot log in to my account",
            "رمز عبورم را فراموش کردم",
            "بازیابی رمز",
        ],
        "answer": {
            "en": "Use 'Forgot password' on the login page.",
            "fa": "از گزینه «فراموشی رمز» در صفحه ورود استفاده کنید.",
        },
    },
    {
        "id": "payment-methods",
        "questions": [
            "which payment methods do you accept",
            "can I pay with a credit card",
            "do you take paypal",
            "روش‌های پرداخت",
            "با کارت بانکی می‌شود پرداخت کرد",
        ],
        "answer": {"en": "Cards and bank transfer.", "fa": "کارت بانکی و حواله."},
    },
]


class FakeChannel(ChannelAdapter):
    """Records what the hub sends instead of delivering it."""

    channel: ClassVar[Channel] = Channel.WEBCHAT

    def __init__(self, channel: Channel) -> None:
        self.kind = channel
        self.sent: list[OutboundMessage] = []

    async def send(self, message: OutboundMessage) -> SendResult:
        self.sent.append(message)
        return SendResult(status=DeliveryStatus.SENT, external_id=f"fake-{message.message_id}")


class Conversation:
    def __init__(self, hub: Hub, fakes: dict[Channel, FakeChannel]) -> None:
        self.hub = hub
        self.fakes = fakes
        self._ids = itertools.count(1)
        self._read: dict[Channel, int] = dict.fromkeys(fakes, 0)
        # Every event as the stream carried it (encoded, before any step ran).
        self.published: dict[int, tuple[Event, str]] = {}
        handle = hub.processor.handle

        async def as_redis_does(events: Sequence[Event]) -> None:
            # Each delivery decodes its own copy of the payload, as Redis
            # does; the in-process stream would hand a retry the dict the
            # failed try's steps already changed, hiding what a redelivery sees.
            for event in events:
                self.published.setdefault(event.outbox_id, (event, codec.dumps(event.payload)))
            await handle([fresh(e) for e in events])

        hub.processor.handle = as_redis_does  # type: ignore[method-assign]

    async def redeliver(self, kind: str, index: int = -1) -> None:
        """The stream delivers an event of ``kind`` again, as published."""
        event, payload = [p for p in self.published.values() if p[0].kind == kind][index]
        await self.hub.processor.handle([dataclasses.replace(event, payload=codec.loads(payload), deliveries=2)])

    async def push(
        self,
        text: str,
        *,
        sender: str = "visitor-1",
        channel: Channel = Channel.WEBCHAT,
        quick_reply: str | None = None,
        extras: dict[str, Any] | None = None,
        external_id: str | None = None,
    ) -> list[OutboundMessage]:
        """The customer writes; returns what the hub sent them in answer."""
        inbox = self.hub.config.webchat.inbox if channel is Channel.WEBCHAT else SMS_INBOX
        msg = InboundMessage(
            channel=channel,
            inbox=inbox,
            external_id=external_id or f"m{next(self._ids)}",
            sender=sender,
            body=text,
            quick_reply=quick_reply,
            extras=extras or {},
        )
        await self.hub.batcher.submit(msg)
        await self.settle()
        return self.pop(channel)

    def pop(self, channel: Channel = Channel.WEBCHAT) -> list[OutboundMessage]:
        fake = self.fakes[channel]
        new = fake.sent[self._read[channel] :]
        self._read[channel] = len(fake.sent)
        return new

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until every event is handled and every reply sent."""
        quiet = 0
        async with asyncio.timeout(timeout):
            while quiet < 3:
                await asyncio.sleep(0.05)
                async with self.hub.db.read() as s:
                    outbox = await s.scalar(select(func.count()).select_from(OutboxRow))
                    unsent = await s.scalar(
                        select(func.count())
                        .select_from(Message)
                        .where(Message.status.in_(["queued", "sending"]), Message.direction == "out")
                    )
                quiet = quiet + 1 if not outbox and not unsent else 0

    async def ticket(self, ticket_id: int | None = None) -> Ticket:
        async with self.hub.db.read() as s:
            stmt = select(Ticket).order_by(Ticket.id.desc()).limit(1)
            if ticket_id is not None:
                stmt = select(Ticket).where(Ticket.id == ticket_id)
            ticket = await s.scalar(stmt)
        assert ticket is not None
        return ticket


def fresh(event: Event) -> Event:
    return dataclasses.replace(event, payload=codec.loads(codec.dumps(event.payload)))


@asynccontextmanager
async def bot_hub(
    tmp_path: Path, *, kb: list[dict[str, Any]] | None = None, **overrides: Any
) -> AsyncIterator[Conversation]:
    config = make_config(tmp_path, **{"bot.enabled": True, **overrides})
    await upgrade_async(config.database_url)
    hub = build_hub(config)
    fakes = {ch: FakeChannel(ch) for ch in (Channel.WEBCHAT, Channel.SMS)}
    hub.channels.update(fakes)
    async with hub.db.write() as s:
        await do_ensure_inbox(s, key=SMS_INBOX, channel=Channel.SMS, name="SMS", bot_enabled=True)
        await do_import_faq(s, [KbEntry.model_validate(e) for e in (KB if kb is None else kb)], actor="test")
    conversation = Conversation(hub, fakes)
    await start_hub(hub)
    try:
        yield conversation
    finally:
        await stop_hub(hub)


async def add_turns(db: Database, turns: list[tuple[str, str, str | None]]) -> None:
    """Web chat questions (question, action, reason) as if the bot had handled
    them, for the gap report."""
    async with db.write() as s:
        await do_ensure_inbox(s, key="webchat", channel=Channel.WEBCHAT, name="Website")
        results = await ingest_batch(
            s,
            [
                InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id=f"turn-{n}", sender="v", body=q)
                for n, (q, _, _) in enumerate(turns)
            ],
        )
        for (question, action, reason), r in zip(turns, results, strict=True):
            assert isinstance(r, IngestResult)
            s.add(
                BotTurn(
                    message_id=r.message_id,
                    ticket_id=r.ticket_id,
                    contact_id=r.contact_id,
                    question=question,
                    action=action,
                    reason=reason,
                )
            )
