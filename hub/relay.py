"""The outbox relay: committed outbox rows onto the stream.

Rows are claimed with a short lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so relays in several processes share the work), published, then deleted:
at once when the stream is durable (Redis), or when the in-process stream
reports them handled. A crash between publish and delete publishes again; the
consumers are idempotent. Woken right after each commit that wrote events, and
polling as a fallback for rows written by other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, func, select, update

from hub import metrics
from hub.core import utcnow
from hub.stream.base import Event, Stream
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
    ) -> None:
        self.db = db
        self.stream = stream
        self.batch = batch
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_seconds = poll_seconds
        self.max_in_flight = max_in_flight
        self._wake = asyncio.Event()
        self._done: list[int] = []
        self._done_wake = asyncio.Event()
        if not stream.durable:
            stream.on_done = self._handled

    def wake(self) -> None:
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
        while True:
            published = 0
            try:
                if await self.stream.backlog() < self.max_in_flight:
                    published = await self.publish_once()
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(1.0)
            if published >= self.batch:
                continue  # more may be waiting
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

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
        events = [Event(key=r.key, payload=r.payload, outbox_id=r.id) for r in sorted(rows, key=lambda r: r.id)]
        await self.stream.publish(events)
        if self.stream.durable:
            await self._delete([e.outbox_id for e in events])
        return len(events)

    async def _handled(self, ids: Sequence[int]) -> None:
        self._done.extend(ids)
        self._done_wake.set()

    async def _delete_loop(self) -> None:
        while True:
            await self._done_wake.wait()
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
