"""Uploaded files no message uses are removed after the grace period; those a
message uses (a queued reply too) are kept, and so are fresh ones."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from hub.actions import do_post_message
from hub.attachments import AttachmentStore, UploadSweeper, record_upload
from hub.core import Attachment, Author, Channel, InboundMessage, utcnow
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Message, Ticket, Upload

GRACE = 24 * 3600.0


def _store(tmp_path: Path) -> AttachmentStore:
    return AttachmentStore(tmp_path / "attachments", max_bytes=1024 * 1024)


def _sweeper(db: Database, store: AttachmentStore, settle: float = 0.0) -> UploadSweeper:
    return UploadSweeper(db, store, grace_seconds=GRACE, interval_seconds=3600, settle_seconds=settle)


async def _upload(db: Database, store: AttachmentStore, name: str, *, hours_ago: float = 0) -> Attachment:
    key = store.new_key()
    await record_upload(db, key, size=4, visitor_id="v-" + name)
    saved = await store.save(b"data", filename=name, content_type="image/png", key=key)
    if hours_ago:
        async with db.write() as session:
            await session.execute(
                update(Upload).where(Upload.key == key).values(created_at=utcnow() - timedelta(hours=hours_ago))
            )
    return saved


def _key(att: Attachment) -> str:
    return att.url.split("/")[2]


def _exists(store: AttachmentStore, att: Attachment) -> bool:
    return store.resolve(att.url) is not None


async def _rows(db: Database) -> set[str]:
    async with db.read() as session:
        return set((await session.scalars(select(Upload.key))).all())


async def _visitor_message(db: Database, external_id: str, files: list[Attachment]) -> IngestResult:
    async with db.write() as session:
        (result,) = await ingest_batch(
            session,
            [
                InboundMessage(
                    channel=Channel.WEBCHAT,
                    inbox="webchat",
                    external_id=external_id,
                    sender="visitor-1",
                    attachments=tuple(files),
                )
            ],
        )
    assert isinstance(result, IngestResult)
    return result


async def test_only_old_unused_uploads_are_removed(db: Database, tmp_path: Path) -> None:
    store = _store(tmp_path)
    unused = await _upload(db, store, "unused.png", hours_ago=25)
    sent_by_visitor = await _upload(db, store, "visitor.png", hours_ago=25)
    queued_reply = await _upload(db, store, "reply.png", hours_ago=25)
    fresh = await _upload(db, store, "fresh.png", hours_ago=1)
    gone = await _upload(db, store, "gone.png", hours_ago=25)
    store.remove(_key(gone))

    visited = await _visitor_message(db, "v1:1", [sent_by_visitor])
    async with db.write() as session:
        ticket = await session.get(Ticket, visited.ticket_id)
        assert ticket is not None
        # Stored as queued: the sender has not sent it yet.
        reply = await do_post_message(
            session, ticket, body="", author=Author.BOT, attachments=[queued_reply.model_dump(exclude_none=True)]
        )
        assert reply.status == "queued"

    assert await _sweeper(db, store).sweep() == 1

    assert not _exists(store, unused)
    assert not (store.root / _key(unused)[:2] / _key(unused)).exists()
    assert _exists(store, sent_by_visitor) and _exists(store, queued_reply) and _exists(store, fresh)
    # The used ones' records are dropped (nothing to decide about them any more);
    # the fresh one's stays until its grace period ends.
    assert await _rows(db) == {_key(fresh)}

    # A day later nothing used the fresh one either.
    assert await _sweeper(db, store).sweep(now=utcnow() + timedelta(hours=24)) == 1
    assert not _exists(store, fresh) and await _rows(db) == set()
    assert _exists(store, sent_by_visitor) and _exists(store, queued_reply)


async def test_a_file_sent_while_it_is_being_removed_is_put_back(db: Database, tmp_path: Path) -> None:
    store = _store(tmp_path)
    late = await _upload(db, store, "late.png", hours_ago=25)
    sweep = asyncio.create_task(_sweeper(db, store, settle=0.5).sweep())
    for _ in range(200):
        if not _exists(store, late):
            break
        await asyncio.sleep(0.01)
    assert not _exists(store, late), "the file was not hidden"
    # A message that took the file just before it was hidden commits now.
    await _visitor_message(db, "v1:late", [late])
    assert await sweep == 0
    assert _exists(store, late) and await _rows(db) == set()


async def test_sweepers_running_at_once_remove_each_file_once(db: Database, tmp_path: Path) -> None:
    store = _store(tmp_path)
    files = [await _upload(db, store, f"f{i}.png", hours_ago=25) for i in range(5)]
    used = files.pop()
    await _visitor_message(db, "v1:used", [used])
    counts = await asyncio.gather(*(_sweeper(db, store, settle=0.05).sweep() for _ in range(3)))
    assert sum(counts) == len(files)
    assert not any(_exists(store, f) for f in files) and _exists(store, used)
    assert await _rows(db) == set()


async def test_a_sweeper_stopped_half_way_is_finished_by_the_next(db: Database, tmp_path: Path) -> None:
    store = _store(tmp_path)
    unused = await _upload(db, store, "unused.png", hours_ago=25)
    stopped = asyncio.create_task(_sweeper(db, store, settle=30).sweep())
    for _ in range(200):
        if not _exists(store, unused):
            break
        await asyncio.sleep(0.01)
    stopped.cancel()
    await asyncio.gather(stopped, return_exceptions=True)
    # Hidden, and still recorded, so not lost to the disk.
    assert await _rows(db) == {_key(unused)}
    assert await _sweeper(db, store).sweep() == 1
    assert await _rows(db) == set()
    assert not (store.root / _key(unused)[:2] / _key(unused)).exists()


async def test_an_upload_records_who_sent_it_and_the_messages_before_it(db: Database, tmp_path: Path) -> None:
    store = _store(tmp_path)
    await _visitor_message(db, "v1:before", [])
    att = await _upload(db, store, "a.png")
    async with db.read() as session:
        row = await session.get(Upload, _key(att))
        last = await session.scalar(select(Message.id).order_by(Message.id.desc()).limit(1))
    assert row is not None
    assert (row.visitor_id, row.agent_id, row.size, row.after_message_id) == ("v-a.png", None, 4, last)
