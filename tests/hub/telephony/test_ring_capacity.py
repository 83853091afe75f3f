"""Who the phone line rings is not limited by voice ticket capacity: an answered
call's ticket stays open with its agent, and call-back tickets are routed to
agents, so counting them silenced idle agents' phones after one call. Being on
a live call is what keeps an agent from ringing (the voice desk checks it)."""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import select, update

from hub.actions import do_assign, do_create_agent, do_ensure_inbox
from hub.core import Channel
from storage.db import Database
from storage.models import Agent, Ticket
from tests.hub.helpers import PASSWORD
from tests.hub.routing_world import add_agent, routing_config, worker, write
from tests.hub.twilio_helpers import eventually, twilio_hub
from tests.hub.web.test_twilio_voice import AGENT_PHONE, agent_with_phone, call_params, step

KIM_PHONE = "+15550008888"
PHONE_INBOX = "voice:+15550001111"


async def test_agents_holding_open_voice_tickets_are_still_rung(db: Database) -> None:
    async with db.write() as s:
        await do_ensure_inbox(s, key=PHONE_INBOX, channel=Channel.VOICE, name="Phone")
    w = worker(db, routing_config(teams=[{"name": "Support"}], default_capacity={"voice": 1}))
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com")  # an answered call's ticket
    bob = await add_agent(db, "bob@example.com")  # two call-back tickets
    cat = await add_agent(db, "cat@example.com")  # nothing open: rung first
    off = await add_agent(db, "off@example.com", online=False)
    mute = await add_agent(db, "mute@example.com")  # no phone
    gone = await add_agent(db, "gone@example.com")
    for n, agent in enumerate([ana, bob, bob]):
        tid = (
            await write(db, "", sender=f"+1555765000{n}", channel=Channel.VOICE, inbox="voice:+15550001111")
        ).ticket_id
        async with db.write() as s:
            t = await s.get(Ticket, tid)
            assert t is not None
            await do_assign(s, t, agent_id=agent, team_id=None, actor="router")
    async with db.write() as s:
        for n, agent_id in enumerate([ana, bob, cat, off, gone]):
            await s.execute(update(Agent).where(Agent.id == agent_id).values(phone=f"+1555000000{n}"))
        await s.execute(update(Agent).where(Agent.id == gone).values(active=False))
    ringable = [a for a, _ in await w.router.phone_agents("Support")]
    assert ringable == [cat, ana, bob]
    assert [a for a, _ in await w.router.phone_agents(None)] == [cat, ana, bob]
    # Routing still gives voice tickets only to agents with room for one.
    assert [a.id for a in await w.router.available_agents("Support", "voice")] == [cat, mute]


async def test_after_one_answered_call_and_one_call_back_both_agents_ring_again(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        _, sam = await agent_with_phone(t, "sam@example.com", "Support")
        async with t.hub.db.write() as s:
            row = await do_create_agent(
                s, email="kim@example.com", name="Kim", password=PASSWORD, teams=["Support"], phone=KIM_PHONE
            )
            kim = row.id
            await s.execute(update(Agent).where(Agent.id == kim).values(presence="online"))
        # Sam answers a call; its ticket stays open and his.
        answered_from = "+15557650001"
        first = call_params("CA" + secrets.token_hex(16), From=answered_from, Caller=answered_from)
        await step(t, "/webhooks/twilio/voice", first)
        await step(t, "/webhooks/twilio/voice/menu", {**first, "Digits": "2"})
        leg = {**call_params("CA" + secrets.token_hex(16)), "ParentCallSid": first["CallSid"], "To": AGENT_PHONE}
        await step(t, f"/webhooks/twilio/voice/answered?agent={sam}", leg)
        await step(t, "/webhooks/twilio/voice/status", {**first, "CallStatus": "completed", "CallDuration": "60"})
        # Another caller hangs up in the menu: routing gives Kim the call-back ticket.
        missed_from = "+15557650002"
        missed = call_params("CA" + secrets.token_hex(16), From=missed_from, Caller=missed_from)
        await step(t, "/webhooks/twilio/voice", missed)
        await step(t, "/webhooks/twilio/voice/status", {**missed, "CallStatus": "completed", "CallDuration": "3"})

        async def owners() -> dict[int, int] | None:
            async with t.hub.db.read() as s:
                rows = (await s.execute(select(Ticket.assignee_id, Ticket.id).where(Ticket.channel == "voice"))).all()
            held = {a: tid for a, tid in rows if a is not None}
            return held if set(held) == {sam, kim} else None

        await eventually(owners)
        third = "+15557650003"
        call = call_params("CA" + secrets.token_hex(16), From=third, Caller=third)
        await step(t, "/webhooks/twilio/voice", call)
        doc = await step(t, "/webhooks/twilio/voice/menu", {**call, "Digits": "2"})
        assert doc is not None and doc.find("Record") is None
        assert {n.text for n in doc.findall("Dial/Number")} == {AGENT_PHONE, KIM_PHONE}
