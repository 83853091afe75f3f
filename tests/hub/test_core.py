"""The core types every channel produces and consumes: unknown fields and
naive timestamps are refused, timestamps become UTC, sizes stay within what
a browser reads exactly, and delivery statuses never move backwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from hub.core import (
    Attachment,
    Channel,
    DeliveryReceipt,
    DeliveryStatus,
    InboundMessage,
    status_advances,
)

TEHRAN = timezone(timedelta(hours=3, minutes=30))


def inbound(**extra: object) -> InboundMessage:
    values: dict[str, object] = {
        "channel": Channel.SMS,
        "inbox": "sms",
        "external_id": "SM1",
        "sender": "+15550001111",
        "body": "hi",
    }
    values.update(extra)
    return InboundMessage.model_validate(values)


def test_unknown_fields_are_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="bodyy"):
        inbound(bodyy="typo")
    with pytest.raises(ValidationError, match="bytes"):
        Attachment.model_validate({"url": "https://x/1.png", "bytes": 3})


def test_timestamps_must_carry_a_zone_and_become_utc() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        DeliveryReceipt(channel=Channel.SMS, external_id="SM1", status=DeliveryStatus.SENT, at=datetime(2026, 1, 1))
    at = DeliveryReceipt(
        channel=Channel.SMS,
        external_id="SM1",
        status=DeliveryStatus.SENT,
        at=datetime(2026, 1, 1, 3, 30, tzinfo=TEHRAN),
    ).at
    assert at == datetime(2026, 1, 1, tzinfo=UTC) and at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "at",
    [
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=5))),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
    ],
)
def test_a_timestamp_outside_the_calendar_in_utc_is_a_validation_error(at: datetime) -> None:
    # Not an OverflowError, which pydantic lets through (the API's 500).
    with pytest.raises(ValidationError, match="out of range") as refused:
        DeliveryReceipt(channel=Channel.SMS, external_id="SM1", status=DeliveryStatus.SENT, at=at)
    assert refused.value.errors()[0]["loc"] == ("at",)


def test_attachment_size_stays_a_number_a_browser_reads_exactly() -> None:
    assert Attachment(url="https://x/1.png", size=2**53 - 1).size == 2**53 - 1
    for bad in (-1, 2**53, 2**64):
        with pytest.raises(ValidationError, match="size"):
            Attachment(url="https://x/1.png", size=bad)


def test_a_status_only_moves_forward() -> None:
    assert status_advances(DeliveryStatus.SENT, DeliveryStatus.DELIVERED)
    assert not status_advances(DeliveryStatus.DELIVERED, DeliveryStatus.SENT)
    assert status_advances(DeliveryStatus.SENT, DeliveryStatus.FAILED)
    assert not status_advances(DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)


def test_a_nul_in_what_a_customer_sent_is_dropped() -> None:
    """PostgreSQL refuses it in text; no customer means it."""
    m = InboundMessage(
        channel=Channel.WEBCHAT, inbox="webchat", external_id="v:1", sender="v", body="a\x00b", subject="s\x00"
    )
    assert (m.body, m.subject) == ("ab", "s")


def test_a_nul_anywhere_in_an_inbound_message_is_dropped() -> None:
    m = InboundMessage(
        channel=Channel.TELEGRAM,
        inbox="tg\x00",
        external_id="u\x00:1",
        sender="4\x002",
        sender_name="A\x00nn",
        quick_reply="q\x001",
        attachments=(Attachment(url="https://x.test/a\x00", filename="a\x00.pdf", content_type="text/\x00plain"),),
        extras={"from\x00": {"name": ["S\x00ara", 1, None]}, "n": 2},
    )
    assert (m.inbox, m.external_id, m.sender, m.sender_name, m.quick_reply) == ("tg", "u:1", "42", "Ann", "q1")
    assert m.attachments[0].model_dump(include={"url", "filename", "content_type"}) == {
        "url": "https://x.test/a",
        "filename": "a.pdf",
        "content_type": "text/plain",
    }
    assert m.extras == {"from": {"name": ["Sara", 1, None]}, "n": 2}
    with pytest.raises(ValidationError, match="external_id"):  # nothing but NUL: missing
        InboundMessage(channel=Channel.WEBCHAT, inbox="w", external_id="\x00", sender="v")
