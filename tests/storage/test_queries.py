"""The read-side queries' cursors are client input: one that does not hold a
time the database can take is a bad cursor (the API's 400), on both engines.
Search reads a query typed as a phone number as its digits."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from hub.actions import do_merge_contacts, do_post_message
from hub.core import Author, Channel, InboundMessage
from storage import queries
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Contact, Message, Ticket
from storage.queries import BadCursor, TicketFilter, encode_cursor

#: Valid ISO times with an offset that leave the calendar once in UTC.
OUT_OF_RANGE = ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"]


@pytest.mark.parametrize("at", OUT_OF_RANGE)
async def test_a_ticket_cursor_outside_the_calendar_is_a_bad_cursor(db: Database, at: str) -> None:
    async with db.read() as s:
        with pytest.raises(BadCursor):
            await queries.list_tickets(s, TicketFilter(), cursor=encode_cursor(at, 1), limit=10)


@pytest.mark.parametrize("at", OUT_OF_RANGE)
async def test_a_timeline_cursor_outside_the_calendar_is_a_bad_cursor(db: Database, at: str) -> None:
    async with db.read() as s:
        with pytest.raises(BadCursor):
            await queries.timeline(s, 1, cursor=encode_cursor(at, "message", 1), limit=10)


async def test_a_cursor_time_with_an_offset_still_pages(db: Database) -> None:
    # The same instant written with another offset: taken, and compared in UTC.
    async with db.read() as s:
        items, _ = await queries.list_tickets(
            s, TicketFilter(), cursor=encode_cursor("2024-01-01T05:00:00+05:00", 1), limit=10
        )
    assert items == []


@pytest.mark.parametrize(
    ("typed", "digits"),
    [
        ("+98 912 123 4567", "989121234567"),
        ("+۹۸ ۹۱۲ ۱۲۳ ۴۵۶۷", "989121234567"),
        ("0098-912-123-4567", "989121234567"),
        ("(0912) 123 4567", "9121234567"),
        ("45678", "45678"),
        # Not phone numbers: words, an email, nothing but zeros and separators.
        ("order 45678", None),
        ("sara@acme.example", None),
        ("0 - 0", None),
        ("+", None),
    ],
)
def test_a_query_typed_as_a_phone_number_is_searched_as_its_digits(typed: str, digits: str | None) -> None:
    assert queries._phone_digits(typed) == digits


async def test_a_search_using_every_folded_character_still_runs(db: Database) -> None:
    # SQLite before 3.46 refuses calls nested about 25 deep: folding every
    # letter form, digit and the half-space of every row did not parse.
    text = "ا ی ک ه و ۰۱۲۳۴۵۶۷۸۹ 0123456789"
    async with db.read() as s:
        assert await queries.list_tickets(s, TicketFilter(text=text), cursor=None, limit=10) == ([], None)
        assert await queries.list_contacts(s, text=text, cursor=None, limit=10) == ([], None)


async def test_the_ticket_list_reads_one_message_per_ticket_whatever_the_history(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list's ``last_message`` is each ticket's newest public message; the
    page fetches that one row per ticket, not every message of every ticket
    (which took seconds a page with long conversations)."""
    async with db.write() as s:
        results = await ingest_batch(
            s,
            [
                InboundMessage(
                    channel=Channel.WEBCHAT, inbox="webchat", external_id=f"{who}:{i}", sender=who, body=f"{who} {i}"
                )
                for who in ("long-a", "long-b")
                for i in range(40)
            ],
        )
    first = results[0]
    assert isinstance(first, IngestResult)
    async with db.write() as s:
        ticket = await s.get(Ticket, first.ticket_id)
        assert ticket is not None
        # The newest message of one ticket is a private note: the list shows the message before it.
        s.add(
            Message(
                ticket_id=ticket.id,
                contact_id=ticket.contact_id,
                inbox_id=ticket.inbox_id,
                channel="webchat",
                direction="out",
                author="agent",
                body="a private note",
                private=True,
                status="sent",
            )
        )
    rows_read: list[int] = []
    async with db.read() as s:
        execute = s.execute

        async def counting(*args: Any, **kwargs: Any) -> Any:
            frozen = (await execute(*args, **kwargs)).freeze()
            rows_read.append(len(frozen().all()))
            return frozen()

        monkeypatch.setattr(s, "execute", counting)
        items, _ = await queries.list_tickets(s, TicketFilter(), cursor=None, limit=10)
    assert sorted(t["last_message"]["body"] for t in items) == ["long-a 39", "long-b 39"]
    assert all(t["last_message"]["direction"] == "in" for t in items)
    assert max(rows_read) <= len(items), rows_read


async def _webchat(db: Database, who: str, ext: str, body: str) -> IngestResult:
    message = InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id=ext, sender=who, body=body)
    async with db.write() as s:
        (r,) = await ingest_batch(s, [message])
    assert isinstance(r, IngestResult)
    return r


async def _history(db: Database, visitor: str) -> list[str]:
    async with db.read() as s:
        _, _, messages = await queries.visitor_conversation(s, "webchat", visitor, limit=50)
    return [m["body"] for m in messages]


async def test_a_returning_visitor_sees_only_their_own_chat_after_a_merge(db: Database) -> None:
    """Two browsers' contacts merged (the agent took them for one person):
    each visitor's replayed history still holds only what they wrote and what
    was sent to them, even when the other's later messages join their ticket."""
    a = await _webchat(db, "visitor-a", "a:1", "my card ends 1234")
    b = await _webchat(db, "visitor-b", "b:1", "I am visitor B")
    async with db.write() as s:
        target, source = await s.get(Contact, a.contact_id), await s.get(Contact, b.contact_id)
        assert target is not None and source is not None
        await do_merge_contacts(s, target, source, actor="test")
        kept = await s.get(Ticket, a.ticket_id)
        assert kept is not None
        await do_post_message(s, kept, body="the card is blocked", author=Author.AGENT)
        await do_post_message(s, kept, body="a note about both", author=Author.AGENT, private=True)
    # B's next message lands on the merged contact's one open ticket: A's.
    later = await _webchat(db, "visitor-b", "b:2", "B again")
    assert later.ticket_id == a.ticket_id
    async with db.write() as s:
        kept = await s.get(Ticket, a.ticket_id)
        assert kept is not None
        await do_post_message(s, kept, body="hello B", author=Author.AGENT)

    assert await _history(db, "visitor-a") == ["my card ends 1234", "the card is blocked"]
    assert await _history(db, "visitor-b") == ["I am visitor B", "B again", "hello B"]


async def test_a_visitor_keeps_messages_stored_before_ingest_kept_the_sender(db: Database) -> None:
    a = await _webchat(db, "visitor-old", "old:1", "from long ago")
    async with db.write() as s:
        await s.execute(update(Message).where(Message.id == a.message_id).values(extras={}))
    assert await _history(db, "visitor-old") == ["from long ago"]
    # Once another visitor is merged in, a row without its sender could be theirs.
    b = await _webchat(db, "visitor-new", "new:1", "newcomer")
    async with db.write() as s:
        target, source = await s.get(Contact, b.contact_id), await s.get(Contact, a.contact_id)
        assert target is not None and source is not None
        await do_merge_contacts(s, target, source, actor="test")
    assert await _history(db, "visitor-new") == ["newcomer"]
    assert await _history(db, "visitor-old") == []
