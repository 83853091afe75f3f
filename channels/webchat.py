"""Web chat: the embeddable widget's websocket frames.

Frames are JSON objects with a ``type``. The visitor sends
``{"type": "message", "text": "...", "client_id": "..."}`` (and ``attachments``:
files uploaded with ``POST /chat/attachments``); ``client_id`` makes a
resend idempotent (it becomes part of the message's external id). Outbound
messages are published to the visitor's live channel, which every web process
listens to for the visitors connected to it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ValidationError

from channels.base import ChannelAdapter, InvalidPayload
from hub.core import Attachment, Channel, DeliveryStatus, InboundMessage, OutboundMessage, SendResult, is_unicode
from hub.text import InvalidPhoneNumber, parse_phone

MAX_FRAME_BYTES = 64 * 1024
MAX_CLIENT_ID = 100
# Files in one visitor message: a few screenshots, not a folder.
MAX_ATTACHMENTS = 10
NOT_TEXT = "holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not text"
# The longest message a visitor may send (webchat.max_message_chars at most):
# what the channel sends the other way too.
MAX_MESSAGE_CHARS = 20_000

Publish = Callable[[str, dict[str, Any]], Awaitable[None]]


def visitor_channel(visitor_id: str) -> str:
    return f"visitor:{visitor_id}"


def external_id(visitor_id: str, client_id: str) -> str:
    return f"{visitor_id}:{client_id}"


def frame_limit(max_chars: int) -> int:
    """The largest frame a message of ``max_chars`` characters makes: JSON
    writes a control character as six bytes; the rest is the other fields."""
    return max(MAX_FRAME_BYTES, 6 * max_chars + 4096)


def decode_frame(raw: str, limit: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    if len(raw) > limit or len(raw.encode()) > limit:
        raise InvalidPayload(f"frame is larger than {limit} bytes")
    try:
        frame = json.loads(raw)
    except ValueError as exc:
        raise InvalidPayload(f"frame is not valid JSON: {exc}") from exc
    if not isinstance(frame, dict):
        raise InvalidPayload("frame must be a JSON object")
    kind = frame.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidPayload("frame needs a string 'type'")
    return frame


def parse_message(
    frame: dict[str, Any], *, visitor_id: str, inbox: str, max_chars: int, sender_name: str | None = None
) -> InboundMessage:
    """A visitor's ``message`` frame as an :class:`InboundMessage`. Its
    ``attachments`` are as the visitor wrote them: whether they are files of
    the hub's store is for the caller to check (and their type, size and name
    are then the store's)."""
    unknown = set(frame) - {"type", "text", "client_id", "quick_reply", "attachments"}
    if unknown:
        raise InvalidPayload(f"unknown field(s) in message frame: {', '.join(sorted(unknown))}")
    attachments = _attachments(frame.get("attachments", []))
    text = frame.get("text", "" if attachments else None)
    # NUL is dropped from every inbound message; dropped first here, so a
    # text of nothing else is refused as empty rather than stored as "".
    if isinstance(text, str):
        text = text.replace("\x00", "")
    if not isinstance(text, str) or not (text.strip() or attachments):
        raise InvalidPayload("message frame needs a non-empty string 'text', or 'attachments'")
    if len(text) > max_chars:
        raise InvalidPayload(f"text is longer than {max_chars} characters")
    client_id = frame.get("client_id")
    if not isinstance(client_id, str) or not client_id or len(client_id) > MAX_CLIENT_ID:
        raise InvalidPayload(f"message frame needs a string 'client_id' of 1 to {MAX_CLIENT_ID} characters")
    quick_reply = frame.get("quick_reply")
    if quick_reply is not None and (not isinstance(quick_reply, str) or not 1 <= len(quick_reply) <= 64):
        raise InvalidPayload("quick_reply must be the string id (1 to 64 characters) of a button offered earlier")
    for key, value in (("text", text), ("client_id", client_id), ("quick_reply", quick_reply)):
        if value is not None and not is_unicode(value):
            raise InvalidPayload(f"{key} {NOT_TEXT}")
    return InboundMessage(
        channel=Channel.WEBCHAT,
        inbox=inbox,
        external_id=external_id(visitor_id, client_id),
        sender=visitor_id,
        sender_name=sender_name,
        body=text.strip() and text,
        attachments=attachments,
        quick_reply=quick_reply,
        extras={"client_id": client_id},
    )


def _attachments(value: object) -> tuple[Attachment, ...]:
    if not isinstance(value, list) or len(value) > MAX_ATTACHMENTS:
        raise InvalidPayload(
            f"attachments must be a list of at most {MAX_ATTACHMENTS} objects returned by POST /chat/attachments"
        )
    files = []
    for i, item in enumerate(value):
        try:
            files.append(Attachment.model_validate(item))
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in (f"attachments.{i}", *problem["loc"]))
            raise InvalidPayload(f"{where}: {problem['msg']}") from exc
    return tuple(files)


def message_frame(message: dict[str, Any], client_id: str | None = None) -> dict[str, Any]:
    """What the visitor sees of a stored message: never private notes, never
    internal fields such as the agent's id. ``client_id`` lets the widget match
    its own message to the stored one."""
    if client_id is None:
        client_id = (message.get("extras") or {}).get("client_id")
    return {
        "type": "message",
        "id": message["id"],
        "text": message["body"],
        "author": message["author"],
        "created_at": message["created_at"],
        "attachments": message.get("attachments", []),
        "quick_replies": message.get("quick_replies", []),
        "status": message.get("status"),
        "client_id": client_id,
    }


class WebchatChannel(ChannelAdapter):
    channel: ClassVar[Channel] = Channel.WEBCHAT
    max_body_chars: ClassVar[int | None] = MAX_MESSAGE_CHARS
    supports_attachments: ClassVar[bool] = True

    def __init__(self, publish: Publish) -> None:
        self._publish = publish

    async def send(self, message: OutboundMessage) -> SendResult:
        frame = {
            "type": "message",
            "id": message.message_id,
            "text": message.body,
            "author": message.author.value,
            "attachments": [a.model_dump(exclude_none=True) for a in message.attachments],
            "quick_replies": [q.model_dump() for q in message.quick_replies],
            "created_at": message.extras.get("created_at"),
        }
        try:
            await self._publish(visitor_channel(message.recipient), frame)
        except (OSError, ConnectionError) as exc:
            return SendResult(status=DeliveryStatus.FAILED, reason=f"live bus unreachable: {exc}", retryable=True)
        # Delivered is reported later by the visitor's widget ("ack" frame); a
        # visitor who is away sees the message in the history when they return.
        return SendResult(status=DeliveryStatus.SENT)


# Control characters (line breaks, tabs) and the line and paragraph separators.
_BREAKS = frozenset({"Cc", "Zl", "Zp"})

# Deliberately loose: one @, something on each side, a dot in the domain. The
# real check is whether a reply sent there arrives.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+\Z")


class InvalidField(InvalidPayload):
    """A visitor's answer that cannot be used; ``field`` names the form field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class VisitorDetails:
    """What a visitor told the widget's pre-chat or offline form about themselves.
    ``offline``: they wrote while nobody was available and want the reply there."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None
    offline: bool = False


def parse_identify(frame: dict[str, Any], *, phone_region: str | None = None) -> VisitorDetails:
    """A visitor's ``identify`` frame: ``name``, ``email``, ``phone`` (any may be
    absent), ``offline``. The email is lower-cased, the phone made E.164."""
    unknown = set(frame) - {"type", "name", "email", "phone", "offline"}
    if unknown:
        raise InvalidPayload(f"unknown field(s) in identify frame: {', '.join(sorted(unknown))}")
    values: dict[str, str | None] = {}
    for key in ("name", "email", "phone"):
        raw = frame.get(key)
        if raw is not None and not isinstance(raw, str):
            raise InvalidField(key, f"{key} must be a string")
        if raw is not None and not is_unicode(raw):
            raise InvalidField(key, f"{key} {NOT_TEXT}")
        values[key] = (raw or "").replace("\x00", "").strip() or None
    name, email, phone = values["name"], values["email"], values["phone"]
    if name is not None:
        # One line: a name goes into mail headers and list rows, where a line
        # break typed into the form field is either refused or breaks the layout.
        # (Format characters stay: the zero-width non-joiner is part of Persian names.)
        name = " ".join("".join(" " if unicodedata.category(c) in _BREAKS else c for c in name).split()) or None
    if name is not None and len(name) > 200:
        raise InvalidField("name", "name is longer than 200 characters")
    if email is not None:
        if len(email) > 320 or not _EMAIL.match(email):
            raise InvalidField("email", f"{email[:80]!r} is not an email address")
        email = email.lower()
    if phone is not None:
        try:
            phone = parse_phone(phone, phone_region)
        except InvalidPhoneNumber as exc:
            raise InvalidField("phone", str(exc)) from exc
    offline = frame.get("offline", False)
    if not isinstance(offline, bool):
        raise InvalidField("offline", "offline must be true or false")
    if offline and email is None and phone is None:
        raise InvalidField("email", "leave an email address or a phone number so we can reply when we are back")
    if name is None and email is None and phone is None:
        raise InvalidPayload("identify frame needs at least one of name, email, phone")
    return VisitorDetails(name=name, email=email, phone=phone, offline=offline)
