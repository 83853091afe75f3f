"""A merge while the customer writes again, on PostgreSQL (SQLite runs one
writer at a time): ingest holds the customer's open ticket and checks its
message's foreign key to the contact; the merge holds the contacts and then
moves their tickets. Neither may deadlock the other."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from channels.webchat import VisitorDetails
from hub.actions import check_contact, check_ticket, do_merge_contacts, do_set_status
from hub.core import Channel, InboundMessage, TicketStatus
from hub.errors import Conflict
from hub.inbox import do_identify_visitor
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Contact, Identity, Message, Ticket
from tests.hub.test_reopen import dbs, guarded, until_waiting_on_a_lock

__all__ = ["dbs"]  # the fixture, used by name

pytestmark = pytest.mark.postgres

T = TypeVar("T")


def webchat(sender: str, ext: str) -> InboundMessage:
    return InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id=ext, sender=sender, body="hello?")


async def test_a_merge_and_a_new_message_of_the_merged_customer_both_go_through(
    dbs: tuple[Database, Database],
) -> None:
    first_db, second_db = dbs
    async with first_db.write() as s:
        (kept, gone) = await ingest_batch(s, [webchat("va", "va:1"), webchat("vb", "vb:1")])
    assert isinstance(kept, IngestResult) and isinstance(gone, IngestResult)
    locked, go = asyncio.Event(), asyncio.Event()

    async def merge() -> None:
        async with first_db.write() as s:
            execute = s.execute
            calls = 0

            async def paused(*args: Any, **kwargs: Any) -> Any:
                # Hold still right after the merge's first statement (the
                # contacts' lock) until the customer's new message is in.
                nonlocal calls
                calls += 1
                result = await execute(*args, **kwargs)
                if calls == 1:
                    locked.set()
                    await guarded(go.wait())
                return result

            target = await check_contact(s, kept.contact_id)
            source = await check_contact(s, gone.contact_id)
            s.execute = paused  # type: ignore[method-assign]
            await do_merge_contacts(s, target, source, actor="agent:1")

    async def write_again() -> None:
        await guarded(locked.wait())
        try:
            async with second_db.write() as s:
                pid = await s.scalar(text("SELECT pg_backend_pid()"))
                assert isinstance(pid, int)
                storing = asyncio.ensure_future(ingest_batch(s, [webchat("vb", "vb:2")]))
                # Either it is stored at once, or it waits for the merge's lock:
                # then the merge goes on, and the two must not deadlock.
                waiting = asyncio.ensure_future(until_waiting_on_a_lock(second_db, pid))
                await asyncio.wait({storing, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                go.set()
                await guarded(storing)
        finally:
            go.set()

    merged, wrote = await asyncio.gather(merge(), write_again(), return_exceptions=True)
    assert merged is None and wrote is None, (merged, wrote)
    async with first_db.read() as s:
        bodies = (await s.execute(select(Message.external_id, Message.contact_id))).all()
    # The new message went in while the merge held the contacts, so the merge
    # moved it along with the rest of the customer's history.
    assert {ext: cid for ext, cid in bodies if (ext or "").startswith("vb")} == {
        "vb:1": kept.contact_id,
        "vb:2": kept.contact_id,
    }


async def test_a_merge_while_an_agent_reopens_the_kept_customers_ticket_is_a_409(
    dbs: tuple[Database, Database],
) -> None:
    """The merge read the kept contact's open tickets before the reopen
    committed; moving the other contact's open ticket into the same inbox then
    collides on the unique index: a 409, and nothing merged."""
    first_db, second_db = dbs
    async with first_db.write() as s:
        (kept, gone) = await ingest_batch(s, [webchat("va", "va:1"), webchat("vb", "vb:1")])
        assert isinstance(kept, IngestResult) and isinstance(gone, IngestResult)
        ticket = await check_ticket(s, kept.ticket_id, lock=True)
        await do_set_status(s, ticket, status=TicketStatus.RESOLVED, actor="agent:1")
    reopened, release = asyncio.Event(), asyncio.Event()

    async def reopen() -> None:
        try:
            async with first_db.write() as s:
                ticket = await check_ticket(s, kept.ticket_id, lock=True)
                await do_set_status(s, ticket, status=TicketStatus.OPEN, actor="agent:1")
                reopened.set()
                await guarded(release.wait())  # committed once the merge waits for it
        finally:
            reopened.set()

    async def merge() -> None:
        await guarded(reopened.wait())
        try:
            async with second_db.write() as s:
                pid = await s.scalar(text("SELECT pg_backend_pid()"))
                assert isinstance(pid, int)
                target = await check_contact(s, kept.contact_id)
                source = await check_contact(s, gone.contact_id)
                merging = asyncio.ensure_future(do_merge_contacts(s, target, source, actor="agent:2"))
                await until_waiting_on_a_lock(second_db, pid)
                release.set()
                with pytest.raises(Conflict, match="was reopened during the merge"):
                    await guarded(merging)
        finally:
            release.set()

    await asyncio.gather(reopen(), merge())
    async with first_db.read() as s:
        contacts = dict((await s.execute(select(Ticket.id, Ticket.contact_id))).all())
        merged_into = await s.scalar(select(Contact.merged_into_id).where(Contact.id == gone.contact_id))
    assert contacts == {kept.ticket_id: kept.contact_id, gone.ticket_id: gone.contact_id}
    assert merged_into is None


async def while_a_finished_merge_commits(
    dbs: tuple[Database, Database], write: Callable[[AsyncSession], Awaitable[T]]
) -> tuple[IngestResult, IngestResult, T]:
    """Merge customer "vb" into "va" up to the commit, then ``write`` on the
    other hub; the merge commits once ``write`` waits for one of its locks.
    Returns both contacts' first messages and what ``write`` returned."""
    first_db, second_db = dbs
    async with first_db.write() as s:
        (kept, gone) = await ingest_batch(s, [webchat("va", "va:1"), webchat("vb", "vb:1")])
    assert isinstance(kept, IngestResult) and isinstance(gone, IngestResult)
    moved, commit = asyncio.Event(), asyncio.Event()

    async def merge() -> None:
        try:
            async with first_db.write() as s:
                target = await check_contact(s, kept.contact_id)
                source = await check_contact(s, gone.contact_id)
                await do_merge_contacts(s, target, source, actor="agent:1")
                moved.set()
                await guarded(commit.wait())
        finally:
            moved.set()

    async def write_then() -> T:
        await guarded(moved.wait())
        try:
            async with second_db.write() as s:
                pid = await s.scalar(text("SELECT pg_backend_pid()"))
                assert isinstance(pid, int)
                writing = asyncio.ensure_future(write(s))
                await until_waiting_on_a_lock(second_db, pid)
                commit.set()
                return await guarded(writing)
        finally:
            commit.set()

    _, wrote = await asyncio.gather(merge(), write_then())
    return kept, gone, wrote


async def test_a_message_written_while_a_finished_merge_commits_lands_on_the_kept_contact(
    dbs: tuple[Database, Database],
) -> None:
    """The merge has moved everything but not committed when the customer
    writes again: ingest must wait for it and then file the message under the
    kept contact, not open a new ticket for the merged-away one."""

    async def write(s: AsyncSession) -> IngestResult:
        (result,) = await ingest_batch(s, [webchat("vb", "vb:2")])
        assert isinstance(result, IngestResult)
        return result

    kept, gone, wrote = await while_a_finished_merge_commits(dbs, write)
    assert wrote.contact_id == kept.contact_id
    assert wrote.ticket_id == kept.ticket_id and not wrote.ticket_created
    async with dbs[0].read() as s:
        open_on_gone = await s.scalar(
            select(Ticket.id).where(Ticket.contact_id == gone.contact_id, Ticket.status != TicketStatus.RESOLVED.value)
        )
    assert open_on_gone is None


async def test_a_visitors_details_given_while_a_merge_commits_go_to_the_kept_contact(
    dbs: tuple[Database, Database],
) -> None:
    async def identify(s: AsyncSession) -> int:
        return await do_identify_visitor(s, "vb", VisitorDetails(name="Bea", email="bea@example.com"))

    kept, _, contact_id = await while_a_finished_merge_commits(dbs, identify)
    assert contact_id == kept.contact_id
    async with dbs[0].read() as s:
        name = await s.scalar(select(Contact.name).where(Contact.id == kept.contact_id))
        owner = await s.scalar(select(Identity.contact_id).where(Identity.address == "bea@example.com"))
    assert (name, owner) == ("Bea", kept.contact_id)


async def test_a_merge_waits_for_a_message_being_stored_and_then_moves_it(
    dbs: tuple[Database, Database],
) -> None:
    """The other order: ingest has read (and share-locked) the customer's
    identity when the merge starts. The merge waits for it without holding
    anything ingest needs next (the customer's open ticket, which the merge
    resolves), so neither deadlocks; then it moves the new message with the
    rest."""
    first_db, second_db = dbs
    async with first_db.write() as s:
        (kept, gone) = await ingest_batch(s, [webchat("va", "va:1"), webchat("vb", "vb:1")])
    assert isinstance(kept, IngestResult) and isinstance(gone, IngestResult)
    identified, go = asyncio.Event(), asyncio.Event()

    async def write_again() -> None:
        try:
            async with first_db.write() as s:
                execute = s.execute

                async def paused(statement: Any, *args: Any, **kwargs: Any) -> Any:
                    # Hold still right after the identity is read, before the tickets.
                    result = await execute(statement, *args, **kwargs)
                    if "FROM identities" in str(statement) and not identified.is_set():
                        identified.set()
                        await guarded(go.wait())
                    return result

                s.execute = paused  # type: ignore[method-assign]
                (result,) = await ingest_batch(s, [webchat("vb", "vb:2")])
                assert isinstance(result, IngestResult) and result.contact_id == gone.contact_id
        finally:
            identified.set()

    async def merge() -> None:
        await guarded(identified.wait())
        try:
            async with second_db.write() as s:
                pid = await s.scalar(text("SELECT pg_backend_pid()"))
                assert isinstance(pid, int)
                target = await check_contact(s, kept.contact_id)
                source = await check_contact(s, gone.contact_id)
                merging = asyncio.ensure_future(do_merge_contacts(s, target, source, actor="agent:2"))
                await until_waiting_on_a_lock(second_db, pid)
                go.set()
                await guarded(merging)
        finally:
            go.set()

    wrote, merged = await asyncio.gather(write_again(), merge(), return_exceptions=True)
    assert wrote is None and merged is None, (wrote, merged)
    async with first_db.read() as s:
        owners = dict((await s.execute(select(Message.external_id, Message.contact_id))).all())
        status = await s.scalar(select(Ticket.status).where(Ticket.id == gone.ticket_id))
    assert owners == {"va:1": kept.contact_id, "vb:1": kept.contact_id, "vb:2": kept.contact_id}
    assert status == TicketStatus.RESOLVED.value
