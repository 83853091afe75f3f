"""``crm-hub rasa-actions`` as a team's Rasa assistant uses it: the real
command (rasa-sdk's Sanic server) on a free port, sent the action requests
Rasa sends (``POST /webhook?token=...``: next_action, sender_id, tracker,
domain), and the hub's database checked afterwards."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import zlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, text

from hub.cli import NOT_MIGRATED
from hub.config import ConfigError, load_config
from hub.core import Channel, InboundMessage, utcnow
from storage.db import Database
from storage.ingest import ingest_batch
from storage.migrate import upgrade_async
from storage.models import AuditLog, Contact, Identity, Message, Ticket, TicketEventRow
from tests.hub.procs import CLI, free_port, hub_env, run_cli, wait_ready

RASA_VERSION = "3.21.0"
# The action_endpoint token of the assistant's endpoints.yml.
TOKEN = "s3cret-action-token"
# A Rasa conversation of Sara's own: its update_lead created her contact.
SARA_CONVERSATION = "rasa-conv-sara"
DOMAIN: dict[str, Any] = {
    "version": "3.1",
    "intents": ["greet", "ask_price", "human_handoff"],
    "entities": [],
    "slots": {
        "email": {"type": "text", "mappings": [{"type": "from_text"}]},
        "budget": {"type": "text", "mappings": [{"type": "from_text"}]},
        "handoff_reason": {"type": "text", "mappings": [{"type": "custom"}]},
    },
    "responses": {},
    "actions": ["action_hub_lookup_customer", "action_hub_update_lead", "action_hub_handoff"],
    "forms": {},
}


def action_call(action: str, sender: str, slots: dict[str, Any] | None = None, intent: str = "greet") -> dict[str, Any]:
    """A request as Rasa's ``RemoteAction`` makes it."""
    now = time.time()
    events = [
        {"event": "action", "timestamp": now - 5, "name": "action_session_start"},
        {"event": "session_started", "timestamp": now - 5},
        {
            "event": "user",
            "timestamp": now - 4,
            "text": "hi, how much is the pro plan?",
            "parse_data": {"intent": {"name": "ask_price", "confidence": 0.97}, "entities": []},
            "input_channel": "rest",
        },
        {"event": "bot", "timestamp": now - 3, "text": "Pro is $29 a month.", "data": {}},
        {
            "event": "user",
            "timestamp": now - 2,
            "text": "I want to talk to a person",
            "parse_data": {"intent": {"name": intent, "confidence": 0.93}, "entities": []},
            "input_channel": "rest",
        },
    ]
    return {
        "next_action": action,
        "sender_id": sender,
        "tracker": {
            "sender_id": sender,
            "conversation_id": sender,
            "slots": {"email": None, "budget": None, "handoff_reason": None, **(slots or {})},
            "latest_message": {
                "text": "I want to talk to a person",
                "intent": {"name": intent, "confidence": 0.93},
                "intent_ranking": [{"name": intent, "confidence": 0.93}, {"name": "greet", "confidence": 0.04}],
                "entities": [],
                "message_id": "b2831e73",
                "metadata": {},
            },
            "latest_event_time": now - 2,
            "followup_action": None,
            "paused": False,
            "events": events,
            "latest_input_channel": "rest",
            "active_loop": {},
            "latest_action": {"action_name": "action_listen"},
            "latest_action_name": "action_listen",
        },
        "domain": DOMAIN,
        "version": RASA_VERSION,
    }


class Server:
    def __init__(self, base: str, db: Database, contact_id: int, ticket_id: int) -> None:
        self.base = base
        self.db = db
        self.contact_id = contact_id  # Sara: web chat visitor, email and phone known, a pending ticket
        self.ticket_id = ticket_id
        # Where Rasa posts action calls, with the token as it sends it.
        self.webhook = f"{base}/webhook?token={TOKEN}"

    async def call(self, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.post(self.webhook, json=body) as r:
            answer: dict[str, Any] = await r.json()
            assert r.status == status, answer
            return answer


def slots(answer: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e["value"] for e in answer["events"] if e["event"] == "slot"}


async def seed(db: Database) -> tuple[int, int]:
    async with db.write() as s:
        from hub.actions import do_ensure_inbox

        await do_ensure_inbox(s, key="webchat", channel=Channel.WEBCHAT, name="Website")
        results = await ingest_batch(
            s,
            [
                InboundMessage(
                    channel=Channel.WEBCHAT,
                    inbox="webchat",
                    external_id=f"w{n}",
                    sender="visitor-sara",
                    body=body,
                    sender_name="Sara Ahmadi",
                )
                for n, body in enumerate(["Hello", "Do you have a student plan?"])
            ],
        )
        ticket_id = results[0].ticket_id  # type: ignore[union-attr]
        ticket = await s.get(Ticket, ticket_id)
        assert ticket is not None
        ticket.status = "pending"  # the bot owns it
        contact = await s.get(Contact, ticket.contact_id)
        assert contact is not None
        contact.tags = ["vip"]
        s.add(Identity(contact_id=contact.id, channel="email", address="sara@acme.example"))
        s.add(Identity(contact_id=contact.id, channel="phone", address="+989121234567"))
        s.add(Identity(contact_id=contact.id, channel="rasa", address=SARA_CONVERSATION))
        return contact.id, ticket_id


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    env = hub_env(tmp_path / "data", HUB_RASA_ACTIONS_TOKEN=TOKEN)
    db_url = f"sqlite+aiosqlite:///{(tmp_path / 'data' / 'hub.db').resolve()}"
    (tmp_path / "data").mkdir()
    await upgrade_async(db_url)
    db = Database(db_url)
    contact_id, ticket_id = await seed(db)
    port = free_port()
    log = tmp_path / "rasa-actions.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CLI, "rasa-actions", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(proc, f"{base}/health", 60, f"crm-hub rasa-actions (log: {log})")
        yield Server(base, db, contact_id, ticket_id)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await db.dispose()


async def test_the_server_lists_the_hubs_actions(server: Server) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http, http.get(f"{server.base}/actions", headers=bearer) as r:
        assert r.status == 200
        assert {a["name"] for a in await r.json()} == {
            "action_hub_lookup_customer",
            "action_hub_update_lead",
            "action_hub_handoff",
        }


async def test_lookup_fills_slots_with_the_customer_and_their_history(server: Server) -> None:
    answer = await server.call(action_call("action_hub_lookup_customer", f"hub-contact-{server.contact_id}"))
    assert answer["responses"] == []
    found = slots(answer)
    assert found == {
        "hub_contact_id": server.contact_id,
        "hub_customer_name": "Sara Ahmadi",
        "hub_customer_email": "sara@acme.example",
        "hub_customer_phone": "+989121234567",
        "hub_lifecycle_stage": None,
        "hub_lead_score": 0,
        "hub_vip": True,
        "hub_open_tickets": 1,
        "hub_recent_history": ["[webchat] contact: Hello", "[webchat] contact: Do you have a student plan?"],
    }
    # A Rasa conversation of its own: found by the email or phone slot.
    by_email = await server.call(action_call("action_hub_lookup_customer", "f3a9c1", {"email": "sara@acme.example"}))
    assert slots(by_email)["hub_contact_id"] == server.contact_id
    unknown = await server.call(action_call("action_hub_lookup_customer", "f3a9c1", {"email": "who@else.example"}))
    assert slots(unknown) == {"hub_contact_id": None}


async def test_update_lead_creates_a_contact_with_score_and_stage(server: Server) -> None:
    call = action_call(
        "action_hub_update_lead",
        "rasa-7d1e",
        {"email": "Omid@Shop.example", "budget": "۵ هزار", "team_size": "40", "timeline": "this month"},
    )
    # Slots the hub does not know (team_size, timeline here are not in Rasa's
    # domain but are in the tracker) count as long as the hub's dialog has them.
    answer = await server.call(call)
    got = slots(answer)
    assert got["hub_lead_score"] == 10 + 25 + 15 + 20
    assert got["hub_lifecycle_stage"] == "sales_qualified"
    async with server.db.read() as s:
        contact = await s.get(Contact, got["hub_contact_id"])
        identity = await s.scalar(select(Identity).where(Identity.address == "omid@shop.example"))
    assert contact is not None and identity is not None and identity.contact_id == contact.id
    assert contact.attributes == {
        "email": "omid@shop.example",
        "budget": 5000,
        "team_size": 40,
        "timeline": "this month",
    }
    assert (contact.lead_score, contact.lifecycle_stage) == (70, "sales_qualified")


async def test_update_lead_on_a_known_contact_skips_invalid_values(server: Server) -> None:
    call = action_call(
        "action_hub_update_lead", f"hub-contact-{server.contact_id}", {"email": "not an email", "budget": "800"}
    )
    got = slots(await server.call(call))
    assert got == {"hub_contact_id": server.contact_id, "hub_lead_score": 25, "hub_lifecycle_stage": "lead"}
    async with server.db.read() as s:
        contact = await s.get(Contact, server.contact_id)
    assert contact is not None
    assert contact.attributes == {"budget": 800}
    assert contact.lead_score == 25


async def test_update_lead_keeps_one_contact_for_one_rasa_conversation(server: Server) -> None:
    sender = "rasa-web-abc123"
    async with server.db.read() as s:
        before = set((await s.scalars(select(Contact.id))).all())
    # No email or phone yet: the first call creates the contact...
    first = slots(await server.call(action_call("action_hub_update_lead", sender, {"budget": "800"})))
    cid = first["hub_contact_id"]
    assert cid not in before
    # ...the next one gets back the contact id slot it set...
    second = action_call("action_hub_update_lead", sender, {"budget": "800", "team_size": "40", "hub_contact_id": cid})
    assert slots(await server.call(second))["hub_contact_id"] == cid
    # ...and one without it (a domain that does not keep the slot) finds the conversation's contact.
    third = action_call("action_hub_update_lead", sender, {"timeline": "this month"})
    assert slots(await server.call(third))["hub_contact_id"] == cid
    # The customer lookup finds it too.
    found = slots(await server.call(action_call("action_hub_lookup_customer", sender)))
    assert found["hub_contact_id"] == cid
    async with server.db.read() as s:
        after = set((await s.scalars(select(Contact.id))).all())
        contact = await s.get(Contact, cid)
    assert after - before == {cid}
    assert contact is not None
    assert contact.attributes == {"budget": 800, "team_size": 40, "timeline": "this month"}
    assert contact.lead_score == 25 + 15 + 20


async def test_handoff_opens_the_ticket_with_the_reason_and_the_conversation(server: Server) -> None:
    call = action_call("action_hub_handoff", SARA_CONVERSATION, {"handoff_reason": "asked_for_human"})
    answer = await server.call(call)
    assert slots(answer) == {"hub_handed_off": True}
    # The custom payload is for the hub's rasa backend only: Rasa's own channels
    # (Twilio, say) would send it to the customer.
    assert answer["responses"] == []
    async with server.db.read() as s:
        ticket = await s.get(Ticket, server.ticket_id)
        note = await s.scalar(select(Message).where(Message.ticket_id == server.ticket_id, Message.private.is_(True)))
        event = await s.scalar(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))
    assert ticket is not None and (ticket.status, ticket.bot_silenced) == ("open", True)
    assert note is not None and note.body.splitlines() == [
        "Handoff from the Rasa assistant: asked_for_human.",
        "Customer: hi, how much is the pro plan?",
        "Bot: Pro is $29 a month.",
        "Customer: I want to talk to a person",
    ]
    assert event is not None and event.actor == "rasa" and event.data["reason"] == "asked_for_human"
    # Done once: a second request (Rasa retries when the answer was lost)
    # changes nothing, and says the ticket is with a person.
    again = await server.call(call)
    assert slots(again) == {"hub_handed_off": True}
    async with server.db.read() as s:
        notes = (
            await s.scalars(select(Message.id).where(Message.ticket_id == server.ticket_id, Message.private.is_(True)))
        ).all()
        handoffs = (await s.scalars(select(TicketEventRow.id).where(TicketEventRow.kind == "ticket.handoff"))).all()
    assert (len(notes), len(handoffs)) == (1, 1)


async def test_handoff_reason_defaults_to_the_intent_and_hub_conversations_hand_off_through_the_backend(
    server: Server,
) -> None:
    answer = await server.call(action_call("action_hub_handoff", f"hub-contact-{server.contact_id}", intent="human"))
    # The hub's rasa backend hands off when it sees this response, with Rasa's texts.
    assert answer["responses"][0]["custom"] == {"handoff": {"reason": "human"}}
    async with server.db.read() as s:
        ticket = await s.get(Ticket, server.ticket_id)
    assert ticket is not None and ticket.status == "pending"
    nobody = await server.call(action_call("action_hub_handoff", "unknown-sender"))
    assert slots(nobody) == {"hub_handed_off": False}


async def test_bad_requests_are_refused(server: Server) -> None:
    unknown = await server.call(action_call("action_does_not_exist", "x"), status=404)
    assert "action_does_not_exist" in str(unknown)
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.webhook, data=b"{not json", headers={"Content-Type": "application/json"}) as r,
    ):
        assert r.status == 400


async def contact_ids(server: Server) -> set[int]:
    async with server.db.read() as s:
        return set((await s.scalars(select(Contact.id))).all())


async def test_a_typed_email_never_chooses_the_contact_a_write_goes_to(server: Server) -> None:
    before = await contact_ids(server)
    # An anonymous visitor of the team's Rasa bot types Sara's email address.
    got = slots(
        await server.call(
            action_call("action_hub_update_lead", "stranger-1", {"email": "sara@acme.example", "budget": "1"})
        )
    )
    cid = got["hub_contact_id"]
    assert cid not in before
    async with server.db.read() as s:
        sara = await s.get(Contact, server.contact_id)
        stranger = await s.get(Contact, cid)
        email_owner = await s.scalar(
            select(Identity.contact_id).where(Identity.channel == "email", Identity.address == "sara@acme.example")
        )
        conversation = await s.scalar(
            select(Identity.contact_id).where(Identity.channel == "rasa", Identity.address == "stranger-1")
        )
    assert sara is not None and sara.attributes == {} and sara.lead_score == 0
    # What they typed is an attribute of their own contact; the address stays Sara's identity.
    assert stranger is not None and stranger.attributes == {"email": "sara@acme.example", "budget": 1}
    assert (email_owner, conversation) == (server.contact_id, cid)
    # The conversation's later calls, without the slot, stay with its own contact.
    again = action_call("action_hub_update_lead", "stranger-1", {"email": "sara@acme.example", "budget": "1"})
    assert slots(await server.call(again))["hub_contact_id"] == cid
    found = slots(await server.call(action_call("action_hub_lookup_customer", "stranger-1")))
    assert found["hub_contact_id"] == cid and found["hub_recent_history"] == []
    assert await contact_ids(server) == before | {cid}


async def test_a_lookup_by_a_typed_email_links_nothing(server: Server) -> None:
    # README: a conversation of Rasa's own finds the customer by the email slot...
    by_email = slots(
        await server.call(action_call("action_hub_lookup_customer", "9f1c2d", {"email": "sara@acme.example"}))
    )
    assert by_email["hub_contact_id"] == server.contact_id
    # ...for reading: the conversation does not become Sara's.
    later = slots(await server.call(action_call("action_hub_lookup_customer", "9f1c2d")))
    assert later == {"hub_contact_id": None}
    async with server.db.read() as s:
        linked = await s.scalar(select(Identity).where(Identity.address == "9f1c2d"))
    assert linked is None


async def test_a_lookup_by_a_typed_email_never_lets_the_conversation_write_to_that_contact(server: Server) -> None:
    # A stranger types Sara's email; the lookup answers with her contact (as
    # the README says), and Rasa carries the slot to the next actions.
    found = slots(
        await server.call(action_call("action_hub_lookup_customer", "9f1c2d", {"email": "sara@acme.example"}))
    )
    assert found["hub_contact_id"] == server.contact_id
    update = action_call(
        "action_hub_update_lead",
        "9f1c2d",
        {"hub_contact_id": server.contact_id, "phone": "+989350001122", "budget": "900"},
    )
    own = slots(await server.call(update))["hub_contact_id"]
    handoff = action_call(
        "action_hub_handoff", "9f1c2d", {"hub_contact_id": server.contact_id, "handoff_reason": "asked_for_human"}
    )
    assert slots(await server.call(handoff)) == {"hub_handed_off": False}
    async with server.db.read() as s:
        sara = await s.get(Contact, server.contact_id)
        phone_owner = await s.scalar(select(Identity.contact_id).where(Identity.address == "+989350001122"))
        ticket = await s.get(Ticket, server.ticket_id)
        notes = (await s.scalars(select(Message.id).where(Message.private.is_(True)))).all()
    # The stranger's answers went to a contact of their own, not to Sara's.
    assert own not in (None, server.contact_id) and phone_owner == own
    assert sara is not None and sara.attributes == {} and sara.lead_score == 0
    assert ticket is not None and (ticket.status, ticket.bot_silenced) == ("pending", False) and notes == []


async def test_a_sender_id_is_matched_only_against_rasa_conversations(server: Server) -> None:
    # Rasa's REST and socketio channels let the client choose the sender id:
    # one that is Sara's phone number is not Sara.
    for sender in ("+989121234567", "sara@acme.example", "visitor-sara"):
        assert slots(await server.call(action_call("action_hub_lookup_customer", sender))) == {"hub_contact_id": None}
        assert slots(await server.call(action_call("action_hub_handoff", sender))) == {"hub_handed_off": False}
    # Her own conversation is her.
    found = slots(await server.call(action_call("action_hub_lookup_customer", SARA_CONVERSATION)))
    assert found["hub_contact_id"] == server.contact_id
    async with server.db.read() as s:
        ticket = await s.get(Ticket, server.ticket_id)
    assert ticket is not None and ticket.status == "pending"


@pytest.mark.parametrize(
    "slot",
    [
        {"phone": "+98 912 123 4567"},
        {"phone": "+98-912-123-4567"},
        {"phone": "+۹۸۹۱۲۱۲۳۴۵۶۷"},
        {"email": "SARA@ACME.EXAMPLE"},
        {"email": "it is sara@acme.example"},
    ],
)
async def test_a_lookup_reads_the_typed_address_as_update_lead_stores_it(server: Server, slot: dict[str, str]) -> None:
    found = slots(await server.call(action_call("action_hub_lookup_customer", "f3a9c1", slot)))
    assert found["hub_contact_id"] == server.contact_id


async def test_handoff_of_a_snoozed_ticket_wakes_it(server: Server) -> None:
    async with server.db.write() as s:
        ticket = await s.get(Ticket, server.ticket_id)
        assert ticket is not None
        ticket.status, ticket.snoozed_until, ticket.waiting_since = "snoozed", utcnow() + timedelta(days=3), None
    call = action_call("action_hub_handoff", SARA_CONVERSATION, {"handoff_reason": "asked_for_human"})
    assert slots(await server.call(call)) == {"hub_handed_off": True}
    async with server.db.read() as s:
        ticket = await s.get(Ticket, server.ticket_id)
        events = (
            await s.scalars(
                select(TicketEventRow).where(TicketEventRow.ticket_id == server.ticket_id).order_by(TicketEventRow.id)
            )
        ).all()
        audited = (await s.scalars(select(AuditLog.action).where(AuditLog.entity_id == server.ticket_id))).all()
    assert ticket is not None
    assert (ticket.status, ticket.snoozed_until, ticket.bot_silenced) == ("open", None, True)
    assert ticket.waiting_since is not None
    woke = [e for e in events if e.kind == "ticket.status_changed"]
    assert len(woke) == 1 and woke[0].actor == "rasa" and woke[0].data == {"from": "snoozed", "to": "open"}
    assert [e.kind for e in events][-1] == "ticket.handoff"
    assert "ticket.status" in audited and "ticket.handoff" in audited


async def lead_audits(server: Server) -> int:
    async with server.db.read() as s:
        return len((await s.scalars(select(AuditLog.id).where(AuditLog.action == "contact.lead"))).all())


async def test_update_lead_never_lowers_the_score_or_the_stage(server: Server) -> None:
    async with server.db.write() as s:
        contact = await s.get(Contact, server.contact_id)
        assert contact is not None
        # As after a merge, which keeps the higher score of two contacts.
        contact.lead_score, contact.lifecycle_stage = 70, "sales_qualified"
    audits = await lead_audits(server)
    sender = f"hub-contact-{server.contact_id}"
    # Nothing valid in it: nothing changes, not even the audit log.
    got = slots(await server.call(action_call("action_hub_update_lead", sender, {"email": "not an email"})))
    assert got == {"hub_contact_id": server.contact_id, "hub_lead_score": 70, "hub_lifecycle_stage": "sales_qualified"}
    assert await lead_audits(server) == audits
    # An answer worth fewer points than the stored score keeps it.
    got = slots(await server.call(action_call("action_hub_update_lead", sender, {"budget": "800"})))
    assert got == {"hub_contact_id": server.contact_id, "hub_lead_score": 70, "hub_lifecycle_stage": "sales_qualified"}
    async with server.db.write() as s:
        contact = await s.get(Contact, server.contact_id)
        assert contact is not None
        assert (contact.attributes, contact.lead_score, contact.lifecycle_stage) == (
            {"budget": 800},
            70,
            "sales_qualified",
        )
        # A stage an agent set outside the qualification ladder stays.
        contact.lead_score, contact.lifecycle_stage = 0, "customer"
    got = slots(await server.call(action_call("action_hub_update_lead", sender, {"team_size": "40"})))
    assert got["hub_lifecycle_stage"] == "customer" and got["hub_lead_score"] == 25 + 15


async def test_a_hub_sender_for_a_contact_that_does_not_exist_matches_nobody(server: Server) -> None:
    before = await contact_ids(server)
    for sender in ("hub-contact-99999", "hub-contact-" + "9" * 30):
        update = action_call("action_hub_update_lead", sender, {"budget": "900", "hub_contact_id": server.contact_id})
        assert slots(await server.call(update)) == {"hub_contact_id": None}
        assert slots(await server.call(action_call("action_hub_lookup_customer", sender))) == {"hub_contact_id": None}
        assert slots(await server.call(action_call("action_hub_handoff", sender))) == {"hub_handed_off": False}
    assert await contact_ids(server) == before
    async with server.db.read() as s:
        sara = await s.get(Contact, server.contact_id)
    assert sara is not None and sara.attributes == {}


async def test_an_update_with_nothing_valid_creates_nobody(server: Server) -> None:
    before = await contact_ids(server)
    got = slots(await server.call(action_call("action_hub_update_lead", "rasa-empty", {"email": "not an email"})))
    assert got == {"hub_contact_id": None}
    assert await contact_ids(server) == before


@pytest.mark.parametrize("known", ["9" * 30, 1e300, -3, "0", True, [1], " ٣ "])
async def test_a_contact_id_slot_the_database_cannot_hold_matches_nobody(server: Server, known: Any) -> None:
    got = slots(
        await server.call(action_call("action_hub_update_lead", "s1", {"budget": "900", "hub_contact_id": known}))
    )
    assert got["hub_contact_id"] not in (None, server.contact_id)
    found = slots(await server.call(action_call("action_hub_lookup_customer", "s2", {"hub_contact_id": known})))
    assert found == {"hub_contact_id": None}


def tracker_with(**fields: Any) -> dict[str, Any]:
    call = action_call("action_hub_handoff", SARA_CONVERSATION, {"handoff_reason": None})
    call["tracker"]["events"].append({"event": "user", "text": 42})
    call["tracker"].update(fields)
    return call


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"latest_message": None}, "rasa"),
        ({"latest_message": "hi"}, "rasa"),
        ({"latest_message": {"intent": "human"}}, "rasa"),
        ({"events": None}, "greet"),
        ({"events": ["garbage", 7, None, {"event": "user", "text": "a person please"}]}, "greet"),
        ({"slots": None}, "greet"),
        ({"slots": ["handoff_reason"]}, "greet"),
    ],
)
async def test_tracker_fields_of_the_wrong_type_count_as_absent(
    server: Server, fields: dict[str, Any], reason: str
) -> None:
    answer = await server.call(tracker_with(**fields))
    assert slots(answer) == {"hub_handed_off": True}
    async with server.db.read() as s:
        event = await s.scalar(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))
        note = await s.scalar(select(Message).where(Message.ticket_id == server.ticket_id, Message.private.is_(True)))
    assert event is not None and event.data["reason"] == reason
    # Only events that are messages, with a text, make the note.
    assert note is not None and "42" not in note.body
    if "events" in fields:
        assert note.body.splitlines()[1:] == (["Customer: a person please"] if fields["events"] else [])


SECRET = "my card is 4111 1111 1111 1111"


def call_without(*path: str) -> dict[str, Any]:
    call = action_call("action_hub_lookup_customer", "x")
    call["tracker"]["events"][-1]["text"] = SECRET
    where = call
    for key in path[:-1]:
        where = where[key]
    del where[path[-1]]
    return call


def call_with(value: Any, *path: str) -> dict[str, Any]:
    call = action_call("action_hub_lookup_customer", "x")
    call["tracker"]["events"][-1]["text"] = SECRET
    where = call
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    return call


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (call_without("tracker"), "tracker must be an object"),
        (call_with([SECRET], "tracker"), "tracker must be an object"),
        (call_with(12345, "tracker", "sender_id"), "tracker.sender_id must be a string"),
        (call_without("tracker", "sender_id"), "tracker.sender_id must be a string"),
        (call_without("next_action"), "next_action must be the name of an action"),
        (call_with(3, "version"), "version must be a string"),
        (call_with([SECRET], "domain"), "domain must be an object"),
        ([SECRET], "the body must be a JSON object (an action call)"),
        (SECRET, "the body must be a JSON object (an action call)"),
    ],
)
async def test_a_request_that_is_not_an_action_call_is_refused(server: Server, body: Any, error: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(server.webhook, json=body) as r:
        assert r.status == 400
        text = await r.text()
    # rasa-sdk's shape for a refused call, and nothing of the request in it.
    answer = json.loads(text)
    assert answer["error"] == error and set(answer) == {"error", "action_name"}
    assert "4111" not in text


async def test_a_failing_action_does_not_answer_with_the_request(server: Server) -> None:
    async with server.db.write() as s:
        # The lookup's query of messages fails (as with a database gone wrong).
        await s.execute(text("ALTER TABLE messages RENAME TO messages_elsewhere"))
    async with aiohttp.ClientSession() as http:
        call = call_with(f"hub-contact-{server.contact_id}", "tracker", "sender_id")
        async with http.post(server.webhook, json=call) as r:
            assert r.status == 500
            answer = await r.text()
        deflated = zlib.compress(json.dumps(call).encode())
        headers = {"Content-Encoding": "deflate", "Content-Type": "application/json"}
        async with http.post(server.webhook, data=deflated, headers=headers) as r:
            assert r.status == 500
            assert await r.text() == answer
        async with http.post(server.webhook, data=b"x" + deflated, headers=headers) as r:
            assert r.status == 400
    assert json.loads(answer) == {
        "error": "the action failed; the action server's log says why",
        "action_name": "action_hub_lookup_customer",
    }


def fails(args: list[str], env: dict[str, str]) -> str:
    """The one line a failing command writes on stderr."""
    done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, f"crm-hub {' '.join(args)} succeeded:\n{done.stdout}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_port_in_use_is_one_line_and_never_listening(tmp_path: Path) -> None:
    env = hub_env(tmp_path / "data")
    run_cli(["migrate"], env)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = fails(["rasa-actions", "--port", str(port)], env)
    assert line == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_database_never_migrated_stops_the_start(tmp_path: Path) -> None:
    env = hub_env(tmp_path / "data")
    # As every command says it: which database is not migrated.
    said = fails(["rasa-actions", "--port", str(free_port())], env)
    assert said == f"Error: {NOT_MIGRATED} (database sqlite+aiosqlite:///{tmp_path / 'data' / 'hub.db'})"
    # Checking did not create the database file that serving would have.
    assert not (tmp_path / "data" / "hub.db").exists()


async def test_a_call_without_the_token_is_refused(server: Server) -> None:
    call = action_call("action_hub_lookup_customer", f"hub-contact-{server.contact_id}")
    async with aiohttp.ClientSession() as http:
        for url, headers in (
            (f"{server.base}/webhook", {}),
            (f"{server.base}/webhook?token=wrong", {}),
            (f"{server.base}/webhook", {"Authorization": "Bearer wrong"}),
            (f"{server.base}/webhook", {"Authorization": TOKEN}),
        ):
            async with http.post(url, json=call, headers=headers) as r:
                assert r.status == 401
                assert "Sara" not in await r.text()
        async with http.get(f"{server.base}/actions") as r:
            assert r.status == 401
        # A proxy or the endpoint's own headers may send it as a bearer token.
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(f"{server.base}/webhook", json=call, headers=bearer) as r:
            assert r.status == 200
        # Health checks of a container know no token.
        async with http.get(f"{server.base}/health") as r:
            assert r.status == 200


async def test_a_web_page_cannot_post_action_calls(server: Server) -> None:
    # A page on any site, opened on the host, posts without a preflight only
    # as text/plain, and reads the answer only if CORS allows its origin.
    body = json.dumps(action_call("action_hub_lookup_customer", f"hub-contact-{server.contact_id}"))
    evil = {"Origin": "https://evil.example"}
    async with aiohttp.ClientSession() as http:
        async with http.post(server.webhook, data=body, headers={**evil, "Content-Type": "text/plain"}) as r:
            assert r.status == 415
            assert "Sara" not in await r.text()
        async with http.post(server.webhook, data=body, headers={**evil, "Content-Type": "application/json"}) as r:
            assert r.status == 200
            assert "Access-Control-Allow-Origin" not in r.headers
        preflight = {**evil, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        async with http.options(server.webhook, headers=preflight) as r:
            assert "Access-Control-Allow-Origin" not in r.headers


def test_listening_beyond_loopback_needs_the_token(tmp_path: Path) -> None:
    env = hub_env(tmp_path / "data")
    run_cli(["migrate"], env)
    line = fails(["rasa-actions", "--host", "0.0.0.0", "--port", str(free_port())], env)  # noqa: S104
    assert "HUB_RASA_ACTIONS_TOKEN" in line and "bot.rasa.actions_token" in line


def test_the_token_comes_from_the_environment_only(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("bot:\n  rasa:\n    actions_token: written-down\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="HUB_RASA_ACTIONS_TOKEN"):
        load_config(config, env={})
    config.write_text("bot:\n  rasa:\n    actions_port: 5056\n", encoding="utf-8")
    loaded = load_config(config, env={"HUB_RASA_ACTIONS_TOKEN": TOKEN})
    assert loaded.bot.rasa.actions_token == TOKEN
    assert TOKEN not in repr(loaded.bot.rasa)
