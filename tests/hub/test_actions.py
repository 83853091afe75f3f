"""Actions that later issues build on: the bot's handoff, and the worker's
extension point for steps per event kind."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, select, update

from hub.actions import do_get_or_create_team, do_handoff
from hub.core import Channel, InboundMessage, TicketEventKind
from hub.stream.base import Event
from hub.workers import EventProcessor
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import AuditLog, Message, OutboxRow, Ticket, TicketEventRow


async def pending_ticket(db: Database) -> int:
    async with db.write() as s:
        (r,) = await ingest_batch(
            s, [InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id="v:1", sender="v", body="price?")]
        )
        assert isinstance(r, IngestResult)
        await s.execute(update(Ticket).where(Ticket.id == r.ticket_id).values(status="pending"))
        await s.execute(delete(OutboxRow))
        return r.ticket_id


async def test_handoff_opens_silences_notes_and_announces(db: Database) -> None:
    tid = await pending_ticket(db)
    async with db.write() as s:
        team = await do_get_or_create_team(s, "Sales")
        ticket = await s.get(Ticket, tid)
        assert ticket is not None
        assert await do_handoff(s, ticket, reason="asked for a person", summary="Asked: price?", team_id=team.id)
        team_id = team.id
    async with db.read() as s:
        ticket = await s.get(Ticket, tid)
        assert ticket is not None
        assert (ticket.status, ticket.bot_silenced) == ("open", True)
        note = (await s.scalars(select(Message).where(Message.ticket_id == tid, Message.private.is_(True)))).one()
        assert (note.body, note.author, note.status) == ("Asked: price?", "bot", "sent")
        event = (await s.scalars(select(TicketEventRow).where(TicketEventRow.kind == "ticket.handoff"))).one()
        assert event.data == {"reason": "asked for a person", "team_id": team_id, "from": "pending", "to": "open"}
        kinds = [r.payload["kind"] for r in (await s.scalars(select(OutboxRow).order_by(OutboxRow.id))).all()]
        assert kinds == ["message.created", "ticket.handoff"]
        assert (await s.scalars(select(AuditLog.action).where(AuditLog.action == "ticket.handoff"))).one()


async def test_second_handoff_changes_nothing(db: Database) -> None:
    tid = await pending_ticket(db)
    for expected in (True, False):
        async with db.write() as s:
            ticket = await s.get(Ticket, tid)
            assert ticket is not None
            assert await do_handoff(s, ticket, reason="again", summary="note") is expected
    async with db.read() as s:
        notes = (await s.scalars(select(Message).where(Message.private.is_(True)))).all()
        assert len(notes) == 1


async def test_handoff_to_unknown_team_writes_nothing(db: Database) -> None:
    from hub.errors import NotFound

    tid = await pending_ticket(db)

    async def handoff() -> None:
        async with db.write() as s:
            ticket = await s.get(Ticket, tid)
            assert ticket is not None
            await do_handoff(s, ticket, reason="x", summary="note", team_id=999)

    with pytest.raises(NotFound, match="team 999"):
        await handoff()
    async with db.read() as s:
        ticket = await s.get(Ticket, tid)
        assert ticket is not None and ticket.status == "pending" and not ticket.bot_silenced


class _Live:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        self.published.extend(items)


async def test_subscribed_steps_run_in_order_before_the_live_fanout(db: Database) -> None:
    live = _Live()
    processor = EventProcessor(db, live, sender=None)  # type: ignore[arg-type]
    seen: list[str] = []

    async def first(event: Event) -> None:
        seen.append(f"first:{event.kind}")

    async def second(event: Event) -> None:
        seen.append(f"second:{event.kind}")

    processor.subscribe(TicketEventKind.HANDOFF, first)
    processor.subscribe("ticket.handoff", second)
    await processor.handle([Event(key="1", payload={"kind": "ticket.handoff", "ticket": {"id": 1}})])
    assert seen == ["first:ticket.handoff", "second:ticket.handoff"]
    assert live.published == [("agents", {"type": "ticket.handoff", "ticket": {"id": 1}})]


async def test_merging_contacts_moves_the_bots_memory_and_turns(db: Database) -> None:
    from datetime import timedelta

    from hub.actions import do_merge_contacts
    from hub.core import utcnow
    from storage.models import BotSession, BotTurn, Contact

    async with db.write() as s:
        web, sms, other = await ingest_batch(
            s,
            [
                InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id="w1", sender="v1", body="price?"),
                InboundMessage(channel=Channel.SMS, inbox="sms:+15550001111", external_id="s1", sender="+15551230000"),
                InboundMessage(channel=Channel.SMS, inbox="sms:+15550001111", external_id="s2", sender="+15559990000"),
            ],
        )
        assert isinstance(web, IngestResult) and isinstance(sms, IngestResult) and isinstance(other, IngestResult)
        now = utcnow()
        dialog = {"dialog": {"slot": "company", "values": {"name": "Sara"}}, "misses": 0}
        s.add(BotSession(contact_id=web.contact_id, state=dialog, updated_at=now))
        s.add(BotSession(contact_id=sms.contact_id, state={"misses": 1}, updated_at=now - timedelta(days=3)))
        s.add(BotSession(contact_id=other.contact_id, state={"misses": 1}, updated_at=now + timedelta(seconds=1)))
        s.add(BotTurn(message_id=web.message_id, ticket_id=web.ticket_id, contact_id=web.contact_id, action="qualify"))
    async with db.write() as s:
        # The web chat visitor turns out to be the SMS customer: the dialog in progress goes along.
        target, source = await s.get(Contact, sms.contact_id), await s.get(Contact, web.contact_id)
        assert target is not None and source is not None
        await do_merge_contacts(s, target, source, actor="agent:1")
    async with db.read() as s:
        sessions = {r.contact_id: r.state for r in (await s.scalars(select(BotSession))).all()}
        turn = (await s.scalars(select(BotTurn))).one()
    assert sessions == {sms.contact_id: dialog, other.contact_id: {"misses": 1}}
    assert turn.contact_id == sms.contact_id
    async with db.write() as s:
        # Both remember something: the conversation the customer had last wins.
        target, source = await s.get(Contact, sms.contact_id), await s.get(Contact, other.contact_id)
        assert target is not None and source is not None
        await do_merge_contacts(s, target, source, actor="agent:1")
    async with db.read() as s:
        sessions = {r.contact_id: r.state for r in (await s.scalars(select(BotSession))).all()}
    assert sessions == {sms.contact_id: {"misses": 1}}


def sms(sender: str, ext: str, body: str = "hi") -> InboundMessage:
    return InboundMessage(channel=Channel.SMS, inbox="sms:+15550001111", external_id=ext, sender=sender, body=body)


@pytest.mark.postgres
async def test_opposite_merges_at_once_leave_one_contact(postgres_url: str) -> None:
    """A <- B and B <- A on two connections: the second must see the first
    under its lock and refuse, not leave both merged into each other."""
    import asyncio

    from hub.actions import check_contact, do_ensure_inbox, do_merge_contacts
    from hub.errors import Conflict
    from storage.migrate import upgrade_async
    from storage.models import Contact

    await upgrade_async(postgres_url)
    first_db, second_db = Database(postgres_url), Database(postgres_url)
    try:
        async with first_db.write() as s:
            await do_ensure_inbox(s, key="sms:+15550001111", channel=Channel.SMS, name="SMS")
            a, b = await ingest_batch(s, [sms("+15550000001", "a1"), sms("+15550000002", "b1")])
            assert isinstance(a, IngestResult) and isinstance(b, IngestResult)
        second_loaded = asyncio.Event()
        first_merged = asyncio.Event()
        first_done = asyncio.Event()
        outcome: list[str] = []

        async def merge_a_into_b() -> None:
            # Loads both contacts like the API does, before the other merge commits.
            try:
                async with second_db.write() as s:
                    target = await check_contact(s, b.contact_id)
                    source = await check_contact(s, a.contact_id)
                    second_loaded.set()
                    await first_merged.wait()
                    merging = asyncio.ensure_future(do_merge_contacts(s, target, source, actor="agent:2"))
                    first_done.set()
                    await merging
                outcome.append("merged")
            except Conflict as exc:
                outcome.append(str(exc))

        async def merge_b_into_a() -> None:
            async with first_db.write() as s:
                await second_loaded.wait()
                target = await check_contact(s, a.contact_id)
                source = await check_contact(s, b.contact_id)
                await do_merge_contacts(s, target, source, actor="agent:1")
                first_merged.set()
                # Still uncommitted: the other merge is now running against our locks.
                await first_done.wait()

        await asyncio.gather(merge_b_into_a(), merge_a_into_b())
        assert outcome == [f"contact {b.contact_id} was merged into {a.contact_id}; merge into that one"]
        async with first_db.read() as s:
            merged = {c.id: c.merged_into_id for c in (await s.scalars(select(Contact))).all()}
        assert merged == {a.contact_id: None, b.contact_id: a.contact_id}
    finally:
        await first_db.dispose()
        await second_db.dispose()


async def test_merge_announces_the_tickets_it_resolves(db: Database) -> None:
    from hub.actions import do_merge_contacts
    from storage.models import Contact

    async with db.write() as s:
        a, b = await ingest_batch(s, [sms("+15550000001", "a1"), sms("+15550000002", "b1")])
        assert isinstance(a, IngestResult) and isinstance(b, IngestResult)
        await s.execute(delete(OutboxRow))
    async with db.write() as s:
        target, source = await s.get(Contact, a.contact_id), await s.get(Contact, b.contact_id)
        assert target is not None and source is not None
        await do_merge_contacts(s, target, source, actor="agent:1")
    async with db.read() as s:
        ticket = await s.get(Ticket, b.ticket_id)
        assert ticket is not None and ticket.status == "resolved" and ticket.contact_id == a.contact_id
        data = {"from": "open", "to": "resolved", "reason": "merged", "continued_in": a.ticket_id}
        row = (
            await s.scalars(
                select(TicketEventRow).where(
                    TicketEventRow.ticket_id == b.ticket_id, TicketEventRow.kind == "ticket.status_changed"
                )
            )
        ).one()
        assert (row.contact_id, row.actor, row.data) == (a.contact_id, "agent:1", data)
        events = [r.payload for r in (await s.scalars(select(OutboxRow).order_by(OutboxRow.id))).all()]
        changed = [e for e in events if e["kind"] == "ticket.status_changed"]
        assert len(changed) == 1
        assert changed[0]["data"] == data and changed[0]["actor"] == "agent:1"
        assert changed[0]["ticket"]["id"] == b.ticket_id
        assert changed[0]["ticket"]["status"] == "resolved"
        assert changed[0]["ticket"]["contact_id"] == a.contact_id
        audit = (await s.scalars(select(AuditLog).where(AuditLog.action == "ticket.status"))).one()
        assert (audit.entity_id, audit.data) == (b.ticket_id, data)


async def test_reply_goes_to_the_number_the_customer_last_wrote_from(db: Database) -> None:
    """Two SMS contacts merged: one customer with two numbers. The reply goes
    to whichever number wrote last on the ticket, not the newest identity."""
    from hub.actions import do_merge_contacts, do_post_message
    from hub.core import Author
    from storage.models import Contact

    async with db.write() as s:
        a, b = await ingest_batch(s, [sms("+15550000001", "a1"), sms("+15550000002", "b1")])
        assert isinstance(a, IngestResult) and isinstance(b, IngestResult)
    async with db.write() as s:
        target, source = await s.get(Contact, a.contact_id), await s.get(Contact, b.contact_id)
        assert target is not None and source is not None
        await do_merge_contacts(s, target, source, actor="agent:1")

    async def text_then_reply(sender: str, ext: str) -> str:
        async with db.write() as s:
            (r,) = await ingest_batch(s, [sms(sender, ext)])
            assert isinstance(r, IngestResult) and r.ticket_id == a.ticket_id
            ticket = await s.get(Ticket, r.ticket_id)
            assert ticket is not None
            reply = await do_post_message(s, ticket, body="got it", author=Author.AGENT)
            return str(reply.extras["recipient"])

    assert await text_then_reply("+15550000001", "a2") == "+15550000001"
    assert await text_then_reply("+15550000002", "b2") == "+15550000002"
    assert await text_then_reply("+15550000001", "a3") == "+15550000001"
    async with db.write() as s:
        # Messages stored before ingest recorded the sender: the newest number, as before.
        await s.execute(update(Message).where(Message.direction == "in").values(extras={}))
        ticket = await s.get(Ticket, a.ticket_id)
        assert ticket is not None
        reply = await do_post_message(s, ticket, body="still there?", author=Author.AGENT)
        assert reply.extras["recipient"] == "+15550000002"
