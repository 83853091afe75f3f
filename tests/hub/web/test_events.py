"""The agents' live feed stops with the token that opened it: a logged-out or
expired token closes the socket, and the agent is no longer kept online."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import aiohttp
from sqlalchemy import update

from hub.app import HUB, WEBSOCKETS
from hub.core import utcnow
from hub.security import token_digest
from storage.models import Agent as AgentRow
from storage.models import ApiToken
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
