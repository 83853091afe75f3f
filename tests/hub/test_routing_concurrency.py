"""1,000 tickets, 10 agents with different capacities, 4 workers on their own
PostgreSQL connections routing and draining at the same time: nobody is ever
over capacity, no ticket is assigned twice, and the queue empties as the
agents resolve."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.actions import do_ensure_inbox, do_set_status
from hub.core import Channel, InboundMessage, TicketStatus
from storage.db import Database
from storage.ingest import ingest_batch
from storage.migrate import upgrade_async
from storage.models import Agent, Ticket, TicketEventRow
from tests.hub.routing_world import add_agent, pump, routing_config, worker

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(900)]

TICKETS = 1000
CAPACITIES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # 55 chats at once in all
WORKERS = 4


async def over_capacity(db: Database, capacity: dict[int, int]) -> list[tuple[int, int]]:
    async with db.read() as s:
        rows = (
            await s.execute(
                select(Ticket.assignee_id, func.count())
                .where(Ticket.status == "open", Ticket.assignee_id.is_not(None))
                .group_by(Ticket.assignee_id)
            )
        ).all()
    return [(a, n) for a, n in rows if a is not None and n > capacity[a]]


async def test_four_workers_never_overfill_an_agent_or_assign_twice(postgres_url: str) -> None:
    await upgrade_async(postgres_url)
    setup = Database(postgres_url)
    async with setup.write() as s:
        await do_ensure_inbox(s, key="webchat", channel=Channel.WEBCHAT, name="Website")
    config = routing_config(
        default_team="Support",
        teams=[{"name": "Support", "strategy": "balanced"}],
        sticky_window_hours=0,
        presence={"away_after_seconds": 3600},
    )
    capacity: dict[int, int] = {}
    for i, cap in enumerate(CAPACITIES):
        agent_id = await add_agent(setup, f"agent{i}@example.com", capacity={"webchat": cap})
        capacity[agent_id] = cap
    # Every worker has its own engine: real concurrent transactions.
    dbs = [Database(postgres_url, pool_size=4) for _ in range(WORKERS)]
    workers = [worker(db, config) for db in dbs]
    await workers[0].router.setup()
    try:
        for start in range(0, TICKETS, 100):
            async with setup.write() as s:
                await ingest_batch(
                    s,
                    [
                        InboundMessage(
                            channel=Channel.WEBCHAT,
                            inbox="webchat",
                            external_id=f"c{n}:1",
                            sender=f"customer-{n}",
                            body=f"question {n}",
                        )
                        for n in range(start, start + 100)
                    ],
                )

        violations: list[Any] = []
        stop = asyncio.Event()

        async def watch() -> None:
            # Committed state sampled all along: never anyone over capacity.
            while not stop.is_set():
                violations.extend(await over_capacity(setup, capacity))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        await pump(workers)
        async with setup.read() as s:
            assigned = await s.scalar(select(func.count()).select_from(Ticket).where(Ticket.assignee_id.is_not(None)))
            queued = await s.scalar(select(func.count()).select_from(Ticket).where(Ticket.queued_at.is_not(None)))
        assert assigned == sum(CAPACITIES)
        assert queued == TICKETS - sum(CAPACITIES)

        async def resolve_all(agent_id: int) -> int:
            # Each agent resolves what they hold, in their own transactions.
            async with setup.read() as s:
                ids = (
                    await s.scalars(select(Ticket.id).where(Ticket.assignee_id == agent_id, Ticket.status == "open"))
                ).all()
            for tid in ids:
                async with setup.write() as s:
                    t = await s.get(Ticket, tid, with_for_update=True)
                    assert t is not None
                    await do_set_status(s, t, status=TicketStatus.RESOLVED, actor=f"agent:{agent_id}")
            return len(ids)

        rounds = 0
        while True:
            done = await asyncio.gather(*(resolve_all(a) for a in capacity))
            if not sum(done):
                break
            # Resolutions and drains run on all four workers at once.
            await asyncio.gather(pump(workers[:2]), pump(workers[2:]))
            rounds += 1
            assert rounds < 100
        stop.set()
        await watcher
        assert violations == []
        async with setup.read() as s:
            statuses = Counter((await s.scalars(select(Ticket.status))).all())
            left = await s.scalar(select(func.count()).select_from(Ticket).where(Ticket.queued_at.is_not(None)))
            routed = (
                await s.execute(
                    select(TicketEventRow.ticket_id, TicketEventRow.data).where(TicketEventRow.kind == "ticket.routed")
                )
            ).all()
            per_agent = Counter((await s.scalars(select(Ticket.assignee_id).where(Ticket.status == "resolved"))).all())
            agents = (await s.scalars(select(Agent.id))).all()
        assert statuses == {"resolved": TICKETS}
        assert left == 0  # the queue emptied
        assignments = Counter(tid for tid, data in routed if data.get("assignee_id") is not None)
        assert len(assignments) == TICKETS
        assert set(assignments.values()) == {1}  # nobody assigned twice
        # Balanced: everyone worked, bigger capacity took more.
        assert set(per_agent) == set(agents)
        smallest, largest = min(capacity, key=capacity.__getitem__), max(capacity, key=capacity.__getitem__)
        assert per_agent[largest] > per_agent[smallest]
    finally:
        for db in [*dbs, setup]:
            await db.dispose()
