"""Whole conversations from the bot review: a satisfied customer saying
goodbye, a buying question the knowledge base cannot answer, and corrections
in the qualification dialog. The hub is real (ingest, outbox, stream,
routing, the bot step, the sender, SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from hub.bot_report import gaps
from storage.models import AuditLog, BotTurn, Contact, Identity, Message, TicketEventRow
from tests.bots.conversation import Conversation, bot_hub

# README's example knowledge base (without its team, which a fresh hub may lack).
README_KB: list[dict[str, Any]] = [
    {
        "id": "shipping-time",
        "questions": ["how long does shipping take", "when will my order arrive", "سفارش من کی می‌رسد"],
        "answer": {"en": "Orders arrive in 3 to 5 working days.", "fa": "سفارش‌ها ظرف ۳ تا ۵ روز کاری می‌رسند."},
        "tags": ["shipping"],
    },
    {
        "id": "opening-hours",
        "questions": ["what are your opening hours", "ساعت کاری شما چیست"],
        "answer": "Saturday to Wednesday, 9 to 17.",
    },
]


async def _chat(c: Conversation, sender: str, *texts: str) -> list[str]:
    """The bot's replies to each of ``texts``, pressing Yes when asked whether
    an answer helped (as the web chat's button does)."""
    said: list[str] = []
    for text in texts:
        quick_reply = None
        if text == "Yes!":
            async with c.hub.db.read() as s:
                turn = await s.scalar(select(BotTurn.id).order_by(BotTurn.id.desc()).limit(1))
            quick_reply = f"fb:yes:{turn}"
        said += [m.body for m in await c.push(text, sender=sender, quick_reply=quick_reply)]
    return said


async def test_a_satisfied_customer_who_says_bye_is_not_handed_to_a_person(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, kb=README_KB) as c:
        en = await _chat(c, "v-en", "when will my order arrive?", "Yes!", "ok, bye")
        assert en[1:] == ["Glad I could help!", "Thank you for contacting us. Goodbye!"]
        fa = await _chat(c, "v-fa", "ساعت کاری شما چیست", "بله", "باشه خداحافظ")
        assert fa[1:] == ["خوشحالم که کمک کردم!", "ممنون که با ما در تماس بودید. خدانگهدار!"]
        # A first message that only closes or acknowledges.
        assert await _chat(c, "v-3", "thanks, bye") == ["Thank you for contacting us. Goodbye!"]
        assert await _chat(c, "v-4", "ok") == ["All right! If there's anything else, just write here."]
        async with c.hub.db.read() as s:
            handoffs = (await s.scalars(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))).all()
            report, _ = await gaps(s, cursor=None, limit=50)
            closings = (await s.scalars(select(BotTurn.action).where(BotTurn.question.in_(["ok, bye", "ok"])))).all()
        assert (handoffs, report, closings) == ([], [], ["smalltalk", "smalltalk"])
        assert (await c.ticket()).status == "pending"  # the bot still answers a next question


async def test_a_buying_question_without_an_answer_starts_qualification_and_the_note_says_so(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, kb=README_KB) as c:
        first = await _chat(c, "v-1", "how much is a quote for my team?")
        assert first == [
            "I'd be glad to help with that. A few quick questions so the right person can follow up.",
            "May I have your name?",
        ]
        await _chat(c, "v-1", "I'm Ali", "ali@example.com", "+989121234567", "Acme", "50", "5-10k")
        async with c.hub.db.read() as s:
            turn = await s.scalar(select(BotTurn).order_by(BotTurn.id).limit(1))
            note = await s.scalar(select(Message).where(Message.private.is_(True)))
        assert turn is not None and (turn.action, turn.reason, turn.entry_key) == ("qualify", "qualify", None)
        assert note is not None and note.body.startswith("Bot handoff: sales-qualified lead.")
        assert "- Customer: how much is a quote for my team?\n  Bot: started qualification" in note.body
        assert "shipping-time" not in note.body


async def test_corrections_in_the_dialog_as_customers_type_them(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, kb=README_KB) as c:
        await _chat(c, "v-1", "I want a demo", "Sara", "sara@example.com")
        # A local number on a hub without phone.default_region: how to write it, no library text.
        unread = await _chat(c, "v-1", "۰۹۱۲ ۱۲۳ ۴۵۶۷")
        assert unread[0].startswith("I couldn't read that phone number. Please write it starting with +")
        assert "region" not in unread[0] and "+44 ...)" not in unread[0]
        # The Persian comma after «نه»: a correction, not a bad phone number.
        fixed = await _chat(c, "v-1", "نه، اسمم رضا است")
        assert fixed == ["ممنون، رضا ثبت شد.", "شماره تلفنی که بتوانیم با شما تماس بگیریم؟"]
        assert (await _chat(c, "v-1", "my name is actually Reza"))[0] == "Thanks, I've updated your name to Reza."
        await _chat(c, "v-1", "skip")
        await _chat(c, "v-1", "actually my email is sara.new@example.com")
        async with c.hub.db.read() as s:
            contact = (await s.scalars(select(Contact))).one()
            identities = (
                await s.execute(select(Identity.channel, Identity.address).where(Identity.contact_id == contact.id))
            ).all()
            removed = await s.scalar(select(AuditLog.data).where(AuditLog.action == "contact.identity_removed"))
        assert (contact.name, contact.attributes["email"]) == ("Reza", "sara.new@example.com")
        assert sorted(i.channel for i in identities) == ["email", "webchat"]
        assert ("email", "sara.new@example.com") in [tuple(i) for i in identities]
        assert removed == {"channel": "email", "address": "sara@example.com", "why": "corrected in the bot's dialog"}


async def test_the_phone_example_follows_the_hubs_default_region(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, kb=README_KB, **{"phone.default_region": "IR"}) as c:
        await _chat(c, "v-1", "I want a demo", "Sara", "sara@example.com")
        (unread, _) = await _chat(c, "v-1", "12")
        assert unread == (
            "I couldn't read that phone number. Please check it, or write it with the country code, "
            "like +98 912 345 6789."
        )
