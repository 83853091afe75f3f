"""Editing a contact from the inbox's customer panel, in a real browser: the
form sends only what changed, the panel, the list and the title follow (and a
colleague's screen, through ``contact.updated``), the hub's refusal stays in
the form next to the field it names, and a Persian name reads as one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect

from hub.app import HUB
from hub.core import Channel, InboundMessage, Role
from storage.ingest import IngestResult, ingest_batch
from tests.browser import chromium, screenshot, watch_for_trouble
from tests.hub.helpers import Agent, add_agent, make_config, running_hub
from tests.hub.static.pages import log_in

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]


async def _customer_writes(server: Any, config: Any, sender: str, name: str, text: str) -> IngestResult:
    async with server.app[HUB].db.write() as s:
        (result,) = await ingest_batch(
            s,
            [
                InboundMessage(
                    channel=Channel.WEBCHAT,
                    inbox=config.webchat.inbox,
                    external_id=f"{sender}:1",
                    sender=sender,
                    sender_name=name,
                    body=text,
                )
            ],
        )
    assert isinstance(result, IngestResult)
    return result


async def _open(page: Page, base: str, email: str, ticket_id: int, view: str = "All") -> None:
    await log_in(page, base, email)
    await page.get_by_role("button", name=view).click()
    await page.locator(f'.ticket[data-ticket="{ticket_id}"]').click()
    await expect(page.locator("#customer h2")).to_be_visible()


async def test_an_agent_edits_the_contact_and_only_what_changed_is_sent(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        await add_agent(config, "bo@example.com", Role.AGENT)
        base = str(server.make_url("")).rstrip("/")
        result = await _customer_writes(server, config, "reza", "Reza", "my order is late")
        api = await Agent.login(http, base, "ana@example.com")
        contact_id = result.contact_id
        await api.patch(
            f"/api/v1/contacts/{contact_id}",
            {"attributes": {"plan": "basic", "seats": 3, "source": "fair"}, "tags": ["old"], "lifecycle_stage": "lead"},
        )

        page = await (await browser.new_context()).new_page()
        colleague = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        watch_for_trouble(colleague, problems)
        await _open(page, base, "ana@example.com", result.ticket_id)
        await _open(colleague, base, "bo@example.com", result.ticket_id, "Unassigned")
        panel = page.locator("#customer")
        await expect(panel.locator(".facts").first).to_contain_text("Lead")

        await panel.get_by_role("button", name="Edit", exact=True).click()
        dialog = page.get_by_role("dialog", name="Edit contact")
        await expect(dialog).to_be_visible()
        await expect(dialog.get_by_label("Name", exact=True)).to_be_focused()
        await expect(dialog.get_by_label("Name", exact=True)).to_have_value("Reza")
        for field in ("Name", "Tags", "Add an email", "Add a phone number"):
            await expect(dialog.get_by_label(field, exact=True)).to_have_attribute("dir", "auto")
        await dialog.get_by_label("Name", exact=True).fill("Reza Rezaei")
        # As labels are entered: a Persian comma separates too.
        await dialog.get_by_label("Tags", exact=True).fill("vip، wholesale")
        await dialog.get_by_label("Lead stage").select_option("customer")
        await dialog.get_by_label("Value of plan").fill("pro")
        await dialog.get_by_label("Value of seats").fill("5")
        await dialog.get_by_role("button", name="Remove source").click()
        await dialog.get_by_role("button", name="Add an attribute").click()
        await expect(dialog.get_by_role("textbox", name="Attribute name").last).to_be_focused()
        await page.keyboard.type("city")
        await dialog.get_by_role("textbox", name="Value", exact=True).fill("Tehran")
        email = dialog.get_by_label("Add an email", exact=True)
        await email.fill("Reza@Example.org")
        # Enter in a field saves.
        async with page.expect_request(lambda r: r.method == "PATCH") as sent:
            await email.press("Enter")
        body = json.loads((await sent.value).post_data or "{}")
        assert body == {
            "name": "Reza Rezaei",
            "tags": ["vip", "wholesale"],
            "lifecycle_stage": "customer",
            "add_email": "Reza@Example.org",
            "attributes": {"plan": "pro", "seats": 5, "source": None, "city": "Tehran"},
        }
        await expect(dialog).to_be_hidden()
        await expect(panel.get_by_role("button", name="Edit", exact=True)).to_be_focused()

        for screen in (page, colleague):
            await expect(screen.locator("#customer h2")).to_have_text("Reza Rezaei")
            await expect(screen.locator("#conv-title")).to_have_text("Reza Rezaei")
            await expect(screen.locator(f'.ticket[data-ticket="{result.ticket_id}"] .name')).to_have_text("Reza Rezaei")
            await expect(screen.locator("#customer .identities")).to_contain_text("reza@example.org")
            facts = screen.locator("#customer .facts")
            await expect(facts.first).to_contain_text("Customer")
            await expect(facts.first).to_contain_text("vip, wholesale")
            await expect(facts.nth(1)).to_contain_text("pro")
            await expect(facts.nth(1)).to_contain_text("Tehran")
            await expect(facts.nth(1)).not_to_contain_text("fair")
        await expect(page.locator("#reply-channel option")).to_contain_text(["Web chat"])

        contact = await api.get(f"/api/v1/contacts/{contact_id}")
        assert contact["name"] == "Reza Rezaei"
        assert contact["tags"] == ["vip", "wholesale"]
        assert contact["lifecycle_stage"] == "customer"
        assert contact["attributes"] == {"plan": "pro", "seats": 5, "city": "Tehran"}
        assert {"channel": "email", "address": "reza@example.org"} in [
            {"channel": i["channel"], "address": i["address"]} for i in contact["identities"]
        ]

        # Opened again with nothing changed, Save sends nothing and closes.
        await panel.get_by_role("button", name="Edit", exact=True).click()
        await expect(dialog.get_by_label("Tags", exact=True)).to_have_value("vip, wholesale")
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.method) if r.method == "PATCH" else None)
        await dialog.get_by_role("button", name="Save").click()
        await expect(dialog).to_be_hidden()
        assert requests == []
        assert problems == []


async def test_a_refused_edit_stays_in_the_form_naming_the_field_and_changes_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        result = await _customer_writes(server, config, "reza", "Reza", "my order is late")
        other = await _customer_writes(server, config, "sara", "Sara", "hello")
        api = await Agent.login(http, base, "ana@example.com")
        await api.patch(f"/api/v1/contacts/{other.contact_id}", {"add_email": "sara@example.org"})
        before = await api.get(f"/api/v1/contacts/{result.contact_id}")

        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await _open(page, base, "ana@example.com", result.ticket_id)
        panel = page.locator("#customer")
        await panel.get_by_role("button", name="Edit", exact=True).click()
        dialog = page.get_by_role("dialog", name="Edit contact")
        await dialog.get_by_label("Name", exact=True).fill("Reza the Second")
        email = dialog.get_by_label("Add an email", exact=True)
        await email.fill("sara@example.org")
        await dialog.get_by_role("button", name="Save").click()

        error = dialog.locator("#contact-error")
        await expect(error).to_have_attribute("role", "alert")
        await expect(error).to_contain_text("Add an email:")
        await expect(error).to_contain_text(f"belongs to contact {other.contact_id}")
        await expect(dialog).to_be_visible()
        await expect(email).to_have_attribute("aria-invalid", "true")
        await expect(email).to_be_focused()
        await expect(email).to_have_value("sara@example.org")
        await expect(page.locator("#error-banner")).to_be_hidden()
        await screenshot(page, "inbox-contact-edit-refused")

        # A 422 names its field too; the earlier mark goes.
        await email.fill("")
        phone = dialog.get_by_label("Add a phone number", exact=True)
        await phone.fill("12")
        await phone.press("Enter")
        await expect(error).to_contain_text("Add a phone number:")
        await expect(phone).to_have_attribute("aria-invalid", "true")
        await expect(email).not_to_have_attribute("aria-invalid", "true")

        # Esc closes it; nothing was saved.
        await page.keyboard.press("Escape")
        await expect(dialog).to_be_hidden()
        await expect(panel.locator("h2")).to_have_text("Reza")
        await expect(page.locator("#conv-title")).to_have_text("Reza")
        after = await api.get(f"/api/v1/contacts/{result.contact_id}")
        assert after["name"] == "Reza"
        assert after["identities"] == before["identities"]
        assert problems == []


async def test_a_persian_name_in_the_persian_inbox(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        result = await _customer_writes(server, config, "reza", "Reza", "سفارشم دیر شده")
        api = await Agent.login(http, base, "ana@example.com")

        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await _open(page, base, "ana@example.com", result.ticket_id)
        await page.locator("#language").select_option("fa")
        await expect(page.locator("html")).to_have_attribute("dir", "rtl")
        panel = page.locator("#customer")
        await panel.get_by_role("button", name="ویرایش", exact=True).click()
        dialog = page.get_by_role("dialog", name="ویرایش مخاطب")
        await expect(dialog).to_be_visible()
        name = dialog.get_by_label("نام", exact=True)
        await name.fill("رضا  رضایی")
        await dialog.get_by_label("برچسب‌ها", exact=True).fill("ویژه، عمده")
        await dialog.get_by_role("button", name="افزودن ویژگی").click()
        await page.keyboard.type("شهر")
        await dialog.get_by_role("textbox", name="مقدار", exact=True).fill("تهران")
        await screenshot(page, "inbox-contact-edit-persian")
        await name.press("Enter")
        await expect(dialog).to_be_hidden()

        title = panel.locator("h2")
        await expect(title).to_have_text("رضا رضایی")
        await expect(title).to_have_attribute("dir", "auto")
        await expect(page.locator("#conv-title")).to_have_text("رضا رضایی")
        await expect(page.locator(f'.ticket[data-ticket="{result.ticket_id}"] .name')).to_have_text("رضا رضایی")
        contact = await api.get(f"/api/v1/contacts/{result.contact_id}")
        assert contact["name"] == "رضا رضایی"
        assert sorted(contact["tags"]) == sorted(["ویژه", "عمده"])
        assert contact["attributes"] == {"شهر": "تهران"}
        await expect(panel.locator(".facts").nth(1)).to_contain_text("تهران")
        assert problems == []
