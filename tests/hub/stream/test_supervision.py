"""The hub's background work is supervised: a stream consumer or a mailbox
poller that dies is started again, and /readyz reports it as down until it is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from hub.app import Hub, build_hub, create_app
from hub.config import HubConfig, load_config
from hub.mail import MailboxPoller
from hub.stream.base import Event, EventHandler
from storage.migrate import upgrade_async
from tests.hub.helpers import make_config
from tests.hub.stream.helpers import eventually


async def test_a_consumer_that_dies_is_restarted_and_readyz_reports_it_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path)
    await upgrade_async(config.database_url)
    hub = build_hub(config)
    consume = hub.stream.consume
    starts = 0
    die = asyncio.Event()
    handled: list[int] = []

    async def fragile(group: str, consumer: str, handler: EventHandler) -> None:
        nonlocal starts
        starts += 1
        if starts == 1:
            await die.wait()
            raise RuntimeError("consumer broke")
        await consume(group, consumer, handler)

    async def record(events: Sequence[Event]) -> None:
        handled.extend(e.outbox_id for e in events)

    monkeypatch.setattr(hub.stream, "consume", fragile)
    monkeypatch.setattr(hub.processor, "handle", record)
    async with _readyz_watch(config, hub, die, "stream-consumer died (RuntimeError: consumer broke)") as readyz:
        assert starts == 2
        await hub.stream.publish([Event(key="1", payload={"kind": "test.ping"}, outbox_id=10**9)])
        await eventually(lambda: _true(handled == [10**9]))
        assert (await readyz())[1]["checks"]["tasks"] == "ok"


async def test_a_mailbox_poller_that_dies_is_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its loop survives every failure it expects; this is the safety net for
    one it does not (a bug), which would otherwise leave the mailbox unread."""
    mailbox = {
        "address": "support@acme.test",
        "imap": {"host": "127.0.0.1", "port": 9, "security": "none", "user": "u", "password_env": "MAIL_PASSWORD"},
        "smtp": {"host": "127.0.0.1", "port": 9, "security": "none"},
    }
    config = load_config(
        path=None,
        env={"HUB_SECRET_KEY": "test-secret", "MAIL_PASSWORD": "secret"},
        overrides={"data_dir": str(tmp_path / "data"), "email.mailboxes": [mailbox]},
    )
    await upgrade_async(config.database_url)
    hub = build_hub(config)
    starts = 0
    die = asyncio.Event()

    async def fragile(poller: MailboxPoller) -> None:
        nonlocal starts
        starts += 1
        if starts == 1:
            await die.wait()
            raise RuntimeError("poller broke")
        await asyncio.Event().wait()  # polling, as far as the test goes

    monkeypatch.setattr(MailboxPoller, "run", fragile)
    name = f"imap:{config.email.mailboxes[0].inbox_key}"
    async with _readyz_watch(config, hub, die, f"{name} died (RuntimeError: poller broke)"):
        assert starts == 2


@asynccontextmanager
async def _readyz_watch(
    config: HubConfig, hub: Hub, die: asyncio.Event, reason: str
) -> AsyncIterator[Callable[[], Awaitable[tuple[int, dict[str, Any]]]]]:
    """Serve ``hub``; make its task die (``die``); see /readyz report it with
    ``reason`` while the database and the stream answer, then ready again."""
    server = TestServer(create_app(config, hub=hub))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            url = str(server.make_url("/readyz"))

            async def readyz() -> tuple[int, dict[str, Any]]:
                async with http.get(url) as r:
                    return r.status, await r.json()

            assert (await readyz())[0] == 200
            die.set()

            seen: list[dict[str, Any]] = []

            async def reported_down() -> bool:
                status, body = await readyz()
                if status == 503:
                    seen.append(body)
                return status == 503

            await eventually(reported_down)
            # The database and the stream answer, yet nothing would be handled.
            assert seen[0]["status"] == "unavailable"
            assert seen[0]["checks"]["database"] == seen[0]["checks"]["stream"] == "ok"
            assert seen[0]["checks"]["tasks"].startswith(reason)

            async def ready() -> bool:
                return (await readyz())[0] == 200

            await eventually(ready)
            yield readyz
    finally:
        await server.close()


async def _true(value: bool) -> bool:
    return value
