"""Files on an email reply reach the customer's mail reader as it reads them:
a forwarded message as a message, text in its charset (real SMTP server)."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.config import load_config
from tests.hub.helpers import Agent, add_agent, next_frame, running_hub
from tests.mailservers import SmtpServer

FORWARDED = b"From: cust@example.com\r\nSubject: the order\r\n\r\nPlease see this.\r\n"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def upload(http: aiohttp.ClientSession, base: str, agent: Agent, data: bytes, name: str, ctype: str) -> Any:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type=ctype)
    async with http.post(f"{base}/api/v1/attachments", data=form, headers=agent.headers) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def test_an_email_reply_sends_a_forwarded_message_and_text_files_readably(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    mailbox = {
        "address": "support@acme.com",
        "display_name": "Acme",
        "imap": {"host": "127.0.0.1", "port": 1, "security": "none", "user": "u", "password_env": "PW"},
        "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none"},
    }
    config = load_config(
        path=None,
        env={"HUB_SECRET_KEY": "test-secret", "PW": "x"},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "workers.sweep_interval_seconds": 0.2,
            "workers.send_backoff_seconds": 0.05,
            "logging.level": "WARNING",
            "email.mailboxes": [mailbox],
        },
    )
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")
            eml = await upload(http, base, agent, FORWARDED, "forward.eml", "message/rfc822")
            note = await upload(http, base, agent, "سلام دنیا\n".encode(), "یادداشت.txt", "text/plain")
            arabic = await upload(
                http, base, agent, "سلام".encode("cp1256"), "old.txt", "text/plain; charset=windows-1256"
            )
            async with http.ws_connect(f"{base}/chat/ws") as visitor:
                await next_frame(visitor, "session")
                await visitor.send_json({"type": "identify", "name": "C", "email": "cust@example.com"})
                await next_frame(visitor, "identified")
                await visitor.send_json({"type": "message", "text": "hi", "client_id": "1"})
                await next_frame(visitor, "message", client_id="1")
            tid = (await agent.get("/api/v1/tickets"))["items"][0]["id"]
            body = {"body": "see files", "channel": "email", "attachments": [eml, note, arabic]}
            await agent.post(f"/api/v1/tickets/{tid}/messages", body, 201)
            (mail,) = await smtp.received(1, timeout=20)
    forwarded, text, legacy = list(mail.iter_attachments())
    assert isinstance(forwarded, EmailMessage) and isinstance(text, EmailMessage) and isinstance(legacy, EmailMessage)
    assert forwarded.get_content_type() == "message/rfc822"
    assert forwarded["Content-Transfer-Encoding"] in ("7bit", "8bit")
    inner = forwarded.get_content()
    assert inner["Subject"] == "the order" and inner["From"] == "cust@example.com"
    assert inner.get_content().strip() == "Please see this."
    assert (text.get_content_type(), text.get_content_charset()) == ("text/plain", "utf-8")
    assert text.get_filename() == "یادداشت.txt" and text.get_content() == "سلام دنیا\n"
    assert legacy.get_content_charset() == "windows-1256" and legacy.get_content() == "سلام"
