"""Group commit for inbound messages: concurrent ingest calls share
transactions (see :func:`storage.ingest.ingest_batch`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from hub import metrics
from hub.core import InboundMessage
from storage.ingest import IngestResult, ingest_batch

log = logging.getLogger(__name__)

Pending = tuple[InboundMessage, "asyncio.Future[IngestResult]"]


@dataclass
class _Lane:
    queue: list[Pending] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class IngestBatcher:
    """Groups concurrent ingest calls into shared transactions.

    Whatever arrives while one commit runs goes into the next; nobody waits for
    a timer. Each caller's future resolves only after the commit that holds its
    message, so "acknowledged" always means "durable". If a batch fails as a
    whole, its messages are retried one by one so a single bad message cannot
    take the others down with it.

    With ``lanes`` > 1 (PostgreSQL, whose writers run in parallel), several
    batches are in flight at once, so the process does not sit idle waiting
    for the database's round trips. A sender always maps to the same lane:
    one customer's messages are still stored one batch after another, in the
    order they came, and parallel batches touch different customers' rows.
    """

    def __init__(
        self,
        write: Callable[[], contextlib.AbstractAsyncContextManager[AsyncSession]],
        *,
        max_batch: int = 500,
        lanes: int = 1,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._after_commit = after_commit
        self._lanes = [_Lane() for _ in range(max(1, lanes))]
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def start(self) -> None:
        self._closed = False
        self._tasks = [
            asyncio.create_task(self._run(lane), name=f"ingest-batcher-{i}") for i, lane in enumerate(self._lanes)
        ]

    async def stop(self) -> None:
        self._closed = True
        for lane in self._lanes:
            lane.wake.set()
        await asyncio.gather(*self._tasks)
        self._tasks = []

    async def submit(self, message: InboundMessage) -> IngestResult:
        if self._closed or not self._tasks:
            raise RuntimeError("ingest is not running")
        fut: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        lane = self._lanes[zlib.crc32(f"{message.channel.value}:{message.sender}".encode()) % len(self._lanes)]
        lane.queue.append((message, fut))
        lane.wake.set()
        return await fut

    async def _run(self, lane: _Lane) -> None:
        while True:
            if not lane.queue:
                if self._closed:
                    return
                lane.wake.clear()
                await lane.wake.wait()
                continue
            batch = lane.queue[: self._max_batch]
            del lane.queue[: self._max_batch]
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[InboundMessage, asyncio.Future[IngestResult]]]) -> None:
        try:
            async with self._write() as session:
                results = await ingest_batch(session, [m for m, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                log.exception("ingest failed")
                _settle(batch[0][1], exc)
                return
            for item in batch:
                await self._commit([item])
            return
        metrics.INGEST_BATCH.observe(len(batch))
        if self._after_commit is not None:
            self._after_commit()
        for (msg, fut), res in zip(batch, results, strict=True):
            if isinstance(res, IngestResult):
                (metrics.INGEST_DUPLICATES if res.duplicate else metrics.INGESTED).labels(msg.channel.value).inc()
            _settle(fut, res)


def _settle(fut: asyncio.Future[IngestResult], result: IngestResult | BaseException) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)
