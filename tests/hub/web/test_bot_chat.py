"""The bot end to end, as a new user tries it: an admin imports a knowledge
base through the API, a visitor talks to the bot over the real web chat
websocket, an agent watches the inbox's live events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.bots.conversation import KB
from tests.hub.helpers import Agent, add_agent, make_config, next_frame, running_hub


@asynccontextmanager
async def chat(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Agent, aiohttp.ClientWebSocketResponse]]:
    config = make_config(tmp_path, **{"bot.enabled": True, **overrides})
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")
            imported = await agent.post(
                "/api/v1/faq/import", {"format": "yaml", "content": yaml.safe_dump(KB, allow_unicode=True)}
            )
            assert len(imported["created"]) == len(KB)
            async with http.ws_connect(f"{base}/chat/ws") as visitor:
                await next_frame(visitor, "session")
                yield agent, visitor


class Visitor:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.n = 0

    async def say(self, text: str, quick_reply: str | None = None) -> dict[str, Any]:
        """Send a message; return the bot's answer to it."""
        self.n += 1
        frame: dict[str, Any] = {"type": "message", "text": text, "client_id": f"c{self.n}"}
        if quick_reply is not None:
            frame["quick_reply"] = quick_reply
        await self.ws.send_json(frame)
        await next_frame(self.ws, "message", client_id=f"c{self.n}")
        return await next_frame(self.ws, "message", author="bot", timeout=30)


async def test_faq_answered_in_persian_and_in_english(tmp_path: Path) -> None:
    async with chat(tmp_path) as (agent, ws):
        visitor = Visitor(ws)
        fa = await visitor.say("سفارش من كي ميرسد؟")
        assert fa["text"].startswith("سفارش‌ها ظرف ۳ تا ۵ روز کاری می‌رسند.")
        # Named after the bot's turn they rate (fb:yes:<turn id>).
        assert [q["id"].rsplit(":", 1)[0] for q in fa["quick_replies"]] == ["fb:yes", "fb:no"]
        assert [q["title"] for q in fa["quick_replies"]] == ["بله", "خیر"]
        en = await visitor.say("How do I return an item?")
        assert en["text"].startswith("You can return anything within 30 days")
        assert [q["title"] for q in en["quick_replies"]] == ["Yes", "No"]
        glad = await visitor.say("Yes", quick_reply="fb:yes")
        assert glad["text"] == "Glad I could help!"
        (ticket,) = (await agent.get("/api/v1/tickets?status=pending"))["items"]
        detail = await agent.get(f"/api/v1/tickets/{ticket['id']}")
        assert [m["author"] for m in detail["messages"]] == ["contact", "bot", "contact", "bot", "contact", "bot"]


async def test_clarification_buttons_and_the_visitors_choice(tmp_path: Path) -> None:
    async with chat(tmp_path, **{"bot.answer_threshold": 0.99, "bot.clarify_threshold": 0.0}) as (_, ws):
        visitor = Visitor(ws)
        offer = await visitor.say("delivery of my refund")
        assert offer["text"] == "Did you mean one of these?"
        ids = [q["id"] for q in offer["quick_replies"]]
        assert ids[-1] == "bot:none" and len(ids) == 4
        assert "faq:return-policy" in ids
        title = next(q["title"] for q in offer["quick_replies"] if q["id"] == "faq:return-policy")
        answer = await visitor.say(title, quick_reply="faq:return-policy")
        assert answer["text"].startswith("You can return anything within 30 days")


async def test_a_handoff_on_request_reaches_the_agent_live_with_the_note(tmp_path: Path) -> None:
    async with chat(tmp_path) as (agent, ws), agent.events() as events:
        visitor = Visitor(ws)
        await visitor.say("how long does shipping take")
        bye = await visitor.say("I want to talk to a human")
        assert bye["text"].startswith("I'm connecting you with a member of our team")
        handoff = await next_frame(events, "ticket.handoff", timeout=30)
        assert handoff["data"]["reason"] == "requested"
        assert handoff["ticket"]["status"] == "open"
        detail = await agent.get(f"/api/v1/tickets/{handoff['ticket']['id']}")
        (note,) = [m for m in detail["messages"] if m["private"]]
        lines = note["body"].splitlines()
        assert lines[:3] == [
            "Bot handoff: the customer asked for a person.",
            "Conversation with the bot:",
            "- Customer: how long does shipping take",
        ]
        assert lines[3].startswith("  Bot: answered shipping-time (confidence 0.")
        assert lines[4] == "- Customer: I want to talk to a human"
        # The agent answers; the visitor sees it, and the bot stays quiet.
        await agent.post(f"/api/v1/tickets/{handoff['ticket']['id']}/messages", {"body": "Hi, Ana here"}, 201)
        got = await next_frame(ws, "message", author="agent")
        assert got["text"] == "Hi, Ana here"
        await ws.send_json({"type": "message", "text": "how long does shipping take?", "client_id": "late"})
        late = await next_frame(ws, "message", client_id="late")
        # The live event leaves after every worker step (the bot's too) ran for it.
        await next_frame(events, "message.received", message__id=late["id"], timeout=30)
        messages = (await agent.get(f"/api/v1/tickets/{handoff['ticket']['id']}"))["messages"]
        assert [m["author"] for m in messages if m["author"] == "bot" and not m["private"]] == ["bot", "bot"]
