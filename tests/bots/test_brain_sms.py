"""Whole conversations over SMS, where customers type what web chat offers as
buttons: the answers to "Did this answer your question?" in words, a greeting,
and a Persian dialog whose answers (an email, a phone number) are Latin script."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from hub.bot_report import gaps
from hub.core import Channel
from storage.models import BotTurn, Ticket
from tests.bots.conversation import Conversation, bot_hub

PHONE = "+15551230000"


async def turns_of(c: Conversation) -> list[BotTurn]:
    async with c.hub.db.read() as s:
        return list((await s.scalars(select(BotTurn).order_by(BotTurn.id))).all())


async def test_yes_and_no_typed_over_sms_are_the_feedback_buttons(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        (answer,) = await c.push("how long does shipping take", channel=Channel.SMS, sender=PHONE)
        assert answer.body.endswith("Did this answer your question?")
        (glad,) = await c.push("Yes!", channel=Channel.SMS, sender=PHONE)
        assert glad.body == "Glad I could help!"
        (answer,) = await c.push("سفارش من کی می‌رسد", channel=Channel.SMS, sender=PHONE)
        (glad,) = await c.push("آره", channel=Channel.SMS, sender=PHONE)
        assert glad.body == "خوشحالم که کمک کردم!"
        await c.push("what are your opening hours", channel=Channel.SMS, sender=PHONE)
        (bye,) = await c.push("نه", channel=Channel.SMS, sender=PHONE)
        assert bye.body.startswith("شما را به یکی از همکارانمان وصل می‌کنم")
        turns = await turns_of(c)
        assert [(t.action, t.reason, t.feedback) for t in turns] == [
            ("answer", None, "yes"),
            ("feedback", None, None),
            ("answer", None, "yes"),
            ("feedback", None, None),
            ("answer", None, "no"),
            ("handoff", "unhelpful_answer", None),
        ]
        async with c.hub.db.read() as s:
            report, _ = await gaps(s, cursor=None, limit=10)
            ticket = await s.scalar(select(Ticket))
        # The report has the question whose answer did not help; nothing the
        # customer typed for a button is in it.
        assert [(i["question"], i["why"]) for i in report] == [("what are your opening hours", "unhelpful")]
        assert ticket is not None and ticket.status == "open"


async def test_a_greeting_over_sms_is_greeted_back_and_costs_no_miss(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        for text in ["سلام خسته نباشید", "سلام وقتتون بخیر", "Hi, good afternoon"]:
            (hello,) = await c.push(text, channel=Channel.SMS, sender=PHONE)
            assert hello.body in ("سلام! چطور می‌توانم کمکتان کنم؟", "Hello! How can I help you today?"), text
            assert not hello.quick_replies
        turns = await turns_of(c)
        assert [t.action for t in turns] == ["smalltalk"] * 3
        assert (await c.ticket()).status == "pending"


async def test_a_persian_dialog_stays_persian_through_an_email_and_a_phone_number(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        asked = await c.push("قیمت اشتراک چقدر است", channel=Channel.SMS, sender=PHONE)
        assert [r.body for r in asked][-1] == "لطفاً نام خود را بفرمایید."
        replies = [
            ("سارا احمدی", "نشانی ایمیل شما چیست؟"),
            ("ali@example.com", "شماره تلفنی که بتوانیم با شما تماس بگیریم؟"),
            ("+98 912 123 4567", "از طرف کدام شرکت هستید؟"),
        ]
        for text, prompt in replies:
            assert [r.body for r in await c.push(text, channel=Channel.SMS, sender=PHONE)] == [prompt], text
        turns = await turns_of(c)
        assert {t.language for t in turns} == {"fa"}
