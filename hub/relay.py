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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update

from hub import metrics
from hub.core import utcnow
from hub.stream.base import Event, Stream, check_cancelled
from storage.db import Database
from storage.models import OutboxRow

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(
        self,
        db: Database,
        stream: Stream,
        *,
        batch: int = 500,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.5,
        max_in_flight: int = 10_000,
        delete_delay: float = 0.05,
    ) -> None:
        self.db = db
        self.stream = stream
        self.batch = batch
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_seconds = poll_seconds
        self.max_in_flight = max_in_flight
        self.delete_delay = delete_delay
        self._wake = asyncio.Event()
        self._direct: list[Event] = []
        self._done: list[int] = []
        self._done_wake = asyncio.Event()
        if not stream.durable:
            stream.on_done = self._handled

    @property
    def lease_seconds(self) -> float:
        """How long the writing process owns its new outbox rows. In-process, the
        rows wait in memory until handled (they are all re-published at start-up
        after a crash), so the lease only has to outlast a long backlog."""
        return self.lease.total_seconds() if self.stream.durable else 600.0

    def committed(self, rows: list[tuple[int, str, dict[str, Any]]]) -> None:
        """Rows a transaction of this process just committed: publish them now."""
        self._direct.extend(Event(key=key, payload=payload, outbox_id=oid) for oid, key, payload in rows)
        self._wake.set()

    async def run(self) -> None:
        if not self.stream.durable:
            # One process owns an in-process stream: whatever it had claimed
            # before a crash was never handled, so it is due again right now.
            async with self.db.write() as session:
                await session.execute(
                    update(OutboxRow).where(OutboxRow.lease_until.is_not(None)).values(lease_until=None)
                )
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
                    events, self._direct = self._direct, []
                    try:
                        await self._publish(events)
                    except Exception:
                        self._direct[:0] = events  # keep their order for the retry
                        raise
                    continue
                # Polling is only the safety net, on its own clock: the hot path
                # above never waits for it nor pays for an empty claim.
                if loop.time() >= next_poll:
                    published = 0
                    if await self.stream.backlog() < self.max_in_flight:
                        published = await self.publish_once()
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
                    .values(lease_until=now + self.lease)
                    .returning(OutboxRow.id, OutboxRow.key, OutboxRow.payload)
                    .execution_options(synchronize_session=False)
                )
            ).all()
        if not rows:
            return 0
        await self._publish(
            [Event(key=r.key, payload=r.payload, outbox_id=r.id) for r in sorted(rows, key=lambda r: r.id)]
        )
        return len(rows)

    async def _publish(self, events: list[Event]) -> None:
        await self.stream.publish(events)
        if self.stream.durable:
            await self._handled([e.outbox_id for e in events])

    async def _handled(self, ids: Sequence[int]) -> None:
        self._done.extend(ids)
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
        """Park an event whose handlers keep failing (in-process stream)."""
        async with self.db.write() as session:
            await session.execute(
                update(OutboxRow).where(OutboxRow.id == event.outbox_id).values(dead_letter=error[:2000])
            )

    async def backlog(self) -> int:
        async with self.db.read() as session:
            count = int(await session.scalar(select(func.count()).select_from(OutboxRow)) or 0)
        metrics.OUTBOX_BACKLOG.set(count)
        return count
