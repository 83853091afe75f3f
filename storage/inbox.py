"""Read queries of the agents' inbox: unread counts per agent, the counts of
each view, the queue of each team, canned responses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core import Direction, TicketStatus
from storage.models import CannedResponse, Message, Team, TeamMember, Ticket, TicketRead, UTCDateTime
from storage.queries import _escape_like
from storage.views import iso

VIEWS = ("mine", "unassigned", "teams", "all")


@dataclass(frozen=True, slots=True)
class Viewer:
    """The agent looking at the inbox, and what their views mean."""

    agent_id: int
    team_ids: tuple[int, ...]
    admin: bool


async def viewer(session: AsyncSession, agent_id: int, role: str) -> Viewer:
    teams = (await session.scalars(select(TeamMember.team_id).where(TeamMember.agent_id == agent_id))).all()
    return Viewer(agent_id=agent_id, team_ids=tuple(sorted(teams)), admin=role == "admin")


def view_condition(view: str, who: Viewer) -> ColumnElement[bool]:
    if view == "mine":
        return Ticket.assignee_id == who.agent_id
    if view == "unassigned":
        return Ticket.assignee_id.is_(None)
    if view == "teams":
        return Ticket.team_id.in_(who.team_ids) if who.team_ids else Ticket.id.is_(None)
    if view == "all":
        return Ticket.id.is_not(None)
    raise ValueError(f"unknown view {view!r}")


def _last_read(agent_id: int) -> Any:
    return (
        select(TicketRead.last_read_message_id)
        .where(TicketRead.agent_id == agent_id, TicketRead.ticket_id == Ticket.id)
        .scalar_subquery()
    )


def _customer_messages_after(agent_id: int) -> ColumnElement[bool]:
    """The ticket has customer messages this agent has not read."""
    return exists().where(
        Message.ticket_id == Ticket.id,
        Message.direction == Direction.IN.value,
        Message.id > func.coalesce(_last_read(agent_id), 0),
    )


async def unread_counts(session: AsyncSession, agent_id: int, ticket_ids: list[int]) -> dict[int, int]:
    """Customer messages each ticket has that the agent has not read yet."""
    if not ticket_ids:
        return {}
    read = (
        select(TicketRead.ticket_id, TicketRead.last_read_message_id)
        .where(TicketRead.agent_id == agent_id, TicketRead.ticket_id.in_(ticket_ids))
        .subquery()
    )
    rows = await session.execute(
        select(Message.ticket_id, func.count())
        .outerjoin(read, read.c.ticket_id == Message.ticket_id)
        .where(
            Message.ticket_id.in_(ticket_ids),
            Message.direction == Direction.IN.value,
            or_(read.c.last_read_message_id.is_(None), Message.id > read.c.last_read_message_id),
        )
        .group_by(Message.ticket_id)
    )
    return {tid: int(n) for tid, n in rows.all()}


async def view_counts(session: AsyncSession, who: Viewer, statuses: list[str]) -> dict[str, dict[str, int] | None]:
    """Per view: tickets in it (with ``statuses``) and how many have unread
    customer messages. ``all`` is only counted for admins."""
    unread = _customer_messages_after(who.agent_id)
    columns = []
    for view in VIEWS:
        cond = view_condition(view, who)
        columns += [func.count().filter(cond), func.count().filter(and_(cond, unread))]
    row = (await session.execute(select(*columns).where(Ticket.status.in_(statuses)))).one()
    out: dict[str, dict[str, int] | None] = {}
    for i, view in enumerate(VIEWS):
        out[view] = {"total": int(row[2 * i] or 0), "unread": int(row[2 * i + 1] or 0)}
    if not who.admin:
        out["all"] = None
    return out


async def team_queues(session: AsyncSession) -> list[dict[str, Any]]:
    """Each team's queue: its open tickets that nobody holds yet, and since when
    the oldest of them has been waiting."""
    waiting = func.coalesce(Ticket.waiting_since, Ticket.created_at)
    queued = (
        select(Ticket.team_id, func.count().label("length"), func.min(waiting, type_=UTCDateTime()).label("oldest"))
        .where(Ticket.status == TicketStatus.OPEN.value, Ticket.assignee_id.is_(None), Ticket.team_id.is_not(None))
        .group_by(Ticket.team_id)
        .subquery()
    )
    rows = await session.execute(
        select(Team.id, Team.name, queued.c.length, queued.c.oldest)
        .outerjoin(queued, queued.c.team_id == Team.id)
        .order_by(Team.name)
    )
    return [
        {"team_id": team_id, "name": name, "length": int(length or 0), "oldest_waiting_since": iso(oldest)}
        for team_id, name, length, oldest in rows.all()
    ]


def canned_view(c: CannedResponse) -> dict[str, Any]:
    return {
        "id": c.id,
        "short_code": c.short_code,
        "body": c.body,
        "created_by_id": c.created_by_id,
        "created_at": iso(c.created_at),
        "updated_at": iso(c.updated_at),
    }


async def list_canned(session: AsyncSession, text: str | None) -> list[dict[str, Any]]:
    stmt = select(CannedResponse).order_by(CannedResponse.short_code)
    if text:
        pattern = f"%{_escape_like(text.casefold())}%"
        stmt = stmt.where(
            or_(
                CannedResponse.short_code.like(pattern, escape="\\"),
                CannedResponse.body.ilike(pattern, escape="\\"),
            )
        )
    return [canned_view(c) for c in (await session.scalars(stmt.limit(500))).all()]
