"""Phone calls when Twilio repeats itself or races itself: a webhook retried
after a timeout, two copies of one in flight at once, callbacks out of order.
Each step takes effect once, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from storage.models import Message
from tests.hub.twilio_helpers import ACCOUNT, TOKEN, twilio_hub
from tests.hub.web.test_twilio_voice import AGENT_PHONE, agent_with_phone, call_params, step, the_call, timeline_calls


async def test_copies_of_the_incoming_webhook_at_once_record_one_call(tmp_path: Path, engine: dict[str, Any]) -> None:
    async with twilio_hub(tmp_path, overrides=engine) as t:
        agent = await t.agent()
        for _ in range(3):
            sid = "CA" + secrets.token_hex(16)
            codes = await asyncio.gather(
                *(t.fake.post_webhook(t.url("/webhooks/twilio/voice"), call_params(sid), TOKEN) for _ in range(3))
            )
            assert codes == [200, 200, 200]
            call = await the_call(t, sid)
            events = [e["event"] for e in await timeline_calls(agent, call.contact_id) if e["call_sid"] == sid]
            assert events == ["incoming"]


async def test_the_record_action_and_the_final_status_at_once_store_one_voicemail(
    tmp_path: Path, engine: dict[str, Any]
) -> None:
    """The caller hangs up at the end of their message: the <Record> action
    (no RecordingSid, per Twilio) and the final status (with it) come together."""
    async with twilio_hub(tmp_path, overrides=engine) as t:
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="1", CallStatus="in-progress"))
        url = t.fake.add_media(ACCOUNT, "Recordings", b"ID3fake", "audio/mpeg")
        action = call_params(sid, CallStatus="completed", RecordingUrl=url, RecordingDuration="9", Digits="hangup")
        final = call_params(
            sid,
            CallStatus="completed",
            CallDuration="20",
            RecordingUrl=url,
            RecordingSid="RE" + "6" * 32,
            RecordingDuration="9",
        )
        codes = await asyncio.gather(
            t.fake.post_webhook(t.url("/webhooks/twilio/voice/recording"), action, TOKEN),
            t.fake.post_webhook(t.url("/webhooks/twilio/voice/status"), final, TOKEN),
        )
        assert list(codes) == [200, 200]
        call = await the_call(t, sid)
        async with t.hub.db.read() as s:
            stored = await s.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.ticket_id == call.ticket_id, Message.direction == "in")
            )
        assert stored == 1
        assert call.voicemail_message_id is not None and call.extras["outcome"] == "voicemail"


async def test_a_retried_dial_action_records_its_outcome_once(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent, _ = await agent_with_phone(t, "sam@example.com", "Support")
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="2"))
        dial = call_params(sid, DialCallStatus="no-answer", CallStatus="in-progress")
        for _ in range(2):  # the first, and Twilio's retry after no answer in time
            vm = await step(t, "/webhooks/twilio/voice/dial", dial)
            assert vm is not None and vm.find("Record") is not None
        call = await the_call(t, sid)
        events = [e["event"] for e in await timeline_calls(agent, call.contact_id)]
        assert events == ["incoming", "menu", "no_answer"]


async def test_a_retried_click_to_call_dial_action_records_the_customer_leg_once(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent, agent_id = await agent_with_phone(t, "sam@example.com", "Support", online=False)
        assert await t.sms("Call me please", sid="SM" + secrets.token_hex(16)) == 200
        (ticket,) = (await agent.get("/api/v1/tickets?channel=sms"))["items"]
        await agent.post(f"/api/v1/tickets/{ticket['id']}/call", {}, status=201)
        (created,) = t.fake.calls
        leg = call_params(
            created["sid"], From="+15550001111", To=AGENT_PHONE, CallStatus="in-progress", Direction="outbound-api"
        )
        await step(t, f"/webhooks/twilio/voice/connect?ticket={ticket['id']}&agent={agent_id}", leg)
        done = {**leg, "DialCallStatus": "completed", "DialCallDuration": "30"}
        for _ in range(2):
            await step(t, "/webhooks/twilio/voice/dial?direction=outbound", done)
        events = [e["event"] for e in await timeline_calls(agent, ticket["contact_id"])]
        assert events == ["click_to_call", "agent_answered", "customer_leg"]


async def test_an_answer_after_the_call_ended_leaves_it_ended(tmp_path: Path) -> None:
    """The agent leg's <Number url> request, retried after a slow answer, comes
    after the caller's final status."""
    async with twilio_hub(tmp_path) as t:
        agent, agent_id = await agent_with_phone(t, "sam@example.com", "Support")
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="2"))
        await step(t, "/webhooks/twilio/voice/status", call_params(sid, CallStatus="completed", CallDuration="40"))
        leg = {**call_params("CA" + secrets.token_hex(16)), "ParentCallSid": sid, "To": AGENT_PHONE}
        await step(t, f"/webhooks/twilio/voice/answered?agent={agent_id}", leg)
        call = await the_call(t, sid)
        (view,) = (await agent.get(f"/api/v1/tickets/{call.ticket_id}/calls"))["items"]
        assert (view["status"], view["live"], view["outcome"]) == ("completed", False, "missed")
        # Nor does sam count as busy on it: the next call rings them.
        again = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(again))
        doc = await step(t, "/webhooks/twilio/voice/menu", call_params(again, Digits="2"))
        assert doc is not None and [n.text for n in doc.findall("Dial/Number")] == [AGENT_PHONE]
