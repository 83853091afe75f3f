"""The JSON shapes of stored things, shared by the REST API, the live events and
the stream payloads, so an agent sees the same message whichever way it came."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from storage.models import Agent, Contact, Identity, Message, Team, Ticket


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def message_view(m: Message, inbox_key: str | None = None) -> dict[str, Any]:
    return message_values_view({f: getattr(m, f) for f in _MESSAGE_FIELDS}, inbox_key)


_MESSAGE_FIELDS = (
    "id", "ticket_id", "contact_id", "channel", "direction", "author", "author_id", "body", "subject",
    "attachments", "private", "external_id", "status", "status_reason", "created_at", "sent_at", "delivered_at",
    "extras",
)  # fmt: skip


def message_values_view(v: Mapping[str, Any], inbox_key: str | None = None) -> dict[str, Any]:
    """The same view from a row's values, for ingest, which writes rows with
    Core statements and would otherwise build an ORM object per message only
    to read it back."""
    extras = v.get("extras") or {}
    return {
        "id": v["id"],
        "ticket_id": v["ticket_id"],
        "contact_id": v["contact_id"],
        "inbox": inbox_key,
        "channel": v["channel"],
        "direction": v["direction"],
        "author": v["author"],
        "author_id": v.get("author_id"),
        "body": v["body"],
        "subject": v.get("subject"),
        "attachments": list(v.get("attachments") or []),
        # Buttons offered with an outbound message, and the one a customer pressed.
        "quick_replies": list(extras.get("quick_replies") or []),
        "quick_reply": extras.get("quick_reply"),
        # Earlier versions of a message the customer edited, oldest first.
        "edits": list(extras.get("edits") or []),
        # Files that came with the message but were not kept, each with the reason.
        "attachment_errors": list(extras.get("attachment_errors") or []),
        # Why an inbound message was sent by a machine (out-of-office, list,
        # bulk): the bot and routing do not answer those.
        "auto_reply": extras.get("auto_reply"),
        # Email only: headers, the quoted history and signature kept apart from
        # the body, links to the sanitized HTML and the raw original.
        "email": extras.get("email"),
        # Telegram only: what the text alone does not say.
        "telegram": _telegram_view(v["channel"], extras, v.get("external_id")),
        "private": bool(v.get("private")),
        "external_id": v.get("external_id"),
        "status": v["status"],
        "status_reason": v.get("status_reason"),
        "created_at": iso(v["created_at"]),
        "sent_at": iso(v.get("sent_at")),
        "delivered_at": iso(v.get("delivered_at")),
    }


def _telegram_view(channel: str, extras: Mapping[str, Any], external_id: str | None) -> dict[str, Any] | None:
    """Forwarded or not, the message it answers (as the ``external_id`` the hub
    stores it under: Telegram numbers messages per chat, in both directions),
    a shared location or contact card."""
    if channel != "telegram":
        return None
    reply_to: str | None = None
    answered, chat = extras.get("reply_to_message_id"), extras.get("chat_id")
    if answered is not None and chat is not None and external_id and external_id.count(":") >= 2:
        reply_to = f"{external_id.rsplit(':', 2)[0]}:{chat}:{answered}"
    return {
        "forwarded": bool(extras.get("forwarded")),
        "reply_to_external_id": reply_to,
        "location": extras.get("location"),
        "contact": extras.get("contact"),
    }


def ticket_view(t: Ticket, labels: list[str] | None = None) -> dict[str, Any]:
    return ticket_values_view({f: getattr(t, f) for f in TICKET_FIELDS}, labels)


# The columns the ticket view shows (ingest reads only these, and its own keys).
TICKET_FIELDS = (
    "id", "status", "priority", "channel", "inbox_id", "contact_id", "assignee_id", "team_id", "subject",
    "created_at", "waiting_since", "first_response_at", "last_message_at", "snoozed_until", "resolved_at",
    "queued_at", "sla_policy", "first_response_due_at", "next_response_due_at", "resolution_due_at",
)  # fmt: skip


def ticket_values_view(v: Mapping[str, Any], labels: list[str] | None = None) -> dict[str, Any]:
    """The ticket view from a row's values (ingest reads tickets as plain rows;
    an ORM object's loaded attributes work too)."""
    return {
        "id": v["id"],
        "status": v["status"],
        "priority": v["priority"],
        "channel": v["channel"],
        "inbox_id": v["inbox_id"],
        "contact_id": v["contact_id"],
        "assignee_id": v["assignee_id"],
        "team_id": v["team_id"],
        "subject": v["subject"],
        "labels": sorted(labels or []),
        "created_at": iso(v["created_at"]),
        "waiting_since": iso(v["waiting_since"]),
        "first_response_at": iso(v["first_response_at"]),
        "last_message_at": iso(v["last_message_at"]),
        "snoozed_until": iso(v["snoozed_until"]),
        "resolved_at": iso(v["resolved_at"]),
        # Routing: waiting in the team's queue since; the SLA policy and due times.
        "queued_at": iso(v["queued_at"]),
        "sla_policy": v["sla_policy"],
        "first_response_due_at": iso(v["first_response_due_at"]),
        "next_response_due_at": iso(v["next_response_due_at"]),
        "resolution_due_at": iso(v["resolution_due_at"]),
    }


def identity_view(i: Identity) -> dict[str, Any]:
    return {
        "channel": i.channel,
        "address": i.address,
        "display_name": i.display_name,
        "created_at": iso(i.created_at),
        "unreachable_at": iso(i.unreachable_at),
        "unreachable_reason": i.unreachable_reason,
    }


def contact_view(
    c: Contact, identities: list[Identity] | None = None, last_seen_at: datetime | None = None
) -> dict[str, Any]:
    """``last_seen_at``: when the customer last wrote (from their messages, not
    kept on the contact, so ingest does not rewrite the contact every time)."""
    view: dict[str, Any] = {
        "id": c.id,
        "name": c.name,
        "attributes": dict(c.attributes or {}),
        "tags": list(c.tags or []),
        "lifecycle_stage": c.lifecycle_stage,
        "lead_score": c.lead_score,
        "segment": c.segment,
        "merged_into_id": c.merged_into_id,
        "created_at": iso(c.created_at),
        "last_seen_at": iso(last_seen_at),
    }
    if identities is not None:
        view["identities"] = [identity_view(i) for i in identities]
    return view


def agent_view(a: Agent, team_ids: list[int] | None = None) -> dict[str, Any]:
    return {
        "id": a.id,
        "email": a.email,
        "name": a.name,
        "role": a.role,
        "skills": list(a.skills or []),
        "languages": list(a.languages or []),
        "capacity": dict(a.capacity or {}),
        "presence": a.presence,
        "active": a.active,
        "team_ids": sorted(team_ids or []),
        "phone": a.phone,
    }


def team_view(t: Team) -> dict[str, Any]:
    return {"id": t.id, "name": t.name}
