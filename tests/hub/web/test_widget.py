"""The widget's side of web chat over a real websocket: settings and
availability in the session frame, the pre-chat / offline form, typing from
the agent to the visitor."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from hub.app import HUB
from storage.models import AuditLog, Contact, Identity
from tests.hub.helpers import Agent, add_agent, make_config, next_frame, running_hub
from tests.hub.twilio_helpers import twilio_hub


async def test_session_frame_carries_settings_and_availability(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        **{"widget.title": "Talk to Acme", "widget.prechat.enabled": True, "widget.prechat.fields": ["name", "phone"]},
    )
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with http.ws_connect(f"{base}/chat/ws") as visitor:
            session = await next_frame(visitor, "session")
        assert session["widget"]["title"]["en"] == "Talk to Acme"
        assert session["widget"]["prechat"] == {"enabled": True, "fields": ["name", "phone"], "required": ["name"]}
        assert session["available"] is False  # nobody is online
        assert session["known"] == []
        # No email or SMS set up: the offline form promises no reply on either.
        assert session["widget"]["offline_reply"] == []

        agent = await Agent.login(http, base, "ana@example.com")
        await agent.put("/api/v1/me/presence", {"presence": "online"})
        async with http.ws_connect(f"{base}/chat/ws") as visitor:
            assert (await next_frame(visitor, "session"))["available"] is True


async def test_bot_counts_as_available(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"bot.enabled": True})
    async with (
        running_hub(config) as server,
        aiohttp.ClientSession() as http,
        http.ws_connect(str(server.make_url("/chat/ws"))) as visitor,
    ):
        assert (await next_frame(visitor, "session"))["available"] is True


@pytest.mark.parametrize(
    ("frame", "field", "needle"),
    [
        ({"email": "not-an-email"}, "email", "is not an email address"),
        ({"phone": "12"}, "phone", "phone"),
        ({"name": "x" * 201}, "name", "longer than 200"),
        ({"name": "Sara", "offline": True}, "email", "email address or a phone number"),
        ({"name": 5}, "name", "must be a string"),
    ],
)
async def test_bad_answers_name_the_field_and_store_nothing(
    tmp_path: Path, frame: dict[str, object], field: str, needle: str
) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        async with http.ws_connect(str(server.make_url("/chat/ws"))) as visitor:
            await next_frame(visitor, "session")
            await visitor.send_json({"type": "identify", **frame})
            error = await next_frame(visitor, "error")
            assert error["code"] == "invalid_field" and error["field"] == field
            assert needle in error["message"]
            await visitor.send_json({"type": "identify"})
            assert "at least one of" in (await next_frame(visitor, "error"))["message"]
        hub = server.app[HUB]
        async with hub.db.read() as s:
            assert (await s.scalars(select(Contact))).all() == []


async def test_prechat_answers_go_on_the_contact(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"widget.phone_region": "IR"})
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        hub = server.app[HUB]
        async with http.ws_connect(str(server.make_url("/chat/ws"))) as visitor:
            session = await next_frame(visitor, "session")
            token = session["visitor_token"]
            await visitor.send_json(
                {"type": "identify", "name": "سارا", "email": " Sara@Example.COM ", "phone": "۰۹۱۲ ۱۲۳ ۴۵۶۷"}
            )
            identified = await next_frame(visitor, "identified")
            assert identified["known"] == ["name", "email", "phone"]
            await visitor.send_json({"type": "message", "text": "سلام", "client_id": "c1"})
            await next_frame(visitor, "message", client_id="c1")
        async with hub.db.read() as s:
            (contact,) = (await s.scalars(select(Contact))).all()
            idents = {(i.channel, i.address) for i in (await s.scalars(select(Identity))).all()}
            audit = [a.action for a in (await s.scalars(select(AuditLog))).all()]
        assert contact.name == "سارا"
        assert ("email", "sara@example.com") in idents and ("phone", "+989121234567") in idents
        assert "contact.identified" in audit
        # A returning visitor is not asked again.
        async with http.ws_connect(str(server.make_url(f"/chat/ws?token={token}"))) as again:
            assert (await next_frame(again, "session"))["known"] == ["name", "email", "phone"]


async def test_someone_elses_email_is_not_taken_over(tmp_path: Path) -> None:
    """Anyone can type anyone's address: it is noted for an agent to merge,
    never moved, and the visitor sees none of the owner's history."""
    config = make_config(tmp_path)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        hub = server.app[HUB]
        url = str(server.make_url("/chat/ws"))
        async with http.ws_connect(url) as owner:
            await next_frame(owner, "session")
            await owner.send_json({"type": "identify", "email": "owner@example.com"})
            await next_frame(owner, "identified")
            await owner.send_json({"type": "message", "text": "my secret order", "client_id": "o1"})
            await next_frame(owner, "message", client_id="o1")
        async with http.ws_connect(url) as other:
            await next_frame(other, "session")
            await other.send_json({"type": "identify", "email": "owner@example.com", "offline": True})
            await next_frame(other, "identified")
        async with hub.db.read() as s:
            contacts = (await s.scalars(select(Contact).order_by(Contact.id))).all()
            owners = (await s.scalars(select(Identity.contact_id).where(Identity.channel == "email"))).all()
        assert len(contacts) == 2
        assert owners == [contacts[0].id]
        assert contacts[1].attributes["possible_duplicate_of"] == [contacts[0].id]
        assert contacts[1].attributes["reply_channel"] == "email"


async def test_agent_typing_reaches_the_visitor_and_other_agents(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        agent = await Agent.login(http, base, "ana@example.com")
        async with agent.events() as events, http.ws_connect(f"{base}/chat/ws") as visitor:
            await next_frame(visitor, "session")
            await visitor.send_json({"type": "message", "text": "hi", "client_id": "c1"})
            received = await next_frame(events, "message.received")
            tid = received["ticket"]["id"]
            await events.send_json({"type": "typing", "ticket_id": tid})
            seen = await next_frame(visitor, "typing")
            assert seen == {"type": "typing", "author": "agent", "name": "ana", "typing": True}
            colleague = await next_frame(events, "typing", author="agent")
            assert colleague["ticket_id"] == tid and colleague["agent_id"] == 1
            await events.send_json({"type": "typing", "ticket_id": tid, "typing": False})
            assert (await next_frame(visitor, "typing"))["typing"] is False
            # The visitor's typing reaches the agents.
            await visitor.send_json({"type": "typing"})
            assert (await next_frame(events, "typing", author="contact"))["ticket_id"] == tid
            await events.send_json({"type": "typing", "ticket_id": 999})
            assert "does not exist" in (await next_frame(events, "error"))["message"]
            await events.send_json({"type": "typing", "ticket_id": "1"})
            assert "integer" in (await next_frame(events, "error"))["message"]


async def test_the_offline_form_may_promise_a_text_back_when_sms_is_set_up(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        base = str(t.server.make_url("")).rstrip("/")
        async with t.http.ws_connect(f"{base}/chat/ws") as visitor:
            assert (await next_frame(visitor, "session"))["widget"]["offline_reply"] == ["sms"]
