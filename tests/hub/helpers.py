"""A running hub for tests: a real server on a free localhost port, with real
websocket and HTTP clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from hub.actions import do_create_agent
from hub.app import create_app
from hub.config import HubConfig, load_config
from hub.core import Role
from storage.db import Database
from storage.migrate import upgrade_async
from tests import services

PASSWORD = "correct horse battery"


def make_config(tmp_path: Path, **overrides: Any) -> HubConfig:
    base: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "workers.sweep_interval_seconds": 0.2,
        "workers.send_backoff_seconds": 0.05,
        "logging.level": "WARNING",
    }
    base.update(overrides)
    return load_config(path=None, env={"HUB_SECRET_KEY": "test-secret"}, overrides=base)


async def config_on(engine: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[HubConfig]:
    """A hub's configuration on the embedded database (``"sqlite"``) or on a
    fresh PostgreSQL database (``"postgres"``, dropped afterwards): the
    parameter of the fixtures that run a test on both."""
    if engine == "postgres":
        async for url in services.fresh_postgres_database():
            yield make_config(tmp_path, **{"database.url": url, **overrides})
    else:
        yield make_config(tmp_path, **overrides)


async def add_agent(config: HubConfig, email: str, role: Role = Role.ADMIN) -> None:
    db = Database(config.database_url)
    try:
        async with db.write() as s:
            await do_create_agent(s, email=email, name=email.split("@")[0], password=PASSWORD, role=role)
    finally:
        await db.dispose()


@asynccontextmanager
async def running_hub(config: HubConfig, role: str = "all") -> AsyncIterator[TestServer]:
    await upgrade_async(config.database_url)
    server = TestServer(create_app(config, role))  # type: ignore[arg-type]
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


class Agent:
    """An agent using the REST API and the events websocket."""

    def __init__(self, http: aiohttp.ClientSession, base: str, token: str) -> None:
        self.http = http
        self.base = base
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}

    @classmethod
    async def login(cls, http: aiohttp.ClientSession, base: str, email: str) -> Agent:
        async with http.post(f"{base}/api/v1/auth/token", json={"email": email, "password": PASSWORD}) as r:
            assert r.status == 201, await r.text()
            return cls(http, base, (await r.json())["token"])

    async def get(self, path: str, status: int = 200) -> Any:
        async with self.http.get(f"{self.base}{path}", headers=self.headers) as r:
            assert r.status == status, await r.text()
            return await r.json()

    async def post(self, path: str, body: Any, status: int = 200) -> Any:
        async with self.http.post(f"{self.base}{path}", json=body, headers=self.headers) as r:
            assert r.status == status, await r.text()
            return await r.json()

    async def put(self, path: str, body: Any, status: int = 200) -> Any:
        async with self.http.put(f"{self.base}{path}", json=body, headers=self.headers) as r:
            assert r.status == status, await r.text()
            return await r.json()

    async def delete(self, path: str, status: int = 204) -> None:
        async with self.http.delete(f"{self.base}{path}", headers=self.headers) as r:
            assert r.status == status, await r.text()

    async def patch(self, path: str, body: Any, status: int = 200) -> Any:
        async with self.http.patch(f"{self.base}{path}", json=body, headers=self.headers) as r:
            assert r.status == status, await r.text()
            return await r.json()

    @asynccontextmanager
    async def events(self) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        async with self.http.ws_connect(f"{self.base}/api/v1/events", headers=self.headers) as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["type"] == "hello"
            yield ws


async def next_frame(
    ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 10.0, **match: Any
) -> dict[str, Any]:
    """The next frame of type ``kind`` (``*``: any) whose fields include ``match``
    (``a__b`` matches ``frame["a"]["b"]``)."""

    async def find() -> dict[str, Any]:
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"websocket ended: {msg.type} {msg.data!r}")
            frame: dict[str, Any] = json.loads(msg.data)
            if kind in ("*", frame.get("type")) and all(_get(frame, k) == v for k, v in match.items()):
                return frame

    return await asyncio.wait_for(find(), timeout)


def _get(frame: dict[str, Any], dotted: str) -> Any:
    node: Any = frame
    for part in dotted.split("__"):
        node = node.get(part) if isinstance(node, dict) else None
    return node
