"""SMS and MMS over Twilio: inbound webhooks and status callbacks parsed into
core types, outbound through the Messages API with the real ``twilio`` client.

Pure parsing (``parse_inbound``, ``parse_status``, ``classify_keyword``,
``quick_reply_choice``, ``prepare_parts``) takes plain data and returns core
types. :class:`TwilioSmsChannel` sends; every send, an agent's reply or a
campaign's (:meth:`TwilioSmsChannel.send_sms`), first asks the opt-out ledger,
so a customer who texted STOP is never sent to, whoever sends.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal, Protocol

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from channels.base import OPT_OUT_CONFIRMATION, SEND_ATTEMPT, ChannelAdapter, InvalidPayload
from channels.twilio_common import (
    OPT_OUT_CODE,
    FormParams,
    TwilioAccount,
    error_code,
    error_reason,
    field,
    rest_client,
    send_failure,
    sid_field,
    whole_number,
)
from hub.core import (
    Attachment,
    Channel,
    DeliveryReceipt,
    DeliveryStatus,
    InboundMessage,
    OutboundMessage,
    QuickReply,
    SendResult,
)
from hub.text import InvalidPhoneNumber, keyword, parse_phone, sms_segments, split_text

#: Twilio refuses longer bodies (error 21617); longer replies become several messages.
MAX_BODY_CHARS = 1600
#: At most this many quick replies are offered as numbered options (one digit each).
MAX_OPTIONS = 9
MAX_OPTION_TITLE = 100
MAX_MEDIA = 10
#: Twilio's limit on all of one MMS's media together ("under 5 MB"), taken
#: as decimal megabytes so a file near the line is refused here, not there.
MAX_MEDIA_BYTES = 5_000_000

#: A retry looks at this many of Twilio's latest messages to the number for an
#: earlier attempt Twilio took without our hearing back.
RECONCILE_LOOKBACK = 20
#: How far Twilio's clock may be behind ours.
CLOCK_SKEW = timedelta(minutes=2)

Keyword = Literal["stop", "start", "help"]
#: The opt-out keywords Twilio handles (and confirms) itself, Advanced Opt-Out's
#: defaults; the hub's own («لغو», «توقف») it does not know.
TWILIO_STOP_WORDS = frozenset(keyword(w) for w in ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"))
_KEYWORDS: dict[str, Keyword] = {
    **{w: "stop" for w in TWILIO_STOP_WORDS | {keyword("لغو"), keyword("توقف")}},
    **{keyword(w): "start" for w in ("START", "YES", "UNSTOP")},
    **{keyword(w): "help" for w in ("HELP", "INFO")},
}

#: Keywords that are also everyday answers: "Yes" to the bot's "Did this answer
#: your question?". One is taken as a keyword only when it changes something
#: (opts the customer back in).
EVERYDAY_KEYWORDS = frozenset({keyword("YES")})
#: ``extras[KEYWORD_HANDLED]`` of an incoming SMS is true when the hub took it
#: as a compliance keyword (STOP, HELP, START) and did what it says: nobody
#: else (the bot) answers it.
KEYWORD_HANDLED = "keyword_handled"

# MessageStatus (Twilio's message_enum_status) as ours. "accepted" and
# "scheduled" are a Messaging Service's queued; "partially_delivered" did not
# reach the customer whole; "canceled" was never sent.
STATUSES: dict[str, DeliveryStatus] = {
    "accepted": DeliveryStatus.QUEUED,
    "scheduled": DeliveryStatus.QUEUED,
    "queued": DeliveryStatus.QUEUED,
    "sending": DeliveryStatus.SENDING,
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "undelivered": DeliveryStatus.UNDELIVERED,
    "partially_delivered": DeliveryStatus.UNDELIVERED,
    "failed": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}
# Statuses of inbound messages: a status callback never means them.
INBOUND_STATUSES = frozenset({"receiving", "received"})


def _sid(params: FormParams, *names: str) -> str:
    for name in names:
        value = sid_field(params, name)
        if value:
            return value
    raise InvalidPayload(f"parameter {names[0]} is missing; this is not a Twilio messaging webhook")


def classify_keyword(body: str) -> Keyword | None:
    """STOP-family (also «لغو», «توقف»), START-family or HELP-family when the
    whole message is that one word, in any case, with spaces or punctuation
    around it; None for anything else ("stop calling me" is a conversation)."""
    return _KEYWORDS.get(keyword(body))


def is_everyday_answer(body: str) -> bool:
    """True for a keyword that is also an everyday answer ("Yes")."""
    return keyword(body) in EVERYDAY_KEYWORDS


def parse_inbound(params: FormParams, *, inbox: str, default_region: str | None = None) -> InboundMessage:
    """An incoming SMS/MMS webhook as an :class:`InboundMessage`. ``From`` is
    stored as E.164; media items become attachments (Twilio's URLs; the hub
    copies them into its attachment store later)."""
    sid = _sid(params, "MessageSid", "SmsMessageSid", "SmsSid")
    raw_from = field(params, "From", required=True, max_chars=200)
    if ":" in raw_from:
        kind = raw_from.split(":", 1)[0]
        raise InvalidPayload(f"From {raw_from!r} is a {kind} address; this webhook takes SMS/MMS from phone numbers")
    try:
        sender = parse_phone(raw_from, default_region)
    except InvalidPhoneNumber as exc:
        raise InvalidPayload(f"From: {exc}") from exc
    body = field(params, "Body", max_chars=MAX_BODY_CHARS * 4)
    raw_count = params.get("NumMedia") or "0"
    count = whole_number(raw_count, "NumMedia", max_digits=2)
    if count > MAX_MEDIA:
        raise InvalidPayload(f"parameter NumMedia must be a number from 0 to {MAX_MEDIA}, not {raw_count[:20]!r}")
    attachments: list[Attachment] = []
    for i in range(count):
        url = field(params, f"MediaUrl{i}", max_chars=2000)
        if not url.startswith(("https://", "http://")):
            raise InvalidPayload(f"MediaUrl{i} is missing or not an http(s) URL although NumMedia is {raw_count}")
        ctype = (field(params, f"MediaContentType{i}", max_chars=255) or "application/octet-stream").lower()
        ext = mimetypes.guess_extension(ctype.split(";")[0].strip()) or ""
        attachments.append(Attachment(url=url, content_type=ctype, filename=f"media-{i + 1}{ext}"))
    segments = sms_segments(body)
    extras: dict[str, Any] = {
        "segments": segments.segments,
        "encoding": segments.encoding,
        "from": sender,
        "to": field(params, "To", max_chars=200),
    }
    service = params.get("MessagingServiceSid")
    if service:
        extras["messaging_service_sid"] = service
    return InboundMessage(
        channel=Channel.SMS,
        inbox=inbox,
        external_id=sid,
        sender=sender,
        body=body,
        attachments=tuple(attachments),
        extras=extras,
    )


def parse_status(params: FormParams) -> DeliveryReceipt | None:
    """A message status callback as a :class:`DeliveryReceipt`, with a readable
    reason for a failure; None for an inbound message's status (nothing to do)."""
    sid = _sid(params, "MessageSid", "SmsSid")
    raw = (params.get("MessageStatus") or params.get("SmsStatus")).strip().lower()
    if raw in INBOUND_STATUSES:
        return None
    if raw not in STATUSES:
        raise InvalidPayload(f"MessageStatus {raw[:40]!r} is not one of Twilio's: {', '.join(STATUSES)}")
    code = error_code(params.get("ErrorCode"))
    reason: str | None = None
    if code is not None:
        reason = error_reason(code)
    elif raw == "canceled":
        reason = "Twilio: the message was canceled before it was sent"
    elif raw == "partially_delivered":
        reason = "Twilio: only some parts of the message were delivered"
    return DeliveryReceipt(
        channel=Channel.SMS,
        external_id=sid,
        status=STATUSES[raw],
        reason=reason,
        error_code=str(code) if code is not None else None,
    )


# --- quick replies and long bodies ---------------------------------------------


def render_options(quick_replies: Sequence[QuickReply]) -> str:
    """Quick replies as numbered options ("1) Prices"); a reply with the digit
    (ASCII, Persian or Arabic-Indic) chooses it."""
    lines = []
    for i, q in enumerate(quick_replies[:MAX_OPTIONS], 1):
        title = q.title if len(q.title) <= MAX_OPTION_TITLE else q.title[: MAX_OPTION_TITLE - 1] + "…"
        lines.append(f"{i}) {title}")
    return "\n".join(lines)


def retry_since(message: OutboundMessage) -> datetime | None:
    """When a retry's earlier attempts may have reached Twilio: since the
    message was written. None on a first attempt."""
    if int(message.extras.get(SEND_ATTEMPT) or 1) <= 1:
        return None
    created = message.extras.get("created_at")
    try:
        at = datetime.fromisoformat(str(created)) if created else None
    except ValueError:
        return None
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def render_body(body: str, quick_replies: Sequence[QuickReply] = ()) -> str:
    options = render_options(quick_replies)
    if not options:
        return body
    return f"{body}\n\n{options}" if body else options


def prepare_parts(body: str, quick_replies: Sequence[QuickReply] = ()) -> list[tuple[str, dict[str, Any]]]:
    """``body`` cut into parts Twilio accepts (1,600 characters, at paragraph,
    sentence or word breaks), each with the segment count of what will really be
    sent: the quick replies go with the last part, which keeps room for them."""
    parts = split_text(body, MAX_BODY_CHARS)
    if quick_replies and len(render_body(parts[-1], quick_replies)) > MAX_BODY_CHARS:
        room = MAX_BODY_CHARS - len(render_options(quick_replies)) - 2
        parts[-1:] = split_text(parts[-1], room)
    out: list[tuple[str, dict[str, Any]]] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        seg = sms_segments(render_body(part, quick_replies if last else ()))
        extras: dict[str, Any] = {"segments": seg.segments, "encoding": seg.encoding}
        if len(parts) > 1:
            extras.update(part=i + 1, parts=len(parts))
        out.append((part, extras))
    return out


def quick_reply_choice(body: str, offered: Sequence[QuickReply]) -> QuickReply | None:
    """The offered option a reply chooses: its number ("2", "۲", "2)") or its
    exact title; None when the reply is anything else."""
    choice = keyword(body)
    numbered = offered[:MAX_OPTIONS]
    if choice.isdecimal() and 1 <= int(choice) <= len(numbered):
        return numbered[int(choice) - 1]
    return next((q for q in offered if keyword(q.title) == choice and choice), None)


# --- sending --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmsSender:
    """A configured SMS number or Messaging Service and its inbox."""

    inbox: str
    account: TwilioAccount
    number: str | None = None
    messaging_service_sid: str | None = None
    messages_per_second: float = 1.0

    @property
    def key(self) -> str:
        """The sender as the customer sees it; opt-outs are kept per key."""
        return self.messaging_service_sid or self.number or ""


class OptOutLedger(Protocol):
    """Who must not be sent SMS from which sender (the hub keeps it in the database)."""

    async def opted_out(self, phone: str, sender: str) -> str | None:
        """Why ``phone`` may not be sent to from ``sender``, or None if it may."""

    async def record_opt_out(self, phone: str, sender: str, source: str) -> None:
        """``phone`` opted out of ``sender`` (Twilio said so with error 21610)."""


#: Which of these Twilio SIDs already belong to a send of ours: SID -> the id
#: of the message that has it (None: a campaign's send).
SidOwners = Callable[[Collection[str]], Awaitable[Mapping[str, int | None]]]


class TwilioSmsChannel(ChannelAdapter):
    channel: ClassVar[Channel] = Channel.SMS
    max_body_chars: ClassVar[int | None] = MAX_BODY_CHARS
    # A long code sends one message per second; Twilio queues the rest itself.
    rate_per_second: ClassVar[float | None] = 1.0
    supports_attachments: ClassVar[bool] = True

    def __init__(
        self,
        senders: Sequence[SmsSender],
        ledger: OptOutLedger,
        *,
        api_base_url: str,
        public_url: str | None,
        timeout: float = 15.0,
        known_sids: SidOwners | None = None,
    ) -> None:
        self.senders = {s.inbox: s for s in senders}
        self.ledger = ledger
        #: Which of these Twilio SIDs already belong to a send of ours, and to
        #: which message (the hub asks its database): a retry never takes
        #: another message's SID for its own, and knows its own (a status
        #: callback may have recorded it before the send's answer came).
        self.known_sids = known_sids
        self.api_base_url = api_base_url
        # None: the hub has no public address Twilio could reach (no callbacks, no media).
        self.public_url = public_url.rstrip("/") if public_url else None
        self.timeout = timeout
        self._http: AsyncTwilioHttpClient | None = None
        self._clients: dict[TwilioAccount, Client] = {}

    def sender_by_key(self, key: str) -> SmsSender | None:
        return next((s for s in self.senders.values() if s.key == key), None)

    def client(self, account: TwilioAccount) -> Client:
        if self._http is None:
            # Created on first use, inside the running loop its session belongs to.
            self._http = AsyncTwilioHttpClient(timeout=self.timeout)
        if account not in self._clients:
            self._clients[account] = rest_client(account, self.api_base_url, self._http)
        return self._clients[account]

    def status_callback(self, message_id: int | None = None) -> str | None:
        """Where Twilio reports this message's status. Our message id travels in
        the (signed) URL, so a receipt finds its message even when it overtakes
        the sender's own record of the Twilio SID."""
        if self.public_url is None:
            return None
        url = f"{self.public_url}/webhooks/twilio/sms/status"
        return f"{url}?message={message_id}" if message_id is not None else url

    def _absolute(self, url: str) -> str:
        if url.startswith("/") and self.public_url:
            return self.public_url + url
        return url

    def media_problem(self, attachments: Sequence[Attachment]) -> str | None:
        """Why Twilio cannot send ``attachments`` as one MMS, or None when it can."""
        if not attachments:
            return None
        if self.public_url is None and any(a.url.startswith("/") for a in attachments):
            return (
                "files cannot go out by SMS here: Twilio fetches MMS media from the hub's public address, "
                "and server.public_url is not set"
            )
        if len(attachments) > MAX_MEDIA:
            return f"an MMS takes at most {MAX_MEDIA} files, not {len(attachments)}"
        total = sum(a.size or 0 for a in attachments)
        if total > MAX_MEDIA_BYTES:
            return f"the files come to {total} bytes; an MMS takes at most {MAX_MEDIA_BYTES} bytes (5 MB) in all"
        return None

    def media_urls(self, message: OutboundMessage) -> list[str]:
        """Where Twilio fetches the message's attachments to send them as MMS."""
        return [self._absolute(a.url) for a in message.attachments]

    async def send(self, message: OutboundMessage) -> SendResult:
        sender = self.senders.get(message.inbox)
        if sender is None:
            return SendResult(
                status=DeliveryStatus.FAILED,
                reason=f"no Twilio number or Messaging Service is configured for inbox {message.inbox!r}",
            )
        problem = self.media_problem(message.attachments)
        if problem is not None:
            # Twilio would refuse it the same way on every attempt.
            return SendResult(status=DeliveryStatus.FAILED, reason=problem)
        return await self.send_sms(
            sender,
            message.recipient,
            render_body(message.body, message.quick_replies),
            media_urls=self.media_urls(message),
            status_callback=self.status_callback(message.message_id),
            taken_since=retry_since(message),
            message_id=message.message_id,
            confirms_opt_out=message.extras.get(OPT_OUT_CONFIRMATION) is True,
        )

    async def send_sms(
        self,
        sender: SmsSender,
        to: str,
        body: str,
        *,
        media_urls: Sequence[str] = (),
        status_callback: str | None = None,
        taken_since: datetime | None = None,
        message_id: int | None = None,
        confirms_opt_out: bool = False,
    ) -> SendResult:
        """One message through the Messages API: refused before Twilio when the
        number opted out of this sender; Twilio's errors as statuses with their
        reason (21610 also writes the opt-out to the ledger). With
        ``taken_since`` (a retry), Twilio is first asked whether it already took
        this message since then: if so, that one is the send. ``message_id``
        is the hub's message being sent (None: not a ticket message);
        ``confirms_opt_out``: it tells ``to`` their opt-out took effect, so
        the ledger's refusal does not apply to it."""
        refusal = await self.ledger.opted_out(to, sender.key)
        if refusal is not None and not confirms_opt_out:
            return SendResult(status=DeliveryStatus.FAILED, reason=refusal)
        if len(body) > MAX_BODY_CHARS:
            return SendResult(
                status=DeliveryStatus.FAILED,
                reason=f"the body has {len(body)} characters; Twilio takes at most {MAX_BODY_CHARS} per message",
            )
        if taken_since is not None:
            earlier = await self.taken_earlier(sender, to, body, taken_since, message_id=message_id)
            if earlier is not None:
                return earlier
        kwargs: dict[str, Any] = {"to": to, "body": body}
        if sender.messaging_service_sid:
            kwargs["messaging_service_sid"] = sender.messaging_service_sid
        else:
            kwargs["from_"] = sender.number
        if media_urls:
            kwargs["media_url"] = list(media_urls)
        if status_callback:
            kwargs["status_callback"] = status_callback
        try:
            async with asyncio.timeout(self.timeout):
                created = await self.client(sender.account).messages.create_async(**kwargs)
        except (TwilioRestException, TwilioServiceException) as exc:
            result = send_failure(exc, self.timeout)
            if result.extras.get("error_code") == OPT_OUT_CODE:
                await self.ledger.record_opt_out(to, sender.key, f"Twilio error {OPT_OUT_CODE}")
            return result
        except (TimeoutError, OSError, aiohttp.ClientError, ValueError) as exc:
            # Network trouble, a timeout, an answer that is not Twilio's JSON.
            return send_failure(exc, self.timeout)
        seg = sms_segments(body)
        return SendResult(
            status=DeliveryStatus.SENT,
            external_id=created.sid,
            extras={"segments": seg.segments, "encoding": seg.encoding, "twilio_status": created.status},
        )

    async def taken_earlier(
        self, sender: SmsSender, to: str, body: str, since: datetime, *, message_id: int | None = None
    ) -> SendResult | None:
        """What became of an earlier attempt to send ``body`` to ``to``: Twilio
        lists the number's latest messages from this sender; one with the same
        body, created since ``since`` and not already another message of ours,
        is that attempt (``sent``, its SID). One that message ``message_id``
        itself already has (a "queued" status callback recorded it while the
        send got no answer) is that attempt for certain. None: Twilio has none,
        send again. A lookup that fails is a retryable failure: sending blind
        could send twice."""
        filters: dict[str, Any] = {"to": to, "limit": RECONCILE_LOOKBACK}
        if not sender.messaging_service_sid:
            filters["from_"] = sender.number
        try:
            async with asyncio.timeout(self.timeout):
                listed = await self.client(sender.account).messages.list_async(**filters)
        except (TwilioException, TimeoutError, OSError, aiohttp.ClientError, ValueError) as exc:
            # A page the client cannot read raises a bare TwilioException holding the response.
            detail = str(exc) if type(exc) is TwilioException else send_failure(exc, self.timeout).reason
            return SendResult(
                status=DeliveryStatus.FAILED,
                reason="an earlier attempt got no answer and Twilio could not be asked whether it went "
                f"through, so it was not sent again yet: {detail}",
                retryable=True,
            )
        candidates = [
            m
            for m in listed
            if m.body == body
            and m.date_created is not None
            and m.date_created >= since - CLOCK_SKEW
            and (not sender.messaging_service_sid or m.messaging_service_sid == sender.messaging_service_sid)
            and m.status not in ("failed", "canceled")
            and m.sid
        ]
        owners = await self.known_sids([str(m.sid) for m in candidates]) if self.known_sids and candidates else {}
        # Only another message's SID is not ours to take: the message being
        # sent may already hold the SID of its own earlier attempt.
        ours = [m for m in candidates if message_id is not None and owners.get(str(m.sid), -1) == message_id]
        taken = ours or [m for m in candidates if str(m.sid) not in owners]
        if not taken:
            return None
        # Twilio lists the latest first: the oldest unclaimed one is the earliest attempt.
        found = taken[-1]
        seg = sms_segments(body)
        return SendResult(
            status=DeliveryStatus.SENT,
            external_id=found.sid,
            reason="an earlier attempt got no answer, but Twilio had taken it: not sent again",
            extras={"segments": seg.segments, "encoding": seg.encoding, "twilio_status": found.status},
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._clients.clear()
