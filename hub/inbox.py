"""The actions behind the agents' inbox and the web chat widget's forms: ticket
priority, read markers, canned responses, presence, and what a visitor tells
the widget about themselves. Same shape as :mod:`hub.actions`: ``check_*``
validates and loads, ``do_*`` mutates inside the caller's unit of work and
records the event and the audit entry with it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from channels.webchat import VisitorDetails
from hub.actions import audit, record_ticket_event
from hub.core import Channel, IdentityKind, Presence, Priority, TicketEventKind, utcnow
from hub.errors import Conflict, Forbidden, NotFound, ValidationFailed
from storage.ingest import TOPIC_EVENTS, add_outbox, customer_name, dialect_insert, identity_contacts
from storage.models import (
    Agent,
    CannedResponse,
    Contact,
    Identity,
    Inbox,
    Message,
    Ticket,
    TicketRead,
)
from storage.queries import identities_for, last_seen
from storage.views import contact_view

# --- tickets ---------------------------------------------------------------------


async def do_set_priority(session: AsyncSession, ticket: Ticket, priority: Priority, *, actor: str) -> bool:
    """Returns False, recording nothing, when the ticket already has it."""
    before = ticket.priority
    if before == priority.value:
        return False
    ticket.priority = priority.value
    await session.flush()
    data = {"from": before, "to": priority.value}
    await record_ticket_event(session, ticket, TicketEventKind.PRIORITY_CHANGED, actor, data)
    await audit(session, actor, "ticket.priority", "ticket", ticket.id, data)
    return True


async def do_mark_read(session: AsyncSession, agent: Agent, ticket: Ticket, message_id: int | None = None) -> int:
    """The agent has read ``ticket`` up to ``message_id`` (default: its newest
    message). A marker never moves backwards, so a late request from another tab
    cannot make read messages unread again. Returns the marker now stored."""
    if message_id is None:
        message_id = await session.scalar(select(func.max(Message.id)).where(Message.ticket_id == ticket.id)) or 0
    elif message_id != 0:
        owner = await session.scalar(select(Message.ticket_id).where(Message.id == message_id))
        if owner != ticket.id:
            raise ValidationFailed(f"message {message_id} is not a message of ticket {ticket.id}")
    stmt = dialect_insert(session, TicketRead).values(
        agent_id=agent.id, ticket_id=ticket.id, last_read_message_id=message_id, read_at=utcnow()
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["agent_id", "ticket_id"],
        set_={"last_read_message_id": stmt.excluded.last_read_message_id, "read_at": stmt.excluded.read_at},
        where=TicketRead.last_read_message_id < stmt.excluded.last_read_message_id,
    )
    await session.execute(stmt)
    stored = await session.scalar(
        select(TicketRead.last_read_message_id).where(
            TicketRead.agent_id == agent.id, TicketRead.ticket_id == ticket.id
        )
    )
    return int(stored or 0)


# --- canned responses -----------------------------------------------------------------


def clean_short_code(raw: str) -> str:
    code = raw.strip().removeprefix("/").casefold()
    if not code:
        raise ValidationFailed("short_code must not be empty")
    if len(code) > 64:
        raise ValidationFailed("short_code is longer than 64 characters")
    if any(ch.isspace() for ch in code):
        raise ValidationFailed(f"short_code {raw!r} must be one word (agents type it after '/')")
    return code


async def check_canned(session: AsyncSession, canned_id: int) -> CannedResponse:
    canned = await session.get(CannedResponse, canned_id)
    if canned is None:
        raise NotFound(f"canned response {canned_id} does not exist")
    return canned


def _check_may_edit(canned: CannedResponse, agent: Agent) -> None:
    if agent.role != "admin" and canned.created_by_id not in (None, agent.id):
        raise Forbidden(f"canned response /{canned.short_code} belongs to another agent; an admin may change it")


async def do_save_canned(
    session: AsyncSession, canned: CannedResponse | None, *, short_code: str, body: str, agent: Agent
) -> CannedResponse:
    """Create (``canned`` None) or change a canned response."""
    code = clean_short_code(short_code)
    body = body.strip()
    if not body:
        raise ValidationFailed("body must not be empty")
    taken = await session.scalar(select(CannedResponse.id).where(CannedResponse.short_code == code))
    if taken is not None and (canned is None or taken != canned.id):
        raise Conflict(f"a canned response /{code} already exists")
    now = utcnow()
    if canned is None:
        canned = CannedResponse(short_code=code, body=body, created_by_id=agent.id, created_at=now, updated_at=now)
        session.add(canned)
        action = "canned.created"
    else:
        _check_may_edit(canned, agent)
        canned.short_code, canned.body, canned.updated_at = code, body, now
        action = "canned.updated"
    await session.flush()
    await audit(session, f"agent:{agent.id}", action, "canned_response", canned.id, {"short_code": code})
    return canned


async def do_delete_canned(session: AsyncSession, canned: CannedResponse, *, agent: Agent) -> None:
    _check_may_edit(canned, agent)
    await session.execute(delete(CannedResponse).where(CannedResponse.id == canned.id))
    await audit(
        session, f"agent:{agent.id}", "canned.deleted", "canned_response", canned.id, {"short_code": canned.short_code}
    )


# --- availability ------------------------------------------------------------------------


async def agents_available(session: AsyncSession, inbox_key: str) -> bool:
    """Whether a visitor writing now is answered soon: an agent is online, or
    the inbox's bot answers first."""
    bot = await session.scalar(select(Inbox.bot_enabled).where(Inbox.key == inbox_key))
    if bot:
        return True
    online = await session.scalar(
        select(Agent.id).where(Agent.active.is_(True), Agent.presence == Presence.ONLINE.value).limit(1)
    )
    return online is not None


# --- what a visitor tells the widget -------------------------------------------------------


async def visitor_contact(session: AsyncSession, visitor_id: str) -> int:
    """The contact of a web chat visitor, created (with its identity) if they
    have not written yet. Safe against a first message stored at the same
    moment: the identity's unique key decides, as in ingest."""
    kind = IdentityKind.WEBCHAT.value
    # Locked as ingest locks it: a merge in progress is waited for, and the
    # details go to the contact the visitor is kept as.
    found = (await identity_contacts(session, [(kind, visitor_id)])).get((kind, visitor_id))
    if found is not None:
        return found
    contact = Contact(attributes={}, tags=[], lead_score=0)
    session.add(contact)
    await session.flush()
    won = await session.scalar(
        dialect_insert(session, Identity)
        .values(contact_id=contact.id, channel=kind, address=visitor_id, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["channel", "address"])
        .returning(Identity.contact_id)
    )
    if won is None:
        await session.delete(contact)
        won = (await identity_contacts(session, [(kind, visitor_id)])).get((kind, visitor_id))
    assert won is not None
    return int(won)


async def do_identify_visitor(session: AsyncSession, visitor_id: str, details: VisitorDetails) -> int:
    """Store a visitor's pre-chat (or offline form) answers on their contact: the
    name, and the email / phone as identities so a reply can go out there. An
    address that already belongs to another contact is not moved (anyone can
    type anyone's email): it is kept as an attribute with a pointer to that
    contact, for an agent to merge once they know it is the same person.
    Returns the contact's id."""
    contact_id = await visitor_contact(session, visitor_id)
    contact = await session.get(Contact, contact_id, with_for_update=True)
    assert contact is not None
    attributes = dict(contact.attributes or {})
    attributes_before = dict(attributes)
    changed: list[str] = []
    name = customer_name(details.name)
    if name and name != contact.name:
        contact.name = name
        changed.append("name")
    for kind, address in ((IdentityKind.EMAIL, details.email), (IdentityKind.PHONE, details.phone)):
        if address is None:
            continue
        attributes[kind.value] = address
        owner = await session.scalar(
            select(Identity.contact_id).where(Identity.channel == kind.value, Identity.address == address)
        )
        if owner is None:
            added = await session.scalar(
                dialect_insert(session, Identity)
                .values(contact_id=contact_id, channel=kind.value, address=address, created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["channel", "address"])
                .returning(Identity.id)
            )
            if added is not None:
                changed.append(kind.value)
        elif owner != contact_id:
            attributes.setdefault("possible_duplicate_of", [])
            if owner not in attributes["possible_duplicate_of"]:
                attributes["possible_duplicate_of"] = [*attributes["possible_duplicate_of"], owner]
    if details.offline:
        # The reply should go where the visitor will see it after they leave.
        attributes["reply_channel"] = Channel.EMAIL.value if details.email else Channel.SMS.value
    contact.attributes = attributes
    await session.flush()
    data = {k: v for k, v in (("name", name), ("email", details.email), ("phone", details.phone)) if v}
    await audit(session, "contact", "contact.identified", "contact", contact_id, {**data, "offline": details.offline})
    if attributes != attributes_before:
        # A possible duplicate to merge, or where the reply should go now.
        changed.append("attributes")
    if changed:
        await notify_contact_updated(session, contact, changed, actor="contact")
    return contact_id


#: A contact's own details changed (a visitor gave the widget their name or
#: email): agents' open lists, customer panels and reply channels follow.
CONTACT_UPDATED = "contact.updated"


async def notify_contact_updated(
    session: AsyncSession,
    contact: Contact,
    changed: list[str],
    *,
    actor: str,
    data: dict[str, Any] | None = None,
) -> None:
    """The one ``contact.updated`` event, whoever changed the contact (a visitor
    through the widget, an agent through the contacts API), in the caller's unit
    of work so it leaves only once the change is committed. It carries the
    contact as the contacts API shows it, what ``changed`` and, for an agent's
    edit, the audit entry's ``data`` (old and new values)."""
    await session.flush()
    idents = await identities_for(session, [contact.id])
    seen = await last_seen(session, [contact.id])
    latest_ticket = await session.scalar(
        select(Ticket.id)
        .where(Ticket.contact_id == contact.id)
        .order_by(Ticket.last_message_at.desc(), Ticket.id.desc())
        .limit(1)
    )
    payload: dict[str, Any] = {
        "kind": CONTACT_UPDATED,
        "actor": actor,
        "contact_id": contact.id,
        "contact": contact_view(contact, idents.get(contact.id, []), seen.get(contact.id)),
        "changed": sorted(changed),
    }
    if data is not None:
        payload["data"] = data
    await add_outbox(
        session,
        [
            {
                "topic": TOPIC_EVENTS,
                # Keyed by the contact's latest ticket, so it stays in order with
                # that ticket's events (as contact.merged is); a visitor who gave
                # their details before writing has no ticket yet.
                "key": str(latest_ticket) if latest_ticket is not None else f"contact:{contact.id}",
                "payload": payload,
            }
        ],
    )
