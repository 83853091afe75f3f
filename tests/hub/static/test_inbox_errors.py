"""What the inbox tells a sighted agent when the hub says no, in a real
browser: a refused action, a link to a ticket that does not exist, a session
that ended while they worked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect
from sqlalchemy import update

from hub.app import HUB
from hub.core import Channel, InboundMessage, Role
from storage.ingest import IngestResult, ingest_batch
from storage.models import Ticket
from tests.browser import chromium, watch_for_trouble
from tests.hub.helpers import PASSWORD, Agent, add_agent, make_config, running_hub
from tests.hub.static.pages import log_in

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]


async def _customer_writes(server: Any, config: Any, text: str, n: int) -> IngestResult:
    hub = server.app[HUB]
    async with hub.db.write() as s:
        (result,) = await ingest_batch(
            s,
            [
                InboundMessage(
                    channel=Channel.WEBCHAT,
                    inbox=config.webchat.inbox,
                    external_id=f"reza:{n}",
                    sender="reza",
                    sender_name="Reza",
                    body=text,
                )
            ],
        )
    assert isinstance(result, IngestResult)
    return result


async def test_refused_actions_are_shown_until_dismissed_and_still_announced(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        first = await _customer_writes(server, config, "my order is late", 1)
        api = await Agent.login(http, base, "ana@example.com")
        await api.post(f"/api/v1/tickets/{first.ticket_id}/status", {"status": "resolved"})
        second = await _customer_writes(server, config, "still late", 2)
        assert second.ticket_id != first.ticket_id
        await api.put(f"/api/v1/tickets/{first.ticket_id}/labels", {"labels": ["VIP"]})

        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        await page.locator("#filter-status").select_option("")
        await page.locator(f'.ticket[data-ticket="{first.ticket_id}"]').click()
        await expect(page.locator("#conv-badges .badge.status-resolved")).to_be_visible()
        banner = page.locator("#error-banner")
        await expect(banner).to_be_hidden()

        # A label the hub refuses: said on screen, and the saved labels come back.
        labels = page.locator("#act-labels")
        await labels.fill("VIP, " + "x" * 150)
        await labels.press("Enter")
        await expect(banner).to_be_visible()
        await expect(banner).to_have_attribute("role", "alert")
        await expect(banner).to_contain_text("longer than 100 characters")
        await expect(page.locator("#announcer")).to_contain_text("longer than 100 characters")
        await expect(labels).to_have_value("VIP")
        await banner.get_by_role("button", name="Dismiss").click()
        await expect(banner).to_be_hidden()

        # Reopening while the customer has another open ticket: the 409 names it.
        await page.locator("#act-status").select_option("open")
        await expect(banner).to_contain_text(f"ticket {second.ticket_id} is already open")
        await expect(page.locator("#act-status")).to_have_value("resolved")

        # A snooze time already past.
        await page.locator(f'.ticket[data-ticket="{second.ticket_id}"]').click()
        await page.get_by_role("button", name="Snooze", exact=True).click()
        dialog = page.get_by_role("dialog", name="Snooze until")
        await dialog.locator("#snooze-at").fill("2020-01-01T09:00")
        await dialog.locator("button.primary").click()
        await expect(banner).to_contain_text("snoozed_until must be in the future")
        await expect(page.locator("#conv-badges .badge.status-open")).to_be_visible()

        # A link to a ticket that does not exist says so; the address goes back
        # to the conversation still on screen.
        await page.evaluate("location.hash = '#/ticket/999999'")
        await expect(banner).to_contain_text("ticket 999999 does not exist")
        await expect(page.locator("#conv-title")).to_have_text("Reza")
        assert await page.evaluate("location.hash") == f"#/ticket/{second.ticket_id}"

        # A colleague took the ticket a moment ago (no live event reached this
        # page yet): "assign to me" hears who has it instead of taking it.
        await banner.get_by_role("button", name="Dismiss").click()
        await add_agent(config, "bob@example.com", Role.AGENT)
        bob = next(a for a in (await api.get("/api/v1/agents"))["items"] if a["email"] == "bob@example.com")
        async with server.app[HUB].db.write() as s:
            await s.execute(update(Ticket).where(Ticket.id == second.ticket_id).values(assignee_id=bob["id"]))
        await page.locator("#conv-title").click()
        await page.keyboard.press("a")
        await expect(banner).to_contain_text(f"now assigned to {bob['name']} (agent {bob['id']})")
        assert (await api.get(f"/api/v1/tickets/{second.ticket_id}"))["assignee_id"] == bob["id"]
        assert problems == []


async def test_an_ended_session_says_so_on_the_login_form_and_keeps_the_draft(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        ticket = await _customer_writes(server, config, "where is my parcel?", 1)
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        await page.locator(f'.ticket[data-ticket="{ticket.ticket_id}"]').click()
        reply = page.get_by_role("textbox", name="Reply")
        await reply.fill("It left the warehouse today")

        # Logged out elsewhere (the same token revoked), then the agent sends.
        token = await page.evaluate("() => localStorage.getItem('crmhub.inbox.token')")
        async with http.post(f"{base}/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status in (200, 204)
        # The events socket may notice first (closed with 4401) and the inbox
        # leave before the click: either way the agent must read why. So the
        # click happens in the page, only while the reply box is still shown.
        await page.evaluate("() => { const b = document.querySelector('#send'); if (b && b.offsetParent) b.click(); }")
        await expect(page.locator("#login")).to_be_visible()
        await expect(page.locator("#login-error")).to_have_text(
            "Your session ended; log in again — your draft is kept."
        )
        await expect(page.locator("#error-banner")).to_be_hidden()

        await page.get_by_label("Email").fill("ana@example.com")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Log in").click()
        await expect(page.locator("#conv-title")).to_have_text("Reza")
        await expect(reply).to_have_value("It left the warehouse today")

        # Logging out on purpose is no ended session.
        await page.get_by_role("button", name="Log out").click()
        await expect(page.locator("#login")).to_be_visible()
        await page.evaluate("() => new Promise((done) => setTimeout(done, 500))")
        await expect(page.locator("#login-error")).to_have_text("")
        assert problems == []
