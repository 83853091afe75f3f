"""The ingest action: inbound messages into contacts, tickets, messages and
outbox events, in one transaction per batch.

Set-based on purpose: a batch of concurrent messages costs about a dozen
statements whatever its size, so commits are shared (the :class:`IngestBatcher`
groups whatever arrives while the previous commit runs) and every message is
still acknowledged only after its own commit.

Safe under concurrency without process-local locks: identities are unique on
(channel, address), unresolved tickets on (contact, inbox, thread), messages on (channel,
external_id); inserts use ``ON CONFLICT DO NOTHING`` and re-read the winner.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import Table, bindparam, delete, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core import (
    IDENTITY_OF_CHANNEL,
    Author,
    Channel,
    DeliveryStatus,
    Direction,
    InboundMessage,
    TicketEventKind,
    TicketStatus,
    utcnow,
)
from hub.text import strip_bidi_controls
from storage.db import OUTBOX_LEASE_KEY, OUTBOX_WRITTEN_KEY
from storage.models import (
    Base,
    Contact,
    Identity,
    Inbox,
    Message,
    OutboxRow,
    Ticket,
    TicketEventRow,
)
from storage.views import TICKET_FIELDS, message_values_view, message_view, ticket_values_view

log = logging.getLogger(__name__)

TOPIC_EVENTS = "events"


class UnknownInbox(LookupError):
    def __init__(self, key: str) -> None:
        super().__init__(f"unknown inbox {key!r}: configure it before sending messages to it")
        self.key = key


@dataclass(frozen=True, slots=True)
class IngestResult:
    message_id: int
    ticket_id: int
    contact_id: int
    duplicate: bool
    ticket_created: bool
    message: dict[str, Any]


def dialect_insert(session: AsyncSession, model: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def table(model: type[Base]) -> Table:
    """A model's table. Bulk statements on the table skip the ORM's per-row
    bookkeeping, which costs more than the database does on the hot path."""
    return cast(Table, model.__table__)


def outbox_row(kind: str, ticket_id: int, payload: dict[str, Any]) -> dict[str, Any]:
    """One event for the stream; keyed by ticket so consumers can keep per-ticket order."""
    return {"topic": TOPIC_EVENTS, "key": str(ticket_id), "payload": {"kind": kind, **payload}}


async def add_outbox(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Write events in the caller's transaction. When the session belongs to a
    process with a relay (see :meth:`storage.db.Database.write`), the rows are
    leased to it and handed over right after the commit, so the hot path never
    polls; if the process dies first, the lease lapses and any relay takes them."""
    if not rows:
        return
    now = utcnow()
    lease = session.info.get(OUTBOX_LEASE_KEY)
    lease_until = now + timedelta(seconds=lease) if lease else None
    values = [{**r, "created_at": now, "lease_until": lease_until} for r in rows]
    if lease_until is None:
        await session.execute(insert(table(OutboxRow)), values)
        return
    # The relay needs each row's id with the payload it already has here;
    # reading the payloads back through RETURNING would decode every one again.
    written = session.info.setdefault(OUTBOX_WRITTEN_KEY, [])
    written.extend(await _insert_for_relay(session, values))


async def insert_ids(session: AsyncSession, tbl: Table, values: list[dict[str, Any]]) -> tuple[list[int], bool]:
    """Insert ``values`` into ``tbl`` in one statement. Returns the new ids and
    whether they are in the order of ``values`` (always, but for an exhausted
    SQLite rowid space; then they are only sorted)."""
    if session.get_bind().dialect.name == "postgresql":
        # SQLAlchemy correlates RETURNING rows with parameter sets itself.
        result = await session.execute(insert(tbl).returning(tbl.c.id, sort_by_parameter_order=True), values)
        return list(result.scalars().all()), True
    # SQLite gives each new row the largest rowid so far plus one, inserting a
    # statement's rows in order under this transaction's write lock: sorted, the
    # ids follow the parameters. (An ordered RETURNING would make SQLAlchemy
    # insert row by row.) Only an exhausted rowid space makes them not
    # consecutive, and then not in order.
    ids = sorted((await session.execute(insert(tbl).returning(tbl.c.id), values)).scalars().all())
    return ids, len(ids) == len(values) and (not ids or ids[-1] - ids[0] == len(ids) - 1)


async def _insert_for_relay(
    session: AsyncSession, values: list[dict[str, Any]]
) -> list[tuple[int, str, dict[str, Any]]]:
    """Insert outbox rows; (id, key, payload) of each, in id order."""
    ids, in_order = await insert_ids(session, table(OutboxRow), values)
    if in_order:
        return [(oid, v["key"], v["payload"]) for oid, v in zip(ids, values, strict=True)]
    rows = await session.execute(
        select(OutboxRow.id, OutboxRow.key, OutboxRow.payload).where(OutboxRow.id.in_(ids)).order_by(OutboxRow.id)
    )
    return [(r.id, r.key, r.payload) for r in rows.all()]


async def ingest_batch(
    session: AsyncSession,
    messages: Sequence[InboundMessage],
    inbox_cache: dict[str, tuple[int, str]] | None = None,
    *,
    threads: Sequence[str] | None = None,
    ticket_inboxes: Sequence[int | None] | None = None,
) -> list[IngestResult | Exception]:
    """Store ``messages`` in the session's transaction. Returns, per message, its
    result or the error that makes it unacceptable (the others still go in).
    ``inbox_cache`` (key -> (id, channel)) saves a query per batch: an inbox's
    id and channel never change once it exists. ``threads`` (one per message)
    names the conversation each belongs to, for channels with several at once
    (email, resolved by :mod:`storage.mail`); without it every message goes to
    its contact's one current ticket in the inbox. ``ticket_inboxes`` (one
    per message, None for the message's own) puts a message on its contact's
    ticket in another inbox: an email answering a reply an agent sent by email
    from a web chat conversation continues that conversation."""
    now = utcnow()
    out: list[IngestResult | Exception | None] = [None] * len(messages)

    # Inboxes: configured ahead of time; an unknown one is a per-message error.
    inboxes: dict[str, tuple[int, str]] = {} if inbox_cache is None else inbox_cache
    unknown = {m.inbox for m in messages} - inboxes.keys()
    if unknown:
        rows = await session.execute(select(Inbox.id, Inbox.key, Inbox.channel).where(Inbox.key.in_(unknown)))
        inboxes.update({r.key: (r.id, r.channel) for r in rows.all()})
    todo: list[int] = []
    for i, m in enumerate(messages):
        if m.inbox not in inboxes:
            out[i] = UnknownInbox(m.inbox)
        elif inboxes[m.inbox][1] != m.channel.value:
            out[i] = ValueError(f"inbox {m.inbox!r} is a {inboxes[m.inbox][1]} inbox, not {m.channel.value}")
        else:
            todo.append(i)

    # Duplicates: of an earlier message in this batch, or of one already stored.
    first_of: dict[tuple[str, str], int] = {}
    fresh: list[int] = []
    for i in todo:
        key = (messages[i].channel.value, messages[i].external_id)
        if key in first_of:
            continue  # answered below, from the first one's result
        first_of[key] = i
        fresh.append(i)
    if first_of:
        existing = await _existing_messages(session, list(first_of))
        fresh = [i for i in fresh if (messages[i].channel.value, messages[i].external_id) not in existing]
        for key, view in existing.items():
            out[first_of[key]] = duplicate_result(view)

    # Contacts by identity.
    ident_keys = {(IDENTITY_OF_CHANNEL[messages[i].channel].value, messages[i].sender): messages[i] for i in fresh}
    contacts = await _contacts_for(session, ident_keys, now)

    # The current (unresolved) ticket of each contact in each inbox and thread.
    def ticket_key(i: int) -> tuple[int, int, str]:
        m = messages[i]
        cid = contacts[(IDENTITY_OF_CHANNEL[m.channel].value, m.sender)]
        other = ticket_inboxes[i] if ticket_inboxes else None
        return (cid, inboxes[m.inbox][0] if other is None else other, threads[i] if threads else "")

    ticket_keys: dict[tuple[int, int, str], InboundMessage] = {}
    for i in fresh:
        ticket_keys.setdefault(ticket_key(i), messages[i])
    inbox_channels = {inbox_id: channel for inbox_id, channel in inboxes.values()}
    foreign = {k[1] for k in ticket_keys} - inbox_channels.keys()
    if foreign:
        rows = await session.execute(select(Inbox.id, Inbox.channel).where(Inbox.id.in_(foreign)))
        inbox_channels.update({r.id: r.channel for r in rows.all()})
        if foreign - inbox_channels.keys():
            raise LookupError(f"inbox ids {sorted(foreign - inbox_channels.keys())} do not exist")
    tickets, created_tickets = await _tickets_for(session, ticket_keys, inbox_channels, now)
    tickets_by_id = {t["id"]: t for t in tickets.values()}

    # Messages: insert; a concurrent writer may have won a race for some.
    msg_rows: list[dict[str, Any]] = []
    for i in fresh:
        m = messages[i]
        cid = contacts[(IDENTITY_OF_CHANNEL[m.channel].value, m.sender)]
        inbox_id = inboxes[m.inbox][0]
        msg_rows.append(
            {
                "ticket_id": tickets[ticket_key(i)]["id"],
                "contact_id": cid,
                "inbox_id": inbox_id,
                "channel": m.channel.value,
                "direction": Direction.IN.value,
                "author": Author.CONTACT.value,
                "body": m.body,
                "subject": m.subject,
                "attachments": [a.model_dump(exclude_none=True) for a in m.attachments],
                "private": False,
                "external_id": m.external_id,
                "status": DeliveryStatus.RECEIVED.value,
                # The address it came from: a merged contact has several of a
                # kind, and replies go back to the one the customer used.
                "extras": {
                    **m.extras,
                    "from": m.sender,
                    **({} if m.quick_reply is None else {"quick_reply": m.quick_reply}),
                },
                "created_at": now,
                "sent_at": m.received_at,
                "attempts": 0,
            }
        )
    inserted: dict[tuple[str, str], int] = {}
    if msg_rows:
        stmt = (
            dialect_insert(session, table(Message))
            .on_conflict_do_nothing(index_elements=["channel", "external_id"])
            .returning(Message.id, Message.channel, Message.external_id)
        )
        for r in (await session.execute(stmt, msg_rows)).all():
            inserted[(r.channel, r.external_id)] = r.id
        lost = [k for k in ((r["channel"], r["external_id"]) for r in msg_rows) if k not in inserted]
        if lost:
            for key, view in (await _existing_messages(session, lost)).items():
                out[first_of[key]] = duplicate_result(view)

    # Ticket activity, timeline events and the outbox, for what was really inserted.
    events: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    touched: dict[int, dict[str, Any]] = {}
    announced: set[int] = set()
    woke: set[int] = set()
    inbox_key_of = {v[0]: k for k, v in inboxes.items()}
    for row in msg_rows:
        key = (row["channel"], row["external_id"])
        if key not in inserted:
            continue
        # Tickets are plain rows here: changed in place, written below by one
        # executemany, cheaper than ORM objects and their unit of work.
        ticket = tickets_by_id[row["ticket_id"]]
        tid = ticket["id"]
        is_new = tid in created_tickets
        if ticket["status"] == TicketStatus.SNOOZED.value:
            ticket["status"] = TicketStatus.OPEN.value
            ticket["snoozed_until"] = None
            woke.add(tid)
        if ticket["waiting_since"] is None:
            ticket["waiting_since"] = now
        ticket["last_message_at"] = now
        touched[tid] = ticket
        mid = inserted[key]
        view = message_values_view({**row, "id": mid}, inbox_key_of[row["inbox_id"]])
        tview = ticket_values_view(ticket)
        if is_new and tid not in announced:
            announced.add(tid)
            timeline.append(
                {
                    "ticket_id": tid,
                    "contact_id": ticket["contact_id"],
                    "kind": TicketEventKind.CREATED.value,
                    "actor": "contact",
                    "data": {"channel": ticket["channel"], "inbox": inbox_key_of[ticket["inbox_id"]]},
                    "created_at": now,
                }
            )
        events.append(
            outbox_row(
                TicketEventKind.MESSAGE_RECEIVED.value,
                tid,
                {"message": view, "ticket": tview, "ticket_created": is_new},
            )
        )
        out[first_of[key]] = IngestResult(
            message_id=mid,
            ticket_id=tid,
            contact_id=ticket["contact_id"],
            duplicate=False,
            ticket_created=is_new,
            message=view,
        )
    for tid in woke:
        timeline.append(
            {
                "ticket_id": tid,
                "contact_id": touched[tid]["contact_id"],
                "kind": TicketEventKind.STATUS_CHANGED.value,
                "actor": "contact",
                "data": {"from": TicketStatus.SNOOZED.value, "to": TicketStatus.OPEN.value},
                "created_at": now,
            }
        )
    if touched:
        tt = table(Ticket)
        await session.execute(
            update(tt)
            .where(tt.c.id == bindparam("tid"))
            .values(
                status=bindparam("new_status", type_=tt.c.status.type),
                snoozed_until=bindparam("new_snoozed", type_=tt.c.snoozed_until.type),
                waiting_since=bindparam("new_waiting", type_=tt.c.waiting_since.type),
                last_message_at=bindparam("new_last", type_=tt.c.last_message_at.type),
            ),
            [
                {
                    "tid": tid,
                    "new_status": tk["status"],
                    "new_snoozed": tk["snoozed_until"],
                    "new_waiting": tk["waiting_since"],
                    "new_last": tk["last_message_at"],
                }
                for tid, tk in sorted(touched.items())
            ],
        )
    if timeline:
        await session.execute(insert(table(TicketEventRow)), timeline)
    await add_outbox(session, events)

    # Messages repeated inside the batch answer with their first copy's result.
    for i in todo:
        if out[i] is None:
            key = (messages[i].channel.value, messages[i].external_id)
            first = out[first_of[key]]
            if isinstance(first, IngestResult):
                out[i] = duplicate_result(first.message)
            else:
                out[i] = first
    return [r if r is not None else RuntimeError("message was not processed") for r in out]


async def current_ticket(
    session: AsyncSession, *, channel: Channel, inbox: str, address: str, name: str | None = None
) -> tuple[Ticket, bool]:
    """The contact behind ``address`` (created if new) and their unresolved
    ticket in ``inbox`` (opened if there is none), without storing a message: a
    phone call opens a ticket before the caller says a word. Returns the ticket
    and whether it was opened now. Safe under concurrency like ingest."""
    inbox_row = await session.execute(select(Inbox.id, Inbox.channel).where(Inbox.key == inbox))
    found = inbox_row.first()
    if found is None:
        raise UnknownInbox(inbox)
    if found.channel != channel.value:
        raise ValueError(f"inbox {inbox!r} is a {found.channel} inbox, not {channel.value}")
    now = utcnow()
    # The helpers read the sender's name, the channel and the subject from a message.
    probe = InboundMessage(channel=channel, inbox=inbox, external_id="-", sender=address, sender_name=name)
    ident = (IDENTITY_OF_CHANNEL[channel].value, address)
    contact_id = (await _contacts_for(session, {ident: probe}, now))[ident]
    tickets, created = await _tickets_for(session, {(contact_id, found.id, ""): probe}, {found.id: found.channel}, now)
    # Callers change the ticket through actions, which want the ORM object.
    ticket = await session.get(Ticket, tickets[(contact_id, found.id, "")]["id"])
    assert ticket is not None
    if ticket.id in created:
        await session.execute(
            insert(table(TicketEventRow)),
            [
                {
                    "ticket_id": ticket.id,
                    "contact_id": contact_id,
                    "kind": TicketEventKind.CREATED.value,
                    "actor": "contact",
                    "data": {"channel": channel.value, "inbox": inbox},
                    "created_at": now,
                }
            ],
        )
    return ticket, ticket.id in created


def duplicate_result(view: dict[str, Any]) -> IngestResult:
    """The answer for a message stored before (``view``: the stored one)."""
    return IngestResult(
        message_id=view["id"],
        ticket_id=view["ticket_id"],
        contact_id=view["contact_id"],
        duplicate=True,
        ticket_created=False,
        message=view,
    )


async def _existing_messages(
    session: AsyncSession, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for channel, chunk in _grouped(keys):
        # Duplicates are rare: ask only for ids (index-only), load rows for hits.
        ids = (
            await session.scalars(select(Message.id).where(Message.channel == channel, Message.external_id.in_(chunk)))
        ).all()
        if not ids:
            continue
        result = await session.execute(
            select(Message, Inbox.key).join(Inbox, Inbox.id == Message.inbox_id).where(Message.id.in_(ids))
        )
        for msg, inbox_key in result.all():
            found[(msg.channel, msg.external_id or "")] = message_view(msg, inbox_key)
    return found


def customer_name(name: str | None) -> str | None:
    """A name as the customer's channel gave it, without the bidi controls
    that would make agents read it as another (None if nothing else is left)."""
    return (strip_bidi_controls(name) or None) if name else None


async def _contacts_for(
    session: AsyncSession, keys: dict[tuple[str, str], InboundMessage], now: datetime
) -> dict[tuple[str, str], int]:
    if not keys:
        return {}
    found = await identity_contacts(session, list(keys))
    missing = [k for k in keys if k not in found]
    if missing:
        # The new contacts are identical blanks, so which id goes with which
        # identity does not matter: an unordered RETURNING lets SQLite insert
        # them in one statement. Names are filled in once the pairing is known.
        blank = {"attributes": {}, "tags": [], "lead_score": 0, "created_at": now}
        new_ids = (
            (await session.execute(insert(table(Contact)).returning(Contact.id), [dict(blank) for _ in missing]))
            .scalars()
            .all()
        )
        names = {k: customer_name(keys[k].sender_name) for k in missing}
        stmt = (
            dialect_insert(session, table(Identity))
            .on_conflict_do_nothing(index_elements=["channel", "address"])
            .returning(Identity.channel, Identity.address, Identity.contact_id)
        )
        won = (
            await session.execute(
                stmt,
                [
                    {
                        "contact_id": cid,
                        "channel": k[0],
                        "address": k[1],
                        "display_name": names[k],
                        "created_at": now,
                    }
                    for k, cid in zip(missing, new_ids, strict=True)
                ],
            )
        ).all()
        for r in won:
            found[(r.channel, r.address)] = r.contact_id
        ours = set(new_ids)
        named = [{"id": found[k], "name": names[k]} for k in missing if k in found and names[k] and found[k] in ours]
        if named:
            await session.execute(update(Contact), named)  # bulk UPDATE by primary key
        lost = [k for k in missing if k not in found]
        if lost:
            # Another transaction created these identities first: use its contacts
            # and drop the ones we made for nothing.
            orphans = [cid for k, cid in zip(missing, new_ids, strict=True) if k in set(lost)]
            await session.execute(delete(Contact).where(Contact.id.in_(orphans)))
            found.update(await identity_contacts(session, lost))
    return found


async def identity_contacts(session: AsyncSession, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The contact of each known identity. On PostgreSQL the identities are
    share-locked until the commit: a merge moves them first (see
    ``hub.actions.do_merge_contacts``), so this waits for a merge in progress
    and then reads the kept contact, where an unlocked read would file the
    message under the merged-away one (and open it a ticket there). Locked in
    (channel, address) order, code point by code point, as the merge does."""
    found: dict[tuple[str, str], int] = {}
    lock = session.get_bind().dialect.name == "postgresql"
    for channel, chunk in _grouped(sorted(keys) if lock else keys):
        stmt = select(Identity.channel, Identity.address, Identity.contact_id).where(
            Identity.channel == channel, Identity.address.in_(chunk)
        )
        if lock:
            stmt = stmt.order_by(Identity.address.collate("C")).with_for_update(read=True)
        rows = await session.execute(stmt)
        for r in rows.all():
            found[(r.channel, r.address)] = r.contact_id
    return found


async def _tickets_for(
    session: AsyncSession,
    keys: dict[tuple[int, int, str], InboundMessage],
    inbox_channels: dict[int, str],
    now: datetime,
) -> tuple[dict[tuple[int, int, str], dict[str, Any]], set[int]]:
    if not keys:
        return {}, set()
    found = await _current_tickets(session, list(keys))
    missing = [k for k in keys if k not in found]
    created: set[int] = set()
    if missing:
        stmt = (
            dialect_insert(session, table(Ticket))
            .on_conflict_do_nothing(
                index_elements=["contact_id", "inbox_id", "thread_key"],
                index_where=text("status != 'resolved'"),
            )
            .returning(Ticket.id, Ticket.contact_id, Ticket.inbox_id)
        )
        rows = (
            await session.execute(
                stmt,
                [
                    {
                        "contact_id": k[0],
                        "inbox_id": k[1],
                        "thread_key": k[2],
                        # The inbox's: a ticket another inbox's message continues is still its own kind.
                        "channel": inbox_channels[k[1]],
                        "status": TicketStatus.OPEN.value,
                        "priority": "normal",
                        "subject": keys[k].subject,
                        "created_at": now,
                        "last_message_at": now,
                        "bot_silenced": False,
                    }
                    for k in missing
                ],
            )
        ).all()
        created = {r.id for r in rows}
        found.update(await _current_tickets(session, missing))
    return found, created


def _ticket_columns(tt: Table) -> list[Any]:
    # What ingest changes or looks up by, and what the ticket view shows; not
    # routing's bookkeeping (JSON columns and deadlines it keeps for itself).
    return [tt.c[name] for name in dict.fromkeys(("thread_key", *TICKET_FIELDS))]


async def _current_tickets(
    session: AsyncSession, keys: list[tuple[int, int, str]]
) -> dict[tuple[int, int, str], dict[str, Any]]:
    """The unresolved ticket of each (contact, inbox, thread), as plain rows of
    every column: ingest only reads them and writes them back in bulk.

    Ingest writes status, snooze and waiting time back from these copies, so on
    PostgreSQL they are locked until the commit: an agent resolving the ticket
    or a bot handing it off in between would otherwise be undone. (SQLite's one
    writer, with ``BEGIN IMMEDIATE``, already runs the two one after the other.)"""
    found: dict[tuple[int, int, str], dict[str, Any]] = {}
    wanted = set(keys)
    tt = table(Ticket)
    lock = session.get_bind().dialect.name == "postgresql"
    # By contact (indexed), not by the (contact, inbox) pair: SQLite plans a
    # row-value IN as a full table scan. PostgreSQL takes a batch in one
    # statement, so rows are locked in id order and two ingests sharing
    # tickets cannot deadlock on them.
    for chunk in _chunks(sorted({key[0] for key in keys}), 10_000 if lock else 400):
        stmt = select(*_ticket_columns(tt)).where(
            tt.c.contact_id.in_(chunk), tt.c.status != TicketStatus.RESOLVED.value
        )
        if lock:
            stmt = stmt.order_by(tt.c.id).with_for_update(of=tt)
        rows = await session.execute(stmt)
        for r in rows.mappings().all():
            key = (r["contact_id"], r["inbox_id"], r["thread_key"])
            if key in wanted:
                found[key] = dict(r)
    return found


T = TypeVar("T")


def _grouped(keys: Sequence[tuple[str, str]], size: int = 400) -> list[tuple[str, Sequence[str]]]:
    """(first, [seconds]) chunks: lookups by ``first = ? AND second IN (...)``
    use the unique index, where SQLite scans the table for ``(a, b) IN (...)``."""
    by_first: dict[str, list[str]] = {}
    for first, second in keys:
        by_first.setdefault(first, []).append(second)
    return [(first, chunk) for first, seconds in by_first.items() for chunk in _chunks(seconds, size)]


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
