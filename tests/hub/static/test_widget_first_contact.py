"""The widget before the hub has answered for the first time (the hub down, a
slow link), and a visitor's first message meeting the offline form: nothing
written is lost, asked for twice, or hidden; and the form's errors are the
widget's own words, in the widget's language."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.async_api import Page, WebSocketRoute, expect
from sqlalchemy import select

from hub.app import HUB, Hub
from storage.models import Identity, Message
from tests.browser import chromium, screenshot, watch_for_trouble
from tests.hub.helpers import make_config, running_hub
from tests.hub.static.pages import open_widget, stored

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]

DOWN = "Chat is temporarily unavailable, we're reconnecting…"


async def _inbound(hub: Hub) -> list[str]:
    async with hub.db.read() as s:
        return list((await s.scalars(select(Message.body).where(Message.direction == "in").order_by(Message.id))).all())


async def _hub_down_until(page: Page, link: dict[str, bool]) -> None:
    async def chat_socket(route: WebSocketRoute) -> None:
        if link["down"]:
            await route.close()
        else:
            route.connect_to_server()

    await page.route_web_socket(re.compile(r"/chat/ws"), chat_socket)


async def test_a_new_visitor_is_told_the_chat_is_down_and_writes_only_once_it_answers(tmp_path: Path) -> None:
    config = make_config(tmp_path)  # nobody online and no bot: the offline form
    async with running_hub(config) as server, chromium() as browser:
        hub = server.app[HUB]
        base = str(server.make_url("")).rstrip("/")
        context = await browser.new_context()
        link = {"down": True}

        # Persian: a title and a note in the widget's language, not a blank header.
        fa = await context.new_page()
        await _hub_down_until(fa, link)
        await fa.goto(f"{base}/demo/fa")
        await fa.get_by_role("button", name="باز کردن گفتگو").click()
        fa_panel = fa.get_by_role("dialog", name="گفتگو با ما")
        await expect(fa_panel.get_by_role("status")).to_have_text("گفتگو موقتاً در دسترس نیست، در حال اتصال دوباره…")
        await expect(fa_panel.get_by_role("textbox")).to_have_count(0)
        await fa.close()

        page = await context.new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await _hub_down_until(page, link)
        panel = await open_widget(page, base)
        await expect(page.get_by_role("dialog", name="Chat with us")).to_be_visible()
        status = panel.get_by_role("status")
        await expect(status).to_have_text(DOWN)
        # Nothing to write into yet: a message sent now would end up hidden
        # behind the offline form, which would ask for it again.
        await expect(panel.get_by_role("textbox")).to_have_count(0)
        await screenshot(page, "widget-hub-down")

        link["down"] = False
        await expect(panel).to_contain_text("Nobody is available right now", timeout=60_000)
        await expect(status).to_have_text("")
        await panel.get_by_label("Your message").fill("Where is my parcel?")
        await panel.get_by_label("Email or phone number").fill("sara@example.com")
        await panel.get_by_role("button", name="Send message").click()
        await expect(stored(panel)).to_have_text(["You: Where is my parcel?"])
        assert await _inbound(hub) == ["Where is my parcel?"]
        assert problems == []


async def test_a_message_left_unsent_on_an_earlier_page_is_shown_not_asked_for_again(tmp_path: Path) -> None:
    config = make_config(tmp_path)  # nobody online and no bot: the offline form
    async with running_hub(config) as server, chromium() as browser:
        hub = server.app[HUB]
        base = str(server.make_url("")).rstrip("/")
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await page.goto(f"{base}/")
        key = await page.evaluate("() => 'crmHubPending:' + location.host")
        pending = json.dumps([{"type": "message", "text": "Is my order shipped?", "client_id": "earlier1"}])
        await page.evaluate("([k, v]) => localStorage.setItem(k, v)", [key, pending])
        await page.reload()
        await page.get_by_role("button", name="Open chat").click()
        panel = page.get_by_role("dialog")
        await expect(panel).to_contain_text("Nobody is available right now")
        # The message is on screen and sent once; the form asks only how to reply.
        await expect(stored(panel)).to_have_text(["You: Is my order shipped?"])
        await expect(panel.get_by_label("Your message")).to_have_count(0)
        await screenshot(page, "widget-offline-after-pending")
        await panel.get_by_label("Email or phone number").fill("sara@example.com")
        await panel.get_by_role("button", name="Send message").click()
        await expect(panel.locator(".m.system")).to_have_text("Thanks! We will get back to you at sara@example.com.")
        await expect(panel.get_by_role("textbox", name="Write a message")).to_be_visible()
        await expect(panel.locator(".m.contact")).to_have_count(1)
        assert await _inbound(hub) == ["Is my order shipped?"]
        async with hub.db.read() as s:
            emails = (await s.scalars(select(Identity.address).where(Identity.channel == "email"))).all()
        assert emails == ["sara@example.com"]
        assert problems == []


async def test_a_persian_visitor_reads_why_their_number_was_refused_in_persian(tmp_path: Path) -> None:
    config = make_config(tmp_path)  # no default phone region: a number needs its country code
    async with running_hub(config) as server, chromium() as browser:
        base = str(server.make_url("")).rstrip("/")
        page = await (await browser.new_context(viewport={"width": 375, "height": 667})).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        warnings: list[str] = []
        page.on("console", lambda m: warnings.append(m.text) if m.type == "warning" else None)
        await page.goto(f"{base}/demo/fa")
        await page.get_by_role("button", name="باز کردن گفتگو").click()
        panel = page.get_by_role("dialog")
        await panel.get_by_label("پیام شما").fill("سفارشم کی می‌رسد؟")
        await panel.get_by_label("ایمیل یا شماره تلفن").fill("۰۹۱۲۱۲۳۴۵۶۷")
        await panel.get_by_role("button", name="ارسال پیام").click()
        error = panel.locator("#crmhub-err-contact")
        await expect(error).to_have_text("لطفاً شماره را با کد کشور وارد کنید، مثلاً \u2066+98 912 …\u2069.")
        await expect(error).to_have_attribute("dir", "auto")
        await screenshot(page, "widget-fa-phone-refused")
        # The hub's own words are still there, for whoever runs the site.
        assert any("is not a phone number" in w for w in warnings), warnings
        await panel.get_by_label("ایمیل یا شماره تلفن").fill("+۹۸۹۱۲۱۲۳۴۵۶۷")
        await panel.get_by_role("button", name="ارسال پیام").click()
        await expect(stored(panel)).to_contain_text("سفارشم کی می‌رسد؟")
        assert problems == []
