"""Telegram, end to end: replaying a dead-lettered update from the command
line, no files left behind by a failed ingest, and Telegram's flood control
(429 ``retry_after``) honoured by the poller, setWebhook and getFile."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner, Result
from sqlalchemy import select

from channels.telegram import MediaRef, message_external_id
from hub.app import HUB, Hub
from hub.channel_actions import do_edit_inbound_message
from hub.cli import main
from hub.config import HubConfig
from hub.core import Channel, InboundMessage
from hub.telegram import DEAD_LETTER_ACTION, POISON_ATTEMPTS, Backoff
from hub.telegram_cli import REPLAYED_ACTION
from storage.ingest import IngestResult
from storage.migrate import upgrade_async
from storage.models import AuditLog
from tests.channels.fake_telegram import Call, FakeBotAPI
from tests.hub.helpers import running_hub
from tests.hub.test_telegram import (
    eventually,
    fake,
    http,
    message_by_external,
    message_update,
    post,
    started,
    telegram_messages,
    tg_config,
)

__all__ = ["fake", "http", "started"]  # fixtures used by name

PHOTO = [{"file_id": "ph", "file_unique_id": "u-ph", "width": 9, "height": 9, "file_size": 300}]


def files_on_disk(hub: Hub) -> list[Path]:
    return sorted(hub.config.attachments_dir.rglob("data"))


async def cli(config: HubConfig, *args: str) -> Result:
    """``crm-hub`` as a user runs it, against the running hub's database (in
    a thread: the command runs its own event loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, list(args), obj={"config": config}, catch_exceptions=False)


class StampedCalls(list[Call]):
    """The fake's ``calls``, each with the time it came in."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[tuple[str, float]] = []

    def append(self, call: Call) -> None:
        self.at.append((call.method, time.monotonic()))
        super().append(call)

    def times(self, method: str) -> list[float]:
        return [t for m, t in self.at if m == method]


def stamp(fake: FakeBotAPI) -> StampedCalls:
    calls = StampedCalls()
    fake.calls = calls
    return calls


# --- 1. replaying a dead-lettered update ----------------------------------------------


async def _dead_letters(hub: Hub) -> list[AuditLog]:
    async with hub.db.read() as s:
        rows = await s.scalars(select(AuditLog).where(AuditLog.action == DEAD_LETTER_ACTION).order_by(AuditLog.id))
        return list(rows.all())


async def test_a_dead_lettered_update_is_replayed_from_the_command_line_once(
    tmp_path: Path, fake: FakeBotAPI, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Backoff, "next", lambda self: 0.01)
    config = tg_config(tmp_path, fake, **{"telegram.mode": "polling", "telegram.poll_timeout_seconds": 1})
    await upgrade_async(config.database_url)
    fake.add_file("ph", b"\xff\xd8jpeg" * 50, "photos/ph.jpg")
    async with running_hub(config) as server:
        hub = server.app[HUB]
        service = hub.telegram
        assert service is not None
        stored_by_ingest = service.ingest

        async def buggy(message: InboundMessage) -> IngestResult:
            raise RuntimeError("a bug this message trips")

        service.ingest = buggy
        update_id = fake.push(message_update(0, 7, photo=PHOTO, caption="the broken box"))
        (dead,) = await eventually(lambda: _dead_letters(hub))
        assert dead.entity_id == update_id
        service.ingest = stored_by_ingest  # the bug is fixed
        # Each of the failed tries fetched the photo; none left a copy behind.
        assert len(fake.sent("getFile")) == POISON_ATTEMPTS
        assert files_on_disk(hub) == []
        # Posting it to the webhook cannot replay it: a polling bot takes none.
        status, _ = await post(http, server, json.loads(dead.data["update"]))
        assert status == 404

        done = await cli(config, "telegram", "replay", str(dead.id))
        assert done.exit_code == 0, done.output
        assert done.output.strip() == f"update {update_id} of bot default: stored"
        (msg,) = await telegram_messages(hub)
        assert msg.body == "the broken box" and len(msg.attachments) == 1
        assert msg.external_id == message_external_id("default", 777, 7)
        # The agents see it like any message: the running hub relays its events.
        assert msg.ticket_id is not None

        again = await cli(config, "telegram", "replay", str(dead.id))
        assert again.exit_code == 0, again.output
        assert again.output.strip() == f"update {update_id} of bot default: duplicate"
        assert len(await telegram_messages(hub)) == 1
        assert len(files_on_disk(hub)) == 1  # the second replay's copy of the photo was removed
        async with hub.db.read() as s:
            replays = (await s.scalars(select(AuditLog).where(AuditLog.action == REPLAYED_ACTION))).all()
        assert [(r.data["dead_letter"], r.data["outcome"]) for r in replays] == [
            (dead.id, "stored"),
            (dead.id, "duplicate"),
        ]

        # Not a row it can replay: said in one line, exit status 1.
        unknown = await cli(config, "telegram", "replay", "999999")
        assert (unknown.exit_code, unknown.output.strip()) == (1, "Error: no audit log row has the id 999999")
        other = replays[0].id
        wrong = await cli(config, "telegram", "replay", str(other))
        assert wrong.exit_code == 1
        assert f"audit log row {other} is 'telegram.update_replayed', not a Telegram update" in wrong.output


async def test_replay_refuses_an_update_still_invalid_or_of_a_bot_no_longer_configured(
    tmp_path: Path, fake: FakeBotAPI
) -> None:
    config = tg_config(tmp_path, fake, **{"telegram.mode": "polling", "telegram.poll_timeout_seconds": 1})
    await upgrade_async(config.database_url)
    async with running_hub(config) as server:
        hub = server.app[HUB]
        malformed = message_update(0, 1, text="x")
        malformed["message"]["date"] = 10**20
        last = fake.push(malformed)
        (dead,) = await eventually(lambda: _dead_letters(hub))
        assert dead.entity_id == last
        still = await cli(config, "telegram", "replay", str(dead.id))
        assert still.exit_code == 1
        assert "still not a Telegram update the hub can read: message.date must be a Unix time" in still.output
        assert f"stays in audit log row {dead.id}" in still.output

        gone = config.model_copy(update={"telegram": config.telegram.model_copy(update={"bots": []})})
        refused = await cli(gone, "telegram", "replay", str(dead.id))
        assert refused.exit_code == 1
        assert "the Telegram bot 'default', which is no longer configured (telegram.bots)" in refused.output
        assert await telegram_messages(hub) == []


# --- 3. files of a failed ingest -------------------------------------------------------


async def test_a_photo_whose_ingest_fails_leaves_no_files(
    started: tuple[TestServer, Hub], fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    server, hub = started
    service = hub.telegram
    assert service is not None
    fake.add_file("ph", b"\xff\xd8jpeg" * 50, "photos/ph.jpg")
    stored_by_ingest = service.ingest

    async def locked(message: InboundMessage) -> IngestResult:
        raise RuntimeError("database is locked")

    service.ingest = locked
    update = message_update(1, 1, photo=PHOTO, caption="broken box")
    for _ in range(2):
        status, _answer = await post(http, server, update)
        assert status == 500
    assert files_on_disk(hub) == []

    service.ingest = stored_by_ingest
    assert (await post(http, server, update))[1]["outcome"] == "stored"
    (msg,) = await telegram_messages(hub)
    assert len(msg.attachments) == 1 and len(files_on_disk(hub)) == 1


async def test_a_photo_stored_although_its_ingest_raised_keeps_its_file(
    started: tuple[TestServer, Hub], fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    """A commit whose answer was lost: the message is stored with the file."""
    server, hub = started
    service = hub.telegram
    assert service is not None
    fake.add_file("ph", b"\xff\xd8jpeg" * 50, "photos/ph.jpg")
    stored_by_ingest = service.ingest

    async def answer_lost(message: InboundMessage) -> IngestResult:
        await stored_by_ingest(message)
        raise ConnectionResetError("the connection dropped after COMMIT")

    service.ingest = answer_lost
    assert (await post(http, server, message_update(1, 1, photo=PHOTO)))[0] == 500
    (msg,) = await telegram_messages(hub)
    (att,) = msg.attachments
    async with http.get(server.make_url(att["url"])) as r:
        assert r.status == 200 and await r.read() == b"\xff\xd8jpeg" * 50


async def test_a_replaced_photo_overtaken_by_a_later_edit_leaves_no_file(
    started: tuple[TestServer, Hub], fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    server, hub = started
    service = hub.telegram
    assert service is not None
    fake.add_file("ph", b"OLD" * 100, "photos/old.jpg")
    fake.add_file("new", b"NEW" * 100, "photos/new.jpg")
    assert (await post(http, server, message_update(1, 1, photo=PHOTO, caption="the invoice")))[0] == 200
    assert len(files_on_disk(hub)) == 1
    fetch_all = service._fetch_all

    async def overtaken(bot: Any, media: tuple[MediaRef, ...]) -> Any:
        fetched = await fetch_all(bot, media)
        # A later edit is applied while the new photo was being fetched.
        async with hub.db.write() as session:
            await do_edit_inbound_message(
                session,
                channel=Channel.TELEGRAM,
                external_id=message_external_id("default", 777, 1),
                body="the invoice, final",
                edited_at=datetime.fromtimestamp(1_700_000_900, UTC),
                sequence=9,
            )
        return fetched

    service._fetch_all = overtaken  # type: ignore[method-assign]
    new_photo = [{**PHOTO[0], "file_id": "new", "file_unique_id": "u-new"}]
    edit = message_update(2, 1, photo=new_photo, caption="the invoice, March")
    edit = {"update_id": 2, "edited_message": {**edit["message"], "edit_date": 1_700_000_100}}
    assert (await post(http, server, edit))[1]["outcome"] == "edited"
    msg = await message_by_external(hub, message_external_id("default", 777, 1))
    assert msg is not None and msg.body == "the invoice, final"
    (att,) = msg.attachments
    async with http.get(server.make_url(att["url"])) as r:
        assert await r.read() == b"OLD" * 100
    assert len(files_on_disk(hub)) == 1  # the new photo, fetched for nothing, is gone


# --- 5. flood control ------------------------------------------------------------------


async def test_the_poller_waits_as_long_as_flood_control_says(tmp_path: Path, fake: FakeBotAPI) -> None:
    config = tg_config(tmp_path, fake, **{"telegram.mode": "polling", "telegram.poll_timeout_seconds": 1})
    await upgrade_async(config.database_url)
    calls = stamp(fake)
    fake.flood("getUpdates", 2)
    fake.add_file("ph", b"\xff\xd8jpeg" * 50, "photos/ph.jpg")
    fake.push(message_update(0, 1, photo=PHOTO, caption="receipt"))
    fake.flood("getFile", 2)
    async with running_hub(config) as server:
        hub = server.app[HUB]
        await eventually(lambda: telegram_messages(hub))
    polls = calls.times("getUpdates")
    assert polls[1] - polls[0] >= 2.0  # not before the retry_after of the first
    fetches = calls.times("getFile")
    assert len(fetches) == 2 and fetches[1] - fetches[0] >= 2.0
    (msg,) = await telegram_messages(hub)
    assert len(msg.attachments) == 1


async def test_set_webhook_waits_as_long_as_flood_control_says(tmp_path: Path, fake: FakeBotAPI) -> None:
    config = tg_config(tmp_path, fake)
    await upgrade_async(config.database_url)
    calls = stamp(fake)
    fake.flood("setWebhook", 2)
    async with running_hub(config):
        await eventually(lambda: asyncio.sleep(0, fake.webhook), timeout=10)
    tries = calls.times("setWebhook")
    assert len(tries) == 2 and tries[1] - tries[0] >= 2.0


async def test_a_long_flood_wait_does_not_hold_up_shutdown(tmp_path: Path, fake: FakeBotAPI) -> None:
    config = tg_config(tmp_path, fake, **{"telegram.mode": "polling", "telegram.poll_timeout_seconds": 1})
    await upgrade_async(config.database_url)
    fake.flood("getUpdates", 3600)
    async with running_hub(config):
        await eventually(lambda: asyncio.sleep(0, fake.sent("getUpdates")))
        await asyncio.sleep(0.2)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5
    assert len(fake.sent("getUpdates")) == 1
