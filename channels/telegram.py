"""Telegram: Bot API updates in, ``sendMessage`` and friends out, through
python-telegram-bot.

Parsing is pure: :func:`parse_update` turns one update's JSON (from a webhook
or from ``getUpdates``) into a :class:`TelegramUpdate`: a customer's message,
an edit, a pressed inline button, the user blocking or unblocking the bot, or
a kind the hub does not handle (acknowledged and dropped by the caller). It
reads the update with ``telegram.Update.de_json`` after filling in the few
fields that Telegram's own older samples lack. Files are only referenced here
(:class:`MediaRef`); the hub fetches them with ``getFile``.

:class:`TelegramChannel` sends: text split at 4,096 UTF-16 units and sent
without ``parse_mode`` (a customer's or agent's ``*`` or ``<b>`` is never
markup), quick replies as an inline keyboard, attachments as photos or
documents. Flood control (429) and network trouble are retryable with
Telegram's ``retry_after``; a user who blocked the bot (403) is a permanent
failure that marks the address unreachable.
"""

from __future__ import annotations

import base64
import copy
import enum
import hashlib
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

import httpx
from telegram import (
    Bot,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    Location,
    Message,
    Update,
)
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from channels.base import RECIPIENT_UNREACHABLE, SEND_PARTS, ChannelAdapter, InvalidPayload
from hub.core import Attachment, Channel, DeliveryStatus, InboundMessage, OutboundMessage, QuickReply, SendResult
from hub.text import split_text, utf16_len

# python-telegram-bot's documented opt-in to time periods as timedelta, which
# its next major version makes the default; without it every 429 warns.
os.environ.setdefault("PTB_TIMEDELTA", "1")

BOT_API_URL = "https://api.telegram.org"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
# sendMessage's limit, in UTF-16 code units (we send no entities, so no parsing shrinks it).
MAX_TEXT_UNITS = 4096
MAX_CALLBACK_DATA_BYTES = 64
# What the hub asks Telegram for; everything else it would only drop.
ALLOWED_UPDATES = ("message", "edited_message", "callback_query", "my_chat_member")
# Bot API limit for photos sent by upload; larger images go as documents.
MAX_PHOTO_BYTES = 10 * 1024 * 1024
PHOTO_TYPES = ("image/jpeg", "image/png", "image/webp")


class UpdateKind(enum.StrEnum):
    MESSAGE = "message"
    EDIT = "edit"
    CALLBACK = "callback"
    BLOCKED = "blocked"
    UNBLOCKED = "unblocked"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class MediaRef:
    """A file that came with a message, still on Telegram's servers."""

    file_id: str
    kind: str  # photo, document, audio, voice, video, video_note, animation
    filename: str
    content_type: str
    size: int | None
    #: Telegram's id of the file itself (a file_id differs per bot and over
    #: time): tells an edit that replaced the file from one of the caption.
    unique_id: str = ""


@dataclass(frozen=True, slots=True)
class TelegramUpdate:
    """One update, understood. ``message`` is set for messages, edits and
    callbacks (without attachments: see ``media``); ``chat_id`` always names the
    customer's private chat when there is one."""

    update_id: int
    kind: UpdateKind
    message: InboundMessage | None = None
    media: tuple[MediaRef, ...] = ()
    chat_id: str | None = None
    #: The text after ``/start`` in a deep link (t.me/<bot>?start=<payload>).
    start_payload: str | None = None
    #: The sender's own phone number, shared with the "share contact" button.
    shared_phone: str | None = None
    callback_query_id: str | None = None
    edited_at: datetime | None = None
    #: Set on an edit that moves a shared (live) location: the new position,
    #: as in ``message.extras["location"]``. Nothing else of such a message
    #: can be edited.
    moved_location: dict[str, Any] | None = None
    #: Why an update is ignored, or what changed for blocked / unblocked.
    reason: str | None = None
    #: When Telegram says a block or unblock happened: a redelivered older
    #: change must not undo a newer one.
    changed_at: datetime | None = None


def bot_urls(api_base_url: str) -> tuple[str, str]:
    """``base_url`` and ``base_file_url`` for :class:`telegram.Bot`."""
    base = api_base_url.rstrip("/")
    return f"{base}/bot", f"{base}/file/bot"


def message_external_id(bot: str, chat_id: int | str, message_id: int | str) -> str:
    """Telegram message ids are unique within one chat of one bot, in both directions."""
    return f"{bot}:{chat_id}:{message_id}"


def callback_external_id(bot: str, query_id: str) -> str:
    return f"{bot}:cb:{query_id}"


# --- parsing ------------------------------------------------------------------------


def parse_update(data: Any, *, bot: str, inbox: str) -> TelegramUpdate:
    """One update's JSON as a :class:`TelegramUpdate`. Raises
    :class:`InvalidPayload` for JSON that is not a Telegram update; a real update
    of a kind the hub does not handle comes back as ``IGNORED`` with the reason."""
    if not isinstance(data, dict):
        raise InvalidPayload("a Telegram update must be a JSON object")
    update_id = data.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool) or not 0 <= update_id < 2**_MAX_INT_BITS:
        raise InvalidPayload("a Telegram update needs a non-negative integer update_id")
    kinds = [k for k in data if k != "update_id"]
    if not kinds:
        raise InvalidPayload("the update carries no payload (message, edited_message, callback_query, ...)")
    if len(kinds) > 1:
        raise InvalidPayload(f"an update carries one payload; this one has {', '.join(sorted(kinds))}")
    kind = kinds[0]
    handler = _HANDLERS.get(kind)
    if handler is None:
        return TelegramUpdate(update_id, UpdateKind.IGNORED, reason=f"{kind} updates are not handled")
    payload = data[kind]
    if not isinstance(payload, dict):
        raise InvalidPayload(f"{kind} must be a JSON object")
    _check_fields(kind, payload)
    try:
        update = Update.de_json(_tolerate({"update_id": update_id, kind: payload}), None)
        return handler(update, bot, inbox)
    except InvalidPayload:
        raise
    except Exception as exc:
        # Parsing is pure, so whatever fails here, the payload made it fail. A
        # 500 would have Telegram resend the update for hours, and a poller
        # would read it again forever; a 400 says what is wrong with it.
        raise InvalidPayload(f"{kind} is not a valid Telegram {kind}: {type(exc).__name__}: {exc}") from exc


# The largest Unix time a datetime holds (9999-12-31 23:59:59 UTC).
_MAX_UNIX_TIME = 253_402_300_799
_TIME_FIELDS = ("date", "edit_date")
_TEXT_FIELDS = ("text", "caption")
# The Bot API's integers (ids included) have at most 52 significant bits;
# larger ones would not even fit the database's 64-bit columns.
_MAX_INT_BITS = 53


def _check_fields(kind: str, payload: Mapping[str, Any]) -> None:
    """The fields the hub reads, named when they are of the wrong type, before
    python-telegram-bot (or the database) fails on them somewhere deeper."""
    for name in _TIME_FIELDS:
        value = payload.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_UNIX_TIME:
            raise InvalidPayload(f"{kind}.{name} must be a Unix time in seconds, not {str(value)[:40]!r}")
    for name in _TEXT_FIELDS:
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidPayload(f"{kind}.{name} must be a string, not {type(value).__name__}")
    for name in _MEDIA_FIELDS:
        value = payload.get(name)
        files = value if isinstance(value, list) else [value]
        for i, file in enumerate(files):
            if isinstance(file, dict):
                _check_file(f"{kind}.{name}[{i}]" if isinstance(value, list) else f"{kind}.{name}", file)
    _check_ints(kind, payload)


# The files of a message that the hub fetches (:func:`_media_of`); ``photo`` is
# a list of sizes.
_MEDIA_FIELDS = ("photo", "animation", "document", "audio", "voice", "video", "video_note")
# python-telegram-bot copies these as they come; the hub names the file, types
# and sizes it by them, and would fail on another type only after fetching it.
_FILE_TEXT_FIELDS = ("file_id", "file_unique_id", "file_name", "mime_type")


def _check_file(path: str, file: Mapping[str, Any]) -> None:
    for name in _FILE_TEXT_FIELDS:
        value = file.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidPayload(f"{path}.{name} must be a string, not {type(value).__name__}")
    size = file.get("file_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidPayload(f"{path}.file_size must be a non-negative integer, not {str(size)[:40]!r}")


def _check_ints(path: str, node: Any) -> None:
    if isinstance(node, dict):
        for key, child in node.items():
            _check_ints(f"{path}.{key}", child)
    elif isinstance(node, list):
        for i, child in enumerate(node):
            _check_ints(f"{path}[{i}]", child)
    elif isinstance(node, int) and not isinstance(node, bool) and node.bit_length() > _MAX_INT_BITS:
        raise InvalidPayload(f"{path} is too large for a Telegram integer: {str(node)[:40]}")


# Keys whose value is a User; Telegram's published sample updates omit is_bot.
_USER_KEYS = frozenset({"from", "user", "via_bot"})


def _tolerate(node: Any) -> Any:
    """Fill in what python-telegram-bot requires and older updates (the Bot API
    page's own samples) lack: ``is_bot`` on users, ``type`` on chats,
    ``chat_instance`` on callback queries, ``file_unique_id`` on files.
    Everything present stays as it is."""
    node = copy.deepcopy(node)

    def walk(value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item)
            return
        if not isinstance(value, dict):
            return
        for key, child in value.items():
            if isinstance(child, dict):
                if key in _USER_KEYS and "first_name" in child:
                    child.setdefault("is_bot", False)
                elif key in ("chat", "sender_chat") and "type" not in child and isinstance(child.get("id"), int):
                    child["type"] = _chat_type(child["id"], child)
                elif key == "callback_query":
                    child.setdefault("chat_instance", "")
                if "file_id" in child:
                    child.setdefault("file_unique_id", child["file_id"])
            walk(child)

    walk(node)
    return node


def _chat_type(chat_id: int, chat: Mapping[str, Any]) -> str:
    if chat_id > 0:
        return "private"
    return "channel" if str(chat_id).startswith("-100") and "title" in chat and "username" in chat else "group"


def _on_message(update: Update, bot: str, inbox: str) -> TelegramUpdate:
    msg = update.message
    assert msg is not None
    return _from_message(update.update_id, msg, bot, inbox, UpdateKind.MESSAGE)


def _on_edit(update: Update, bot: str, inbox: str) -> TelegramUpdate:
    msg = update.edited_message
    assert msg is not None
    return _from_message(update.update_id, msg, bot, inbox, UpdateKind.EDIT)


def _from_message(update_id: int, msg: Message, bot: str, inbox: str, kind: UpdateKind) -> TelegramUpdate:
    chat = msg.chat
    if chat.type != "private":
        return TelegramUpdate(
            update_id, UpdateKind.IGNORED, reason=f"messages in {chat.type} chats are not handled (only private chats)"
        )
    user = msg.from_user
    if user is None:
        raise InvalidPayload("a private chat's message needs 'from'")
    if user.is_bot:
        return TelegramUpdate(update_id, UpdateKind.IGNORED, reason="messages from bots are not handled")
    body = _with_hidden_links(msg)
    extras: dict[str, Any] = {
        "update_id": update_id,
        "chat_id": chat.id,
        "message_id": msg.message_id,
        "user_id": user.id,
    }
    if user.username:
        extras["username"] = user.username
    if user.language_code:
        extras["language_code"] = user.language_code
    if msg.reply_to_message is not None:
        extras["reply_to_message_id"] = msg.reply_to_message.message_id
    if msg.forward_origin is not None or "forward_date" in (msg.api_kwargs or {}):
        extras["forwarded"] = True
    media = _media_of(msg)
    shared_phone: str | None = None
    if msg.contact is not None:
        c = msg.contact
        name = " ".join(p for p in (c.first_name, c.last_name) if p)
        body = body or f"{name}: {c.phone_number}".strip(": ")
        extras["contact"] = {"phone_number": c.phone_number, "name": name, "user_id": c.user_id}
        # Only the sender's own number, shared with Telegram's "share my contact"
        # button, says who they are; anyone can forward someone else's card.
        if c.user_id is not None and c.user_id == user.id:
            shared_phone = c.phone_number
    if msg.location is not None and msg.venue is None:
        loc = msg.location
        body = body or f"📍 {loc.latitude:.6f}, {loc.longitude:.6f}"
        extras["location"] = _location(loc)
    if msg.venue is not None:
        v = msg.venue
        body = body or f"📍 {v.title}, {v.address}"
        extras["location"] = {"latitude": v.location.latitude, "longitude": v.location.longitude, "title": v.title}
    if msg.sticker is not None:
        body = body or msg.sticker.emoji or "[sticker]"
        extras["sticker"] = True
    if not body and not media:
        what = _content_kind(msg)
        return TelegramUpdate(update_id, UpdateKind.IGNORED, reason=f"{what} messages are not handled")
    start_payload: str | None = None
    if kind is UpdateKind.MESSAGE and msg.text and _is_start(msg.text):
        # Tapping START (or a t.me link) is not a question: the bot greets.
        extras["command"] = "start"
        start_payload = _start_payload(msg.text)
        if start_payload is not None:
            extras["start_payload"] = start_payload
    edited_at = (msg.edit_date or msg.date) if kind is UpdateKind.EDIT else None
    if edited_at is not None:
        extras["edited_at"] = edited_at.isoformat()
    moved = edited_at is not None and msg.location is not None and msg.venue is None
    moved_location = extras["location"] if moved else None
    inbound = InboundMessage(
        channel=Channel.TELEGRAM,
        inbox=inbox,
        external_id=message_external_id(bot, chat.id, msg.message_id),
        sender=str(chat.id),
        sender_name=user.full_name or user.username,
        body=body,
        received_at=msg.date,
        extras=extras,
    )
    return TelegramUpdate(
        update_id,
        kind,
        message=inbound,
        media=media,
        chat_id=str(chat.id),
        start_payload=start_payload,
        shared_phone=shared_phone,
        edited_at=edited_at,
        moved_location=moved_location,
    )


def _location(loc: Location) -> dict[str, Any]:
    out: dict[str, Any] = {"latitude": loc.latitude, "longitude": loc.longitude}
    if loc.live_period is not None:
        period = loc.live_period
        out["live_period"] = int(period.total_seconds()) if isinstance(period, timedelta) else int(period)
    if loc.heading is not None:
        out["heading"] = loc.heading
    if loc.horizontal_accuracy is not None:
        out["horizontal_accuracy"] = loc.horizontal_accuracy
    return out


# What Telegram lets a t.me/<bot>?start= link carry; anything else after
# /start was typed by the customer, and is no campaign or referral source.
_DEEP_LINK_PAYLOAD = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _is_start(text: str) -> bool:
    head = text.strip().split(maxsplit=1)[0] if text.strip() else ""
    return head.split("@", 1)[0] == "/start"


def _start_payload(text: str) -> str | None:
    """``/start <payload>`` from a deep link: the payload, or "" for a bare
    ``/start``; None for other text, typed words after ``/start`` included."""
    if not _is_start(text):
        return None
    _, _, rest = text.strip().partition(" ")
    rest = rest.strip()
    if not rest:
        return ""
    return rest if _DEEP_LINK_PAYLOAD.fullmatch(rest) else None


def _with_hidden_links(msg: Message) -> str:
    """The text or caption, each hidden link (a ``text_link`` entity) followed
    by its URL: the agent cannot click what the customer clicked, and only sees
    the words otherwise."""
    text = msg.text or msg.caption or ""
    entities = (msg.entities if msg.text else msg.caption_entities) or ()
    links = sorted(
        ((e.offset, e.offset + e.length, e.url) for e in entities if e.type == "text_link" and e.url),
        key=lambda link: link[1],
        reverse=True,
    )
    if not links:
        return text
    # Entity offsets count UTF-16 units, not code points.
    units = text.encode("utf-16-le")
    for start, end, url in links:
        if url in units[2 * start : 2 * end].decode("utf-16-le", errors="ignore"):
            continue  # the link shows its own address
        units = units[: 2 * end] + f" ({url})".encode("utf-16-le") + units[2 * end :]
    return units.decode("utf-16-le", errors="replace")


def _content_kind(msg: Message) -> str:
    for attr in (
        "poll",
        "dice",
        "game",
        "invoice",
        "story",
        "successful_payment",
        "new_chat_members",
        "pinned_message",
    ):
        if getattr(msg, attr, None):
            return attr
    return "empty or service"


def _media_of(msg: Message) -> tuple[MediaRef, ...]:
    out: list[MediaRef] = []
    if msg.photo:
        # The sizes of one photo; keep the largest.
        best = max(msg.photo, key=lambda p: (p.file_size or 0, p.width * p.height))
        out.append(
            MediaRef(
                best.file_id, "photo", f"photo-{msg.message_id}.jpg", "image/jpeg", best.file_size, best.file_unique_id
            )
        )
    if msg.animation is not None:
        a = msg.animation
        out.append(
            MediaRef(
                a.file_id,
                "animation",
                a.file_name or "animation.mp4",
                a.mime_type or "video/mp4",
                a.file_size,
                a.file_unique_id,
            )
        )
    elif msg.document is not None:
        d = msg.document
        out.append(
            MediaRef(
                d.file_id,
                "document",
                d.file_name or "document",
                d.mime_type or "application/octet-stream",
                d.file_size,
                d.file_unique_id,
            )
        )
    if msg.audio is not None:
        au = msg.audio
        name = au.file_name or (f"{au.title}.mp3" if au.title else "audio.mp3")
        out.append(MediaRef(au.file_id, "audio", name, au.mime_type or "audio/mpeg", au.file_size, au.file_unique_id))
    if msg.voice is not None:
        vo = msg.voice
        out.append(
            MediaRef(
                vo.file_id,
                "voice",
                f"voice-{msg.message_id}.ogg",
                vo.mime_type or "audio/ogg",
                vo.file_size,
                vo.file_unique_id,
            )
        )
    if msg.video is not None:
        vi = msg.video
        out.append(
            MediaRef(
                vi.file_id,
                "video",
                vi.file_name or "video.mp4",
                vi.mime_type or "video/mp4",
                vi.file_size,
                vi.file_unique_id,
            )
        )
    if msg.video_note is not None:
        vn = msg.video_note
        out.append(
            MediaRef(
                vn.file_id,
                "video_note",
                f"video-note-{msg.message_id}.mp4",
                "video/mp4",
                vn.file_size,
                vn.file_unique_id,
            )
        )
    return tuple(out)


def _on_callback(update: Update, bot: str, inbox: str) -> TelegramUpdate:
    query = update.callback_query
    assert query is not None
    user = query.from_user
    if user is None or not query.id:
        raise InvalidPayload("a callback_query needs 'id' and 'from'")
    if query.data is None:
        return TelegramUpdate(
            update.update_id,
            UpdateKind.IGNORED,
            callback_query_id=query.id,
            reason="callback queries without data (games) are not handled",
        )
    chat_id: int = user.id
    message = query.message
    if isinstance(message, Message):
        if message.chat.type != "private":
            return TelegramUpdate(
                update.update_id,
                UpdateKind.IGNORED,
                callback_query_id=query.id,
                reason=f"buttons in {message.chat.type} chats are not handled",
            )
        chat_id = message.chat.id
    title = _button_title(query)
    extras: dict[str, Any] = {"update_id": update.update_id, "chat_id": chat_id, "user_id": user.id}
    if message is not None:
        extras["message_id"] = message.message_id
    if query.inline_message_id:
        extras["inline_message_id"] = query.inline_message_id
    if user.username:
        extras["username"] = user.username
    inbound = InboundMessage(
        channel=Channel.TELEGRAM,
        inbox=inbox,
        external_id=callback_external_id(bot, query.id),
        sender=str(chat_id),
        sender_name=user.full_name or user.username,
        body=title or query.data,
        quick_reply=query.data[:64] or None,
        extras=extras,
    )
    return TelegramUpdate(
        update.update_id,
        UpdateKind.CALLBACK,
        message=inbound,
        chat_id=str(chat_id),
        callback_query_id=query.id,
    )


def _button_title(query: CallbackQuery) -> str | None:
    """The pressed button's text, from the keyboard of the message it sits on."""
    message = query.message
    markup = message.reply_markup if isinstance(message, Message) else None
    if markup is None:
        return None
    for row in markup.inline_keyboard:
        for button in row:
            if button.callback_data == query.data:
                return button.text
    return None


def _on_member(update: Update, bot: str, inbox: str) -> TelegramUpdate:
    change = update.my_chat_member
    assert change is not None
    if change.chat.type != "private":
        return TelegramUpdate(
            update.update_id, UpdateKind.IGNORED, reason="membership changes in groups are not handled"
        )
    status = change.new_chat_member.status
    chat_id = str(change.chat.id)
    if status == "kicked":
        return TelegramUpdate(
            update.update_id,
            UpdateKind.BLOCKED,
            chat_id=chat_id,
            reason="the customer blocked the bot on Telegram",
            changed_at=change.date,
        )
    if status == "member":
        return TelegramUpdate(
            update.update_id,
            UpdateKind.UNBLOCKED,
            chat_id=chat_id,
            reason="the customer unblocked the bot",
            changed_at=change.date,
        )
    return TelegramUpdate(update.update_id, UpdateKind.IGNORED, reason=f"chat member status {status} is not handled")


_HANDLERS: dict[str, Callable[[Update, str, str], TelegramUpdate]] = {
    "message": _on_message,
    "edited_message": _on_edit,
    "callback_query": _on_callback,
    "my_chat_member": _on_member,
}


# --- sending ------------------------------------------------------------------------

ReadAttachment = Callable[[str], Awaitable[bytes | None]]


@dataclass(frozen=True, slots=True)
class BotHandle:
    """A configured bot as the adapter knows it: its name (in external ids) and client."""

    name: str
    bot: Bot


#: Starts the callback data that stands for a quick reply id over Telegram's
#: 64 bytes (see :func:`callback_data`).
HASHED_ID_PREFIX = "qr~"


def callback_data(reply_id: str) -> str:
    """What a button carries for a quick reply: its id, or, when that is over
    Telegram's 64 bytes of callback data (a Persian id of 33 letters is), a
    token derived from the id alone. Derived, not stored: any process, before
    or after a restart, maps it back with :func:`resolve_callback` against
    the quick replies the hub offered."""
    if len(reply_id.encode()) <= MAX_CALLBACK_DATA_BYTES:
        return reply_id
    digest = base64.urlsafe_b64encode(hashlib.sha256(reply_id.encode()).digest()).decode().rstrip("=")
    return f"{HASHED_ID_PREFIX}{digest}"


def is_hashed_id(data: str) -> bool:
    return data.startswith(HASHED_ID_PREFIX)


def resolve_callback(data: str, offered: Iterable[QuickReply]) -> QuickReply | None:
    """The offered quick reply a button's callback data stands for."""
    replies = list(offered)
    exact = next((q for q in replies if q.id == data), None)
    return exact or next((q for q in replies if callback_data(q.id) == data), None)


def keyboard(quick_replies: tuple[QuickReply, ...]) -> InlineKeyboardMarkup | None:
    """One button per row, so long titles (and Persian ones) stay readable."""
    if not quick_replies:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(q.title, callback_data=callback_data(q.id))] for q in quick_replies]
    )


def plan(message: OutboundMessage) -> list[str | Attachment]:
    """What one stored message becomes on Telegram, in order: the text in parts
    of at most 4,096 UTF-16 units, then each attachment."""
    steps: list[str | Attachment] = []
    if message.body.strip():
        steps.extend(split_text(message.body, MAX_TEXT_UNITS, measure=utf16_len))
    steps.extend(message.attachments)
    return steps


def retry_seconds(exc: RetryAfter) -> float:
    value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class TelegramChannel(ChannelAdapter):
    channel: ClassVar[Channel] = Channel.TELEGRAM
    # Long bodies are split, not refused.
    max_body_chars: ClassVar[int | None] = None
    # Telegram's broadcast limit per bot; per chat it is about one per second.
    rate_per_second: ClassVar[float | None] = 30.0
    supports_attachments: ClassVar[bool] = True

    def __init__(self, bots: Mapping[str, BotHandle], read_attachment: ReadAttachment) -> None:
        """``bots``: by inbox key. ``read_attachment``: the bytes behind one of
        the hub's attachment URLs (None when it is not one)."""
        self.bots = dict(bots)
        self._read = read_attachment

    async def send(self, message: OutboundMessage) -> SendResult:
        handle = self.bots.get(message.inbox)
        if handle is None:
            return _failed(f"no Telegram bot is configured for inbox {message.inbox!r}")
        try:
            chat_id = int(message.recipient)
        except ValueError:
            return _failed(f"{message.recipient!r} is not a Telegram chat id")
        markup = keyboard(message.quick_replies)
        steps = plan(message)
        if not steps:
            return _failed("the message has neither text nor attachments")
        # Parts already delivered by an earlier attempt (flood control stopped it
        # half way): resume after them, so the customer never gets a part twice.
        done = [str(p) for p in message.extras.get(SEND_PARTS) or []][: len(steps)]
        for i, step in enumerate(steps):
            if i < len(done):
                continue
            last = i == len(steps) - 1
            try:
                sent = await self._send_step(handle.bot, chat_id, step, markup if last else None)
            except _StepFailed as exc:
                return _failed(str(exc), parts=done)
            except RetryAfter as exc:
                wait = retry_seconds(exc)
                return _failed(
                    f"Telegram flood control: retry in {wait:g} s", retryable=True, retry_after=wait, parts=done
                )
            except Forbidden as exc:
                reason = f"the customer blocked the bot or deleted the chat on Telegram ({exc.message})"
                return SendResult(
                    status=DeliveryStatus.FAILED,
                    reason=f"Telegram refused delivery: {reason}; they can be reached again once they write to the bot",
                    extras={SEND_PARTS: done, RECIPIENT_UNREACHABLE: reason},
                )
            except InvalidToken:
                return _failed("Telegram rejected the bot's token (check the bot's token_env)", parts=done)
            except ChatMigrated as exc:
                return _failed(f"the chat moved to {exc.new_chat_id}", parts=done)
            except BadRequest as exc:
                return _failed(f"Telegram refused the message: {exc.message}", parts=done)
            except NetworkError as exc:  # includes TimedOut
                if _maybe_delivered(exc):
                    # The Bot API has no idempotency key: sent again, the
                    # customer would get it twice. The agent sees why.
                    return _failed(
                        f"Telegram did not confirm this message ({exc.message}): it may have reached the "
                        "customer, so it was not sent again; check the chat before resending",
                        parts=done,
                    )
                return _failed(f"Telegram unreachable: {exc.message}", retryable=True, parts=done)
            except TelegramError as exc:
                return _failed(f"Telegram error: {exc.message}", retryable=True, parts=done)
            done.append(str(sent.message_id))
        return SendResult(
            status=DeliveryStatus.SENT,
            external_id=message_external_id(handle.name, chat_id, done[0]),
            extras={SEND_PARTS: done},
        )

    async def _send_step(
        self, bot: Bot, chat_id: int, step: str | Attachment, markup: InlineKeyboardMarkup | None
    ) -> Message:
        if isinstance(step, str):
            # No parse_mode: text is sent as typed, never read as Markdown or HTML.
            return await bot.send_message(chat_id, step, parse_mode=None, reply_markup=markup)
        data = await self._read(step.url)
        name = step.filename or "file"
        if data is None:
            if not step.url.startswith(("https://", "http://")):
                raise _StepFailed(f"attachment {name!r} is no longer stored")
            # Someone else's URL: Telegram fetches it.
            return await bot.send_document(chat_id, step.url, reply_markup=markup)
        if step.content_type in PHOTO_TYPES and len(data) <= MAX_PHOTO_BYTES:
            try:
                return await bot.send_photo(chat_id, InputFile(data, filename=name), reply_markup=markup)
            except BadRequest:
                # Telegram refuses photos it cannot show (width + height over
                # 10,000, a side over 20 times the other: a long screenshot)
                # and images it cannot decode; as a file, it goes through. A
                # refusal that is not about the photo fails the document too.
                return await bot.send_document(chat_id, InputFile(data, filename=name), reply_markup=markup)
        return await bot.send_document(chat_id, InputFile(data, filename=name), reply_markup=markup)

    async def close(self) -> None:
        for handle in self.bots.values():
            try:
                await handle.bot.shutdown()
            except TelegramError:  # closing anyway
                continue


# Failures after the whole request may have reached Telegram: it may have
# sent the message and only its answer was lost. Everything else that is not
# an answer from Telegram (no connection, a full pool, a request not written
# out) never reached it; an answer (a 5xx) says it did not send.
_UNCONFIRMED = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.CloseError)


def _maybe_delivered(exc: NetworkError) -> bool:
    return isinstance(exc.__cause__, _UNCONFIRMED)


class _StepFailed(Exception):
    """A part of a message that cannot be sent for a reason of ours."""


def _failed(
    reason: str, *, retryable: bool = False, retry_after: float | None = None, parts: list[str] | None = None
) -> SendResult:
    return SendResult(
        status=DeliveryStatus.FAILED,
        reason=reason,
        retryable=retryable,
        retry_after=retry_after,
        extras={SEND_PARTS: parts} if parts else {},
    )
