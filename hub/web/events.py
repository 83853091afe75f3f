"""``/api/v1/events``: the agents' live feed (new tickets, messages, statuses,
assignments, typing), from whichever process produced them (the live bus)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from channels.base import InvalidPayload
from channels.webchat import decode_frame
from hub import metrics
from hub.app import HUB, WEBSOCKETS, Hub
from hub.web.api import API, current_agent
from hub.web.registry import ROUTES
from hub.workers import AGENTS_CHANNEL
from storage.models import Agent

# Frame types agents may send besides ping, added by other route modules on
# import (the inbox's typing indicator). A handler answers with a frame or None,
# and raises InvalidPayload for a frame it cannot take.
AgentFrameHandler = Callable[[Hub, Agent, dict[str, Any]], Awaitable["dict[str, Any] | None"]]
AGENT_FRAMES: dict[str, AgentFrameHandler] = {}


@ROUTES.route(
    "GET",
    f"{API}/events",
    summary="Live ticket and message events for the inbox (websocket)",
    tag="events",
    websocket=True,
    query={"token": "the bearer token, for browsers that cannot set headers on a websocket"},
)
async def agent_events(request: web.Request) -> web.StreamResponse:
    """Each frame is JSON with a `type` (`message.received`, `message.created`,
    `message.status`, `ticket.assigned`, `ticket.status_changed`, `ticket.routed`,
    `contact.merged`, `typing`) and the ticket and/or message it concerns, in
    the same shapes as the REST API. Send `{"type": "ping"}` to get a `pong`,
    and `{"type": "typing", "ticket_id": N}` while writing a reply: a web chat
    visitor sees "typing", and so do the other agents."""
    hub = request.app[HUB]
    agent = await current_agent(request)
    ws = web.WebSocketResponse(heartbeat=30.0)
    await ws.prepare(request)
    request.app[WEBSOCKETS].add(ws)
    metrics.LIVE_CONNECTIONS.labels("agent").inc()

    async def forward() -> None:
        async for event in hub.live.subscribe(AGENTS_CHANNEL):
            if ws.closed:
                return
            await ws.send_json(event)

    task = asyncio.create_task(forward())
    try:
        # Lets the forwarder register before hello (exact in-process; on Redis
        # the subscription lags by a round trip, and the inbox reloads on connect).
        await asyncio.sleep(0)
        await ws.send_json({"type": "hello", "agent_id": agent.id})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                frame = decode_frame(msg.data)
            except InvalidPayload as exc:
                await ws.send_json({"type": "error", "code": "invalid_frame", "message": str(exc)})
                continue
            if frame["type"] == "ping":
                await ws.send_json({"type": "pong"})
            elif frame["type"] in AGENT_FRAMES:
                try:
                    answer = await AGENT_FRAMES[frame["type"]](hub, agent, frame)
                except InvalidPayload as exc:
                    await ws.send_json({"type": "error", "code": "invalid_frame", "message": str(exc)})
                    continue
                if answer is not None:
                    await ws.send_json(answer)
            else:
                await ws.send_json(
                    {"type": "error", "code": "invalid_frame", "message": f"unknown frame type {frame['type']!r}"}
                )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task
        request.app[WEBSOCKETS].discard(ws)
        metrics.LIVE_CONNECTIONS.labels("agent").dec()
    return ws
