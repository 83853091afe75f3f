"""The gap report's cursor is client input: a crafted one is a 400 naming the
cursor, never a server error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import HUB
from storage.queries import MAX_ID, encode_cursor
from tests.bots.conversation import add_turns
from tests.hub.helpers import Agent, add_agent, make_config, running_hub


@pytest.mark.parametrize("last", ["x", None, 1.5, True, [3], {"id": 3}, -1, MAX_ID + 1])
async def test_a_crafted_cursor_is_refused(tmp_path: Path, last: Any) -> None:
    config = make_config(tmp_path, **{"bot.enabled": True})
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        agent = await Agent.login(http, base, "ana@example.com")
        await add_turns(server.app[HUB].db, [(f"question {n}", "handoff", "no_match") for n in range(3)])
        async with http.get(
            f"{base}/api/v1/bot/report", params={"cursor": encode_cursor(last)}, headers=agent.headers
        ) as r:
            assert r.status == 400, await r.text()
            assert (await r.json())["error"]["message"] == "cursor is not one this API issued"
        # The cursors the report issues still page through it.
        first = await agent.get("/api/v1/bot/report?limit=2")
        rest = await agent.get(f"/api/v1/bot/report?limit=2&cursor={first['next_cursor']}")
        assert [i["question"] for i in first["items"] + rest["items"]] == [f"question {n}" for n in (2, 1, 0)]
