"""Request and response bodies of the public API (documented in OpenAPI; the
tests validate real responses against the response models)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from hub.core import Attachment, Channel, Role, UTCDateTime
from routing.settings import Capacity, Language, Skill, TeamName
from storage.queries import CONTACT_TICKETS, MAX_ID, NEWEST_MESSAGES

# A larger id than the database holds must be refused here, naming the
# field, rather than fail there as a server error. Strict: lax mode reads
# true as 1 and "2" as 2, so a buggy client's boolean would merge (for good)
# or assign whatever has id 1.
Id = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class LoginIn(_In):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class TokenOut(_Out):
    token: str
    agent: AgentOut


class AgentIn(_In):
    email: str = Field(min_length=3, max_length=320)
    name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=8, max_length=1024)
    role: Role = Role.AGENT
    teams: list[TeamName] = Field(
        default_factory=list,
        max_length=100,
        description="team names; a team that does not exist is refused unless create_teams",
    )
    create_teams: bool = Field(default=False, description="create the teams in `teams` that do not exist yet")
    # Bounded as PATCH /agents/{id} bounds them (hub/web/routing.py).
    skills: list[Skill] = Field(default_factory=list, max_length=100)
    languages: list[Language] = Field(default_factory=list, max_length=50, description="language codes, e.g. fa, en")
    capacity: dict[Channel, Capacity] = Field(default_factory=dict)
    phone: str | None = Field(default=None, max_length=40, description="where calls for this agent ring")


class MeIn(_In):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    password: str | None = Field(
        default=None,
        min_length=8,
        max_length=1024,
        description="your new password; your other sessions are signed out (this one stays)",
    )
    current_password: str | None = Field(default=None, max_length=1024, description="needed to set a new password")


class AgentOut(_Out):
    id: int
    email: str
    name: str
    role: Role
    skills: list[str]
    languages: list[str]
    capacity: dict[str, int]
    presence: str
    active: bool
    team_ids: list[int]
    phone: str | None = None


class AgentList(_Out):
    items: list[AgentOut]
    next_cursor: str | None = None


class TeamOut(_Out):
    id: int
    name: str


class TeamList(_Out):
    items: list[TeamOut]
    next_cursor: str | None = None


class AttachmentIn(Attachment):
    """An attachment of a reply: the object ``POST /api/v1/attachments``
    returned. ``url`` must be one of the hub's stored files; the reply keeps
    the type, size and name the store has for it, whatever else is sent.
    The core type's limits apply and none looser (``size`` at most
    2**53 - 1)."""


class MessageIn(_In):
    body: str = Field(default="", max_length=100_000)
    private: bool = False
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=20)
    channel: Channel | None = Field(
        default=None, description="reply on another channel the contact has (default: the ticket's channel)"
    )


class AssignIn(_In):
    agent_id: Id | None = Field(default=None, description="the agent (null: nobody); left out: unchanged")
    team_id: Id | None = Field(default=None, description="the team (null: none); left out: unchanged")
    expected_assignee_id: Id | None = Field(
        default=None,
        description="who holds the ticket now as the caller saw it (null: nobody); when given and someone "
        "else holds it, the request is refused with 409 naming them: two agents taking one ticket at once "
        "do not both hear it is theirs",
    )


class StatusIn(_In):
    status: Literal["open", "pending", "snoozed", "resolved"]
    snoozed_until: UTCDateTime | None = None


class LabelsIn(_In):
    labels: list[str] = Field(max_length=50)


class MergeIn(_In):
    source_id: Id = Field(description="the contact folded into this one; it keeps a pointer to this contact")


class MessageOut(_Out):
    id: int
    ticket_id: int
    contact_id: int
    inbox: str | None
    channel: str
    direction: Literal["in", "out"]
    author: Literal["contact", "agent", "bot", "system"]
    author_id: int | None
    body: str
    subject: str | None
    attachments: list[dict[str, Any]]
    quick_replies: list[dict[str, Any]] = Field(description="buttons offered with this message: {id, title}")
    quick_reply: str | None = Field(description="the id of the button the customer pressed")
    edits: list[dict[str, Any]] = Field(
        default_factory=list, description="earlier versions of an edited inbound message: {body, replaced_at}"
    )
    attachment_errors: list[dict[str, Any]] = Field(
        default_factory=list, description="files that came with the message but were not kept: {filename, reason}"
    )
    auto_reply: str | None = Field(
        default=None,
        description="why an inbound message was sent by a machine (out-of-office, mailing list, bulk): "
        "stored, never answered by the bot",
    )
    email: dict[str, Any] | None = Field(
        default=None,
        description="email messages: from, to, cc, reply_to, message_id, in_reply_to, references, date, "
        "quoted (the history below the new text), signature, original_url (the raw message), "
        "html_url (the sanitized HTML part), threaded_by, notes",
    )
    telegram: dict[str, Any] | None = Field(
        default=None,
        description="Telegram messages: forwarded, reply_to_external_id (the message it answers), "
        "location and contact (a shared location or contact card); null on other channels",
    )
    private: bool
    external_id: str | None
    status: str
    status_reason: str | None
    created_at: str
    sent_at: str | None
    delivered_at: str | None


class TicketOut(_Out):
    id: int
    status: Literal["open", "pending", "snoozed", "resolved"]
    priority: str
    channel: str
    inbox_id: int
    contact_id: int
    assignee_id: int | None
    team_id: int | None
    subject: str | None
    labels: list[str]
    created_at: str
    waiting_since: str | None
    first_response_at: str | None
    last_message_at: str
    snoozed_until: str | None
    resolved_at: str | None
    queued_at: str | None = Field(description="in its team's queue, waiting for an agent, since; null when not queued")
    sla_policy: str | None = Field(description="the name of the SLA policy the ticket is held to; null: none")
    first_response_due_at: str | None = Field(description="the SLA's deadline for the first reply; null: none")
    next_response_due_at: str | None = Field(
        description="the SLA's deadline for replying to the customer's waiting message; null: none"
    )
    resolution_due_at: str | None = Field(description="the SLA's deadline for resolving the ticket; null: none")
    inbox: str | None = Field(
        default=None,
        description="the key of the ticket's inbox; on one ticket (GET /tickets/{id}, assign, status, labels, "
        "priority), not on lists",
    )
    contact_name: str | None = Field(
        default=None, description="the contact's name; on one ticket and on ticket lists, not on a contact's tickets"
    )


class TicketListItem(TicketOut):
    last_message: dict[str, Any] | None = None


class TicketList(_Out):
    items: list[TicketListItem]
    next_cursor: str | None


class TicketDetail(TicketOut):
    inbox: str | None
    contact_name: str | None
    messages: list[MessageOut] = Field(description=f"the newest {NEWEST_MESSAGES} messages and notes, oldest first")
    messages_before: int | None = Field(
        description="while older messages exist, the id of the oldest one in messages: pass it as before "
        "to GET /api/v1/tickets/{id}/messages for the page before it; null when messages starts the conversation"
    )


class TicketMessages(_Out):
    items: list[MessageOut] = Field(description="messages and private notes, oldest first")
    next_cursor: str | None = Field(description="the page before this one (pass as cursor); null at the first message")


class IdentityOut(_Out):
    channel: str
    address: str
    display_name: str | None
    created_at: str
    unreachable_at: str | None = Field(
        default=None, description="set while the channel refuses delivery to this address (blocked the bot)"
    )
    unreachable_reason: str | None = None


class ContactOut(_Out):
    id: int
    name: str | None
    attributes: dict[str, Any]
    tags: list[str]
    lifecycle_stage: str | None
    lead_score: int
    segment: str | None
    merged_into_id: int | None
    created_at: str
    last_seen_at: str | None
    identities: list[IdentityOut]


class ContactDetail(ContactOut):
    tickets: list[TicketOut] = Field(description=f"the newest {CONTACT_TICKETS} tickets, newest activity first")
    tickets_total: int = Field(description="how many tickets the contact has (more than tickets holds: page them)")
    tickets_next_cursor: str | None = Field(
        description="while the contact has more tickets than tickets holds: pass as cursor to "
        "GET /api/v1/tickets?contact={id} for the ones after them; null when tickets holds them all"
    )
    resolved_from_id: int | None = Field(
        default=None,
        description="the id asked for when it was merged away: this is the contact it lives on in "
        "(its merged_into_id followed to the end); null when the id asked for is this contact",
    )


class ContactPatchIn(_In):
    """An agent's edit of a contact; a field left out stays as it is."""

    name: str | None = Field(default=None, max_length=512, description="null clears it")
    attributes: dict[str, Any] = Field(
        default_factory=dict,
        max_length=100,
        description="merged into the contact's attributes (JSON merge patch): a key set to null is removed; "
        "values are text (up to 500 characters), numbers or true/false; sms_consent* only through "
        "PUT /api/v1/contacts/{id}/sms_consent; language is stored as its code, timezone must be an IANA zone",
    )
    tags: list[str] = Field(
        default_factory=list,
        max_length=50,
        description="replaces the tags: cleaned as labels are (NFC, spaces, trimmed), one per spelling up to case",
    )
    lifecycle_stage: str | None = Field(
        default=None,
        max_length=40,
        description="lead, marketing_qualified, sales_qualified or customer; null clears it",
    )
    add_email: str | None = Field(
        default=None, max_length=320, description="adds this email address as an identity (stored lower-case)"
    )
    add_phone: str | None = Field(
        default=None,
        max_length=64,
        description="adds this phone number as an identity (E.164; without +code read in phone.default_region)",
    )


class ContactList(_Out):
    items: list[ContactOut]
    next_cursor: str | None


class TimelineItem(_Out):
    type: Literal["message", "event"]
    at: str
    message: MessageOut | None = None
    event: dict[str, Any] | None = None


class Timeline(_Out):
    items: list[TimelineItem]
    next_cursor: str | None


class ContactTimeline(Timeline):
    contact_id: int = Field(description="whose timeline this is (the surviving contact of a merged-away id)")
    resolved_from_id: int | None = Field(
        default=None, description="the id asked for when it was merged away into contact_id; else null"
    )


class Health(_Out):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


TokenOut.model_rebuild()


class AttachmentOut(_Out):
    url: str = Field(description="where the file is served; pass this object in a reply's attachments")
    content_type: str
    filename: str | None = None
    size: int | None = None
