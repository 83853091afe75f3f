"""Which account may sign a voice webhook: the voice line's, or that of the
sender whose number the call is to or from; a call the hub has a row for only
its own account's. Any configured account's token is a valid signature, and
AccountSid, To and From are the caller's to write, so a subaccount's token must
not reach the main line's calls."""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import select

from storage.models import AuditLog, Call, Message
from tests.hub.twilio_helpers import ACCOUNT, CUSTOMER, NUMBER, SUB_ACCOUNT, SUB_TOKEN, TOKEN, TwilioHub, twilio_hub
from tests.hub.web.test_twilio_voice import AGENT_PHONE, agent_with_phone, call_params

SALES = "+15550002222"
ENV = {"SALES_SID": SUB_ACCOUNT, "SALES_TOKEN": SUB_TOKEN}


def senders() -> list[dict[str, str]]:
    return [
        {"inbox": "sms", "number": NUMBER},
        {"inbox": "sales", "number": SALES, "account_sid_env": "SALES_SID", "auth_token_env": "SALES_TOKEN"},
    ]


def new_sid() -> str:
    return "CA" + secrets.token_hex(16)


async def post(t: TwilioHub, path: str, params: dict[str, str], token: str) -> int:
    return await t.fake.post_webhook(t.url(path), params, token)


async def calls(t: TwilioHub) -> list[Call]:
    async with t.hub.db.read() as s:
        return list((await s.scalars(select(Call).order_by(Call.id))).all())


async def test_a_subaccount_token_cannot_forge_calls_on_the_main_line(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, env=ENV, overrides={"twilio.senders": senders()}) as t:
        forged = call_params(new_sid(), AccountSid=SUB_ACCOUNT)
        assert await post(t, "/webhooks/twilio/voice", forged, SUB_TOKEN) == 403
        voicemail = {
            **call_params(new_sid(), AccountSid=SUB_ACCOUNT, CallStatus="completed"),
            "RecordingUrl": "https://evil.example/rec",
            "RecordingDuration": "5",
            "TranscriptionText": "Refund me to IBAN XX",
            "TranscriptionStatus": "completed",
        }
        assert await post(t, "/webhooks/twilio/voice/transcription", voicemail, SUB_TOKEN) == 403
        assert await calls(t) == []
        async with t.hub.db.read() as s:
            assert await s.scalar(select(Message)) is None
        # The main line's real call: the subaccount may not end it, whatever To says.
        sid = new_sid()
        assert await post(t, "/webhooks/twilio/voice", call_params(sid), TOKEN) == 200
        for to in (NUMBER, SALES):
            ended = call_params(sid, AccountSid=SUB_ACCOUNT, To=to, CallStatus="completed", CallDuration="3")
            assert await post(t, "/webhooks/twilio/voice/status", ended, SUB_TOKEN) == 403
        (row,) = await calls(t)
        assert row.status == "ringing"
        assert await post(t, "/webhooks/twilio/voice/status", call_params(sid, CallStatus="completed"), TOKEN) == 200


async def test_a_subaccount_token_cannot_place_a_click_to_call(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, env=ENV, overrides={"twilio.senders": senders()}) as t:
        agent, agent_id = await agent_with_phone(t, "sam@example.com", "Support", online=False)
        assert await t.sms("Call me please", sid="SM" + secrets.token_hex(16)) == 200
        (ticket,) = (await agent.get("/api/v1/tickets?channel=sms"))["items"]
        url = f"/webhooks/twilio/voice/connect?ticket={ticket['id']}&agent={agent_id}"
        # From the subaccount's own number, so To/From name a sender of that account.
        for frm in (NUMBER, SALES):
            leg = call_params(
                new_sid(),
                AccountSid=SUB_ACCOUNT,
                From=frm,
                To=AGENT_PHONE,
                CallStatus="in-progress",
                Direction="outbound-api",
            )
            assert await post(t, url, leg, SUB_TOKEN) == 403
        assert await calls(t) == []
        async with t.hub.db.read() as s:
            assert await s.scalar(select(AuditLog).where(AuditLog.action == "call.started")) is None
        # The voice line's account placed it: connected.
        leg = call_params(new_sid(), From=NUMBER, To=AGENT_PHONE, CallStatus="in-progress", Direction="outbound-api")
        assert await post(t, url, leg, TOKEN) == 200
        assert len(await calls(t)) == 1


async def test_a_call_to_a_subaccounts_number_is_that_accounts(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, env=ENV, overrides={"twilio.senders": senders()}) as t:
        _agent, agent_id = await agent_with_phone(t, "sam@example.com", "Sales")
        sid = new_sid()
        params = call_params(sid, AccountSid=SUB_ACCOUNT, To=SALES, Called=SALES)
        assert await post(t, "/webhooks/twilio/voice", params, SUB_TOKEN) == 200
        menu = {**params, "Digits": "1", "CallStatus": "in-progress"}
        assert await post(t, "/webhooks/twilio/voice/menu", menu, SUB_TOKEN) == 200
        # The agent's leg names neither number; it belongs to the call it was dialled from.
        leg = {
            **call_params(new_sid(), AccountSid=SUB_ACCOUNT, From=CUSTOMER, To=AGENT_PHONE, Direction="outbound-dial"),
            "ParentCallSid": sid,
            "CallStatus": "in-progress",
        }
        answered = f"/webhooks/twilio/voice/answered?agent={agent_id}"
        assert await post(t, answered, {**leg, "AccountSid": ACCOUNT}, TOKEN) == 403
        assert await post(t, answered, leg, SUB_TOKEN) == 200
        (row,) = await calls(t)
        assert (row.agent_id, row.status) == (agent_id, "in-progress")
        # Not the voice line's either: the call is the subaccount's.
        ended = call_params(sid, To=SALES, CallStatus="completed", CallDuration="9")
        assert await post(t, "/webhooks/twilio/voice/status", ended, TOKEN) == 403
        assert await post(t, "/webhooks/twilio/voice/status", {**ended, "AccountSid": SUB_ACCOUNT}, SUB_TOKEN) == 200
        (row,) = await calls(t)
        assert row.status == "completed"
