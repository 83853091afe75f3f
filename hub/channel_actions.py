"""Actions channels need beyond ingest: a customer's edit of a message they
sent, an address that cannot be reached any more (or can again), where a
customer came from, and a phone number a customer shared that ties their
identities together.

Same rules as :mod:`hub.actions`: each runs in the caller's unit of work and
writes its timeline event, audit entry and outbox event there; each is
idempotent, because providers redeliver and workers retry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.actions import audit, do_merge_contacts, record_ticket_event, ticket_labels
from hub.core import IDENTITY_OF_CHANNEL, Channel, Direction, IdentityKind, TicketEventKind, utcnow
from storage.ingest import add_outbox, outbox_row
from storage.models import Contact, Identity, Inbox, Message, Ticket
from storage.views import message_view, ticket_view

# Message extras key: the contact signals of this message were applied (a
# redelivered update must not record the source or the link twice).
SIGNALS_APPLIED = "signals_applied"


async def do_edit_inbound_message(
    session: AsyncSession, *, channel: Channel, external_id: str, body: str, edited_at: datetime
) -> Message | None:
    """The customer edited a message they sent: the stored body becomes the new
    text and the earlier one is kept in ``extras["edits"]``; agents get a
    ``message.updated`` event. An edit older than the one already applied (a
    redelivery, or updates out of order) changes nothing. Returns None when the
    message is not stored (the caller decides what to do with the text)."""
    msg = await session.scalar(
        select(Message).where(Message.channel == channel.value, Message.external_id == external_id).with_for_update()
    )
    if msg is None or msg.direction != Direction.IN.value:
        return None
    extras = dict(msg.extras or {})
    applied = extras.get("edited_at")
    if applied is not None and datetime.fromisoformat(applied) >= edited_at:
        return msg
    extras["edited_at"] = edited_at.isoformat()
    changed = body != msg.body
    if changed:
        # Telegram also reports edits of fields the hub does not keep; only a
        # changed text is a new version.
        extras["edits"] = [*(extras.get("edits") or []), {"body": msg.body, "replaced_at": edited_at.isoformat()}]
        msg.body = body
    msg.extras = extras
    await session.flush()
    if changed:
        ticket = await session.get(Ticket, msg.ticket_id)
        assert ticket is not None
        inbox_key = await session.scalar(select(Inbox.key).where(Inbox.id == msg.inbox_id))
        labels = await ticket_labels(session, ticket.id)
        await add_outbox(
            session,
            [
                outbox_row(
                    TicketEventKind.MESSAGE_UPDATED.value,
                    ticket.id,
                    {"message": message_view(msg, inbox_key), "ticket": ticket_view(ticket, labels)},
                )
            ],
        )
        await audit(session, "contact", "message.edited", "message", msg.id, {"edits": len(extras["edits"])})
    return msg


async def do_set_reachability(
    session: AsyncSession,
    *,
    kind: IdentityKind,
    address: str,
    reason: str | None,
    ticket_id: int | None = None,
    actor: str = "system",
) -> Identity | None:
    """Mark ``address`` unreachable on its channel with ``reason`` (None: reachable
    again). The agent sees it on the contact's identity and in the timeline of
    ``ticket_id`` (default: the contact's latest ticket on that channel).
    Returns the identity when something changed."""
    ident = await session.scalar(
        select(Identity).where(Identity.channel == kind.value, Identity.address == address).with_for_update()
    )
    if ident is None:
        return None
    if reason is None and ident.unreachable_at is None:
        return None
    if reason is not None and ident.unreachable_at is not None and ident.unreachable_reason == reason:
        return None
    ident.unreachable_at = utcnow() if reason is not None else None
    ident.unreachable_reason = reason
    await session.flush()
    ticket = None
    if ticket_id is not None:
        ticket = await session.get(Ticket, ticket_id)
    if ticket is None:
        channels = [c.value for c, k in IDENTITY_OF_CHANNEL.items() if k is kind]
        ticket = await session.scalar(
            select(Ticket)
            .where(Ticket.contact_id == ident.contact_id, Ticket.channel.in_(channels))
            .order_by(Ticket.last_message_at.desc())
            .limit(1)
        )
    data: dict[str, Any] = {"channel": kind.value, "address": address, "reachable": reason is None, "reason": reason}
    if ticket is not None:
        await record_ticket_event(session, ticket, TicketEventKind.IDENTITY_REACHABILITY, actor, data)
    await audit(session, actor, "identity.reachability", "contact", ident.contact_id, data)
    return ident


async def do_contact_signals(
    session: AsyncSession,
    message_id: int,
    *,
    source: str | None = None,
    phone: str | None = None,
    actor: str = "contact",
) -> None:
    """What an inbound message says about its sender, applied once per message:
    ``source`` (a deep-link payload: the first one becomes the contact's
    ``source`` attribute, every one is in the timeline) and ``phone`` (E.164,
    the sender's own number: see :func:`do_link_phone`)."""
    msg = await session.get(Message, message_id, with_for_update=True)
    if msg is None or (msg.extras or {}).get(SIGNALS_APPLIED):
        return
    ticket = await session.get(Ticket, msg.ticket_id)
    assert ticket is not None
    if source:
        contact = await _live_contact(session, ticket.contact_id)
        attributes = dict(contact.attributes or {})
        first = "source" not in attributes
        if first:
            attributes["source"] = source
        attributes["last_source"] = source
        contact.attributes = attributes
        await session.flush()
        data = {"source": source, "channel": msg.channel, "first_touch": first, "message_id": msg.id}
        await record_ticket_event(session, ticket, TicketEventKind.CONTACT_SOURCE, actor, data)
    if phone:
        await do_link_phone(session, ticket, phone, actor=actor)
    msg.extras = {**(msg.extras or {}), SIGNALS_APPLIED: True}
    await session.flush()


async def do_link_phone(session: AsyncSession, ticket: Ticket, phone: str, *, actor: str = "contact") -> dict[str, Any]:
    """The customer of ``ticket`` proved ``phone`` (E.164) is theirs. If another
    contact already owns that phone identity (they texted or called before), the
    two are one person: this ticket's contact is merged into that one, so the
    agent sees one history. Otherwise the phone becomes an identity of this
    contact, and a later SMS or call lands on it. Says so in the timeline."""
    contact = await _live_contact(session, ticket.contact_id)
    owner = await session.scalar(
        select(Identity).where(Identity.channel == IdentityKind.PHONE.value, Identity.address == phone)
    )
    data: dict[str, Any] = {"phone": phone, "channel": ticket.channel}
    if owner is not None and owner.contact_id == contact.id:
        return {**data, "how": "already_linked", "contact_id": contact.id}
    if owner is None:
        session.add(
            Identity(contact_id=contact.id, channel=IdentityKind.PHONE.value, address=phone, display_name=contact.name)
        )
        data.update(how="phone_added", contact_id=contact.id)
    else:
        target = await _live_contact(session, owner.contact_id)
        await do_merge_contacts(session, target, contact, actor=actor)
        data.update(how="merged", contact_id=target.id, merged_contact_id=contact.id)
    await session.flush()
    await session.refresh(ticket)
    await record_ticket_event(session, ticket, TicketEventKind.IDENTITY_LINKED, actor, data)
    await audit(session, actor, "contact.identity_linked", "contact", data["contact_id"], data)
    return data


async def _live_contact(session: AsyncSession, contact_id: int) -> Contact:
    contact = await session.get(Contact, contact_id)
    assert contact is not None
    while contact.merged_into_id is not None:
        nxt = await session.get(Contact, contact.merged_into_id)
        assert nxt is not None
        contact = nxt
    return contact
