"""A hub with Twilio configured against the local fake, for tests that go
through the real server (and for the campaigns tests to reuse)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp.test_utils import TestServer

from hub.app import HUB, Hub, create_app
from hub.config import HubConfig, load_config
from storage.migrate import upgrade_async
from tests.fakes.twilio import FakeTwilio
from tests.hub.helpers import Agent, add_agent

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "main-auth-token"
NUMBER = "+15550001111"
CUSTOMER = "+15557654321"
SUB_ACCOUNT = "AC" + "fedcba9876543210" * 2
SUB_TOKEN = "subaccount-token"
SERVICE = "MG" + "ab" * 16

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def twilio_config(
    tmp_path: Path, fake: FakeTwilio, port: int, env: dict[str, str] | None = None, **overrides: Any
) -> HubConfig:
    base: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "server.public_url": f"http://127.0.0.1:{port}",
        "workers.sweep_interval_seconds": 0.2,
        "workers.send_backoff_seconds": 0.05,
        "logging.level": "WARNING",
        "twilio.api_base_url": fake.base_url,
    }
    base.update(overrides)
    environment = {
        "HUB_SECRET_KEY": "test-secret",
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_PHONE_NUMBER": NUMBER,
        **(env or {}),
    }
    return load_config(path=None, env=environment, overrides=base)


@dataclass
class TwilioHub:
    server: TestServer
    fake: FakeTwilio
    config: HubConfig
    http: aiohttp.ClientSession

    @property
    def hub(self) -> Hub:
        return self.server.app[HUB]

    def url(self, path: str) -> str:
        return f"{self.config.server.public_url}{path}"

    async def sms(
        self, body: str, *, sid: str, frm: str = CUSTOMER, to: str = NUMBER, token: str = TOKEN, **extra: str
    ) -> int:
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "SmsMessageSid": sid,
            "AccountSid": ACCOUNT,
            "From": frm,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": "1",
            "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
            **extra,
        }
        return await self.fake.post_webhook(self.url("/webhooks/twilio/sms"), params, token)

    async def agent(self, email: str = "ana@example.com") -> Agent:
        await add_agent(self.config, email)
        return await Agent.login(self.http, str(self.server.make_url("")).rstrip("/"), email)


@asynccontextmanager
async def twilio_hub(
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    fake: FakeTwilio | None = None,
    overrides: dict[str, Any] | None = None,
) -> AsyncIterator[TwilioHub]:
    accounts = {ACCOUNT: TOKEN, SUB_ACCOUNT: SUB_TOKEN}
    async with FakeTwilio(accounts) if fake is None else _same(fake) as twilio:
        port = free_port()
        config = twilio_config(tmp_path, twilio, port, env, **(overrides or {}))
        await upgrade_async(config.database_url)
        server = TestServer(create_app(config), port=port)
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                yield TwilioHub(server, twilio, config, http)
        finally:
            await server.close()


@asynccontextmanager
async def _same(fake: FakeTwilio) -> AsyncIterator[FakeTwilio]:
    yield fake


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 15.0) -> T:
    """Poll ``check`` until it returns something truthy (the hub works on its stream)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        await asyncio.sleep(0.05)
