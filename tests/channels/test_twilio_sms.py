"""The SMS adapter: parsing Twilio's parameters, keywords, quick replies, long
bodies, signatures, and sending with the real ``twilio`` client against the
local fake (opt-outs never reach it; Twilio's errors become statuses)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from datetime import UTC, datetime, timedelta

import pytest
from twilio.request_validator import RequestValidator

from channels.base import SEND_ATTEMPT, InvalidPayload
from channels.twilio_common import (
    FormParams,
    TwilioAccount,
    error_reason,
    shared_key_id,
    signature_algorithm,
    verify_signature,
)
from channels.twilio_sms import (
    MAX_BODY_CHARS,
    SmsSender,
    TwilioSmsChannel,
    classify_keyword,
    parse_inbound,
    parse_status,
    prepare_parts,
    quick_reply_choice,
    render_body,
)
from hub.core import Author, Channel, DeliveryStatus, OutboundMessage, QuickReply
from tests.fakes.twilio import FakeTwilio, sign

ACCOUNT = "AC" + "1" * 32
TOKEN = "token-1"
NUMBER = "+15550001111"
CUSTOMER = "+989121234567"


def params(**values: str) -> FormParams:
    return FormParams(values.items())


def inbound(**extra: str) -> FormParams:
    base = {
        "MessageSid": "SM" + "a" * 32,
        "SmsSid": "SM" + "a" * 32,
        "AccountSid": ACCOUNT,
        "From": CUSTOMER,
        "To": NUMBER,
        "Body": "hello",
        "NumMedia": "0",
        "NumSegments": "1",
        "ApiVersion": "2010-04-01",
    }
    base.update(extra)
    return FormParams(base.items())


def test_inbound_sms_becomes_a_message_with_segments() -> None:
    body = "سلام + & = % 😀 are you open?"
    msg = parse_inbound(inbound(Body=body, MediaUrl0=""), inbox="sms")
    assert msg.channel is Channel.SMS
    assert msg.external_id == "SM" + "a" * 32
    assert msg.sender == CUSTOMER
    assert msg.body == body
    assert msg.attachments == ()
    assert msg.extras["encoding"] == "UCS-2"
    assert msg.extras["segments"] == 1
    assert msg.extras["to"] == NUMBER
    assert msg.extras["from"] == CUSTOMER


def test_mms_media_become_attachments() -> None:
    msg = parse_inbound(
        inbound(
            Body="",
            NumMedia="2",
            MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
            MediaContentType0="image/jpeg",
            MediaUrl1="https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME2",
            MediaContentType1="application/pdf",
        ),
        inbox="sms",
    )
    assert [a.content_type for a in msg.attachments] == ["image/jpeg", "application/pdf"]
    assert msg.attachments[0].filename == "media-1.jpg"
    assert msg.attachments[1].url.endswith("/ME2")


def test_local_numbers_are_read_in_the_default_region() -> None:
    msg = parse_inbound(inbound(From="۰۹۱۲ ۱۲۳ ۴۵۶۷"), inbox="sms", default_region="IR")
    assert msg.sender == CUSTOMER


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"MessageSid": "", "SmsSid": ""}, "MessageSid"),
        ({"MessageSid": "not-a-sid"}, "not a Twilio SID"),
        ({"From": "whatsapp:+15551234567"}, "whatsapp address"),
        ({"From": "12"}, "From"),
        ({"NumMedia": "x"}, "NumMedia"),
        ({"NumMedia": "1"}, "MediaUrl0"),
        # str.isdigit takes these; int() refuses the first and reads the second.
        ({"NumMedia": "²"}, "NumMedia"),
        ({"NumMedia": "٣"}, "NumMedia"),
        ({"NumMedia": "11"}, "NumMedia"),
        ({"NumMedia": "9" * 30}, "NumMedia"),
        # "$" matches before a final newline: this would be another id.
        ({"MessageSid": "SM" + "a" * 32 + "\n"}, "not a Twilio SID"),
    ],
)
def test_bad_inbound_parameters_are_named(change: dict[str, str], needle: str) -> None:
    with pytest.raises(InvalidPayload, match=needle):
        parse_inbound(inbound(**change), inbox="sms")


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("STOP", "stop"),
        ("  stop  ", "stop"),
        ("Stop.", "stop"),
        ("StopAll", "stop"),
        ("unsubscribe", "stop"),
        ("CANCEL", "stop"),
        ("end", "stop"),
        ("Quit!", "stop"),
        ("لغو", "stop"),
        (" توقف ", "stop"),
        # Emoji with a variation selector (U+FE0F) or a ZWJ sequence after the word.
        ("stop ❤️", "stop"),
        ("STOP ☺️", "stop"),
        ("Stop ✋️", "stop"),
        ("لغو ❤️", "stop"),
        ("STOP 🤷‍♀️", "stop"),
        ("START", "start"),
        ("yes", "start"),
        ("Unstop", "start"),
        ("HELP", "help"),
        ("info?", "help"),
        ("please stop calling", None),
        ("stopped", None),
        ("", None),
    ],
)
def test_keywords(text: str, kind: str | None) -> None:
    assert classify_keyword(text) == kind


def test_status_callbacks_become_receipts_with_readable_reasons() -> None:
    sid = "SM" + "b" * 32
    delivered = parse_status(params(MessageSid=sid, MessageStatus="delivered"))
    assert delivered is not None
    assert (delivered.status, delivered.reason) == (DeliveryStatus.DELIVERED, None)
    failed = parse_status(params(MessageSid=sid, MessageStatus="undelivered", ErrorCode="30003"))
    assert failed is not None
    assert failed.status is DeliveryStatus.UNDELIVERED
    assert failed.error_code == "30003"
    assert failed.reason == "Twilio error 30003: the customer's phone is unreachable (switched off or out of coverage)"
    assert parse_status(params(MessageSid=sid, MessageStatus="accepted")).status is DeliveryStatus.QUEUED  # type: ignore[union-attr]
    assert parse_status(params(MessageSid=sid, SmsStatus="received")) is None
    with pytest.raises(InvalidPayload, match="MessageStatus"):
        parse_status(params(MessageSid=sid, MessageStatus="exploded"))
    with pytest.raises(InvalidPayload, match="not a Twilio SID"):
        parse_status(params(MessageSid=sid + "\n", MessageStatus="delivered"))
    assert "99999" in error_reason("99999", "something new")


def test_quick_replies_are_numbered_and_mapped_back() -> None:
    offered = [QuickReply(id="hours", title="Opening hours"), QuickReply(id="price", title="Prices")]
    assert render_body("Did you mean:", offered) == "Did you mean:\n\n1) Opening hours\n2) Prices"
    assert quick_reply_choice("2", offered) == offered[1]
    assert quick_reply_choice(" ۲ ", offered) == offered[1]
    assert quick_reply_choice("١", offered) == offered[0]
    assert quick_reply_choice("1)", offered) == offered[0]
    assert quick_reply_choice("prices", offered) == offered[1]
    assert quick_reply_choice("3", offered) is None
    assert quick_reply_choice("12", offered) is None


def test_long_bodies_are_split_and_segments_counted() -> None:
    sentence = "This is a long answer about our prices and delivery. "
    body = sentence * 70  # ~3,700 characters
    parts = prepare_parts(body, [QuickReply(id="a", title="Yes")])
    assert len(parts) == 3
    assert all(len(render_body(text)) <= MAX_BODY_CHARS for text, _ in parts)
    assert len(render_body(parts[-1][0], [QuickReply(id="a", title="Yes")])) <= MAX_BODY_CHARS
    assert " ".join(t for t, _ in parts).split() == body.split()
    assert [e["part"] for _, e in parts] == [1, 2, 3]
    assert all(e["encoding"] == "GSM-7" for _, e in parts)
    assert parts[0][1]["segments"] == 11  # 1,6xx septets at 153 per part
    persian = prepare_parts("سلام، سفارش شما فردا ارسال می‌شود.")
    assert persian == [("سلام، سفارش شما فردا ارسال می‌شود.", {"segments": 1, "encoding": "UCS-2"})]
    assert prepare_parts("x" * 71 + "€")[0][1] == {"segments": 1, "encoding": "GSM-7"}
    assert prepare_parts("ی" * 71)[0][1] == {"segments": 2, "encoding": "UCS-2"}


def test_signature_is_checked_with_twilios_validator() -> None:
    url = "https://hub.example.com/webhooks/twilio/sms?x=1"
    form = {"From": CUSTOMER, "Body": "a & b = c"}
    good = sign(TOKEN, url, form)
    p = FormParams(form.items())
    assert verify_signature(TOKEN, [url], p, good)
    assert verify_signature(TOKEN, ["https://hub.example.com:443/webhooks/twilio/sms?x=1"], p, good)
    assert not verify_signature("other-token", [url], p, good)
    assert not verify_signature(TOKEN, ["https://evil.example.com/webhooks/twilio/sms?x=1"], p, good)
    assert not verify_signature(TOKEN, [url], FormParams({**form, "Body": "changed"}.items()), good)
    assert not verify_signature(TOKEN, [url], p, None)
    # A parameter Twilio added without notice is part of what is signed.
    extra = {**form, "NewParam": "1"}
    assert verify_signature(TOKEN, [url], FormParams(extra.items()), sign(TOKEN, url, extra))


def test_a_sharedkey_signature_is_checked_with_the_keys_secret() -> None:
    url = "https://hub.example.com/webhooks/twilio/sms"
    form = {"From": CUSTOMER, "Body": "hello"}
    p = FormParams(form.items())
    settings = "key=webhooks_sharedkey_abc,algorithm=HMAC_SHA256"
    signed = RequestValidator("shared-secret").compute_signature(url, form, "HMAC_SHA256")
    assert shared_key_id(settings) == "webhooks_sharedkey_abc"
    assert shared_key_id("algorithm=HMAC_SHA256") is None
    assert shared_key_id(None) is None
    assert signature_algorithm(settings) == "HMAC_SHA256"
    assert signature_algorithm(None) == "HMAC_SHA1"
    with pytest.raises(InvalidPayload, match="HMAC_SHA512"):
        signature_algorithm("key=k,algorithm=HMAC_SHA512")
    assert verify_signature("shared-secret", [url], p, signed, settings)
    assert not verify_signature(TOKEN, [url], p, signed, settings)
    # The same secret with the other algorithm is another signature.
    assert not verify_signature("shared-secret", [url], p, signed, "key=webhooks_sharedkey_abc")


# --- sending against the fake --------------------------------------------------------------


class MemoryLedger:
    def __init__(self) -> None:
        self.out: dict[tuple[str, str], str] = {}

    async def opted_out(self, phone: str, sender: str) -> str | None:
        source = self.out.get((phone, sender))
        return f"{phone} opted out ({source})" if source else None

    async def record_opt_out(self, phone: str, sender: str, source: str) -> None:
        self.out[(phone, sender)] = source


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as server:
        yield server


def outbound(body: str = "Hi!", inbox: str = "sms", quick_replies: tuple[QuickReply, ...] = ()) -> OutboundMessage:
    return OutboundMessage(
        message_id=7,
        ticket_id=1,
        channel=Channel.SMS,
        inbox=inbox,
        recipient=CUSTOMER,
        body=body,
        author=Author.AGENT,
        quick_replies=quick_replies,
    )


async def test_send_reaches_twilio_with_a_status_callback(fake: FakeTwilio) -> None:
    ledger = MemoryLedger()
    sender = SmsSender(inbox="sms", account=TwilioAccount(ACCOUNT, TOKEN), number=NUMBER)
    chan = TwilioSmsChannel([sender], ledger, api_base_url=fake.base_url, public_url="https://hub.example.com/")
    try:
        result = await chan.send(outbound(quick_replies=(QuickReply(id="a", title="Yes"),)))
        assert result.status is DeliveryStatus.SENT
        assert result.external_id == fake.messages[0]["sid"]
        (req,) = fake.requests
        assert req.path == f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
        assert req.one("To") == CUSTOMER
        assert req.one("From") == NUMBER
        assert req.one("Body") == "Hi!\n\n1) Yes"
        assert req.one("StatusCallback") == "https://hub.example.com/webhooks/twilio/sms/status?message=7"
        missing = await chan.send(outbound(inbox="nowhere"))
        assert missing.status is DeliveryStatus.FAILED
        assert "inbox 'nowhere'" in (missing.reason or "")
    finally:
        await chan.close()


async def test_messaging_service_sends_without_from(fake: FakeTwilio) -> None:
    service = "MG" + "c" * 32
    sender = SmsSender(inbox="pool", account=TwilioAccount(ACCOUNT, TOKEN), messaging_service_sid=service)
    chan = TwilioSmsChannel([sender], MemoryLedger(), api_base_url=fake.base_url, public_url=None)
    try:
        result = await chan.send(outbound(inbox="pool"))
        assert result.status is DeliveryStatus.SENT
        (req,) = fake.requests
        assert (req.one("MessagingServiceSid"), req.one("From"), req.one("StatusCallback")) == (service, None, None)
    finally:
        await chan.close()


async def test_opted_out_numbers_never_reach_twilio_and_21610_is_recorded(fake: FakeTwilio) -> None:
    ledger = MemoryLedger()
    sender = SmsSender(inbox="sms", account=TwilioAccount(ACCOUNT, TOKEN), number=NUMBER)
    chan = TwilioSmsChannel([sender], ledger, api_base_url=fake.base_url, public_url=None)
    try:
        fake.opt_out(CUSTOMER, NUMBER)  # Twilio knows, the hub does not yet
        first = await chan.send(outbound())
        assert first.status is DeliveryStatus.FAILED
        assert not first.retryable
        assert first.reason is not None
        assert first.reason.startswith("Twilio error 21610: the customer replied STOP")
        assert ledger.out == {(CUSTOMER, NUMBER): "Twilio error 21610"}
        assert len(fake.requests) == 1
        second = await chan.send(outbound())
        assert second.status is DeliveryStatus.FAILED
        assert "opted out" in (second.reason or "")
        assert len(fake.requests) == 1  # refused before Twilio
    finally:
        await chan.close()


async def test_twilio_errors_become_statuses(fake: FakeTwilio) -> None:
    sender = SmsSender(inbox="sms", account=TwilioAccount(ACCOUNT, TOKEN), number=NUMBER)
    chan = TwilioSmsChannel([sender], MemoryLedger(), api_base_url=fake.base_url, public_url=None)
    wrong = SmsSender(inbox="x", account=TwilioAccount(ACCOUNT, "wrong"), number=NUMBER)
    try:
        fake.fail_next(429, 20429)
        limited = await chan.send(outbound())
        assert (limited.status, limited.retryable) == (DeliveryStatus.FAILED, True)
        assert "Twilio error 20429" in (limited.reason or "")
        fake.fail_next(500, 20500)
        assert (await chan.send(outbound())).retryable
        bad = await chan.send(outbound(body="x").model_copy(update={"recipient": "12"}))
        assert (bad.status, bad.retryable) == (DeliveryStatus.FAILED, False)
        assert "not a valid phone number" in (bad.reason or "")
        denied = await chan.send_sms(wrong, CUSTOMER, "hi")
        assert "credentials" in (denied.reason or "")
        too_long = await chan.send_sms(sender, CUSTOMER, "x" * 1601)
        assert "1600" in (too_long.reason or "")
    finally:
        await chan.close()


def retry_of(message: OutboundMessage, since: datetime) -> OutboundMessage:
    return message.model_copy(update={"extras": {SEND_ATTEMPT: 2, "created_at": since.isoformat()}})


async def test_a_retry_after_no_answer_does_not_send_twice(fake: FakeTwilio) -> None:
    sender = SmsSender(inbox="sms", account=TwilioAccount(ACCOUNT, TOKEN), number=NUMBER)
    claimed: set[str] = set()

    async def known(sids: Collection[str]) -> Mapping[str, int | None]:
        return {sid: 99 for sid in claimed & set(sids)}  # another message's

    chan = TwilioSmsChannel(
        [sender], MemoryLedger(), api_base_url=fake.base_url, public_url=None, timeout=0.3, known_sids=known
    )
    since = datetime.now(UTC)
    try:
        # Twilio takes the message but answers after the client stopped waiting.
        fake.stall_next(1.0)
        first = await chan.send(outbound("See you at 5"))
        assert (first.status, first.retryable) == (DeliveryStatus.FAILED, True)
        assert "did not answer" in (first.reason or "")
        assert len(fake.messages) == 1
        # The retry asks Twilio first and takes that message for its own.
        again = await chan.send(retry_of(outbound("See you at 5"), since))
        assert again.status is DeliveryStatus.SENT
        assert again.external_id == fake.messages[0]["sid"]
        assert "not sent again" in (again.reason or "")
        assert len(fake.messages) == 1
        lookup = fake.requests[-1]
        assert lookup.method == "GET" and lookup.path.endswith("/Messages.json")
        # A message of ours already owns that SID: another reply with the same
        # words is a new message, not that one.
        claimed.add(str(fake.messages[0]["sid"]))
        other = await chan.send(retry_of(outbound("See you at 5"), since))
        assert other.status is DeliveryStatus.SENT and other.external_id != fake.messages[0]["sid"]
        assert len(fake.messages) == 2
        # Different words, or an earlier send than this message: not it either.
        claimed.clear()
        fresh = await chan.send(retry_of(outbound("Anything else?"), since))
        assert fresh.status is DeliveryStatus.SENT and len(fake.messages) == 3
        later = await chan.send(retry_of(outbound("See you at 5"), datetime.now(UTC) + timedelta(minutes=5)))
        assert later.status is DeliveryStatus.SENT and len(fake.messages) == 4
        # When Twilio cannot be asked, nothing is sent blind.
        fake.failing_lookups = 1
        unsure = await chan.send(retry_of(outbound("One more"), since))
        assert (unsure.status, unsure.retryable) == (DeliveryStatus.FAILED, True)
        assert "could not be asked" in (unsure.reason or "")
        assert len(fake.messages) == 4
        # A first attempt never asks.
        before = len(fake.requests)
        await chan.send(outbound("First try"))
        assert [r.method for r in fake.requests[before:]] == ["POST"]
    finally:
        await chan.close()


async def test_a_retry_takes_the_sid_a_status_callback_already_gave_its_own_message(fake: FakeTwilio) -> None:
    """Twilio's "queued" callback reached the hub while the send itself got no
    answer: the message holds the SID already. The retry is that send, not a
    new one, and never another message's."""
    sender = SmsSender(inbox="sms", account=TwilioAccount(ACCOUNT, TOKEN), number=NUMBER)
    owners: dict[str, int | None] = {}

    async def known(sids: Collection[str]) -> Mapping[str, int | None]:
        return {sid: owners[sid] for sid in sids if sid in owners}

    chan = TwilioSmsChannel(
        [sender], MemoryLedger(), api_base_url=fake.base_url, public_url=None, timeout=0.3, known_sids=known
    )
    since = datetime.now(UTC)
    try:
        fake.stall_next(1.0)
        assert (await chan.send(outbound("Only once"))).retryable
        (taken,) = fake.messages
        owners[str(taken["sid"])] = 7  # outbound()'s message id: the callback recorded it
        again = await chan.send(retry_of(outbound("Only once"), since))
        assert (again.status, again.external_id) == (DeliveryStatus.SENT, taken["sid"])
        assert "not sent again" in (again.reason or "")
        assert len(fake.messages) == 1
        # Of two attempts Twilio took, the one the message already holds is its send.
        fake.stall_next(1.0)
        assert (await chan.send(outbound("Only once"))).retryable
        newer = fake.messages[-1]
        owners.clear()
        owners[str(newer["sid"])] = 7
        mine = await chan.send(retry_of(outbound("Only once"), since))
        assert mine.external_id == newer["sid"]
        # The same SID held by another message (or a campaign's send) is not ours.
        owners[str(newer["sid"])] = 8
        owners[str(taken["sid"])] = None
        other = await chan.send(retry_of(outbound("Only once"), since))
        assert other.status is DeliveryStatus.SENT and other.external_id not in (taken["sid"], newer["sid"])
        assert len(fake.messages) == 3
    finally:
        await chan.close()


async def test_a_retry_through_a_messaging_service_matches_its_service(fake: FakeTwilio) -> None:
    service = "MG" + "c" * 32
    pool = SmsSender(inbox="pool", account=TwilioAccount(ACCOUNT, TOKEN), messaging_service_sid=service)
    direct = SmsSender(inbox="sms", account=TwilioAccount(ACCOUNT, TOKEN), number=NUMBER)
    chan = TwilioSmsChannel([pool, direct], MemoryLedger(), api_base_url=fake.base_url, public_url=None, timeout=0.3)
    since = datetime.now(UTC)
    try:
        assert (await chan.send(outbound("Same words"))).status is DeliveryStatus.SENT  # from the number
        fake.stall_next(1.0)
        assert (await chan.send(outbound("Same words", inbox="pool"))).retryable
        retry = await chan.send(retry_of(outbound("Same words", inbox="pool"), since))
        assert retry.status is DeliveryStatus.SENT
        assert retry.external_id == fake.messages[1]["sid"]
        assert len(fake.messages) == 2
    finally:
        await chan.close()


async def test_unreachable_twilio_is_retryable() -> None:
    sender = SmsSender(inbox="sms", account=TwilioAccount(ACCOUNT, TOKEN), number=NUMBER)
    chan = TwilioSmsChannel([sender], MemoryLedger(), api_base_url="http://127.0.0.1:9", public_url=None)
    try:
        result = await chan.send(outbound())
        assert (result.status, result.retryable) == (DeliveryStatus.FAILED, True)
        assert "could not be reached" in (result.reason or "")
    finally:
        await chan.close()
