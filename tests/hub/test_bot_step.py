"""Whole conversations with the bot through fake channels: the hub is real
(ingest, outbox, stream, routing, the bot step, the sender, SQLite)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bots.kb import KbEntry
from bots.matcher import FittedModel, LexicalBackend, Matcher, Prepared
from hub.actions import (
    check_ticket,
    do_assign,
    do_create_agent,
    do_ensure_inbox,
    do_get_or_create_team,
    do_post_message,
    do_set_status,
)
from hub.bot_actions import do_save_faq
from hub.bot_report import gaps
from hub.bot_step import KnowledgeBase
from hub.core import Author, Channel, Role, TicketStatus
from storage.models import BotTurn, Contact, Message, Team, TicketEventRow
from tests.bots.conversation import SMS_INBOX, bot_hub
from tests.hub.helpers import PASSWORD

# Thresholds that make every question land in the clarification band.
CLARIFY_ALWAYS: dict[str, Any] = {"bot.answer_threshold": 0.99, "bot.clarify_threshold": 0.0}
HANDOFF_BELOW_045: dict[str, Any] = {"bot.clarify_threshold": 0.45}
FAST_POLL: dict[str, Any] = {"bot.kb_poll_seconds": 0.1}


async def test_faq_answered_in_persian_and_in_english_with_feedback(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        # Arabic yeh/kaf and no ZWNJ: normalization still finds the entry.
        (fa,) = await c.push("سفارش من كي ميرسد؟")
        assert fa.body.startswith("سفارش‌ها ظرف ۳ تا ۵ روز کاری می‌رسند.")
        async with c.hub.db.read() as s:
            first = await s.scalar(select(func.max(BotTurn.id)))
        # The buttons say which answer they rate: Telegram keeps old keyboards.
        assert [q.id for q in fa.quick_replies] == [f"fb:yes:{first}", f"fb:no:{first}"]
        (glad,) = await c.push("بله", quick_reply=f"fb:yes:{first}")
        assert glad.body == "خوشحالم که کمک کردم!"
        (en,) = await c.push("How do I return an item I bought?")
        assert en.body.startswith("You can return anything within 30 days")
        ticket = await c.ticket()
        assert ticket.status == "pending"
        async with c.hub.db.read() as s:
            turns = (await s.scalars(select(BotTurn).order_by(BotTurn.id))).all()
        # Persian typed on an Arabic keyboard (ي, ك) is still Persian.
        assert [(t.action, t.entry_key, t.language) for t in turns] == [
            ("answer", "shipping-time", "fa"),
            ("feedback", None, "fa"),
            ("answer", "return-policy", "en"),
        ]
        assert turns[0].feedback == "yes"


async def test_redelivered_message_gets_one_reply(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        first = await c.push("what are your opening hours", external_id="same")
        again = await c.push("what are your opening hours", external_id="same")
        assert len(first) == 1
        assert again == []
        # The stream delivers the event again, exactly as ingest published it.
        await c.redeliver("message.received")
        await c.settle()
        assert c.pop() == []


async def test_a_new_tickets_first_message_is_answered_when_the_bot_step_is_retried(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        kb = c.hub.bot.kb
        matcher = kb.matcher
        failures: list[int] = []

        async def fails_once() -> Matcher:
            if not failures:
                failures.append(1)
                raise RuntimeError("the first try fails after routing committed")
            return await matcher()

        kb.matcher = fails_once  # type: ignore[method-assign]
        # The retry carries the ticket as ingest saw it (open), not routing's pending.
        (reply,) = await c.push("how long does shipping take")
        assert failures == [1]
        assert reply.body.startswith("Orders arrive in 3 to 5 working days.")
        assert (await c.ticket()).status == "pending"


async def test_a_worker_crash_after_routing_is_answered_on_redelivery(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        bot_step = c.hub.bot.on_message
        c.hub.processor._steps["message.received"].remove(bot_step)
        # Routing gives the new ticket to the bot, then the worker dies before the bot step.
        assert await c.push("how long does shipping take") == []
        assert (await c.ticket()).status == "pending"
        c.hub.processor.subscribe("message.received", bot_step)
        await c.redeliver("message.received")
        await c.settle()
        (reply,) = c.pop()
        assert reply.body.startswith("Orders arrive in 3 to 5 working days.")


async def test_bot_is_silent_on_a_pending_ticket_of_an_inbox_without_the_bot(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        async with c.hub.db.write() as s:
            await do_ensure_inbox(s, key=SMS_INBOX, channel=Channel.SMS, name="SMS", bot_enabled=False)
        assert await c.push("hello", channel=Channel.SMS, sender="+15551230000") == []
        ticket = await c.ticket()
        assert ticket.status == "open"
        async with c.hub.db.write() as s:
            t = await check_ticket(s, ticket.id, lock=True)
            await do_set_status(s, t, status=TicketStatus.PENDING, actor="agent:1")
        await c.settle()
        assert await c.push("how long does shipping take", channel=Channel.SMS, sender="+15551230000") == []
        assert (await c.ticket()).status == "pending"


async def test_bot_is_silent_once_an_agent_held_the_ticket_and_passed_it_to_a_team(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        assert len(await c.push("what are your opening hours")) == 1
        ticket = await c.ticket()
        async with c.hub.db.write() as s:
            agent = await do_create_agent(s, email="ana@example.com", name="Ana", password=PASSWORD, role=Role.AGENT)
            team = await do_get_or_create_team(s, "Support")
            t = await check_ticket(s, ticket.id, lock=True)
            await do_assign(s, t, agent_id=agent.id, team_id=None, actor=f"agent:{agent.id}")
        await c.settle()
        assert await c.push("how long does shipping take") == []
        async with c.hub.db.write() as s:
            t = await check_ticket(s, ticket.id, lock=True)
            await do_assign(s, t, agent_id=None, team_id=team.id, actor=f"agent:{agent.id}")
        await c.settle()
        after = await c.ticket()
        assert (after.status, after.assignee_id, after.bot_silenced) == ("pending", None, False)
        assert await c.push("when will my order arrive?") == []


async def test_clarification_offers_buttons_and_a_choice_is_answered(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, **CLARIFY_ALWAYS) as c:
        (offer,) = await c.push("delivery of my refund")
        ids = [q.id for q in offer.quick_replies]
        assert offer.body == "Did you mean one of these?"
        assert ids[-1] == "bot:none"
        assert set(ids[:-1]) & {"faq:shipping-time", "faq:return-policy"}
        (answer,) = await c.push("Return policy", quick_reply="faq:return-policy")
        assert answer.body.startswith("You can return anything")


async def test_the_report_shows_the_question_asked_for_an_answer_picked_from_buttons(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, **CLARIFY_ALWAYS) as c:
        await c.push("delivery of my refund")
        (answer,) = await c.push("Return policy", quick_reply="faq:return-policy")
        no = answer.quick_replies[-1].id
        assert no.startswith("fb:no:")
        await c.push("No", quick_reply=no)
        async with c.hub.db.read() as s:
            items, _ = await gaps(s, cursor=None, limit=10)
        # Not "Return policy", the title of the button, which the KB already has.
        assert [(i["question"], i["why"], i["entry_id"]) for i in items] == [
            ("delivery of my refund", "unhelpful", "return-policy")
        ]


async def test_sms_numbered_reply_picks_the_offered_button(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, **CLARIFY_ALWAYS) as c:
        (offer,) = await c.push("refund delivery", channel=Channel.SMS, sender="+15551230000")
        second = offer.quick_replies[1]
        (answer,) = await c.push("۲", channel=Channel.SMS, sender="+15551230000")
        expected = {"faq:shipping-time": "Orders arrive", "faq:return-policy": "You can return"}
        if second.id in expected:
            assert answer.body.startswith(expected[second.id])
        else:
            assert answer.body  # another entry: still answered, not treated as a question


async def test_handoff_on_request_in_persian_with_a_summary(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        await c.push("سفارش من کی می‌رسد؟")
        (bye,) = await c.push("می‌خواهم با اپراتور صحبت کنم")
        assert bye.body.startswith("شما را به یکی از همکارانمان وصل می‌کنم")
        ticket = await c.ticket()
        assert (ticket.status, ticket.bot_silenced, ticket.assignee_id) == ("open", True, None)
        async with c.hub.db.read() as s:
            note = await s.scalar(select(Message).where(Message.private.is_(True)))
            event = await s.scalar(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))
        assert note is not None and event is not None
        assert "asked for a person" in note.body
        assert "سفارش من کی می‌رسد؟" in note.body
        assert "answered shipping-time" in note.body
        assert event.data["reason"] == "requested"
        # Silenced for good on this ticket.
        assert await c.push("hello?") == []


async def test_a_routing_rule_on_the_bots_topic_picks_the_team_at_handoff(tmp_path: Path) -> None:
    rules = [{"name": "deliveries", "when": {"topic": ["Shipping-Time"]}, "team": "Logistics"}]
    async with bot_hub(tmp_path, **{"routing.rules": rules}) as c:
        await c.push("when will my order arrive?")
        await c.push("I want to talk to a person")
        ticket = await c.ticket()
        async with c.hub.db.read() as s:
            team = await s.scalar(select(Team).where(Team.name == "Logistics"))
            routed = await s.scalar(
                select(TicketEventRow).where(TicketEventRow.kind == "ticket.routed").order_by(TicketEventRow.id.desc())
            )
        assert team is not None and ticket.team_id == team.id
        assert routed is not None and "rule 'deliveries'" in routed.data["reason"]


async def test_handoff_after_two_misses_in_a_row(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, **CLARIFY_ALWAYS) as c:
        (first,) = await c.push("my thing is broken somehow")
        assert first.body == "Did you mean one of these?"
        (second,) = await c.push("the gizmo does not work")
        assert second.body.startswith("I'm connecting you")
        async with c.hub.db.read() as s:
            event = await s.scalar(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))
        assert event is not None and event.data["reason"] == "repeated_misses"


async def test_unknown_question_hands_off_and_shows_in_the_report(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, **HANDOFF_BELOW_045) as c:
        (bye,) = await c.push("What is the weather today?")
        assert bye.body.startswith("I'm connecting you")
        from hub.bot_report import gaps

        async with c.hub.db.read() as s:
            items, _ = await gaps(s, cursor=None, limit=10)
        assert [(i["question"], i["why"]) for i in items] == [("What is the weather today?", "no_match")]


async def test_none_of_these_hands_off_and_reports_the_question(tmp_path: Path) -> None:
    async with bot_hub(tmp_path, **CLARIFY_ALWAYS) as c:
        (offer,) = await c.push("What is the weather today?")
        assert offer.quick_replies[-1].id == "bot:none"
        (bye,) = await c.push("None of these", quick_reply="bot:none")
        assert bye.body.startswith("I'm connecting you")
        from hub.bot_report import gaps

        async with c.hub.db.read() as s:
            items, _ = await gaps(s, cursor=None, limit=10)
            event = await s.scalar(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))
        assert [(i["question"], i["why"]) for i in items] == [("What is the weather today?", "none_of_these")]
        assert event is not None and event.data["reason"] == "none_of_these"


async def test_unhelpful_answer_is_reported_and_handed_off(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        await c.push("I forgot my password")
        (bye,) = await c.push("No", quick_reply="fb:no")
        assert bye.body.startswith("I'm connecting you")
        from hub.bot_report import gaps

        async with c.hub.db.read() as s:
            items, _ = await gaps(s, cursor=None, limit=10)
        assert [(i["question"], i["why"], i["entry_id"]) for i in items] == [
            ("I forgot my password", "unhelpful", "password-reset")
        ]


async def test_bot_is_silent_once_a_human_took_over(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        await c.push("hi")
        ticket = await c.ticket()
        async with c.hub.db.write() as s:
            t = await check_ticket(s, ticket.id, lock=True)
            await do_post_message(s, t, body="Hi, Ana here", author=Author.AGENT)
        await c.settle()
        assert [m.body for m in c.pop()] == ["Hi, Ana here"]
        assert await c.push("when will my order arrive?") == []


async def test_auto_replies_are_never_answered(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        assert await c.push("Out of office until Monday", extras={"auto_submitted": "auto-replied"}) == []


async def test_vip_goes_to_a_person_at_once(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        await c.push("hi")
        async with c.hub.db.write() as s:
            contact = (await s.scalars(select(Contact))).one()
            contact.tags = ["vip"]
        (bye,) = await c.push("when will my order arrive?")
        assert bye.body.startswith("I'm connecting you")


async def test_the_bot_and_routing_agree_on_who_is_a_vip(tmp_path: Path) -> None:
    """With a tag of the admin's choosing (bot.vip_tag), the bot hands the
    customer off and routing's ``vip`` rule takes the ticket."""
    settings: dict[str, Any] = {
        "bot.vip_tag": "Gold",
        "routing.rules": [{"name": "vip", "when": {"vip": True}, "team": "Priority", "priority": "high"}],
    }
    async with bot_hub(tmp_path, **settings) as c:
        await c.push("hi")
        async with c.hub.db.write() as s:
            contact = (await s.scalars(select(Contact))).one()
            contact.tags = ["gold"]
        (bye,) = await c.push("when will my order arrive?")
        assert bye.body.startswith("I'm connecting you")
        ticket = await c.ticket()
        async with c.hub.db.read() as s:
            team = await s.scalar(select(Team).where(Team.name == "Priority"))
        assert team is not None and (ticket.team_id, ticket.priority) == (team.id, "high")


async def test_qualification_with_a_correction_and_a_resume_on_sms(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        replies = await c.push("How much does it cost?")
        assert [r.body for r in replies] == ["Plans start at $29 a month.", "May I have your name?"]
        assert [r.body for r in await c.push("Sara Ahmadi")] == ["What is your email address?"]
        assert (await c.push("sara.example.com"))[0].body.startswith("That does not look like an email")
        assert [r.body for r in await c.push("sara@old.example")] == ["And a phone number we can reach you on?"]
        assert [r.body for r in await c.push("+98 912 123 4567")] == ["Which company are you with?"]
        fix = await c.push("actually my email is sara@acme.example")
        assert [r.body for r in fix] == [
            "Thanks, I've updated your email to sara@acme.example.",
            "Which company are you with?",
        ]
        # She leaves the web chat and texts from the phone she gave: same contact, same dialog.
        sms = await c.push("Acme Ltd", channel=Channel.SMS, sender="+989121234567")
        assert [r.body for r in sms] == ["How many people would use it?"]
        assert [r.body for r in await c.push("۲۵ نفر", channel=Channel.SMS, sender="+989121234567")] == [
            "بودجه ماهانه شما چقدر است (دلار)؟"
        ]
        # 70 points with the budget: sales-qualified, so handed to sales at once, in
        # the Persian she wrote last ("2k" says nothing about the language).
        done = await c.push("2k", channel=Channel.SMS, sender="+989121234567")
        assert [r.body for r in done] == ["سپاس! شما را به تیم فروش معرفی می‌کنم."]
        async with c.hub.db.read() as s:
            contact = (await s.scalars(select(Contact))).one()
            note = await s.scalar(select(Message).where(Message.private.is_(True)))
            event = await s.scalar(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))
        assert contact.attributes == {
            "name": "Sara Ahmadi",
            "email": "sara@acme.example",
            "phone": "+989121234567",
            "company": "Acme Ltd",
            "team_size": 25,
            "budget": 2000,
        }
        assert contact.name == "Sara Ahmadi"
        assert (contact.lead_score, contact.lifecycle_stage) == (70, "sales_qualified")
        assert event is not None and event.data["reason"] == "sales_qualified" and event.data["team_id"] is not None
        assert note is not None and "email=sara@acme.example" in note.body and "Lead score 70" in note.body


class GatedBackend(LexicalBackend):
    """Builds only while the gate is open, as a large knowledge base that takes
    long to build would."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def fit(self, prepared: Prepared, rows: Any, labels: Any, n_classes: int) -> FittedModel:
        assert self.gate.wait(timeout=60), "the test never opened the gate"
        return super().fit(prepared, rows, labels, n_classes)


GIFT_CARDS = KbEntry(
    id="gift-cards",
    questions=("do you sell gift cards", "can I buy a gift card", "gift voucher"),
    answer="Yes, from $10 to $500.",
)


async def test_a_changed_knowledge_base_is_built_in_the_background_while_the_old_one_answers(
    tmp_path: Path,
) -> None:
    async with bot_hub(tmp_path, **FAST_POLL) as c:
        backend = GatedBackend()
        await c.hub.bot.kb.close()
        kb = c.hub.bot.kb = KnowledgeBase(c.hub.db, c.hub.config.bot, backend=lambda: backend)
        kb.start()
        await kb.idle()
        first = kb.revision
        assert first > 0 and kb.builds == 1
        backend.gate.clear()
        # Another process (say the CLI) adds an entry: the poller notices and
        # starts a build that cannot finish yet.
        async with c.hub.db.write() as s:
            await do_save_faq(s, GIFT_CARDS, actor="cli")
        # Meanwhile customers are answered at once, by the knowledge base as it was.
        (reply,) = await asyncio.wait_for(c.push("how long does shipping take"), 60)
        assert reply.body.startswith("Orders arrive in 3 to 5 working days.")
        assert (await asyncio.wait_for(kb.ask("do you sell gift cards"), 60)).entry_id != "gift-cards"
        assert kb.revision == first
        backend.gate.set()
        await kb.idle()
        assert kb.revision > first and kb.builds == 2
        assert (await kb.ask("do you sell gift cards")).entry_id == "gift-cards"
        (reply,) = await c.push("do you sell gift vouchers?")
        assert reply.body.startswith("Yes, from $10 to $500.")


async def test_the_knowledge_base_is_built_when_the_hub_starts(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        await c.hub.bot.kb.idle()
        # Built from what was imported before start, without any customer asking.
        assert c.hub.bot.kb.builds == 1
        assert c.hub.bot.kb.revision > 0


class _NoDatabase:
    """Any query fails the test: most messages are not the bot's, and the
    worker runs this step for every one of them."""

    def read(self) -> Any:
        raise AssertionError("the bot step queried the database for a message that is not the bot's")

    write = read


async def test_messages_on_tickets_that_are_not_the_bots_cost_no_query() -> None:
    from hub.bot_step import BotService
    from hub.config import BotConfig
    from hub.stream.base import Event

    service = BotService(_NoDatabase(), BotConfig())  # type: ignore[arg-type]
    for ticket in ({"id": 1, "status": "open"}, {"id": 1, "status": "snoozed"}):
        payload = {
            "kind": "message.received",
            "message": {"id": 7, "direction": "in", "author": "contact", "contact_id": 3, "ticket_id": 1},
            "ticket": ticket,
            "ticket_created": False,
        }
        await service.on_message(Event(key="1", payload=payload, outbox_id=1))


async def test_a_no_pressed_under_an_older_answer_does_not_rate_the_latest(tmp_path: Path) -> None:
    async with bot_hub(tmp_path) as c:
        (shipping,) = await c.push("how long does shipping take")
        (returns,) = await c.push("how do I return an item")
        assert shipping.quick_replies[1].id != returns.quick_replies[1].id
        # Pressed under the first answer, after the second came.
        assert await c.push("No", quick_reply=shipping.quick_replies[1].id) == []
        async with c.hub.db.read() as s:
            turns = (await s.scalars(select(BotTurn).order_by(BotTurn.id))).all()
        assert [(t.action, t.feedback) for t in turns] == [("answer", None), ("answer", None), ("ignored", None)]
        assert (await c.ticket()).status == "pending"  # not handed off
        (bye,) = await c.push("No", quick_reply=returns.quick_replies[1].id)
        assert bye.body.startswith("I'm connecting you")


async def test_a_handoff_to_an_entrys_team_finds_the_team_in_any_case(tmp_path: Path) -> None:
    kb = [{"id": "refund", "questions": ["I want a refund"], "answer": "Refunds take 5 days.", "team": "support"}]
    async with bot_hub(tmp_path, kb=kb) as c:
        async with c.hub.db.write() as s:
            support = await do_get_or_create_team(s, "Support")
        await c.push("I want a refund")
        await c.push("No", quick_reply="fb:no")
        async with c.hub.db.read() as s:
            teams = (await s.scalars(select(Team.name))).all()
        assert teams == ["Support"]
        assert (await c.ticket()).team_id == support.id


async def test_telegrams_start_button_is_greeted_not_handed_off(tmp_path: Path) -> None:
    """The channel marks /start (extras.command); a deep link's payload is the
    customer's source, not a question."""
    async with bot_hub(tmp_path) as c:
        (hello,) = await c.push("/start spring_sale", extras={"command": "start", "start_payload": "spring_sale"})
        assert hello.body == "Hello! How can I help you today?"
        assert (await c.ticket()).status == "pending"
        (answer,) = await c.push("when will my order arrive?")
        assert answer.body.startswith("Orders arrive in 3 to 5 working days.")
        async with c.hub.db.read() as s:
            handoffs = await s.scalar(
                select(func.count()).select_from(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff")
            )
        assert handoffs == 0
