"""A web chat visitor's files: ``POST /chat/attachments`` and a ``message``
frame that carries what it returned."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import aiohttp

from tests.hub.helpers import Agent, add_agent, make_config, next_frame, running_hub

PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(64)
SITE = "https://shop.example"


async def _session(http: aiohttp.ClientSession, base: str) -> str:
    async with http.ws_connect(f"{base}/chat/ws", headers={"Origin": SITE}) as ws:
        token: str = (await next_frame(ws, "session"))["visitor_token"]
    return token


async def _upload(
    http: aiohttp.ClientSession,
    base: str,
    token: str | None,
    data: bytes = PNG,
    *,
    origin: str = SITE,
    content_type: str = "image/png",
) -> tuple[int, dict[str, Any], Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="screen shot.png", content_type=content_type)
    query = f"?token={token}" if token is not None else ""
    async with http.post(f"{base}/chat/attachments{query}", data=form, headers={"Origin": origin}) as r:
        return r.status, await r.json(), r.headers


async def test_a_visitors_file_reaches_the_agent_as_the_store_has_it(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"webchat.allowed_origins": [SITE]})
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        token = await _session(http, base)
        # Declared as a PDF by the visitor's browser; the store says what it keeps.
        status, uploaded, headers = await _upload(http, base, token, content_type="application/pdf; x=1")
        assert status == 201, uploaded
        assert headers["Access-Control-Allow-Origin"] == SITE
        assert uploaded["size"] == len(PNG) and uploaded["filename"] == "screen shot.png"
        assert uploaded["content_type"] == "application/pdf"
        async with http.get(f"{base}{uploaded['url']}") as r:
            assert await r.read() == PNG

        async with http.ws_connect(f"{base}/chat/ws?token={token}", headers={"Origin": SITE}) as ws:
            await next_frame(ws, "session")
            # The client's claims about the file are replaced by the store's.
            claimed = {**uploaded, "content_type": "image/png", "size": 1, "filename": "other.png"}
            await ws.send_json({"type": "message", "client_id": "f1", "attachments": [claimed]})
            stored = await next_frame(ws, "message", client_id="f1")
            assert stored["text"] == "" and stored["attachments"] == [uploaded]
            await ws.send_json(
                {"type": "message", "text": "and the invoice", "client_id": "f2", "attachments": [uploaded]}
            )
            await next_frame(ws, "message", client_id="f2")

        agent = await Agent.login(http, base, "ana@example.com")
        tickets = (await agent.get("/api/v1/tickets"))["items"]
        detail = await agent.get(f"/api/v1/tickets/{tickets[0]['id']}")
        files = [(m["body"], m["attachments"]) for m in detail["messages"]]
        assert files == [("", [uploaded]), ("and the invoice", [uploaded])]
        assert files[0][1][0]["content_type"] == "application/pdf"


async def test_a_made_up_attachment_is_refused_naming_the_field(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        token = await _session(http, base)
        _, uploaded, _ = await _upload(http, base, token)
        async with http.ws_connect(f"{base}/chat/ws?token={token}") as ws:
            await next_frame(ws, "session")
            made_up = [uploaded, {"url": "/attachments/AAAAAAAAAAAAAAAAAAAAAA/x.png", "content_type": "image/png"}]
            await ws.send_json({"type": "message", "text": "look", "client_id": "m1", "attachments": made_up})
            error = await next_frame(ws, "error")
            assert error["code"] == "invalid_frame" and error["client_id"] == "m1"
            assert error["field"] == "attachments.1.url" and "/chat/attachments" in error["message"]
            elsewhere = {"url": "https://evil.example/x.png"}
            await ws.send_json({"type": "message", "client_id": "m2", "attachments": [elsewhere]})
            assert (await next_frame(ws, "error"))["field"] == "attachments.0.url"
            await ws.send_json({"type": "message", "client_id": "m3", "attachments": [uploaded] * 11})
            assert "at most 10" in (await next_frame(ws, "error", client_id="m3"))["message"]
            await ws.send_json({"type": "message", "client_id": "m4", "attachments": [{"href": "x"}]})
            assert "attachments.0" in (await next_frame(ws, "error", client_id="m4"))["message"]
            await ws.send_json({"type": "message", "text": " ", "client_id": "m5", "attachments": []})
            assert (await next_frame(ws, "error", client_id="m5"))["code"] == "invalid_frame"
            # Nothing of those was stored: the next message is the first.
            await ws.send_json({"type": "message", "text": "ok", "client_id": "m6"})
            stored = await next_frame(ws, "message", client_id="m6")
            assert stored["attachments"] == []


async def test_no_token_or_a_forged_one_is_401(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        token = await _session(http, base)
        for bad in (None, "", token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "forged"):
            status, body, headers = await _upload(http, base, bad)
            assert status == 401, (bad, body)
            assert "visitor token" in body["error"]["message"]
            # The widget can read why.
            assert headers["Access-Control-Allow-Origin"] == SITE


async def test_a_file_over_the_limit_is_413_and_not_stored(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"attachments.max_bytes": 2048})
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        token = await _session(http, base)
        status, body, headers = await _upload(http, base, token, b"x" * 2049)
        assert status == 413 and "attachments.max_bytes" in body["error"]["message"]
        assert headers["Access-Control-Allow-Origin"] == SITE
        assert not any(p.is_file() for p in config.attachments_dir.rglob("*"))
        # Not multipart: the agents' upload's answer.
        async with http.post(f"{base}/chat/attachments?token={token}", json={"file": "x"}) as r:
            assert r.status == 400 and "multipart/form-data" in (await r.json())["error"]["message"]


async def test_a_site_not_allowed_cannot_upload(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"webchat.allowed_origins": [SITE]})
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        token = await _session(http, base)
        status, body, headers = await _upload(http, base, token, origin="https://stranger.example")
        assert status == 403 and "webchat.allowed_origins" in body["error"]["message"]
        assert "Access-Control-Allow-Origin" not in headers
        assert not any(p.is_file() for p in config.attachments_dir.rglob("*"))
        status, _, _ = await _upload(http, base, token, origin=SITE + "/")
        assert status == 201


async def test_uploads_are_limited_per_visitor_and_per_address(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, **{"webchat.limits.uploads_per_hour": 2, "webchat.limits.address_uploads_per_hour": 3}
    )
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        first, second = await _session(http, base), await _session(http, base)
        assert [(await _upload(http, base, first))[0] for _ in range(2)] == [201, 201]
        status, body, headers = await _upload(http, base, first)
        assert status == 429 and int(headers["Retry-After"]) > 0
        assert headers["Access-Control-Allow-Origin"] == SITE
        # Another visitor has their own count, but the address's is shared:
        # the refused upload counted too.
        status, body, _ = await _upload(http, base, second)
        assert status == 429 and "address" in body["error"]["message"]
