"""A visitor sends files from the widget, embedded on another site: the
paperclip, the file in their conversation, the agent's copy, and the files
the hub (or the widget) refuses."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Locator, Page, Route, expect

from hub.core import Role
from tests.browser import chromium, screenshot, watch_for_trouble
from tests.hub.helpers import Agent, add_agent, make_config, running_hub
from tests.hub.static.pages import stored


def _png() -> bytes:
    """A real 2x2 red PNG, so the thumbnail has something to draw."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


async def _choose(page: Page, panel: Locator, name: str, mime: str, data: bytes) -> None:
    async with page.expect_file_chooser() as chosen:
        await panel.get_by_role("button", name="Attach a file").click()
    await (await chosen.value).set_files({"name": name, "mimeType": mime, "buffer": data})


async def _unreachable(route: Route) -> None:
    await route.abort()


@pytest.mark.browser
@pytest.mark.timeout(300)
async def test_a_visitor_sends_files_with_the_paperclip_from_another_site(tmp_path: Path) -> None:
    # The shop's page, on another origin than the hub's; it learns the hub's
    # address once the hub runs.
    hub_base: list[str] = []

    async def shop(request: web.Request) -> web.Response:
        script = f'<script src="{hub_base[0]}/widget.js" async></script>'
        return web.Response(
            text=f'<!doctype html><html lang="en"><body>{script}</body></html>', content_type="text/html"
        )

    site_app = web.Application()
    site_app.router.add_get("/", shop)
    site = TestServer(site_app)
    await site.start_server()
    site_origin = str(site.make_url("")).rstrip("/")
    config = make_config(
        tmp_path,
        **{
            "webchat.allowed_origins": [site_origin],
            "webchat.limits.uploads_per_hour": 2,
            "attachments.max_bytes": 1024 * 1024,
        },
    )
    try:
        async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
            base = str(server.make_url("")).rstrip("/")
            hub_base.append(base)
            await add_agent(config, "ana@example.com", Role.ADMIN)
            agent = await Agent.login(http, base, "ana@example.com")
            await agent.put("/api/v1/me/presence", {"presence": "online"})

            page = await (await browser.new_context()).new_page()
            problems: list[str] = []
            watch_for_trouble(page, problems)
            await page.goto(f"{site_origin}/")
            await page.get_by_role("button", name="Open chat").click()
            panel = page.get_by_role("dialog")
            await expect(panel.get_by_role("textbox", name="Write a message")).to_be_visible()

            png = _png()
            await _choose(page, panel, "error.png", "image/png", png)
            image = stored(panel).locator("img")
            await expect(image).to_have_count(1)
            await expect(image).to_have_attribute("alt", "error.png")
            # Drawn, not a broken image: the hub served it to the other site's page.
            await page.wait_for_function(
                "document.querySelector('#crm-hub-widget').shadowRoot.querySelector('.m.contact[data-id] img')"
                ".naturalWidth === 2"
            )
            await _choose(page, panel, "invoice.pdf", "application/pdf", b"%PDF-1.4 invoice")
            link = stored(panel).get_by_role("link", name="invoice.pdf")
            await expect(link).to_have_count(1)
            await screenshot(page, "widget-upload")

            # Refused by the widget itself: larger than attachments.max_bytes.
            await _choose(page, panel, "video.png", "image/png", b"x" * (1024 * 1024 + 1))
            await expect(panel.locator(".m.contact.failed").last).to_contain_text(
                "video.png" + "Not sent: the file is larger than 1 MB"
            )
            # Refused by the hub: over webchat.limits.uploads_per_hour.
            await _choose(page, panel, "third.png", "image/png", png)
            await expect(panel.locator(".m.contact.failed").last).to_contain_text(
                "third.png" + "Not sent: too many at once; please wait a moment"
            )
            # Never reached the hub: the browser's own "Failed to fetch" is not for the visitor.
            await page.route(re.compile(r"/chat/attachments"), _unreachable)
            await _choose(page, panel, "fourth.png", "image/png", png)
            await expect(panel.locator(".m.contact.failed").last).to_contain_text(
                "fourth.png" + "Not sent: no connection; please try again"
            )
            assert problems == []

            tickets = (await agent.get("/api/v1/tickets"))["items"]
            detail = await agent.get(f"/api/v1/tickets/{tickets[0]['id']}")
            files = [a for m in detail["messages"] for a in m["attachments"]]
            assert [(a["filename"], a["content_type"], a["size"]) for a in files] == [
                ("error.png", "image/png", len(png)),
                ("invoice.pdf", "application/pdf", 16),
            ]
            async with http.get(f"{base}{files[0]['url']}") as r:
                assert await r.read() == png
    finally:
        await site.close()
