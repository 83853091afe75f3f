"""``/api/v1/events``: the agents' live feed (new tickets, messages, statuses,
assignments, typing), from whichever process produced them (the live bus)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSMsgType, web

from channels.base import InvalidPayload
from channels.webchat import decode_frame
from hub import metrics
from hub.app import HUB, WEBSOCKETS
from hub.router import do_heartbeat
from hub.web.api import API, current_agent
from hub.web.registry import ROUTES
from hub.workers import AGENTS_CHANNEL

log = logging.getLogger(__name__)


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
    `ticket.handoff`, `sla.warning`, `sla.breach` (with the agent ids to `notify`),
    `agent.presence`, `contact.merged`, `typing`) and the ticket, message or agent
    it concerns, in the same shapes as the REST API. Send `{"type": "ping"}` to get
    a `pong`. While connected, the agent is seen (their presence stays online)."""
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

    async def heartbeat() -> None:
        # The open inbox keeps the agent seen (and brings them back online after
        # a lost connection); when it stops, the router's sweeper makes them away.
        while not ws.closed:
            try:
                async with hub.db.write() as session:
                    await do_heartbeat(session, agent.id)
            except Exception:
                log.warning("could not record agent %s heartbeat", agent.id, exc_info=True)
            await asyncio.sleep(hub.config.routing.presence.heartbeat_seconds)

    task = asyncio.create_task(forward())
    beat = asyncio.create_task(heartbeat())
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
            else:
                await ws.send_json(
                    {"type": "error", "code": "invalid_frame", "message": f"unknown frame type {frame['type']!r}"}
                )
    finally:
        task.cancel()
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        request.app[WEBSOCKETS].discard(ws)
        metrics.LIVE_CONNECTIONS.labels("agent").dec()
    return ws
