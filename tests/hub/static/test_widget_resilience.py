"""The widget on pages and browsers that are not the demo's: another direction
than the page's, site storage blocked, a hub that takes the socket and then
fails, replies written while the visitor was offline, and names with "$&"."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Route, WebSocketRoute, expect
from sqlalchemy import select

from hub.actions import do_create_agent
from hub.app import HUB
from hub.core import Role
from storage import queries
from storage.models import Ticket
from tests.browser import block_site_storage, chromium, watch_for_trouble
from tests.hub.helpers import PASSWORD, Agent, make_config, running_hub
from tests.hub.static.pages import open_widget, stored, visitor_says

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]


def _page(lang: str, direction: str, widget_lang: str) -> str:
    return (
        f'<!doctype html><html lang="{lang}" dir="{direction}"><head><meta charset="utf-8"><title>shop</title></head>'
        f'<body><p>A shop.</p><script src="/widget.js" data-lang="{widget_lang}" async></script></body></html>'
    )


def _serving(html: str) -> Callable[[Route], Awaitable[None]]:
    async def serve(route: Route) -> None:
        await route.fulfill(content_type="text/html; charset=utf-8", body=html)

    return serve


async def test_launcher_and_panel_share_a_corner_whatever_the_page_direction(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"bot.enabled": True})
    async with running_hub(config) as server, chromium() as browser:
        base = str(server.make_url("")).rstrip("/")
        for lang, direction, widget_lang, side in (("fa", "rtl", "en", "right"), ("en", "ltr", "fa", "left")):
            page = await (await browser.new_context(viewport={"width": 1000, "height": 700})).new_page()
            await page.route(f"{base}/shop", _serving(_page(lang, direction, widget_lang)))
            await page.goto(f"{base}/shop")
            button = page.locator("#crm-hub-widget .btn")
            await button.click()
            panel = page.get_by_role("dialog")
            await expect(panel).to_be_visible()
            launcher, box = await button.bounding_box(), await panel.bounding_box()
            assert launcher is not None and box is not None
            if side == "right":
                assert launcher["x"] > 500 and box["x"] > 500, (launcher, box)
                assert abs((launcher["x"] + launcher["width"]) - (box["x"] + box["width"])) < 2
            else:
                assert launcher["x"] < 500 and box["x"] < 500, (launcher, box)
                assert abs(launcher["x"] - box["x"]) < 2


async def test_the_widget_works_when_site_storage_is_blocked(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"bot.enabled": True})  # the bot "answers": no offline form
    async with running_hub(config) as server, chromium() as browser:
        base = str(server.make_url("")).rstrip("/")
        context = await browser.new_context()
        await block_site_storage(context)
        page = await context.new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        panel = await open_widget(page, base)
        await visitor_says(page, "can you hear me?")
        await expect(stored(panel)).to_have_text(["You: can you hear me?"])
        assert problems == []


async def test_a_hub_that_takes_the_socket_and_then_fails_is_not_hammered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path, **{"bot.enabled": True})
    async with running_hub(config) as server, chromium() as browser:
        base = str(server.make_url("")).rstrip("/")
        attempts: list[float] = []

        async def broken(*args: Any, **kwargs: Any) -> Any:
            attempts.append(asyncio.get_running_loop().time())
            raise RuntimeError("the database is down")

        # The upgrade succeeds, then reading the conversation fails: open, then closed.
        monkeypatch.setattr(queries, "visitor_conversation", broken)
        page = await (await browser.new_context()).new_page()
        panel = await open_widget(page, base)
        # Never connected: the visitor is told why the panel is empty.
        await expect(panel.get_by_role("status")).to_have_text("Chat is temporarily unavailable, we're reconnecting…")
        await asyncio.sleep(6)
        # Doubling from half a second (jittered): 4 or 5 tries in 6 s; a backoff
        # reset by every open would have tried about twice a second.
        assert 1 <= len(attempts) <= 6, attempts


async def test_replies_written_while_the_visitor_was_offline_show_on_reconnect(tmp_path: Path) -> None:
    """And a name with "$&" in it is shown as written."""
    config = make_config(tmp_path, **{"bot.enabled": True})
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        hub = server.app[HUB]
        base = str(server.make_url("")).rstrip("/")
        async with hub.db.write() as s:
            await do_create_agent(s, email="ana@example.com", name="$&Ana Smith", password=PASSWORD, role=Role.ADMIN)
        agent = await Agent.login(http, base, "ana@example.com")
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        link: dict[str, Any] = {"down": False, "route": None}

        async def chat_socket(route: WebSocketRoute) -> None:
            if link["down"]:
                await route.close()
            else:
                link["route"] = route
                route.connect_to_server()

        await page.route_web_socket(re.compile(r"/chat/ws"), chat_socket)
        panel = await open_widget(page, base)
        await visitor_says(page, "is anyone there?")
        await expect(stored(panel)).to_have_count(1)
        async with hub.db.read() as s:
            ticket_id = (await s.scalars(select(Ticket.id))).one()

        async with agent.events() as events:
            # Sent again until it shows, as the inbox resends it while the agent
            # writes (every 2.5 s): on a slow machine one frame can be lost.
            status = panel.get_by_role("status")
            async with asyncio.timeout(30):
                while await status.text_content() != "$&Ana is typing…":
                    await events.send_json({"type": "typing", "ticket_id": ticket_id})
                    await asyncio.sleep(1)

        link["down"] = True
        route = link["route"]
        assert isinstance(route, WebSocketRoute)
        await route.close()
        await expect(panel.get_by_role("status")).to_have_text("Reconnecting…")
        await agent.post(f"/api/v1/tickets/{ticket_id}/messages", {"body": "Yes! How can I help?"}, 201)
        link["down"] = False
        await expect(panel.locator(".m.agent")).to_contain_text("Yes! How can I help?", timeout=60_000)
        await expect(panel.locator(".m.agent")).to_have_count(1)
        assert problems == []
