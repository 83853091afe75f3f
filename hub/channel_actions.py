"""Actions channels need beyond ingest: a customer's edit of a message they
sent, an address that cannot be reached any more (or can again), where a
customer came from, and a phone number a customer shared that ties their
identities together.

Same rules as :mod:`hub.actions`: each runs in the caller's unit of work and
writes its timeline event, audit entry and outbox event there; each is
idempotent, because providers redeliver and workers retry.
"""

from __future__ import annotations

from datetime import datetime, timedelta
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
    session: AsyncSession,
    *,
    channel: Channel,
    external_id: str,
    body: str,
    edited_at: datetime,
    sequence: int | None = None,
) -> Message | None:
    """The customer edited a message they sent: the stored body becomes the new
    text and the earlier one is kept in ``extras["edits"]``; agents get a
    ``message.updated`` event. An edit older than the one already applied (a
    redelivery, or updates out of order) changes nothing: edits are ordered by
    ``edited_at``, then by ``sequence`` (the provider's order of its updates,
    Telegram's update_id) for edits within the same second. Returns None when
    the message is not stored (the caller decides what to do with the text)."""
    msg = await _inbound_message(session, channel, external_id)
    if msg is None:
        return None
    extras = dict(msg.extras or {})
    changed = body != msg.body
    if not _comes_after(extras, edited_at, sequence, differs=changed):
        return msg
    _mark_applied(extras, edited_at, sequence)
    if changed:
        # Telegram also reports edits of fields the hub does not keep; only a
        # changed text is a new version.
        extras["edits"] = [*(extras.get("edits") or []), {"body": msg.body, "replaced_at": edited_at.isoformat()}]
        msg.body = body
    msg.extras = extras
    await session.flush()
    if changed:
        await notify_message_updated(session, msg)
        await audit(session, "contact", "message.edited", "message", msg.id, {"edits": len(extras["edits"])})
    return msg


#: A live location moves every few seconds for hours: agents' screens follow
#: it at most this often.
LOCATION_EVENT_INTERVAL = timedelta(minutes=5)


async def do_move_location(
    session: AsyncSession,
    *,
    channel: Channel,
    external_id: str,
    body: str,
    location: dict[str, Any],
    moved_at: datetime,
    sequence: int | None = None,
) -> Message | None:
    """A shared live location moved: the message's ``extras["location"]`` (and
    its body, which shows the position) follow it, without an edit history or
    an audit entry per move, and with a ``message.updated`` event at most every
    :data:`LOCATION_EVENT_INTERVAL` of the customer's time. Ordered like
    :func:`do_edit_inbound_message`. Returns None when the message is not stored."""
    msg = await _inbound_message(session, channel, external_id)
    if msg is None:
        return None
    extras = dict(msg.extras or {})
    before = {k: v for k, v in (extras.get("location") or {}).items() if k != "updated_at"}
    if not _comes_after(extras, moved_at, sequence, differs=location != before):
        return msg
    _mark_applied(extras, moved_at, sequence)
    extras["location"] = {**location, "updated_at": moved_at.isoformat()}
    notified = extras.get("location_notified_at")
    notify = notified is None or moved_at - datetime.fromisoformat(notified) >= LOCATION_EVENT_INTERVAL
    if notify:
        extras["location_notified_at"] = moved_at.isoformat()
    msg.body = body
    msg.extras = extras
    await session.flush()
    if notify:
        await notify_message_updated(session, msg)
    return msg


async def _inbound_message(session: AsyncSession, channel: Channel, external_id: str) -> Message | None:
    msg = await session.scalar(
        select(Message).where(Message.channel == channel.value, Message.external_id == external_id).with_for_update()
    )
    return msg if msg is not None and msg.direction == Direction.IN.value else None


def _comes_after(extras: dict[str, Any], at: datetime, sequence: int | None, *, differs: bool) -> bool:
    """Whether a change made at ``at`` is newer than the one applied last.
    Providers give whole seconds, so two edits in one second tie on time; the
    provider's sequence orders them. Without one on both sides, a tie is
    applied when it changes something (a redelivery of the same edit does not)."""
    applied = extras.get("edited_at")
    if applied is None:
        return True
    applied_at = datetime.fromisoformat(applied)
    if at != applied_at:
        return at > applied_at
    applied_sequence = extras.get("edit_sequence")
    if sequence is not None and isinstance(applied_sequence, int):
        return sequence > applied_sequence
    return differs


def _mark_applied(extras: dict[str, Any], at: datetime, sequence: int | None) -> None:
    extras["edited_at"] = at.isoformat()
    if sequence is not None:
        extras["edit_sequence"] = sequence
    else:
        extras.pop("edit_sequence", None)


async def notify_message_updated(session: AsyncSession, msg: Message) -> None:
    """A ``message.updated`` event with the message as it is now (a customer's
    edit, a voicemail's transcription), so the agents' screens follow."""
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
