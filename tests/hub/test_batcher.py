from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from sqlalchemy import func, select

from hub.batcher import IngestBatcher
from hub.core import Channel, InboundMessage
from storage.db import Database
from storage.ingest import IngestResult
from storage.models import Message


def web(sender: str, ext: str, body: str = "hi") -> InboundMessage:
    return InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id=ext, sender=sender, body=body)


async def count(db: Database, model: type) -> int:
    async with db.read() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_batcher_shares_commits_and_acks_each_after_commit(db: Database) -> None:
    # Each shared commit records its batch size: the histogram's count is the
    # number of commits.
    before = REGISTRY.get_sample_value("hub_ingest_batch_size_count") or 0.0
    batcher = IngestBatcher(db.write)
    await batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(web(f"b{i % 50}", f"b:{i}")) for i in range(300)))
    finally:
        await batcher.stop()
    assert all(not r.duplicate for r in results)
    assert len({r.message_id for r in results}) == 300
    assert len({r.ticket_id for r in results}) == 50
    commits = (REGISTRY.get_sample_value("hub_ingest_batch_size_count") or 0.0) - before
    assert commits < 300  # commits were shared
    assert await count(db, Message) == 300


async def test_batcher_isolates_a_failing_message(db: Database) -> None:
    batcher = IngestBatcher(db.write)
    await batcher.start()
    try:
        bad = InboundMessage(channel=Channel.SMS, inbox="webchat", external_id="x", sender="+1", body="b")
        results = await asyncio.gather(batcher.submit(web("c1", "c:1")), batcher.submit(bad), return_exceptions=True)
    finally:
        await batcher.stop()
    assert isinstance(results[0], IngestResult)
    assert isinstance(results[1], ValueError) and "not sms" in str(results[1])
