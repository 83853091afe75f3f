"""Signed Twilio webhooks with odd values: a clear 400 naming the field, never a
500, and nothing stored. ``str.isdigit`` takes "²" (``int`` refuses it) and
any number of digits (the database refuses those); ``$`` in a pattern
matches before a final newline, which would make "SM...\\n" a second id."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy import func, select

from storage.models import Message
from tests.fakes.twilio import sign
from tests.hub.twilio_helpers import ACCOUNT, CUSTOMER, NUMBER, TOKEN, TwilioHub, twilio_hub

HUGE = "9" * 30


def new_sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


async def post(t: TwilioHub, path: str, params: dict[str, str]) -> tuple[int, str]:
    url = t.url(path)
    async with t.http.post(url, data=params, headers={"X-Twilio-Signature": sign(TOKEN, url, params)}) as r:
        return r.status, await r.text()


def sms(**change: str) -> dict[str, str]:
    return {
        "MessageSid": new_sid(),
        "AccountSid": ACCOUNT,
        "From": CUSTOMER,
        "To": NUMBER,
        "Body": "hi",
        "NumMedia": "0",
        **change,
    }


def call(**change: str) -> dict[str, str]:
    return {
        "CallSid": new_sid("CA"),
        "AccountSid": ACCOUNT,
        "From": CUSTOMER,
        "To": NUMBER,
        "CallStatus": "in-progress",
        "Direction": "inbound",
        **change,
    }


def status(**change: str) -> dict[str, str]:
    return {
        "MessageSid": new_sid(),
        "AccountSid": ACCOUNT,
        "From": NUMBER,
        "To": CUSTOMER,
        "MessageStatus": "sent",
        **change,
    }


CASES = [
    ("/webhooks/twilio/sms", sms(NumMedia="²"), "NumMedia"),
    ("/webhooks/twilio/sms", sms(NumMedia=HUGE), "NumMedia"),
    ("/webhooks/twilio/sms", sms(MessageSid=new_sid() + "\n"), "MessageSid"),
    ("/webhooks/twilio/sms/status?message=%C2%B2", status(), "message"),
    (f"/webhooks/twilio/sms/status?message={HUGE}", status(), "message"),
    # A campaign's recipient id travels the same way and is read the same way.
    (f"/webhooks/twilio/sms/status?campaign_recipient={HUGE}", status(), "campaign_recipient"),
    ("/webhooks/twilio/sms/status?campaign_recipient=%C2%B2", status(), "campaign_recipient"),
    ("/webhooks/twilio/sms/status", status(MessageSid=new_sid() + "\n"), "MessageSid"),
    ("/webhooks/twilio/voice/status", call(CallStatus="completed", CallDuration="--5"), "CallDuration"),
    ("/webhooks/twilio/voice/status", call(CallSid=new_sid("CA") + "\n", CallStatus="completed"), "CallSid"),
    ("/webhooks/twilio/voice/answered?agent=%C2%B2", call(), "agent"),
    (f"/webhooks/twilio/voice/answered?agent={HUGE}", call(), "agent"),
    (f"/webhooks/twilio/voice/connect?ticket={HUGE}&agent=1", call(Direction="outbound-api"), "ticket"),
]


@pytest.mark.parametrize(("path", "params", "field"), CASES, ids=[f"{p} {f}" for p, _, f in CASES])
async def test_odd_values_are_a_400_naming_the_field(
    tmp_path: Path, path: str, params: dict[str, str], field: str
) -> None:
    async with twilio_hub(tmp_path) as t:
        async with t.hub.db.read() as s:
            before = await s.scalar(select(func.count()).select_from(Message))
        got, text = await post(t, path, params)
        assert got == 400, text
        assert field in text
        async with t.hub.db.read() as s:
            assert await s.scalar(select(func.count()).select_from(Message)) == before
