"""Every write the hub makes on an agent's or the system's behalf.

Zulip's shape: ``check_*`` validates and loads (raising a :class:`HubError` that
names what is wrong, before anything is written), ``do_*`` mutates inside the
caller's unit of work and records the timeline event, the audit entry and the
outbox event in the same transaction, so an event leaves only after its commit
and a failure leaves nothing half-written.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bots.dialog import STAGES
from channels.base import ChannelAdapter
from channels.twilio_sms import TwilioSmsChannel, prepare_parts
from channels.twilio_voice import TwilioVoiceChannel
from hub.attachments import AttachmentStore
from hub.campaigns.audience import CONSENT_KEYS, SMS_CONSENT
from hub.core import (
    IDENTITY_OF_CHANNEL,
    Attachment,
    Author,
    Channel,
    DeliveryStatus,
    Direction,
    QuickReply,
    Role,
    TicketEvent,
    TicketEventKind,
    TicketStatus,
    status_advances,
    utcnow,
)
from hub.errors import BadRequest, Conflict, NotFound, Unauthorized, ValidationFailed
from hub.security import MIN_PASSWORD_LENGTH, hash_password, new_api_token, token_digest, verify_password
from hub.text import InvalidPhoneNumber, clean_label, label_key, parse_phone, strip_bidi_controls
from routing.settings import language_tag
from storage.ingest import add_outbox, dialect_insert, outbox_row
from storage.models import (
    Agent,
    ApiToken,
    AuditLog,
    BotSession,
    BotTurn,
    Call,
    CampaignRecipient,
    Contact,
    Identity,
    Inbox,
    Message,
    Team,
    TeamMember,
    Ticket,
    TicketEventRow,
    TicketLabel,
)
from storage.views import message_view, ticket_view

# Channels whose replies go out as SMS (a reply on a phone ticket is a text).
SMS_CHANNELS = (Channel.SMS.value, Channel.VOICE.value)


def actor_of(agent: Agent | None) -> str:
    return f"agent:{agent.id}" if agent is not None else "system"


async def audit(
    session: AsyncSession,
    actor: str,
    action: str,
    entity: str,
    entity_id: int | None,
    data: dict[str, Any] | None = None,
) -> None:
    session.add(AuditLog(actor=actor, action=action, entity=entity, entity_id=entity_id, data=data or {}))


async def record_ticket_event(
    session: AsyncSession,
    ticket: Ticket,
    kind: TicketEventKind,
    actor: str,
    data: dict[str, Any],
) -> None:
    """A timeline entry for the customer, and the same fact on the stream."""
    fact = TicketEvent(kind=kind, ticket_id=ticket.id, contact_id=ticket.contact_id, actor=actor, data=data)
    session.add(
        TicketEventRow(
            ticket_id=fact.ticket_id,
            contact_id=fact.contact_id,
            kind=fact.kind.value,
            actor=fact.actor,
            data=fact.data,
            created_at=fact.at,
        )
    )
    labels = await ticket_labels(session, ticket.id)
    await add_outbox(
        session,
        [
            outbox_row(
                fact.kind.value,
                fact.ticket_id,
                {"ticket": ticket_view(ticket, labels), "actor": fact.actor, "data": fact.data},
            )
        ],
    )


async def ticket_labels(session: AsyncSession, ticket_id: int) -> list[str]:
    rows = await session.execute(select(TicketLabel.label).where(TicketLabel.ticket_id == ticket_id))
    return list(rows.scalars().all())


# --- agents and auth -------------------------------------------------------


# Loose on purpose (the real check is whether mail reaches it), but one
# address: no spaces, brackets or list separators, something on each side of one @.
_AGENT_EMAIL = re.compile(r"[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+")
# Agents' and teams' names, as the columns and the API take them.
MAX_NAME_CHARS = 200


def clean_agent_name(name: str) -> str:
    """An agent's name as it is kept: one line (it is shown in lists and mail
    headers), within the column, and without the bidi controls that would make
    colleagues and customers read it as someone else's ("Eve \u202eevil" shows
    as "Eve live"), as a customer's name is kept."""
    cleaned = " ".join(strip_bidi_controls(name).split())
    if not cleaned:
        raise ValidationFailed("name must not be empty")
    if len(cleaned) > MAX_NAME_CHARS:
        raise ValidationFailed(f"name is longer than {MAX_NAME_CHARS} characters")
    return cleaned


async def do_create_agent(
    session: AsyncSession,
    *,
    email: str,
    name: str,
    password: str,
    role: Role = Role.AGENT,
    teams: list[str] | None = None,
    skills: list[str] | None = None,
    languages: list[str] | None = None,
    capacity: dict[str, int] | None = None,
    phone: str | None = None,
    phone_region: str | None = None,
    actor: str = "system",
) -> Agent:
    """``phone``: where calls for this agent ring (the IVR and click-to-call),
    read in ``phone_region`` when written without a country code."""
    email = email.strip().lower()
    if len(email) > 320 or _AGENT_EMAIL.fullmatch(email) is None:
        raise ValidationFailed(f"email {email[:80]!r} is not an email address")
    name = clean_agent_name(name)
    # Once each, as stored: "Support" given twice, or as " Support ", is one
    # membership (a second would break the unique membership constraint).
    team_names = list(dict.fromkeys(t.strip() for t in teams or ()))
    for team_name in team_names:
        if not team_name or len(team_name) > MAX_NAME_CHARS:
            raise ValidationFailed(f"team name {team_name[:80]!r} must have 1 to {MAX_NAME_CHARS} characters")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    # As the agents API takes them: a word such as "english" would make the
    # agent ineligible for every ticket routing gives a language.
    tags = [s.strip() for s in languages or () if s.strip()]
    for tag in tags:
        try:
            language_tag(tag.lower())
        except ValueError as exc:
            raise ValidationFailed(f"languages: {exc}") from exc
    e164: str | None = None
    if phone:
        try:
            e164 = parse_phone(phone, phone_region)
        except InvalidPhoneNumber as exc:
            raise ValidationFailed(f"phone: {exc}") from exc
    # Slow on purpose (Argon2): in a thread, and before the first statement so
    # no write transaction is held open meanwhile.
    password_hash = await asyncio.to_thread(hash_password, password)
    exists = await session.scalar(select(Agent.id).where(Agent.email == email))
    if exists is not None:
        raise Conflict(f"an agent with email {email} already exists")
    agent = Agent(
        email=email,
        name=name,
        password_hash=password_hash,
        role=role.value,
        # As do_update_agent_routing keeps them: " billing" is "billing".
        skills=sorted({s.strip() for s in skills or () if s.strip()}),
        languages=sorted({tag.lower() for tag in tags}),
        capacity=dict(capacity or {}),
        presence="offline",
        phone=e164,
        active=True,
    )
    session.add(agent)
    await session.flush()
    for team_name in team_names:
        team = await do_get_or_create_team(session, team_name, actor=actor)
        session.add(TeamMember(team_id=team.id, agent_id=agent.id))
    await audit(session, actor, "agent.created", "agent", agent.id, {"email": email, "role": role.value})
    return agent


async def do_get_or_create_team(session: AsyncSession, name: str, *, actor: str = "system") -> Team:
    name = name.strip()
    if not name:
        raise ValidationFailed("team name must not be empty")
    team = await session.scalar(select(Team).where(Team.name == name))
    if team is None:
        team = Team(name=name)
        session.add(team)
        await session.flush()
        await audit(session, actor, "team.created", "team", team.id, {"name": name})
    return team


async def check_login(session: AsyncSession, email: str, password: str) -> Agent:
    """The agent these credentials belong to. Only reads, so a caller can check
    them before opening a write transaction: the hash takes a few hundred
    milliseconds, and SQLite's one writer must not wait on it."""
    agent = await session.scalar(select(Agent).where(Agent.email == email.strip().lower()))
    # Verify against a dummy hash for unknown emails too, so timing does not
    # reveal which addresses have accounts. Argon2 is slow on purpose: in a
    # thread, so failed logins cannot stall every other request on the loop.
    ok = await asyncio.to_thread(verify_password, agent.password_hash if agent else dummy_hash(), password)
    if agent is None or not ok or not agent.active:
        raise Unauthorized("email or password is wrong")
    return agent


async def do_issue_token(session: AsyncSession, agent_id: int, ttl_hours: float) -> str:
    """A new bearer token for an agent whose credentials were checked (by
    :func:`check_login`, possibly in an earlier transaction)."""
    agent = await session.get(Agent, agent_id)
    if agent is None or not agent.active:
        # Deactivated (or deleted) since the check.
        raise Unauthorized("email or password is wrong")
    token, digest = new_api_token()
    now = utcnow()
    # Expired tokens are useless; dropping them here keeps the table small
    # without a separate clean-up job.
    await session.execute(delete(ApiToken).where(ApiToken.agent_id == agent.id, ApiToken.expires_at < now))
    session.add(ApiToken(agent_id=agent.id, token_hash=digest, expires_at=now + timedelta(hours=ttl_hours)))
    await audit(session, actor_of(agent), "agent.login", "agent", agent.id)
    return token


@functools.cache
def dummy_hash() -> str:
    """A hash to check unknown emails' passwords against. Made on first use,
    not at import: Argon2 takes 64 MB and four threads for it, which every
    command importing this module (a campaign send, a migration) paid. Web
    processes make it at start-up, so the first failed login is not slower."""
    return hash_password("not a real password, only for constant-time failures")


async def check_token(session: AsyncSession, token: str) -> Agent:
    row = await session.execute(
        select(Agent, ApiToken.expires_at)
        .join(ApiToken, ApiToken.agent_id == Agent.id)
        .where(ApiToken.token_hash == token_digest(token))
    )
    found = row.first()
    if found is None:
        raise Unauthorized("the token is not valid")
    agent, expires_at = found
    if expires_at <= utcnow():
        raise Unauthorized("the token has expired; log in again")
    if not agent.active:
        raise Unauthorized("this agent is deactivated")
    return agent


async def do_logout(session: AsyncSession, token: str) -> None:
    await session.execute(delete(ApiToken).where(ApiToken.token_hash == token_digest(token)))


# --- inboxes ---------------------------------------------------------------


async def do_ensure_inbox(
    session: AsyncSession, *, key: str, channel: Channel, name: str, bot_enabled: bool = False
) -> Inbox:
    """Inboxes come from the configuration; keep the table in step with it."""
    inbox = await session.scalar(select(Inbox).where(Inbox.key == key))
    if inbox is None:
        # Processes starting together (web and workers) all sync the inboxes:
        # the unique key decides, and the losers read the winner's row.
        created = await session.scalar(
            dialect_insert(session, Inbox)
            .values(key=key, channel=channel.value, name=name, bot_enabled=bot_enabled, settings={})
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(Inbox.id)
        )
        inbox = await session.scalar(select(Inbox).where(Inbox.key == key).execution_options(populate_existing=True))
        assert inbox is not None
        if created is not None:
            await audit(session, "system", "inbox.created", "inbox", inbox.id, {"key": key})
    if inbox.channel != channel.value:
        raise Conflict(f"inbox {key!r} exists as a {inbox.channel} inbox, not {channel.value}")
    else:
        inbox.name = name
        inbox.bot_enabled = bot_enabled
    return inbox


# --- tickets ---------------------------------------------------------------


async def check_ticket(session: AsyncSession, ticket_id: int, *, lock: bool = False) -> Ticket:
    stmt = select(Ticket).where(Ticket.id == ticket_id)
    if lock:
        stmt = stmt.with_for_update()
    ticket = await session.scalar(stmt)
    if ticket is None:
        raise NotFound(f"ticket {ticket_id} does not exist")
    return ticket


NOT_STORED = (
    "not a file in this hub's attachment store: upload it with POST /api/v1/attachments "
    "and put the object it returns here"
)


async def check_reply_attachments(store: AttachmentStore, given: Sequence[Attachment]) -> list[Attachment]:
    """A reply's attachments as the store has them: each must be one of its
    files, and its type, size and name are the store's, not what the client
    wrote (a PDF called image/png would go to Telegram as a photo). Raises
    :class:`ValidationFailed` naming ``attachments.N.url`` otherwise."""
    found = [await asyncio.to_thread(store.resolve, a.url) for a in given]
    details = [{"field": f"attachments.{i}.url", "message": NOT_STORED} for i, f in enumerate(found) if f is None]
    if details:
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        raise ValidationFailed(f"invalid request body: {summary}", details=details)
    return [f for f in found if f is not None]


def check_channel_takes_files(
    channels: Mapping[Channel, ChannelAdapter], channel: Channel, files: Sequence[Attachment]
) -> None:
    """Refuses a reply with ``files`` that ``channel`` cannot deliver, rather
    than storing it to fail in the sender (or, on a channel without files, to
    show as sent without them). A channel not configured here is left to the
    sender, which fails the reply with the reason as it does any reply."""
    adapter = channels.get(channel)
    if not files or adapter is None:
        return
    problem: str | None = None
    if not adapter.supports_attachments:
        problem = f"the {channel.value} channel cannot carry files: send the text alone"
    else:
        # A reply on a phone ticket goes out as an SMS from the SMS line.
        sms = adapter.sms if isinstance(adapter, TwilioVoiceChannel) else adapter
        if isinstance(sms, TwilioSmsChannel):
            problem = sms.media_problem(files)
    if problem is not None:
        raise ValidationFailed(
            f"invalid request body: attachments: {problem}", details=[{"field": "attachments", "message": problem}]
        )


async def do_post_message(
    session: AsyncSession,
    ticket: Ticket,
    *,
    body: str,
    author: Author,
    agent: Agent | None = None,
    private: bool = False,
    attachments: list[dict[str, Any]] | None = None,
    quick_replies: Sequence[QuickReply] = (),
    channel: Channel | None = None,
    automatic: bool = False,
) -> Message:
    """A reply (queued for the sender) or a private note on ``ticket``;
    ``quick_replies`` are buttons offered with it, rendered by each channel.
    ``channel`` sends the reply on another channel the contact has (an email
    left in the web chat's offline form) instead of the ticket's own.
    ``automatic``: an automation rule's reply, which answers nobody: the
    customer still waits for a person (``waiting_since`` stays) and the
    conversation's quiet spell goes on (``last_message_at`` stays), so an idle
    rule's own reply does not start a new spell for it to fire in again.
    Returns the (first) stored message."""
    body = body.strip()
    if not body and not attachments:
        raise ValidationFailed("body must not be empty")
    now = utcnow()
    channel = channel or Channel(ticket.channel)
    inbox = await session.get(Inbox, ticket.inbox_id)
    assert inbox is not None
    recipient: str | None = None
    if not private:
        kind = IDENTITY_OF_CHANNEL[channel]
        recipient = await _reply_address(session, ticket, channel) if channel.value == ticket.channel else None
        if recipient is None:
            recipient = await session.scalar(
                select(Identity.address)
                .where(Identity.contact_id == ticket.contact_id, Identity.channel == kind.value)
                .order_by(Identity.id.desc())
                .limit(1)
            )
        if recipient is None:
            raise ValidationFailed(f"contact {ticket.contact_id} has no {kind.value} address to reply to on {channel}")
        if channel.value != ticket.channel:
            inbox = await _inbox_for(session, ticket.contact_id, channel)
    # A body longer than the channel's provider takes is stored as several
    # messages, each sent, tracked and retried on its own (SMS: 1,600 characters);
    # quick replies go with the last part.
    parts: list[tuple[str, dict[str, Any]]] = [(body, {})]
    if not private and channel.value in SMS_CHANNELS:
        parts = prepare_parts(body, quick_replies)
    messages: list[Message] = []
    for i, (text, part_extras) in enumerate(parts):
        last = i == len(parts) - 1
        messages.append(
            Message(
                ticket_id=ticket.id,
                contact_id=ticket.contact_id,
                inbox_id=inbox.id,
                channel=channel.value if not private else ticket.channel,
                direction=Direction.OUT.value,
                author=author.value,
                author_id=agent.id if agent else None,
                body=text,
                attachments=list(attachments or []) if i == 0 else [],
                private=private,
                # A note goes nowhere: it is complete the moment it is stored.
                status=DeliveryStatus.SENT.value if private else DeliveryStatus.QUEUED.value,
                extras={**_outbound_extras(recipient, quick_replies if last else ()), **part_extras},
                created_at=now,
                next_attempt_at=None if private else now,
                attempts=0,
            )
        )
    session.add_all(messages)
    if not private:
        if not automatic:
            ticket.last_message_at = now
            ticket.waiting_since = None
        if author is Author.AGENT:
            if ticket.first_response_at is None:
                ticket.first_response_at = now
            if ticket.status == TicketStatus.PENDING.value:
                # A human answered: the bot steps back on this ticket.
                ticket.status = TicketStatus.OPEN.value
                ticket.bot_silenced = True
    await session.flush()
    labels = await ticket_labels(session, ticket.id)
    tview = ticket_view(ticket, labels)
    await add_outbox(
        session,
        [
            outbox_row(
                TicketEventKind.MESSAGE_CREATED.value,
                ticket.id,
                {"message": message_view(msg, inbox.key), "ticket": tview},
            )
            for msg in messages
        ],
    )
    for msg in messages:
        await audit(
            session,
            actor_of(agent) if agent else author.value,
            "message.note" if private else "message.reply",
            "ticket",
            ticket.id,
            {"message_id": msg.id},
        )
    return messages[0]


async def _reply_address(session: AsyncSession, ticket: Ticket, channel: Channel) -> str | None:
    """Where the customer last wrote from on this ticket. A merged contact has
    several addresses of a kind (two phone numbers); the newest of them is not
    necessarily the one this conversation is with. None when unknown (rows
    stored before ingest recorded the sender) or no longer the contact's."""
    extras = await session.scalar(
        select(Message.extras)
        .where(
            Message.ticket_id == ticket.id,
            Message.direction == Direction.IN.value,
            Message.channel == channel.value,
        )
        .order_by(Message.id.desc())
        .limit(1)
    )
    sender = (extras or {}).get("from")
    if not isinstance(sender, str) or not sender:
        return None
    return await session.scalar(
        select(Identity.address).where(
            Identity.contact_id == ticket.contact_id,
            Identity.channel == IDENTITY_OF_CHANNEL[channel].value,
            Identity.address == sender,
        )
    )


async def _inbox_for(session: AsyncSession, contact_id: int, channel: Channel) -> Inbox:
    """Where a reply on ``channel`` goes out from: the inbox the contact last
    wrote to on it (their SMS number, their mailbox), else the first one."""
    last = await session.scalar(
        select(Message.inbox_id)
        .where(Message.contact_id == contact_id, Message.channel == channel.value)
        .order_by(Message.id.desc())
        .limit(1)
    )
    inbox = await session.get(Inbox, last) if last is not None else None
    if inbox is None:
        inbox = await session.scalar(select(Inbox).where(Inbox.channel == channel.value).order_by(Inbox.id).limit(1))
    if inbox is None:
        raise ValidationFailed(f"no {channel} inbox is configured on this hub, so nothing can be sent on {channel}")
    return inbox


def _outbound_extras(recipient: str | None, quick_replies: Sequence[QuickReply]) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if recipient:
        extras["recipient"] = recipient
    if quick_replies:
        extras["quick_replies"] = [q.model_dump() for q in quick_replies]
    return extras


async def do_assign(
    session: AsyncSession,
    ticket: Ticket,
    *,
    agent_id: int | None,
    team_id: int | None,
    actor: str,
) -> Ticket:
    if agent_id is not None:
        assignee = await session.get(Agent, agent_id)
        if assignee is None:
            raise NotFound(f"agent {agent_id} does not exist")
        if not assignee.active and agent_id != ticket.assignee_id:
            raise Conflict(f"agent {agent_id} is deactivated")
    if team_id is not None and await session.get(Team, team_id) is None:
        raise NotFound(f"team {team_id} does not exist")
    before = {"assignee_id": ticket.assignee_id, "team_id": ticket.team_id}
    ticket.assignee_id = agent_id
    ticket.team_id = team_id
    if agent_id is not None:
        # Someone has it: it waits in no queue, and a stale mark would make a
        # later return to the team look like "still waiting", announced to nobody.
        ticket.queued_at = None
        await session.execute(update(Agent).where(Agent.id == agent_id).values(last_assigned_at=utcnow()))
    after = {"assignee_id": agent_id, "team_id": team_id}
    await session.flush()
    await record_ticket_event(session, ticket, TicketEventKind.ASSIGNED, actor, {"from": before, "to": after})
    await audit(session, actor, "ticket.assigned", "ticket", ticket.id, {"from": before, "to": after})
    return ticket


async def do_set_status(
    session: AsyncSession,
    ticket: Ticket,
    *,
    status: TicketStatus,
    actor: str,
    snoozed_until: datetime | None = None,
) -> Ticket:
    now = utcnow()
    if status is TicketStatus.SNOOZED:
        if snoozed_until is None:
            raise ValidationFailed("snoozed_until is required to snooze a ticket")
        if snoozed_until <= now:
            raise ValidationFailed("snoozed_until must be in the future")
    elif snoozed_until is not None:
        raise ValidationFailed("snoozed_until is only allowed with status snoozed")
    before = ticket.status
    if before == status.value and (status is not TicketStatus.SNOOZED or ticket.snoozed_until == snoozed_until):
        # Nothing changes (an agent's second click, a retried request): a new
        # resolved_at would lose when it was resolved, and the event would
        # tell the router of a reopening (open -> open starts a new SLA cycle).
        return ticket

    def change() -> None:
        ticket.status = status.value
        ticket.snoozed_until = snoozed_until
        ticket.resolved_at = now if status is TicketStatus.RESOLVED else None

    if before == TicketStatus.RESOLVED.value and status is not TicketStatus.RESOLVED:
        other = await _other_current_ticket(session, ticket)
        if other is not None:
            raise Conflict(_already_open(other))
        # The check cannot see another reopening (or a new ticket from ingest)
        # not yet committed: on PostgreSQL the unique index makes this write
        # wait for that one and fail once it commits. The savepoint turns that
        # into the same 409 and keeps the caller's transaction usable (mail
        # carries on when a reopen conflicts). Locking the contact instead
        # would take it after the ticket, the reverse of a merge's order.
        try:
            async with session.begin_nested():
                change()
                await session.flush()
        except IntegrityError as exc:
            if not _violates(exc, CURRENT_TICKET_INDEX):
                raise
            # The rollback expired the ticket: read it back as it is (resolved).
            await session.refresh(ticket)
            raise Conflict(_already_open(await _other_current_ticket(session, ticket))) from None
    else:
        change()
        await session.flush()
    data = {"from": before, "to": status.value}
    if snoozed_until is not None:
        data["snoozed_until"] = snoozed_until.isoformat()
    await record_ticket_event(session, ticket, TicketEventKind.STATUS_CHANGED, actor, data)
    await audit(session, actor, "ticket.status", "ticket", ticket.id, data)
    return ticket


# At most one unresolved ticket per contact, inbox and thread (storage.models.Ticket).
CURRENT_TICKET_INDEX = "uq_tickets_current"


def _violates(exc: IntegrityError, index: str) -> bool:
    """Whether ``exc`` is a unique violation of ``index``: asyncpg names it;
    SQLite only lists its columns (and, one writer at a time, never gets here)."""
    orig = exc.orig
    for err in (orig, getattr(orig, "driver_exception", None), getattr(orig, "__cause__", None)):
        name = getattr(err, "constraint_name", None)
        if isinstance(name, str):
            return name == index
    text = str(orig)
    return index in text or "tickets.contact_id, tickets.inbox_id, tickets.thread_key" in text


async def _other_current_ticket(session: AsyncSession, ticket: Ticket) -> int | None:
    """Another unresolved ticket of the same contact, inbox and thread."""
    return await session.scalar(
        select(Ticket.id).where(
            Ticket.contact_id == ticket.contact_id,
            Ticket.inbox_id == ticket.inbox_id,
            Ticket.thread_key == ticket.thread_key,
            Ticket.status != TicketStatus.RESOLVED.value,
            Ticket.id != ticket.id,
        )
    )


def _already_open(other: int | None) -> str:
    which = f"ticket {other}" if other is not None else "another ticket"
    return f"{which} is already open for this contact in this inbox; reply there instead"


async def do_set_labels(session: AsyncSession, ticket: Ticket, labels: list[str], *, actor: str) -> None:
    # One label per spelling up to case and spacing ("VIP", "vip", " Vip "),
    # else the ticket holds three and a filter finds one: the ticket's own
    # spelling wins, then the first one given.
    before = sorted(await ticket_labels(session, ticket.id))
    chosen = {label_key(label): label for label in before}
    given: dict[str, str] = {}
    for label in labels:
        spelled = clean_label(label)
        if spelled:
            given.setdefault(label_key(spelled), chosen.get(label_key(spelled), spelled))
    clean = sorted(given.values())
    for label in clean:
        if len(label) > 100:
            raise ValidationFailed(f"label {label[:20]!r}... is longer than 100 characters")
    if clean == before:
        return  # nothing changes: no audit entry claiming it did
    await session.execute(delete(TicketLabel).where(TicketLabel.ticket_id == ticket.id))
    for label in clean:
        session.add(TicketLabel(ticket_id=ticket.id, label=label))
    await session.flush()
    # The timeline entry and the live event (other agents' inboxes update the
    # ticket's labels), like a priority change.
    await record_ticket_event(session, ticket, TicketEventKind.LABELS_CHANGED, actor, {"from": before, "to": clean})
    await audit(session, actor, "ticket.labels", "ticket", ticket.id, {"from": before, "labels": clean})


async def do_handoff(
    session: AsyncSession,
    ticket: Ticket,
    *,
    reason: str,
    summary: str | None = None,
    team_id: int | None = None,
    actor: str = "bot",
) -> bool:
    """The bot (or an automation) gives the ticket to humans: a pending ticket
    opens, the bot is silenced on it for good, the summary becomes a private
    note for the agent who picks it up, and a ``ticket.handoff`` event (with the
    reason and the wanted team) tells routing and the agents' inbox. Returns
    False, changing nothing, when the ticket was already handed off or resolved,
    so a redelivered event does not post the note twice."""
    if ticket.status == TicketStatus.RESOLVED.value or (
        ticket.bot_silenced and ticket.status != TicketStatus.PENDING.value
    ):
        return False
    if team_id is not None and await session.get(Team, team_id) is None:
        raise NotFound(f"team {team_id} does not exist")
    before = ticket.status
    ticket.bot_silenced = True
    if ticket.status == TicketStatus.PENDING.value:
        ticket.status = TicketStatus.OPEN.value
        # The customer has been waiting for a human since now, not since they
        # first wrote to the bot.
        ticket.waiting_since = utcnow()
    await session.flush()
    if summary:
        await do_post_message(session, ticket, body=summary, author=Author.BOT, private=True)
    data: dict[str, Any] = {"reason": reason, "team_id": team_id, "from": before, "to": ticket.status}
    await record_ticket_event(session, ticket, TicketEventKind.HANDOFF, actor, data)
    await audit(session, actor, "ticket.handoff", "ticket", ticket.id, data)
    return True


# --- contacts --------------------------------------------------------------


async def check_contact(session: AsyncSession, contact_id: int) -> Contact:
    contact = await session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"contact {contact_id} does not exist")
    return contact


async def do_merge_contacts(session: AsyncSession, target: Contact, source: Contact, *, actor: str) -> Contact:
    """Fold ``source`` into ``target``: identities, tickets, messages, timeline,
    calls and campaign rows move; the source row stays as a pointer so old
    links still resolve."""
    if target.id == source.id:
        raise BadRequest("a contact cannot be merged into itself")
    # Both rows are locked (in id order, so opposite merges cannot deadlock) and
    # re-read before the checks: two opposite merges at once (A <- B, B <- A)
    # would otherwise each pass them and leave both merged into the other.
    # FOR NO KEY UPDATE (key_share): ingest's inserts check their foreign key
    # to the contact with a key-share lock while holding the contact's open
    # tickets, which the merge updates next; a plain FOR UPDATE would wait on
    # those checks and deadlock with them on PostgreSQL.
    await session.execute(
        select(Contact)
        .where(Contact.id.in_([target.id, source.id]))
        .order_by(Contact.id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    if source.merged_into_id is not None:
        raise Conflict(f"contact {source.id} was already merged into {source.merged_into_id}")
    if target.merged_into_id is not None:
        raise Conflict(f"contact {target.id} was merged into {target.merged_into_id}; merge into that one")
    # The identities move first, locked in the order ingest share-locks them
    # (code point order, as Python sorts): a message the customer is writing
    # now either commits before this (and is moved below with the rest) or
    # waits and then finds the kept contact. Nothing of the source's is locked
    # yet, so ingest, holding its identities, never waits for the merge.
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            select(Identity.id)
            .where(Identity.contact_id == source.id)
            .order_by(Identity.channel.collate("C"), Identity.address.collate("C"))
            .with_for_update()
        )
    await session.execute(update(Identity).where(Identity.contact_id == source.id).values(contact_id=target.id))
    now = utcnow()
    # Both may have an unresolved ticket in the same inbox (and thread); only
    # one may stay unresolved, so the source's is resolved with a pointer to
    # the other.
    target_current = {
        (t.inbox_id, t.thread_key): t
        for t in (
            await session.scalars(
                select(Ticket).where(Ticket.contact_id == target.id, Ticket.status != TicketStatus.RESOLVED.value)
            )
        ).all()
    }
    resolved: list[tuple[Ticket, dict[str, Any]]] = []
    for t in (
        await session.scalars(
            select(Ticket).where(Ticket.contact_id == source.id, Ticket.status != TicketStatus.RESOLVED.value)
        )
    ).all():
        if (t.inbox_id, t.thread_key) in target_current:
            data = {
                "from": t.status,
                "to": TicketStatus.RESOLVED.value,
                "reason": "merged",
                "continued_in": target_current[(t.inbox_id, t.thread_key)].id,
            }
            t.status = TicketStatus.RESOLVED.value
            t.snoozed_until = None
            t.resolved_at = now
            resolved.append((t, data))
    await session.flush()
    skipped = await _merge_campaign_rows(session, target.id, source.id)
    # Every row that is about the person follows them (bot_sessions, one per
    # contact, is settled below); a campaign row must, or the runner checks the
    # consent of the merged-away contact, which nobody updates any more.
    for model in (Ticket, Message, TicketEventRow, BotTurn, Call, CampaignRecipient):
        move = update(model).where(model.contact_id == source.id).values(contact_id=target.id)
        if model is not Ticket:
            await session.execute(move)
            continue
        # A resolved ticket of the target reopened meanwhile (not yet committed
        # when target_current was read) may collide with a source ticket on the
        # unique index: the merge is refused whole, as a 409, not a 500.
        try:
            async with session.begin_nested():
                await session.execute(move)
        except IntegrityError as exc:
            if not _violates(exc, CURRENT_TICKET_INDEX):
                raise
            raise Conflict(
                f"a ticket of contact {target.id} was reopened during the merge, in an inbox where contact "
                f"{source.id} has an open ticket too; nothing was merged, try again"
            ) from None
    # Announced like any status change (timeline, stream, audit), once the
    # tickets are the target's, so the agents' inbox files them right.
    for t, data in resolved:
        await record_ticket_event(session, t, TicketEventKind.STATUS_CHANGED, actor, data)
        await audit(session, actor, "ticket.status", "ticket", t.id, data)
    await _merge_bot_sessions(session, target.id, source.id)
    attributes = _merged_attributes(target.attributes or {}, source.attributes or {})
    # What the source had that the target kept its own value for: the audit
    # keeps it, so a merge loses nothing without a trace.
    discarded: dict[str, Any] = {}
    if source.name and target.name and source.name != target.name:
        discarded["name"] = source.name
    if source.segment and target.segment and source.segment != target.segment:
        discarded["segment"] = source.segment
    lost = {k: v for k, v in (source.attributes or {}).items() if k not in attributes or attributes[k] != v}
    if lost:
        discarded["attributes"] = lost
    target.attributes = attributes
    target.tags = sorted(set(target.tags or []) | set(source.tags or []))
    target.name = target.name or source.name
    target.segment = target.segment or source.segment
    target.lead_score = max(target.lead_score, source.lead_score)
    target.lifecycle_stage = _later_stage(target.lifecycle_stage, source.lifecycle_stage)
    source.merged_into_id = target.id
    await session.flush()
    latest = await session.scalar(
        select(Ticket).where(Ticket.contact_id == target.id).order_by(Ticket.last_message_at.desc()).limit(1)
    )
    data = {"source_id": source.id, "target_id": target.id}
    if latest is not None:
        await record_ticket_event(session, latest, TicketEventKind.CONTACT_MERGED, actor, data)
    audited: dict[str, Any] = dict(data)
    if skipped:
        audited["campaign_recipients_skipped"] = skipped
    if discarded:
        audited["discarded"] = discarded
    await audit(session, actor, "contact.merged", "contact", target.id, audited)
    return target


def _merged_attributes(target: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """The target's attributes win, except SMS consent: the merged contact
    keeps the later of the two decisions, as a whole (answer, time, source).
    When the times do not tell (missing, unreadable or equal), a withdrawal
    wins: a merge must never make someone who said no receive marketing SMS."""
    merged = {**source, **target}
    decided = [a for a in (target, source) if a.get(SMS_CONSENT) is not None]
    if len(decided) < 2:
        return merged  # one decision or none: the plain merge carries it whole
    target_at, source_at = _consent_time(target), _consent_time(source)
    if target_at is not None and source_at is not None and target_at != source_at:
        chosen = source if source_at > target_at else target
    else:
        chosen = next((a for a in decided if a[SMS_CONSENT] is not True), target)
    for key in CONSENT_KEYS:
        merged.pop(key, None)
        if key in chosen:
            merged[key] = chosen[key]
    return merged


def _consent_time(attributes: dict[str, Any]) -> datetime | None:
    at = attributes.get("sms_consent_at")
    if not isinstance(at, str):
        return None
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _later_stage(target: str | None, source: str | None) -> str | None:
    """Lifecycle stages the bot qualifies leads through only move forward
    (:func:`bots.dialog.later_stage`): a sales-qualified lead merged with a new
    one stays sales-qualified. A stage set outside that ladder is kept as it
    is, the target's first, since nothing says how it compares."""
    if target in STAGES and source in STAGES:
        return target if STAGES.index(target) >= STAGES.index(source) else source
    return target or source


async def _merge_campaign_rows(session: AsyncSession, target_id: int, source_id: int) -> list[int]:
    """Both contacts may be recipients of one campaign (the audience took one
    row per contact, on different numbers): once they are one person, only one
    message may still go. If the campaign already tried one of their rows
    (sending, sent, or done), their other pending rows are skipped; if not, the
    target's pending row stays (the contact the agent kept, and the number its
    audience chose) and the source's are skipped. Only ``pending`` rows change,
    as the runner's own skips do, so a row a worker has already taken to send
    is left alone. Returns the ids of the rows skipped."""
    # Imported here: hub.campaigns.actions imports this module.
    from hub.campaigns.actions import PENDING, SKIPPED

    c = CampaignRecipient
    rows = (
        await session.execute(
            select(c.id, c.campaign_id, c.contact_id, c.status)
            .where(c.contact_id.in_([target_id, source_id]))
            .order_by(c.id)
        )
    ).all()
    by_campaign: dict[int, list[Any]] = {}
    for r in rows:
        by_campaign.setdefault(r.campaign_id, []).append(r)
    skip: list[int] = []
    for group in by_campaign.values():
        if len({r.contact_id for r in group}) < 2:
            continue
        pending = [r for r in group if r.status == PENDING]
        tried = any(r.status not in (PENDING, SKIPPED) for r in group)
        keep = None if tried else min(pending, key=lambda r: (r.contact_id != target_id, r.id), default=None)
        skip += [r.id for r in pending if r is not keep]
    if not skip:
        return []
    result = await session.execute(
        update(c)
        .where(c.id.in_(skip), c.status == PENDING)
        .values(status=SKIPPED, reason="duplicate", claimed_by=None, lease_until=None)
        .returning(c.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(result.scalars().all())


async def _merge_bot_sessions(session: AsyncSession, target_id: int, source_id: int) -> None:
    """The bot's memory follows the customer: a dialog in progress on either
    contact continues after the merge. When both have one, the one the customer
    used last wins (what they said is on the merged contact either way)."""
    rows = {
        row.contact_id: row
        for row in (
            await session.scalars(
                select(BotSession).where(BotSession.contact_id.in_([target_id, source_id])).with_for_update()
            )
        ).all()
    }
    source, target = rows.get(source_id), rows.get(target_id)
    if source is None:
        return
    if target is None or source.updated_at > target.updated_at:
        if target is not None:
            await session.delete(target)
            await session.flush()
        await session.execute(update(BotSession).where(BotSession.contact_id == source_id).values(contact_id=target_id))
    else:
        await session.delete(source)
    await session.flush()


async def do_record_visitor_receipt(
    session: AsyncSession, message_id: int, status: DeliveryStatus, *, contact_id: int, channel: Channel
) -> list[Message]:
    """The visitor's widget says it showed (``delivered``) or the visitor saw
    (``read``) reply ``message_id``: so they did every earlier one of theirs
    on ``channel`` too, shown above it. One UPDATE; a ``message.status`` event
    per message it changed, which it returns.

    Earlier replies move only from ``sent`` (or ``delivered``, to read): one
    still queued or failed has not reached the visitor, and marked read the
    sender (it claims only queued ones) would never send it. ``message_id``
    itself may move from anything behind (its receipt can overtake the
    sender's record of the send), as :func:`do_record_delivery` does."""
    shown = [DeliveryStatus.SENT.value]
    if status is DeliveryStatus.READ:
        shown.append(DeliveryStatus.DELIVERED.value)
    behind = [s.value for s in DeliveryStatus if status_advances(s, status)]
    now = utcnow()
    changed = (
        await session.scalars(
            update(Message)
            .where(
                Message.contact_id == contact_id,
                Message.channel == channel.value,
                Message.direction == Direction.OUT.value,
                Message.private.is_(False),
                ((Message.id == message_id) & Message.status.in_(behind))
                | ((Message.id < message_id) & Message.status.in_(shown)),
            )
            .values(
                status=status.value,
                status_reason=None,
                # Bound as the column's type: SQLite stores these as UTC text.
                delivered_at=func.coalesce(Message.delivered_at, literal(now, Message.delivered_at.type)),
                sent_at=func.coalesce(Message.sent_at, literal(now, Message.sent_at.type)),
            )
            .returning(Message.id)
            .execution_options(synchronize_session=False)
        )
    ).all()
    if not changed:
        return []
    messages = list(
        (
            await session.scalars(
                select(Message)
                .where(Message.id.in_(changed))
                .order_by(Message.id)
                .execution_options(populate_existing=True)
            )
        ).all()
    )
    inbox_keys = dict(
        (await session.execute(select(Inbox.id, Inbox.key).where(Inbox.id.in_({m.inbox_id for m in messages})))).all()
    )
    await add_outbox(
        session,
        [
            outbox_row(
                TicketEventKind.MESSAGE_STATUS.value, m.ticket_id, {"message": message_view(m, inbox_keys[m.inbox_id])}
            )
            for m in messages
        ],
    )
    return messages


async def do_record_delivery(
    session: AsyncSession,
    message_id: int,
    status: DeliveryStatus,
    *,
    contact_id: int | None = None,
    channel: Channel | None = None,
    reason: str | None = None,
) -> Message | None:
    """A receipt for an outbound message (the visitor's widget, a provider's
    callback). Never moves a message backwards; ``contact_id`` limits the
    receipt to that customer's messages, ``channel`` to the messages sent on
    the channel the receipt came from; ``reason`` says why it failed.
    Returns the message if it changed."""
    msg = await session.get(Message, message_id, with_for_update=True)
    if msg is None or msg.direction != Direction.OUT.value or msg.private:
        return None
    if contact_id is not None and msg.contact_id != contact_id:
        return None
    # The widget can only see (and so acknowledge) web chat replies: its
    # "read" for the contact's SMS or email reply would mark a queued one
    # delivered, which the sender (it claims only queued ones) then never sends.
    if channel is not None and msg.channel != channel.value:
        return None
    if not status_advances(DeliveryStatus(msg.status), status):
        return None
    msg.status = status.value
    if reason is not None:
        msg.status_reason = reason
    elif status in (DeliveryStatus.DELIVERED, DeliveryStatus.READ):
        # It arrived after all (a failure report, then the customer read it):
        # the failure's reason no longer describes it.
        msg.status_reason = None
    if status in (DeliveryStatus.DELIVERED, DeliveryStatus.READ) and msg.delivered_at is None:
        msg.delivered_at = utcnow()
    if msg.sent_at is None and status not in (DeliveryStatus.QUEUED, DeliveryStatus.SENDING):
        # The receipt overtook the sender's own record of its send.
        msg.sent_at = utcnow()
    await session.flush()
    inbox_key = await session.scalar(select(Inbox.key).where(Inbox.id == msg.inbox_id))
    await add_outbox(
        session,
        [outbox_row(TicketEventKind.MESSAGE_STATUS.value, msg.ticket_id, {"message": message_view(msg, inbox_key)})],
    )
    return msg
