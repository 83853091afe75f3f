"""The gap report's cursor and limit are client input: a crafted cursor or a
limit out of range is a 400 naming it, never a server error."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import HUB
from hub.bot_report import gaps
from storage.db import Database
from storage.queries import MAX_ID, encode_cursor
from tests.bots.conversation import add_turns
from tests.hub.helpers import Agent, add_agent, make_config, running_hub


@contextlib.asynccontextmanager
async def three_gaps(tmp_path: Path) -> AsyncIterator[tuple[aiohttp.ClientSession, str, Agent]]:
    """A hub whose report holds three handed-off questions, and an agent logged in to it."""
    config = make_config(tmp_path, **{"bot.enabled": True})
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        agent = await Agent.login(http, base, "ana@example.com")
        await add_turns(server.app[HUB].db, [(f"question {n}", "handoff", "no_match") for n in range(3)])
        yield http, base, agent


@pytest.mark.parametrize("last", ["x", None, 1.5, True, [3], {"id": 3}, -1, MAX_ID + 1])
async def test_a_crafted_cursor_is_refused(tmp_path: Path, last: Any) -> None:
    async with three_gaps(tmp_path) as (http, base, agent):
        async with http.get(
            f"{base}/api/v1/bot/report", params={"cursor": encode_cursor(last)}, headers=agent.headers
        ) as r:
            assert r.status == 400, await r.text()
            assert (await r.json())["error"]["message"] == "cursor is not one this API issued"
        # The cursors the report issues still page through it.
        first = await agent.get("/api/v1/bot/report?limit=2")
        rest = await agent.get(f"/api/v1/bot/report?limit=2&cursor={first['next_cursor']}")
        assert [i["question"] for i in first["items"] + rest["items"]] == [f"question {n}" for n in (2, 1, 0)]


@pytest.mark.parametrize("limit", [0, -1])
async def test_a_page_of_nothing_is_refused_naming_the_limit(db: Database, limit: int) -> None:
    # With more gaps than the page holds: the case that crashed on the last row.
    await add_turns(db, [(f"question {n}", "handoff", "no_match") for n in range(3)])
    async with db.read() as session:
        with pytest.raises(ValueError, match=f"^limit must be at least 1, not {limit}$"):
            await gaps(session, cursor=None, limit=limit)
        items, cursor = await gaps(session, cursor=None, limit=1)
    assert ([i["question"] for i in items], cursor is not None) == (["question 2"], True)


async def test_the_api_refuses_a_limit_out_of_range(tmp_path: Path) -> None:
    async with three_gaps(tmp_path) as (http, base, agent):
        for limit in ("0", "-1", "201"):
            async with http.get(f"{base}/api/v1/bot/report", params={"limit": limit}, headers=agent.headers) as r:
                assert r.status == 400, await r.text()
                assert (await r.json())["error"]["message"] == "limit must be between 1 and 200"
        assert len((await agent.get("/api/v1/bot/report?limit=200"))["items"]) == 3
