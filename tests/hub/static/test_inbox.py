"""The inbox and the widget in a real browser (Debian's Chromium, driven by
Playwright): a whole conversation from both sides, right-to-left text, and
markup that must stay text."""

from __future__ import annotations

import asyncio
import io
import re
import struct
import wave
import zlib
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import FilePayload, Route, expect

from hub.actions import do_ensure_inbox
from hub.app import HUB
from hub.core import Channel, InboundMessage, Role
from storage.ingest import IngestResult, ingest_batch
from tests.browser import chromium, screenshot, watch_for_trouble
from tests.hub.helpers import Agent, add_agent, make_config, next_frame, running_hub
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
        # The visitor's name comes through the widget's identify frame, once the
        # widget holds its visitor token.
        key = "crmHubVisitor:" + base.split("//", 1)[1]
        await visitor.wait_for_function(f"() => localStorage.getItem({key!r})")
        await visitor.evaluate(
            """([key, name]) => new Promise((done, fail) => {
            const token = encodeURIComponent(localStorage.getItem(key));
            const ws = new WebSocket(`ws://${location.host}/chat/ws?token=${token}`);
            setTimeout(() => fail(new Error("no answer to identify")), 10000);
            ws.onclose = () => fail(new Error("socket closed"));
            ws.onmessage = (e) => { const f = JSON.parse(e.data);
                if (f.type === "session") ws.send(JSON.stringify({type: "identify", name}));
                if (f.type === "identified") { done(); ws.close(); } };
        })""",
            [key, name],
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


async def test_inbox_catches_up_on_what_it_missed_while_disconnected(tmp_path: Path) -> None:
    """The events socket drops; a customer writes meanwhile (no live event can
    reach the page); once the socket is back the inbox reads it all again."""
    from playwright.async_api import WebSocketRoute

    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        agent = await (await browser.new_context()).new_page()
        link: dict[str, object] = {"down": False, "route": None}

        async def events_socket(route: WebSocketRoute) -> None:
            if link["down"]:
                await route.close()
            else:
                link["route"] = route
                route.connect_to_server()

        await agent.route_web_socket(re.compile(r"/api/v1/events"), events_socket)
        await log_in(agent, base, "ana@example.com")
        await agent.get_by_role("button", name="Unassigned").click()
        await expect(agent.locator("#tickets")).to_contain_text("No conversations here.")

        link["down"] = True
        route = link["route"]
        assert isinstance(route, WebSocketRoute)
        await route.close()
        await expect(agent.locator("#connection")).to_have_text("Reconnecting…")
        async with http.ws_connect(f"{base}/chat/ws") as visitor:
            await next_frame(visitor, "session")
            await visitor.send_json({"type": "message", "text": "written while you were away", "client_id": "c1"})
            await next_frame(visitor, "message", client_id="c1")
        link["down"] = False
        await expect(agent.locator("#connection")).to_have_text("Live", timeout=60_000)
        ticket = agent.locator(".ticket", has_text="written while you were away")
        await expect(ticket).to_be_visible()
        await expect(ticket.locator(".badge.unread")).to_have_text("1")
        await expect(agent.locator("#views [data-view=unassigned] .badge.unread")).to_have_text("1")


async def test_inbox_signs_out_when_its_token_is_revoked(tmp_path: Path) -> None:
    """Logged out elsewhere (the same token revoked through the API): the open
    inbox goes back to the sign-in form instead of reconnecting forever."""
    config = make_config(tmp_path, **{"routing.presence.heartbeat_seconds": 0.5})
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        page = await (await browser.new_context()).new_page()
        await log_in(page, base, "ana@example.com")
        await expect(page.locator("#connection")).to_have_text("Live")
        token = await page.evaluate("() => localStorage.getItem('crmhub.inbox.token')")
        async with http.post(f"{base}/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status in (200, 204)
        await expect(page.locator("#login")).to_be_visible(timeout=30_000)
        await expect(page.locator("#app")).to_be_hidden()


def _png() -> bytes:
    """A 2x2 red PNG, made here."""
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 800)
    return out.getvalue()


async def test_other_channels_attachments_failures_canned_and_shortcuts(tmp_path: Path) -> None:
    """What the channel issues will bring, shown as agents need it: a voicemail
    (playable, with its transcription), an email with a photo, a failed send
    with its reason; then canned responses and keyboard shortcuts."""
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        hub = server.app[HUB]
        base = str(server.make_url("")).rstrip("/")
        voicemail = await hub.attachments.save(_wav(), filename="voicemail.wav", content_type="audio/wav")
        photo = await hub.attachments.save(_png(), filename="receipt.png", content_type="image/png")
        async with hub.db.write() as s:
            await do_ensure_inbox(s, key="voice:+15550001111", channel=Channel.VOICE, name="Phone")
            await do_ensure_inbox(s, key="mail:support", channel=Channel.EMAIL, name="Support mail")
            results = await ingest_batch(
                s,
                [
                    InboundMessage(
                        channel=Channel.VOICE,
                        inbox="voice:+15550001111",
                        external_id="CA1",
                        sender="+15557654321",
                        body="Hi, this is Reza, please call me back about my delivery.",
                        attachments=(voicemail,),
                    ),
                    InboundMessage(
                        channel=Channel.EMAIL,
                        inbox="mail:support",
                        external_id="<m1@example.com>",
                        sender="reza@example.com",
                        sender_name="Reza",
                        subject="Broken item",
                        body="See the photo.",
                        attachments=(photo,),
                    ),
                ],
            )
        email_ticket = next(r for r in results if isinstance(r, IngestResult) and r.message["channel"] == "email")
        agent = await Agent.login(http, base, "ana@example.com")
        await agent.post("/api/v1/canned_responses", {"short_code": "thanks", "body": "Thanks {{contact.name}}!"}, 201)

        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()

        await page.locator(".ticket", has_text="call me back").click()
        voice = page.locator("#messages .msg.in")
        await expect(voice.locator(".badge", has_text="Voicemail")).to_be_visible()
        await expect(voice.locator(".msg-body")).to_contain_text("Transcription: Hi, this is Reza")
        assert await voice.locator("audio").get_attribute("src") == f"{base}{voicemail.url}"
        await expect(page.locator("#customer")).to_contain_text("+15557654321")

        await page.locator(".ticket", has_text="See the photo.").click()
        img = page.locator("#messages .msg.in img")
        await expect(img).to_have_attribute("alt", "receipt.png")
        # It really loads (the page's CSP allows the hub's own attachments).
        await page.wait_for_function(
            "() => { const i = document.querySelector('#messages .msg.in img');"
            " return i && i.complete && i.naturalWidth === 2; }"
        )
        await expect(page.locator("#messages .msg-subject")).to_have_text("Subject: Broken item")

        # The whole cross-channel history is one click away.
        await page.get_by_role("button", name="Whole timeline").click()
        timeline = page.get_by_role("dialog", name="Timeline of Reza")
        await expect(timeline.locator(".msg")).to_have_count(1)
        await expect(timeline).to_contain_text("Conversation started on Email")
        await timeline.get_by_role("button", name="Close").click()

        # "/" opens the canned responses; Enter inserts one, filled in.
        reply = page.get_by_role("textbox", name="Reply")
        await reply.press_sequentially("/tha")
        await expect(page.get_by_role("option", name="/thanks")).to_be_visible()
        await reply.press("Enter")
        await expect(reply).to_have_value("Thanks Reza!")
        await reply.press("Control+Enter")
        # No email channel runs in this hub: the agent sees the failure and why.
        status = page.locator("#messages .msg.out .msg-status.failed")
        await expect(status).to_contain_text("Failed — the email channel is not configured on this hub")

        # Shortcuts, away from the text fields.
        await page.locator("#messages").focus()
        await page.keyboard.press("p")
        await expect(page.locator("#act-priority")).to_have_value("high")
        await page.keyboard.press("e")
        await expect(page.locator("#conv-badges .badge.status-resolved")).to_be_visible()
        await page.keyboard.press("?")
        await expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_visible()
        await screenshot(page, "inbox-channels-and-shortcuts")
        assert problems == []
        detail = await agent.get(f"/api/v1/tickets/{email_ticket.ticket_id}")
        assert (detail["priority"], detail["status"]) == ("high", "resolved")


async def test_email_subject_keeps_its_own_direction(tmp_path: Path) -> None:
    """A Persian subject under the English interface's "Subject:" label reads
    right to left; the label stays left to right."""
    config = make_config(tmp_path)
    subject = "سفارش شماره ۱۲ نرسید"
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        hub = server.app[HUB]
        base = str(server.make_url("")).rstrip("/")
        async with hub.db.write() as s:
            await do_ensure_inbox(s, key="mail:support", channel=Channel.EMAIL, name="Support mail")
            await ingest_batch(
                s,
                [
                    InboundMessage(
                        channel=Channel.EMAIL,
                        inbox="mail:support",
                        external_id="<fa@example.com>",
                        sender="reza@example.com",
                        subject=subject,
                        body="سلام",
                    )
                ],
            )
        page = await (await browser.new_context(locale="en-US")).new_page()
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        await page.locator(".ticket").first.click()
        line = page.locator("#messages .msg-subject")
        await expect(line).to_have_text(f"Subject: {subject}")
        await expect(line).to_have_css("direction", "ltr")
        await expect(line.get_by_text(subject, exact=True)).to_have_css("direction", "rtl")


async def test_reply_drafts_wait_for_their_ticket(tmp_path: Path) -> None:
    """An agent starts a reply, looks at another conversation and comes back:
    the text, the note mode and the chosen file are still there. A reply still
    on its way when the agent moves on lands in its own conversation only."""
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        hub = server.app[HUB]
        base = str(server.make_url("")).rstrip("/")
        async with hub.db.write() as s:
            results = await ingest_batch(
                s,
                [
                    InboundMessage(
                        channel=Channel.WEBCHAT,
                        inbox=config.webchat.inbox,
                        external_id=f"{visitor}:c1",
                        sender=visitor,
                        body=f"question from {visitor}",
                    )
                    for visitor in ("alice", "bob")
                ],
            )
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        reply = page.get_by_role("textbox", name="Reply")
        messages = page.locator("#messages")

        tickets = {}
        for who, result in zip(("alice", "bob"), results, strict=True):
            assert isinstance(result, IngestResult)
            tickets[who] = result.ticket_id

        async def open_conversation(who: str) -> None:
            await page.locator(f'.ticket[data-ticket="{tickets[who]}"]').click()
            await expect(messages.locator(".msg.in")).to_contain_text(f"question from {who}")

        await open_conversation("alice")
        await reply.fill("Alice, your refund is on its way")
        receipt: FilePayload = {"name": "receipt.png", "mimeType": "image/png", "buffer": _png()}
        await page.locator("#reply-file").set_input_files(files=[receipt])
        await expect(page.locator("#pending-files")).to_contain_text("receipt.png")

        await open_conversation("bob")
        await expect(reply).to_have_value("")
        await expect(page.locator("#pending-files li")).to_have_count(0)
        await page.get_by_role("button", name="Private note").click()
        await reply.fill("Bob asked twice already")

        await open_conversation("alice")
        await expect(reply).to_have_value("Alice, your refund is on its way")
        await expect(page.locator("#pending-files")).to_contain_text("receipt.png")
        await expect(page.locator("#mode-reply")).to_have_attribute("aria-pressed", "true")

        # The reply is slow to arrive; meanwhile the agent opens Bob's conversation.
        held, release = asyncio.Event(), asyncio.Event()

        async def hold(route: Route) -> None:
            held.set()
            await release.wait()
            await route.continue_()

        await page.route(re.compile(r"/api/v1/tickets/\d+/messages$"), hold)
        await reply.press("Control+Enter")
        await asyncio.wait_for(held.wait(), 20)
        await open_conversation("bob")
        await expect(reply).to_have_value("Bob asked twice already")
        await expect(page.locator("#mode-note")).to_have_attribute("aria-pressed", "true")
        release.set()
        await expect(page.locator("#send")).to_be_enabled()
        await page.unroute(re.compile(r"/api/v1/tickets/\d+/messages$"))
        await expect(reply).to_have_value("Bob asked twice already")
        await expect(messages).not_to_contain_text("your refund is on its way")

        await open_conversation("alice")
        await expect(messages.locator(".msg.out")).to_contain_text("Alice, your refund is on its way")
        await expect(messages.locator(".msg.out img")).to_have_attribute("alt", "receipt.png")
        await expect(reply).to_have_value("")
        await expect(page.locator("#pending-files li")).to_have_count(0)

        # A reload of the tab keeps the unsent note, as a note.
        await page.reload()
        await page.locator("#connection.live").wait_for()
        await open_conversation("bob")
        await expect(reply).to_have_value("Bob asked twice already")
        await expect(page.locator("#mode-note")).to_have_attribute("aria-pressed", "true")
        assert problems == []
