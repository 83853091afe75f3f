"""The agents' REST API (``/api/v1``). Thin handlers: authenticate, validate,
call an action or a query, answer."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.actions import (
    actor_of,
    check_channel_takes_files,
    check_login,
    check_reply_attachments,
    check_ticket,
    check_token,
    do_assign,
    do_create_agent,
    do_issue_token,
    do_logout,
    do_post_message,
    do_set_labels,
    do_set_status,
)
from hub.app import HUB
from hub.core import Author, Channel, Role, TicketStatus
from hub.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from hub.router import check_team_names, do_update_agent_account
from hub.security import client_address, hash_password, token_digest, verify_password
from hub.web.registry import ROUTES, parse_body
from hub.web.schemas import (
    AgentIn,
    AgentList,
    AgentOut,
    AssignIn,
    LabelsIn,
    LoginIn,
    MeIn,
    MessageIn,
    MessageOut,
    StatusIn,
    TeamList,
    TicketDetail,
    TicketList,
    TicketMessages,
    TicketOut,
    TokenOut,
)
from storage import queries
from storage.models import Agent, Inbox, Team, TeamMember
from storage.views import agent_view, message_view, team_view

API = "/api/v1"
MAX_PAGE = 200
CHANNELS = tuple(c.value for c in Channel)


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    # Browsers cannot set headers on a websocket: the token may come in the query.
    if request.headers.get("Upgrade", "").lower() == "websocket" and request.query.get("token"):
        return request.query["token"]
    raise Unauthorized("send an 'Authorization: Bearer <token>' header; get a token from POST /api/v1/auth/token")


async def current_agent(request: web.Request) -> Agent:
    hub = request.app[HUB]
    token = bearer_token(request)
    async with hub.db.read() as session:
        return await check_token(session, token)


async def require_admin(request: web.Request) -> Agent:
    agent = await current_agent(request)
    if agent.role != Role.ADMIN.value:
        raise Forbidden("this needs an admin")
    return agent


_INTEGER = re.compile(r"-?[0-9]{1,20}")


def int_param(request: web.Request, name: str) -> int:
    in_path = name in request.match_info
    raw = request.match_info[name] if in_path else request.query.get(name, "")
    # ASCII digits only: int() also takes " 7", "+7", "7_0" and Arabic-Indic digits, other
    # spellings of ids that would then name the same resource.
    if not _INTEGER.fullmatch(raw):
        raise BadRequest(f"{name} must be an integer, not {raw[:40]!r}")
    value = int(raw)
    if value < 1:
        # In the path it names a resource that cannot exist; in a query it is a bad filter.
        if in_path:
            raise NotFound(f"{name} {value} does not exist")
        raise BadRequest(f"{name} must be a positive integer, not {raw[:40]}")
    if value > queries.MAX_ID:
        # The database's ids are 64-bit: a larger one would fail there, as a 500.
        raise BadRequest(f"{name} must be at most {queries.MAX_ID}, not {raw[:40]}")
    return value


def page_limit(request: web.Request, default: int = 50, most: int = MAX_PAGE) -> int:
    raw = request.query.get("limit", str(default))
    # ASCII digits, as for ids: int() also reads " 7", "+7" and "7_0".
    if not _INTEGER.fullmatch(raw):
        raise BadRequest(f"limit must be an integer, not {raw[:40]!r}")
    limit = int(raw)
    if not 1 <= limit <= most:
        raise BadRequest(f"limit must be between 1 and {most}")
    return limit


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def channel_filter(request: web.Request) -> list[str]:
    """The ``channel`` query parameter: comma-separated channels, each a known one
    (an unknown one would match no ticket, and the list come back empty)."""
    channels = _csv(request.query.get("channel"))
    for c in channels:
        if c not in CHANNELS:
            raise BadRequest(f"channel {c[:40]!r} is not one of {', '.join(CHANNELS)}")
    return channels


async def _paged(coro: Any) -> web.Response:
    try:
        items, next_cursor = await coro
    except queries.BadCursor as exc:
        raise BadRequest(str(exc)) from exc
    return web.json_response({"items": items, "next_cursor": next_cursor})


# --- auth -------------------------------------------------------------------


@ROUTES.route(
    "POST",
    f"{API}/auth/token",
    summary="Log in: trade email and password for a bearer token (429 after too many failures)",
    tag="auth",
    auth=False,
    body=LoginIn,
    response=TokenOut,
    status=201,
    errors=(401, 429),
)
async def create_token(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    body = await parse_body(request, LoginIn)
    # Credentials are checked outside the write transaction: the password hash
    # is slow, and on SQLite every other write would wait for it.
    # Guessing passwords is slowed per account and address (Argon2 alone still
    # lets a few threads try many a second); the counts are of failures, and
    # of tries still being checked, so parallel guesses are held to it too.
    address = client_address(request.remote, request.headers.get("X-Forwarded-For"), hub.config.server.trusted_proxies)
    async with hub.login_throttle.attempt(body.email, address) as attempt, hub.db.read() as session:
        try:
            agent = await check_login(session, body.email, body.password)
        except Unauthorized:
            await attempt.failed()
            raise
    async with hub.db.write() as session:
        token = await do_issue_token(session, agent.id, hub.config.auth.token_ttl_hours)
        view = agent_view(agent, await _team_ids(session, agent.id))
    return web.json_response({"token": token, "agent": view}, status=201)


@ROUTES.route("POST", f"{API}/auth/logout", summary="Revoke the token used for this request", tag="auth", status=204)
async def logout(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    async with hub.db.write() as session:
        await do_logout(session, bearer_token(request))
    return web.Response(status=204)


@ROUTES.route("GET", f"{API}/me", summary="The logged-in agent", tag="agents", response=AgentOut)
async def me(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    async with hub.db.read() as session:
        return web.json_response(agent_view(agent, await _team_ids(session, agent.id)))


@ROUTES.route(
    "PATCH",
    f"{API}/me",
    summary="Change your name or your password (with your current one)",
    tag="agents",
    body=MeIn,
    response=AgentOut,
    errors=(401,),
)
async def update_me(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    body = await parse_body(request, MeIn)
    password_hash = None
    if body.password is not None:
        if body.current_password is None:
            raise ValidationFailed("current_password: needed to set a new password")
        # A stolen session alone must not take the account over.
        if not await asyncio.to_thread(verify_password, agent.password_hash, body.current_password):
            raise Unauthorized("current_password is wrong")
        password_hash = await asyncio.to_thread(hash_password, body.password)
    elif body.current_password is not None:
        raise ValidationFailed("current_password is only needed with a new password")
    async with hub.db.write() as session:
        row = await session.get(Agent, agent.id, with_for_update=True)
        assert row is not None
        await do_update_agent_account(
            session,
            row,
            actor=actor_of(agent),
            name=body.name,
            password_hash=password_hash,
            keep_token_hash=token_digest(bearer_token(request)),
        )
        return web.json_response(agent_view(row, await _team_ids(session, row.id)))


async def _team_ids(session: AsyncSession, agent_id: int) -> list[int]:
    rows = await session.scalars(select(TeamMember.team_id).where(TeamMember.agent_id == agent_id))
    return list(rows.all())


# --- agents and teams -------------------------------------------------------------


@ROUTES.route("GET", f"{API}/agents", summary="All agents", tag="agents", response=AgentList)
async def list_agents(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    async with hub.db.read() as session:
        items = await queries.list_agents(session)
    return web.json_response({"items": items, "next_cursor": None})


@ROUTES.route(
    "POST",
    f"{API}/agents",
    summary="Create an agent (admin)",
    tag="agents",
    admin=True,
    body=AgentIn,
    response=AgentOut,
    status=201,
    errors=(409,),
)
async def create_agent(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    admin = await require_admin(request)
    body = await parse_body(request, AgentIn)
    # Checked before the write transaction: the password is hashed in it, and
    # SQLite's one writer must not wait on Argon2 behind a statement of ours.
    async with hub.db.read() as session:
        await check_team_names(session, dict.fromkeys(body.teams, ("teams", True)), create=body.create_teams)
    async with hub.db.write() as session:
        agent = await do_create_agent(
            session,
            email=body.email,
            name=body.name,
            password=body.password,
            role=body.role,
            teams=body.teams,
            skills=body.skills,
            languages=body.languages,
            capacity={c.value: n for c, n in body.capacity.items()},
            phone=body.phone,
            phone_region=hub.config.phone.default_region,
            actor=actor_of(admin),
        )
        view = agent_view(agent, await _team_ids(session, agent.id))
    return web.json_response(view, status=201)


@ROUTES.route("GET", f"{API}/teams", summary="All teams", tag="agents", response=TeamList)
async def list_teams(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    async with hub.db.read() as session:
        teams = (await session.scalars(select(Team).order_by(Team.name))).all()
    return web.json_response({"items": [team_view(t) for t in teams], "next_cursor": None})


# --- tickets -------------------------------------------------------------------


@ROUTES.route(
    "GET",
    f"{API}/tickets",
    summary="Tickets, most recent activity first",
    tag="tickets",
    response=TicketList,
    query={
        "status": "comma-separated: open, pending, snoozed, resolved",
        "assignee": "an agent id, 'me' or 'none'",
        "team": "a team id",
        "channel": "comma-separated channels (webchat, sms, voice, email, telegram)",
        "label": "a label",
        "contact": "a contact id",
        "q": "text in the subject, the contact's name or any message",
        "cursor": "next_cursor of the previous page",
        "limit": f"page size, 1 to {MAX_PAGE} (default 50)",
    },
    errors=(400,),
)
async def list_tickets(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    q = request.query
    statuses = _csv(q.get("status"))
    for s in statuses:
        if s not in {t.value for t in TicketStatus}:
            raise BadRequest(f"status {s!r} is not one of open, pending, snoozed, resolved")
    f = queries.TicketFilter(status=statuses, channel=channel_filter(request), label=q.get("label") or None)
    assignee = q.get("assignee")
    if assignee == "me":
        f.assignee_id = agent.id
    elif assignee == "none":
        f.unassigned = True
    elif assignee:
        if not _INTEGER.fullmatch(assignee):
            raise BadRequest(f"assignee must be an agent id, 'me' or 'none', not {assignee[:40]!r}")
        f.assignee_id = int_param(request, "assignee")
    if q.get("team"):
        f.team_id = int_param(request, "team")
    if q.get("contact"):
        f.contact_id = int_param(request, "contact")
    f.text = (q.get("q") or "").strip() or None
    limit = page_limit(request)
    async with hub.db.read() as session:
        if f.contact_id is not None:
            # A merged-away id (an old link, the detail's tickets_next_cursor
            # taken with the id asked for) lists the tickets it lives on in;
            # an unknown one stays as typed and lists nothing.
            f.contact_id = await queries.live_contact_id(session, f.contact_id) or f.contact_id
        return await _paged(queries.list_tickets(session, f, cursor=q.get("cursor"), limit=limit))


@ROUTES.route(
    "GET",
    f"{API}/tickets/{{id}}",
    summary=f"A ticket with its newest {queries.NEWEST_MESSAGES} messages (oldest first); "
    "messages_before leads to earlier ones",
    tag="tickets",
    response=TicketDetail,
    errors=(404,),
)
async def get_ticket(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    ticket_id = int_param(request, "id")
    async with hub.db.read() as session:
        view = await queries.get_ticket(session, ticket_id)
    if view is None:
        raise NotFound(f"ticket {ticket_id} does not exist")
    return web.json_response(view)


@ROUTES.route(
    "GET",
    f"{API}/tickets/{{id}}/messages",
    summary="The ticket's messages a page at a time, going back from the newest (each page oldest first)",
    tag="tickets",
    response=TicketMessages,
    query={
        "before": "a message id: the page ends just before it (the ticket's messages_before, or the oldest you hold)",
        "cursor": "next_cursor of the previous page (instead of before)",
        "limit": f"page size, 1 to {MAX_PAGE} (default 50)",
    },
    errors=(400, 404),
)
async def list_messages(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    ticket_id = int_param(request, "id")
    before = int_param(request, "before") if "before" in request.query else None
    cursor = request.query.get("cursor")
    if before is not None and cursor:
        raise BadRequest("give before or cursor, not both")
    limit = page_limit(request)
    async with hub.db.read() as session:
        ticket = await check_ticket(session, ticket_id)
        return await _paged(queries.ticket_messages(session, ticket, before=before, cursor=cursor, limit=limit))


@ROUTES.route(
    "POST",
    f"{API}/tickets/{{id}}/messages",
    summary="Reply on the ticket's channel, or add a private note (private: true)",
    tag="tickets",
    body=MessageIn,
    response=MessageOut,
    status=201,
    errors=(404,),
)
async def post_message(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    ticket_id = int_param(request, "id")
    body = await parse_body(request, MessageIn)
    files = await check_reply_attachments(hub.attachments, body.attachments)
    async with hub.db.write() as session:
        ticket = await check_ticket(session, ticket_id, lock=True)
        if not body.private:
            check_channel_takes_files(hub.channels, body.channel or Channel(ticket.channel), files)
        msg = await do_post_message(
            session,
            ticket,
            body=body.body,
            author=Author.AGENT,
            agent=agent,
            private=body.private,
            attachments=[a.model_dump(exclude_none=True) for a in files],
            channel=body.channel,
        )
        # As the message.created event shows it.
        view = message_view(msg, await session.scalar(select(Inbox.key).where(Inbox.id == msg.inbox_id)))
    return web.json_response(view, status=201)


@ROUTES.route(
    "POST",
    f"{API}/tickets/{{id}}/assign",
    summary="Assign to an agent and/or a team (null unassigns; a field left out stays as it is)",
    tag="tickets",
    body=AssignIn,
    response=TicketOut,
    errors=(404, 409),
)
async def assign_ticket(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    ticket_id = int_param(request, "id")
    body = await parse_body(request, AssignIn)
    given = body.model_fields_set - {"expected_assignee_id"}
    if not given:
        raise ValidationFailed("give agent_id, team_id or both (null unassigns)")
    async with hub.db.write() as session:
        ticket = await check_ticket(session, ticket_id, lock=True)
        if "expected_assignee_id" in body.model_fields_set and ticket.assignee_id != body.expected_assignee_id:
            holder = await session.get(Agent, ticket.assignee_id) if ticket.assignee_id is not None else None
            raise Conflict(
                f"ticket {ticket_id} is now "
                + (f"assigned to {holder.name} (agent {holder.id})" if holder else "unassigned")
                + "; it changed since you looked"
            )
        # A field left out keeps its value: giving a ticket to an agent keeps its team.
        agent_id = body.agent_id if "agent_id" in given else ticket.assignee_id
        team_id = body.team_id if "team_id" in given else ticket.team_id
        await do_assign(session, ticket, agent_id=agent_id, team_id=team_id, actor=actor_of(agent))
        if ticket.status == TicketStatus.PENDING.value and (agent_id is not None or team_id is not None):
            # A person took the ticket from the bot, as a reply or a handoff
            # would: the bot steps back for good, and the ticket is open for
            # the agent or in the team's queue, not left waiting on the bot.
            ticket.bot_silenced = True
            await do_set_status(session, ticket, status=TicketStatus.OPEN, actor=actor_of(agent))
    return web.json_response(await _ticket_out(request, ticket_id))


async def _ticket_out(request: web.Request, ticket_id: int) -> dict[str, Any]:
    hub = request.app[HUB]
    async with hub.db.read() as session:
        view = await queries.get_ticket(session, ticket_id, message_limit=0)
    assert view is not None
    view.pop("messages", None)
    view.pop("messages_before", None)
    return view


@ROUTES.route(
    "POST",
    f"{API}/tickets/{{id}}/status",
    summary="Set status: open, pending, snoozed (with snoozed_until), resolved",
    tag="tickets",
    body=StatusIn,
    response=TicketOut,
    errors=(404, 409),
)
async def set_status(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    ticket_id = int_param(request, "id")
    body = await parse_body(request, StatusIn)
    async with hub.db.write() as session:
        ticket = await check_ticket(session, ticket_id, lock=True)
        await do_set_status(
            session, ticket, status=TicketStatus(body.status), actor=actor_of(agent), snoozed_until=body.snoozed_until
        )
    return web.json_response(await _ticket_out(request, ticket_id))


@ROUTES.route(
    "PUT",
    f"{API}/tickets/{{id}}/labels",
    summary="Replace the ticket's labels",
    tag="tickets",
    body=LabelsIn,
    response=TicketOut,
    errors=(404,),
)
async def set_labels(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    ticket_id = int_param(request, "id")
    body = await parse_body(request, LabelsIn)
    async with hub.db.write() as session:
        ticket = await check_ticket(session, ticket_id, lock=True)
        await do_set_labels(session, ticket, body.labels, actor=actor_of(agent))
    return web.json_response(await _ticket_out(request, ticket_id))
