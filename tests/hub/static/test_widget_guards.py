"""The widget meeting the hub's guards: a site the hub does not serve, a message
refused as too many too fast, and replies read before a reload."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import WebSocketRoute, expect

from hub.actions import do_create_agent
from hub.app import HUB
from hub.core import Role
from tests.browser import chromium, watch_for_trouble
from tests.hub.helpers import PASSWORD, Agent, make_config, running_hub
from tests.hub.static.pages import open_widget, stored, visitor_says

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]


async def test_a_site_the_hub_does_not_serve_is_told_so_and_not_retried(tmp_path: Path) -> None:
    """The visitor is told neutrally, and offered nothing to type into; the
    site's admin finds the setting to change in the console."""
    config = make_config(tmp_path, **{"bot.enabled": True, "webchat.allowed_origins": ["https://shop.example"]})
    async with running_hub(config) as server, chromium() as browser:
        base = str(server.make_url("")).rstrip("/")
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        warnings: list[str] = []
        page.on("console", lambda m: warnings.append(m.text) if m.type == "warning" else None)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        panel = await open_widget(page, base)
        status = panel.get_by_role("status")
        await expect(status).to_have_text("Chat is unavailable on this site.")
        await expect(panel.get_by_role("textbox")).to_have_count(0)
        await expect(panel.get_by_role("button", name="Attach a file")).to_be_hidden()
        assert any("webchat.allowed_origins" in w for w in warnings), warnings
        # Closing and opening the panel again does not try again either.
        await page.keyboard.press("Escape")
        await page.get_by_role("button", name="Open chat").click()
        await expect(status).to_have_text("Chat is unavailable on this site.")
        await expect(panel.get_by_role("textbox")).to_have_count(0)
        assert await page.evaluate("1") == 1  # a round trip: a new socket would have been seen by now
        assert len(sockets) == 1, sockets
        key = await page.evaluate("() => 'crmHubPending:' + location.host")
        assert await page.evaluate("k => localStorage.getItem(k)", key) is None
        assert problems == []


async def test_a_message_refused_as_too_fast_is_sent_again_by_itself(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"bot.enabled": True})
    async with running_hub(config) as server, chromium() as browser:
        base = str(server.make_url("")).rstrip("/")
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        refused: list[str] = []

        # The hub's answer over its limit, for the first message only: the real
        # limit's window is a minute, too long to wait in a test.
        async def chat_socket(route: WebSocketRoute) -> None:
            server_side = route.connect_to_server()

            def from_page(raw: str | bytes) -> None:
                frame = json.loads(raw)
                if frame.get("type") == "message" and not refused:
                    refused.append(frame["client_id"])
                    error = {
                        "type": "error",
                        "code": "rate_limited",
                        "message": "too many messages; slow down",
                        "client_id": frame["client_id"],
                        "retry_after": 1,
                    }
                    route.send(json.dumps(error))
                else:
                    server_side.send(raw)

            route.on_message(from_page)

        await page.route_web_socket(re.compile(r"/chat/ws"), chat_socket)
        panel = await open_widget(page, base)
        await expect(panel).to_contain_text("Hi! Ask us anything.")
        await visitor_says(page, "is my parcel late?")
        await expect(panel.locator(".m.contact.pending")).to_contain_text("Not sent.")
        # Nobody clicks "Send again".
        await expect(stored(panel)).to_have_text(["You: is my parcel late?"])
        await expect(panel.locator(".m.contact")).to_have_count(1)
        assert len(refused) == 1
        assert problems == []


async def test_replies_read_before_a_reload_are_not_counted_unread_after_it(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        hub = server.app[HUB]
        base = str(server.make_url("")).rstrip("/")
        async with hub.db.write() as s:
            await do_create_agent(s, email="ana@example.com", name="Ana", password=PASSWORD, role=Role.ADMIN)
        agent = await Agent.login(http, base, "ana@example.com")
        await agent.put("/api/v1/me/presence", {"presence": "online"})  # no offline form, and no bot replying
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        panel = await open_widget(page, base)
        await visitor_says(page, "hello from the visitor")
        await expect(stored(panel)).to_have_count(1)
        ticket_id = (await agent.get("/api/v1/tickets?status=open,pending"))["items"][0]["id"]

        await page.keyboard.press("Escape")
        replies = [
            (await agent.post(f"/api/v1/tickets/{ticket_id}/messages", {"body": f"reply {n}"}, 201))["id"]
            for n in range(3)
        ]
        badge = page.locator("#crm-hub-widget .badge")
        await expect(badge).to_have_text("3")
        await page.get_by_role("button", name=re.compile("Open chat")).click()
        await expect(badge).to_be_hidden()

        async with asyncio.timeout(30):
            while True:
                messages = (await agent.get(f"/api/v1/tickets/{ticket_id}"))["messages"]
                if [m["status"] for m in messages if m["id"] in replies] == ["read"] * 3:
                    break
                await asyncio.sleep(0.2)

        await page.reload()
        await expect(page.locator("#crm-hub-widget .m.agent")).to_have_count(3)
        await expect(badge).to_be_hidden()
        assert problems == []
