"""Telegram end to end: a running hub, the real python-telegram-bot client
pointed at a local fake of the Bot API, updates posted to the webhook (and
polled), replies going out, agents watching through the API."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from channels.base import SEND_PARTS
from channels.telegram import parse_update
from hub.actions import do_ensure_inbox, do_post_message
from hub.app import HUB, Hub
from hub.config import ConfigError, HubConfig, load_config
from hub.core import Author, Channel, InboundMessage, QuickReply
from hub.telegram import DEAD_LETTER_ACTION, POISON_ATTEMPTS, Backoff
from storage.ingest import IngestResult
from storage.migrate import upgrade_async
from storage.models import AuditLog, Contact, Identity, Message, TelegramBotState, Ticket
from tests import services
from tests.channels.fake_telegram import TOKEN, FakeBotAPI, fake_bot_api
from tests.hub.helpers import Agent, add_agent, next_frame, running_hub
from tests.hub.procs import HubProcess, hub_env, run_cli
from tests.services import shared_data

SECRET = "webhook-Secret_123"
ADMIN = "admin@example.com"
USER = {"id": 777, "is_bot": False, "first_name": "Sara", "last_name": "Ahmadi", "username": "sara"}
T = TypeVar("T")


def tg_config(tmp_path: Path, fake: FakeBotAPI, **overrides: Any) -> HubConfig:
    base: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "server.public_url": "https://hub.example.com",
        "workers.sweep_interval_seconds": 0.1,
        "workers.send_backoff_seconds": 0.05,
        "logging.level": "WARNING",
    }
    env = {
        "HUB_SECRET_KEY": "test-secret",
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "HUB_TELEGRAM_API_BASE_URL": fake.base_url,
    }
    return load_config(path=None, env=env, overrides={**base, **overrides})


@pytest.fixture
async def fake() -> AsyncIterator[FakeBotAPI]:
    async with fake_bot_api() as api:
        yield api


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """Config overrides for the database the hub runs on."""
    if request.param == "sqlite":
        yield {}
    else:
        async for url in services.fresh_postgres_database():
            yield {"database.url": url}


@pytest.fixture
async def started(tmp_path: Path, fake: FakeBotAPI) -> AsyncIterator[tuple[TestServer, Hub]]:
    config = tg_config(tmp_path, fake)
    await upgrade_async(config.database_url)
    await add_agent(config, ADMIN)
    async with running_hub(config) as server:
        yield server, server.app[HUB]


async def admin(http: aiohttp.ClientSession, server: TestServer) -> Agent:
    return await Agent.login(http, str(server.make_url("")).rstrip("/"), ADMIN)


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 15.0) -> T:
    """``probe()`` once it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting; last value {value!r}")
        await asyncio.sleep(0.05)


async def post(
    http: aiohttp.ClientSession,
    server: TestServer,
    body: Any,
    *,
    secret: str | None = SECRET,
    bot: str = "default",
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(server.make_url(f"/webhooks/telegram/{bot}"), data=data, headers=headers) as r:
        return r.status, await r.json()


def message_update(update_id: int, message_id: int, chat: int = 777, **content: Any) -> dict[str, Any]:
    user = {**USER, "id": chat}
    return {
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "date": 1_700_000_000 + update_id,
            "chat": {"id": chat, "type": "private", "first_name": "Sara"},
            "from": user,
            **content,
        },
    }


async def telegram_messages(hub: Hub) -> list[Message]:
    async with hub.db.read() as s:
        rows = await s.scalars(select(Message).where(Message.channel == "telegram").order_by(Message.id))
        return list(rows.all())


async def message_by_external(hub: Hub, external_id: str) -> Message | None:
    async with hub.db.read() as s:
        found: Message | None = await s.scalar(select(Message).where(Message.external_id == external_id))
        return found


async def identity(hub: Hub, kind: str, address: str) -> Identity | None:
    async with hub.db.read() as s:
        found: Identity | None = await s.scalar(
            select(Identity).where(Identity.channel == kind, Identity.address == address)
        )
        return found


# --- the webhook ---------------------------------------------------------------------


async def test_official_samples_are_each_handled_or_cleanly_ignored(
    started: tuple[TestServer, Hub], fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    server, hub = started
    # The hub registered its webhook with Telegram at start-up.
    webhook = await eventually(lambda: asyncio.sleep(0, fake.webhook))
    assert webhook["url"] == "https://hub.example.com/webhooks/telegram/default"
    assert webhook["secret_token"] == SECRET
    assert webhook["allowed_updates"] == ["message", "edited_message", "callback_query", "my_chat_member"]
    assert fake.sent("getMe")  # the token was checked at start-up
    fake.add_file("AwADBAADbXXXXXXXXXXXGBdhD2l6_XX", b"ID3 audio bytes" * 100, "music/file_1.mp3")

    files = sorted(shared_data("telegram", "official_webhooks_page_samples").glob("*.json"))
    outcomes: dict[str, str] = {}
    for i, path in enumerate(files, start=1):
        sample = json.loads(path.read_text(encoding="utf-8"))
        # Telegram's samples all share update_id 10000 and message_id 1365; as
        # separate updates they get their own, except the edit, which edits
        # sample 02's message.
        sample["update_id"] = 10000 + i
        for key in ("message", "edited_message"):
            if key in sample:
                sample[key]["message_id"] = 1365 + (2 if key == "edited_message" else i)
        status, answer = await post(http, server, sample)
        assert status == 200, (path.name, answer)
        outcomes[path.stem] = answer["outcome"]
    assert outcomes == {
        "01_message_text_minimal": "stored",
        "02_message_text": "stored",
        "03_forwarded_message": "stored",
        "04_forwarded_channel_message": "stored",
        "05_message_with_reply": "stored",
        "06_edited_message": "edited",
        "07_message_with_entities": "stored",
        "08_message_with_audio": "stored",
        "09_voice_message": "stored",
        "10_message_with_document": "stored",
        "11_inline_query": "ignored: inline_query updates are not handled",
        "12_chosen_inline_result": "ignored: chosen_inline_result updates are not handled",
        "13_callback_query": "stored",
    }
    stored = await telegram_messages(hub)
    assert len(stored) == 10
    assert {m.contact_id for m in stored} == {stored[0].contact_id}
    edited = await message_by_external(hub, "default:1111111:1367")
    assert edited is not None
    assert edited.body == "Edited text"
    assert edited.extras["edits"] == [{"body": "/start", "replaced_at": "2015-09-07T17:23:20+00:00"}]
    with_files = [m for m in stored if m.attachments]
    assert [a["filename"] for m in with_files for a in m.attachments] == [
        "Test music file.mp3",
        "voice-1374.ogg",
        "Testfile.pdf",
    ]
    async with http.get(server.make_url(with_files[2].attachments[0]["url"])) as r:
        assert r.status == 200
        assert await r.read() == b"ID3 audio bytes" * 100
    callback = stored[-1]
    assert (callback.body, callback.extras["quick_reply"]) == ("Data from button callback", "Data from button callback")
    assert [c.params["callback_query_id"] for c in fake.sent("answerCallbackQuery")] == ["4382bfdwdsb323b2d9"]
    # A bare /start (sample 01) records no source.
    async with hub.db.read() as s:
        contact = await s.get(Contact, stored[0].contact_id)
        assert contact is not None and "source" not in contact.attributes


async def test_secret_token_and_malformed_bodies(started: tuple[TestServer, Hub], http: aiohttp.ClientSession) -> None:
    server, hub = started
    update = message_update(1, 10, text="hello")
    for secret in (None, "", "wrong-secret", SECRET + "x"):
        status, answer = await post(http, server, update, secret=secret)
        assert status == 403, answer
        assert "X-Telegram-Bot-Api-Secret-Token" in answer["error"]["message"]
    status, answer = await post(http, server, update, bot="sales")
    assert status == 404
    assert "sales" in answer["error"]["message"]
    for body, needle in (
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"message": update["message"]}).encode(), "update_id"),
        (json.dumps({"update_id": 3, "message": {"text": "no chat"}}).encode(), "not a valid Telegram message"),
    ):
        status, answer = await post(http, server, body)
        assert status == 400, answer
        assert needle in answer["error"]["message"]
    assert await telegram_messages(hub) == []
    status, answer = await post(http, server, update)
    assert (status, answer["outcome"]) == (200, "stored")


async def test_repeated_update_is_stored_once_and_edits_update_the_message(
    started: tuple[TestServer, Hub], http: aiohttp.ClientSession
) -> None:
    server, hub = started
    agent = await admin(http, server)
    first = message_update(100, 50, text="my order is late")
    assert (await post(http, server, first))[1]["outcome"] == "stored"
    assert (await post(http, server, first))[1]["outcome"] == "duplicate"
    assert (await post(http, server, copy.deepcopy(first)))[1]["outcome"] == "duplicate"
    assert len(await telegram_messages(hub)) == 1

    edit = copy.deepcopy(first)
    edit["update_id"] = 101
    edit["edited_message"] = {**edit.pop("message"), "text": "my order #42 is late", "edit_date": 1_700_000_500}
    async with agent.events() as ws:
        assert (await post(http, server, edit))[1]["outcome"] == "edited"
        frame = await next_frame(ws, "message.updated")
    assert frame["message"]["body"] == "my order #42 is late"
    assert frame["message"]["edits"] == [{"body": "my order is late", "replaced_at": "2023-11-14T22:21:40+00:00"}]
    # The same edit again, and an older one arriving late, change nothing.
    assert (await post(http, server, edit))[1]["outcome"] == "edited"
    older = copy.deepcopy(edit)
    older["update_id"] = 99
    older["edited_message"].update(text="stale", edit_date=1_700_000_400)
    assert (await post(http, server, older))[1]["outcome"] == "edited"
    (msg,) = await telegram_messages(hub)
    assert msg.body == "my order #42 is late"
    assert len(msg.extras["edits"]) == 1
    ticket = await agent.get(f"/api/v1/tickets/{msg.ticket_id}")
    assert ticket["messages"][0]["edits"][0]["body"] == "my order is late"


async def test_start_payload_is_recorded_as_the_contacts_source(
    started: tuple[TestServer, Hub], http: aiohttp.ClientSession
) -> None:
    server, hub = started
    agent = await admin(http, server)
    start = message_update(1, 1, text="/start spring_sale")
    assert (await post(http, server, start))[1]["outcome"] == "stored"
    assert (await post(http, server, start))[1]["outcome"] == "duplicate"
    assert (await post(http, server, message_update(2, 2, text="/start newsletter")))[1]["outcome"] == "stored"
    (msg, _) = await telegram_messages(hub)
    contact = await agent.get(f"/api/v1/contacts/{msg.contact_id}")
    assert contact["attributes"]["source"] == "spring_sale"  # first touch
    assert contact["attributes"]["last_source"] == "newsletter"
    timeline = await agent.get(f"/api/v1/contacts/{msg.contact_id}/timeline")
    sources = [
        i["event"]["data"] for i in timeline["items"] if i["type"] == "event" and i["event"]["kind"] == "contact.source"
    ]
    assert [(s["source"], s["first_touch"]) for s in sources] == [("newsletter", False), ("spring_sale", True)]


async def test_buttons_go_out_as_an_inline_keyboard_and_come_back_as_quick_replies(
    started: tuple[TestServer, Hub], fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    server, hub = started
    assert (await post(http, server, message_update(1, 1, text="when do you ship?")))[1]["outcome"] == "stored"
    (inbound,) = await telegram_messages(hub)
    async with hub.db.write() as s:
        ticket = await s.get(Ticket, inbound.ticket_id)
        assert ticket is not None
        offered = await do_post_message(
            s,
            ticket,
            body="Did you mean:",
            author=Author.BOT,
            quick_replies=[
                QuickReply(id="faq-ship", title="Shipping times"),
                QuickReply(id="faq-ret", title="Returns"),
            ],
        )
    sent = await eventually(lambda: asyncio.sleep(0, fake.sent()))
    keyboard = sent[0].params["reply_markup"]
    assert keyboard == {
        "inline_keyboard": [
            [{"text": "Shipping times", "callback_data": "faq-ship"}],
            [{"text": "Returns", "callback_data": "faq-ret"}],
        ]
    }
    press = {
        "update_id": 2,
        "callback_query": {
            "id": "cbq-77",
            "from": USER,
            "chat_instance": "-55",
            "data": "faq-ship",
            "message": {
                "message_id": 5000,
                "date": 1_700_000_000,
                "chat": {"id": 777, "type": "private", "first_name": "Sara"},
                "text": "Did you mean:",
                "reply_markup": keyboard,
            },
        },
    }
    assert (await post(http, server, press))[1]["outcome"] == "stored"
    assert (await post(http, server, press))[1]["outcome"] == "duplicate"
    choice = await message_by_external(hub, "default:cb:cbq-77")
    assert choice is not None
    assert (choice.body, choice.extras["quick_reply"], choice.ticket_id) == (
        "Shipping times",
        "faq-ship",
        offered.ticket_id,
    )
    assert [c.params["callback_query_id"] for c in fake.sent("answerCallbackQuery")] == ["cbq-77", "cbq-77"]


async def test_a_persian_choice_over_64_bytes_goes_out_and_comes_back_as_its_id(
    started: tuple[TestServer, Hub], fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    server, hub = started
    assert (await post(http, server, message_update(1, 1, text="بودجه؟")))[1]["outcome"] == "stored"
    (inbound,) = await telegram_messages(hub)
    # 41 characters, 71 bytes: within the hub's 64 characters, over Telegram's 64 bytes.
    choice_id = "بین پانصد میلیون تا یک میلیارد تومان"
    assert len(choice_id) <= 64 < len(choice_id.encode())
    async with hub.db.write() as s:
        ticket = await s.get(Ticket, inbound.ticket_id)
        assert ticket is not None
        offered = await do_post_message(
            s,
            ticket,
            body="بودجه شما؟",
            author=Author.BOT,
            quick_replies=[QuickReply(id=choice_id, title="۵۰۰ میلیون تا ۱ میلیارد"), QuickReply(id="کم", title="کم")],
        )

    async def settled() -> Message | None:
        async with hub.db.read() as s:
            found = await s.get(Message, offered.id)
        return found if found is not None and found.status not in ("queued", "sending") else None

    stored = await eventually(settled)
    assert stored.status == "sent", stored.status_reason
    keyboard = fake.sent()[0].params["reply_markup"]
    (long_data,), (short_data,) = [[b["callback_data"] for b in row] for row in keyboard["inline_keyboard"]]
    assert len(long_data.encode()) <= 64 and short_data == "کم"
    # A later process (no memory of the send) maps the button back.
    press = {
        "update_id": 2,
        "callback_query": {
            "id": "cbq-fa",
            "from": USER,
            "chat_instance": "-55",
            "data": long_data,
            "message": {
                "message_id": 5000,
                "date": 1_700_000_000,
                "chat": {"id": 777, "type": "private", "first_name": "Sara"},
                "text": "بودجه شما؟",
                "reply_markup": keyboard,
            },
        },
    }
    assert (await post(http, server, press))[1]["outcome"] == "stored"
    choice = await message_by_external(hub, "default:cb:cbq-fa")
    assert choice is not None
    assert (choice.body, choice.extras["quick_reply"], choice.ticket_id) == (
        "۵۰۰ میلیون تا ۱ میلیارد",
        choice_id,
        offered.ticket_id,
    )


async def test_shared_phone_links_the_telegram_identity_to_the_sms_customer(
    started: tuple[TestServer, Hub], http: aiohttp.ClientSession
) -> None:
    server, hub = started
    agent = await admin(http, server)
    async with hub.db.write() as s:
        await do_ensure_inbox(s, key="sms:+15550001111", channel=Channel.SMS, name="SMS")
    sms = await hub.batcher.submit(
        InboundMessage(
            channel=Channel.SMS, inbox="sms:+15550001111", external_id="SM1", sender="+15551234567", body="hi by sms"
        )
    )
    assert (await post(http, server, message_update(1, 1, text="hi on telegram")))[1]["outcome"] == "stored"
    telegram_contact = (await identity(hub, "telegram", "777")).contact_id  # type: ignore[union-attr]
    assert telegram_contact != sms.contact_id

    # Someone else's card proves nothing about the sender.
    card = {"phone_number": "+15551234567", "first_name": "Other", "user_id": 999}
    assert (await post(http, server, message_update(2, 2, contact=card)))[1]["outcome"] == "stored"
    assert (await identity(hub, "telegram", "777")).contact_id == telegram_contact  # type: ignore[union-attr]

    own = message_update(3, 3, contact={"phone_number": "15551234567", "first_name": "Sara", "user_id": 777})
    assert (await post(http, server, own))[1]["outcome"] == "stored"
    assert (await post(http, server, own))[1]["outcome"] == "duplicate"
    assert (await identity(hub, "telegram", "777")).contact_id == sms.contact_id  # type: ignore[union-attr]
    merged = await agent.get(f"/api/v1/contacts/{telegram_contact}")
    # The merged-away id answers the contact it now lives on in.
    assert (merged["id"], merged["resolved_from_id"]) == (sms.contact_id, telegram_contact)
    customer = await agent.get(f"/api/v1/contacts/{sms.contact_id}")
    assert {(i["channel"], i["address"]) for i in customer["identities"]} == {
        ("phone", "+15551234567"),
        ("telegram", "777"),
    }
    timeline = await agent.get(f"/api/v1/contacts/{sms.contact_id}/timeline?limit=50")
    links = [
        i["event"]
        for i in timeline["items"]
        if i["type"] == "event" and i["event"]["kind"] == "contact.identity_linked"
    ]
    assert len(links) == 1
    assert links[0]["data"] == {
        "phone": "+15551234567",
        "channel": "telegram",
        "how": "merged",
        "contact_id": sms.contact_id,
        "merged_contact_id": telegram_contact,
    }
    bodies = {i["message"]["body"] for i in timeline["items"] if i["type"] == "message"}
    assert {"hi by sms", "hi on telegram"} <= bodies

    # A new customer sharing a number nobody has: the phone becomes theirs.
    newcomer = message_update(
        4, 1, chat=888, contact={"phone_number": "+989121234567", "first_name": "N", "user_id": 888}
    )
    assert (await post(http, server, newcomer))[1]["outcome"] == "stored"
    phone = await identity(hub, "phone", "+989121234567")
    assert phone is not None
    assert phone.contact_id == (await identity(hub, "telegram", "888")).contact_id  # type: ignore[union-attr]


async def test_files_are_fetched_and_oversize_ones_recorded_with_the_reason(
    tmp_path: Path, fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    config = tg_config(tmp_path, fake, **{"attachments.max_bytes": 4096})
    photo = b"\xff\xd8 jpeg " * 300  # 2,700 bytes
    fake.add_file("photo-big", photo, "photos/file_7.jpg")
    fake.add_file("doc-undeclared", b"x" * 5000, "documents/file_8.bin")
    sizes = [
        {"file_id": "photo-small", "file_unique_id": "a", "width": 90, "height": 90, "file_size": 300},
        {"file_id": "photo-big", "file_unique_id": "b", "width": 800, "height": 800, "file_size": len(photo)},
    ]
    async with running_hub(config) as server:
        hub = server.app[HUB]
        status, answer = await post(http, server, message_update(1, 1, photo=sizes, caption="the box arrived broken"))
        assert (status, answer["outcome"]) == (200, "stored")
        big = {"file_id": "doc-huge", "file_unique_id": "h", "file_name": "scan.pdf", "file_size": 10_000_000}
        assert (await post(http, server, message_update(2, 2, document=big, caption="scan attached")))[0] == 200
        undeclared = {"file_id": "doc-undeclared", "file_unique_id": "u", "file_name": "log.txt"}
        assert (await post(http, server, message_update(3, 3, document=undeclared)))[0] == 200
        gone = {"file_id": "doc-expired", "file_unique_id": "e", "file_name": "old.txt", "file_size": 10}
        assert (await post(http, server, message_update(4, 4, document=gone, caption="see file")))[0] == 200
        first, second, third, fourth = await telegram_messages(hub)
        (att,) = first.attachments
        assert (att["content_type"], att["size"], first.body) == ("image/jpeg", len(photo), "the box arrived broken")
        async with http.get(server.make_url(att["url"])) as r:
            assert await r.read() == photo
        assert [c.params["file_id"] for c in fake.sent("getFile")] == ["photo-big", "doc-undeclared", "doc-expired"]
        assert second.body == "scan attached"
        assert second.attachments == []
        (error,) = second.extras["attachment_errors"]
        assert error["filename"] == "scan.pdf"
        assert "10000000 bytes; the limit is 4096 bytes (attachments.max_bytes)" in error["reason"]
        assert "the limit is 4096" in third.extras["attachment_errors"][0]["reason"]
        assert fourth.extras["attachment_errors"][0]["reason"].startswith(
            "Telegram did not give the file: Wrong file_id"
        )
        await add_agent(config, ADMIN)
        agent = await admin(http, server)
        view = await agent.get(f"/api/v1/tickets/{second.ticket_id}")
        assert view["messages"][1]["attachment_errors"][0]["filename"] == "scan.pdf"


# --- replies ---------------------------------------------------------------------------


async def test_flood_control_delays_one_chat_without_blocking_another(
    started: tuple[TestServer, Hub], fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    server, hub = started
    agent = await admin(http, server)
    await post(http, server, message_update(1, 1, chat=777, text="hello from A"))
    await post(http, server, message_update(2, 1, chat=888, text="hello from B"))
    a, b = await telegram_messages(hub)
    fake.flood("sendMessage", 1)
    reply_a = await agent.post(f"/api/v1/tickets/{a.ticket_id}/messages", {"body": "Hi A"}, status=201)
    await eventually(lambda: asyncio.sleep(0, fake.sent()))
    reply_b = await agent.post(f"/api/v1/tickets/{b.ticket_id}/messages", {"body": "Hi B"}, status=201)

    async def sent(mid: int) -> Message | None:
        async with hub.db.read() as s:
            m = await s.get(Message, mid)
            return m if m is not None and m.status == "sent" else None

    done_a = await eventually(lambda: sent(reply_a["id"]))
    await eventually(lambda: sent(reply_b["id"]))
    assert [int(c.params["chat_id"]) for c in fake.sent()] == [777, 888, 777]
    assert done_a.attempts == 1  # flood control is not an attempt
    assert done_a.external_id == f"default:777:{done_a.extras[SEND_PARTS][0]}"


async def test_blocked_user_is_marked_unreachable_and_the_agent_sees_why(
    started: tuple[TestServer, Hub], fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    server, hub = started
    agent = await admin(http, server)
    await post(http, server, message_update(1, 1, text="hello"))
    (inbound,) = await telegram_messages(hub)
    fake.blocked_chats.add(777)
    reply = await agent.post(f"/api/v1/tickets/{inbound.ticket_id}/messages", {"body": "Hi!"}, status=201)

    async def failed() -> dict[str, Any] | None:
        ticket = await agent.get(f"/api/v1/tickets/{inbound.ticket_id}")
        m = next(m for m in ticket["messages"] if m["id"] == reply["id"])
        return m if m["status"] == "failed" else None

    msg = await eventually(failed)
    assert "blocked the bot" in msg["status_reason"]
    assert len(fake.sent()) == 1  # not retried
    contact = await agent.get(f"/api/v1/contacts/{inbound.contact_id}")
    (tg,) = [i for i in contact["identities"] if i["channel"] == "telegram"]
    assert tg["unreachable_at"] is not None
    assert "blocked the bot" in tg["unreachable_reason"]
    timeline = await agent.get(f"/api/v1/contacts/{inbound.contact_id}/timeline")
    kinds = [i["event"]["kind"] for i in timeline["items"] if i["type"] == "event"]
    assert "contact.reachability" in kinds

    # Writing again proves they unblocked the bot.
    fake.blocked_chats.clear()
    await post(http, server, message_update(2, 2, text="sorry, unblocked you"))
    assert (await identity(hub, "telegram", "777")).unreachable_at is None  # type: ignore[union-attr]
    # Telegram also says so directly when a private chat blocks the bot.
    member = {"user": {"id": 123456, "is_bot": True, "first_name": "Hub"}}
    blocked = {
        "update_id": 3,
        "my_chat_member": {
            "chat": {"id": 777, "type": "private", "first_name": "Sara"},
            "from": USER,
            "date": 1_700_000_100,
            "old_chat_member": {**member, "status": "member"},
            "new_chat_member": {**member, "status": "kicked", "until_date": 0},
        },
    }
    assert (await post(http, server, blocked))[1]["outcome"] == "blocked"
    ident = await identity(hub, "telegram", "777")
    assert ident is not None and ident.unreachable_reason == "the customer blocked the bot on Telegram"


async def test_a_reply_whose_answer_is_lost_is_not_sent_twice(
    tmp_path: Path, fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    """Telegram takes the message but answers after the client's timeout (a
    slow upload, Telegram under load). The Bot API has no idempotency key, so
    a resend would reach the customer twice: the reply fails, saying why."""
    original = fake._m_sendMessage
    late = asyncio.Event()

    async def answers_late(params: dict[str, Any], files: Any) -> Any:
        response = await original(params, files)
        if not late.is_set():
            late.set()
            await asyncio.sleep(3)  # past the 1 s timeout
        return response

    fake._m_sendMessage = answers_late  # type: ignore[method-assign]
    config = tg_config(tmp_path, fake, **{"telegram.request_timeout_seconds": 1})
    await upgrade_async(config.database_url)
    await add_agent(config, ADMIN)
    async with running_hub(config) as server:
        hub = server.app[HUB]
        agent = await admin(http, server)
        await post(http, server, message_update(1, 1, text="where is my order?"))
        (inbound,) = await telegram_messages(hub)
        reply = await agent.post(f"/api/v1/tickets/{inbound.ticket_id}/messages", {"body": "Tomorrow."}, status=201)

        async def settled() -> dict[str, Any] | None:
            ticket = await agent.get(f"/api/v1/tickets/{inbound.ticket_id}")
            m = next(m for m in ticket["messages"] if m["id"] == reply["id"])
            return m if m["status"] not in ("queued", "sending") else None

        msg = await eventually(settled)
        assert msg["status"] == "failed"
        assert "may have reached the customer" in msg["status_reason"]
        assert [c.params["text"] for c in fake.sent()] == ["Tomorrow."]


# --- polling -------------------------------------------------------------------------------


async def test_polling_survives_a_restart_without_losing_or_repeating_updates(
    tmp_path: Path, fake: FakeBotAPI, database: dict[str, Any]
) -> None:
    config = tg_config(tmp_path, fake, **{"telegram.mode": "polling", "telegram.poll_timeout_seconds": 1, **database})
    fake.webhook = {"url": "https://old.example.com/hook"}  # left over from webhook mode
    ids = [fake.push(message_update(0, n, text=f"polled {n}")) for n in range(1, 4)]
    fake.push({"update_id": ids[-1] + 1, "message": "not a message"})  # skipped, not fatal

    async with running_hub(config) as server:
        hub = server.app[HUB]
        assert hub.telegram is not None
        await eventually(lambda: _count(hub, 3))
        # deleteWebhook came first: getUpdates is refused while a webhook is set.
        polling = [c.method for c in fake.calls if c.method in ("deleteWebhook", "getUpdates")]
        assert polling[:2] == ["deleteWebhook", "getUpdates"]
        # Only the process holding the lease polls the bot.
        assert await hub.telegram._claim("default", "another-process") is None
        state = await eventually(lambda: _state(hub, ids[-1] + 2))
        assert state.poller == hub.consumer_name

    async with running_hub(config) as server:
        hub = server.app[HUB]
        async with hub.db.read() as s:
            saved = await s.get(TelegramBotState, "default")
            assert saved is not None and saved.update_offset == ids[-1] + 2
        more = [fake.push(message_update(0, n, text=f"polled {n}")) for n in range(4, 6)]
        await eventually(lambda: _count(hub, 5))
        await eventually(lambda: _state(hub, more[-1] + 1))
        bodies = [m.body for m in await telegram_messages(hub)]
        assert bodies == [f"polled {n}" for n in range(1, 6)]
        offsets = [int(c.params.get("offset") or 0) for c in fake.sent("getUpdates")]
        assert offsets == sorted(offsets)
        assert fake.max_polling == 1
    async with hub.db.read() as s:
        released = await s.get(TelegramBotState, "default")
        assert released is not None and released.poller is None  # released on stop


async def _count(hub: Hub, n: int) -> bool:
    async with hub.db.read() as s:
        count = await s.scalar(select(func.count()).select_from(Message).where(Message.channel == "telegram"))
        return count == n


async def _state(hub: Hub, offset: int) -> TelegramBotState | None:
    async with hub.db.read() as s:
        state = await s.get(TelegramBotState, "default")
        return state if state is not None and state.update_offset == offset else None


# --- configuration -----------------------------------------------------------------------


def test_one_default_bot_from_the_environment_alone(tmp_path: Path) -> None:
    env = {"TELEGRAM_BOT_TOKEN": "1:abc", "TELEGRAM_WEBHOOK_SECRET": "s3cret"}
    cfg = load_config(path=None, env=env)
    (bot,) = cfg.telegram.bots
    assert (bot.name, bot.inbox_key, bot.token, bot.webhook_secret) == (
        "default",
        "telegram:default",
        "1:abc",
        "s3cret",
    )
    assert "1:abc" not in repr(cfg)
    assert load_config(path=None, env={}).telegram.bots == []


@pytest.mark.parametrize(
    ("yaml_text", "env", "needle"),
    [
        ("", {"TELEGRAM_BOT_TOKEN": "1:abc"}, "TELEGRAM_WEBHOOK_SECRET"),
        ("", {"TELEGRAM_BOT_TOKEN": "1:abc", "TELEGRAM_WEBHOOK_SECRET": "has space"}, "TELEGRAM_WEBHOOK_SECRET"),
        ("telegram:\n  bots:\n    - name: sales\n      token_env: SALES_TOKEN\n", {}, "$SALES_TOKEN"),
        ("telegram:\n  bots:\n    - name: sales\n      token: 1:abc\n", {}, "telegram.bots[0].token"),
        ("telegram:\n  bots:\n    - name: Sales Bot\n", {"TELEGRAM_BOT_TOKEN": "1:a"}, "telegram.bots.0.name"),
        ("telegram:\n  api_base_url: ftp://x\n", {}, "telegram.api_base_url"),
        ("telegram:\n  poll_timeout_seconds: 50\n  poll_lease_seconds: 30\n", {}, "poll_lease_seconds must be longer"),
        (
            "telegram:\n  bots:\n    - name: a\n    - name: a\n",
            {"TELEGRAM_BOT_TOKEN": "1:a", "TELEGRAM_WEBHOOK_SECRET": "s"},
            "two bots are named 'a'",
        ),
        (
            "telegram:\n  bots:\n    - name: sales\n      inbox: telegram:shared\n"
            "    - name: support\n      token_env: SUPPORT_TOKEN\n      inbox: telegram:shared\n",
            {"TELEGRAM_BOT_TOKEN": "1:a", "TELEGRAM_WEBHOOK_SECRET": "s", "SUPPORT_TOKEN": "2:b"},
            "telegram.bots: Value error, two bots use the inbox 'telegram:shared' ('sales' and 'support')",
        ),
        (
            # One bot's own inbox key given to another.
            "telegram:\n  bots:\n    - name: sales\n    - name: support\n      token_env: SUPPORT_TOKEN\n"
            "      inbox: telegram:sales\n",
            {"TELEGRAM_BOT_TOKEN": "1:a", "TELEGRAM_WEBHOOK_SECRET": "s", "SUPPORT_TOKEN": "2:b"},
            "two bots use the inbox 'telegram:sales' ('sales' and 'support')",
        ),
    ],
)
def test_invalid_telegram_config_names_the_key(
    tmp_path: Path, yaml_text: str, env: dict[str, str], needle: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env)
    assert needle in str(err.value)


def test_several_bots_and_polling_without_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "telegram:\n  bots:\n    - name: support\n    - name: sales\n      token_env: SALES_TOKEN\n"
        "      mode: polling\n      inbox_name: Sales\n",
        encoding="utf-8",
    )
    cfg = load_config(path, env={"TELEGRAM_BOT_TOKEN": "1:a", "TELEGRAM_WEBHOOK_SECRET": "s", "SALES_TOKEN": "2:b"})
    support, sales = cfg.telegram.bots
    assert (support.token, cfg.telegram.mode_of(support)) == ("1:a", "webhook")
    assert (sales.token, cfg.telegram.mode_of(sales), sales.inbox_key) == ("2:b", "polling", "telegram:sales")


@pytest.mark.slow
async def test_crm_hub_serve_with_only_the_two_variables_serves_the_default_bot(
    tmp_path: Path, fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    """What a new user does: `make run` with TELEGRAM_BOT_TOKEN and
    TELEGRAM_WEBHOOK_SECRET set (here with the Bot API pointed at the fake)."""
    env = hub_env(
        tmp_path / "data",
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_WEBHOOK_SECRET=SECRET,
        HUB_TELEGRAM_API_BASE_URL=fake.base_url,
    )
    run_cli(["migrate"], env)
    proc = HubProcess(env, log=tmp_path / "hub.log")
    await proc.start()
    try:
        url = f"{proc.base}/webhooks/telegram/default"
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
        async with http.post(url, json=message_update(1, 1, text="سلام"), headers=headers) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["outcome"] == "stored"
        async with http.post(url, json=message_update(1, 1, text="سلام"), headers={}) as r:
            assert r.status == 403
        # Without HUB_PUBLIC_URL the hub cannot tell Telegram where to post, and says so.
        assert fake.webhook is None
        await eventually(lambda: asyncio.sleep(0, "HUB_PUBLIC_URL" in (tmp_path / "hub.log").read_text()))
    finally:
        proc.stop()


# --- edits, live locations, malformed and poison updates ---------------------------------


def _edit(original: dict[str, Any], update_id: int, edit_date: int, **content: Any) -> dict[str, Any]:
    edit = copy.deepcopy(original)
    edit["update_id"] = update_id
    edit["edited_message"] = {**edit.pop("message"), **content, "edit_date": edit_date}
    return edit


async def test_two_edits_within_one_second_are_ordered_by_update_id(
    started: tuple[TestServer, Hub], http: aiohttp.ClientSession
) -> None:
    server, hub = started
    first = message_update(100, 50, text="my order is late")
    assert (await post(http, server, first))[1]["outcome"] == "stored"
    # edit_date has whole seconds: both edits carry the same one.
    typo = _edit(first, 101, 1_700_000_500, text="my order #4 is late")
    fixed = _edit(first, 102, 1_700_000_500, text="my order #42 is late")
    assert (await post(http, server, typo))[1]["outcome"] == "edited"
    assert (await post(http, server, fixed))[1]["outcome"] == "edited"
    # Telegram redelivers the first: it is older than what was applied.
    assert (await post(http, server, typo))[1]["outcome"] == "edited"
    msg = await message_by_external(hub, "default:777:50")
    assert msg is not None and msg.body == "my order #42 is late"
    assert [e["body"] for e in msg.extras["edits"]] == ["my order is late", "my order #4 is late"]

    # The same two edits arriving the other way round end the same way.
    second = message_update(200, 60, text="street 1")
    assert (await post(http, server, second))[1]["outcome"] == "stored"
    await post(http, server, _edit(second, 202, 1_700_000_900, text="street 123"))
    await post(http, server, _edit(second, 201, 1_700_000_900, text="street 12"))
    msg = await message_by_external(hub, "default:777:60")
    assert msg is not None and msg.body == "street 123"
    assert [e["body"] for e in msg.extras["edits"]] == ["street 1"]


async def test_a_live_location_moves_without_an_edit_history_or_an_event_per_move(
    started: tuple[TestServer, Hub], http: aiohttp.ClientSession
) -> None:
    server, hub = started
    agent = await admin(http, server)
    live = {"latitude": 35.7, "longitude": 51.4, "live_period": 86400}
    shared = message_update(300, 70, location=live)
    assert (await post(http, server, shared))[1]["outcome"] == "stored"
    frames: list[dict[str, Any]] = []
    async with agent.events() as ws:
        # Twenty positions, one every 30 s of the customer's time (ten minutes).
        for i in range(1, 21):
            moved = _edit(shared, 300 + i, 1_700_000_300 + i * 30, location={**live, "latitude": 35.7 + i / 1000})
            assert (await post(http, server, moved))[1]["outcome"] == "moved"
        assert (await post(http, server, message_update(400, 71, text="I am outside")))[1]["outcome"] == "stored"
        while True:
            frame = await next_frame(ws, "*")
            frames.append(frame)
            if frame["type"] == "message.received" and frame["message"]["body"] == "I am outside":
                break
    updates = [f for f in frames if f["type"] == "message.updated"]
    # One at the first move, one five minutes (ten moves) later; none per move.
    assert [u["message"]["body"] for u in updates] == ["📍 35.701000, 51.400000", "📍 35.711000, 51.400000"]
    msg = await message_by_external(hub, "default:777:70")
    assert msg is not None
    assert msg.body == "📍 35.720000, 51.400000"
    assert "edits" not in msg.extras
    assert msg.extras["location"]["latitude"] == pytest.approx(35.72)
    assert msg.extras["location"]["live_period"] == 86400
    # A position from before, delivered late, does not move it back.
    late = _edit(shared, 305, 1_700_000_450, location={**live, "latitude": 35.705})
    assert (await post(http, server, late))[1]["outcome"] == "moved"
    msg = await message_by_external(hub, "default:777:70")
    assert msg is not None and msg.body == "📍 35.720000, 51.400000"


async def test_malformed_updates_get_400_naming_the_problem_and_store_nothing(
    started: tuple[TestServer, Hub], http: aiohttp.ClientSession
) -> None:
    server, hub = started
    huge_date = message_update(1, 10, text="x")
    huge_date["message"]["date"] = 10**20
    numeric_text = message_update(2, 11, text=5)
    huge_edit = _edit(message_update(3, 12, text="x"), 3, 10**20, text="y")
    deep = message_update(4, 13, text="x", reply_to_message={"message_id": 1, "date": 2**50})
    huge_chat = message_update(5, 14, chat=10**20, text="x")
    doc = {"file_id": "d1", "file_unique_id": "ud1", "file_name": "a.pdf"}
    size_text = message_update(7, 15, document={**doc, "file_size": "4"})
    name_number = message_update(8, 16, document={**doc, "file_name": 12345})
    mime_list = message_update(9, 17, document={**doc, "mime_type": ["application/pdf"]})
    negative_photo = message_update(
        10, 18, photo=[{"file_id": "p", "file_unique_id": "p", "width": 1, "height": 1, "file_size": -1}]
    )
    for body, needle in (
        (size_text, "message.document.file_size must be a non-negative integer, not '4'"),
        (name_number, "message.document.file_name must be a string, not int"),
        (mime_list, "message.document.mime_type must be a string, not list"),
        (negative_photo, "message.photo[0].file_size must be a non-negative integer"),
        (huge_chat, "message.chat.id is too large for a Telegram integer"),
        (huge_date, "message.date must be a Unix time in seconds"),
        (numeric_text, "message.text must be a string, not int"),
        (huge_edit, "edited_message.edit_date must be a Unix time in seconds"),
        (deep, "message is not a valid Telegram message"),
        # Thousands of levels exhaust json.loads' stack; hundreds, the parser's after it.
        (b"[" * 5000 + b"]" * 5000, "more than 64 levels deep"),
        (b'{"update_id": 6, "message": ' + b"[" * 500 + b"]" * 500 + b"}", "more than 64 levels deep"),
    ):
        status, answer = await post(http, server, body)
        assert status == 400, answer
        assert needle in answer["error"]["message"]
    assert await telegram_messages(hub) == []


async def test_polling_passes_updates_that_can_never_be_stored_and_keeps_every_other(
    tmp_path: Path, fake: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Backoff, "next", lambda self: 0.01)
    config = tg_config(tmp_path, fake, **{"telegram.mode": "polling", "telegram.poll_timeout_seconds": 1})
    async with running_hub(config) as server:
        hub = server.app[HUB]
        service = hub.telegram
        assert service is not None
        stored_by_ingest = service.ingest
        tries: Counter[str] = Counter()

        async def ingest(message: InboundMessage) -> IngestResult:
            tries[message.body] += 1
            if message.body == "poison":
                raise RuntimeError("a bug this message trips")
            return await stored_by_ingest(message)

        service.ingest = ingest
        malformed = message_update(0, 1, text="x")
        malformed["message"]["date"] = 10**20
        malformed_id = fake.push(malformed)
        poison_id = fake.push(message_update(0, 2, text="poison"))
        # Telegram failing to hand over a file fails this one more often than
        # the poison, but that passes: it is stored once Telegram answers.
        photo = [{"file_id": "ph", "file_unique_id": "ph", "width": 10, "height": 10, "file_size": 5}]
        fake.add_file("ph", b"image", "photos/ph.jpg")
        for _ in range(POISON_ATTEMPTS + 2):
            fake.fail("getFile", 502, "Bad Gateway")
        fake.push(message_update(0, 3, photo=photo, caption="my receipt"))
        last = fake.push(message_update(0, 4, text="a real customer message"))
        await eventually(lambda: _state(hub, last + 1))
        assert [m.body for m in await telegram_messages(hub)] == ["my receipt", "a real customer message"]
        assert tries["poison"] == POISON_ATTEMPTS
        assert tries["my receipt"] == 1
        async with hub.db.read() as s:
            dead = (
                await s.scalars(select(AuditLog).where(AuditLog.action == DEAD_LETTER_ACTION).order_by(AuditLog.id))
            ).all()
        assert [(d.entity, d.entity_id) for d in dead] == [
            ("telegram_update", malformed_id),
            ("telegram_update", poison_id),
        ]
        assert "message.date must be a Unix time" in dead[0].data["error"]
        failed = f"handling failed {POISON_ATTEMPTS} times: RuntimeError: a bug this message trips"
        assert dead[1].data["error"] == failed
        # Kept whole, to be posted again once the cause is fixed.
        assert json.loads(dead[0].data["update"])["message"]["date"] == 10**20
        assert json.loads(dead[1].data["update"])["message"]["text"] == "poison"


# --- races, refused files, several bots, webhook upkeep ------------------------------------


async def test_an_edit_that_races_its_original_is_applied(
    started: tuple[TestServer, Hub], http: aiohttp.ClientSession
) -> None:
    server, hub = started
    service = hub.telegram
    assert service is not None
    orig = message_update(1, 1, text="helo, the box is broke")
    edit = copy.deepcopy(orig)
    edit["update_id"] = 2
    edit["edited_message"] = {**edit.pop("message"), "text": "hello, the box is broken", "edit_date": 1_700_000_010}
    stored_by_ingest = service.ingest

    async def original_lands_first(message: InboundMessage) -> IngestResult:
        # Another web replica stores the original (it was fetching its files)
        # between the edit's search for it and the edit's own ingest.
        if message.body.startswith("hello"):
            original = parse_update(orig, bot="default", inbox="telegram:default").message
            assert original is not None
            await stored_by_ingest(original)
        return await stored_by_ingest(message)

    service.ingest = original_lands_first
    status, answer = await post(http, server, edit)
    assert (status, answer["outcome"]) == (200, "edited")
    (msg,) = await telegram_messages(hub)
    assert msg.body == "hello, the box is broken"
    assert msg.extras["edits"][0]["body"] == "helo, the box is broke"


@pytest.mark.parametrize("refusal", [404, 403, 400])
async def test_a_file_telegram_lists_but_will_not_serve_is_recorded_and_the_caption_stored(
    tmp_path: Path, fake: FakeBotAPI, http: aiohttp.ClientSession, refusal: int
) -> None:
    config = tg_config(tmp_path, fake)
    fake.add_file("doc1", b"%PDF" * 10, "documents/doc1.pdf")
    fake.download_status["doc1"] = refusal
    doc = {"file_id": "doc1", "file_unique_id": "d1", "file_name": "invoice.pdf", "file_size": 40}
    async with running_hub(config) as server:
        hub = server.app[HUB]
        status, answer = await post(http, server, message_update(1, 1, document=doc, caption="the invoice"))
        assert (status, answer["outcome"]) == (200, "stored")
        (msg,) = await telegram_messages(hub)
        assert (msg.body, msg.attachments) == ("the invoice", [])
        (error,) = msg.extras["attachment_errors"]
        assert error["filename"] == "invoice.pdf"
        assert error["reason"].startswith("Telegram listed the file but refused to send it")


async def test_a_file_whose_download_keeps_failing_does_not_hold_back_polling(
    tmp_path: Path, fake: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Backoff, "next", lambda self: 0.01)
    config = tg_config(tmp_path, fake, **{"telegram.mode": "polling", "telegram.poll_timeout_seconds": 1})
    fake.add_file("doc1", b"%PDF" * 10, "documents/doc1.pdf")
    fake.download_status["doc1"] = 502
    doc = {"file_id": "doc1", "file_unique_id": "d1", "file_name": "invoice.pdf", "file_size": 40}
    fake.push(message_update(0, 1, document=doc, caption="here is the invoice"))
    last = fake.push(message_update(0, 2, text="hello? anyone?"))
    async with running_hub(config) as server:
        hub = server.app[HUB]
        await eventually(lambda: _state(hub, last + 1))
        first, second = await telegram_messages(hub)
        assert (first.body, second.body) == ("here is the invoice", "hello? anyone?")
        assert first.extras["attachment_errors"][0]["reason"].startswith(
            f"Telegram did not serve the file in {POISON_ATTEMPTS} tries"
        )
        downloads = [c for c in fake.calls if c.method == "getFile"]
        assert len(downloads) == POISON_ATTEMPTS


async def test_a_file_of_a_local_bot_api_server_is_read_from_its_disk(
    tmp_path: Path, fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    # telegram-bot-api --local answers getFile with an absolute path on its disk.
    local = tmp_path / "bot-api" / "documents" / "file_1.pdf"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"%PDF local")
    fake.add_file("doc1", b"%PDF local", str(local))
    fake.download_status["doc1"] = 404  # and does not serve it over HTTP
    config = tg_config(tmp_path, fake)
    doc = {"file_id": "doc1", "file_unique_id": "d1", "file_name": "invoice.pdf", "file_size": 10}
    async with running_hub(config) as server:
        hub = server.app[HUB]
        assert (await post(http, server, message_update(1, 1, document=doc)))[1]["outcome"] == "stored"
        (msg,) = await telegram_messages(hub)
        (att,) = msg.attachments
        async with http.get(server.make_url(att["url"])) as r:
            assert await r.read() == b"%PDF local"


def _member_change(update_id: int, status: str, date: int) -> dict[str, Any]:
    bot = {"id": 123456, "is_bot": True, "first_name": "Hub"}
    old: dict[str, Any] = {"status": "member" if status == "kicked" else "kicked", "user": bot}
    new: dict[str, Any] = {"status": status, "user": bot}
    for member in (old, new):
        if member["status"] == "kicked":
            member["until_date"] = 0
    return {
        "update_id": update_id,
        "my_chat_member": {
            "chat": {"id": 777, "type": "private", "first_name": "Sara"},
            "from": USER,
            "date": date,
            "old_chat_member": old,
            "new_chat_member": new,
        },
    }


async def test_blocking_one_bot_leaves_the_customer_reachable_through_another(
    tmp_path: Path, fake: FakeBotAPI, http: aiohttp.ClientSession, database: dict[str, Any]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "telegram:\n  bots:\n    - name: support\n    - name: sales\n      token_env: SALES_TOKEN\n", encoding="utf-8"
    )
    env = {
        "HUB_SECRET_KEY": "test-secret",
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "SALES_TOKEN": "999:sales-token",
        "HUB_TELEGRAM_API_BASE_URL": fake.base_url,
    }
    overrides = {"data_dir": str(tmp_path / "data"), "logging.level": "WARNING", **database}
    config = load_config(path, env=env, overrides=overrides)
    async with running_hub(config) as server:
        hub = server.app[HUB]
        assert (await post(http, server, message_update(1, 1, text="hi support"), bot="support"))[0] == 200
        assert (await post(http, server, message_update(1, 2, text="hi sales"), bot="sales"))[0] == 200
        assert (await post(http, server, _member_change(2, "kicked", 1_700_000_100), bot="sales"))[1][
            "outcome"
        ] == "blocked"
        ident = await identity(hub, "telegram", "777")
        assert ident is not None and ident.unreachable_at is None  # support still reaches them
        assert (await post(http, server, _member_change(2, "kicked", 1_700_000_200), bot="support"))[1][
            "outcome"
        ] == "blocked"
        ident = await identity(hub, "telegram", "777")
        assert ident is not None and ident.unreachable_reason == "the customer blocked the bot on Telegram"
        # Unblocking one of them makes the customer reachable again.
        assert (await post(http, server, message_update(3, 3, text="back"), bot="sales"))[0] == 200
        ident = await identity(hub, "telegram", "777")
        assert ident is not None and ident.unreachable_at is None


async def test_a_block_redelivered_after_the_unblock_changes_nothing(
    started: tuple[TestServer, Hub], http: aiohttp.ClientSession
) -> None:
    server, hub = started
    assert (await post(http, server, message_update(1, 1, text="hi")))[0] == 200
    block, unblock = _member_change(5, "kicked", 1_700_000_100), _member_change(6, "member", 1_700_000_200)
    assert (await post(http, server, block))[1]["outcome"] == "blocked"
    assert (await post(http, server, unblock))[1]["outcome"] == "unblocked"
    status, answer = await post(http, server, block)
    assert (status, answer["outcome"]) == (200, "ignored: blocked older than the last change applied")
    ident = await identity(hub, "telegram", "777")
    assert ident is not None and ident.unreachable_at is None
    # Within one second, update_id orders them.
    assert (await post(http, server, _member_change(8, "kicked", 1_700_000_200)))[1]["outcome"] == "blocked"
    assert (await post(http, server, _member_change(7, "member", 1_700_000_200)))[1]["outcome"].startswith("ignored")
    ident = await identity(hub, "telegram", "777")
    assert ident is not None and ident.unreachable_at is not None


async def test_a_delivered_reply_clears_the_unreachable_mark(
    started: tuple[TestServer, Hub], http: aiohttp.ClientSession
) -> None:
    server, hub = started
    agent = await admin(http, server)
    assert (await post(http, server, message_update(1, 1, text="hi")))[0] == 200
    (inbound,) = await telegram_messages(hub)
    # The unblock that followed was lost (dead-lettered, or never sent).
    assert (await post(http, server, _member_change(5, "kicked", 1_700_000_100)))[1]["outcome"] == "blocked"
    reply = await agent.post(f"/api/v1/tickets/{inbound.ticket_id}/messages", {"body": "Hi!"}, status=201)

    async def sent() -> bool:
        async with hub.db.read() as s:
            m = await s.get(Message, reply["id"])
            return m is not None and m.status == "sent"

    await eventually(sent)
    ident = await identity(hub, "telegram", "777")
    assert ident is not None and ident.unreachable_at is None


async def test_a_refused_setwebhook_is_tried_again(
    tmp_path: Path, fake: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Backoff, "next", lambda self: 0.01)
    for _ in range(3):
        fake.fail("setWebhook", 400, "Bad Request: bad webhook: Failed to resolve host: Temporary failure")
    async with running_hub(tg_config(tmp_path, fake)):
        await eventually(lambda: asyncio.sleep(0, fake.webhook))
    assert len(fake.sent("setWebhook")) == 4


async def test_the_poller_removes_a_webhook_set_while_it_polls(
    tmp_path: Path, fake: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Backoff, "next", lambda self: 0.01)
    config = tg_config(tmp_path, fake, **{"telegram.mode": "polling", "telegram.poll_timeout_seconds": 1})
    async with running_hub(config) as server:
        hub = server.app[HUB]
        fake.push(message_update(0, 1, text="first"))
        await eventually(lambda: _count(hub, 1))
        # An old replica in webhook mode sets its webhook: getUpdates gets 409.
        fake.webhook = {"url": "https://old.example.com/webhooks/telegram/default"}
        await eventually(lambda: asyncio.sleep(0, fake.webhook is None))
        assert len(fake.sent("deleteWebhook")) == 2
        fake.push(message_update(0, 2, text="second"))
        await eventually(lambda: _count(hub, 2))


async def test_a_secret_header_that_is_not_utf8_gets_403(started: tuple[TestServer, Hub]) -> None:
    server, hub = started
    body = json.dumps(message_update(1, 1, text="hi")).encode()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /webhooks/telegram/default HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Telegram-Bot-Api-Secret-Token: \xff\xfe\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert b" 403 " in status_line, status_line
    assert await telegram_messages(hub) == []


async def test_a_button_on_an_old_message_shows_the_offered_title(
    started: tuple[TestServer, Hub], fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    server, hub = started
    assert (await post(http, server, message_update(1, 1, text="hi")))[0] == 200
    (inbound,) = await telegram_messages(hub)
    async with hub.db.write() as s:
        ticket = await s.get(Ticket, inbound.ticket_id)
        assert ticket is not None
        await do_post_message(
            s,
            ticket,
            body="Was this helpful?",
            author=Author.BOT,
            quick_replies=[QuickReply(id="fb:yes:17", title="Yes"), QuickReply(id="fb:no:17", title="No")],
        )
    await eventually(lambda: asyncio.sleep(0, fake.sent()))
    # Days later: Telegram sends the message as inaccessible (date 0), without its keyboard.
    press = {
        "update_id": 9,
        "callback_query": {
            "id": "cbq-9",
            "from": USER,
            "chat_instance": "1",
            "data": "fb:yes:17",
            "message": {"message_id": 5000, "date": 0, "chat": {"id": 777, "type": "private", "first_name": "Sara"}},
        },
    }
    assert (await post(http, server, press))[1]["outcome"] == "stored"
    (pressed,) = [m for m in await telegram_messages(hub) if m.external_id == "default:cb:cbq-9"]
    assert (pressed.body, pressed.extras["quick_reply"]) == ("Yes", "fb:yes:17")


async def test_an_edit_replacing_the_photo_replaces_the_attachment(
    tmp_path: Path, fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    config = tg_config(tmp_path, fake)
    fake.add_file("old", b"OLD" * 100, "photos/old.jpg")
    fake.add_file("new", b"NEW" * 100, "photos/new.jpg")

    def photo(file_id: str) -> list[dict[str, Any]]:
        return [{"file_id": file_id, "file_unique_id": f"u-{file_id}", "width": 9, "height": 9, "file_size": 300}]

    def edit(update_id: int, file_id: str, caption: str, edit_date: int) -> dict[str, Any]:
        changed = message_update(update_id, 1, photo=photo(file_id), caption=caption)
        return {"update_id": update_id, "edited_message": {**changed["message"], "edit_date": edit_date}}

    async with running_hub(config) as server:
        hub = server.app[HUB]
        assert (await post(http, server, message_update(1, 1, photo=photo("old"), caption="the invoice")))[0] == 200
        assert (await post(http, server, edit(2, "old", "the invoice, March", 1_700_000_100)))[1]["outcome"] == "edited"
        assert len(fake.sent("getFile")) == 1  # a new caption does not fetch the same photo again
        assert (await post(http, server, edit(3, "new", "the invoice, March", 1_700_000_200)))[1]["outcome"] == "edited"
        # An older edit, redelivered, does not bring the old photo back.
        assert (await post(http, server, edit(2, "old", "the invoice, March", 1_700_000_100)))[0] == 200
        (msg,) = await telegram_messages(hub)
        (att,) = msg.attachments
        async with http.get(server.make_url(att["url"])) as r:
            assert await r.read() == b"NEW" * 100
        (replaced,) = msg.extras["replaced_files"]
        assert replaced["attachments"][0]["size"] == 300
        assert msg.body == "the invoice, March"


async def test_a_photo_and_the_text_after_it_keep_their_order(
    tmp_path: Path, fake: FakeBotAPI, http: aiohttp.ClientSession
) -> None:
    fake.download_delay = 1.0
    fake.add_file("ph", b"\xff\xd8jpeg" * 50, "photos/ph.jpg")
    sizes = [{"file_id": "ph", "file_unique_id": "ph", "width": 9, "height": 9, "file_size": 300}]
    async with running_hub(tg_config(tmp_path, fake)) as server:
        hub = server.app[HUB]
        photo = asyncio.create_task(post(http, server, message_update(1, 1, photo=sizes)))
        await asyncio.sleep(0.3)  # the photo is being fetched
        other_chat = await post(http, server, message_update(2, 1, chat=778, text="not held up"))
        assert not photo.done() and other_chat[1]["outcome"] == "stored"
        await post(http, server, message_update(3, 2, text="this is how the box arrived"))
        await photo
        stored = [(m.extras["chat_id"], m.extras["message_id"]) for m in await telegram_messages(hub)]
        assert stored == [(778, 1), (777, 1), (777, 2)]


async def test_the_message_api_says_what_a_reply_answers_and_shows_forwards_and_places(
    started: tuple[TestServer, Hub], http: aiohttp.ClientSession
) -> None:
    server, _ = started
    agent = await admin(http, server)
    first = message_update(600, 90, text="my parcel is lost")
    answered = {"message_id": 90, "date": 1_700_000_600, "chat": first["message"]["chat"], "text": "my parcel"}
    forwarded = {"type": "user", "date": 1_699_000_000, "sender_user": {"id": 5, "is_bot": False, "first_name": "Ali"}}
    place = {"latitude": 35.7, "longitude": 51.4}
    for update in (
        first,
        message_update(601, 91, text="any news?", reply_to_message=answered),
        message_update(602, 92, text="from my brother", forward_origin=forwarded),
        message_update(603, 93, location=place),
    ):
        assert (await post(http, server, update))[1]["outcome"] == "stored"
    (ticket,) = (await agent.get("/api/v1/tickets?channel=telegram"))["items"]
    messages = (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["messages"]
    views = {m["body"]: m["telegram"] for m in messages}
    assert views["my parcel is lost"] == {
        "forwarded": False,
        "reply_to_external_id": None,
        "location": None,
        "contact": None,
    }
    # The id the answered message is stored under, which the inbox looks up among those shown.
    assert views["any news?"]["reply_to_external_id"] == "default:777:90"
    assert [m["external_id"] for m in messages if m["body"] == "my parcel is lost"] == ["default:777:90"]
    assert views["from my brother"]["forwarded"] is True
    assert views["📍 35.700000, 51.400000"]["location"] == place
