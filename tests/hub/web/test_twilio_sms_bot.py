"""The bot on an SMS inbox, end to end through the Twilio fake: compliance
keywords (STOP, HELP, START) are the hub's to answer, so the bot neither
answers them nor hands the ticket off for them; an everyday "Yes" that opts
nobody back in is still the bot's (the answer to "Did this answer your question?")."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bots.kb import KbEntry
from channels.twilio_sms import KEYWORD_HANDLED
from hub.bot_actions import do_import_faq
from hub.core import TicketEventKind
from hub.stream.base import Event
from hub.telephony.sms import SmsSteps
from storage.models import BotTurn, Message, Ticket, TicketEventRow
from tests.bots.conversation import KB
from tests.hub.twilio_helpers import NUMBER, TwilioHub, eventually, twilio_hub

BOT_INBOX: dict[str, Any] = {
    "bot.enabled": True,
    "twilio.senders": [{"inbox": "sms", "number": NUMBER, "bot": True}],
    "twilio.opt_out.start_reply": {"en": "Welcome back!"},
}


@asynccontextmanager
async def bot_sms_hub(tmp_path: Path) -> AsyncIterator[tuple[TwilioHub, list[int]]]:
    """A Twilio hub whose SMS inbox has the bot on, and the ids of the inbound
    messages whose bot step has finished (whatever the bot decided)."""
    async with twilio_hub(tmp_path, overrides=BOT_INBOX) as t:
        async with t.hub.db.write() as s:
            await do_import_faq(s, [KbEntry.model_validate(e) for e in KB], actor="test")
        done: list[int] = []
        steps = t.hub.processor._steps[TicketEventKind.MESSAGE_RECEIVED.value]
        bot_step = t.hub.bot.on_message

        async def watched(event: Event) -> None:
            await bot_step(event)
            done.append(int(event.payload["message"]["id"]))

        steps[steps.index(bot_step)] = watched
        yield t, done


async def text(t: TwilioHub, done: list[int], body: str) -> Message:
    """The customer texts ``body``; returns it once the bot's step has run for it."""
    sid = "SM" + secrets.token_hex(16)
    assert await t.sms(body, sid=sid) == 200
    async with t.hub.db.read() as s:
        msg = await s.scalar(select(Message).where(Message.external_id == sid))
    assert msg is not None

    async def handled() -> bool:
        return msg.id in done

    await eventually(handled)
    async with t.hub.db.read() as s:
        stored = await s.get(Message, msg.id)
    assert stored is not None
    return stored


async def sent(t: TwilioHub, n: int) -> bool:
    return len(t.fake.messages) >= n


async def bot_state(t: TwilioHub) -> tuple[list[str], list[str], list[str], str]:
    """What the bot wrote, the questions it took, the ticket's handoffs, its status."""
    async with t.hub.db.read() as s:
        bot_said = list((await s.scalars(select(Message.body).where(Message.author == "bot"))).all())
        turns = list((await s.scalars(select(BotTurn.question).order_by(BotTurn.id))).all())
        handoffs = list(
            (await s.scalars(select(TicketEventRow.kind).where(TicketEventRow.kind == TicketEventKind.HANDOFF))).all()
        )
        ticket = await s.scalar(select(Ticket))
    assert ticket is not None
    return bot_said, turns, handoffs, ticket.status


async def test_help_gets_only_the_hubs_answer_and_stays_with_the_bot(tmp_path: Path) -> None:
    async with bot_sms_hub(tmp_path) as (t, done):
        help_msg = await text(t, done, "HELP")
        assert help_msg.extras["keyword"] == "help" and help_msg.extras[KEYWORD_HANDLED] is True
        await eventually(lambda: sent(t, 1))
        assert await bot_state(t) == ([], [], [], "pending")
        # The bot still answers what comes next, on the same ticket.
        await text(t, done, "how long does shipping take")
        await eventually(lambda: sent(t, 2))
        bodies = [m["body"] for m in t.fake.messages]
        assert bodies[0].startswith("Reply STOP to unsubscribe")
        assert bodies[1].startswith("Orders arrive in 3 to 5 working days.")
        _, turns, handoffs, status = await bot_state(t)
        assert (turns, handoffs, status) == (["how long does shipping take"], [], "pending")


async def test_stop_and_start_are_not_answered_by_the_bot(tmp_path: Path) -> None:
    async with bot_sms_hub(tmp_path) as (t, done):
        stop = await text(t, done, "لغو")
        assert stop.extras[KEYWORD_HANDLED] is True
        # No refused bot reply, no handoff note: only the opt-out note and the hub's confirmation.
        async with t.hub.db.read() as s:
            authors = (await s.execute(select(Message.author, Message.private).order_by(Message.id))).all()
        assert [tuple(a) for a in authors] == [("contact", False), ("system", True), ("system", False)]
        assert await bot_state(t) == ([], [], [], "pending")
        start = await text(t, done, "START")
        assert start.extras[KEYWORD_HANDLED] is True
        await eventually(lambda: sent(t, 2))
        assert [m["body"] for m in t.fake.messages][1:] == ["Welcome back!"]
        assert await bot_state(t) == ([], [], [], "pending")


async def test_a_yes_that_opts_nobody_back_in_is_the_bots_answer(tmp_path: Path) -> None:
    async with bot_sms_hub(tmp_path) as (t, done):
        await text(t, done, "how long does shipping take")
        yes = await text(t, done, "Yes")
        # A START-family word, but the customer never opted out: not a keyword here.
        assert yes.extras["keyword"] == "start" and yes.extras[KEYWORD_HANDLED] is False
        bot_said, turns, handoffs, status = await bot_state(t)
        assert turns == ["how long does shipping take", "Yes"]
        assert bot_said[-1] == "Glad I could help!"
        assert (handoffs, status) == ([], "pending")


async def test_the_sms_steps_run_before_the_bots(tmp_path: Path) -> None:
    """The bot reads the keyword mark the SMS steps write: the composition root
    must keep them first, and the processor runs a message's steps in order."""
    async with twilio_hub(tmp_path, overrides=BOT_INBOX) as t:
        steps = t.hub.processor._steps[TicketEventKind.MESSAGE_RECEIVED.value]
        sms_steps = next(i for i, s in enumerate(steps) if isinstance(getattr(s, "__self__", None), SmsSteps))
        assert sms_steps < steps.index(t.hub.bot.on_message)
