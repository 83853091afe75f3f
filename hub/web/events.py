"""``/api/v1/events``: the agents' live feed (new tickets, messages, statuses,
assignments, typing), from whichever process produced them (the live bus)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from channels.base import InvalidPayload
from channels.webchat import decode_frame
from hub import codec, metrics
from hub.actions import check_token
from hub.app import HUB, WEBSOCKETS, Hub
from hub.errors import Unauthorized
from hub.router import do_heartbeat
from hub.web.api import API, bearer_token, current_agent
from hub.web.registry import ROUTES
from hub.workers import AGENTS_CHANNEL
from storage.models import Agent

# Frame types agents may send besides ping, added by other route modules on
# import (the inbox's typing indicator). A handler answers with a frame or None,
# and raises InvalidPayload for a frame it cannot take.
AgentFrameHandler = Callable[[Hub, Agent, dict[str, Any]], Awaitable["dict[str, Any] | None"]]
AGENT_FRAMES: dict[str, AgentFrameHandler] = {}

# "Service restart": the inbox reconnects on any close but 4401, and reloads
# its tickets and the open conversation once connected again.
FEED_INTERRUPTED = WSCloseCode.SERVICE_RESTART

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
    `message.status`, `message.updated`, `ticket.assigned`, `ticket.status_changed`,
    `ticket.routed`, `ticket.handoff`, `ticket.priority_changed`, `ticket.labels_changed`
    (with the labels `from` and `to` in `data`), `sla.warning`, `sla.breach` (with the
    agent ids to `notify`), `agent.presence`, `contact.merged`,
    `contact.identity_linked`, `contact.source`, `contact.reachability`,
    `contact.updated` (with the `contact_id` and what `changed`), `typing`) and the
    ticket, message, contact or agent it concerns, in the same shapes as the REST API. Send `{"type": "ping"}` to get
    a `pong`, and `{"type": "typing", "ticket_id": N}` while writing a reply: a web
    chat visitor sees "typing", and so do the other agents. While connected, the
    agent is seen (their presence stays online). The token is checked again
    every `routing.presence.heartbeat_seconds`: once it is logged out, expired
    or its agent deactivated, an `error` frame (code `unauthorized`) is sent
    and the socket closes with code 4401. When live events may have been
    lost (a web process lost its Redis connection), the socket closes with
    code 1012: reconnect, then reload the tickets, as after any reconnect."""
    hub = request.app[HUB]
    agent = await current_agent(request)
    token = bearer_token(request)
    ws = web.WebSocketResponse(heartbeat=30.0)
    await ws.prepare(request)
    request.app[WEBSOCKETS].add(ws)
    metrics.LIVE_CONNECTIONS.labels("agent").inc()

    async def forward(feed: AsyncIterator[dict[str, Any]]) -> None:
        async for event in feed:
            if ws.closed:
                return
            await ws.send_str(codec.dumps(event))
        # The feed ended: the live bus closed, or this feed missed events (its
        # Redis connection dropped). A socket left open would stay silent and
        # the inbox would never know; closed, it reconnects and reloads.
        await ws.close(code=FEED_INTERRUPTED, message=b"live events were interrupted; reconnect")

    async def error(message: str, code: str = "invalid_frame") -> None:
        await ws.send_str(codec.dumps({"type": "error", "code": code, "message": message}))

    async def heartbeat() -> None:
        # The open inbox keeps the agent seen (and brings them back online after
        # a lost connection); when it stops, the router's sweeper makes them away.
        while not ws.closed:
            try:
                async with hub.db.write() as session:
                    # Checked again on every beat, not only at connect: a token
                    # logged out, expired or of a deactivated agent must stop
                    # the feed, and must not keep the agent online for routing.
                    await check_token(session, token)
                    await do_heartbeat(session, agent.id)
            except Unauthorized as exc:
                with contextlib.suppress(ConnectionError):
                    await ws.send_str(codec.dumps({"type": "error", "code": "unauthorized", "message": str(exc)}))
                await ws.close(code=4401, message=b"the token is no longer valid")
                return
            except Exception:
                log.warning("could not record agent %s heartbeat", agent.id, exc_info=True)
            await asyncio.sleep(hub.config.routing.presence.heartbeat_seconds)

    try:
        # Subscribed (confirmed, on Redis) before hello: from hello on, the
        # inbox misses nothing and reloads only what came before it.
        async with hub.live.listen(AGENTS_CHANNEL) as feed:
            await ws.send_str(codec.dumps({"type": "hello", "agent_id": agent.id}))
            task = asyncio.create_task(forward(feed))
            beat = asyncio.create_task(heartbeat())
            try:
                async for msg in ws:
                    if msg.type != WSMsgType.TEXT:
                        continue
                    try:
                        frame = decode_frame(msg.data)
                    except InvalidPayload as exc:
                        await error(str(exc))
                        continue
                    if frame["type"] == "ping":
                        await ws.send_str(codec.dumps({"type": "pong"}))
                    elif frame["type"] in AGENT_FRAMES:
                        try:
                            answer = await AGENT_FRAMES[frame["type"]](hub, agent, frame)
                        except InvalidPayload as exc:
                            await error(str(exc))
                            continue
                        except Exception:
                            # One frame that fails must not cost the inbox its live feed.
                            log.exception("agent frame failed", extra={"agent": agent.id, "frame": frame["type"]})
                            failed = f"the {frame['type']!r} frame could not be handled; try again"
                            await error(failed, "internal_error")
                            continue
                        if answer is not None:
                            await ws.send_str(codec.dumps(answer))
                    else:
                        await error(f"unknown frame type {frame['type']!r}")
            finally:
                task.cancel()
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await task
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
    finally:
        request.app[WEBSOCKETS].discard(ws)
        metrics.LIVE_CONNECTIONS.labels("agent").dec()
    return ws
