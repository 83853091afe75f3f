"""The migrations produce exactly the models, on both engines, and upgrading
an up-to-date database is a no-op; columns hold what the code puts in them."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from hub.core import Channel, InboundMessage
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.migrate import upgrade_async
from storage.models import Base, Call


async def test_models_match_migrations(db_url: str) -> None:
    await upgrade_async(db_url)  # a second upgrade changes nothing
    engine = create_async_engine(db_url)

    def diff(conn: Any) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))

    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == []


async def test_a_call_keeps_a_sip_caller_and_line(db: Database) -> None:
    # Twilio writes SIP and Client callers as they are; 40 characters failed on PostgreSQL.
    caller = "sip:" + "customer.with.a.long.name" * 4 + "@pbx.example.com"
    line = "sip:support-line-for-the-whole-company@hub.sip.twilio.com"
    async with db.write() as session:
        (stored,) = await ingest_batch(
            session,
            [InboundMessage(channel=Channel.SMS, inbox="sms:+15550001111", external_id="SM1", sender="+15551230000")],
        )
        assert isinstance(stored, IngestResult)
        session.add(
            Call(
                call_sid="CA" + "1" * 32,
                ticket_id=stored.ticket_id,
                contact_id=stored.contact_id,
                direction="inbound",
                customer=caller,
                line=line,
                status="ringing",
            )
        )
    async with db.read() as session:
        call = await session.scalar(select(Call))
        assert call is not None and (call.customer, call.line) == (caller, line)
