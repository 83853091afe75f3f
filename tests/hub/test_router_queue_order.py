"""The queue mark follows who holds a ticket (SQLite and PostgreSQL): an
assigned ticket is never queued nor announced as routed again, a manual
assignment takes it out of the queue; tickets released together are served in
the queue's order, whichever of their events runs first."""

from __future__ import annotations

from sqlalchemy import delete, func, select

from hub.actions import do_assign
from hub.core import TicketEventKind
from hub.router import do_set_agent_active
from hub.stream.base import Event
from hub.workers import EventProcessor
from storage.db import Database
from storage.models import Agent, AuditLog, OutboxRow, Ticket, TicketEventRow
from tests.hub.routing_world import add_agent, pump, routing_config, worker, write

SUPPORT = routing_config(default_team="Support", teams=[{"name": "Support"}], sticky_window_hours=0)


async def ticket(db: Database, tid: int) -> Ticket:
    async with db.read() as s:
        t = await s.get(Ticket, tid)
        assert t is not None
        return t


async def routed_rows(db: Database, tid: int) -> tuple[int, int]:
    async with db.read() as s:
        events = await s.scalar(
            select(func.count())
            .select_from(TicketEventRow)
            .where(TicketEventRow.ticket_id == tid, TicketEventRow.kind == TicketEventKind.ROUTED.value)
        )
        audits = await s.scalar(
            select(func.count())
            .select_from(AuditLog)
            .where(AuditLog.action == "ticket.routed", AuditLog.entity == "ticket", AuditLog.entity_id == tid)
        )
    return int(events or 0), int(audits or 0)


async def test_a_late_enqueue_of_an_assigned_ticket_neither_queues_nor_announces_it(db: Database) -> None:
    w = worker(db, SUPPORT)
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com")
    tid = (await write(db, "hello")).ticket_id
    await pump([w])
    assert (await ticket(db, tid)).assignee_id == ana
    before = await routed_rows(db, tid)
    # What a requeued chat's own ticket.assigned event does after the drain gave it away.
    assert await w.router.route(tid, enqueue=True, released=True) is None
    t = await ticket(db, tid)
    assert (t.assignee_id, t.queued_at) == (ana, None)
    assert await routed_rows(db, tid) == before


async def test_a_manual_assignment_takes_the_ticket_out_of_its_queue(db: Database) -> None:
    w = worker(db, SUPPORT)
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com", capacity={"webchat": 0})
    tid = (await write(db, "hello")).ticket_id
    await pump([w])
    assert (await ticket(db, tid)).queued_at is not None
    async with db.write() as s:
        t = await s.get(Ticket, tid)
        assert t is not None
        await do_assign(s, t, agent_id=ana, team_id=t.team_id, actor="agent:1")
    await pump([w])
    t = await ticket(db, tid)
    assert (t.assignee_id, t.queued_at) == (ana, None)
    # Back to the team, it is queued again, and said so.
    async with db.write() as s:
        t = await s.get(Ticket, tid)
        assert t is not None
        await do_assign(s, t, agent_id=None, team_id=t.team_id, actor="agent:1")
    events_before, _ = await routed_rows(db, tid)
    await pump([w])
    assert (await ticket(db, tid)).queued_at is not None
    assert (await routed_rows(db, tid))[0] == events_before + 1


async def handle_first(w: EventProcessor, first: int) -> None:
    """Every outbox event, ticket ``first``'s before the others: the order
    several workers may well run them in."""
    async with w.db.write() as s:
        rows = (await s.scalars(select(OutboxRow).order_by(OutboxRow.id))).all()
        await s.execute(delete(OutboxRow).where(OutboxRow.id.in_([r.id for r in rows])))
    events = [Event(key=r.key, payload=dict(r.payload), outbox_id=r.id) for r in rows]
    events.sort(key=lambda e: (e.payload.get("ticket") or {}).get("id") != first)
    for e in events:
        await w.handle([e])
    await pump([w])


async def released_together(db: Database, *, urgent_second: bool) -> tuple[int, int, EventProcessor]:
    """Ana holds tickets one and two (one waited longer), Bob has one free place."""
    w = worker(db, SUPPORT)
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com", capacity={"webchat": 2})
    bob = await add_agent(db, "bob@example.com", capacity={"webchat": 2})
    one = (await write(db, "first")).ticket_id
    two = (await write(db, "second")).ticket_id
    three = (await write(db, "third")).ticket_id
    await pump([w])
    async with db.write() as s:
        for tid, agent in ((one, ana), (two, ana), (three, bob)):
            t = await s.get(Ticket, tid)
            assert t is not None
            if t.assignee_id != agent:
                await do_assign(s, t, agent_id=agent, team_id=t.team_id, actor="agent:1")
            if urgent_second and tid == two:
                t.priority = "urgent"
    await pump([w])
    async with db.write() as s:
        agent_row = await s.get(Agent, ana)
        assert agent_row is not None
        assert sorted(await do_set_agent_active(s, agent_row, False, actor="agent:1")) == [one, two]
    return one, two, w


async def test_tickets_released_together_go_to_the_longest_waiting_first(db: Database) -> None:
    one, two, w = await released_together(db, urgent_second=False)
    await handle_first(w, two)
    first, second = await ticket(db, one), await ticket(db, two)
    assert first.assignee_id is not None and first.queued_at is None
    assert second.assignee_id is None and second.queued_at is not None
    # Both were announced: the one queued, and the one the drain gave Bob.
    assert (await routed_rows(db, two))[0] >= 1


async def test_tickets_released_together_go_by_priority_first(db: Database) -> None:
    one, two, w = await released_together(db, urgent_second=True)
    await handle_first(w, one)
    assert (await ticket(db, two)).assignee_id is not None
    assert (await ticket(db, one)).assignee_id is None
