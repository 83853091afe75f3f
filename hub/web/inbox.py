"""The agents' inbox: its static pages (``/inbox/``) and the API endpoints it
needs beyond the core ones (views with unread counts, team queues, read
markers, priority, canned responses, presence, the configured inboxes).
Thin handlers: authenticate, validate, call an action or a query, answer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import Field
from sqlalchemy import select

from hub.actions import actor_of, check_ticket
from hub.app import HUB
from hub.core import Presence, Priority, TicketStatus
from hub.errors import BadRequest, Forbidden, NotFound
from hub.inbox import (
    check_canned,
    do_delete_canned,
    do_mark_read,
    do_save_canned,
    do_set_priority,
)
from hub.web.api import API, _csv, _ticket_out, channel_filter, current_agent, int_param, page_limit
from hub.web.registry import ROUTES, parse_body
from hub.web.schemas import TicketListItem, TicketOut, _In, _Out
from storage import inbox as inbox_queries
from storage import queries
from storage.models import Inbox

STATIC = Path(__file__).resolve().parent.parent / "static" / "inbox"
ASSET = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg|html)\Z")
CONTENT_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "html": "text/html; charset=utf-8",
}
STATUSES = {s.value for s in TicketStatus}
PRIORITIES = {p.value for p in Priority}


# --- bodies ---------------------------------------------------------------------------


class InboxTicketItem(TicketListItem):
    unread: int = Field(description="customer messages in this ticket the agent has not read")


class InboxTicketList(_Out):
    items: list[InboxTicketItem]
    next_cursor: str | None


class ViewCount(_Out):
    total: int
    unread: int = Field(description="tickets of the view with customer messages the agent has not read")


class TeamQueue(_Out):
    team_id: int
    name: str
    length: int = Field(description="open tickets of the team that nobody holds yet")
    oldest_waiting_since: str | None


class InboxCounts(_Out):
    views: dict[str, ViewCount | None] = Field(description="mine, unassigned, teams, all (null for non-admins)")
    queues: list[TeamQueue]


class ReadIn(_In):
    message_id: int | None = Field(
        default=None, ge=0, le=queries.MAX_ID, description="read up to this message (default: the newest)"
    )


class ReadOut(_Out):
    ticket_id: int
    last_read_message_id: int
    unread: int


class PriorityIn(_In):
    priority: Priority


class CannedIn(_In):
    short_code: str = Field(min_length=1, max_length=65, description="one word, typed after '/' in the reply box")
    body: str = Field(min_length=1, max_length=20_000)


class CannedOut(_Out):
    id: int
    short_code: str
    body: str
    created_by_id: int | None
    created_at: str
    updated_at: str


class CannedList(_Out):
    items: list[CannedOut]
    next_cursor: str | None = None


class PresenceIn(_In):
    presence: Presence


class InboxOut(_Out):
    id: int
    key: str
    channel: str
    name: str


class InboxList(_Out):
    items: list[InboxOut]
    next_cursor: str | None = None


# --- the pages --------------------------------------------------------------------------


def _security_headers(request: web.Request, *, page: bool) -> dict[str, str]:
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Revalidated on every load (ETag / Last-Modified): a new release shows at once.
        "Cache-Control": "no-cache",
    }
    if page:
        # Nothing but our own files runs or loads: customer text that slipped into
        # markup still could not execute, and attachments from other hosts are
        # never fetched (no tracking pixels in emails).
        sockets = ""
        if re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+", request.host or ""):
            sockets = f" ws://{request.host} wss://{request.host}"
        headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            f"media-src 'self' blob:; connect-src 'self'{sockets}; font-src 'self'; manifest-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
        )
        headers["X-Frame-Options"] = "DENY"
    return headers


@ROUTES.route("GET", "/inbox", summary="Redirects to /inbox/", tag="inbox", auth=False, content_type="text/html")
async def inbox_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/inbox/")


@ROUTES.route(
    "GET",
    "/inbox/",
    summary="The agents' shared inbox (log in there)",
    tag="inbox",
    auth=False,
    content_type="text/html",
)
async def inbox_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers=_security_headers(request, page=True))


@ROUTES.route(
    "GET",
    "/inbox/{name}",
    summary="A file of the inbox's interface (scripts, styles)",
    tag="inbox",
    auth=False,
    content_type="text/javascript",
    errors=(404,),
)
async def inbox_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    match = ASSET.match(name)
    path = STATIC / name
    if match is None or not path.is_file():
        raise NotFound(f"no such file: /inbox/{name}")
    headers = _security_headers(request, page=match.group(1) == "html")
    headers["Content-Type"] = CONTENT_TYPES[match.group(1)]
    return web.FileResponse(path, headers=headers)


# --- views, counts, queues ---------------------------------------------------------------


def _statuses(request: web.Request, default: str = "open") -> list[str]:
    statuses = _csv(request.query.get("status", default))
    for s in statuses:
        if s not in STATUSES:
            raise BadRequest(f"status {s!r} is not one of open, pending, snoozed, resolved")
    return statuses


@ROUTES.route(
    "GET",
    f"{API}/inbox/tickets",
    summary="The inbox's ticket list: a view (mine, unassigned, teams, all) with filters and unread counts",
    tag="inbox",
    response=InboxTicketList,
    query={
        "view": "mine (default), unassigned, teams (the agent's teams), all (admins)",
        "status": "comma-separated: open, pending, snoozed, resolved (default: open; empty: any)",
        "channel": "comma-separated channels (webchat, sms, voice, email, telegram)",
        "label": "a label",
        "priority": "comma-separated: low, normal, high, urgent",
        "q": "text in the subject, the contact's name or any message",
        "cursor": "next_cursor of the previous page",
        "limit": "page size, 1 to 200 (default 50)",
    },
    errors=(400, 403),
)
async def inbox_tickets(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    q = request.query
    view = q.get("view") or "mine"
    if view not in inbox_queries.VIEWS:
        raise BadRequest(f"view {view!r} is not one of {', '.join(inbox_queries.VIEWS)}")
    if view == "all" and agent.role != "admin":
        raise Forbidden("the 'all' view is for admins; use mine, unassigned or teams")
    priorities = _csv(q.get("priority"))
    for p in priorities:
        if p not in PRIORITIES:
            raise BadRequest(f"priority {p!r} is not one of low, normal, high, urgent")
    f = queries.TicketFilter(
        status=_statuses(request),
        channel=channel_filter(request),
        label=q.get("label") or None,
        priority=priorities,
        text=(q.get("q") or "").strip() or None,
    )
    limit = page_limit(request)
    async with hub.db.read() as session:
        who = await inbox_queries.viewer(session, agent.id, agent.role)
        if view == "mine":
            f.assignee_id = agent.id
        elif view == "unassigned":
            f.unassigned = True
        elif view == "teams":
            f.team_ids = list(who.team_ids)
        try:
            items, next_cursor = await queries.list_tickets(session, f, cursor=q.get("cursor"), limit=limit)
        except queries.BadCursor as exc:
            raise BadRequest(str(exc)) from exc
        unread = await inbox_queries.unread_counts(session, agent.id, [t["id"] for t in items])
    for item in items:
        item["unread"] = unread.get(item["id"], 0)
    return web.json_response({"items": items, "next_cursor": next_cursor})


@ROUTES.route(
    "GET",
    f"{API}/inbox/counts",
    summary="How many tickets each view holds and how many are unread; each team's queue",
    tag="inbox",
    response=InboxCounts,
    query={"status": "comma-separated statuses counted in the views (default: open)"},
    errors=(400,),
)
async def inbox_counts(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    statuses = _statuses(request) or sorted(STATUSES)
    async with hub.db.read() as session:
        who = await inbox_queries.viewer(session, agent.id, agent.role)
        views = await inbox_queries.view_counts(session, who, statuses)
        queues = await inbox_queries.team_queues(session)
    return web.json_response({"views": views, "queues": queues})


# --- per ticket ------------------------------------------------------------------------


@ROUTES.route(
    "POST",
    f"{API}/tickets/{{id}}/read",
    summary="Mark the ticket read by this agent (up to a message, default the newest)",
    tag="inbox",
    body=ReadIn,
    response=ReadOut,
    errors=(404,),
)
async def mark_read(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    ticket_id = int_param(request, "id")
    body = await parse_body(request, ReadIn)
    async with hub.db.write() as session:
        ticket = await check_ticket(session, ticket_id)
        last = await do_mark_read(session, agent, ticket, body.message_id)
        unread = (await inbox_queries.unread_counts(session, agent.id, [ticket_id])).get(ticket_id, 0)
    return web.json_response({"ticket_id": ticket_id, "last_read_message_id": last, "unread": unread})


@ROUTES.route(
    "POST",
    f"{API}/tickets/{{id}}/priority",
    summary="Set the ticket's priority: low, normal, high, urgent",
    tag="tickets",
    body=PriorityIn,
    response=TicketOut,
    errors=(404,),
)
async def set_priority(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    ticket_id = int_param(request, "id")
    body = await parse_body(request, PriorityIn)
    async with hub.db.write() as session:
        ticket = await check_ticket(session, ticket_id, lock=True)
        await do_set_priority(session, ticket, body.priority, actor=actor_of(agent))
    return web.json_response(await _ticket_out(request, ticket_id))


# --- canned responses -------------------------------------------------------------------------


@ROUTES.route(
    "GET",
    f"{API}/canned_responses",
    summary="Canned responses, by short code",
    tag="inbox",
    response=CannedList,
    query={"q": "text in the short code or the body"},
)
async def list_canned(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    async with hub.db.read() as session:
        items = await inbox_queries.list_canned(session, (request.query.get("q") or "").strip() or None)
    return web.json_response({"items": items, "next_cursor": None})


@ROUTES.route(
    "POST",
    f"{API}/canned_responses",
    summary="Create a canned response",
    tag="inbox",
    body=CannedIn,
    response=CannedOut,
    status=201,
    errors=(409,),
)
async def create_canned(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    body = await parse_body(request, CannedIn)
    async with hub.db.write() as session:
        canned = await do_save_canned(session, None, short_code=body.short_code, body=body.body, agent=agent)
        view = inbox_queries.canned_view(canned)
    return web.json_response(view, status=201)


@ROUTES.route(
    "PUT",
    f"{API}/canned_responses/{{id}}",
    summary="Change a canned response (its author or an admin)",
    tag="inbox",
    body=CannedIn,
    response=CannedOut,
    errors=(403, 404, 409),
)
async def update_canned(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    canned_id = int_param(request, "id")
    body = await parse_body(request, CannedIn)
    async with hub.db.write() as session:
        canned = await check_canned(session, canned_id)
        await do_save_canned(session, canned, short_code=body.short_code, body=body.body, agent=agent)
        view = inbox_queries.canned_view(canned)
    return web.json_response(view)


@ROUTES.route(
    "DELETE",
    f"{API}/canned_responses/{{id}}",
    summary="Delete a canned response (its author or an admin)",
    tag="inbox",
    status=204,
    errors=(403, 404),
)
async def delete_canned(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    canned_id = int_param(request, "id")
    async with hub.db.write() as session:
        canned = await check_canned(session, canned_id)
        await do_delete_canned(session, canned, agent=agent)
    return web.Response(status=204)


# --- the agent and the hub ---------------------------------------------------------------------


@ROUTES.route(
    "GET", f"{API}/inboxes", summary="The configured inboxes (where messages arrive)", tag="inbox", response=InboxList
)
async def list_inboxes(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    async with hub.db.read() as session:
        rows = (await session.scalars(select(Inbox).order_by(Inbox.id))).all()
    items: list[dict[str, Any]] = [{"id": i.id, "key": i.key, "channel": i.channel, "name": i.name} for i in rows]
    return web.json_response({"items": items, "next_cursor": None})
