"""A merge while the customer writes again, on PostgreSQL (SQLite runs one
writer at a time): ingest holds the customer's open ticket and checks its
message's foreign key to the contact; the merge holds the contacts and then
moves their tickets. Neither may deadlock the other."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select, text

from hub.actions import check_contact, do_merge_contacts
from hub.core import Channel, InboundMessage
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Message
from tests.hub.test_reopen import dbs, guarded, until_waiting_on_a_lock

__all__ = ["dbs"]  # the fixture, used by name

pytestmark = pytest.mark.postgres


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
