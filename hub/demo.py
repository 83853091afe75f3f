"""Demo data for ``make run``: an admin, a team, and one web chat conversation,
so the API and the inbox have something to show on first start."""

from __future__ import annotations

import asyncio
import os
import secrets

from sqlalchemy import func, select

from hub.actions import do_create_agent, do_ensure_inbox, do_get_or_create_team, do_post_message
from hub.config import HubConfig
from hub.core import Author, Channel, InboundMessage, Role
from hub.security import verify_password
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Agent, Ticket

ADMIN_EMAIL = "admin@example.com"


async def seed(config: HubConfig) -> tuple[str, str, bool]:
    """Returns the admin's email, password and whether they were created now.
    The password is kept (mode 0600) in the data folder so it can be shown again."""
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    password_file = config.data_dir / "admin-password.txt"
    db = Database(config.database_url)
    try:
        async with db.write() as session:
            known = await session.scalar(select(Agent.password_hash).where(Agent.email == ADMIN_EMAIL))
            if known is not None:
                saved = password_file.read_text().strip() if password_file.exists() else ""
                # Changed since (PATCH /api/v1/me, crm-hub agent update): the
                # file no longer holds it, and printing it would mislead.
                if not saved or not await asyncio.to_thread(verify_password, known, saved):
                    saved = "(changed since; not shown)"
                return ADMIN_EMAIL, saved, False
            password = secrets.token_urlsafe(12)
            admin = await do_create_agent(
                session,
                email=ADMIN_EMAIL,
                name="Admin",
                password=password,
                role=Role.ADMIN,
                teams=["Support"],
                languages=["en", "fa"],
            )
            await do_get_or_create_team(session, "Sales")
            await do_ensure_inbox(
                session, key=config.webchat.inbox, channel=Channel.WEBCHAT, name=config.webchat.inbox_name
            )
            if not await session.scalar(select(func.count()).select_from(Ticket)):
                results = await ingest_batch(
                    session,
                    [
                        InboundMessage(
                            channel=Channel.WEBCHAT,
                            inbox=config.webchat.inbox,
                            external_id="demo-visitor:1",
                            sender="demo-visitor",
                            sender_name="Sara (demo)",
                            body="سلام، سفارش من کی می‌رسد؟ / Hi, when will my order arrive?",
                        )
                    ],
                )
                first = results[0]
                if isinstance(first, IngestResult):
                    ticket = await session.get(Ticket, first.ticket_id)
                    assert ticket is not None
                    await do_post_message(
                        session,
                        ticket,
                        body="Hi Sara! It ships tomorrow. / فردا ارسال می‌شود.",
                        author=Author.AGENT,
                        agent=admin,
                    )
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        return ADMIN_EMAIL, password, True
    finally:
        await db.dispose()
