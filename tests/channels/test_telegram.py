"""The Telegram adapter: parsing of every update kind (table-driven, and the
official sample updates), and sending through the real python-telegram-bot
client against a local fake of the Bot API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from channels.base import RECIPIENT_UNREACHABLE, SEND_PARTS, InvalidPayload
from channels.telegram import (
    BotHandle,
    TelegramChannel,
    UpdateKind,
    callback_data,
    parse_update,
    resolve_callback,
)
from hub.core import Attachment, Author, Channel, DeliveryStatus, OutboundMessage, QuickReply
from hub.telegram import make_bot
from hub.text import utf16_len
from tests.channels.fake_telegram import TOKEN, FakeBotAPI, fake_bot_api
from tests.services import shared_data

USER = {"id": 777, "is_bot": False, "first_name": "Sara", "last_name": "Ahmadi", "username": "sara"}
CHAT = {"id": 777, "type": "private", "first_name": "Sara"}


def update(kind: str = "message", update_id: int = 1, **fields: Any) -> dict[str, Any]:
    body = {"message_id": 10, "date": 1_700_000_000, "chat": CHAT, "from": USER, **fields}
    return {"update_id": update_id, kind: body}


def parse(data: Any) -> Any:
    return parse_update(data, bot="default", inbox="telegram:default")


def samples() -> list[Path]:
    return sorted(shared_data("telegram", "official_webhooks_page_samples").glob("*.json"))


# What each of Telegram's published sample updates must become.
SAMPLE_KINDS = {
    "01_message_text_minimal": UpdateKind.MESSAGE,
    "02_message_text": UpdateKind.MESSAGE,
    "03_forwarded_message": UpdateKind.MESSAGE,
    "04_forwarded_channel_message": UpdateKind.MESSAGE,
    "05_message_with_reply": UpdateKind.MESSAGE,
    "06_edited_message": UpdateKind.EDIT,
    "07_message_with_entities": UpdateKind.MESSAGE,
    "08_message_with_audio": UpdateKind.MESSAGE,
    "09_voice_message": UpdateKind.MESSAGE,
    "10_message_with_document": UpdateKind.MESSAGE,
    "11_inline_query": UpdateKind.IGNORED,
    "12_chosen_inline_result": UpdateKind.IGNORED,
    "13_callback_query": UpdateKind.CALLBACK,
}


def test_every_official_sample_is_understood() -> None:
    files = samples()
    assert [f.stem for f in files] == list(SAMPLE_KINDS)
    for f in files:
        got = parse(json.loads(f.read_text(encoding="utf-8")))
        assert got.kind is SAMPLE_KINDS[f.stem], f.stem
        if got.message is not None:
            assert got.message.channel is Channel.TELEGRAM
            assert got.message.sender == "1111111"
            assert got.message.received_at.tzinfo is not None
    by_name = {f.stem: parse(json.loads(f.read_text(encoding="utf-8"))) for f in files}
    assert by_name["01_message_text_minimal"].start_payload == ""  # a bare /start
    assert by_name["03_forwarded_message"].message.extras["forwarded"] is True
    assert by_name["05_message_with_reply"].message.extras["reply_to_message_id"] == 1334
    assert [(m.kind, m.filename, m.size) for m in by_name["08_message_with_audio"].media] == [
        ("audio", "Test music file.mp3", 3897500)
    ]
    assert by_name["09_voice_message"].media[0].content_type == "audio/ogg"
    assert by_name["10_message_with_document"].media[0].filename == "Testfile.pdf"
    cb = by_name["13_callback_query"]
    assert (cb.message.quick_reply, cb.message.body, cb.callback_query_id) == (
        "Data from button callback",
        "Data from button callback",
        "4382bfdwdsb323b2d9",
    )
    assert by_name["06_edited_message"].edited_at is not None


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ([], "JSON object"),
        ({"message": {}}, "update_id"),
        ({"update_id": "7", "message": {}}, "update_id"),
        ({"update_id": 1}, "no payload"),
        ({"update_id": 1, "message": {}, "edited_message": {}}, "one payload"),
        ({"update_id": 1, "message": "hi"}, "JSON object"),
        ({"update_id": 1, "message": {"message_id": 1, "text": "no chat, no date"}}, "not a valid Telegram message"),
        ({"update_id": 1, "callback_query": {"id": "x", "data": "y"}}, "needs 'id' and 'from'"),
        # Past what a datetime holds (OverflowError inside python-telegram-bot).
        (update(text="x", date=10**20), r"message\.date must be a Unix time"),
        (update("edited_message", text="x", edit_date=10**20), r"edited_message\.edit_date must be a Unix time"),
        (update(text="x", date="yesterday"), r"message\.date must be a Unix time"),
        (update(text=5), r"message\.text must be a string, not int"),
        (update(caption=["a"], photo=[]), r"message\.caption must be a string, not list"),
        # Past the Bot API's 52 bits (and the database's 64).
        (update(text="x", chat={**CHAT, "id": 10**20}), r"message\.chat\.id is too large"),
        (update(text="x", message_id=2**60), r"message\.message_id is too large"),
        ({"update_id": 10**20, "message": update()["message"]}, "update_id"),
        # Deeper down, where the hub does not check field by field: still named.
        (
            update(text="x", reply_to_message={"message_id": 1, "date": 2**50, "chat": CHAT}),
            "not a valid Telegram message: ValueError: year",
        ),
    ],
)
def test_what_is_not_an_update_is_refused_with_a_reason(data: Any, needle: str) -> None:
    with pytest.raises(InvalidPayload, match=needle):
        parse(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"update_id": 1, "channel_post": {"message_id": 1}}, "channel_post updates are not handled"),
        ({"update_id": 1, "poll": {"id": "p"}}, "poll updates are not handled"),
        (update(chat={"id": -100123, "type": "supergroup", "title": "G"}, text="hi"), "supergroup chats"),
        ({"update_id": 1, "message": {**update()["message"], "from": {**USER, "is_bot": True}}}, "from bots"),
        (update(new_chat_title="renamed"), "messages are not handled"),
        (update(dice={"emoji": "🎲", "value": 3}), "dice messages are not handled"),
    ],
)
def test_unsupported_kinds_are_ignored_with_the_reason(data: dict[str, Any], reason: str) -> None:
    got = parse(data)
    assert got.kind is UpdateKind.IGNORED
    assert reason in (got.reason or "")
    assert got.message is None


def test_text_message_becomes_an_inbound_message() -> None:
    got = parse(update(text="سلام <b>*bold*</b>", update_id=42))
    m = got.message
    assert m is not None
    assert (m.body, m.sender, m.sender_name, m.inbox) == (
        "سلام <b>*bold*</b>",
        "777",
        "Sara Ahmadi",
        "telegram:default",
    )
    assert m.external_id == "default:777:10"
    assert m.extras["update_id"] == 42
    assert m.extras["username"] == "sara"
    assert got.start_payload is None


def test_start_deep_link_payload() -> None:
    assert parse(update(text="/start campaign_42")).start_payload == "campaign_42"
    assert parse(update(text="/start")).start_payload == ""
    assert parse(update(text="/startle me")).start_payload is None


def test_start_is_flagged_as_the_start_command() -> None:
    for text in ("/start", "/start spring_sale", "/start@hub_test_bot spring_sale", "/start hi, I saw your ad"):
        got = parse(update(text=text))
        assert got.message is not None and got.message.extras["command"] == "start", text
    for text in ("/startle me", "start", "hello /start"):
        got = parse(update(text=text))
        assert got.message is not None and "command" not in got.message.extras, text
    edited = parse(update("edited_message", text="/start", edit_date=1_700_000_100))
    assert edited.message is not None and "command" not in edited.message.extras


@pytest.mark.parametrize(
    ("text", "payload"),
    [
        ("/start ref-2024_A", "ref-2024_A"),
        ("/start " + "a" * 64, "a" * 64),
        ("/start " + "a" * 65, None),
        ("/start hi, I saw your ad", None),
        ("/start <b>x</b>", None),
        ("/start سلام", None),
    ],
)
def test_only_a_deep_link_payload_is_a_start_payload(text: str, payload: str | None) -> None:
    got = parse(update(text=text))
    assert got.start_payload == payload
    assert got.message is not None and got.message.extras.get("start_payload") == payload


def test_hidden_links_keep_their_url() -> None:
    # Offsets count UTF-16 units: the emoji before the link is two.
    text = "😀 see this one please"
    link = {"type": "text_link", "offset": 7, "length": 8, "url": "https://shop.example.com/item/4711"}
    got = parse(update(text=text, entities=[link]))
    assert got.message is not None
    assert got.message.body == "😀 see this one (https://shop.example.com/item/4711) please"
    caption = parse(update(caption="the box", caption_entities=[{**link, "offset": 4, "length": 3}], photo=[]))
    assert caption.message is not None and caption.message.body == "the box (https://shop.example.com/item/4711)"
    shown = {"type": "text_link", "offset": 0, "length": 17, "url": "https://x.example"}
    plain = parse(update(text="https://x.example", entities=[shown]))
    assert plain.message is not None and plain.message.body == "https://x.example"


def test_largest_photo_size_is_the_one_fetched() -> None:
    sizes = [
        {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90, "file_size": 1000},
        {"file_id": "big", "file_unique_id": "b", "width": 1280, "height": 1280, "file_size": 90000},
        {"file_id": "mid", "file_unique_id": "m", "width": 320, "height": 320, "file_size": 9000},
    ]
    got = parse(update(photo=sizes, caption="my order"))
    assert got.message is not None and got.message.body == "my order"
    assert [(m.file_id, m.kind, m.content_type) for m in got.media] == [("big", "photo", "image/jpeg")]


def test_video_and_sticker_and_location() -> None:
    video = {"file_id": "v", "file_unique_id": "v", "width": 1, "height": 1, "duration": 3, "file_size": 10}
    assert parse(update(video=video)).media[0].kind == "video"
    sticker = {
        "file_id": "st",
        "file_unique_id": "st",
        "type": "regular",
        "width": 1,
        "height": 1,
        "is_animated": False,
        "is_video": False,
        "emoji": "👍",
    }
    assert parse(update(sticker=sticker)).message.body == "👍"
    assert parse(update(location={"latitude": 35.7, "longitude": 51.4})).message.body.startswith("📍 35.7")


def test_only_the_senders_own_contact_is_a_shared_phone() -> None:
    own = parse(update(contact={"phone_number": "989121234567", "first_name": "Sara", "user_id": 777}))
    assert own.shared_phone == "989121234567"
    assert own.message is not None and "989121234567" in own.message.body
    forwarded = parse(update(contact={"phone_number": "+15550001111", "first_name": "Bob", "user_id": 555}))
    assert forwarded.shared_phone is None
    assert forwarded.message is not None


def test_callback_query_takes_the_button_title_from_the_keyboard() -> None:
    keyboard = {"inline_keyboard": [[{"text": "Shipping times", "callback_data": "faq-12"}]]}
    data = {
        "update_id": 5,
        "callback_query": {
            "id": "cbq-1",
            "from": USER,
            "chat_instance": "ci",
            "data": "faq-12",
            "message": {"message_id": 9, "date": 1, "chat": CHAT, "text": "Did you mean", "reply_markup": keyboard},
        },
    }
    got = parse(data)
    assert got.kind is UpdateKind.CALLBACK
    assert got.message is not None
    assert (got.message.body, got.message.quick_reply, got.message.external_id) == (
        "Shipping times",
        "faq-12",
        "default:cb:cbq-1",
    )


def test_blocking_and_unblocking_the_bot() -> None:
    def member(status: str) -> dict[str, Any]:
        old: dict[str, Any] = {"status": "member" if status == "kicked" else "kicked", "user": BOT_USER_FOR_MEMBER}
        if old["status"] == "kicked":
            old["until_date"] = 0
        new: dict[str, Any] = {"status": status, "user": BOT_USER_FOR_MEMBER}
        if status == "kicked":
            new["until_date"] = 0
        return {
            "update_id": 9,
            "my_chat_member": {"chat": CHAT, "from": USER, "date": 1, "old_chat_member": old, "new_chat_member": new},
        }

    assert parse(member("kicked")).kind is UpdateKind.BLOCKED
    assert parse(member("member")).kind is UpdateKind.UNBLOCKED
    assert parse(member("kicked")).chat_id == "777"
    changed_at = parse(member("kicked")).changed_at
    assert changed_at is not None and changed_at.timestamp() == 1


BOT_USER_FOR_MEMBER = {"id": 123456, "is_bot": True, "first_name": "Hub"}


def test_a_moved_live_location_is_told_apart_from_an_edit() -> None:
    live = {"latitude": 35.7, "longitude": 51.4, "live_period": 900, "heading": 90}
    shared = parse(update(location=live))
    assert shared.moved_location is None
    assert shared.message is not None and shared.message.extras["location"] == {
        "latitude": 35.7,
        "longitude": 51.4,
        "live_period": 900,
        "heading": 90,
    }
    moved = parse(update("edited_message", location={**live, "latitude": 35.71}, edit_date=1_700_000_030))
    assert moved.kind is UpdateKind.EDIT
    assert moved.moved_location == {"latitude": 35.71, "longitude": 51.4, "live_period": 900, "heading": 90}
    assert moved.message is not None and moved.message.body == "📍 35.710000, 51.400000"
    assert parse(update("edited_message", text="fixed", edit_date=1_700_000_030)).moved_location is None


def test_edit_carries_the_edit_time() -> None:
    got = parse(update("edited_message", text="fixed typo", edit_date=1_700_000_100))
    assert got.kind is UpdateKind.EDIT
    assert got.edited_at is not None and got.edited_at.timestamp() == 1_700_000_100
    assert got.message is not None and got.message.external_id == "default:777:10"


# --- sending ----------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeBotAPI]:
    async with fake_bot_api() as api:
        yield api


class Files:
    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}

    async def read(self, url: str) -> bytes | None:
        return self.stored.get(url)


@pytest.fixture
async def channel(fake: FakeBotAPI) -> AsyncIterator[tuple[TelegramChannel, Files]]:
    files = Files()
    chan = TelegramChannel(
        {"telegram:default": BotHandle("default", make_bot(TOKEN, fake.base_url, 10.0))}, read_attachment=files.read
    )
    try:
        yield chan, files
    finally:
        await chan.close()


def outbound(body: str, **kw: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "message_id": 1,
        "ticket_id": 1,
        "channel": Channel.TELEGRAM,
        "inbox": "telegram:default",
        "recipient": "777",
        "body": body,
        "author": Author.AGENT,
    }
    return OutboundMessage(**{**fields, **kw})


# Persian, emoji (two UTF-16 units each) and numbered sentences, so every part differs.
LONG = "\n\n".join(
    " ".join(f"سلام دوست من {p}-{i}، سفارش شما فردا ارسال می‌شود. 📦" for i in range(100)) for p in range(3)
)


async def test_long_text_is_split_at_4096_utf16_units_and_sent_verbatim(
    fake: FakeBotAPI, channel: tuple[TelegramChannel, Files]
) -> None:
    chan, _ = channel
    body = "<b>not bold</b> *nor this* " + LONG
    assert utf16_len(body) > 2 * 4096
    result = await chan.send(outbound(body, quick_replies=(QuickReply(id="yes", title="بله"),)))
    assert result.status is DeliveryStatus.SENT, result.reason
    sent = fake.sent()
    assert len(sent) == len(result.extras[SEND_PARTS]) >= 3
    assert all(utf16_len(c.params["text"]) <= 4096 for c in sent)
    assert all("parse_mode" not in c.params for c in sent)
    assert sent[0].params["text"].startswith("<b>not bold</b> *nor this*")
    assert "".join(c.params["text"] for c in sent).replace(" ", "").replace("\n", "") == body.replace(" ", "").replace(
        "\n", ""
    )
    # The buttons sit under the last part.
    assert [c.params.get("reply_markup") for c in sent[:-1]] == [None] * (len(sent) - 1)
    assert sent[-1].params["reply_markup"] == {"inline_keyboard": [[{"text": "بله", "callback_data": "yes"}]]}
    assert result.external_id == f"default:777:{result.extras[SEND_PARTS][0]}"


async def test_flood_control_mid_message_resumes_without_repeating_parts(
    fake: FakeBotAPI, channel: tuple[TelegramChannel, Files]
) -> None:
    chan, _ = channel
    fake.calls.clear()
    first = await chan.send(outbound("a" * 100))
    assert first.status is DeliveryStatus.SENT
    fake.calls.clear()
    # Part one goes out, part two hits flood control.
    original = fake._m_sendMessage
    count = 0

    async def second_part_floods(params: dict[str, Any], files: Any) -> Any:
        nonlocal count
        count += 1
        if count == 2:
            from tests.channels.fake_telegram import _error

            return _error(429, "Too Many Requests: retry after 7", {"retry_after": 7})
        return await original(params, files)

    fake._m_sendMessage = second_part_floods  # type: ignore[method-assign]
    result = await chan.send(outbound(LONG))
    assert result.status is DeliveryStatus.FAILED
    assert (result.retryable, result.retry_after) == (True, 7.0)
    assert len(result.extras[SEND_PARTS]) == 1
    again = await chan.send(outbound(LONG, extras={SEND_PARTS: result.extras[SEND_PARTS]}))
    assert again.status is DeliveryStatus.SENT
    texts = [c.params["text"] for c in fake.sent()]
    # Part two was tried twice (flood, then sent), part one only once.
    assert texts.count(texts[0]) == 1
    assert len(again.extras[SEND_PARTS]) == len(set(again.extras[SEND_PARTS])) >= 3


async def test_blocked_user_is_a_permanent_failure_marking_them_unreachable(
    fake: FakeBotAPI, channel: tuple[TelegramChannel, Files]
) -> None:
    chan, _ = channel
    fake.blocked_chats.add(777)
    result = await chan.send(outbound("hello"))
    assert result.status is DeliveryStatus.FAILED
    assert not result.retryable
    assert "blocked" in (result.reason or "")
    assert "blocked" in result.extras[RECIPIENT_UNREACHABLE]


async def test_other_errors_have_readable_reasons(fake: FakeBotAPI, channel: tuple[TelegramChannel, Files]) -> None:
    chan, _ = channel
    fake.fail("sendMessage", 400, "Bad Request: chat not found")
    bad = await chan.send(outbound("hello"))
    assert (bad.status, bad.retryable, bad.reason) == (
        DeliveryStatus.FAILED,
        False,
        "Telegram refused the message: Chat not found",
    )
    fake.fail("sendMessage", 502, "Bad Gateway")
    assert (await chan.send(outbound("hello"))).retryable is True
    assert (await chan.send(outbound("hello", inbox="telegram:other"))).reason == (
        "no Telegram bot is configured for inbox 'telegram:other'"
    )
    long_id = QuickReply(id="ب" * 40, title="x")  # 80 bytes of UTF-8: sent as a token, not refused
    assert (await chan.send(outbound("pick", quick_replies=(long_id,)))).status is DeliveryStatus.SENT


async def test_attachments_go_as_photo_or_document(fake: FakeBotAPI, channel: tuple[TelegramChannel, Files]) -> None:
    chan, files = channel
    files.stored["/attachments/k1/receipt.png"] = b"\x89PNG fake image"
    files.stored["/attachments/k2/invoice.pdf"] = b"%PDF-1.4 fake"
    atts = (
        Attachment(url="/attachments/k1/receipt.png", content_type="image/png", filename="receipt.png"),
        Attachment(url="/attachments/k2/invoice.pdf", content_type="application/pdf", filename="invoice.pdf"),
    )
    result = await chan.send(outbound("Here you are", attachments=atts))
    assert result.status is DeliveryStatus.SENT, result.reason
    assert [c.method for c in fake.calls] == ["sendMessage", "sendPhoto", "sendDocument"]
    assert fake.sent("sendPhoto")[0].files["photo"] == ("receipt.png", b"\x89PNG fake image")
    assert fake.sent("sendDocument")[0].files["document"] == ("invoice.pdf", b"%PDF-1.4 fake")
    gone = await chan.send(outbound("", attachments=(Attachment(url="/attachments/zz/gone.txt"),)))
    assert gone.reason == "attachment 'file' is no longer stored"


async def test_quick_reply_ids_over_64_bytes_go_as_a_derived_token(
    fake: FakeBotAPI, channel: tuple[TelegramChannel, Files]
) -> None:
    chan, _ = channel
    fake.calls.clear()
    long_id = "بین پانصد میلیون تا یک میلیارد تومان"
    replies = (QuickReply(id=long_id, title="بله"), QuickReply(id="no", title="نه"))
    result = await chan.send(outbound("بودجه؟", quick_replies=replies))
    assert result.status is DeliveryStatus.SENT, result.reason
    rows = fake.sent()[-1].params["reply_markup"]["inline_keyboard"]
    data = [b["callback_data"] for row in rows for b in row]
    assert data[1] == "no" and data[0] != long_id and len(data[0].encode()) <= 64
    # Derived from the id alone: the same in every process, mapped back against what was offered.
    assert callback_data(long_id) == data[0]
    assert resolve_callback(data[0], replies) == replies[0]
    assert resolve_callback("no", replies) == replies[1]
    assert resolve_callback(callback_data("x" * 65), replies) is None
