"""The read-side queries' cursors are client input: one that does not hold a
time the database can take is a bad cursor (the API's 400), on both engines."""

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
