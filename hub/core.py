"""Core types that cross every boundary of the hub.

This module is deliberately framework-free: it imports pydantic (for validation)
and the standard library, nothing of ours, no aiohttp, no SQLAlchemy. Channels
produce :class:`InboundMessage` and consume :class:`OutboundMessage`; storage,
routing, bots and the hub exchange these and :class:`TicketEvent`.

Every model rejects unknown fields (a typo in a channel adapter fails loudly
instead of silently dropping data) and every timestamp is timezone-aware UTC.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def utcnow() -> datetime:
    return datetime.now(UTC)


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError("timestamp must be timezone-aware")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        # 9999-12-31T23:59:59-05:00 is in year 10000 in UTC. Pydantic turns a
        # ValueError into a validation error naming the field; an
        # OverflowError it lets through, as a server error.
        raise ValueError("timestamp is out of range once converted to UTC") from exc


UTCDateTime = Annotated[datetime, AfterValidator(_to_utc)]


class Channel(enum.StrEnum):
    """The ways a customer can reach us."""

    WEBCHAT = "webchat"
    SMS = "sms"
    VOICE = "voice"
    EMAIL = "email"
    TELEGRAM = "telegram"


class IdentityKind(enum.StrEnum):
    """What an address is. SMS and voice share the phone number, so a customer who
    texts and later calls is one contact with one identity."""

    WEBCHAT = "webchat"
    PHONE = "phone"
    EMAIL = "email"
    TELEGRAM = "telegram"
    # A Rasa conversation's sender id (the rasa-sdk bridge): it finds the
    # contact again, but is no channel of ours to send to.
    RASA = "rasa"


IDENTITY_OF_CHANNEL: dict[Channel, IdentityKind] = {
    Channel.WEBCHAT: IdentityKind.WEBCHAT,
    Channel.SMS: IdentityKind.PHONE,
    Channel.VOICE: IdentityKind.PHONE,
    Channel.EMAIL: IdentityKind.EMAIL,
    Channel.TELEGRAM: IdentityKind.TELEGRAM,
}


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"


class Author(enum.StrEnum):
    CONTACT = "contact"
    AGENT = "agent"
    BOT = "bot"
    SYSTEM = "system"


class TicketStatus(enum.StrEnum):
    OPEN = "open"
    PENDING = "pending"  # the bot has it
    SNOOZED = "snoozed"
    RESOLVED = "resolved"


class Priority(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


PRIORITY_RANK: dict[Priority, int] = {
    Priority.LOW: 0,
    Priority.NORMAL: 1,
    Priority.HIGH: 2,
    Priority.URGENT: 3,
}


class DeliveryStatus(enum.StrEnum):
    """Where a message is on its way. Inbound messages are ``received``."""

    RECEIVED = "received"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    UNDELIVERED = "undelivered"
    FAILED = "failed"


# Receipts arrive out of order (a provider's "sent" can come after "delivered").
# A status may only replace one of lower rank, so a message never moves backwards.
# Failures outrank "sent" (the provider gave up after accepting it) but not
# "delivered": a late failure report for a delivered message is noise.
STATUS_RANK: dict[DeliveryStatus, int] = {
    DeliveryStatus.RECEIVED: 0,
    DeliveryStatus.QUEUED: 1,
    DeliveryStatus.SENDING: 2,
    DeliveryStatus.SENT: 3,
    DeliveryStatus.UNDELIVERED: 4,
    DeliveryStatus.FAILED: 4,
    DeliveryStatus.DELIVERED: 5,
    DeliveryStatus.READ: 6,
}


def status_advances(current: DeliveryStatus, new: DeliveryStatus) -> bool:
    """True when ``new`` may replace ``current``."""
    return STATUS_RANK[new] > STATUS_RANK[current]


class Role(enum.StrEnum):
    ADMIN = "admin"
    AGENT = "agent"


class Presence(enum.StrEnum):
    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_unicode(text: str) -> bool:
    """Whether ``text`` is text at all: JSON's ``\\ud800``-style escapes can
    make a lone surrogate, which no database, encoder or browser takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def without_nul(value: Any) -> Any:
    """``value`` with every NUL character dropped, in nested dicts and lists
    too. PostgreSQL refuses it in text and in JSON, and no customer or
    provider means one: dropped, what they sent is stored rather than failing."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(without_nul(v) for v in value)
    return value


class Attachment(_Model):
    """A file that came with, or goes out with, a message. ``url`` points at the
    provider's copy or at our attachment store."""

    url: str = Field(min_length=1, max_length=4096)
    content_type: str = Field(default="application/octet-stream", max_length=255)
    filename: str | None = Field(default=None, max_length=1024)
    # The largest integer a browser (the inbox, the widget) reads exactly.
    size: int | None = Field(default=None, ge=0, le=2**53 - 1)

    # Before the length checks: a value that is nothing but NUL is missing.
    _without_nul = field_validator("url", "content_type", "filename", mode="before")(without_nul)


class QuickReply(_Model):
    """A button the customer can press instead of typing: the bot's clarifying
    choices, a menu. Every channel renders the same list its own way (Telegram
    inline keyboard, web chat buttons, numbered options on SMS) and reports the
    choice back as :attr:`InboundMessage.quick_reply`."""

    id: str = Field(min_length=1, max_length=64)
    title: str = Field(min_length=1, max_length=200)


class InboundMessage(_Model):
    """One message a customer sent, normalized from any channel.

    ``external_id`` is the provider's id (Twilio MessageSid, Message-ID, Telegram
    update, web chat visitor + client id): storage keeps one message per
    (channel, external_id), so a retried webhook never makes a second message.
    ``inbox`` names the configured inbox (a number, a mailbox, a bot) it arrived at.
    """

    channel: Channel
    inbox: str = Field(min_length=1, max_length=200)
    external_id: str = Field(min_length=1, max_length=512)
    sender: str = Field(min_length=1, max_length=512)
    sender_name: str | None = Field(default=None, max_length=512)
    body: str = Field(default="", max_length=100_000)
    attachments: tuple[Attachment, ...] = ()
    subject: str | None = Field(default=None, max_length=1000)
    received_at: UTCDateTime = Field(default_factory=utcnow)
    #: The id of the :class:`QuickReply` the customer pressed, when they did.
    quick_reply: str | None = Field(default=None, max_length=64)
    extras: dict[str, Any] = Field(default_factory=dict)

    # Before the length checks: a value that is nothing but NUL is missing.
    _without_nul = field_validator(
        "inbox", "external_id", "sender", "sender_name", "body", "subject", "quick_reply", "extras", mode="before"
    )(without_nul)


class OutboundMessage(_Model):
    """One message we send to a customer. ``message_id`` is our stored message;
    ``recipient`` the channel address (phone, email, chat id, visitor id)."""

    message_id: int
    ticket_id: int
    channel: Channel
    inbox: str
    recipient: str
    body: str = Field(max_length=100_000)
    author: Author
    attachments: tuple[Attachment, ...] = ()
    subject: str | None = None
    quick_replies: tuple[QuickReply, ...] = ()
    extras: dict[str, Any] = Field(default_factory=dict)


class SendResult(_Model):
    """What a channel's ``send`` reports. A failure is a status with a reason,
    never a silent ``False``; ``retryable`` failures are retried with backoff."""

    status: DeliveryStatus
    external_id: str | None = None
    reason: str | None = None
    retryable: bool = False
    retry_after: float | None = Field(default=None, ge=0)
    extras: dict[str, Any] = Field(default_factory=dict)


class DeliveryReceipt(_Model):
    """A provider's report about a message we sent earlier."""

    channel: Channel
    external_id: str = Field(min_length=1)
    status: DeliveryStatus
    reason: str | None = None
    error_code: str | None = None
    at: UTCDateTime = Field(default_factory=utcnow)


class TicketEventKind(enum.StrEnum):
    CREATED = "ticket.created"
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_CREATED = "message.created"
    MESSAGE_STATUS = "message.status"
    ASSIGNED = "ticket.assigned"
    STATUS_CHANGED = "ticket.status_changed"
    CONTACT_MERGED = "contact.merged"
    HANDOFF = "ticket.handoff"
    ROUTED = "ticket.routed"
    PRIORITY_CHANGED = "ticket.priority_changed"
    LABELS_CHANGED = "ticket.labels_changed"
    SLA_WARNING = "sla.warning"
    SLA_BREACH = "sla.breach"
    CALL = "call"
    # An inbound message the customer edited (Telegram): the agents' inbox updates it.
    MESSAGE_UPDATED = "message.updated"
    # A contact's identity joined another contact or gained an address (a shared phone).
    IDENTITY_LINKED = "contact.identity_linked"
    # Where the customer came from (a Telegram /start deep link, a campaign).
    CONTACT_SOURCE = "contact.source"
    # The customer cannot be reached on a channel (blocked the bot), or can again.
    IDENTITY_REACHABILITY = "contact.reachability"


class TicketEvent(_Model):
    """A fact about a ticket: what happened, to which ticket and contact, by whom.
    These travel on the stream and are what the agents' inbox receives live."""

    kind: TicketEventKind
    ticket_id: int
    contact_id: int
    actor: str = "system"  # "agent:<id>", "bot", "system", "contact"
    data: dict[str, Any] = Field(default_factory=dict)
    at: UTCDateTime = Field(default_factory=utcnow)
