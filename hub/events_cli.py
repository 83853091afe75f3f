"""``crm-hub events dead-letters``: list the events the workers gave up on, and
put them back for the workers once what made them fail is fixed. Registered on
the main group in :mod:`hub.cli`.

Embedded, a dead letter is its outbox row, marked (``outbox.dead_letter``):
requeueing clears the mark and the relay (of the running hub, or at its next
start) publishes it again. On Redis it is an entry of ``<stream>:dead``:
requeueing adds it to the stream again and deletes it from ``:dead`` in one
transaction. Each requeue leaves an audit entry (``event.dead_letter_requeued``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import click

from hub.config import HubConfig
from hub.relay import REQUEUED_ACTION, DeadLetter, list_dead_letters, requeue_dead_letters


def _config(ctx: click.Context) -> HubConfig:
    from hub.cli import _config as load

    return load(ctx)


@click.group()
def events() -> None:
    """The event stream."""


@events.command("dead-letters")
@click.argument("ids", nargs=-1)
@click.option("--requeue", is_flag=True, help="Put the dead letters IDS back for the workers.")
@click.option("--requeue-all", is_flag=True, help="Put every dead letter back for the workers.")
@click.pass_context
def dead_letters(ctx: click.Context, ids: tuple[str, ...], requeue: bool, requeue_all: bool) -> None:
    """List dead letters (ID, kind, ticket key, deliveries, when, error), or
    requeue some (--requeue ID...) or all (--requeue-all). An ID with a dash is
    a Redis entry of <stream>:dead, a number an outbox row."""
    if requeue and requeue_all:
        raise click.UsageError("give --requeue ID... or --requeue-all, not both")
    if requeue and not ids:
        raise click.UsageError("--requeue needs the IDs of the dead letters to requeue")
    if ids and not requeue:
        raise click.UsageError("IDs are only taken with --requeue")
    if requeue_all and ids:
        raise click.UsageError("--requeue-all takes no IDs")
    cfg = _config(ctx)
    if requeue or requeue_all:
        try:
            done, missing = asyncio.run(requeue_letters(cfg, None if requeue_all else list(ids)))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        for letter_id in done:
            click.echo(f"requeued {letter_id}")
        if not done and requeue_all:
            click.echo("no dead letters")
        if missing:
            raise click.ClickException(f"not a dead letter: {', '.join(missing)}")
        return
    letters = asyncio.run(collect(cfg))
    if not letters:
        click.echo("no dead letters")
        return
    click.echo("ID\tKIND\tKEY\tDELIVERIES\tWHEN\tERROR")
    for letter in letters:
        deliveries = "?" if letter.deliveries is None else str(letter.deliveries)
        when = letter.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        error = " ".join(letter.error.split())
        click.echo(f"{letter.id}\t{letter.kind}\t{letter.key}\t{deliveries}\t{when}\t{error}")


async def collect(config: HubConfig) -> list[DeadLetter]:
    """Every dead letter: the outbox's, then (on Redis) the ``:dead`` stream's."""
    from storage.db import Database

    db = Database(config.database_url)
    try:
        letters = await list_dead_letters(db)
    finally:
        await db.dispose()
    if config.redis.url:
        letters.extend(await _redis_dead_letters(config))
    return letters


async def requeue_letters(config: HubConfig, ids: list[str] | None) -> tuple[list[str], list[str]]:
    """Requeue ``ids`` (None: every dead letter); returns those requeued and
    those that are not dead letters."""
    outbox_ids: list[int] | None = None
    entry_ids: list[str] | None = None
    if ids is not None:
        outbox_ids, entry_ids = [], []
        for raw in ids:
            if "-" in raw:
                entry_ids.append(raw)
            elif raw.isdigit():
                outbox_ids.append(int(raw))
            else:
                raise ValueError(
                    f"{raw!r} is neither an outbox id (a number) nor a Redis entry id (like 1712345678901-0)"
                )
    from storage.db import Database

    db = Database(config.database_url)
    done: list[str] = []
    try:
        if outbox_ids is None or outbox_ids:
            done.extend(str(i) for i in await requeue_dead_letters(db, outbox_ids))
        if entry_ids is None or entry_ids:
            if not config.redis.url:
                if entry_ids:
                    raise ValueError(
                        "Redis entry ids given, but redis.url is not set: this hub keeps no Redis dead letters"
                    )
            else:
                done.extend(await _redis_requeue(config, db, entry_ids))
    finally:
        await db.dispose()
    missing = [raw for raw in ids or () if raw not in done and not (raw.isdigit() and str(int(raw)) in done)]
    return done, missing


def _redis(config: HubConfig) -> Any:
    import redis.asyncio as aioredis

    assert config.redis.url is not None
    return aioredis.Redis.from_url(config.redis.url, decode_responses=True)


def _entry_time(entry_id: str) -> datetime:
    # A Redis entry id starts with the milliseconds it was added at.
    return datetime.fromtimestamp(int(entry_id.split("-", 1)[0]) / 1000, UTC)


def _to_letter(entry_id: str, fields: dict[str, str]) -> DeadLetter:
    from hub import codec

    kind = ""
    try:
        payload = codec.loads(fields.get("payload", ""))
        if isinstance(payload, dict):
            kind = str(payload.get("kind", ""))
    except ValueError:
        kind = "(undecodable)"
    deliveries = fields.get("deliveries", "")
    return DeadLetter(
        id=entry_id,
        kind=kind,
        key=fields.get("key", ""),
        deliveries=int(deliveries) if deliveries.isdigit() else None,
        error=fields.get("error", ""),
        at=_entry_time(entry_id),
    )


async def _redis_dead_letters(config: HubConfig) -> list[DeadLetter]:
    client = _redis(config)
    try:
        reply = await client.xrange(f"{config.redis.stream}:dead")
    finally:
        await client.aclose()
    return [_to_letter(entry_id, fields) for entry_id, fields in reply]


async def _redis_requeue(config: HubConfig, db: Any, entry_ids: list[str] | None) -> list[str]:
    """Add each dead entry to the stream again (the fields the stream's
    publish writes) and delete it from ``:dead``, in one transaction each."""
    from storage.models import AuditLog

    stream = config.redis.stream
    dead = f"{stream}:dead"
    client = _redis(config)
    done: list[str] = []
    try:
        if entry_ids is None:
            found = await client.xrange(dead)
        else:
            found = []
            for entry_id in entry_ids:
                found.extend(await client.xrange(dead, entry_id, entry_id))
        for entry_id, fields in found:
            if "key" not in fields or "payload" not in fields:
                raise ValueError(f"Redis dead letter {entry_id} has no event to requeue (it could not be decoded)")
            async with client.pipeline(transaction=True) as pipe:
                pipe.xadd(
                    stream,
                    {"key": fields["key"], "payload": fields["payload"], "outbox_id": fields.get("outbox_id", "0")},
                )
                pipe.xdel(dead, entry_id)
                await pipe.execute()
            done.append(entry_id)
            letter = _to_letter(entry_id, fields)
            async with db.write() as session:
                session.add(
                    AuditLog(
                        actor="cli",
                        action=REQUEUED_ACTION,
                        entity="stream",
                        entity_id=None,
                        data={
                            "entry_id": entry_id,
                            "stream": stream,
                            "kind": letter.kind,
                            "key": letter.key,
                            "deliveries": letter.deliveries,
                            "error": letter.error,
                        },
                    )
                )
    finally:
        await client.aclose()
    return done


def register(main: click.Group) -> None:
    main.add_command(events)
