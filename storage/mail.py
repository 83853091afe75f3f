"""Storage for the email channel: which ticket an incoming message continues
(threading), the IMAP pollers' checkpoints and leases, and the threading
headers a reply needs.

Threading, always within one contact's tickets in one inbox (a stranger who
copies a Message-ID or a ticket number into their mail only ever reaches their
own tickets), and the tickets of the mail we sent to the sender:

1. In-Reply-To: the message it answers, ours or the customer's; ours also
   when the sender is someone we sent it to (the Reply-To address the
   customer asked us to use, a colleague they copied), not only the contact;
2. References, newest first (Outlook and some phones drop In-Reply-To), the
   same way;
3. our reply token: "[#123]" in the subject or a "support+123@" address;
4. a reply ("Re: ...") whose subject, without prefixes, is a ticket's subject
   (clients that rewrite every header);
5. otherwise a new thread: a new ticket, keyed by the message itself.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core import (
    Author,
    Channel,
    DeliveryStatus,
    Direction,
    IdentityKind,
    InboundMessage,
    TicketEventKind,
    TicketStatus,
    utcnow,
)
from storage.ingest import IngestResult, add_outbox, dialect_insert, duplicate_result, outbox_row, table
from storage.models import Contact, Identity, Inbox, MailboxCheckpoint, Message, Ticket
from storage.views import message_values_view, message_view, ticket_view

EMAIL = Channel.EMAIL.value
MAX_REFERENCES = 20
SENT_STATES = (DeliveryStatus.SENT.value, DeliveryStatus.DELIVERED.value, DeliveryStatus.READ.value)


def thread_key_for(message_key: str) -> str:
    """The thread key of a conversation that starts with this message."""
    return hashlib.sha256(message_key.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ThreadChoice:
    #: The ticket the message continues, or None for a new conversation.
    ticket: Ticket | None
    thread_key: str
    #: How it was found: in-reply-to, references, token, subject or new.
    how: str
    #: The sender is not the ticket's contact but was sent the message of
    #: ours that the mail answers (see :func:`find_thread`).
    by_recipient: bool = False


#: The addresses an outbound message of ours was sent to (To and Cc).
SentTo = Callable[[Message], Awaitable[Collection[str]]]


async def find_thread(
    session: AsyncSession,
    *,
    inbox_id: int,
    sender: str,
    message_key: str,
    in_reply_to: Sequence[str],
    references: Sequence[str],
    tokens: Sequence[int],
    reply_subject: str | None,
    normalize: Callable[[str], str],
    sent_to: SentTo | None = None,
) -> ThreadChoice:
    """The ticket an incoming message belongs to. ``reply_subject`` is the
    normalized subject when the message's subject marks it a reply, else None;
    ``normalize`` turns a ticket's subject into the same form.

    With ``sent_to``, mail answering (by In-Reply-To or References) a message
    we sent also continues its ticket when the sender is among the addresses
    ``sent_to`` gives for that message, whoever's contact they are: "reply
    all" from a copied colleague, or the customer writing from the Reply-To
    address our reply went to. Someone we never sent that Message-ID to does
    not get in by quoting it."""
    new = ThreadChoice(ticket=None, thread_key=thread_key_for(message_key), how="new")
    contact_id = await session.scalar(
        select(Identity.contact_id).where(Identity.channel == IdentityKind.EMAIL.value, Identity.address == sender)
    )
    if contact_id is None and sent_to is None:
        return new
    ids = [*in_reply_to, *[m for m in reversed(references) if m not in in_reply_to]][:100]
    if ids:
        whose = [] if contact_id is None else [Message.contact_id == contact_id]
        if sent_to is not None:
            whose.append((Message.direction == Direction.OUT.value) & Message.private.is_(False))
        rows = await session.execute(
            select(Message, Ticket)
            .join(Ticket, Ticket.id == Message.ticket_id)
            .where(
                Message.channel == EMAIL,
                Message.external_id.in_(ids),
                # Mail of this mailbox: a reply an agent sent from here on a
                # ticket of another channel (a web chat conversation) counts.
                Message.inbox_id == inbox_id,
                or_(*whose),
            )
        )
        by_id = {message.external_id: (message, ticket) for message, ticket in rows.all()}
        for mid in ids:
            if mid not in by_id:
                continue
            message, ticket = by_id[mid]
            how = "in-reply-to" if mid in in_reply_to else "references"
            if contact_id is not None and message.contact_id == contact_id:
                return ThreadChoice(ticket=ticket, thread_key=ticket.thread_key, how=how)
            if sent_to is not None and sender.lower() in {a.strip().lower() for a in await sent_to(message)}:
                return ThreadChoice(ticket=ticket, thread_key=ticket.thread_key, how=how, by_recipient=True)
    if contact_id is None:
        return new
    if tokens:
        found = {
            t.id: t
            for t in (
                await session.scalars(
                    select(Ticket).where(
                        Ticket.id.in_(list(tokens)),
                        Ticket.contact_id == contact_id,
                        Ticket.inbox_id == inbox_id,
                        Ticket.channel == EMAIL,
                    )
                )
            ).all()
        }
        for tid in tokens:
            if tid in found:
                return ThreadChoice(ticket=found[tid], thread_key=found[tid].thread_key, how="token")
    if reply_subject:
        recent = await session.scalars(
            select(Ticket)
            .where(Ticket.contact_id == contact_id, Ticket.inbox_id == inbox_id, Ticket.channel == EMAIL)
            .order_by(Ticket.last_message_at.desc())
            .limit(50)
        )
        for t in recent.all():
            if t.subject and normalize(t.subject) == reply_subject:
                return ThreadChoice(ticket=t, thread_key=t.thread_key, how="subject")
    return new


async def contact_address(session: AsyncSession, ticket: Ticket) -> str | None:
    """An email address of the ticket's contact: the one they last wrote
    from on it, else their first; None if they have none."""
    last = await session.scalar(
        select(Message.extras)
        .where(Message.ticket_id == ticket.id, Message.direction == Direction.IN.value, Message.channel == EMAIL)
        .order_by(Message.id.desc())
        .limit(1)
    )
    addresses = (
        await session.scalars(
            select(Identity.address)
            .where(Identity.contact_id == ticket.contact_id, Identity.channel == IdentityKind.EMAIL.value)
            .order_by(Identity.id)
        )
    ).all()
    latest = (last or {}).get("from")
    return latest if latest in addresses else next(iter(addresses), None)


async def sent_email_exists(session: AsyncSession, message_ids: Sequence[str]) -> bool:
    """Whether any of ``message_ids`` is mail we sent."""
    if not message_ids:
        return False
    found = await session.scalar(
        select(Message.id)
        .where(
            Message.channel == EMAIL,
            Message.direction == Direction.OUT.value,
            Message.external_id.in_(list(message_ids)[:100]),
        )
        .limit(1)
    )
    return found is not None


async def store_automatic(session: AsyncSession, ticket: Ticket, message: InboundMessage) -> IngestResult:
    """Store automatic mail (an out-of-office, a list's or a bulk sender's
    mail) on the ticket of the thread it answers, and leave the ticket as it
    is: a resolved ticket is not reopened, a snoozed one not woken, and the
    customer's waiting time and the conversation's last activity do not move
    (as for an automation's own reply), so no SLA clock starts for it. It is
    announced like any message received, for agents to see; the bot and
    automation rules do not answer it (see ``auto_reply``). A message stored
    already answers as a duplicate."""
    if ticket.status == TicketStatus.RESOLVED.value:
        # The thread may have continued in a newer ticket since (a reopening
        # refused as a conflict): automatic mail goes where the people are.
        current = await session.scalar(
            select(Ticket).where(
                Ticket.contact_id == ticket.contact_id,
                Ticket.inbox_id == ticket.inbox_id,
                Ticket.thread_key == ticket.thread_key,
                Ticket.status != TicketStatus.RESOLVED.value,
            )
        )
        ticket = current or ticket
    inbox_key = await session.scalar(select(Inbox.key).where(Inbox.id == ticket.inbox_id))
    # The same row ingest writes for a message received.
    row: dict[str, Any] = {
        "ticket_id": ticket.id,
        "contact_id": ticket.contact_id,
        "inbox_id": ticket.inbox_id,
        "channel": message.channel.value,
        "direction": Direction.IN.value,
        "author": Author.CONTACT.value,
        "body": message.body,
        "subject": message.subject,
        "attachments": [a.model_dump(exclude_none=True) for a in message.attachments],
        "private": False,
        "external_id": message.external_id,
        "status": DeliveryStatus.RECEIVED.value,
        "extras": {**message.extras, "from": message.sender},
        "created_at": utcnow(),
        "sent_at": message.received_at,
        "attempts": 0,
    }
    inserted = await session.scalar(
        dialect_insert(session, table(Message))
        .values(row)
        .on_conflict_do_nothing(index_elements=["channel", "external_id"])
        .returning(Message.id)
    )
    if inserted is None:
        stored = (
            await session.execute(
                select(Message, Inbox.key)
                .join(Inbox, Inbox.id == Message.inbox_id)
                .where(Message.channel == row["channel"], Message.external_id == message.external_id)
            )
        ).one()
        return duplicate_result(message_view(stored[0], stored[1]))
    view = message_values_view({**row, "id": inserted}, inbox_key)
    await add_outbox(
        session,
        [
            outbox_row(
                TicketEventKind.MESSAGE_RECEIVED.value,
                ticket.id,
                {"message": view, "ticket": ticket_view(ticket), "ticket_created": False},
            )
        ],
    )
    return IngestResult(
        message_id=inserted,
        ticket_id=ticket.id,
        contact_id=ticket.contact_id,
        duplicate=False,
        ticket_created=False,
        message=view,
    )


async def email_message_exists(session: AsyncSession, key: str) -> bool:
    found = await session.scalar(
        select(Message.id).where(Message.channel == EMAIL, Message.external_id == key).limit(1)
    )
    return found is not None


async def reply_context(session: AsyncSession, message: Message) -> dict[str, Any]:
    """What an outbound email needs from its thread: the ticket's subject,
    In-Reply-To (the customer's latest message), References (the thread's
    Message-IDs, oldest first, trimmed to the first and the latest), the
    address the customer last wrote from (``to``) and their name for the To
    header (only when that address is the contact's own), and from the
    customer's latest message as it came: its Reply-To
    addresses (``reply_to``) and its To and Cc addresses (``cc``), ours
    included. When the latest mail came from someone the customer copied,
    answering only us, the reply goes on to the customer's own latest
    address (and Reply-To), with that person copied. Which of those the reply
    goes to or copies is the channel's choice: it knows our mailboxes' addresses."""
    ticket = await session.get(Ticket, message.ticket_id)
    rows = (
        await session.execute(
            select(Message.external_id, Message.direction, Message.status, Message.extras)
            .where(
                Message.ticket_id == message.ticket_id,
                Message.channel == EMAIL,
                Message.private.is_(False),
                Message.external_id.is_not(None),
                Message.id < message.id,
            )
            .order_by(Message.id)
        )
    ).all()
    theirs = {
        a.lower()
        for a in (
            await session.scalars(
                select(Identity.address).where(
                    Identity.contact_id == message.contact_id, Identity.channel == IdentityKind.EMAIL.value
                )
            )
        ).all()
    }
    references: list[str] = []
    in_reply_to: str | None = None
    sender: str | None = None
    reply_to: list[str] = []
    copied: list[str] = []
    # The customer's own latest mail (From one of their addresses): where the
    # conversation goes on when someone they copied answered only us.
    requester: str | None = None
    requester_reply_to: list[str] = []
    for i, row in enumerate(rows):
        if row.direction == Direction.OUT.value and row.status not in SENT_STATES:
            continue  # never reached anyone: not part of the customer's thread
        headers = (row.extras or {}).get("email") or {}
        if i == 0:
            # A thread that began as a reply to older mail keeps that ancestry.
            references.extend(m for m in headers.get("references") or [] if isinstance(m, str))
        # An incoming message's external id is our key for it: its Message-ID,
        # or a hash when it has none, which no mail client knows it by.
        mid = row.external_id if row.direction == Direction.OUT.value else headers.get("message_id")
        if isinstance(mid, str) and mid:
            references.append(mid)
        if row.direction == Direction.IN.value:
            if isinstance(mid, str) and mid:
                in_reply_to = mid
            # A contact may have several addresses (merged contacts): the
            # thread goes on with the one the customer last wrote from.
            sender = headers.get("from") or sender
            # Unlike the sender, these are never inherited from older mail: a
            # customer who stops asking for replies elsewhere, or drops someone
            # from the conversation, is taken at their latest word.
            reply_to = [a for a in headers.get("reply_to") or [] if isinstance(a, str)]
            copied = [a for a in (*(headers.get("to") or []), *(headers.get("cc") or [])) if isinstance(a, str)]
            sent_by = headers.get("from")
            if isinstance(sent_by, str) and sent_by.lower() in theirs:
                requester, requester_reply_to = sent_by, reply_to
    references = list(dict.fromkeys(references))
    if len(references) > MAX_REFERENCES:
        references = references[:1] + references[-(MAX_REFERENCES - 1) :]
    name = await session.scalar(select(Contact.name).where(Contact.id == message.contact_id))
    asked_for = {a.lower() for a in requester_reply_to}
    if sender and sender.lower() not in theirs:
        if requester is not None and sender.lower() not in asked_for:
            # Someone the customer copied answered only us (a plain "Reply"):
            # the reply goes on to the customer, as they last asked, with that
            # colleague and whoever they wrote to copied. Replying to the
            # colleague alone would drop the customer from their own ticket.
            copied = [sender, *reply_to, *copied]
            sender, reply_to = requester, requester_reply_to
        else:
            # The latest mail came from someone else we wrote to (an address the
            # customer asked replies to go to, or no mail of theirs to go back
            # to): the reply goes there, and the contact's name is not theirs.
            name = None
    return {
        "email": {
            "subject": ticket.subject if ticket is not None else None,
            "in_reply_to": [in_reply_to] if in_reply_to else references[-1:],
            "references": references,
            "recipient_name": name,
            "to": sender,
            "reply_to": reply_to,
            "cc": copied,
        }
    }


# --- checkpoints and leases ---------------------------------------------------


class LeaseLost(RuntimeError):
    """Another process polls this mailbox now; this one must stop."""


async def claim_mailbox(
    session: AsyncSession, inbox_key: str, folder: str, owner: str, lease_seconds: float
) -> MailboxCheckpoint | None:
    """Take (or keep) the lease on a mailbox's poller. None when another live
    process holds it."""
    now = utcnow()
    await session.execute(
        dialect_insert(session, MailboxCheckpoint)
        .values(inbox_key=inbox_key, folder=folder, last_uid=0, updated_at=now)
        .on_conflict_do_nothing(index_elements=["inbox_key"])
    )
    claimed = await session.scalar(
        update(MailboxCheckpoint)
        .where(
            MailboxCheckpoint.inbox_key == inbox_key,
            or_(
                MailboxCheckpoint.lease_owner.is_(None),
                MailboxCheckpoint.lease_until.is_(None),
                MailboxCheckpoint.lease_owner == owner,
                MailboxCheckpoint.lease_until < now,
            ),
        )
        .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
        .returning(MailboxCheckpoint.inbox_key)
        .execution_options(synchronize_session=False)
    )
    if claimed is None:
        return None
    return await session.scalar(
        select(MailboxCheckpoint)
        .where(MailboxCheckpoint.inbox_key == inbox_key)
        .execution_options(populate_existing=True)
    )


async def renew_lease(session: AsyncSession, inbox_key: str, owner: str, lease_seconds: float) -> None:
    """Extend our lease; raises :class:`LeaseLost` if it is someone else's."""
    renewed = await session.scalar(
        update(MailboxCheckpoint)
        .where(MailboxCheckpoint.inbox_key == inbox_key, MailboxCheckpoint.lease_owner == owner)
        .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
        .returning(MailboxCheckpoint.inbox_key)
        .execution_options(synchronize_session=False)
    )
    if renewed is None:
        raise LeaseLost(f"mailbox {inbox_key} is polled by another process now")


async def advance_checkpoint(
    session: AsyncSession,
    inbox_key: str,
    owner: str,
    *,
    folder: str,
    uidvalidity: int,
    last_uid: int,
    lease_seconds: float,
) -> None:
    """Move the checkpoint, in the caller's transaction (the one that stored
    the message), only while we hold the lease: a process that lost it
    (paused, then outlived its lease) rolls back instead of moving it."""
    now = utcnow()
    moved = await session.scalar(
        update(MailboxCheckpoint)
        .where(MailboxCheckpoint.inbox_key == inbox_key, MailboxCheckpoint.lease_owner == owner)
        .values(
            folder=folder,
            uidvalidity=uidvalidity,
            last_uid=last_uid,
            updated_at=now,
            lease_until=now + timedelta(seconds=lease_seconds),
        )
        .returning(MailboxCheckpoint.inbox_key)
        .execution_options(synchronize_session=False)
    )
    if moved is None:
        raise LeaseLost(f"mailbox {inbox_key} is polled by another process now")


async def release_mailbox(session: AsyncSession, inbox_key: str, owner: str) -> None:
    await session.execute(
        update(MailboxCheckpoint)
        .where(MailboxCheckpoint.inbox_key == inbox_key, MailboxCheckpoint.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )


# --- what a poller remembers beyond its checkpoint ----------------------------

#: The key in the mailbox's ``Inbox.settings`` of what the checkpoint row has
#: no column for: when the hub first connected to the mailbox, and the bounds
#: of a re-read after the folder's UIDVALIDITY changed.
SYNC_STATE = "mail_sync"


@dataclass(frozen=True, slots=True)
class HistoryCutoff:
    """While a folder is read again after its UIDVALIDITY changed (or the
    configured folder did), with ``first_sync: new``: its messages up to
    ``until_uid`` that arrived before ``before`` (the first connection) are
    history the hub never imported, not new mail."""

    uidvalidity: int
    folder: str
    until_uid: int
    before: datetime


async def _sync_state(session: AsyncSession, inbox_key: str, *, lock: bool) -> tuple[Inbox | None, dict[str, Any]]:
    query = select(Inbox).where(Inbox.key == inbox_key).execution_options(populate_existing=True)
    inbox = await session.scalar(query.with_for_update() if lock else query)
    state = (inbox.settings or {}).get(SYNC_STATE) if inbox is not None else None
    return inbox, dict(state) if isinstance(state, dict) else {}


async def _save_sync_state(session: AsyncSession, inbox: Inbox, state: dict[str, Any]) -> None:
    # A new dict: the JSON column only notices assignment.
    inbox.settings = {**(inbox.settings or {}), SYNC_STATE: state}
    await session.flush()


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def remember_first_connection(session: AsyncSession, inbox_key: str, at: datetime) -> None:
    """Record when the hub first read the mailbox (kept from then on)."""
    inbox, state = await _sync_state(session, inbox_key, lock=True)
    if inbox is None or state.get("connected_at"):
        return
    await _save_sync_state(session, inbox, {**state, "connected_at": _aware(at).isoformat()})


async def first_connection(session: AsyncSession, inbox_key: str, checkpoint: MailboxCheckpoint) -> datetime:
    """When the hub first read the mailbox. Mailboxes connected before that
    was recorded: their first stored incoming mail, else the checkpoint's
    last move; with ``first_sync: new`` the hub stored every mail that
    arrived from its first connection on, so nothing it missed is later."""
    inbox, state = await _sync_state(session, inbox_key, lock=False)
    recorded = state.get("connected_at")
    if isinstance(recorded, str):
        with contextlib.suppress(ValueError):
            return _aware(datetime.fromisoformat(recorded))
    first: datetime | None = None
    if inbox is not None:
        first = await session.scalar(
            select(func.min(Message.created_at)).where(
                Message.inbox_id == inbox.id, Message.channel == EMAIL, Message.direction == Direction.IN.value
            )
        )
    return _aware(first if first is not None else checkpoint.updated_at)


async def start_history_cutoff(session: AsyncSession, inbox_key: str, cutoff: HistoryCutoff) -> None:
    """Keep the bounds of a re-read with the checkpoint it starts (same
    transaction), so a poller that takes over halfway still applies them."""
    inbox, state = await _sync_state(session, inbox_key, lock=True)
    if inbox is None:
        return
    bounds = {
        "uidvalidity": cutoff.uidvalidity,
        "folder": cutoff.folder,
        "until_uid": cutoff.until_uid,
        "before": _aware(cutoff.before).isoformat(),
    }
    await _save_sync_state(session, inbox, {**state, "reread": bounds})


async def history_cutoff(
    session: AsyncSession, inbox_key: str, *, uidvalidity: int, folder: str
) -> HistoryCutoff | None:
    """The bounds of the re-read of this folder, if one was started."""
    _, state = await _sync_state(session, inbox_key, lock=False)
    bounds = state.get("reread")
    if not isinstance(bounds, dict) or bounds.get("uidvalidity") != uidvalidity or bounds.get("folder") != folder:
        return None
    try:
        return HistoryCutoff(
            uidvalidity=uidvalidity,
            folder=folder,
            until_uid=int(bounds["until_uid"]),
            before=_aware(datetime.fromisoformat(str(bounds["before"]))),
        )
    except (KeyError, TypeError, ValueError):
        return None
