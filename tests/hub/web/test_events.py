"""The agents' live feed stops with the token that opened it: a logged-out or
expired token closes the socket, and the agent is no longer kept online. A
feed that lost live events closes too, for the inbox to reconnect and reload."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import WSCloseCode
from sqlalchemy import update

from hub.app import HUB, WEBSOCKETS
from hub.config import HubConfig
from hub.core import utcnow
from hub.security import token_digest
from hub.stream.redis import RedisLiveBus
from hub.workers import AGENTS_CHANNEL
from storage.models import Agent as AgentRow
from storage.models import ApiToken
from tests import services
from tests.hub.helpers import Agent, add_agent, make_config, next_frame, running_hub

# Beats often, so the test does not wait 20 s for the token to be checked again.
FAST_BEAT = {"routing.presence.heartbeat_seconds": 0.05}


async def closed_for_auth(events: aiohttp.ClientWebSocketResponse) -> None:
    error = await next_frame(events, "error")
    assert error["code"] == "unauthorized"
    closing = await asyncio.wait_for(events.receive(), 10)
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4401


async def test_logout_closes_the_events_socket_and_the_agent_is_no_longer_kept_online(tmp_path: Path) -> None:
    config = make_config(tmp_path, **FAST_BEAT)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        agent = await Agent.login(http, base, "ana@example.com")
        await agent.put("/api/v1/me/presence", {"presence": "online"})
        hub = server.app[HUB]
        async with agent.events() as events:
            async with http.post(f"{base}/api/v1/auth/logout", headers=agent.headers) as r:
                assert r.status == 204
            await closed_for_auth(events)
        # The server's side is gone too, its heartbeat with it.
        async with asyncio.timeout(10):
            while server.app[WEBSOCKETS]:
                await asyncio.sleep(0.02)
        later = utcnow() + timedelta(seconds=config.routing.presence.away_after_seconds + 1)
        assert await hub.router.sweep_presence(later) == (1, 0)
        async with hub.db.read() as s:
            row = await s.get(AgentRow, 1)
        assert row is not None and row.presence == "away"


async def test_an_expired_token_closes_the_events_socket(tmp_path: Path) -> None:
    config = make_config(tmp_path, **FAST_BEAT)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        agent = await Agent.login(http, base, "ana@example.com")
        hub = server.app[HUB]
        async with agent.events() as events:
            await events.send_json({"type": "ping"})
            await next_frame(events, "pong")
            async with hub.db.write() as s:
                await s.execute(
                    update(ApiToken)
                    .where(ApiToken.token_hash == token_digest(agent.token))
                    .values(expires_at=utcnow() - timedelta(seconds=1))
                )
            await closed_for_auth(events)


@pytest.mark.redis
async def test_the_events_socket_closes_when_live_events_were_lost_and_a_new_one_gets_them(
    tmp_path: Path, redis: aioredis.Redis
) -> None:
    """A web process lost its Redis pub/sub connection: what was published
    meanwhile never reached the inbox, which would go on showing a silent feed
    as live. The socket closes instead (1012), so the inbox reconnects and
    reloads; the new socket gets live events again."""
    prefix = f"test:events:{secrets.token_hex(4)}"
    config = redis_hub_config(tmp_path, prefix)
    try:
        async with running_hub(config) as server, aiohttp.ClientSession() as http:
            await add_agent(config, "ana@example.com")
            base = str(server.make_url("")).rstrip("/")
            agent = await Agent.login(http, base, "ana@example.com")
            hub = server.app[HUB]
            async with agent.events() as events:
                await hub.live.publish(AGENTS_CHANNEL, {"type": "probe", "n": 1})
                await next_frame(events, "probe", n=1)
                await redis.client_kill_filter(_id=await live_connection_id(hub.live, redis))
                closing = await closed(events)
                assert closing.data == WSCloseCode.SERVICE_RESTART
            async with agent.events() as again:
                await hub.live.publish(AGENTS_CHANNEL, {"type": "probe", "n": 2})
                await next_frame(again, "probe", n=2)
    finally:
        await redis.delete(f"{prefix}:events", f"{prefix}:events:dead", f"{prefix}:events:errors")


@pytest.mark.redis
async def test_a_visitor_socket_closes_when_live_events_were_lost_and_the_next_one_resumes(
    tmp_path: Path, redis: aioredis.Redis
) -> None:
    """The widget's socket too: left open it would never show a reply published
    while the web process was away from Redis; closed (1012), the widget
    reconnects with its token and the session brings the conversation back."""
    prefix = f"test:events:{secrets.token_hex(4)}"
    config = redis_hub_config(tmp_path, prefix)
    try:
        async with running_hub(config) as server, aiohttp.ClientSession() as http:
            base = str(server.make_url("")).rstrip("/")
            hub = server.app[HUB]
            async with http.ws_connect(f"{base}/chat/ws") as visitor:
                session = await next_frame(visitor, "session")
                await visitor.send_json({"type": "message", "text": "hello?", "client_id": "c1"})
                await next_frame(visitor, "message", client_id="c1")
                await redis.client_kill_filter(_id=await live_connection_id(hub.live, redis))
                closing = await closed(visitor)
                assert closing.data == WSCloseCode.SERVICE_RESTART
            async with http.ws_connect(f"{base}/chat/ws?token={session['visitor_token']}") as again:
                resumed = await next_frame(again, "session")
                assert resumed["visitor_id"] == session["visitor_id"]
                await next_frame(again, "message", client_id="c1")  # the history
    finally:
        await redis.delete(f"{prefix}:events", f"{prefix}:events:dead", f"{prefix}:events:errors")


def redis_hub_config(tmp_path: Path, prefix: str) -> HubConfig:
    """A hub on Redis with keys of its own (``prefix``), so tests never share a stream."""
    return make_config(
        tmp_path,
        **{"redis.url": services.REDIS_URL, "redis.stream": f"{prefix}:events", "redis.live_channel": f"{prefix}:live"},
    )


async def live_connection_id(live: object, redis: aioredis.Redis) -> str:
    """Redis's id of the live bus's pub/sub connection (found by its address)."""
    assert isinstance(live, RedisLiveBus)
    pubsub: Any = live._pubsub
    assert pubsub is not None and pubsub.connection is not None
    host, port = pubsub.connection._writer.get_extra_info("sockname")[:2]
    [found] = [c for c in await redis.client_list() if c["addr"] == f"{host}:{port}"]
    return str(found["id"])


async def closed(events: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """The close frame, past whatever frames come before it."""
    async with asyncio.timeout(10):
        while True:
            msg = await events.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                assert msg.type is aiohttp.WSMsgType.CLOSE, msg
                return msg
