"""The outbox relay: committed outbox rows onto the stream.

The hot path does not poll: a process writes its outbox rows already leased to
itself, and the unit of work hands them to :meth:`OutboxRelay.committed` right
after the commit. Rows whose writer died before publishing them (its lease
lapsed), rows written by processes without a relay (the CLI), and everything
left at start-up after a crash are found by polling: claimed with a lease
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so relays in several processes share
them) and published. A row is deleted once the stream holds the event (Redis)
or once it was handled (in-process). A crash between publish and delete
publishes again; consumers are idempotent.

In-process, memory is bounded by ``max_in_flight``: past it, committed rows are
not published directly but left in the database (their lease released) for
the poller, which publishes them in id order as the workers catch up, so the
events of a ticket keep their order.

On Redis (durable), events wait in memory only for a publish on its way:
at most ``max_in_flight`` of them, past which committed rows go to the
poller. A publish that fails (Redis is down) does not keep its events either:
their rows are released to the poller of whichever relay gets to them first
(each claims rows with a lease before publishing, so exactly one publishes
each), and the rows committed from then on follow the same way until the
poller has caught up. Held in memory instead, they would grow for as long as
Redis is away, and be published twice: once by this relay, once by another
whose poller claimed them when their leases lapsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub import metrics
from hub.core import utcnow
from hub.stream.base import Event, Stream, check_cancelled
from storage.db import Database
from storage.models import AuditLog, OutboxRow

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(
        self,
        db: Database,
        stream: Stream,
        *,
        batch: int = 500,
        lease_seconds: float = 30.0,
        memory_lease_seconds: float = 600.0,
        poll_seconds: float = 0.5,
        max_in_flight: int = 10_000,
        delete_delay: float = 0.05,
    ) -> None:
        self.db = db
        self.stream = stream
        self.batch = batch
        self.lease = timedelta(seconds=lease_seconds)
        self.memory_lease_seconds = memory_lease_seconds
        self.poll_seconds = poll_seconds
        self.max_in_flight = max_in_flight
        self.delete_delay = delete_delay
        self._wake = asyncio.Event()
        self._direct: list[Event] = []
        # Outbox ids to hand to the poller: committed past max_in_flight, or
        # dropped by the stream. Their leases are released before each poll.
        self._spill: list[int] = []
        # While rows older than the committed ones wait for the poller, new
        # rows go the same way, or a ticket's later event would overtake an
        # earlier one. In-process, rows left from before a start are due at
        # once (see run), so it starts that way.
        self._spilling = not stream.durable
        self._started = False
        self._done: list[int] = []
        # Handled (durable: published) and not deleted yet. A poll that finds
        # one of them (its lease lapsed) must not publish it again.
        self._deleting: set[int] = set()
        self._done_wake = asyncio.Event()
        # Tells an outage from an event's own failure (see Stream.is_outage).
        stream.probe = db.ping
        if not stream.durable:
            stream.on_done = self._handled
            stream.on_abandoned = self._abandoned

    @property
    def lease_seconds(self) -> float:
        """How long this process owns the outbox rows it writes or claims. In-
        process, the rows wait in memory until handled (they are all re-
        published at start-up after a crash), so the lease only has to outlast
        a long backlog."""
        return self.lease.total_seconds() if self.stream.durable else self.memory_lease_seconds

    def committed(self, rows: list[tuple[int, str, dict[str, Any]]]) -> None:
        """Rows a transaction of this process just committed: publish them now."""
        if self.stream.durable and (self._spilling or len(self._direct) + len(rows) > self.max_in_flight):
            # Redis is down or slow (see the module's docstring): the rows
            # wait in the database, not in memory.
            self._spilling = True
            self._spill.extend(oid for oid, _, _ in rows)
        else:
            self._direct.extend(Event(key=key, payload=payload, outbox_id=oid) for oid, key, payload in rows)
        self._wake.set()

    def _abandoned(self, ids: Sequence[int]) -> None:
        self._spill.extend(ids)
        self._wake.set()

    async def run(self) -> None:
        if not self.stream.durable and not self._started:
            # One process owns an in-process stream: whatever it had claimed
            # before a crash was never handled, so it is due again right now.
            # Not on a restart of this task: the rows it leased are in memory.
            async with self.db.write() as session:
                await session.execute(
                    update(OutboxRow).where(OutboxRow.lease_until.is_not(None)).values(lease_until=None)
                )
        self._started = True
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._publish_loop(), name="outbox-publish")
            tg.create_task(self._delete_loop(), name="outbox-delete")

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_poll = 0.0
        while True:
            check_cancelled()  # the wait_for below may have swallowed it
            try:
                if self._direct:
                    await self._publish_direct()
                    continue
                # Polling is only the safety net, on its own clock: the hot path
                # above never waits for it nor pays for an empty claim.
                if loop.time() >= next_poll:
                    if self._spill:
                        await self._release()  # before the claim, which must see them
                    published = 0
                    if await self.stream.backlog() < self.max_in_flight:
                        published = await self.publish_once()
                        if published < self.batch and not self._spill:
                            # Every due row is claimed: what is committed from
                            # now on is newer than anything left to publish.
                            self._spilling = False
                    if published >= self.batch:
                        continue  # more may be waiting
                    next_poll = loop.time() + self.poll_seconds
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(1.0)
                continue
            self._wake.clear()
            if self._direct:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_poll - loop.time()))

    async def publish_once(self) -> int:
        now = utcnow()
        claim = (
            select(OutboxRow.id)
            .where(
                OutboxRow.dead_letter.is_(None),
                (OutboxRow.lease_until.is_(None)) | (OutboxRow.lease_until < now),
            )
            .order_by(OutboxRow.id)
            .limit(self.batch)
            .with_for_update(skip_locked=True)
        )
        async with self.db.write() as session:
            rows = (
                await session.execute(
                    update(OutboxRow)
                    .where(OutboxRow.id.in_(claim.scalar_subquery()))
                    .values(lease_until=now + timedelta(seconds=self.lease_seconds))
                    .returning(OutboxRow.id, OutboxRow.key, OutboxRow.payload)
                    .execution_options(synchronize_session=False)
                )
            ).all()
        events: list[Event] = []
        for r in sorted(rows, key=lambda r: r.id):
            if r.id in self._deleting:
                # Released, not left leased: SQLite gives a deleted highest id
                # to the next row, which must not wait out this lease.
                self._spill.append(r.id)
            else:
                events.append(Event(key=r.key, payload=r.payload, outbox_id=r.id))
        if events:
            await self._publish(events)
        return len(rows)

    async def _publish_direct(self) -> None:
        events, self._direct = self._direct, []
        if not self.stream.durable:
            # The asyncio queues are unbounded: past max_in_flight, the rows
            # stay in the database, where the poller finds them later.
            room = 0 if self._spilling else max(0, self.max_in_flight - await self.stream.backlog())
            if room < len(events):
                self._spilling = True
                self._spill.extend(e.outbox_id for e in events[room:])
                events = events[:room]
        if not events:
            return
        try:
            await self._publish(events)
        except Exception:
            if self.stream.durable:
                # Redis is away, for all we know for long: the rows go to the
                # poller (see the module's docstring), and so do the ones
                # committed until it has caught up, or they would overtake these.
                self._spilling = True
                self._spill[:0] = [e.outbox_id for e in events]
            else:
                self._direct[:0] = events  # keep their order for the retry
            raise

    async def _release(self) -> None:
        """Make the spilled rows due now: leased to this process, the poller
        would pass over them until the lease lapsed."""
        ids, self._spill = self._spill, []
        try:
            for start in range(0, len(ids), 500):
                async with self.db.write() as session:
                    await session.execute(
                        update(OutboxRow)
                        .where(OutboxRow.id.in_(ids[start : start + 500]))
                        .values(lease_until=None)
                        .execution_options(synchronize_session=False)
                    )
        except Exception:
            self._spill[:0] = ids  # releasing twice is harmless
            raise

    async def _publish(self, events: list[Event]) -> None:
        await self.stream.publish(events)
        if self.stream.durable:
            await self._handled([e.outbox_id for e in events])

    async def _handled(self, ids: Sequence[int]) -> None:
        self._done.extend(ids)
        self._deleting.update(ids)
        self._done_wake.set()

    async def _delete_loop(self) -> None:
        while True:
            await self._done_wake.wait()
            # Collect for a moment: one delete for many rows keeps the (single,
            # on SQLite) writer free for messages. A row that outlives a crash
            # here is only published again.
            await asyncio.sleep(self.delete_delay)
            self._done_wake.clear()
            ids, self._done = self._done, []
            if not ids:
                continue
            try:
                await self._delete(ids)
                self._deleting.difference_update(ids)
            except Exception:
                log.exception("could not delete handled outbox rows; retrying")
                self._done.extend(ids)
                await asyncio.sleep(1.0)
                self._done_wake.set()

    async def _delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 500):
            async with self.db.write() as session:
                await session.execute(delete(OutboxRow).where(OutboxRow.id.in_(ids[start : start + 500])))

    async def dead_letter(self, event: Event, error: str) -> None:
        """Park an event whose handlers keep failing (in-process stream): the
        row stays, marked, until an operator requeues it (``crm-hub events
        dead-letters``); the audit entry says when and after how many tries."""
        async with self.db.write() as session:
            await session.execute(
                update(OutboxRow).where(OutboxRow.id == event.outbox_id).values(dead_letter=error[:2000])
            )
            session.add(
                AuditLog(
                    actor="system",
                    action=DEAD_LETTERED_ACTION,
                    entity="outbox",
                    entity_id=event.outbox_id,
                    data={"kind": event.kind, "key": event.key, "deliveries": event.deliveries, "error": error[:2000]},
                )
            )

    async def backlog(self) -> int:
        """Outbox rows still to publish or handle; dead letters wait for an
        operator instead, and are counted apart (see ``dead_letters``)."""
        async with self.db.read() as session:
            count = int(
                await session.scalar(select(func.count()).select_from(OutboxRow).where(OutboxRow.dead_letter.is_(None)))
                or 0
            )
        metrics.OUTBOX_BACKLOG.set(count)
        return count

    async def dead_letters(self) -> int:
        """Dead letters kept for an operator, counted where they are kept (the
        outbox; on Redis, ``<stream>:dead`` too), so the gauge survives restarts."""
        async with self.db.read() as session:
            count = await count_dead_letters(session)
        from hub.stream.redis import RedisStream

        if isinstance(self.stream, RedisStream):
            from redis.exceptions import RedisError

            # The stream's own client: /metrics must not open a connection per scrape.
            try:
                count += await self.stream.dead_letter_count()
            except (RedisError, OSError) as exc:
                # /metrics still answers while Redis is away; the gauge keeps its last value.
                log.warning("could not count the Redis dead letters", extra={"error": str(exc)})
                return count
        metrics.STREAM_DEAD_LETTERS.set(count)
        return count


DEAD_LETTERED_ACTION = "event.dead_lettered"
REQUEUED_ACTION = "event.dead_letter_requeued"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One parked event, as ``crm-hub events dead-letters`` lists it."""

    id: str
    kind: str
    key: str
    deliveries: int | None  # unknown for a row parked before it was recorded
    error: str
    at: datetime  # when it was dead-lettered (or written, if that is unknown)


async def count_dead_letters(session: AsyncSession) -> int:
    query = select(func.count()).select_from(OutboxRow).where(OutboxRow.dead_letter.is_not(None))
    return int(await session.scalar(query) or 0)


async def list_dead_letters(db: Database) -> list[DeadLetter]:
    """The outbox rows parked as dead letters, oldest first."""
    async with db.read() as session:
        rows = (
            await session.execute(
                select(OutboxRow.id, OutboxRow.key, OutboxRow.payload, OutboxRow.dead_letter, OutboxRow.created_at)
                .where(OutboxRow.dead_letter.is_not(None))
                .order_by(OutboxRow.id)
            )
        ).all()
        entries = (
            (
                await session.execute(
                    select(AuditLog.entity_id, AuditLog.data, AuditLog.created_at)
                    .where(
                        AuditLog.action == DEAD_LETTERED_ACTION,
                        AuditLog.entity == "outbox",
                        AuditLog.entity_id.in_([r.id for r in rows]),
                    )
                    .order_by(AuditLog.id)
                )
            ).all()
            if rows
            else []
        )
    # The newest entry of each id (SQLite gives a deleted last row's id to
    # the next row, so older entries may be another event's).
    parked = {e.entity_id: e for e in entries}
    letters: list[DeadLetter] = []
    for r in rows:
        entry = parked.get(r.id)
        if entry is not None and entry.created_at < r.created_at:
            entry = None
        deliveries = entry.data.get("deliveries") if entry is not None else None
        letters.append(
            DeadLetter(
                id=str(r.id),
                kind=str(r.payload.get("kind", "")),
                key=r.key,
                deliveries=int(deliveries) if isinstance(deliveries, int) else None,
                error=r.dead_letter or "",
                at=entry.created_at if entry is not None else r.created_at,
            )
        )
    return letters


async def requeue_dead_letters(db: Database, ids: Sequence[int] | None, *, actor: str = "cli") -> list[int]:
    """Clear the dead-letter mark of outbox rows ``ids`` (None: all of them),
    with an audit entry each: the relay (of the running hub, or at its next
    start) publishes them again. Returns the ids requeued."""
    async with db.write() as session:
        query = select(OutboxRow.id, OutboxRow.key, OutboxRow.payload, OutboxRow.dead_letter).where(
            OutboxRow.dead_letter.is_not(None)
        )
        if ids is not None:
            query = query.where(OutboxRow.id.in_(list(ids)))
        rows = (await session.execute(query.order_by(OutboxRow.id))).all()
        if not rows:
            return []
        await session.execute(
            update(OutboxRow)
            .where(OutboxRow.id.in_([r.id for r in rows]), OutboxRow.dead_letter.is_not(None))
            .values(dead_letter=None, lease_until=None)
            .execution_options(synchronize_session=False)
        )
        for r in rows:
            session.add(
                AuditLog(
                    actor=actor,
                    action=REQUEUED_ACTION,
                    entity="outbox",
                    entity_id=r.id,
                    data={"kind": str(r.payload.get("kind", "")), "key": r.key, "error": r.dead_letter},
                )
            )
    return [r.id for r in rows]
