"""A running hub records every upload and removes those no message used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

import hub.attachments
from hub.app import HUB
from storage.models import Upload
from tests.hub.helpers import Agent, add_agent, make_config, next_frame, running_hub
from tests.hub.twilio_helpers import eventually

SITE = "https://shop.example"


async def test_the_hub_removes_uploads_no_message_used(
    engine: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub.attachments, "SETTLE_SECONDS", 0.05)
    config = make_config(
        tmp_path,
        **engine,
        **{
            "webchat.allowed_origins": [SITE],
            "attachments.unused_grace_seconds": 3,
            "attachments.sweep_interval_seconds": 0.1,
        },
    )
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        agent = await Agent.login(http, base, "ana@example.com")

        async def upload(path: str, name: str, headers: dict[str, str]) -> Any:
            form = aiohttp.FormData()
            form.add_field("file", b"\x89PNG" + name.encode(), filename=name, content_type="image/png")
            async with http.post(f"{base}{path}", data=form, headers=headers) as r:
                assert r.status == 201, await r.text()
                return await r.json()

        async with http.ws_connect(f"{base}/chat/ws", headers={"Origin": SITE}) as ws:
            session = await next_frame(ws, "session")
            token = session["visitor_token"]
            sent = await upload(f"/chat/attachments?token={token}", "sent.png", {"Origin": SITE})
            dropped = await upload(f"/chat/attachments?token={token}", "dropped.png", {"Origin": SITE})
            agents = await upload("/api/v1/attachments", "agent.png", agent.headers)
            await ws.send_json({"type": "message", "client_id": "f1", "attachments": [sent]})
            await next_frame(ws, "message", client_id="f1")

        db = server.app[HUB].db
        async with db.read() as s:
            rows = {r.key: (r.visitor_id, r.agent_id) for r in await s.scalars(select(Upload))}
        key = {name: f["url"].split("/")[2] for name, f in (("sent", sent), ("dropped", dropped), ("agent", agents))}
        assert rows[key["sent"]] == rows[key["dropped"]] == (session["visitor_id"], None)
        assert rows[key["agent"]][0] is None and rows[key["agent"]][1] is not None

        async def status(att: dict[str, Any]) -> int:
            async with http.get(f"{base}{att['url']}") as r:
                return r.status

        async def swept() -> bool:
            async with db.read() as s:
                left = (await s.scalars(select(Upload.key))).all()
            return not left and await status(dropped) == 404 and await status(agents) == 404

        await eventually(swept, timeout=20)
        assert await status(sent) == 200
