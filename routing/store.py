"""What routing reads from storage: agents with their load, the team queues,
cursors, the customer's last agent. Every function runs in the caller's
transaction; the locking ones (``for update``) are meant for write
transactions, where PostgreSQL's row locks make capacity checks exact across
worker processes (SQLite has one writer at a time, so they are plain reads)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from hub.core import PRIORITY_RANK, Presence, Priority, TicketStatus
from routing.decide import AgentState, StickyOwner
from routing.settings import Conditions
from storage.ingest import dialect_insert
from storage.models import Agent, Inbox, Message, RoutingCursor, TeamMember, Ticket, TicketLabel

OPEN = TicketStatus.OPEN.value

# Highest priority first, in SQL (the column holds the enum's value).
PRIORITY_ORDER = case(
    *((Ticket.priority == p.value, PRIORITY_RANK[p]) for p in Priority),
    else_=PRIORITY_RANK[Priority.NORMAL],
).desc()


async def loads(session: AsyncSession, agent_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Open tickets per agent and channel."""
    ids = sorted(set(agent_ids))
    out: dict[int, dict[str, int]] = defaultdict(dict)
    if not ids:
        return out
    rows = await session.execute(
        select(Ticket.assignee_id, Ticket.channel, func.count())
        .where(Ticket.assignee_id.in_(ids), Ticket.status == OPEN)
        .group_by(Ticket.assignee_id, Ticket.channel)
    )
    for agent_id, channel, n in rows.all():
        if agent_id is not None:
            out[int(agent_id)][str(channel)] = int(n)
    return out


async def agent_states(
    session: AsyncSession, *, team_ids: Iterable[int] = (), agent_ids: Iterable[int] = ()
) -> list[AgentState]:
    """Members of ``team_ids`` and the agents ``agent_ids``, with all their teams
    and their load (two queries: this runs for every routing decision)."""
    teams = sorted(set(team_ids))
    extra = sorted(set(agent_ids))
    if not teams and not extra:
        return []
    wanted: list[ColumnElement[bool]] = []
    if extra:
        wanted.append(Agent.id.in_(extra))
    if teams:
        wanted.append(Agent.id.in_(select(TeamMember.agent_id).where(TeamMember.team_id.in_(teams))))
    # Plain columns, not ORM objects: this runs for every routing decision.
    rows = (
        await session.execute(
            select(*_AGENT_COLUMNS, TeamMember.team_id)
            .outerjoin(TeamMember, TeamMember.agent_id == Agent.id)
            .where(or_(*wanted))
        )
    ).all()
    agents: dict[int, Any] = {}
    memberships: dict[int, set[int]] = defaultdict(set)
    for row in rows:
        agents[row.id] = row
        if row.team_id is not None:
            memberships[row.id].add(row.team_id)
    load = await loads(session, agents)
    return [state_of(a, memberships[a.id], load.get(a.id, {})) for a in agents.values()]


_AGENT_COLUMNS = (
    Agent.id,
    Agent.presence,
    Agent.active,
    Agent.skills,
    Agent.languages,
    Agent.capacity,
    Agent.last_assigned_at,
)


def state_of(agent: Any, teams: Iterable[int], load: dict[str, int]) -> AgentState:
    """An agent (row or object with the agent columns) as routing sees it."""
    return AgentState(
        id=agent.id,
        teams=frozenset(teams),
        presence=Presence(agent.presence),
        active=agent.active,
        skills=frozenset(str(s) for s in agent.skills or []),
        languages=frozenset(str(s) for s in agent.languages or []),
        capacity={str(k): int(v) for k, v in (agent.capacity or {}).items()},
        load=dict(load),
        last_assigned_at=agent.last_assigned_at,
    )


async def lock_agent(session: AsyncSession, agent_id: int, *, skip_locked: bool = False) -> Agent | None:
    """The agent's row, locked until the transaction ends: every assignment to
    one agent is serialized, so a count read after this is exact. With
    ``skip_locked``, None when another transaction holds it."""
    return await session.scalar(
        select(Agent)
        .where(Agent.id == agent_id)
        # FOR NO KEY UPDATE: routings serialize on the agent, while rows that
        # merely reference the agent (an agent's reply) are not held up.
        .with_for_update(skip_locked=skip_locked, key_share=True)
        .execution_options(populate_existing=True)
    )


async def open_count(session: AsyncSession, agent_id: int, channel: str) -> int:
    n = await session.scalar(
        select(func.count())
        .select_from(Ticket)
        .where(Ticket.assignee_id == agent_id, Ticket.channel == channel, Ticket.status == OPEN)
    )
    return int(n or 0)


async def cursors(session: AsyncSession, team_ids: Iterable[int]) -> dict[int, int]:
    ids = sorted(set(team_ids))
    if not ids:
        return {}
    rows = await session.execute(
        select(RoutingCursor.team_id, RoutingCursor.agent_id).where(RoutingCursor.team_id.in_(ids))
    )
    return {t: a for t, a in rows.all() if a is not None}


async def lock_cursor(session: AsyncSession, team_id: int) -> int | None:
    """The team's round-robin cursor, locked (created when missing)."""
    row = await session.scalar(select(RoutingCursor).where(RoutingCursor.team_id == team_id).with_for_update())
    if row is None:
        await session.execute(
            dialect_insert(session, RoutingCursor)
            .values(team_id=team_id, agent_id=None)
            .on_conflict_do_nothing(index_elements=["team_id"])
        )
        row = await session.scalar(select(RoutingCursor).where(RoutingCursor.team_id == team_id).with_for_update())
    return row.agent_id if row is not None else None


async def last_owner(
    session: AsyncSession, contact_id: int, ticket_id: int, window: timedelta, now: datetime
) -> StickyOwner | None:
    """The agent of the customer's most recent other ticket within ``window``."""
    if window <= timedelta(0):
        return None
    row = (
        await session.execute(
            select(Ticket.assignee_id, Ticket.last_message_at)
            .where(
                Ticket.contact_id == contact_id,
                Ticket.id != ticket_id,
                Ticket.assignee_id.is_not(None),
                Ticket.last_message_at >= now - window,
            )
            .order_by(Ticket.last_message_at.desc())
            .limit(1)
        )
    ).first()
    if row is None or row[0] is None:
        return None
    return StickyOwner(agent_id=int(row[0]), last_at=row[1])


def queue_query(team_id: int, *, limit: int, skip_locked: bool) -> Any:
    """The head of a team's queue: priority first, then who waited longest."""
    stmt = (
        select(Ticket)
        .where(
            Ticket.team_id == team_id,
            Ticket.queued_at.is_not(None),
            Ticket.assignee_id.is_(None),
            Ticket.status == OPEN,
        )
        .order_by(PRIORITY_ORDER, Ticket.queued_at, Ticket.id)
        .limit(limit)
    )
    if skip_locked:
        stmt = stmt.with_for_update(skip_locked=True)
    return stmt


async def queue_stats(session: AsyncSession, team_ids: Sequence[int] | None = None) -> dict[int, tuple[int, datetime]]:
    """team id -> (tickets waiting, oldest queued_at)."""
    stmt = (
        select(Ticket.team_id, func.count(), func.min(Ticket.queued_at))
        .where(Ticket.queued_at.is_not(None), Ticket.assignee_id.is_(None), Ticket.status == OPEN)
        .group_by(Ticket.team_id)
    )
    if team_ids is not None:
        stmt = stmt.where(Ticket.team_id.in_(team_ids))
    return {
        int(t): (int(n), oldest)
        for t, n, oldest in (await session.execute(stmt)).all()
        if t is not None and oldest is not None
    }


async def last_inbound_text(session: AsyncSession, ticket_id: int) -> str:
    """The customer's latest words on the ticket (for rules applied at handoff)."""
    body = await session.scalar(
        select(Message.body)
        .where(Message.ticket_id == ticket_id, Message.direction == "in")
        .order_by(Message.id.desc())
        .limit(1)
    )
    return body or ""


def ticket_conditions(when: Conditions, team_ids: Mapping[str, int]) -> list[ColumnElement[bool]]:
    """The conditions on the ticket's own columns as SQL (``team_ids``: team
    name -> id, as the matcher sees them), for sweeps that look for tickets a
    rule may fire on. Each holds whenever :meth:`routing.match.Compiled.matches`
    would, so filtering with them loses no ticket; the rest (the contact, the
    calendar) is still matched on each ticket found."""
    out: list[ColumnElement[bool]] = []
    if when.status:
        out.append(Ticket.status.in_([s.value for s in when.status]))
    if when.channel:
        out.append(Ticket.channel.in_([c.value for c in when.channel]))
    if when.priority:
        out.append(Ticket.priority.in_([p.value for p in when.priority]))
    if when.assigned is not None:
        out.append(Ticket.assignee_id.is_not(None) if when.assigned else Ticket.assignee_id.is_(None))
    if when.team:
        ids = sorted({team_ids[n] for n in when.team if n in team_ids})
        out.append(Ticket.team_id.in_(ids) if ids else false())
    if when.inbox:
        out.append(Ticket.inbox_id.in_(select(Inbox.id).where(Inbox.key.in_(when.inbox))))
    if when.labels:
        out.append(
            select(TicketLabel.ticket_id)
            # Without case, as routing.match compares them (lower() folds
            # ASCII only on SQLite: a label with other cased letters is found
            # there in the spelling the rule gives).
            .where(
                TicketLabel.ticket_id == Ticket.id,
                or_(
                    TicketLabel.label.in_(when.labels),
                    func.lower(TicketLabel.label).in_(sorted({x.lower() for x in when.labels})),
                ),
            )
            .exists()
        )
    return out


def after_key(last_message_at: datetime, ticket_id: int) -> ColumnElement[bool]:
    """Tickets after (``last_message_at``, ``ticket_id``) in the order of the
    ``ix_tickets_activity`` index: a keyset page that never repeats a ticket."""
    return or_(
        Ticket.last_message_at > last_message_at,
        and_(Ticket.last_message_at == last_message_at, Ticket.id > ticket_id),
    )
