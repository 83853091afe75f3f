"""``crm-hub telegram replay AUDIT_ID``: store an update the poller had to
pass (kept in the audit log as ``telegram.update_dead_lettered``) once what
kept it from being stored is fixed. Registered on the main group in
:mod:`hub.cli`."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import click

from hub.config import HubConfig

if TYPE_CHECKING:
    from hub.telegram import TelegramBot, TelegramService
    from storage.db import Database

REPLAYED_ACTION = "telegram.update_replayed"


class ReplayRefused(Exception):
    """The row cannot be replayed, or replaying it failed; the message says why."""


def _config(ctx: click.Context) -> HubConfig:
    from hub.cli import _config as load

    return load(ctx)


@click.group()
def telegram() -> None:
    """Telegram bots."""


@telegram.command("replay")
@click.argument("audit_id", type=click.IntRange(min=1))
@click.pass_context
def replay(ctx: click.Context, audit_id: int) -> None:
    """Store the update kept in audit log row AUDIT_ID (telegram.update_dead_lettered;
    the poller's error log names the row) as if Telegram had sent it now. A
    message already stored is not stored again, so replaying twice is safe."""
    cfg = _config(ctx)
    try:
        bot, update_id, outcome = asyncio.run(replay_dead_letter(cfg, audit_id))
    except ReplayRefused as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"update {update_id} of bot {bot}: {outcome}")


async def replay_dead_letter(config: HubConfig, audit_id: int) -> tuple[str, Any, str]:
    """Hands the update kept in the audit row to the bot's usual handling;
    returns the bot's name, the update_id and what happened ("stored",
    "duplicate", "edited", "ignored: ...", as the webhook answers)."""
    from hub.attachments import AttachmentStore
    from hub.telegram import build_telegram, direct_ingest
    from storage.db import Database

    db = Database(config.database_url)
    attachments = AttachmentStore(config.attachments_dir, max_bytes=config.attachments.max_bytes)
    # Ingested one by one, as a worker's poller does; the running hub's
    # outbox relay publishes the events of what is stored.
    service = build_telegram(config, db, attachments, direct_ingest(db))
    try:
        name, update = await _dead_letter(db, audit_id)
        bot = service.bots.get(name) if service is not None else None
        if service is None or bot is None:
            raise ReplayRefused(
                f"audit log row {audit_id} holds an update of the Telegram bot {name!r}, which is no longer "
                "configured (telegram.bots): configure it again to replay its updates"
            )
        update_id = update.get("update_id") if isinstance(update, dict) else None
        outcome = await _handle(service, bot, update, audit_id, config.database_url)
        await _record(db, audit_id, name, update_id, outcome)
        return name, update_id, outcome
    finally:
        if service is not None:
            await service.channel.close()
        await db.dispose()


async def _dead_letter(db: Database, audit_id: int) -> tuple[str, Any]:
    from hub.telegram import DEAD_LETTER_ACTION
    from storage.models import AuditLog

    async with db.read() as session:
        row = await session.get(AuditLog, audit_id)
    if row is None:
        raise ReplayRefused(f"no audit log row has the id {audit_id}")
    if row.action != DEAD_LETTER_ACTION:
        raise ReplayRefused(
            f"audit log row {audit_id} is {row.action!r}, not a Telegram update the poller passed "
            f"({DEAD_LETTER_ACTION})"
        )
    data = row.data or {}
    name, text = data.get("bot"), data.get("update")
    if not isinstance(name, str) or not isinstance(text, str):
        raise ReplayRefused(f"audit log row {audit_id} does not hold the update and its bot (data.update, data.bot)")
    try:
        return name, json.loads(text)
    except ValueError as exc:
        raise ReplayRefused(f"audit log row {audit_id}: data.update is not JSON: {exc}") from exc


async def _handle(service: TelegramService, bot: TelegramBot, update: Any, audit_id: int, database_url: str) -> str:
    from channels.base import InvalidPayload
    from hub.cli import database_problem

    kept = f"the update stays in audit log row {audit_id}; replay it again once that is fixed"
    try:
        return await service.handle_json(bot, update)
    except InvalidPayload as exc:
        raise ReplayRefused(f"still not a Telegram update the hub can read: {exc}; {kept}") from exc
    except Exception as exc:
        if database_problem(exc, database_url) is not None:
            raise  # the command line's own one-line message says what is wrong with the database
        raise ReplayRefused(f"the update could not be stored: {type(exc).__name__}: {exc}; {kept}") from exc


async def _record(db: Database, audit_id: int, bot: str, update_id: Any, outcome: str) -> None:
    from hub.actions import audit

    async with db.write() as session:
        await audit(
            session,
            "cli",
            REPLAYED_ACTION,
            "telegram_update",
            update_id if isinstance(update_id, int) else None,
            {"bot": bot, "dead_letter": audit_id, "outcome": outcome},
        )


def register(main: click.Group) -> None:
    main.add_command(telegram)
