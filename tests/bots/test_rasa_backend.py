"""The ``rasa`` bot backend against a local server speaking Rasa's REST
channel (``POST /webhooks/rest/webhook``: ``{sender, message}`` in, a list of
``{recipient_id, text, buttons: [{title, payload}], custom}`` out), in a real
hub whose customers write through fake channels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from bots import rasa_backend
from hub.config import BotConfig
from hub.core import Channel
from storage.models import Message, Team, TicketEventRow
from tests.bots.conversation import Conversation, bot_hub


class FakeRasa:
    """Answers like a small Rasa assistant; ``down`` makes it fail."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.down = False
        # Whatever JSON the assistant's handoff names as the team.
        self.team: Any = "Sales"

    def responses(self, sender: str, message: str) -> list[dict[str, Any]]:
        if message in ("hi", "سلام"):
            return [
                {
                    "recipient_id": sender,
                    "text": "Hi! What can I do for you?",
                    "buttons": [
                        {"title": "Pricing", "payload": "/ask_price"},
                        {"title": "Talk to a person", "payload": '/human_handoff{"reason": "button"}'},
                    ],
                }
            ]
        if message == "/ask_price":
            return [
                {"recipient_id": sender, "text": "Pro is $29 a month."},
                {"recipient_id": sender, "text": "Shall I book a demo?"},
            ]
        if message.startswith("/human_handoff"):
            return [
                {"recipient_id": sender, "text": "Let me get a colleague."},
                {"recipient_id": sender, "custom": {"handoff": {"reason": "asked_for_human", "team": self.team}}},
            ]
        return [{"recipient_id": sender, "text": f"You said: {message}"}]

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        if self.down:
            return web.json_response({"error": "model not loaded"}, status=500)
        return web.json_response(self.responses(body["sender"], body["message"]))


@asynccontextmanager
async def rasa_conversation(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Conversation, FakeRasa]]:
    rasa = FakeRasa()
    app = web.Application()
    app.router.add_post("/webhooks/rest/webhook", rasa.webhook)
    server = TestServer(app)
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        overrides: dict[str, Any] = {"bot.backend": "rasa", "bot.rasa.url": url, **config}
        async with bot_hub(tmp_path, **overrides) as c:
            yield c, rasa
    finally:
        await server.close()


async def test_texts_and_buttons_are_relayed_and_a_pressed_button_sends_its_payload(tmp_path: Path) -> None:
    async with rasa_conversation(tmp_path) as (c, rasa):
        (hello,) = await c.push("hi")
        assert hello.body == "Hi! What can I do for you?"
        assert [(q.id, q.title) for q in hello.quick_replies] == [
            ("/ask_price", "Pricing"),
            ('/human_handoff{"reason": "button"}', "Talk to a person"),
        ]
        contact_id = (await c.ticket()).contact_id
        assert rasa.received[0]["sender"] == f"hub-contact-{contact_id}"
        assert rasa.received[0]["message"] == "hi"
        assert rasa.received[0]["metadata"]["channel"] == "webchat"

        price = await c.push("Pricing", quick_reply="/ask_price")
        assert rasa.received[-1]["message"] == "/ask_price"
        assert [m.body for m in price] == ["Pro is $29 a month.", "Shall I book a demo?"]
        assert (await c.ticket()).status == "pending"
        # A question the hub's own FAQ would not know is Rasa's business too.
        (echo,) = await c.push("what is the meaning of life")
        assert echo.body == "You said: what is the meaning of life"


async def test_sms_numbered_reply_sends_the_buttons_payload(tmp_path: Path) -> None:
    async with rasa_conversation(tmp_path) as (c, rasa):
        (hello,) = await c.push("سلام", channel=Channel.SMS, sender="+15551230000")
        assert [q.title for q in hello.quick_replies] == ["Pricing", "Talk to a person"]
        price = await c.push("۱", channel=Channel.SMS, sender="+15551230000")
        assert rasa.received[-1]["message"] == "/ask_price"
        assert rasa.received[-1]["metadata"]["channel"] == "sms"
        assert [m.body for m in price] == ["Pro is $29 a month.", "Shall I book a demo?"]


@pytest.mark.parametrize(
    ("text", "sent"), [("2", "/b"), ("۲", "/b"), ("²", "/b"), ("①", "/a"), ("3", "3"), ("2a", "2a")]
)
def test_a_numbered_reply_of_any_digit_form_picks_its_button(text: str, sent: str) -> None:
    """'²' passes ``str.isdigit`` but not ``int``: it used to raise, and the
    customer's message was never answered."""
    offered = [{"id": "a", "payload": "/a"}, {"id": "b", "payload": "/b"}]
    assert rasa_backend.payload_for(None, text, {"offered": offered}) == sent


async def test_a_handoff_from_rasa_opens_the_ticket_for_its_team(tmp_path: Path) -> None:
    async with rasa_conversation(tmp_path) as (c, rasa):
        await c.push("hi")
        (bye,) = await c.push("Talk to a person", quick_reply='/human_handoff{"reason": "button"}')
        assert bye.body == "Let me get a colleague."
        ticket = await c.ticket()
        assert (ticket.status, ticket.bot_silenced) == ("open", True)
        async with c.hub.db.read() as s:
            event = await s.scalar(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))
            note = await s.scalar(select(Message).where(Message.private.is_(True)))
            team = await s.scalar(select(Team).where(Team.name == "Sales"))
        assert event is not None and team is not None
        assert (event.data["reason"], event.data["team_id"]) == ("asked_for_human", team.id)
        assert note is not None
        assert "Customer: hi" in note.body
        assert "Bot: Rasa: Hi! What can I do for you?" in note.body
        # The bot, Rasa included, is silent on the ticket from now on.
        asked = len(rasa.received)
        assert await c.push("hello?") == []
        assert len(rasa.received) == asked


async def test_the_hubs_own_handoff_rules_come_before_rasa(tmp_path: Path) -> None:
    async with rasa_conversation(tmp_path) as (c, rasa):
        (bye,) = await c.push("می‌خواهم با اپراتور صحبت کنم")
        assert bye.body.startswith("شما را به یکی از همکارانمان وصل می‌کنم")
        assert rasa.received == []
        async with c.hub.db.read() as s:
            event = await s.scalar(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))
        assert event is not None and event.data["reason"] == "requested"


async def test_rasa_down_is_tried_three_times_then_a_person_takes_over(tmp_path: Path) -> None:
    async with rasa_conversation(tmp_path) as (c, rasa):
        rasa.down = True
        (bye,) = await c.push("hi")
        assert bye.body.startswith("I'm connecting you with a member of our team")
        assert [r["message"] for r in rasa.received] == ["hi", "hi", "hi"]
        ticket = await c.ticket()
        assert (ticket.status, ticket.bot_silenced) == ("open", True)
        async with c.hub.db.read() as s:
            event = await s.scalar(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))
            note = await s.scalar(select(Message).where(Message.private.is_(True)))
        assert event is not None and event.data["reason"] == "rasa_unavailable"
        assert note is not None and "did not answer" in note.body


@pytest.mark.parametrize("team", [42, ["Sales"], {"name": "Sales"}, "   ", "x" * 201, True])
async def test_a_handoff_naming_no_usable_team_goes_to_the_configured_team(tmp_path: Path, team: Any) -> None:
    async with rasa_conversation(tmp_path, **{"bot.handoff_team": "Support"}) as (c, rasa):
        rasa.team = team
        await c.push("hi")
        (bye,) = await c.push("Talk to a person", quick_reply='/human_handoff{"reason": "button"}')
        assert bye.body == "Let me get a colleague."
        ticket = await c.ticket()
        assert (ticket.status, ticket.bot_silenced) == ("open", True)
        async with c.hub.db.read() as s:
            event = await s.scalar(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))
            support = await s.scalar(select(Team).where(Team.name == "Support"))
        assert event is not None and support is not None
        assert (event.data["reason"], event.data["team_id"]) == ("asked_for_human", support.id)


def test_a_handoff_team_name_is_trimmed() -> None:
    config = BotConfig(handoff_team="Support")
    state: dict[str, Any] = {"transcript": []}
    out = rasa_backend.outcome([{"custom": {"handoff": {"team": "  Sales  "}}}], state, "en", config)
    assert out.handoff is not None and out.handoff.team == "Sales"
    out = rasa_backend.outcome([{"custom": {"handoff": {"team": 7}}}], state, "en", BotConfig())
    assert out.handoff is not None and out.handoff.team is None
