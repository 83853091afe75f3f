"""Webhooks signed with a SharedKey (X-Twilio-Webhooks-Signature-Settings:
``key=<id>,algorithm=HMAC_SHA256``) are checked with that key's secret, from
the environment variable ``twilio.shared_keys`` names, for the account it is
configured for; a key the hub does not have is a 403 that names it."""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from storage.models import Message
from tests.fakes.twilio import sign
from tests.hub.twilio_helpers import (
    ACCOUNT,
    CUSTOMER,
    NUMBER,
    SUB_ACCOUNT,
    SUB_TOKEN,
    TOKEN,
    TwilioHub,
    twilio_hub,
)

KEY_ID = "webhooks_sharedkey_abc"
SECRET = "shared-key-secret-from-twilio"
SUB_KEY_ID = "webhooks_sharedkey_sub"


def settings(key: str = KEY_ID, algorithm: str = "HMAC_SHA256") -> str:
    return f"key={key},algorithm={algorithm}"


def sms() -> dict[str, str]:
    return {
        "MessageSid": "SM" + secrets.token_hex(16),
        "AccountSid": ACCOUNT,
        "From": CUSTOMER,
        "To": NUMBER,
        "Body": "hello",
        "NumMedia": "0",
    }


async def post(t: TwilioHub, params: dict[str, str], signature: str, header: str | None) -> tuple[int, str]:
    headers = {"X-Twilio-Signature": signature}
    if header is not None:
        headers["X-Twilio-Webhooks-Signature-Settings"] = header
    async with t.http.post(t.url("/webhooks/twilio/sms"), data=params, headers=headers) as r:
        return r.status, await r.text()


async def stored(t: TwilioHub) -> int:
    async with t.hub.db.read() as s:
        return int(await s.scalar(select(func.count()).select_from(Message).where(Message.direction == "in")) or 0)


async def test_a_sharedkey_signed_webhook_is_checked_with_the_keys_secret(tmp_path: Path) -> None:
    env = {
        "TWILIO_WEBHOOK_KEY": SECRET,
        "TWILIO_SUB_SID": SUB_ACCOUNT,
        "TWILIO_SUB_TOKEN": SUB_TOKEN,
        "TWILIO_SUB_KEY": "sub-secret",
    }
    keys = [
        {"id": KEY_ID, "secret_env": "TWILIO_WEBHOOK_KEY"},
        # Another account's key: it signs nothing of the main account's.
        {"id": SUB_KEY_ID, "secret_env": "TWILIO_SUB_KEY", "account_sid_env": "TWILIO_SUB_SID"},
    ]
    senders = [
        {"inbox": "sms", "number": NUMBER},
        {
            "inbox": "sub",
            "number": "+15550002222",
            "account_sid_env": "TWILIO_SUB_SID",
            "auth_token_env": "TWILIO_SUB_TOKEN",
        },
    ]
    overrides = {"twilio.shared_keys": keys, "twilio.senders": senders}
    async with twilio_hub(tmp_path, env=env, overrides=overrides) as t:
        url = t.url("/webhooks/twilio/sms")

        def by_key(params: dict[str, str], secret: str = SECRET, algorithm: str = "HMAC_SHA256") -> str:
            return str(RequestValidator(secret).compute_signature(url, params, algorithm))

        params = sms()
        assert await post(t, params, by_key(params), settings()) == (
            200,
            '<?xml version="1.0" encoding="UTF-8"?><Response />',
        )
        assert await stored(t) == 1
        # HMAC_SHA1 with the key's secret is fine too when the header says so.
        params = sms()
        got, _ = await post(t, params, by_key(params, algorithm="HMAC_SHA1"), settings(algorithm="HMAC_SHA1"))
        assert got == 200
        # The auth token signs the webhooks that name no key, as before.
        params = sms()
        assert (await post(t, params, sign(TOKEN, url, params), None))[0] == 200
        assert await stored(t) == 3

        refused: list[tuple[str, dict[str, str], str, str | None, str]] = []
        p = sms()
        refused.append(("wrong secret", p, by_key(p, "not-the-secret"), settings(), "does not match"))
        p = sms()
        # Naming a key, the auth token is not the secret.
        refused.append(("auth token", p, by_key(p, TOKEN), settings(), "does not match"))
        p = sms()
        refused.append(("unknown key", p, by_key(p), settings("webhooks_sharedkey_zzz"), "webhooks_sharedkey_zzz"))
        p = sms()
        refused.append(("another account's key", p, by_key(p, "sub-secret"), settings(SUB_KEY_ID), SUB_KEY_ID))
        p = sms()
        refused.append(("algorithm", p, by_key(p), settings(algorithm="HMAC_SHA512"), "HMAC_SHA512"))
        for what, p, signature, header, needle in refused:
            got, text = await post(t, p, signature, header)
            assert got == 403, what
            assert needle in text, (what, text)
        unknown = (await post(t, sms(), "x", settings("webhooks_sharedkey_zzz")))[1]
        assert "twilio.shared_keys" in unknown
        assert await stored(t) == 3
