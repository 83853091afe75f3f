"""The inbox and the widget in a real browser (Debian's Chromium, driven by
Playwright): a whole conversation from both sides, right-to-left text, and
markup that must stay text."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import expect

from hub.core import Role
from tests.browser import chromium, screenshot, watch_for_trouble
from tests.hub.helpers import add_agent, make_config, running_hub
from tests.hub.static.pages import log_in, open_widget, visitor_says

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]


async def test_visitor_and_agent_talk_live_and_history_survives_a_reload(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        visitor_ctx, agent_ctx = await browser.new_context(), await browser.new_context()
        visitor, agent = await visitor_ctx.new_page(), await agent_ctx.new_page()
        problems: list[str] = []
        watch_for_trouble(visitor, problems)
        watch_for_trouble(agent, problems)

        # The agent logs in (and so is online) before the visitor arrives.
        await log_in(agent, base, "ana@example.com")
        await agent.get_by_role("button", name="Unassigned").click()
        await expect(agent.locator("#tickets")).to_contain_text("No conversations here.")

        panel = await open_widget(visitor, base)
        await expect(panel).to_contain_text("Hi! Ask us anything.")  # online: straight to the chat
        await visitor_says(visitor, "Hello, where is my order #1042?")
        await expect(panel.locator(".m.contact")).to_have_text("You: Hello, where is my order #1042?")

        # It appears in the agent's list without a reload, unread.
        ticket = agent.locator(".ticket", has_text="Hello, where is my order #1042?")
        await expect(ticket).to_be_visible()
        await expect(ticket.locator(".badge.unread")).to_have_text("1")
        await ticket.click()
        await expect(agent.locator("#messages .msg.in")).to_contain_text("Hello, where is my order #1042?")
        await expect(ticket.locator(".badge.unread")).to_have_count(0)

        # The agent types: the visitor sees it; then the reply arrives.
        reply = agent.get_by_role("textbox", name="Reply")
        await reply.fill("Hi! It ships tomorrow.")
        await expect(visitor.locator("#crm-hub-widget").get_by_role("status").last).to_contain_text("ana is typing")
        await reply.press("Control+Enter")
        await expect(panel.locator(".m.agent")).to_contain_text("Hi! It ships tomorrow.")
        # The visitor's widget read it, and the agent sees so.
        await expect(agent.locator("#messages .msg.out .msg-status")).to_have_text("Read")

        # A private note stays with the agents.
        await agent.get_by_role("button", name="Private note").click()
        await agent.get_by_role("textbox", name="Reply").fill("VIP customer, be quick")
        await agent.get_by_role("button", name="Send").click()
        await expect(agent.locator("#messages .msg.note")).to_contain_text("VIP customer, be quick")

        await visitor_says(visitor, "Thank you!")
        await expect(agent.locator("#messages .msg.in").last).to_contain_text("Thank you!")
        await screenshot(agent, "inbox-conversation")
        await screenshot(visitor, "widget-conversation")

        # Reload: the widget remembers the visitor and shows the whole conversation.
        await visitor.reload()
        await visitor.get_by_role("button", name="Open chat").click()
        texts = visitor.locator("#crm-hub-widget .m:not(.greeting)")
        await expect(texts).to_have_count(3)
        await expect(texts.nth(1)).to_contain_text("Hi! It ships tomorrow.")
        await expect(visitor.locator("#crm-hub-widget")).not_to_contain_text("VIP customer")
        assert problems == []


async def test_persian_renders_right_to_left_in_both(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        agent = await (await browser.new_context()).new_page()
        visitor = await (await browser.new_context()).new_page()
        await log_in(agent, base, "ana@example.com")
        await agent.get_by_role("button", name="All").click()
        panel = await open_widget(visitor, base)
        persian = "سلام، سفارش من هنوز نرسیده است"
        await visitor_says(visitor, persian)
        bubble = panel.locator(".m.contact")
        await expect(bubble).to_contain_text(persian)
        await expect(bubble).to_have_css("direction", "rtl")

        await agent.locator(".ticket", has_text=persian).click()
        body = agent.locator("#messages .msg.in .msg-body")
        await expect(body).to_have_text(persian)
        await expect(body).to_have_css("direction", "rtl")
        preview = agent.locator(".ticket .preview", has_text=persian)
        await expect(preview).to_have_css("direction", "rtl")
        # English next to it stays left-to-right.
        await agent.get_by_role("textbox", name="Reply").fill("We are checking, one moment.")
        await agent.get_by_role("textbox", name="Reply").press("Control+Enter")
        english = agent.locator("#messages .msg.out .msg-body")
        await expect(english).to_have_text("We are checking, one moment.")
        await expect(english).to_have_css("direction", "ltr")

        # The interface itself in Persian: right-to-left, translated.
        await agent.locator("#language").select_option("fa")
        assert await agent.evaluate("document.documentElement.dir") == "rtl"
        await expect(agent.locator("#app")).to_have_css("direction", "rtl")
        await expect(agent.get_by_role("button", name="ارسال")).to_be_visible()
        await screenshot(agent, "inbox-persian")
        await screenshot(visitor, "widget-persian")


async def test_markup_in_messages_and_names_is_shown_and_never_run(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    markup = '<img src=x onerror="window.__pwned=1;alert(1)"><script>window.__pwned=2</script><b>bold?</b>'
    name = '<svg onload="window.__pwned=3">Mallory'
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        agent = await (await browser.new_context()).new_page()
        visitor = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(agent, problems)
        watch_for_trouble(visitor, problems)
        await log_in(agent, base, "ana@example.com")
        await agent.get_by_role("button", name="All").click()

        panel = await open_widget(visitor, base)
        # The visitor's name comes through the widget's identify frame.
        await visitor.evaluate(
            """n => new Promise((done) => {
            const ws = new WebSocket(`ws://${location.host}/chat/ws?token=` +
                encodeURIComponent(localStorage.getItem(`crmHubVisitor:${location.host}`)));
            ws.onmessage = (e) => { const f = JSON.parse(e.data);
                if (f.type === "session") ws.send(JSON.stringify({type: "identify", name: n}));
                if (f.type === "identified") { ws.close(); done(); } };
        })""",
            name,
        )
        await visitor_says(visitor, markup)
        await expect(panel.locator(".m.contact")).to_have_text(f"You: {markup}")

        ticket = agent.locator(".ticket", has_text="bold?")
        await expect(ticket.locator(".name")).to_have_text(name)
        await ticket.click()
        body = agent.locator("#messages .msg.in .msg-body")
        await expect(body).to_have_text(markup)
        await expect(agent.locator("#conv-title")).to_have_text(name)
        await agent.get_by_role("textbox", name="Reply").fill(markup)
        await agent.get_by_role("textbox", name="Reply").press("Control+Enter")
        await expect(panel.locator(".m.agent")).to_contain_text(markup)

        for page in (agent, visitor):
            assert await page.evaluate("window.__pwned") is None
            assert await page.locator("#messages img, #messages script, #messages b, #tickets svg").count() == 0
        assert await visitor.locator("#crm-hub-widget .m img, #crm-hub-widget .m b").count() == 0
        assert problems == []
        await screenshot(agent, "inbox-markup-as-text")
