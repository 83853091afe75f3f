"""Reopening a resolved ticket while another ticket of the same customer, in
the same inbox and thread, becomes current in a transaction not yet committed
(another agent reopening theirs, a new message from the customer): the check
before the write cannot see it, the unique index does. PostgreSQL only: SQLite
runs one writer at a time, so there the check always sees the other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest
from sqlalchemy import select, text

from hub.actions import check_ticket, do_set_labels, do_set_status
from hub.core import Channel, InboundMessage, TicketStatus
from hub.errors import Conflict
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.migrate import upgrade_async
from storage.models import Ticket, TicketEventRow, TicketLabel

pytestmark = pytest.mark.postgres

T = TypeVar("T")
GUARD = 30  # seconds: only so that a broken test fails instead of hanging


def webchat(ext: str) -> InboundMessage:
    return InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id=ext, sender="v", body="hello?")


@pytest.fixture
async def dbs(postgres_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two hubs on one PostgreSQL database (their own pools, like two web nodes)."""
    from hub.actions import do_ensure_inbox

    await upgrade_async(postgres_url)
    first, second = Database(postgres_url), Database(postgres_url)
    async with first.write() as s:
        await do_ensure_inbox(s, key="webchat", channel=Channel.WEBCHAT, name="Website")
    try:
        yield first, second
    finally:
        await first.dispose()
        await second.dispose()


async def resolved_ticket(db: Database, ext: str) -> int:
    async with db.write() as s:
        (r,) = await ingest_batch(s, [webchat(ext)])
        assert isinstance(r, IngestResult) and r.ticket_created
        ticket = await check_ticket(s, r.ticket_id, lock=True)
        await do_set_status(s, ticket, status=TicketStatus.RESOLVED, actor="agent:1")
        return r.ticket_id


async def guarded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, GUARD)


async def until_waiting_on_a_lock(db: Database, pid: int) -> None:
    """Until the backend ``pid`` waits for another transaction's lock (here:
    the unique index's entry the other transaction wrote)."""

    async def poll() -> None:
        while True:
            async with db.read() as s:
                wait = await s.scalar(
                    text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                )
            if wait == "Lock":
                return
            await asyncio.sleep(0.01)

    await guarded(poll())


async def reopen_while_other_commits(
    db: Database, ticket_id: int, other_done: asyncio.Event, release: asyncio.Event
) -> int:
    """Reopen ``ticket_id`` after the other transaction made its ticket
    current, and let that one commit once this one waits for it. Expects the
    409; then shows the transaction is still usable. Returns the ticket's
    status_changed events written."""
    await guarded(other_done.wait())
    try:
        async with db.write() as s:
            pid = await s.scalar(text("SELECT pg_backend_pid()"))
            assert isinstance(pid, int)
            ticket = await check_ticket(s, ticket_id, lock=True)
            reopening = asyncio.ensure_future(do_set_status(s, ticket, status=TicketStatus.OPEN, actor="agent:2"))
            await until_waiting_on_a_lock(db, pid)
            release.set()
            with pytest.raises(Conflict, match=r"ticket \d+ is already open for this contact in this inbox"):
                await guarded(reopening)
            # The ticket reads as it is, and the transaction carries on (as mail does after a 409).
            assert ticket.status == TicketStatus.RESOLVED.value
            await do_set_labels(s, ticket, ["called back"], actor="agent:2")
    finally:
        release.set()
    async with db.read() as s:
        assert (await s.scalars(select(TicketLabel.label).where(TicketLabel.ticket_id == ticket_id))).all() == [
            "called back"
        ]
        events = await s.scalars(
            select(TicketEventRow).where(
                TicketEventRow.ticket_id == ticket_id, TicketEventRow.kind == "ticket.status_changed"
            )
        )
        return len(events.all())


async def test_two_agents_reopening_two_tickets_of_one_customer(dbs: tuple[Database, Database]) -> None:
    first_db, second_db = dbs
    a = await resolved_ticket(first_db, "v:1")
    b = await resolved_ticket(first_db, "v:2")
    a_reopened, release = asyncio.Event(), asyncio.Event()

    async def reopen_a() -> None:
        async with first_db.write() as s:
            ticket = await check_ticket(s, a, lock=True)
            await do_set_status(s, ticket, status=TicketStatus.OPEN, actor="agent:1")
            a_reopened.set()
            await guarded(release.wait())  # still uncommitted while the other reopen runs

    _, b_events = await asyncio.gather(reopen_a(), reopen_while_other_commits(second_db, b, a_reopened, release))
    assert b_events == 1  # only its resolution
    async with first_db.read() as s:
        status = {r.id: r.status for r in (await s.execute(select(Ticket.id, Ticket.status))).all()}
    assert status == {a: "open", b: "resolved"}


async def test_reopening_while_the_customer_writes_again(dbs: tuple[Database, Database]) -> None:
    """Ingest opens a new ticket for the customer's new message; the agent's
    reopen of the old one, not yet able to see it, gets the 409."""
    first_db, second_db = dbs
    a = await resolved_ticket(first_db, "v:1")
    created, release = asyncio.Event(), asyncio.Event()
    new_ticket: list[int] = []

    async def customer_writes() -> None:
        async with first_db.write() as s:
            (r,) = await ingest_batch(s, [webchat("v:2")])
            assert isinstance(r, IngestResult) and r.ticket_created
            new_ticket.append(r.ticket_id)
            created.set()
            await guarded(release.wait())

    await asyncio.gather(customer_writes(), reopen_while_other_commits(second_db, a, created, release))
    async with first_db.read() as s:
        status = {r.id: r.status for r in (await s.execute(select(Ticket.id, Ticket.status))).all()}
    assert status == {a: "resolved", new_ticket[0]: "open"}


async def test_the_customer_writing_while_an_agent_reopens(dbs: tuple[Database, Database]) -> None:
    """The other way round: ingest waits for the reopen and then puts the
    message on the reopened ticket (no second ticket, no error, no deadlock)."""
    first_db, second_db = dbs
    a = await resolved_ticket(first_db, "v:1")
    reopened, release = asyncio.Event(), asyncio.Event()

    async def reopen() -> None:
        try:
            async with first_db.write() as s:
                ticket = await check_ticket(s, a, lock=True)
                await do_set_status(s, ticket, status=TicketStatus.OPEN, actor="agent:1")
                reopened.set()
                await guarded(release.wait())
        finally:
            reopened.set()

    async def customer_writes() -> IngestResult:
        await guarded(reopened.wait())
        try:
            async with second_db.write() as s:
                pid = await s.scalar(text("SELECT pg_backend_pid()"))
                assert isinstance(pid, int)
                storing = asyncio.ensure_future(ingest_batch(s, [webchat("v:2")]))
                await until_waiting_on_a_lock(second_db, pid)
                release.set()
                (r,) = await guarded(storing)
                assert isinstance(r, IngestResult)
                return r
        finally:
            release.set()

    _, stored = await asyncio.gather(reopen(), customer_writes())
    assert (stored.ticket_id, stored.ticket_created) == (a, False)
    async with first_db.read() as s:
        assert [tuple(r) for r in (await s.execute(select(Ticket.id, Ticket.status))).all()] == [(a, "open")]
