"""The inbox following what changes under it, in a real browser: a visitor
who says who they are, a customer's edited message, new conversations while
the agent is deep in the list; and what it shows of names, images and emails
a customer controls."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect
from sqlalchemy import update

from hub.actions import do_ensure_inbox
from hub.app import HUB
from hub.channel_actions import do_edit_inbound_message
from hub.core import Channel, InboundMessage, Role, utcnow
from storage.ingest import IngestResult, ingest_batch
from storage.models import Contact, Identity
from tests.browser import chromium, watch_for_trouble
from tests.hub.helpers import add_agent, make_config, next_frame, running_hub
from tests.hub.static.pages import log_in
from tests.hub.static.test_inbox import _png

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]


async def _ingest(server: Any, *messages: InboundMessage) -> list[IngestResult]:
    async with server.app[HUB].db.write() as s:
        results = await ingest_batch(s, list(messages))
    assert all(isinstance(r, IngestResult) for r in results)
    return [r for r in results if isinstance(r, IngestResult)]


def _webchat(config: Any, sender: str, body: str, name: str | None = None) -> InboundMessage:
    return InboundMessage(
        channel=Channel.WEBCHAT,
        inbox=config.webchat.inbox,
        external_id=f"{sender}:c1",
        sender=sender,
        sender_name=name,
        body=body,
    )


async def test_a_visitor_who_identifies_is_named_and_answerable_by_email_at_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        async with server.app[HUB].db.write() as s:
            await do_ensure_inbox(s, key="mail:support", channel=Channel.EMAIL, name="Support mail")
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()

        async with http.ws_connect(f"{base}/chat/ws") as visitor:
            await next_frame(visitor, "session")
            await visitor.send_json({"type": "message", "text": "is anyone there?", "client_id": "c1"})
            await next_frame(visitor, "message", client_id="c1")
            row = page.locator(".ticket", has_text="is anyone there?")
            await row.click()
            title = page.locator("#conv-title")
            await expect(title).to_have_text(re.compile(r"^Visitor #\d+$"))
            channels = page.locator("#reply-channel option")
            await expect(channels).to_have_text(["Web chat"])

            await visitor.send_json({"type": "identify", "name": "Reza Rezaei", "email": "reza@example.org"})
            await next_frame(visitor, "identified")
            await expect(title).to_have_text("Reza Rezaei")
            await expect(row.locator(".name")).to_have_text("Reza Rezaei")
            await expect(page.locator("#customer h2")).to_have_text("Reza Rezaei")
            await expect(page.locator("#customer .identities")).to_contain_text("reza@example.org")
            await expect(channels).to_have_text(["Web chat", "Email"])
        assert problems == []


async def test_new_conversations_keep_the_pages_loaded_and_the_open_ticket(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        results = []
        for n in range(55):  # one by one: each its own moment, so the order is known
            results += await _ingest(server, _webchat(config, f"c{n:02}", f"question {n:02}", f"Customer {n:02}"))
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        rows = page.locator("#tickets .ticket")
        await expect(rows).to_have_count(50)
        await page.get_by_role("button", name="Load more").click()
        await expect(rows).to_have_count(55)
        await expect(page.get_by_role("button", name="Load more")).to_be_hidden()
        # Deep in the list: the second oldest.
        await page.locator(f'.ticket[data-ticket="{results[1].ticket_id}"]').click()
        await expect(page.locator("#conv-title")).to_have_text("Customer 01")

        async with http.ws_connect(f"{base}/chat/ws") as visitor:
            await next_frame(visitor, "session")
            await visitor.send_json({"type": "message", "text": "a new question", "client_id": "c1"})
            await next_frame(visitor, "message", client_id="c1")
        await expect(rows.first).to_contain_text("a new question")
        await expect(rows).to_have_count(56)
        await expect(page.locator(".ticket.active")).to_have_attribute("data-ticket", str(results[1].ticket_id))
        # j / k go on from the open ticket, not from the top of the list.
        await page.locator("#messages").focus()
        await page.keyboard.press("k")
        await expect(page.locator("#conv-title")).to_have_text("Customer 02")
        await page.keyboard.press("j")
        await expect(page.locator("#conv-title")).to_have_text("Customer 01")
        await page.keyboard.press("j")
        await expect(page.locator("#conv-title")).to_have_text("Customer 00")
        assert problems == []


async def test_an_edited_message_changes_live_and_shows_its_earlier_text(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        (result,) = await _ingest(server, _webchat(config, "alice", "the invoice number is 12", "Alice"))
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        await page.locator(f'.ticket[data-ticket="{result.ticket_id}"]').click()
        message = page.locator(f'#messages .msg[data-id="{result.message_id}"]')
        await expect(message.locator(".msg-body").first).to_have_text("the invoice number is 12")
        await expect(message.locator(".edits")).to_have_count(0)

        async with server.app[HUB].db.write() as s:
            edited = await do_edit_inbound_message(
                s,
                channel=Channel.WEBCHAT,
                external_id="alice:c1",
                body="the invoice number is 13, not 12",
                edited_at=utcnow(),
            )
            assert edited is not None
        await expect(message.locator(".msg-body").first).to_have_text("the invoice number is 13, not 12")
        await expect(page.locator(f'.ticket[data-ticket="{result.ticket_id}"] .preview')).to_have_text(
            "the invoice number is 13, not 12"
        )
        edits = message.locator("details.edits")
        await expect(edits.locator("summary")).to_have_text("Edited — earlier versions: 1")
        await edits.locator("summary").click()
        await expect(edits.locator("li .msg-body")).to_have_text("the invoice number is 12")

        # And so after a reload.
        await page.reload()
        await page.locator("#connection.live").wait_for()
        await expect(message.locator("details.edits li .msg-body")).to_have_text("the invoice number is 12")
        assert problems == []


SPOOFED = "Eve \u202eevil\u202c"


async def _email_from_eve(server: Any) -> tuple[IngestResult, dict[str, str]]:
    """An email with a photo, an SVG, a BMP, its sanitized HTML and its
    original, from a contact whose name was stored before the hub cleaned
    names (with a bidi override still in it). Returns the stored files' URLs."""
    hub = server.app[HUB]
    png = await hub.attachments.save(_png(), filename="photo.png", content_type="image/png")
    svg = await hub.attachments.save(
        b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>',
        filename="logo.svg",
        content_type="image/svg+xml",
    )
    bmp = await hub.attachments.save(b"BM" + b"\x00" * 60, filename="scan.bmp", content_type="image/bmp")
    html = await hub.attachments.save(
        b"<!DOCTYPE html><p>Hello</p>", filename="message.html", content_type="text/html", rendered=True
    )
    original = await hub.attachments.save(
        b"From: eve@example.com\r\n\r\nHello", filename="original.eml", content_type="message/rfc822"
    )
    async with hub.db.write() as s:
        await do_ensure_inbox(s, key="mail:support", channel=Channel.EMAIL, name="Support mail")
    (result,) = await _ingest(
        server,
        InboundMessage(
            channel=Channel.EMAIL,
            inbox="mail:support",
            external_id="<eve@example.com>",
            sender="eve@example.com",
            sender_name="Eve",
            subject="Invoice \u202egpj.exe",
            body="See the files.",
            attachments=(png, svg, bmp),
            extras={"email": {"from": "eve@example.com", "html_url": html.url, "original_url": original.url}},
        ),
    )
    async with hub.db.write() as s:
        await s.execute(update(Contact).where(Contact.id == result.contact_id).values(name=SPOOFED))
        await s.execute(update(Identity).where(Identity.contact_id == result.contact_id).values(display_name=SPOOFED))
    return result, {"html": html.url, "original": original.url}


async def test_names_and_subjects_cannot_reorder_what_the_agent_reads(tmp_path: Path) -> None:
    """Rows stored before the hub cleaned names keep their bidi overrides: the
    inbox shows them without (``Eve \u202eevil`` would read "Eve live")."""
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        result, _ = await _email_from_eve(server)
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        row = page.locator(f'.ticket[data-ticket="{result.ticket_id}"]')
        await expect(row.locator(".name")).to_have_text("Eve evil")
        await row.click()
        await expect(page.locator("#conv-title")).to_have_text("Eve evil")
        await expect(page.locator("#customer h2")).to_have_text("Eve evil")
        await expect(page.locator("#customer .identities li")).to_have_text("Email eve@example.com (Eve evil)")
        await expect(page.locator("#messages .msg-subject")).to_have_text("Subject: Invoice gpj.exe")
        assert problems == []


async def test_only_images_served_inline_are_embedded_and_an_email_links_its_html(tmp_path: Path) -> None:
    """An SVG or a BMP is only ever downloaded from the hub: embedded it would
    be a broken image, so it is a file to download like any other."""
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        result, urls = await _email_from_eve(server)
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        await page.locator(f'.ticket[data-ticket="{result.ticket_id}"]').click()
        message = page.locator("#messages .msg.in")
        await expect(message.locator("img")).to_have_count(1)
        await expect(message.locator("img")).to_have_attribute("alt", "photo.png")
        files = message.locator("a.attachment.file")
        await expect(files).to_have_count(2)
        await expect(files.first).to_contain_text("logo.svg")
        await expect(files.last).to_contain_text("scan.bmp")

        view = message.get_by_role("link", name="View as HTML")
        assert await view.get_attribute("href") == f"{base}{urls['html']}"
        raw = message.get_by_role("link", name="Original message")
        assert await raw.get_attribute("href") == f"{base}{urls['original']}"
        assert problems == []


async def test_a_telegram_reply_shows_what_it_answers_and_a_shared_place_links_the_map(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        base = str(server.make_url("")).rstrip("/")
        async with server.app[HUB].db.write() as s:
            await do_ensure_inbox(s, key="telegram:default", channel=Channel.TELEGRAM, name="Telegram")

        def tg(n: int, body: str, **extras: Any) -> InboundMessage:
            return InboundMessage(
                channel=Channel.TELEGRAM,
                inbox="telegram:default",
                external_id=f"default:777:{n}",
                sender="777",
                body=body,
                extras={"chat_id": 777, "message_id": n, **extras},
            )

        (first,) = await _ingest(server, tg(90, "my parcel is lost"))
        await _ingest(
            server,
            tg(91, "any news?", reply_to_message_id=90, forwarded=True),
            tg(92, "📍 35.700000, 51.400000", location={"latitude": 35.7, "longitude": 51.4}),
            tg(93, "and this?", reply_to_message_id=12),
        )
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        await log_in(page, base, "ana@example.com")
        await page.get_by_role("button", name="All").click()
        await page.locator(f'.ticket[data-ticket="{first.ticket_id}"]').click()
        reply = page.locator("#messages .msg.in", has_text="any news?")
        await expect(reply.locator(".badge", has_text="Forwarded")).to_have_count(1)
        await expect(reply.locator("q")).to_have_text("my parcel is lost")
        # An answered message not on the page is named as such.
        later = page.locator("#messages .msg.in", has_text="and this?")
        await expect(later).to_contain_text("In reply to an earlier message")
        place = page.locator("#messages .msg.in", has_text="35.700000").get_by_role("link", name="Open the map")
        assert await place.get_attribute("href") == (
            "https://www.openstreetmap.org/?mlat=35.700000&mlon=51.400000#map=16/35.700000/51.400000"
        )
        # A plain message gets no such line (the reply quoting it also has its text).
        assert await page.locator("#messages .msg.in").first.locator(".msg-links").count() == 0
        assert problems == []
