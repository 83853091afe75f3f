"""A reply's attachments are the hub's own stored files, described by the store,
and only go out on a channel that can carry them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest

from channels.twilio_sms import TwilioSmsChannel
from channels.twilio_voice import TwilioVoiceChannel
from channels.webchat import WebchatChannel
from hub.actions import check_channel_takes_files
from hub.core import Attachment, Channel
from hub.errors import ValidationFailed
from tests.hub.helpers import Agent, add_agent, make_config, next_frame, running_hub
from tests.hub.twilio_helpers import TwilioHub, eventually, twilio_hub
from tests.hub.web.test_twilio_sms import new_sid, ticket_of


async def upload(http: aiohttp.ClientSession, base: str, agent: Agent, data: bytes, name: str, ctype: str) -> Any:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type=ctype)
    async with http.post(f"{base}/api/v1/attachments", data=form, headers=agent.headers) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def test_a_reply_takes_only_stored_files_described_by_the_store(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")
            pdf = await upload(http, base, agent, b"%PDF-1.4 invoice", "../فاکتور.pdf", "application/pdf")
            async with http.ws_connect(f"{base}/chat/ws") as visitor:
                await next_frame(visitor, "session")
                await visitor.send_json({"type": "message", "text": "hi", "client_id": "1"})
                await next_frame(visitor, "message", client_id="1")
                tid = (await agent.get("/api/v1/tickets"))["items"][0]["id"]
                url = f"/api/v1/tickets/{tid}/messages"
                key = pdf["url"].split("/")[2]
                for i, bad in enumerate(
                    (
                        "/attachments/AAAAAAAAAAAAAAAAAAAAAA/nope.png",
                        "javascript:alert(1)",
                        "file:///etc/passwd",
                        f"https://elsewhere.example.com{pdf['url']}",
                        f"/attachments/{key}/other-name.pdf",
                    )
                ):
                    files = [pdf, {"url": bad}]
                    error = (await agent.post(url, {"body": "", "attachments": files}, 422))["error"]
                    assert error["details"] == [
                        {"field": "attachments.1.url", "message": error["details"][0]["message"]}
                    ]
                    assert "attachments.1.url" in error["message"] and "POST /api/v1/attachments" in error["message"], i
                # Nothing was stored or sent for any of them.
                assert [m["direction"] for m in (await agent.get(f"/api/v1/tickets/{tid}"))["messages"]] == ["in"]

                # What the client says about the file does not count: the store's type, size and name do.
                lied = {**pdf, "content_type": "image/png", "size": 1, "filename": "cat.png"}
                sent = await agent.post(url, {"body": "your invoice", "attachments": [lied]}, 201)
                stored = {"url": pdf["url"], "content_type": "application/pdf", "size": 16, "filename": "../فاکتور.pdf"}
                assert sent["attachments"] == [stored]
                frame = await next_frame(visitor, "message", id=sent["id"])
                assert frame["attachments"] == [stored]


class TextOnly(WebchatChannel):
    supports_attachments: ClassVar[bool] = False


def test_a_channel_that_cannot_carry_files_refuses_them() -> None:
    adapter = TextOnly(lambda *_: None)  # type: ignore[arg-type]
    pdf = Attachment(url="/attachments/k/a.pdf", content_type="application/pdf", size=3)
    with pytest.raises(ValidationFailed, match="the webchat channel cannot carry files"):
        check_channel_takes_files({Channel.WEBCHAT: adapter}, Channel.WEBCHAT, [pdf])
    # Text alone goes, and a channel that does carry files takes them.
    check_channel_takes_files({Channel.WEBCHAT: adapter}, Channel.WEBCHAT, [])
    check_channel_takes_files({Channel.WEBCHAT: WebchatChannel(lambda *_: None)}, Channel.WEBCHAT, [pdf])  # type: ignore[arg-type]


async def _sms_ticket(t: TwilioHub) -> tuple[Agent, int]:
    assert await t.sms("hello", sid=new_sid()) == 200
    agent = await t.agent()
    return agent, int((await ticket_of(t, agent))["id"])


async def test_mms_replies_within_twilios_limits_go_out_with_files_twilio_can_check(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides={"attachments.max_bytes": 6_000_000}) as t:
        agent, tid = await _sms_ticket(t)
        base = str(t.server.make_url("")).rstrip("/")
        card = await upload(t.http, base, agent, b"BEGIN:VCARD\r\nFN:Ana\r\nEND:VCARD\r\n", "ana.vcf", "text/vcard")
        big = await upload(t.http, base, agent, b"x" * 4_000_000, "a.pdf", "application/pdf")
        more = await upload(t.http, base, agent, b"x" * 1_000_001, "b.pdf", "application/pdf")
        url = f"/api/v1/tickets/{tid}/messages"
        over = (await agent.post(url, {"body": "files", "attachments": [big, more]}, 422))["error"]
        assert "5000001 bytes" in over["message"] and "at most 5000000" in over["message"]
        eleven = (await agent.post(url, {"body": "cards", "attachments": [card] * 11}, 422))["error"]
        assert "at most 10 files, not 11" in eleven["message"]
        assert [m["direction"] for m in (await agent.get(f"/api/v1/tickets/{tid}"))["messages"]] == ["in"]

        await agent.post(url, {"body": "my card", "attachments": [card]}, 201)
        sent = await eventually(lambda: _media_sent(t))
        assert sent == [t.url(card["url"])]
        # Twilio checks the file's type with HEAD and GET before it sends it.
        for method in ("HEAD", "GET"):
            async with t.http.request(method, sent[0]) as r:
                assert r.status == 200, method
                assert r.headers["Content-Type"] == "text/vcard"
                assert r.headers["Content-Disposition"].startswith("attachment;")
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert "sandbox" in r.headers["Content-Security-Policy"]


async def _media_sent(t: TwilioHub) -> list[str] | None:
    media = [r.form["MediaUrl"] for r in t.fake.requests if r.form.get("MediaUrl")]
    return media[0] if media else None


def test_files_cannot_go_out_by_sms_without_a_public_address() -> None:
    """Twilio fetches MMS media from the hub: without server.public_url it
    would get a path it cannot reach."""
    card = Attachment(url="/attachments/k/ana.vcf", content_type="text/vcard", size=30)
    channel = TwilioSmsChannel([], _NoOptOuts(), api_base_url="http://127.0.0.1:1", public_url=None)
    with pytest.raises(ValidationFailed, match=r"server\.public_url is not set"):
        check_channel_takes_files({Channel.SMS: channel}, Channel.SMS, [card])
    # A phone ticket's text reply goes out by SMS: the same rule.
    voice = TwilioVoiceChannel(channel, None)
    with pytest.raises(ValidationFailed, match=r"server\.public_url is not set"):
        check_channel_takes_files({Channel.VOICE: voice}, Channel.VOICE, [card])
    check_channel_takes_files({Channel.SMS: channel}, Channel.SMS, [])


class _NoOptOuts:
    async def opted_out(self, phone: str, sender: str) -> str | None:
        return None

    async def record_opt_out(self, phone: str, sender: str, source: str) -> None:
        return None
