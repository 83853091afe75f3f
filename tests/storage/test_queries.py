"""The read-side queries' cursors are client input: one that does not hold a
time the database can take is a bad cursor (the API's 400), on both engines.
Search reads a query typed as a phone number as its digits."""

from __future__ import annotations

import pytest

from storage import queries
from storage.db import Database
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
