"""SQLAlchemy 2 models. The schema is created and upgraded by Alembic
(``storage/migrations``); a test checks the migrations produce these models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from hub.core import utcnow

# SQLite integer primary keys must be INTEGER to autoincrement; PostgreSQL gets BIGINT.
PK = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class _SQLiteDateTime(sqlite.DATETIME):
    """SQLite's text datetimes in SQLAlchemy's storage format
    ("2026-11-23 18:00:37.418695"), read and written with the C-level
    ``fromisoformat`` / ``isoformat`` instead of the dialect's regular
    expression: tickets carry many timestamps, and parsing them showed up in
    the ingest profile."""

    def bind_processor(self, dialect: Any) -> Any:
        def process(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat(" ", "microseconds")

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        def process(value: str | datetime | None) -> datetime | None:
            if value is None or isinstance(value, datetime):
                return value
            return datetime.fromisoformat(value)

        return process


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which stores naive text) too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLiteDateTime())  # type: ignore[no-untyped-call]  # the dialect type is untyped
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TeamMember(Base):
    __tablename__ = "team_members"

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20), default="agent")
    skills: Mapped[list[Any]] = mapped_column(default=list)
    languages: Mapped[list[Any]] = mapped_column(default=list)
    # Open tickets an agent may hold, per channel kind: {"webchat": 3, "email": 10}.
    capacity: Mapped[dict[str, Any]] = mapped_column(default=dict)
    presence: Mapped[str] = mapped_column(String(20), default="offline")
    phone: Mapped[str | None] = mapped_column(String(40), default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_assigned_at: Mapped[datetime | None] = mapped_column(default=None)
    # Routing: when presence last changed, and the last heartbeat of the agent's inbox.
    # What the agent chose; ``presence`` is what routing sees (online turns
    # away when the heartbeat stops, and back when the inbox reconnects).
    presence_choice: Mapped[str] = mapped_column(String(20), default="online")
    presence_changed_at: Mapped[datetime | None] = mapped_column(default=None)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)

    teams: Mapped[list[Team]] = relationship(secondary="team_members", lazy="raise")


class ApiToken(Base):
    """Bearer tokens: only a SHA-256 of the token is kept, so a leaked database
    does not leak sessions."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class Inbox(Base):
    """Where messages arrive: the web chat, an SMS number, a mailbox, a bot."""

    __tablename__ = "inboxes"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    channel: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    bot_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    default_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), default=None)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(512), default=None)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    lifecycle_stage: Mapped[str | None] = mapped_column(String(40), default=None)
    lead_score: Mapped[int] = mapped_column(Integer, default=0)
    segment: Mapped[str | None] = mapped_column(String(40), default=None)
    # A contact merged into another keeps its row so old links resolve.
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    identities: Mapped[list[Identity]] = relationship(back_populates="contact", lazy="raise")


class Identity(Base):
    """One address of a contact on one kind of channel."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("channel", "address", name="uq_identities_channel_address"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    channel: Mapped[str] = mapped_column(String(20))
    address: Mapped[str] = mapped_column(String(512))
    display_name: Mapped[str | None] = mapped_column(String(512), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when the channel refuses to deliver to this address for good (a
    # Telegram user blocked the bot); cleared when the customer writes again.
    unreachable_at: Mapped[datetime | None] = mapped_column(default=None)
    unreachable_reason: Mapped[str | None] = mapped_column(Text, default=None)

    contact: Mapped[Contact] = relationship(back_populates="identities", lazy="raise")


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        # At most one unresolved ticket per contact, inbox and thread: the
        # database, not a lock in one process, makes two simultaneous first
        # messages share a ticket. Chat channels have one thread ("") per
        # contact and inbox; email has one per conversation (several open
        # tickets per customer, chosen by threading headers).
        Index(
            "uq_tickets_current",
            "contact_id",
            "inbox_id",
            "thread_key",
            unique=True,
            sqlite_where=text("status != 'resolved'"),
            postgresql_where=text("status != 'resolved'"),
        ),
        Index("ix_tickets_activity", "last_message_at", "id"),
        Index("ix_tickets_status_activity", "status", "last_message_at"),
        Index("ix_tickets_queue", "team_id", "queued_at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id"))
    channel: Mapped[str] = mapped_column(String(20))
    # The conversation within the contact's inbox: "" on chat channels; on
    # email a key of the thread's first message (see storage.mail).
    thread_key: Mapped[str] = mapped_column(String(64), default="", server_default="")
    status: Mapped[str] = mapped_column(String(20), default="open")
    priority: Mapped[str] = mapped_column(String(20), default="normal")
    subject: Mapped[str | None] = mapped_column(String(1000), default=None)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), default=None, index=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the customer started waiting for us (None: we spoke last).
    waiting_since: Mapped[datetime | None] = mapped_column(default=None)
    first_response_at: Mapped[datetime | None] = mapped_column(default=None)
    last_message_at: Mapped[datetime] = mapped_column(default=utcnow)
    snoozed_until: Mapped[datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    bot_silenced: Mapped[bool] = mapped_column(Boolean, default=False)
    # Routing: in its team's queue since (None: not waiting for an agent); the
    # detected language and skills an agent needs; the SLA policy, the current
    # cycle (a reopened ticket starts a new one) and its deadlines; the next
    # instant the SLA sweeper must look at it, and what it has already fired.
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    language: Mapped[str | None] = mapped_column(String(8), default=None)
    skills: Mapped[list[Any]] = mapped_column(default=list)
    sla_policy: Mapped[str | None] = mapped_column(String(100), default=None)
    sla_cycle: Mapped[int] = mapped_column(Integer, default=1)
    cycle_started_at: Mapped[datetime | None] = mapped_column(default=None)
    first_response_due_at: Mapped[datetime | None] = mapped_column(default=None)
    next_response_due_at: Mapped[datetime | None] = mapped_column(default=None)
    resolution_due_at: Mapped[datetime | None] = mapped_column(default=None)
    sla_deadlines: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sla_fired: Mapped[list[Any]] = mapped_column(default=list)
    sla_next_check_at: Mapped[datetime | None] = mapped_column(default=None, index=True)

    labels: Mapped[list[TicketLabel]] = relationship(lazy="raise", cascade="all, delete-orphan")


class TicketLabel(Base):
    __tablename__ = "ticket_labels"
    __table_args__ = (
        # The label filter compares lower(label) on PostgreSQL (any script), which
        # ix_ticket_labels_label cannot serve. SQLite's lower() folds ASCII only,
        # so its filter matches exact spellings and needs no such index.
        Index("ix_ticket_labels_label_lower", func.lower(text("label"))).ddl_if(dialect="postgresql"),
    )

    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(100), primary_key=True, index=True)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # Idempotency: a provider's retried webhook carries the same id.
        UniqueConstraint("channel", "external_id", name="uq_messages_channel_external_id"),
        Index("ix_messages_ticket", "ticket_id", "id"),
        Index("ix_messages_contact_time", "contact_id", "created_at"),
        Index("ix_messages_outbound_work", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id"))
    channel: Mapped[str] = mapped_column(String(20))
    direction: Mapped[str] = mapped_column(String(3))
    author: Mapped[str] = mapped_column(String(10))
    author_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), default=None)
    body: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str | None] = mapped_column(String(1000), default=None)
    attachments: Mapped[list[Any]] = mapped_column(default=list)
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    external_id: Mapped[str | None] = mapped_column(String(512), default=None)
    status: Mapped[str] = mapped_column(String(20))
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    extras: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    # Outbound work: tries so far, when to try again, when a "sending" claim lapses.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)


class TicketEventRow(Base):
    """The customer timeline's non-message facts (created, assigned, status,
    merges, calls), and the history of each ticket."""

    __tablename__ = "ticket_events"
    __table_args__ = (Index("ix_ticket_events_contact_time", "contact_id", "created_at"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    kind: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(64), default="system")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxRow(Base):
    """Events written in the same transaction as the change they describe; the
    relay publishes them on the stream after the commit. A row leaves the table
    only once the stream holds the event durably (or, in-process, once it is
    handled), so a crash at any point redelivers rather than loses."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    topic: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(64), default="")
    payload: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(default=None, index=True)
    # Set when handlers kept failing on this event: it is parked here, never
    # dropped, until an operator re-drives it (clears the column).
    dead_letter: Mapped[str | None] = mapped_column(Text, default=None)


class AuditLog(Base):
    """Who changed what: every action by an agent, an admin, the bot or the system."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_entity", "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SmsOptOut(Base):
    """The SMS opt-out ledger: a customer who texted STOP to a sender (a number
    or a Messaging Service, as the customer sees it) is sent nothing more from
    it until they text START. Opting back in keeps the row (``opted_out`` false),
    so the ledger says when and why each number changed its mind."""

    __tablename__ = "sms_opt_outs"
    __table_args__ = (UniqueConstraint("phone", "sender", name="uq_sms_opt_outs_phone_sender"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    phone: Mapped[str] = mapped_column(String(40))
    sender: Mapped[str] = mapped_column(String(64))
    opted_out: Mapped[bool] = mapped_column(Boolean)
    # What changed it: the keyword and message, or "Twilio error 21610".
    source: Mapped[str] = mapped_column(String(200))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Call(Base):
    """One phone call (Twilio Voice), inbound or click-to-call, on the caller's
    ticket; its changes are also ``call`` events in the ticket's timeline."""

    __tablename__ = "calls"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    call_sid: Mapped[str] = mapped_column(String(64), unique=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    direction: Mapped[str] = mapped_column(String(10))  # inbound | outbound
    # E.164, or a SIP / Twilio Client address as Twilio wrote it (up to 200 characters).
    customer: Mapped[str] = mapped_column(String(200))
    line: Mapped[str] = mapped_column(String(200))  # our number (or SIP address)
    status: Mapped[str] = mapped_column(String(20))  # Twilio's CallStatus
    menu_choice: Mapped[str | None] = mapped_column(String(8), default=None)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), default=None)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), default=None)
    # A voicemail left on this call (an inbound message on the ticket).
    voicemail_message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), default=None)
    duration_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    extras: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TelegramBotState(Base):
    """Per configured Telegram bot: the getUpdates offset (the next update_id to
    fetch, advanced only after an update is committed) and which process polls
    the bot now. The claim is a lease renewed on every poll, so exactly one
    process polls a bot and another takes over when that one dies."""

    __tablename__ = "telegram_bot_state"

    bot: Mapped[str] = mapped_column(String(64), primary_key=True)
    update_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    poller: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CannedResponse(Base):
    """A saved reply an agent inserts by typing ``/`` and its short code."""

    __tablename__ = "canned_responses"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    # Stored case-folded, so "/Hours" and "/hours" are one response.
    short_code: Mapped[str] = mapped_column(String(64), unique=True)
    body: Mapped[str] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TicketRead(Base):
    """How far each agent has read each ticket: the customer's messages after
    ``last_read_message_id`` are unread for that agent."""

    __tablename__ = "ticket_reads"

    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True, index=True)
    last_read_message_id: Mapped[int] = mapped_column(BigInteger)
    read_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- the bot (issue 5) ------------------------------------------------------------


class FaqEntry(Base):
    """A knowledge-base entry the bot answers from. ``key`` is the admin's id
    for it; every change bumps ``version`` and leaves a :class:`FaqVersion`."""

    __tablename__ = "faq_entries"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    questions: Mapped[list[Any]] = mapped_column(default=list)
    # {"en": ..., "fa": ...}, or {"default": ...} for one answer in every language.
    answer: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    team: Mapped[str | None] = mapped_column(String(200), default=None)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # Deleted entries stay, so their history and old reports still resolve.
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64), default="system")


class RoutingCursor(Base):
    """Round robin's durable cursor: the agent a team assigned to last."""

    __tablename__ = "routing_cursors"

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    agent_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RoutingDocument(Base):
    """Routing rules and automation rules as the admin API last saved them (or
    as config.yaml seeded them); ``version`` tells every worker to reload."""

    __tablename__ = "routing_documents"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # "config": seeded from config.yaml (a changed file re-seeds it); "api": edited by an admin.
    source: Mapped[str] = mapped_column(String(20), default="config")
    digest: Mapped[str] = mapped_column(String(64), default="")
    body: Mapped[list[Any]] = mapped_column(default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64), default="system")


class FaqVersion(Base):
    """Who changed which knowledge-base entry, when, and to what."""

    __tablename__ = "faq_versions"
    __table_args__ = (UniqueConstraint("entry_key", "version", name="uq_faq_versions_entry_key_version"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    entry_key: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    change: Mapped[str] = mapped_column(String(20))  # created, updated, deleted
    # The entry as it was after the change (empty for a deletion).
    document: Mapped[dict[str, Any]] = mapped_column(default=dict)
    actor: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BotSession(Base):
    """What the bot remembers about a contact between messages, on any channel:
    the qualification dialog in progress, the buttons it offered, how many turns
    in a row it did not understand, what it said (for the handoff summary)."""

    __tablename__ = "bot_sessions"

    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BotTurn(Base):
    """One inbound message the bot handled. Unique per message, so a
    redelivered event never makes a second reply; also the record the
    feedback and the knowledge-gap report are built from."""

    __tablename__ = "bot_turns"
    __table_args__ = (Index("ix_bot_turns_created", "created_at"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), unique=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    question: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str | None] = mapped_column(String(8), default=None)
    # answer, clarify, handoff, qualify, smalltalk, feedback, silent, rasa
    action: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(64), default=None)
    entry_key: Mapped[str | None] = mapped_column(String(200), default=None)
    confidence: Mapped[float | None] = mapped_column(default=None)
    candidates: Mapped[list[Any]] = mapped_column(default=list)
    reply_message_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The customer's answer to "did this answer your question?": yes / no.
    feedback: Mapped[str | None] = mapped_column(String(8), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MailboxCheckpoint(Base):
    """How far the IMAP poller of one mailbox got: the folder's UIDVALIDITY and
    the last UID whose message is committed (advanced in the same transaction
    as the message), and which process polls the mailbox now. The lease keeps
    several worker processes from polling one mailbox at once; it lapses when
    its holder dies, and another worker takes over where it stopped."""

    __tablename__ = "mailbox_checkpoints"

    inbox_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    folder: Mapped[str] = mapped_column(String(500))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger, default=None)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TicketCycle(Base):
    """One stretch of a ticket from (re)opening to resolution: first response is
    measured per cycle, so a reopened ticket is judged on its new question."""

    __tablename__ = "ticket_cycles"
    __table_args__ = (UniqueConstraint("ticket_id", "number", name="uq_ticket_cycles_ticket_number"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    sla_policy: Mapped[str | None] = mapped_column(String(100), default=None)
    started_at: Mapped[datetime]
    first_response_due_at: Mapped[datetime | None] = mapped_column(default=None)
    first_response_at: Mapped[datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
    breaches: Mapped[list[Any]] = mapped_column(default=list)


class AutomationRun(Base):
    """An automation rule that fired on a ticket for one occasion (``marker``:
    the event, or the idle period), so redelivery or a second sweeper does not
    fire it again."""

    __tablename__ = "automation_runs"
    __table_args__ = (UniqueConstraint("rule", "ticket_id", "marker", name="uq_automation_runs_rule_ticket_marker"),)

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    rule: Mapped[str] = mapped_column(String(100))
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    marker: Mapped[str] = mapped_column(String(100))
    # For idle rules: the last message of the quiet spell the rule fired for.
    occasion_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- campaigns (issue 8) -----------------------------------------------------------


class Campaign(Base):
    """A bulk SMS send to an audience chosen once (by segment filter or CSV), from
    one sender, with a template rendered per recipient when the audience is set."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # draft, scheduled, running, paused, completed, cancelled
    status: Mapped[str] = mapped_column(String(20), default="draft", index=True)
    # The twilio sender's key (its number or Messaging Service SID).
    sender: Mapped[str] = mapped_column(String(64))
    template: Mapped[str] = mapped_column(Text)
    # The language of the template ("en", "fa"), for the opt-out line; None: detected.
    language: Mapped[str | None] = mapped_column(String(8), default=None)
    # How the audience was chosen ({"kind": "segment", "filter": {...}} or CSV figures).
    audience: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # {"start": "21:00", "end": "09:00"} in each recipient's local time; None: none.
    quiet_hours: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Segments per second; None: the sender's messages_per_second.
    rate_per_second: Mapped[float | None] = mapped_column(default=None)
    price_per_segment: Mapped[float] = mapped_column(default=0.0)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    created_by: Mapped[str] = mapped_column(String(64), default="system")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    scheduled_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelled_at: Mapped[datetime | None] = mapped_column(default=None)


class CampaignRecipient(Base):
    """One contact of a campaign and what happened to their message. The row is
    the unit of exactly-once: ``pending`` (claimed by a worker with a lease) ->
    ``sending`` (committed before Twilio is called) -> ``sent`` -> ``delivered`` /
    ``undelivered`` / ``failed``; ``skipped`` with the reason; ``uncertain`` when
    nobody can tell whether Twilio took it (its worker died mid-send, a timeout):
    never resent blindly, but looked up in Twilio's message list and settled."""

    __tablename__ = "campaign_recipients"
    __table_args__ = (
        UniqueConstraint("campaign_id", "phone", name="uq_campaign_recipients_campaign_id_phone"),
        Index("ix_campaign_recipients_work", "campaign_id", "status", "not_before"),
        # A customer's reply is matched to their latest campaign message.
        Index("ix_campaign_recipients_phone_sent", "phone", "sent_at"),
    )

    id: Mapped[int] = mapped_column(PK, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    phone: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    error_code: Mapped[str | None] = mapped_column(String(16), default=None)
    body: Mapped[str] = mapped_column(Text, default="")
    segments: Mapped[int] = mapped_column(Integer, default=1)
    encoding: Mapped[str] = mapped_column(String(8), default="GSM-7")
    # What the message costs (its segments at its destination's price per segment).
    price: Mapped[float] = mapped_column(default=0.0)
    language: Mapped[str | None] = mapped_column(String(8), default=None)
    # IANA zones whose quiet hours apply (a number's region may span several).
    timezones: Mapped[list[Any]] = mapped_column(default=list)
    # Not before this time (quiet hours, a retry's backoff).
    not_before: Mapped[datetime | None] = mapped_column(default=None)
    claimed_by: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Times Twilio's message list was asked about an uncertain send and could not answer.
    lookups: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    external_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    replied_at: Mapped[datetime | None] = mapped_column(default=None)
    reply_message_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    opted_out_at: Mapped[datetime | None] = mapped_column(default=None)


class SmsPacing(Base):
    """A sender's token bucket, shared by every worker process: the moment from
    which its next segment may go (a GCRA's theoretical arrival time). Workers
    reserve slices of time from it, so together they keep the sender's rate."""

    __tablename__ = "sms_pacing"

    sender: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_at: Mapped[datetime] = mapped_column(default=utcnow)


class Upload(Base):
    """A file uploaded to go in a message (an agent's reply, a web chat
    visitor's message) and not yet known to be in one. Anyone with a visitor
    token can upload, so a file no message took is removed after a grace
    period (see ``hub.attachments.UploadSweeper``); the row goes once the
    sweeper has seen the file used or removed it."""

    __tablename__ = "uploads"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"), default=None)
    visitor_id: Mapped[str | None] = mapped_column(String(200), default=None)
    size: Mapped[int] = mapped_column(BigInteger)
    # The highest message id when the file came: a message that uses it is
    # stored later, so has a higher id (found through the primary key, where
    # messages.created_at has no index of its own).
    after_message_id: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
