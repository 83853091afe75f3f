"""A small world for routing tests: inboxes, teams, agents, customers writing,
and workers handling the outbox events the way the stream would (per-ticket
order kept, several workers in parallel on their own connections)."""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update

from hub.actions import do_create_agent
from hub.core import Channel, InboundMessage, Presence, utcnow
from hub.router import Router
from hub.stream.base import Event
from hub.workers import EventProcessor
from routing.settings import RoutingConfig
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Agent, OutboxRow

_ids = itertools.count(1)


class Live:
    """The live bus, recorded."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        self.published.extend(items)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for _, m in self.published if m.get("type") == kind]


def routing_config(**raw: Any) -> RoutingConfig:
    return RoutingConfig.model_validate(raw)


def worker(db: Database, config: RoutingConfig, live: Live | None = None) -> EventProcessor:
    router = Router(db, config)
    processor = EventProcessor(db, live or Live(), sender=_NoSender(), router=router)  # type: ignore[arg-type]
    router.subscribe(processor)
    return processor


class _NoSender:
    async def deliver(self, message_id: int) -> None:
        return None


async def add_agent(
    db: Database,
    email: str,
    *,
    teams: Sequence[str] = ("Support",),
    capacity: dict[str, int] | None = None,
    online: bool = True,
    skills: Sequence[str] = (),
    languages: Sequence[str] = (),
) -> int:
    async with db.write() as s:
        agent = await do_create_agent(
            s,
            email=email,
            name=email.split("@")[0],
            password="correct horse battery",
            teams=list(teams),
            capacity=capacity,
            skills=list(skills),
            languages=list(languages),
        )
        if online:
            agent.presence, agent.last_seen_at, agent.presence_changed_at = Presence.ONLINE.value, utcnow(), utcnow()
        return agent.id


async def set_presence(db: Database, agent_id: int, presence: Presence, *, ago: timedelta = timedelta(0)) -> None:
    async with db.write() as s:
        when = utcnow() - ago
        await s.execute(
            update(Agent)
            .where(Agent.id == agent_id)
            .values(presence=presence.value, presence_changed_at=when, last_seen_at=when)
        )


async def write(
    db: Database, body: str, *, sender: str | None = None, channel: Channel = Channel.WEBCHAT, inbox: str = "webchat"
) -> IngestResult:
    n = next(_ids)
    async with db.write() as s:
        (result,) = await ingest_batch(
            s,
            [
                InboundMessage(
                    channel=channel,
                    inbox=inbox,
                    external_id=f"m:{n}:{body[:10]}",
                    sender=sender or f"visitor-{n}",
                    body=body,
                )
            ],
        )
    assert isinstance(result, IngestResult), result
    return result


async def pump(workers: Sequence[EventProcessor], *, rounds: int = 50) -> int:
    """Handle every outbox event until none is left, like the stream: events of
    one ticket in order on one worker, different tickets on different workers
    at the same time."""
    db = workers[0].db
    handled = 0
    for _ in range(rounds):
        async with db.write() as s:
            rows = (await s.scalars(select(OutboxRow).order_by(OutboxRow.id))).all()
            await s.execute(delete(OutboxRow).where(OutboxRow.id.in_([r.id for r in rows])))
        if not rows:
            return handled
        lanes: list[list[Event]] = [[] for _ in workers]
        for r in rows:
            lanes[zlib.crc32(r.key.encode()) % len(workers)].append(
                Event(key=r.key, payload=dict(r.payload), outbox_id=r.id)
            )

        async def run(w: EventProcessor, events: list[Event]) -> None:
            for e in events:
                await w.handle([e])

        await asyncio.gather(*(run(w, lane) for w, lane in zip(workers, lanes, strict=True)))
        handled += len(rows)
    raise AssertionError("events kept coming")
