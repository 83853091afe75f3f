"""The web chat widget's side of the hub beyond plain messages: its settings
and the agents' availability in the session frame, the pre-chat / offline form
(``identify`` frames), and an agent's typing shown to the visitor."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from channels.base import InvalidPayload
from channels.webchat import InvalidField, parse_identify, visitor_channel
from hub.app import Hub
from hub.core import Channel, IdentityKind
from hub.inbox import agents_available, do_identify_visitor
from hub.web import chat, events
from hub.web.registry import ROUTES
from hub.workers import AGENTS_CHANNEL
from storage import queries
from storage.models import Agent, Contact, Identity, Ticket


def widget_settings(hub: Hub) -> dict[str, Any]:
    w = hub.config.widget
    return {
        "title": {"en": w.title, "fa": w.title_fa},
        "greeting": {"en": w.greeting, "fa": w.greeting_fa},
        "color": w.color,
        "prechat": {"enabled": w.prechat.enabled, "fields": w.prechat.fields, "required": w.prechat.required},
        "offline_form": w.offline_form,
        # Where an agent's reply to the offline form can go: the widget
        # promises one there only (a hub without email or SMS has neither).
        "offline_reply": [c.value for c in (Channel.EMAIL, Channel.SMS) if c in hub.channels],
        "max_chars": hub.config.webchat.max_message_chars,
    }


async def _known(hub: Hub, contact_id: int | None) -> list[str]:
    """Which of name, email, phone the visitor has told us (so the widget does
    not ask again). Only which, never the values."""
    if contact_id is None:
        return []
    async with hub.db.read() as session:
        contact = await session.get(Contact, contact_id)
        kinds = set((await session.scalars(select(Identity.channel).where(Identity.contact_id == contact_id))).all())
    attributes = (contact.attributes if contact else None) or {}
    known = []
    if contact is not None and contact.name:
        known.append("name")
    if IdentityKind.EMAIL.value in kinds or attributes.get("email"):
        known.append("email")
    if IdentityKind.PHONE.value in kinds or attributes.get("phone"):
        known.append("phone")
    return known


async def session_extra(hub: Hub, visitor_id: str, contact_id: int | None) -> dict[str, Any]:
    async with hub.db.read() as session:
        available = await agents_available(session, hub.config.webchat.inbox)
    return {"widget": widget_settings(hub), "available": available, "known": await _known(hub, contact_id)}


async def identify(hub: Hub, ws: Any, visitor_id: str, frame: dict[str, Any], state: dict[str, Any]) -> None:
    """``{"type": "identify", "name", "email", "phone", "offline"}``: stored on
    the visitor's contact, answered ``{"type": "identified", "known": [...]}``.
    A bad field is answered with an error naming it, and nothing is stored."""
    try:
        details = parse_identify(frame, phone_region=hub.config.widget.phone_region)
    except InvalidField as exc:
        await ws.send_json({"type": "error", "code": "invalid_field", "field": exc.field, "message": str(exc)})
        return
    async with hub.db.write() as session:
        contact_id = await do_identify_visitor(session, visitor_id, details)
    state["contact_id"] = contact_id
    await ws.send_json({"type": "identified", "known": await _known(hub, contact_id)})


async def agent_typing(hub: Hub, agent: Agent, frame: dict[str, Any]) -> dict[str, Any] | None:
    """An agent writes a reply on a ticket: the other agents see it (so two do
    not answer at once) and, on web chat, so does the visitor."""
    ticket_id = queries.json_id(frame.get("ticket_id"))
    typing = frame.get("typing", True)
    if ticket_id is None or not isinstance(typing, bool):
        raise InvalidPayload("typing frame needs an integer 'ticket_id' (and 'typing': true or false)")
    async with hub.db.read() as session:
        ticket = await session.get(Ticket, ticket_id)
        if ticket is None:
            raise InvalidPayload(f"ticket {ticket_id} does not exist")
        visitors: list[str] = []
        if ticket.channel == Channel.WEBCHAT.value:
            visitors = list(
                (
                    await session.scalars(
                        select(Identity.address).where(
                            Identity.contact_id == ticket.contact_id, Identity.channel == IdentityKind.WEBCHAT.value
                        )
                    )
                ).all()
            )
    await hub.live.publish(
        AGENTS_CHANNEL,
        {
            "type": "typing",
            "ticket_id": ticket.id,
            "contact_id": ticket.contact_id,
            "author": "agent",
            "agent_id": agent.id,
            "typing": typing,
        },
    )
    # The visitor sees a first name at most, never the agent's id or email.
    for visitor in visitors:
        await hub.live.publish(
            visitor_channel(visitor),
            {
                "type": "typing",
                "author": "agent",
                "name": agent.name.split()[0] if agent.name else None,
                "typing": typing,
            },
        )
    return None


chat.VISITOR_FRAMES["identify"] = identify
chat.SESSION_EXTRAS.append(session_extra)
events.AGENT_FRAMES["typing"] = agent_typing


@ROUTES.route(
    "GET",
    "/demo/fa",
    summary="The demo page in Persian (right-to-left), with the widget on it",
    tag="webchat",
    auth=False,
    content_type="text/html",
)
async def demo_page_fa(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(chat.STATIC / "demo-fa.html", headers={"Content-Type": "text/html; charset=utf-8"})
