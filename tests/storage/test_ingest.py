from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.core import Attachment, Channel, InboundMessage
from storage.db import Database
from storage.ingest import IngestResult, UnknownInbox, ingest_batch
from storage.models import Contact, Identity, Message, OutboxRow, Ticket, TicketEventRow


def web(sender: str, ext: str, body: str = "hi") -> InboundMessage:
    return InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id=ext, sender=sender, body=body)


async def count(db: Database, model: type) -> int:
    async with db.read() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_first_message_creates_contact_ticket_message_and_event(db: Database) -> None:
    msg = InboundMessage(
        channel=Channel.SMS,
        inbox="sms:+15550001111",
        external_id="SM1",
        sender="+15551234567",
        sender_name="Sara",
        body="سلام",
        attachments=(Attachment(url="https://example.com/a.jpg", content_type="image/jpeg"),),
    )
    async with db.write() as s:
        (res,) = await ingest_batch(s, [msg])
    assert isinstance(res, IngestResult)
    assert res.ticket_created and not res.duplicate
    async with db.read() as s:
        ident = (await s.scalars(select(Identity))).one()
        assert (ident.channel, ident.address) == ("phone", "+15551234567")
        contact = await s.get(Contact, ident.contact_id)
        assert contact is not None and contact.name == "Sara"
        ticket = await s.get(Ticket, res.ticket_id)
        assert ticket is not None and ticket.status == "open" and ticket.channel == "sms"
        assert ticket.waiting_since is not None and ticket.waiting_since.tzinfo is not None
        stored = await s.get(Message, res.message_id)
        assert stored is not None
        assert stored.body == "سلام" and stored.direction == "in" and stored.author == "contact"
        assert stored.attachments == [{"url": "https://example.com/a.jpg", "content_type": "image/jpeg"}]
        outbox = (await s.scalars(select(OutboxRow))).one()
        assert outbox.payload["kind"] == "message.received"
        assert outbox.payload["message"]["id"] == res.message_id
        kinds = (await s.scalars(select(TicketEventRow.kind))).all()
        assert kinds == ["ticket.created"]


async def test_retried_message_is_stored_once(db: Database) -> None:
    async with db.write() as s:
        (first,) = await ingest_batch(s, [web("v1", "v1:c1")])
    async with db.write() as s:
        again, twin, other = await ingest_batch(s, [web("v1", "v1:c1"), web("v1", "v1:c1"), web("v1", "v1:c2")])
    assert isinstance(first, IngestResult) and isinstance(again, IngestResult) and isinstance(twin, IngestResult)
    assert again.duplicate and again.message_id == first.message_id
    assert twin.duplicate and twin.message_id == first.message_id
    assert isinstance(other, IngestResult) and not other.duplicate and other.ticket_id == first.ticket_id
    assert await count(db, Message) == 2
    assert await count(db, OutboxRow) == 2
    assert await count(db, Ticket) == 1


async def test_a_message_with_nul_characters_anywhere_is_stored(db: Database) -> None:
    """PostgreSQL refuses NUL in text and in JSON; what a provider sends with
    one (in a caption, a file name, its own extra fields) must still be kept."""
    msg = InboundMessage(
        channel=Channel.SMS,
        inbox="sms:+15550001111",
        external_id="SM\x00nul",
        sender="+15551234567",
        sender_name="Sa\x00ra",
        body="hi\x00",
        attachments=(Attachment(url="https://example.com/a.pdf", filename="a\x00.pdf"),),
        extras={"from": {"name": "Sa\x00ra", "tags": ["x\x00"]}},
    )
    async with db.write() as s:
        (res,) = await ingest_batch(s, [msg])
    assert isinstance(res, IngestResult)
    async with db.read() as s:
        stored = await s.get(Message, res.message_id)
        assert stored is not None and (stored.body, stored.external_id) == ("hi", "SMnul")
        assert stored.attachments[0]["filename"] == "a.pdf"


async def test_unknown_inbox_is_refused_and_others_still_stored(db: Database) -> None:
    bad = InboundMessage(channel=Channel.WEBCHAT, inbox="nope", external_id="x", sender="v", body="b")
    async with db.write() as s:
        res_bad, res_ok = await ingest_batch(s, [bad, web("v2", "v2:1")])
    assert isinstance(res_bad, UnknownInbox) and "nope" in str(res_bad)
    assert isinstance(res_ok, IngestResult)
    assert await count(db, Message) == 1


async def test_resolved_ticket_is_not_reused_and_snoozed_one_wakes(db: Database) -> None:
    async with db.write() as s:
        (a,) = await ingest_batch(s, [web("v3", "v3:1")])
        assert isinstance(a, IngestResult)
        t = await s.get(Ticket, a.ticket_id)
        assert t is not None
        t.status = "resolved"
    async with db.write() as s:
        (b,) = await ingest_batch(s, [web("v3", "v3:2")])
        assert isinstance(b, IngestResult) and b.ticket_created and b.ticket_id != a.ticket_id
        t2 = await s.get(Ticket, b.ticket_id)
        assert t2 is not None
        t2.status = "snoozed"
        t2.snoozed_until = datetime(2099, 1, 1, tzinfo=UTC)
    async with db.write() as s:
        (c,) = await ingest_batch(s, [web("v3", "v3:3")])
        assert isinstance(c, IngestResult) and c.ticket_id == b.ticket_id
    async with db.read() as s:
        t3 = await s.get(Ticket, b.ticket_id)
        assert t3 is not None and t3.status == "open" and t3.snoozed_until is None


@pytest.mark.postgres
async def test_simultaneous_first_messages_make_one_contact_and_ticket(postgres_url: str) -> None:
    """Two separate connections racing on a brand-new customer (real concurrency on PostgreSQL)."""
    from hub.actions import do_ensure_inbox
    from storage.migrate import upgrade_async

    await upgrade_async(postgres_url)
    dbs = [Database(postgres_url) for _ in range(4)]
    async with dbs[0].write() as s:
        await do_ensure_inbox(s, key="webchat", channel=Channel.WEBCHAT, name="Website")
    try:
        for round_ in range(10):
            sender = f"race-{round_}"

            async def one(d: Database, i: int, sender: str = sender) -> IngestResult:
                async with d.write() as s:
                    (r,) = await ingest_batch(s, [web(sender, f"{sender}:{i}")])
                    assert isinstance(r, IngestResult)
                    return r

            results = await asyncio.gather(*(one(d, i) for i, d in enumerate(dbs)))
            assert len({r.contact_id for r in results}) == 1
            assert len({r.ticket_id for r in results}) == 1
        async with dbs[0].read() as s:
            assert await s.scalar(select(func.count()).select_from(Contact)) == 10
            assert await s.scalar(select(func.count()).select_from(Ticket)) == 10
            assert await s.scalar(select(func.count()).select_from(Message)) == 40
    finally:
        for d in dbs:
            await d.dispose()


async def test_processes_starting_together_create_an_inbox_once(db_url: str) -> None:
    from hub.actions import do_ensure_inbox

    dbs = [Database(db_url) for _ in range(4)]

    async def ensure(d: Database) -> int:
        async with d.write() as s:
            return (await do_ensure_inbox(s, key="sms:+1999", channel=Channel.SMS, name="SMS")).id

    try:
        ids = await asyncio.gather(*(ensure(d) for d in dbs))
    finally:
        for d in dbs:
            await d.dispose()
    assert len(set(ids)) == 1


async def test_outbox_rows_handed_to_the_relay_carry_their_own_ids(db: Database) -> None:
    from storage.db import OUTBOX_LEASE_KEY, OUTBOX_WRITTEN_KEY
    from storage.ingest import add_outbox, outbox_row

    # Several events per ticket, interleaved: only the ids can tell them apart.
    rows = [outbox_row("message.received", i % 3, {"n": i}) for i in range(250)]
    async with db.write() as s:
        s.info[OUTBOX_LEASE_KEY] = 30
        await add_outbox(s, rows[:1])
        await add_outbox(s, rows[1:])
        written = s.info.pop(OUTBOX_WRITTEN_KEY)
    async with db.read() as s:
        stored = {r.id: (r.key, r.payload) for r in (await s.scalars(select(OutboxRow))).all()}
    assert len(written) == 250
    assert [p["n"] for _, _, p in written] == list(range(250))
    for oid, key, payload in written:
        assert stored[oid] == (key, payload)


@pytest.mark.postgres
@pytest.mark.parametrize("change", ["resolve", "handoff"])
async def test_ingest_does_not_undo_a_ticket_change_made_while_it_runs(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Ingest reads the ticket, then an agent resolves it (or the bot hands it
    off) on another connection, then ingest commits: the change must survive.
    The agent tries with NOWAIT at the exact moment between ingest's read and
    its write, so the interleaving is fixed by events rather than timing."""
    from sqlalchemy.exc import DBAPIError

    import storage.ingest as ingest_module
    from hub.actions import check_ticket, do_ensure_inbox, do_handoff, do_set_status
    from hub.core import TicketStatus
    from storage.migrate import upgrade_async

    await upgrade_async(postgres_url)
    ingest_db, agent_db = Database(postgres_url), Database(postgres_url)
    try:
        async with ingest_db.write() as s:
            await do_ensure_inbox(s, key="webchat", channel=Channel.WEBCHAT, name="Website")
            (first,) = await ingest_batch(s, [web("v-race", "v-race:1")])
            assert isinstance(first, IngestResult)
            if change == "handoff":
                ticket = await s.get(Ticket, first.ticket_id)
                assert ticket is not None
                ticket.status = TicketStatus.PENDING.value
        tid = first.ticket_id

        async def agent_changes_ticket() -> None:
            async with agent_db.write() as s:
                # NOWAIT: fails at once if ingest holds the ticket, instead of
                # waiting for an ingest that is itself waiting for us.
                await s.execute(select(Ticket.id).where(Ticket.id == tid).with_for_update(nowait=True))
                ticket = await check_ticket(s, tid)
                if change == "resolve":
                    await do_set_status(s, ticket, status=TicketStatus.RESOLVED, actor="agent:1")
                else:
                    assert await do_handoff(s, ticket, reason="asked for a human")

        ingest_read = asyncio.Event()
        agent_tried = asyncio.Event()
        agent_blocked: list[str] = []
        original = ingest_module._current_tickets

        async def read_then_let_the_agent_in(
            session: Any, keys: list[tuple[int, int, str]]
        ) -> dict[tuple[int, int, str], dict[str, Any]]:
            found = await original(session, keys)
            if not ingest_read.is_set():
                ingest_read.set()
                await agent_tried.wait()
            return found

        async def agent() -> None:
            await ingest_read.wait()
            try:
                await agent_changes_ticket()
                agent_blocked.append("")
            except DBAPIError as exc:
                agent_blocked.append(str(exc.orig))
            finally:
                agent_tried.set()

        async def ingest() -> IngestResult:
            async with ingest_db.write() as s:
                (r,) = await ingest_batch(s, [web("v-race", "v-race:2")])
                assert isinstance(r, IngestResult)
                return r

        monkeypatch.setattr(ingest_module, "_current_tickets", read_then_let_the_agent_in)
        second, _ = await asyncio.gather(ingest(), agent())
        monkeypatch.undo()
        assert second.ticket_id == tid
        # Ingest holds the ticket until its commit; the agent tries again then.
        assert len(agent_blocked) == 1 and "could not obtain lock" in agent_blocked[0], agent_blocked
        await agent_changes_ticket()

        async with ingest_db.read() as s:
            ticket = await s.get(Ticket, tid)
            assert ticket is not None
            kinds = (await s.scalars(select(TicketEventRow.kind).where(TicketEventRow.ticket_id == tid))).all()
            if change == "resolve":
                assert ticket.status == "resolved" and ticket.resolved_at is not None
                assert "ticket.status_changed" in kinds
            else:
                assert ticket.status == "open" and ticket.bot_silenced
                assert "ticket.handoff" in kinds
            bodies = (await s.scalars(select(Message.body).where(Message.ticket_id == tid))).all()
            assert len(bodies) == 2
    finally:
        await ingest_db.dispose()
        await agent_db.dispose()
