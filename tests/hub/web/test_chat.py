"""The visitor socket's guards and receipts: sites not allowed, abuse limits,
and a read that covers every reply above the one read."""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from hub.app import HUB
from hub.config import ConfigError
from storage.models import Message
from tests.hub.helpers import Agent, add_agent, make_config, next_frame, running_hub


async def _refused(ws: aiohttp.ClientWebSocketResponse) -> tuple[dict[str, Any], int]:
    """The error frame of a socket refused after the upgrade, and its close code."""
    error = await ws.receive_json(timeout=10)
    closing = await ws.receive(timeout=10)
    assert closing.type is aiohttp.WSMsgType.CLOSE, closing
    return error, int(closing.data)


async def test_a_site_not_allowed_is_told_why_and_the_owner_is_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, **{"webchat.allowed_origins": ["https://shop.example"]})
    stranger = f"https://{secrets.token_hex(4)}.example"
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        with caplog.at_level(logging.WARNING, logger="hub.web.chat"):
            for _ in range(2):
                # Upgraded, then refused: a browser cannot read a refused handshake.
                async with http.ws_connect(f"{base}/chat/ws", headers={"Origin": stranger}) as ws:
                    error, code = await _refused(ws)
                assert error["type"] == "error" and error["code"] == "origin_not_allowed"
                assert "webchat.allowed_origins" in error["message"] and stranger in error["message"]
                assert code == 4403
        warnings = [r.getMessage() for r in caplog.records if r.name == "hub.web.chat"]
        assert len(warnings) == 1 and stranger in warnings[0] and "webchat.allowed_origins" in warnings[0]
        async with http.ws_connect(f"{base}/chat/ws", headers={"Origin": "https://shop.example/"}) as ws:
            await next_frame(ws, "session")


async def test_socket_opens_and_new_visitors_per_address_are_limited(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, **{"webchat.limits.connections_per_minute": 4, "webchat.limits.new_visitors_per_hour": 2}
    )
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        tokens = []
        for _ in range(2):
            async with http.ws_connect(f"{base}/chat/ws") as ws:
                tokens.append((await next_frame(ws, "session"))["visitor_token"])
        # A third new visitor from the address: refused, nothing issued.
        async with http.ws_connect(f"{base}/chat/ws") as ws:
            error, code = await _refused(ws)
        assert error["code"] == "rate_limited" and error["retry_after"] > 0 and "visitor_token" not in error
        assert code == 4429
        # A returning visitor is not a new one.
        async with http.ws_connect(f"{base}/chat/ws?token={tokens[0]}") as ws:
            await next_frame(ws, "session")
        # The fourth socket this minute was that one: even a returning visitor waits now.
        async with http.ws_connect(f"{base}/chat/ws?token={tokens[1]}") as ws:
            error, code = await _refused(ws)
        assert error["code"] == "rate_limited" and code == 4429


async def test_a_visitors_frames_are_limited_and_a_message_over_it_is_not_stored(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        **{
            "webchat.limits.messages_per_minute": 2,
            "webchat.limits.typing_per_minute": 1,
            "webchat.limits.identify_per_minute": 1,
        },
    )
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        async with http.ws_connect(f"{base}/chat/ws") as ws:
            token = (await next_frame(ws, "session"))["visitor_token"]
            for n in (1, 2):
                await ws.send_json({"type": "message", "text": f"hello {n}", "client_id": f"c{n}"})
                await next_frame(ws, "message", client_id=f"c{n}")
            await ws.send_json({"type": "message", "text": "hello 3", "client_id": "c3"})
            error = await next_frame(ws, "error")
            assert error["code"] == "rate_limited" and error["client_id"] == "c3" and error["retry_after"] > 0

            await ws.send_json({"type": "identify", "name": "Sara"})
            await next_frame(ws, "identified")
            await ws.send_json({"type": "identify", "name": "Sara B"})
            error = await next_frame(ws, "error")
            assert error["code"] == "rate_limited" and "client_id" not in error

            # Typing over its limit is dropped without a word: the next frame is the pong.
            await ws.send_json({"type": "typing"})
            await ws.send_json({"type": "typing"})
            await ws.send_json({"type": "ping"})
            assert (await next_frame(ws, "*"))["type"] == "pong"
        # Per visitor, not per socket: another tab is over the limit too.
        async with http.ws_connect(f"{base}/chat/ws?token={token}") as ws:
            await next_frame(ws, "session")
            await ws.send_json({"type": "message", "text": "hello 3", "client_id": "c3"})
            assert (await next_frame(ws, "error", client_id="c3"))["code"] == "rate_limited"
        async with server.app[HUB].db.read() as s:
            bodies = (await s.scalars(select(Message.body).where(Message.direction == "in"))).all()
        assert sorted(bodies) == ["hello 1", "hello 2"]


async def test_reading_a_reply_marks_every_earlier_one_read(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        agent = await Agent.login(http, base, "ana@example.com")
        async with agent.events() as events, http.ws_connect(f"{base}/chat/ws") as visitor:
            await next_frame(visitor, "session")
            await visitor.send_json({"type": "message", "text": "hi", "client_id": "c1"})
            ack = await next_frame(visitor, "message", client_id="c1")
            ticket_id = (await next_frame(events, "message.received", message__id=ack["id"]))["ticket"]["id"]
            replies = []
            for n in range(4):
                reply = await agent.post(f"/api/v1/tickets/{ticket_id}/messages", {"body": f"reply {n}"}, 201)
                await next_frame(visitor, "message", id=reply["id"])
                await next_frame(events, "message.status", message__id=reply["id"], message__status="sent")
                replies.append(reply["id"])

            # Shown: the widget acknowledges the third; the first two were shown above it.
            await visitor.send_json({"type": "ack", "id": replies[2]})
            for rid in replies[:3]:
                await next_frame(events, "message.status", message__id=rid, message__status="delivered")
            # Read: the visitor opened the panel on the third.
            await visitor.send_json({"type": "read", "id": replies[2]})
            for rid in replies[:3]:
                await next_frame(events, "message.status", message__id=rid, message__status="read")
            # Each changed once: nothing more about them, and the fourth is untouched.
            await visitor.send_json({"type": "read", "id": replies[2]})
            await visitor.send_json({"type": "read", "id": replies[3]})
            assert (await next_frame(events, "message.status"))["message"]["id"] == replies[3]

        detail = await agent.get(f"/api/v1/tickets/{ticket_id}")
        statuses = {m["id"]: m["status"] for m in detail["messages"]}
        assert [statuses[r] for r in replies] == ["read"] * 4


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("webchat.limits.messages_per_minute", 0, "webchat.limits.messages_per_minute"),
        ("webchat.limits.new_visitors_per_hour", "lots", "webchat.limits.new_visitors_per_hour"),
        ("webchat.limits.sockets", 3, "webchat.limits.sockets: unknown key"),
    ],
)
def test_web_chat_limits_are_checked_at_start_up(tmp_path: Path, key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        make_config(tmp_path, **{key: value})
