"""The migrations produce exactly the models, on both engines, and upgrading
an up-to-date database is a no-op; columns hold what the code puts in them."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text
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


async def test_the_label_filter_has_an_index_on_lower_label_on_postgresql(db_url: str) -> None:
    """The ticket list's label filter compares lower(label) on PostgreSQL: an
    index on that expression serves it (the one on label cannot). SQLite's
    filter compares exact spellings, so it has none."""
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                names = (await conn.execute(text("select name from sqlite_master where type = 'index'"))).scalars()
                assert "ix_ticket_labels_label_lower" not in set(names)
                return
            found = (
                await conn.execute(
                    text("select indexdef from pg_indexes where indexname = 'ix_ticket_labels_label_lower'")
                )
            ).scalar_one()
            assert "lower((label)::text)" in found
            await conn.execute(text("set enable_seqscan = off"))
            plan = "\n".join(
                (
                    await conn.execute(
                        text("explain select ticket_id from ticket_labels where lower(label) = lower('VIP')")
                    )
                ).scalars()
            )
            assert "ix_ticket_labels_label_lower" in plan, plan
    finally:
        await engine.dispose()
