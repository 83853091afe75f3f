"""A Telegram photo whose message another replica stored first leaves no
files behind."""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestServer

from hub.app import Hub
from hub.core import InboundMessage
from storage.ingest import IngestResult
from tests.channels.fake_telegram import FakeBotAPI
from tests.hub.test_telegram import fake, http, message_update, post, started, telegram_messages

__all__ = ["fake", "http", "started"]  # fixtures used by name


async def test_a_photo_stored_first_by_another_replica_leaves_no_files(
    started: tuple[TestServer, Hub], fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    server, hub = started
    service = hub.telegram
    assert service is not None
    fake.add_file("ph", b"\xff\xd8 jpeg", "photos/ph.jpg")
    photo = [{"file_id": "ph", "file_unique_id": "ph", "width": 10, "height": 10, "file_size": 9}]
    stored_by_ingest = service.ingest

    async def replica_lands_first(message: InboundMessage) -> IngestResult:
        # The other replica fetched its own copy of the photo and stored the
        # message between this one's check for it and its ingest.
        await stored_by_ingest(message.model_copy(update={"attachments": ()}))
        return await stored_by_ingest(message)

    service.ingest = replica_lands_first
    status, answer = await post(http, server, message_update(1, 1, photo=photo, caption="broken"))
    assert (status, answer["outcome"]) == (200, "duplicate")
    (msg,) = await telegram_messages(hub)
    assert msg.body == "broken" and msg.attachments == []
    assert not list(hub.config.attachments_dir.rglob("data"))
