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
