"""The bot's memory of a customer when two of their messages are answered at
once (two workers; two tickets of theirs), and from one conversation to the
next. The hub is real (``tests.bots.conversation``); the concurrent answers
run on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from bots.matcher import Matcher
from hub import codec
from hub.actions import check_ticket, do_assign, do_create_agent, do_post_message, do_set_status
from hub.bot_step import DIALOG_MAX_AGE, BotService, KnowledgeBase, memory_for_ticket
from hub.core import Author, Channel, Role, TicketStatus, utcnow
from hub.stream.base import Event
from storage.db import Database
from storage.models import Agent, BotSession, BotTurn, Contact, Identity, TicketEventRow
from tests.bots.conversation import Conversation, bot_hub
from tests.hub.helpers import PASSWORD

CLARIFY_ALWAYS: dict[str, Any] = {"bot.answer_threshold": 0.99, "bot.clarify_threshold": 0.0}
PHONE = "+15551230000"


# --- two answers at once ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def second_worker(c: Conversation) -> AsyncIterator[BotService]:
    """The bot step of another worker process: its own engine and knowledge base."""
    db = Database(c.hub.config.database_url)
    worker = BotService(db, c.hub.config.bot)
    worker.start()
    await worker.kb.idle()
    try:
        yield worker
    finally:
        await worker.close()
        await db.dispose()


def meet_at_the_knowledge_base(*kbs: KnowledgeBase, patience: float = 0.5) -> None:
    """Each worker waits at the knowledge base until the others got there too
    (or a moment has passed), so they think about their answers at the same
    time, whatever they read before."""
    arrived = 0
    everyone = asyncio.Event()
    for kb in kbs:

        async def gated(matcher: Callable[[], Awaitable[Matcher]] = kb.matcher) -> Matcher:
            nonlocal arrived
            arrived += 1
            if arrived >= len(kbs):
                everyone.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(everyone.wait(), patience)
            return await matcher()

        kb.matcher = gated  # type: ignore[method-assign]


def hold_back_the_bot(c: Conversation) -> list[Event]:
    """The bot step stops running; the events it would have handled are kept
    (each a copy, as the stream would deliver it) for the test to hand over."""
    held: list[Event] = []
    steps = c.hub.processor._steps["message.received"]

    async def hold(event: Event) -> None:
        held.append(dataclasses.replace(event, payload=codec.loads(codec.dumps(event.payload))))

    steps[steps.index(c.hub.bot.on_message)] = hold
    return held


@pytest.mark.parametrize("channel", [Channel.WEBCHAT, Channel.SMS], ids=["same-ticket", "webchat-and-sms"])
async def test_two_answers_handled_at_once_by_two_workers_are_both_kept(
    tmp_path: Path, db_url: str, channel: Channel
) -> None:
    on: dict[str, Any] = {"database.url": db_url}
    async with bot_hub(tmp_path, **on) as c:
        replies = await c.push("How much does it cost?")
        assert [r.body for r in replies] == ["Plans start at $29 a month.", "May I have your name?"]
        async with c.hub.db.write() as s:
            contact = (await s.scalars(select(Contact))).one()
            # Her phone is known: a text from it is her, on a ticket of its own.
            s.add(Identity(contact_id=contact.id, channel="phone", address=PHONE))
        # She answers twice in quick succession; the messages are stored and
        # routed before any bot step runs.
        held = hold_back_the_bot(c)
        assert await c.push("Ann") == []
        sender = PHONE if channel is Channel.SMS else "visitor-1"
        assert await c.push("ann@example.com", channel=channel, sender=sender) == []
        name, email = held
        async with second_worker(c) as other:
            meet_at_the_knowledge_base(c.hub.bot.kb, other.kb)
            # The later message is even picked up first, by the other worker.
            await asyncio.gather(other.on_message(email), c.hub.bot.on_message(name))
        await c.settle()
        web, sms = [m.body for m in c.pop()], [m.body for m in c.pop(Channel.SMS)]
        if channel is Channel.SMS:
            assert (web, sms) == (["What is your email address?"], ["And a phone number we can reach you on?"])
        else:
            assert (web, sms) == (["What is your email address?", "And a phone number we can reach you on?"], [])
        async with c.hub.db.read() as s:
            contact = (await s.scalars(select(Contact))).one()
            memory = await s.get(BotSession, contact.id)
            turns = (await s.scalars(select(BotTurn).order_by(BotTurn.id))).all()
        assert contact.name == "Ann"
        assert contact.attributes == {"name": "Ann", "email": "ann@example.com"}
        assert memory is not None and memory.state["dialog"]["slot"] == "phone"
        assert [t.question for t in turns] == ["How much does it cost?", "Ann", "ann@example.com"]


# --- one conversation to the next -----------------------------------------------------------


async def a_person_takes_and_resolves(c: Conversation, *, reply: bool = False) -> None:
    """An agent takes the customer's current ticket (assigned, or by replying),
    then resolves it: the bot never spoke again on it."""
    ticket = await c.ticket()
    async with c.hub.db.write() as s:
        agent = await s.scalar(select(Agent).where(Agent.email == "ana@example.com"))
        if agent is None:
            agent = await do_create_agent(s, email="ana@example.com", name="Ana", password=PASSWORD, role=Role.AGENT)
        t = await check_ticket(s, ticket.id, lock=True)
        if reply:
            await do_post_message(s, t, body="Ana here, I'll take it from here.", author=Author.AGENT, agent=agent)
        else:
            await do_assign(s, t, agent_id=agent.id, team_id=None, actor=f"agent:{agent.id}")
        await do_set_status(s, t, status=TicketStatus.RESOLVED, actor=f"agent:{agent.id}")
    await c.settle()
    c.pop()
    c.pop(Channel.SMS)


async def handoffs(c: Conversation) -> list[str]:
    async with c.hub.db.read() as s:
        rows = await s.scalars(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))
        return [r.data["reason"] for r in rows.all()]


async def test_a_new_ticket_does_not_count_the_last_conversations_misunderstandings(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, **CLARIFY_ALWAYS) as c:
        (offer,) = await c.push("my thing is broken somehow")
        assert offer.body == "Did you mean one of these?"
        await a_person_takes_and_resolves(c)
        first = (await c.ticket()).id
        # Days later, a new conversation: one unclear question is one, not two in a row.
        (again,) = await c.push("the gizmo does not work")
        assert (await c.ticket()).id != first
        assert again.body == "Did you mean one of these?"
        assert await handoffs(c) == []


async def test_a_number_texted_on_a_new_ticket_is_not_a_button_of_the_last_one(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, **CLARIFY_ALWAYS) as c:
        (offer,) = await c.push("refund delivery", channel=Channel.SMS, sender=PHONE)
        assert len(offer.quick_replies) >= 2
        await a_person_takes_and_resolves(c)
        # "2" on a new ticket is whatever it means now, not the second of those buttons.
        (reply,) = await c.push("2", channel=Channel.SMS, sender=PHONE)
        assert reply.body == "Did you mean one of these?"
        async with c.hub.db.read() as s:
            turns = (await s.scalars(select(BotTurn).order_by(BotTurn.id))).all()
        assert [(t.action, t.reason) for t in turns] == [("clarify", None), ("clarify", None)]


async def test_feedback_on_a_new_ticket_does_not_rate_the_last_conversations_answer(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        (answer,) = await c.push("I forgot my password")
        yes, no = (q.id for q in answer.quick_replies)
        assert (yes.split(":")[:2], no.split(":")[:2]) == (["fb", "yes"], ["fb", "no"])
        await a_person_takes_and_resolves(c, reply=True)
        # The old widget's button, pressed in a new conversation, and one as
        # buttons were named before they named their turn.
        await c.push("No", quick_reply=no)
        await c.push("No", quick_reply="fb:no")
        async with c.hub.db.read() as s:
            turns = (await s.scalars(select(BotTurn).order_by(BotTurn.id))).all()
        assert turns[0].feedback is None
        assert "feedback" not in [t.action for t in turns[1:]]
        assert "unhelpful_answer" not in await handoffs(c)


async def test_an_unfinished_dialog_carries_on_if_recent_and_not_once_old(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        for visitor in ("visitor-old", "visitor-recent"):
            replies = await c.push("How much does it cost?", sender=visitor)
            assert replies[-1].body == "May I have your name?"
            # A person took over (the bot fell silent) and closed the conversation.
            await a_person_takes_and_resolves(c, reply=visitor == "visitor-old")
        ages = {"visitor-old": DIALOG_MAX_AGE + timedelta(days=1), "visitor-recent": timedelta(days=2)}
        async with c.hub.db.write() as s:
            for visitor, age in ages.items():
                contact_id = await s.scalar(select(Identity.contact_id).where(Identity.address == visitor))
                await s.execute(
                    update(BotSession).where(BotSession.contact_id == contact_id).values(updated_at=utcnow() - age)
                )
        # Back after more than a week: a question, not her name.
        old = [r.body for r in await c.push("when will my order arrive?", sender="visitor-old")]
        assert len(old) == 1 and old[0].startswith("Orders arrive in 3 to 5 working days."), old
        # Back after two days: where she left off.
        assert [r.body for r in await c.push("Ann", sender="visitor-recent")] == ["What is your email address?"]
        async with c.hub.db.read() as s:
            names = dict(
                (
                    await s.execute(
                        select(Identity.address, Contact.name)
                        .join(Contact, Contact.id == Identity.contact_id)
                        .where(Identity.address.in_(list(ages)))
                    )
                ).all()
            )
        assert names == {"visitor-old": None, "visitor-recent": "Ann"}


def test_what_a_new_ticket_keeps_of_the_bots_memory() -> None:
    now = utcnow()
    dialog = {"slot": "email", "values": {"name": "Ann"}, "skipped": [], "known": {}, "tries": 0}
    memory: dict[str, Any] = {
        "ticket_id": 1,
        "misses": 1,
        "offered": [{"id": "faq:pricing", "title": "Pricing"}],
        "feedback_for": 7,
        "last_answer": {"entry": "pricing", "confidence": 0.9},
        "transcript": [{"q": "How much?", "a": "answered pricing"}],
        "language": "fa",
        "qualified": None,
        "declined": True,
        "collected": {"name": "Ann"},
        "dialog": dialog,
    }
    assert memory_for_ticket(memory, now, 1, now) == memory
    recent = memory_for_ticket(memory, now - timedelta(days=2), 2, now)
    assert recent == {
        "ticket_id": 2,
        "transcript": memory["transcript"],
        "language": "fa",
        "qualified": None,
        "collected": {"name": "Ann"},
        "dialog": {**dialog, "resumed": True},
    }
    recent["dialog"]["tries"] = 1
    assert dialog["tries"] == 0  # the stored memory is not changed in place
    old = memory_for_ticket(memory, now - DIALOG_MAX_AGE - timedelta(minutes=1), 2, now)
    assert old == {"ticket_id": 2, "language": "fa", "qualified": None, "dialog": None}
