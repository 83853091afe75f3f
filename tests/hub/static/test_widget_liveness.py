"""A connection that goes silent without closing (a laptop asleep, a mobile
carrier's NAT forgetting it): the widget pings, and drops a link that does
not answer, so the usual reconnect delivers what the visitor wrote."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, WebSocketRoute, expect

from tests.browser import chromium, watch_for_trouble
from tests.hub.helpers import make_config, running_hub
from tests.hub.static.pages import open_widget, stored, visitor_says

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]


class Links:
    """Every socket the page opens, relayed to the hub; a frozen one carries
    nothing either way, and stays open."""

    def __init__(self) -> None:
        self.frozen: set[int] = set()
        self.opened = 0
        self.to_hub: list[dict[str, Any]] = []
        self.to_page: list[dict[str, Any]] = []

    async def route(self, route: WebSocketRoute) -> None:
        n = self.opened
        self.opened += 1
        hub_side = route.connect_to_server()

        def to_hub(raw: str | bytes) -> None:
            self.to_hub.append(json.loads(raw))
            if n not in self.frozen:
                hub_side.send(raw)

        def to_page(raw: str | bytes) -> None:
            self.to_page.append(json.loads(raw))
            if n not in self.frozen:
                route.send(raw)

        route.on_message(to_hub)
        hub_side.on_message(to_page)

    def count(self, kind: str, frames: list[dict[str, Any]] | None = None) -> int:
        return sum(1 for f in (self.to_hub if frames is None else frames) if f.get("type") == kind)


async def _until(check: Any, what: str) -> None:
    async with asyncio.timeout(20):
        while not check():
            await asyncio.sleep(0.1)
    assert check(), what


async def test_a_silent_connection_is_dropped_and_what_was_written_is_delivered(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"bot.enabled": True})  # the bot "answers": no offline form
    async with running_hub(config) as server, chromium() as browser:
        base = str(server.make_url("")).rstrip("/")
        page: Page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        links = Links()
        # The page's own timers, moved on by the test: no waiting 35 s for real.
        await page.clock.install()
        await page.route_web_socket(re.compile(r"/chat/ws"), links.route)
        panel = await open_widget(page, base)
        await visitor_says(page, "first")
        await expect(stored(panel)).to_have_count(1)

        links.frozen.add(links.opened - 1)
        await visitor_says(page, "written into the silence")
        await expect(panel.locator(".m.contact.pending")).to_contain_text("Sending…")
        await page.clock.fast_forward(26_000)
        await _until(lambda: links.count("ping") == 1, "a ping every 25 s")
        await page.clock.fast_forward(11_000)
        # No answer in 10 s: dropped, without waiting for a close handshake
        # the dead link would never complete, and a new socket resends.
        await expect(stored(panel)).to_have_count(2)
        await expect(stored(panel).last).to_contain_text("written into the silence")
        await expect(panel.get_by_role("status")).to_have_text("")
        assert links.opened == 2

        # Back online, or back to the tab: checked at once, not 25 s later.
        pongs = links.count("pong", links.to_page)
        await page.evaluate("window.dispatchEvent(new Event('online'))")
        await _until(lambda: links.count("ping") == 2, "a ping when the browser is back online")
        await _until(lambda: links.count("pong", links.to_page) == pongs + 1, "the hub's pong")
        await page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
        await _until(lambda: links.count("ping") == 3, "a ping when the tab is shown again")
        await _until(lambda: links.count("pong", links.to_page) == pongs + 2, "the hub's pong")
        # Answered: the live link is kept.
        await page.clock.fast_forward(11_000)
        await visitor_says(page, "still here")
        await expect(stored(panel)).to_have_count(3)
        assert links.opened == 2
        assert problems == []
