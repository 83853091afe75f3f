"""What a web chat visitor tells the widget about themselves reaches the
agents: one ``contact.updated`` event per change, after the commit, with the
name cleaned of bidi controls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import delete, select

from channels.webchat import VisitorDetails
from hub.core import Channel, InboundMessage
from hub.inbox import CONTACT_UPDATED, do_identify_visitor
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Contact, OutboxRow
from tests.hub.helpers import Agent, add_agent, make_config, next_frame, running_hub


async def _events(db: Database) -> list[OutboxRow]:
    async with db.read() as s:
        rows = (await s.scalars(select(OutboxRow).order_by(OutboxRow.id))).all()
    return [r for r in rows if r.payload["kind"] == CONTACT_UPDATED]


async def test_each_change_a_visitor_makes_is_one_event_and_a_repeat_is_none(db: Database) -> None:
    async with db.write() as s:
        (r,) = await ingest_batch(
            s, [InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id="v1:1", sender="v1", body="hi")]
        )
        assert isinstance(r, IngestResult)
        await s.execute(delete(OutboxRow))
    details = VisitorDetails(name="Eve \u202eevil\u202c", email="eve@example.org", phone=None, offline=False)
    async with db.write() as s:
        assert await do_identify_visitor(s, "v1", details) == r.contact_id
    (event,) = await _events(db)
    # The same event an agent's edit sends: keyed by the contact's latest
    # ticket (in order with its events), the contact as the API shows it.
    assert event.key == str(r.ticket_id)
    contact_seen = event.payload.pop("contact")
    assert event.payload == {
        "kind": "contact.updated",
        "actor": "contact",
        "contact_id": r.contact_id,
        "changed": ["attributes", "email", "name"],
    }
    assert contact_seen["id"] == r.contact_id and contact_seen["name"] == "Eve evil"
    assert {i["channel"]: i["address"] for i in contact_seen["identities"]} == {
        "webchat": "v1",
        "email": "eve@example.org",
    }
    async with db.read() as s:
        contact = await s.get(Contact, r.contact_id)
        assert contact is not None and contact.name == "Eve evil"

    # The widget sends the form again (a reload): nothing changed, nothing to tell.
    async with db.write() as s:
        await do_identify_visitor(s, "v1", details)
    assert len(await _events(db)) == 1

    async with db.write() as s:
        await do_identify_visitor(s, "v1", VisitorDetails(name="Eve", email=None, phone=None, offline=False))
    assert [e.payload["changed"] for e in await _events(db)] == [["attributes", "email", "name"], ["name"]]


async def test_agents_hear_live_when_a_visitor_identifies(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        agent = await Agent.login(http, base, "ana@example.com")
        async with agent.events() as events, http.ws_connect(f"{base}/chat/ws") as visitor:
            await next_frame(visitor, "session")
            await visitor.send_json({"type": "message", "text": "hello", "client_id": "c1"})
            received = await next_frame(events, "message.received")
            contact_id = received["ticket"]["contact_id"]
            await visitor.send_json({"type": "identify", "name": "Reza Rezaei", "email": "reza@example.org"})
            await next_frame(visitor, "identified")
            frame: dict[str, Any] = await next_frame(events, "contact.updated", contact_id=contact_id)
        assert frame["contact"]["id"] == contact_id and frame["contact"]["name"] == "Reza Rezaei"
        assert {"channel": "email", "address": "reza@example.org"}.items() <= frame["contact"]["identities"][-1].items()
        assert {"name", "email"} <= set(frame["changed"])
        # What the inbox reads on it: the new name and the address to answer on.
        contact = await agent.get(f"/api/v1/contacts/{contact_id}")
        assert contact["name"] == "Reza Rezaei"
        assert ("email", "reza@example.org") in {(i["channel"], i["address"]) for i in contact["identities"]}


async def test_a_visitor_who_has_not_written_yet_is_keyed_by_contact(db: Database) -> None:
    # The pre-chat form comes before the first message: no ticket to keep order with.
    details = VisitorDetails(name="Sara", email="sara@example.org", phone=None, offline=False)
    async with db.write() as s:
        contact_id = await do_identify_visitor(s, "v9", details)
    (event,) = await _events(db)
    assert event.key == f"contact:{contact_id}"
    assert event.payload["contact"]["name"] == "Sara"
