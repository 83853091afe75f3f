"""The inbox under a live feed and a busy agent, in a real browser: answers
that come back out of order, a reply sent twice, events around a (re)connect,
focus kept while the lists re-render, and single-key shortcuts turned off."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, Route, WebSocketRoute, expect
from sqlalchemy import func, select

from hub.app import HUB, WEBSOCKETS
from hub.core import Channel, InboundMessage, Role
from storage.ingest import IngestResult, ingest_batch
from storage.models import Message
from tests.browser import block_site_storage, chromium, watch_for_trouble
from tests.hub.helpers import PASSWORD, Agent, add_agent, make_config, next_frame, running_hub
from tests.hub.static.pages import log_in

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]


class Gate:
    """A route handler that holds the requests it gets until released."""

    def __init__(self) -> None:
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.count = 0

    async def __call__(self, route: Route) -> None:
        self.count += 1
        self.held.set()
        await self.release.wait()
        await route.continue_()


async def _seed(server: Any, config: Any, *names: str) -> dict[str, IngestResult]:
    """One web chat conversation per name, that customer's question in it."""
    hub = server.app[HUB]
    async with hub.db.write() as s:
        results = await ingest_batch(
            s,
            [
                InboundMessage(
                    channel=Channel.WEBCHAT,
                    inbox=config.webchat.inbox,
                    external_id=f"{name}:c1",
                    sender=name.lower(),
                    sender_name=name,
                    body=f"question from {name}",
                )
                for name in names
            ],
        )
    out = {}
    for name, result in zip(names, results, strict=True):
        assert isinstance(result, IngestResult)
        out[name] = result
    return out


async def _hub_closes_sockets(server: Any) -> None:
    """The hub closes its live sockets with 1012 (service restart), as it does
    when live events may have been lost."""
    sockets = server.app[WEBSOCKETS]
    for ws in [*sockets]:
        await ws.close(code=1012, message=b"live events were interrupted; reconnect")


async def _settled(page: Page) -> None:
    """Lets the page handle an answer it has just received (the absence of a
    change is what is checked next)."""
    await page.evaluate("() => new Promise((done) => setTimeout(done, 300))")


async def test_only_the_conversation_asked_for_last_opens_with_its_own_customer(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        seeded = await _seed(server, config, "Alice", "Bob")
        alice, bob = seeded["Alice"], seeded["Bob"]
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        link: dict[str, Any] = {"route": None}

        async def events_socket(route: WebSocketRoute) -> None:
            link["route"] = route
            route.connect_to_server()

        await page.route_web_socket(re.compile(r"/api/v1/events"), events_socket)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        title, customer = page.locator("#conv-title"), page.locator("#customer h2")

        # Alice's customer details are slow; the agent moves on to Bob's conversation.
        gate = Gate()
        contact = re.compile(rf"/api/v1/contacts/{alice.contact_id}$")
        await page.route(contact, gate)
        await page.locator(f'.ticket[data-ticket="{alice.ticket_id}"]').click()
        await asyncio.wait_for(gate.held.wait(), 20)
        await page.locator(f'.ticket[data-ticket="{bob.ticket_id}"]').click()
        await expect(title).to_have_text("Bob")
        await expect(customer).to_have_text("Bob")
        async with page.expect_response(contact):
            gate.release.set()
        await _settled(page)
        await expect(customer).to_have_text("Bob")
        await expect(page.locator("#customer .identities")).to_contain_text("bob")
        await page.unroute(contact)

        # Alice's conversation itself is slow: Bob's, asked for after it, stays open.
        gate = Gate()
        alice_detail = re.compile(rf"/api/v1/tickets/{alice.ticket_id}$")
        await page.route(alice_detail, gate)
        await page.locator(f'.ticket[data-ticket="{alice.ticket_id}"]').click()
        await asyncio.wait_for(gate.held.wait(), 20)
        await page.locator(f'.ticket[data-ticket="{bob.ticket_id}"]').click()
        await expect(title).to_have_text("Bob")
        async with page.expect_response(alice_detail):
            gate.release.set()
        await _settled(page)
        await expect(title).to_have_text("Bob")
        await expect(customer).to_have_text("Bob")
        await expect(page.locator(".ticket.active")).to_have_attribute("data-ticket", str(bob.ticket_id))
        assert await page.evaluate("location.hash") == f"#/ticket/{bob.ticket_id}"
        await page.unroute(alice_detail)

        # The catch-up after a reconnect reads Bob's conversation again, slowly;
        # meanwhile the agent opens Alice's: it is not taken back to Bob's.
        gate = Gate()
        bob_detail = re.compile(rf"/api/v1/tickets/{bob.ticket_id}$")
        await page.route(bob_detail, gate)
        route = link["route"]
        assert isinstance(route, WebSocketRoute)
        await route.close()
        await asyncio.wait_for(gate.held.wait(), 30)
        await page.locator(f'.ticket[data-ticket="{alice.ticket_id}"]').click()
        await expect(title).to_have_text("Alice")
        await expect(customer).to_have_text("Alice")
        async with page.expect_response(bob_detail):
            gate.release.set()
        await _settled(page)
        await expect(title).to_have_text("Alice")
        await expect(customer).to_have_text("Alice")
        await expect(page.locator("#messages .msg.in")).to_contain_text("question from Alice")
        assert problems == []


async def test_a_reply_sent_twice_before_the_hub_answers_goes_out_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        hub = server.app[HUB]
        base = str(server.make_url("")).rstrip("/")
        alice = (await _seed(server, config, "Alice"))["Alice"]
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        await page.locator(f'.ticket[data-ticket="{alice.ticket_id}"]').click()
        await expect(page.locator("#messages .msg.in")).to_contain_text("question from Alice")

        gate = Gate()
        await page.route(re.compile(r"/api/v1/tickets/\d+/messages$"), gate)
        reply = page.get_by_role("textbox", name="Reply")
        await reply.fill("Your parcel left today")
        await reply.press("Control+Enter")
        await asyncio.wait_for(gate.held.wait(), 20)
        await reply.press("Control+Enter")  # impatient
        await _settled(page)
        assert gate.count == 1
        await expect(page.locator("#send")).to_be_disabled()
        # Kept until the hub has it; what is typed meanwhile stays afterwards.
        await expect(reply).to_have_value("Your parcel left today")
        await reply.press("End")
        await reply.press_sequentially(" Anything else?")
        gate.release.set()
        await expect(page.locator("#messages .msg.out")).to_contain_text("Your parcel left today")
        await expect(reply).to_have_value("Anything else?")
        await expect(page.locator("#send")).to_be_enabled()
        await _settled(page)
        await expect(page.locator("#messages .msg.out")).to_have_count(1)
        assert gate.count == 1
        async with hub.db.read() as s:
            sent = await s.scalar(select(func.count()).select_from(Message).where(Message.direction == "out"))
        assert sent == 1
        assert problems == []


async def test_the_inbox_misses_nothing_around_a_connect(tmp_path: Path) -> None:
    """At start-up the list is read once the hub has subscribed the socket (its
    hello), not before; every hello reads again; and when the hub closes the
    socket itself (its live events were interrupted), the inbox reconnects and
    reads again."""
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        connect = asyncio.Event()
        link: dict[str, Any] = {"down": False, "drop": False, "route": None}

        async def events_socket(route: WebSocketRoute) -> None:
            if link["down"]:
                await route.close()
                return
            await connect.wait()  # the hub is slow to take the first socket
            link["route"] = route
            hub_side = route.connect_to_server()

            def to_page(message: str | bytes) -> None:
                if not link["drop"]:
                    route.send(message)

            hub_side.on_message(to_page)

        await page.route_web_socket(re.compile(r"/api/v1/events"), events_socket)
        await page.goto(f"{base}/inbox/")
        await page.get_by_label("Email").fill("ana@example.com")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Log in").click()
        await page.locator("#app").wait_for(state="visible")
        await page.get_by_role("button", name="All").click()
        # Without a feed the list shows anyway...
        await expect(page.locator("#tickets")).to_contain_text("No conversations here.")

        async def visitor_writes(text: str) -> None:
            async with http.ws_connect(f"{base}/chat/ws") as visitor:
                await next_frame(visitor, "session")
                await visitor.send_json({"type": "message", "text": text, "client_id": "c1"})
                await next_frame(visitor, "message", client_id="c1")

        # ...and what happens before the hub has subscribed the socket is read at its hello.
        await visitor_writes("written before the feed was up")
        connect.set()
        await expect(page.locator("#connection")).to_have_text("Live")
        await expect(page.locator(".ticket", has_text="written before the feed was up")).to_be_visible()

        # An event lost on the way: the next hello (the hub's sign that it
        # listens afresh) reads the list again. Counted as reads of the list,
        # not as the ticket's absence before it: on a slow machine a read the
        # first hello started may still be on its way and show it anyway.
        reads: list[str] = []
        page.on("requestfinished", lambda r: reads.append(r.url) if "/api/v1/inbox/tickets" in r.url else None)
        link["drop"] = True
        await visitor_writes("lost on the way")
        await _settled(page)
        before = len(reads)
        route = link["route"]
        assert isinstance(route, WebSocketRoute)
        route.send('{"type": "hello"}')
        async with asyncio.timeout(20):
            while len(reads) == before:
                await asyncio.sleep(0.05)
        await expect(page.locator(".ticket", has_text="lost on the way")).to_be_visible()
        link["drop"] = False

        # The hub closes the socket (1012, its live events were interrupted):
        # the inbox reconnects and reads what it missed meanwhile.
        link["down"] = True
        await _hub_closes_sockets(server)
        await expect(page.locator("#connection")).to_have_text("Reconnecting…")
        await visitor_writes("written while the hub was away")
        link["down"] = False
        await expect(page.locator("#connection")).to_have_text("Live", timeout=60_000)
        await expect(page.locator(".ticket", has_text="written while the hub was away")).to_be_visible()
        assert problems == []


async def test_a_hub_that_takes_the_socket_and_then_fails_is_not_hammered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        hub = server.app[HUB]
        base = str(server.make_url("")).rstrip("/")
        page = await (await browser.new_context()).new_page()
        await log_in(page, base, "ana@example.com")

        attempts: list[float] = []

        def broken(channel: str) -> Any:
            attempts.append(asyncio.get_running_loop().time())
            raise RuntimeError("Redis is down")

        # The upgrade succeeds, then subscribing fails: open, then closed at once.
        monkeypatch.setattr(hub.live, "listen", broken)
        await _hub_closes_sockets(server)
        await expect(page.locator("#connection")).to_have_text("Reconnecting…")
        await asyncio.sleep(7)
        # Doubling from one second (jittered): 3 tries in 7 s, give or take one;
        # a backoff reset by every open would have tried about every second.
        assert 1 <= len(attempts) <= 4, attempts


async def test_live_updates_leave_the_keyboard_focus_where_it_was(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        seeded = await _seed(server, config, "Alice", "Bob")
        alice, bob = seeded["Alice"], seeded["Bob"]
        other = await Agent.login(http, base, "ana@example.com")  # the same agent, elsewhere
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        await page.locator(f'.ticket[data-ticket="{alice.ticket_id}"]').click()
        await expect(page.locator("#messages")).to_be_focused()  # where opening a conversation puts it

        # On a ticket in the list while it is re-rendered.
        bob_button = page.locator(f'.ticket[data-ticket="{bob.ticket_id}"]')
        await bob_button.focus()
        await other.post(f"/api/v1/tickets/{bob.ticket_id}/priority", {"priority": "high"})
        await expect(bob_button.locator(".badge.priority-high")).to_be_visible()
        await expect(bob_button).to_be_focused()

        # On a view while the counts re-render the views.
        mine = page.locator("#views [data-view=mine]")
        await mine.focus()
        me = await other.get("/api/v1/me")
        await other.post(f"/api/v1/tickets/{bob.ticket_id}/assign", {"agent_id": me["id"], "team_id": None})
        await expect(mine.locator(".count")).to_have_text("1")
        await expect(mine).to_be_focused()

        # On a select of the open conversation while an event changes its ticket:
        # the value follows, the focus stays.
        priority = page.locator("#act-priority")
        await priority.focus()
        await other.post(f"/api/v1/tickets/{alice.ticket_id}/priority", {"priority": "urgent"})
        await expect(priority).to_have_value("urgent")
        await expect(page.locator(f'.ticket[data-ticket="{alice.ticket_id}"] .badge.priority-urgent')).to_be_visible()
        await expect(priority).to_be_focused()
        assert problems == []


async def test_single_key_shortcuts_can_be_turned_off_and_stay_off(tmp_path: Path) -> None:
    """WCAG 2.1.4: one-key shortcuts (a speech input's letters, a stray key)
    can be turned off, in the shortcuts help; remembered for the agent."""
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        alice = (await _seed(server, config, "Alice"))["Alice"]
        api = await Agent.login(http, base, "ana@example.com")
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        await page.locator(f'.ticket[data-ticket="{alice.ticket_id}"]').click()
        await expect(page.locator("#messages .msg.in")).to_contain_text("question from Alice")

        # The help opens without a key too; the shortcuts go off there.
        await page.get_by_role("button", name="Keyboard shortcuts").click()
        help_dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
        toggle = help_dialog.get_by_role("checkbox", name=re.compile("Single-key shortcuts"))
        await expect(toggle).to_be_checked()
        await toggle.uncheck()
        await help_dialog.get_by_role("button", name="Close").click()

        async def press_keys() -> None:
            await page.locator("#messages").focus()
            for key in ("p", "e", "a", "z", "?"):
                await page.keyboard.press(key)

        await press_keys()
        await _settled(page)
        await expect(page.locator("dialog[open]")).to_have_count(0)
        detail = await api.get(f"/api/v1/tickets/{alice.ticket_id}")
        assert (detail["priority"], detail["status"], detail["assignee_id"]) == ("normal", "open", None)

        # Still off after a reload.
        await page.reload()
        await page.locator("#connection.live").wait_for()
        await expect(page.locator("#messages .msg.in")).to_contain_text("question from Alice")
        await press_keys()
        await _settled(page)
        await expect(page.locator("dialog[open]")).to_have_count(0)
        detail = await api.get(f"/api/v1/tickets/{alice.ticket_id}")
        assert (detail["priority"], detail["status"]) == ("normal", "open")

        # And on again.
        await page.get_by_role("button", name="Keyboard shortcuts").click()
        await expect(toggle).not_to_be_checked()
        await toggle.check()
        await help_dialog.get_by_role("button", name="Close").click()
        await page.locator("#messages").focus()
        await page.keyboard.press("e")
        await expect(page.locator("#conv-badges .badge.status-resolved")).to_be_visible()
        assert problems == []


async def test_labels_another_agent_sets_show_without_a_reload(tmp_path: Path) -> None:
    """A ``ticket.labels_changed`` event updates the ticket in the list, the open
    conversation's labels and the list's label filter."""
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        await add_agent(config, "bea@example.com", Role.AGENT)
        base = str(server.make_url("")).rstrip("/")
        seeded = await _seed(server, config, "Alice", "Bob")
        alice, bob = seeded["Alice"], seeded["Bob"]
        bea = await Agent.login(http, base, "bea@example.com")
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        alice_button = page.locator(f'.ticket[data-ticket="{alice.ticket_id}"]')
        bob_button = page.locator(f'.ticket[data-ticket="{bob.ticket_id}"]')
        await alice_button.click()
        await expect(page.locator("#conv-title")).to_have_text("Alice")
        await expect(page.locator("#act-labels")).to_have_value("")

        await bea.put(f"/api/v1/tickets/{alice.ticket_id}/labels", {"labels": ["VIP", "refund"]})
        await expect(page.locator("#act-labels")).to_have_value("VIP, refund")
        await expect(alice_button.locator(".badge.label")).to_have_text(["VIP", "refund"])

        # Filtered by a label (spelled otherwise): a ticket losing it leaves the
        # list, one gaining it joins.
        await page.locator("#filter-label").fill(" vip")
        await page.locator("#filter-label").dispatch_event("change")
        await expect(bob_button).to_have_count(0)
        await expect(alice_button).to_be_visible()
        await bea.put(f"/api/v1/tickets/{bob.ticket_id}/labels", {"labels": ["vip"]})
        await expect(bob_button.locator(".badge.label")).to_have_text("vip")
        await bea.put(f"/api/v1/tickets/{alice.ticket_id}/labels", {"labels": ["refund"]})
        await expect(alice_button).to_have_count(0)
        await expect(page.locator("#act-labels")).to_have_value("refund")
        assert problems == []


async def test_the_inbox_works_when_the_browser_blocks_site_storage(tmp_path: Path) -> None:
    """Every localStorage/sessionStorage access throws (a browser set to block
    site data): the agent still logs in and works, the token kept in memory."""
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        seeded = await _seed(server, config, "Alice", "Bob")
        alice, bob = seeded["Alice"], seeded["Bob"]
        context = await browser.new_context()
        await block_site_storage(context)
        page = await context.new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        assert await page.evaluate(
            "() => { try { localStorage; return false; } catch (e) { return e.name === 'SecurityError'; } }"
        )
        await page.get_by_role("button", name="All").click()
        await expect(page.locator(f'.ticket[data-ticket="{alice.ticket_id}"]')).to_be_visible()
        await expect(page.locator(f'.ticket[data-ticket="{bob.ticket_id}"]')).to_be_visible()

        # A draft waits in memory while the agent looks at another conversation.
        await page.locator(f'.ticket[data-ticket="{alice.ticket_id}"]').click()
        await expect(page.locator("#conv-title")).to_have_text("Alice")
        await page.locator("#reply-text").fill("half a reply")
        await page.locator(f'.ticket[data-ticket="{bob.ticket_id}"]').click()
        await expect(page.locator("#conv-title")).to_have_text("Bob")
        await expect(page.locator("#reply-text")).to_have_value("")
        await page.locator(f'.ticket[data-ticket="{alice.ticket_id}"]').click()
        await expect(page.locator("#conv-title")).to_have_text("Alice")
        await expect(page.locator("#reply-text")).to_have_value("half a reply")
        assert problems == []
