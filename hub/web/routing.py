"""Routing over HTTP: team queues for agents, presence, and for admins the
routing rules, the automation rules and what each agent can take."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy import select

from hub.actions import actor_of, check_ticket
from hub.app import HUB
from hub.core import Channel, Presence, Role
from hub.errors import BadRequest, Conflict, NotFound, ValidationFailed
from hub.router import (
    AUTOMATION_DOC,
    RULES_DOC,
    check_team_names,
    do_set_agent_active,
    do_set_presence,
    do_update_agent_account,
    do_update_agent_routing,
    rule_targets,
)
from hub.security import MIN_PASSWORD_LENGTH, hash_password, token_digest
from hub.text import InvalidPhoneNumber, parse_phone
from hub.web.api import API, _team_ids, bearer_token, current_agent, int_param, require_admin
from hub.web.registry import ROUTES, parse_body
from hub.web.schemas import AgentOut
from routing.settings import (
    MAX_CAPACITY,
    AutomationRule,
    Capacity,
    Language,
    RoutingRule,
    Skill,
    TeamName,
    check_rule_names,
    check_rule_references,
)
from storage.models import Agent, Team, TicketCycle
from storage.views import agent_view, iso

_LANGUAGE: TypeAdapter[str] = TypeAdapter(Language)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class PresenceIn(_In):
    presence: Presence


class AgentRoutingIn(_In):
    # Each one bounded like the rules' (which also refuses text JSON cannot
    # store, such as a lone surrogate): the agent's row keeps them as JSON.
    skills: list[Skill] | None = Field(default=None, max_length=100)
    languages: list[Language] | None = Field(default=None, max_length=50, description="language codes, e.g. fa, en")
    capacity: dict[Channel, Capacity] | None = Field(
        default=None,
        description=f"open tickets per channel, 0 to {MAX_CAPACITY}, e.g. {{webchat: 3, email: 10}}",
    )
    teams: list[TeamName] | None = Field(
        default=None,
        max_length=100,
        description="team names; a team that does not exist is refused unless create_teams",
    )
    create_teams: bool = Field(default=False, description="create the teams in `teams` that do not exist yet")
    phone: str | None = Field(default=None, max_length=40, description="where voice calls for this agent ring")
    active: bool | None = Field(
        default=None,
        description="false: the agent can no longer log in, their tokens are revoked and their unresolved "
        "tickets return to their team's queue; true: they may log in again",
    )
    name: str | None = Field(default=None, min_length=1, max_length=200)
    role: Role | None = Field(default=None, description="admin or agent; the last active admin stays admin")
    password: str | None = Field(
        default=None,
        min_length=MIN_PASSWORD_LENGTH,
        max_length=1024,
        description="a new password (the agent forgot theirs); every session of theirs is signed out",
    )


class QueueOut(_Out):
    team_id: int
    team: str
    strategy: str
    queued: int = Field(description="tickets waiting for an agent")
    oldest_queued_at: str | None
    oldest_wait_seconds: float
    agents_online: int
    agents: int
    open: bool = Field(description="within the team's business hours now")


class QueueList(_Out):
    items: list[QueueOut]
    next_cursor: str | None = None


_CREATE_TEAMS = (
    "create the teams the rules name that do not exist yet; without it such a name is refused, since a typo "
    "would otherwise make a new, empty team whose tickets nobody takes"
)


class RulesIn(_In):
    items: list[RoutingRule] = Field(max_length=500)
    create_teams: bool = Field(default=False, description=_CREATE_TEAMS)


class AutomationIn(_In):
    items: list[AutomationRule] = Field(max_length=500)
    create_teams: bool = Field(default=False, description=_CREATE_TEAMS)


class RulesOut(_Out):
    items: list[dict[str, Any]]
    version: int
    source: str = Field(description="config: seeded from config.yaml; api: saved by an admin")
    updated_at: str | None
    updated_by: str | None
    warnings: list[str] = Field(
        default_factory=list,
        description="after a PUT: teams the rules send tickets to that have no active member (they wait in the "
        "team's queue until someone joins)",
    )


class AvailabilityOut(_Out):
    team_id: int
    open: bool
    agents: list[dict[str, Any]]


class CycleOut(_Out):
    number: int
    sla_policy: str | None
    started_at: str
    first_response_due_at: str | None
    first_response_at: str | None
    first_response_seconds: float | None
    resolved_at: str | None
    breaches: list[dict[str, Any]]


class SlaOut(_Out):
    ticket_id: int
    items: list[CycleOut]
    next_cursor: str | None = None


@ROUTES.route(
    "GET",
    f"{API}/queues",
    summary="Per team: tickets waiting for an agent, the oldest wait, agents online, open hours",
    tag="routing",
    response=QueueList,
)
async def list_queues(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    return web.json_response({"items": await hub.router.queues(), "next_cursor": None})


@ROUTES.route(
    "PUT",
    f"{API}/me/presence",
    summary="Set your presence: online (tickets are assigned to you), away or offline",
    tag="routing",
    body=PresenceIn,
    response=AgentOut,
)
async def set_presence(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    body = await parse_body(request, PresenceIn)
    async with hub.db.write() as session:
        row = await session.get(Agent, agent.id, with_for_update=True)
        assert row is not None
        await do_set_presence(session, row, body.presence, actor=actor_of(agent))
        view = agent_view(row, await _team_ids(session, row.id))
    return web.json_response(view)


@ROUTES.route(
    "PATCH",
    f"{API}/agents/{{id}}",
    summary="Change an agent: name, role, password; what they can take (skills, languages, capacity per "
    "channel, teams, phone); deactivate or reactivate them (admin)",
    tag="routing",
    admin=True,
    body=AgentRoutingIn,
    response=AgentOut,
    errors=(404, 409),
)
async def update_agent(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    admin = await require_admin(request)
    agent_id = int_param(request, "id")
    body = await parse_body(request, AgentRoutingIn)
    phone = body.phone
    if phone:
        # As POST /agents stores it: calls ring the number Twilio can dial.
        try:
            phone = parse_phone(phone, hub.config.phone.default_region)
        except InvalidPhoneNumber as exc:
            raise ValidationFailed(f"phone: {exc}") from exc
    # Argon2 before the write transaction, which SQLite's one writer holds.
    password_hash = await asyncio.to_thread(hash_password, body.password) if body.password is not None else None
    async with hub.db.write() as session:
        agent = await session.get(Agent, agent_id, with_for_update=True)
        if agent is None:
            raise NotFound(f"agent {agent_id} does not exist")
        await do_update_agent_account(
            session,
            agent,
            actor=actor_of(admin),
            name=body.name,
            role=body.role,
            password_hash=password_hash,
            # An admin setting their own password stays signed in here.
            keep_token_hash=token_digest(bearer_token(request)) if agent.id == admin.id else None,
        )
        if body.teams is not None:
            await check_team_names(session, dict.fromkeys(body.teams, ("teams", True)), create=body.create_teams)
        await do_update_agent_routing(
            session,
            agent,
            actor=actor_of(admin),
            skills=body.skills,
            languages=body.languages,
            capacity={c.value: n for c, n in body.capacity.items()} if body.capacity is not None else None,
            teams=body.teams,
            phone=phone,
        )
        if body.active is not None:
            if not body.active and agent.id == admin.id:
                raise Conflict("you cannot deactivate yourself; another admin can")
            await do_set_agent_active(session, agent, body.active, actor=actor_of(admin))
        view = agent_view(agent, await _team_ids(session, agent.id))
    return web.json_response(view)


async def _document(request: web.Request, key: str) -> dict[str, Any]:
    docs = await request.app[HUB].router.documents()
    return docs[key]


@ROUTES.route(
    "GET",
    f"{API}/routing/rules",
    summary="The routing rules, in order (first match wins)",
    tag="routing",
    response=RulesOut,
)
async def get_rules(request: web.Request) -> web.Response:
    await current_agent(request)
    return web.json_response(await _document(request, "rules"))


@ROUTES.route(
    "PUT",
    f"{API}/routing/rules",
    summary="Replace the routing rules (admin); workers use them within seconds",
    tag="routing",
    admin=True,
    body=RulesIn,
    response=RulesOut,
)
async def put_rules(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    admin = await require_admin(request)
    body = await parse_body(request, RulesIn)
    warnings = await _save(request, rules=body.items, create_teams=body.create_teams, actor=actor_of(admin))
    return web.json_response({**(await hub.router.documents())["rules"], "warnings": warnings})


@ROUTES.route(
    "GET",
    f"{API}/routing/automation",
    summary="The automation rules: event, conditions, actions",
    tag="routing",
    response=RulesOut,
)
async def get_automation(request: web.Request) -> web.Response:
    await current_agent(request)
    return web.json_response(await _document(request, "automation"))


@ROUTES.route(
    "PUT",
    f"{API}/routing/automation",
    summary="Replace the automation rules (admin)",
    tag="routing",
    admin=True,
    body=AutomationIn,
    response=RulesOut,
)
async def put_automation(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    admin = await require_admin(request)
    body = await parse_body(request, AutomationIn)
    warnings = await _save(request, automation=body.items, create_teams=body.create_teams, actor=actor_of(admin))
    return web.json_response({**(await hub.router.documents())["automation"], "warnings": warnings})


@ROUTES.route(
    "DELETE",
    f"{API}/routing/rules",
    summary="Drop the routing rules saved through the API: config.yaml's apply again, also after restarts, until "
    "an admin saves others (admin)",
    tag="routing",
    admin=True,
    response=RulesOut,
)
async def reset_rules(request: web.Request) -> web.Response:
    return await _reset(request, RULES_DOC)


@ROUTES.route(
    "DELETE",
    f"{API}/routing/automation",
    summary="Drop the automation rules saved through the API: config.yaml's apply again, also after restarts, "
    "until an admin saves others (admin)",
    tag="routing",
    admin=True,
    response=RulesOut,
)
async def reset_automation(request: web.Request) -> web.Response:
    return await _reset(request, AUTOMATION_DOC)


async def _reset(request: web.Request, key: str) -> web.Response:
    hub = request.app[HUB]
    admin = await require_admin(request)
    await hub.router.reset_rules(key, actor=actor_of(admin))
    return web.json_response((await hub.router.documents())[key])


async def _save(
    request: web.Request,
    *,
    rules: list[RoutingRule] | None = None,
    automation: list[AutomationRule] | None = None,
    create_teams: bool,
    actor: str,
) -> list[str]:
    hub = request.app[HUB]
    config = hub.router.config
    try:
        # save_rules makes these checks too; first here, so that a rule's own
        # mistake is named before a team it names.
        check_rule_names(rules or [], automation or [])
        async with hub.db.read() as session:
            inboxes, agents = await rule_targets(session)
            check_rule_references(
                rules or [],
                automation or [],
                calendars=set(config.calendars),
                policies=set(config.sla_policies),
                calendar_fallback=config.has_fallback_calendar,
                inboxes=inboxes,
                agents=agents,
            )
            warnings = await check_team_names(session, teams_named(rules or [], automation or []), create=create_teams)
        await hub.router.save_rules(rules=rules, automation=automation, actor=actor)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from exc
    return warnings


def teams_named(rules: list[RoutingRule], automation: list[AutomationRule]) -> dict[str, tuple[str, bool]]:
    """Team names the rules use -> (the first rule using it, whether some rule
    sends tickets there rather than only testing for it in a condition)."""
    named: dict[str, tuple[str, bool]] = {}
    for r in rules:
        if r.team:
            named.setdefault(r.team, (f"rule {r.name!r}", True))
    for a in automation:
        for action in a.actions:
            if action.assign_team:
                named.setdefault(action.assign_team, (f"automation {a.name!r}", True))
    for where, when in [(f"rule {r.name!r}", r.when) for r in rules] + [
        (f"automation {a.name!r}", a.when) for a in automation
    ]:
        for name in when.team:
            named.setdefault(name, (where, False))
    return named


@ROUTES.route(
    "GET",
    f"{API}/teams/{{id}}/availability",
    summary="Whether a team is within business hours, and its agents who could take a ticket now",
    tag="routing",
    response=AvailabilityOut,
    query={
        "channel": "the channel of the ticket (default voice)",
        "language": "the ticket's language, e.g. fa or en: only agents routing would give it to (those who speak "
        "it, by primary subtag, or list no language); default: any language",
    },
    errors=(400, 404),
)
async def team_availability(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    team_id = int_param(request, "id")
    channel = request.query.get("channel", Channel.VOICE.value)
    if channel not in {c.value for c in Channel}:
        raise BadRequest(f"channel {channel!r} is not one of {', '.join(c.value for c in Channel)}")
    language = request.query.get("language")
    if language is not None:
        try:
            language = _LANGUAGE.validate_python(language)
        except ValidationError as exc:
            raise BadRequest(f"language: {exc.errors()[0]['msg']}") from exc
    async with hub.db.read() as session:
        if await session.get(Team, team_id) is None:
            raise NotFound(f"team {team_id} does not exist")
    agents = await hub.router.available_agents(team_id, channel, language)
    return web.json_response(
        {
            "team_id": team_id,
            "open": await hub.router.is_team_open(team_id),
            "agents": [{"id": a.id, "name": a.name, "open_tickets": a.open_tickets, "free": a.free} for a in agents],
        }
    )


@ROUTES.route(
    "GET",
    f"{API}/tickets/{{id}}/sla",
    summary="A ticket's SLA cycles: first response per cycle (a reopened ticket starts a new one), breaches",
    tag="routing",
    response=SlaOut,
    errors=(404,),
)
async def ticket_sla(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    ticket_id = int_param(request, "id")
    async with hub.db.read() as session:
        await check_ticket(session, ticket_id)
        cycles = (
            await session.scalars(
                select(TicketCycle).where(TicketCycle.ticket_id == ticket_id).order_by(TicketCycle.number)
            )
        ).all()
    items = [
        {
            "number": c.number,
            "sla_policy": c.sla_policy,
            "started_at": iso(c.started_at),
            "first_response_due_at": iso(c.first_response_due_at),
            "first_response_at": iso(c.first_response_at),
            "first_response_seconds": (c.first_response_at - c.started_at).total_seconds()
            if c.first_response_at
            else None,
            "resolved_at": iso(c.resolved_at),
            "breaches": list(c.breaches or []),
        }
        for c in cycles
    ]
    return web.json_response({"ticket_id": ticket_id, "items": items, "next_cursor": None})
