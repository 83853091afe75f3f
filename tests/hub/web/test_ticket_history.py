"""A long conversation's early history: the ticket's detail holds the newest
page and says where the earlier ones are; ``GET /api/v1/tickets/{id}/messages``
walks back to the first message; the inbox loads them as the agent scrolls up.
Against a real server, on SQLite and PostgreSQL, and in a real browser."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from hub.actions import do_post_message
from hub.app import HUB
from hub.config import HubConfig
from hub.core import Author, Channel, InboundMessage, Role
from hub.web.schemas import TicketDetail, TicketMessages
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Message, Ticket
from storage.queries import NEWEST_MESSAGES, encode_cursor
from tests.browser import chromium, screenshot, watch_for_trouble
from tests.hub.helpers import Agent, add_agent, config_on, make_config, running_hub
from tests.hub.static.pages import log_in


@dataclass
class Env:
    base: str
    http: aiohttp.ClientSession
    agent: Agent
    db: Database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    async for config in config_on(request.param, tmp_path):
        async for e in _env(config):
            yield e


async def _env(config: HubConfig) -> AsyncIterator[Env]:
    async with running_hub(config) as server:
        await add_agent(config, "agent@example.com", Role.AGENT)
        base = str(server.make_url("")).rstrip("/")
        db = Database(config.database_url)
        async with aiohttp.ClientSession() as http:
            yield Env(base, http, await Agent.login(http, base, "agent@example.com"), db)
        await db.dispose()


async def customer_writes(db: Database, sender: str, bodies: list[str]) -> int:
    """The customer's messages, stored on their open ticket; its id."""
    async with db.write() as s:
        results = await ingest_batch(
            s,
            [
                InboundMessage(
                    channel=Channel.WEBCHAT, inbox="webchat", external_id=f"{sender}:{body}", sender=sender, body=body
                )
                for body in bodies
            ],
        )
    ticket_ids = {r.ticket_id for r in results if isinstance(r, IngestResult)}
    assert len(ticket_ids) == 1, results
    return ticket_ids.pop()


async def note(db: Database, ticket_id: int, body: str) -> None:
    async with db.write() as s:
        ticket = await s.get(Ticket, ticket_id)
        assert ticket is not None
        await do_post_message(s, ticket, body=body, author=Author.AGENT, private=True)


async def stored_ids(db: Database, ticket_id: int) -> list[int]:
    async with db.read() as s:
        return list(
            (await s.scalars(select(Message.id).where(Message.ticket_id == ticket_id).order_by(Message.id))).all()
        )


async def test_the_detail_says_there_is_more_and_paging_back_reaches_the_first_message(env: Env) -> None:
    # A long conversation: 12 early messages and an agents' note, then more than a page.
    tid = await customer_writes(env.db, "long", [f"early {i}" for i in range(12)])
    await note(env.db, tid, "VIP since 2023")
    await customer_writes(env.db, "long", [f"late {i}" for i in range(NEWEST_MESSAGES + 9)])
    everything = await stored_ids(env.db, tid)
    assert len(everything) == NEWEST_MESSAGES + 22

    detail = TicketDetail.model_validate(await env.agent.get(f"/api/v1/tickets/{tid}"))
    assert [m.id for m in detail.messages] == everything[-NEWEST_MESSAGES:]
    assert detail.messages_before == everything[-NEWEST_MESSAGES]
    older = everything[:-NEWEST_MESSAGES]

    async def page(query: str) -> TicketMessages:
        return TicketMessages.model_validate(await env.agent.get(f"/api/v1/tickets/{tid}/messages?{query}"))

    # Back with before=<the oldest message held>, seven at a time; a customer
    # writing meanwhile changes no earlier page.
    walked: list[int] = []
    sizes: list[int] = []
    before = detail.messages_before
    while True:
        got = await page(f"before={before}&limit=7")
        ids = [m.id for m in got.items]
        assert ids == sorted(ids)  # oldest first within the page
        walked = ids + walked
        sizes.append(len(ids))
        if len(sizes) == 1:
            await customer_writes(env.db, "long", ["still there?"])
        if got.next_cursor is None:
            break
        before = ids[0]
    assert walked == older
    assert sizes == [7, 7, 7, 1]
    first = (await page(f"before={older[1]}")).items
    assert [(m.body, m.private) for m in first] == [("early 0", False)]

    # The same walk with the cursors the pages give.
    by_cursor: list[int] = []
    query = f"before={detail.messages_before}&limit=10"
    while True:
        got = await page(query)
        by_cursor = [m.id for m in got.items] + by_cursor
        if got.next_cursor is None:
            break
        query = f"cursor={got.next_cursor}&limit=10"
    assert by_cursor == older

    notes = [m for m in (await page(f"before={detail.messages_before}&limit=200")).items if m.private]
    assert [(m.body, m.author) for m in notes] == [("VIP since 2023", "agent")]

    # Neither before nor cursor: the newest page, with the way further back.
    newest = await page("limit=3")
    assert [m.body for m in newest.items] == [
        f"late {NEWEST_MESSAGES + 7}",
        f"late {NEWEST_MESSAGES + 8}",
        "still there?",
    ]
    assert newest.next_cursor is not None


async def test_a_short_conversation_has_nothing_before_it(env: Env) -> None:
    tid = await customer_writes(env.db, "short", ["hello", "anyone?"])
    detail = TicketDetail.model_validate(await env.agent.get(f"/api/v1/tickets/{tid}"))
    assert [m.body for m in detail.messages] == ["hello", "anyone?"]
    assert detail.messages_before is None
    everything = TicketMessages.model_validate(await env.agent.get(f"/api/v1/tickets/{tid}/messages"))
    assert [m.body for m in everything.items] == ["hello", "anyone?"]
    assert everything.next_cursor is None
    before_first = await env.agent.get(f"/api/v1/tickets/{tid}/messages?before={detail.messages[0].id}")
    assert before_first == {"items": [], "next_cursor": None}


async def test_bad_history_requests_name_the_problem(env: Env) -> None:
    tid = await customer_writes(env.db, "bad", ["hello"])
    path = f"/api/v1/tickets/{tid}/messages"
    for query, status, needle in [
        ("before=abc", 400, "before must be an integer, not 'abc'"),
        ("before=", 400, "before must be an integer"),
        ("before=0", 400, "before must be a positive integer, not 0"),
        ("before=-5", 400, "before must be a positive integer, not -5"),
        ("before=1.5", 400, "before must be an integer"),
        ("before=99999999999999999999", 400, "before must be at most 9223372036854775807"),
        ("limit=0", 400, "limit must be between 1 and 200"),
        ("limit=201", 400, "limit must be between 1 and 200"),
        ("limit=ten", 400, "limit must be an integer"),
        # Other spellings int() reads, refused like those of ids.
        ("limit=%2B7", 400, "limit must be an integer, not '+7'"),
        ("limit=7_0", 400, "limit must be an integer"),
        ("limit=%D9%A7", 400, "limit must be an integer"),
        ("before=5&limit=-1", 400, "limit must be between 1 and 200"),
        ("cursor=garbage", 400, "cursor is not one this API issued"),
        (f"cursor={encode_cursor('abc')}", 400, "cursor is not one this API issued"),
        (f"cursor={encode_cursor(10**20)}", 400, "cursor is not one this API issued"),
        (f"cursor={encode_cursor(1, 2)}", 400, "cursor is not one this API issued"),
        (f"before=5&cursor={encode_cursor(5)}", 400, "give before or cursor, not both"),
    ]:
        body = await env.agent.get(f"{path}?{query}", status)
        assert set(body) == {"error"}, query
        assert needle in body["error"]["message"], (query, body)
    for ticket, status, needle in [
        ("987654", 404, "ticket 987654 does not exist"),
        ("0", 404, "id 0 does not exist"),
        ("abc", 400, "id must be an integer"),
    ]:
        body = await env.agent.get(f"/api/v1/tickets/{ticket}/messages?before=5", status)
        assert needle in body["error"]["message"], (ticket, body)
    async with env.http.get(f"{env.base}{path}") as r:
        assert r.status == 401


@pytest.mark.browser
@pytest.mark.timeout(300)
async def test_the_inbox_loads_earlier_messages_where_the_agent_is_reading(tmp_path: Path) -> None:
    """More than a page of history: a click on "Load earlier messages" brings
    the page before, above what the agent reads, which stays in place;
    scrolling to the top brings the rest; live messages still arrive below."""
    config = make_config(tmp_path)
    total = NEWEST_MESSAGES + 130
    async with running_hub(config) as server, chromium() as browser:
        await add_agent(config, "ana@example.com", Role.ADMIN)
        db = server.app[HUB].db
        tid = await customer_writes(db, "long", [f"message {i}" for i in range(total)])
        page = await (await browser.new_context()).new_page()
        problems: list[str] = []
        watch_for_trouble(page, problems)
        # Here, not at the top: the API tests above need no Playwright.
        from playwright.async_api import Route, expect

        await log_in(page, str(server.make_url("")).rstrip("/"), "ana@example.com")
        await page.get_by_role("button", name="All").click()
        await page.locator(f'.ticket[data-ticket="{tid}"]').click()
        messages = page.locator("#messages .msg")
        await expect(messages).to_have_count(NEWEST_MESSAGES)
        await expect(messages.last).to_contain_text(f"message {total - 1}")

        # In Persian too, where the conversation reads right to left.
        await page.locator("#language").select_option("fa")
        await expect(page.get_by_role("button", name="بارگذاری پیام‌های قبلی")).to_be_visible()
        await page.locator("#language").select_option("en")

        # The earlier page is slow to come: what the agent sees meanwhile must not move when it lands.
        held, release = asyncio.Event(), asyncio.Event()

        async def hold(route: Route) -> None:
            held.set()
            await release.wait()
            await route.continue_()

        history = re.compile(r"/api/v1/tickets/\d+/messages\?")
        await page.route(history, hold)
        await page.get_by_role("button", name="Load earlier messages").click()
        await asyncio.wait_for(held.wait(), 20)
        await expect(messages.first).to_contain_text(f"message {total - NEWEST_MESSAGES}")
        reading = page.locator(f'#messages .msg[data-id="{await messages.first.get_attribute("data-id")}"]')
        where = await reading.evaluate("(m) => m.getBoundingClientRect().top")
        release.set()
        await expect(messages).to_have_count(NEWEST_MESSAGES + 100)
        await page.unroute(history)
        moved = await reading.evaluate("(m) => m.getBoundingClientRect().top")
        assert abs(moved - where) < 2, (where, moved)
        await expect(page.locator("#announcer")).to_have_text("Earlier messages loaded: 100")

        # Scrolled to the top, the rest comes by itself, down to the very first message.
        await page.locator("#messages").evaluate("(box) => { box.scrollTop = 0; }")
        await expect(messages).to_have_count(total)
        await expect(messages.first).to_contain_text("message 0")
        await expect(page.get_by_role("button", name="Load earlier messages")).to_have_count(0)
        shown: list[Any] = await messages.evaluate_all("(all) => all.map((m) => Number(m.dataset.id))")
        assert shown == await stored_ids(db, tid)

        # A new message still arrives at the bottom.
        await customer_writes(db, "long", ["and one more thing"])
        await expect(messages).to_have_count(total + 1)
        await expect(messages.last).to_contain_text("and one more thing")
        await screenshot(page, "inbox-earlier-messages")
        assert problems == []
