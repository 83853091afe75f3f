"""Phone calls through a running hub: the IVR's TwiML, voicemail with
transcription, missed calls as call-back tasks, dialling an available agent,
click-to-call through the fake Twilio; every step signed."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select, update

from hub.actions import do_assign, do_create_agent, do_post_message
from hub.core import Author
from storage.models import Agent as AgentRow
from storage.models import Call, Message, Ticket
from tests.hub.helpers import PASSWORD, Agent, next_frame
from tests.hub.twilio_helpers import (
    ACCOUNT,
    CUSTOMER,
    NUMBER,
    TOKEN,
    TwilioHub,
    eventually,
    free_port,
    twilio_hub,
)

AGENT_PHONE = "+15550009999"


def call_params(sid: str, **extra: str) -> dict[str, str]:
    return {
        "CallSid": sid,
        "AccountSid": ACCOUNT,
        "From": CUSTOMER,
        "To": NUMBER,
        "Caller": CUSTOMER,
        "Called": NUMBER,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        **extra,
    }


async def step(t: TwilioHub, path: str, params: dict[str, str], status: int = 200) -> ET.Element | None:
    url = t.url(path)
    got = await t.fake.post_webhook(url, params, TOKEN)
    assert got == status, path
    if status != 200:
        return None
    # The fake keeps only the status; ask again for the body (steps are idempotent).
    async with t.http.post(url, data=params, headers={"X-Twilio-Signature": _sign(url, params)}) as r:
        assert r.status == 200
        assert r.content_type == "text/xml"
        return ET.fromstring(await r.text())  # noqa: S314 - the hub's own TwiML


def _sign(url: str, params: dict[str, str]) -> str:
    from tests.fakes.twilio import sign

    return sign(TOKEN, url, params)


async def agent_with_phone(t: TwilioHub, email: str, team: str, *, online: bool = True) -> tuple[Agent, int]:
    async with t.hub.db.write() as s:
        row = await do_create_agent(s, email=email, name=email, password=PASSWORD, teams=[team], phone=AGENT_PHONE)
        agent_id = row.id
        if online:
            await s.execute(update(AgentRow).where(AgentRow.id == agent_id).values(presence="online"))
    return await Agent.login(t.http, str(t.server.make_url("")).rstrip("/"), email), agent_id


async def timeline_calls(agent: Agent, contact_id: int) -> list[dict[str, Any]]:
    items = (await agent.get(f"/api/v1/contacts/{contact_id}/timeline?limit=200"))["items"]
    return [i["event"]["data"] for i in reversed(items) if i["type"] == "event" and i["event"]["kind"] == "call"]


async def the_call(t: TwilioHub, sid: str) -> Call:
    async with t.hub.db.read() as s:
        row = await s.scalar(select(Call).where(Call.call_sid == sid))
        assert row is not None
        return row


async def test_voicemail_with_transcription_becomes_a_message(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        sid = "CA" + secrets.token_hex(16)
        menu = await step(t, "/webhooks/twilio/voice", call_params(sid))
        assert menu is not None
        gather = menu.find("Gather")
        assert gather is not None and gather.attrib["action"] == t.url("/webhooks/twilio/voice/menu")
        # Nobody is online: the caller is offered voicemail.
        vm = await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="1", CallStatus="in-progress"))
        assert vm is not None
        record = vm.find("Record")
        assert record is not None and record.attrib["transcribe"] == "true"
        assert vm[0].text == "All our agents are busy. Please leave a message after the tone."
        recording_url = t.fake.add_media(ACCOUNT, "Recordings", b"ID3fake-mp3", "audio/mpeg")
        rec = call_params(
            sid,
            CallStatus="in-progress",
            RecordingUrl=recording_url,
            RecordingSid="RE" + "5" * 32,
            RecordingDuration="17",
            Digits="hangup",
        )
        bye = await step(t, "/webhooks/twilio/voice/recording", rec)
        assert bye is not None and bye[-1].tag == "Hangup"
        transcription = {
            **rec,
            "TranscriptionSid": "TR" + "6" * 32,
            "TranscriptionText": "Hi, please call me back about my invoice.",
            "TranscriptionStatus": "completed",
        }
        await step(t, "/webhooks/twilio/voice/transcription", transcription)
        await step(t, "/webhooks/twilio/voice/status", call_params(sid, CallStatus="completed", CallDuration="31"))
        agent = await t.agent()
        page = await agent.get("/api/v1/tickets?channel=voice")
        (ticket,) = page["items"]
        detail = await agent.get(f"/api/v1/tickets/{ticket['id']}")
        (voicemail,) = [m for m in detail["messages"] if m["direction"] == "in"]
        assert voicemail["body"] == "Hi, please call me back about my invoice."
        assert voicemail["channel"] == "voice"

        async def copied() -> dict[str, Any] | None:
            d = await agent.get(f"/api/v1/tickets/{ticket['id']}")
            m = next(m for m in d["messages"] if m["id"] == voicemail["id"])
            att = m["attachments"][0]
            return att if att["url"].startswith("/attachments/") else None

        att = await eventually(copied)
        assert att["content_type"] == "audio/mpeg"
        teams = {x["name"]: x["id"] for x in (await agent.get("/api/v1/teams"))["items"]}
        assert detail["team_id"] == teams["Sales"]
        events = await timeline_calls(agent, detail["contact_id"])
        assert [e["event"] for e in events] == ["incoming", "menu", "voicemail", "transcription", "ended"]
        assert events[1]["digit"] == "1" and events[1]["next"] == "voicemail"
        assert events[-1]["outcome"] == "voicemail" and events[-1]["duration_seconds"] == 31
        call = await the_call(t, sid)
        assert call.voicemail_message_id == voicemail["id"]
        calls = await agent.get(f"/api/v1/tickets/{ticket['id']}/calls")
        assert calls["items"][0]["live"] is False
        # The same transcription again changes nothing.
        await step(t, "/webhooks/twilio/voice/transcription", {**transcription, "TranscriptionText": "other"})
        async with t.hub.db.read() as s:
            stored = await s.get(Message, voicemail["id"])
        assert stored is not None and stored.body == "Hi, please call me back about my invoice."


async def test_a_hang_up_in_the_menu_leaves_a_call_back_task(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        await step(t, "/webhooks/twilio/voice/status", call_params(sid, CallStatus="in-progress"))
        await step(t, "/webhooks/twilio/voice/status", call_params(sid, CallStatus="completed", CallDuration="4"))
        # A late, out-of-order "ringing" does not reopen it.
        await step(t, "/webhooks/twilio/voice/status", call_params(sid, CallStatus="ringing"))
        agent = await t.agent()
        (ticket,) = (await agent.get("/api/v1/tickets?channel=voice"))["items"]
        assert "call-back" in ticket["labels"]
        detail = await agent.get(f"/api/v1/tickets/{ticket['id']}")
        (note,) = detail["messages"]
        assert note["private"] and note["author"] == "system"
        assert f"Call back {CUSTOMER}" in note["body"] and "hung up before reaching anyone" in note["body"]
        teams = {x["name"]: x["id"] for x in (await agent.get("/api/v1/teams"))["items"]}
        assert detail["team_id"] == teams["Support"]
        assert detail["waiting_since"] is not None
        call = await the_call(t, sid)
        assert (call.status, call.duration_seconds, call.extras["outcome"]) == ("completed", 4, "abandoned")


async def test_an_available_agent_is_dialled_and_gets_the_ticket(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent, agent_id = await agent_with_phone(t, "sam@example.com", "Support")
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        dial_doc = await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="2"))
        assert dial_doc is not None
        number = dial_doc.find("Dial/Number")
        assert number is not None and number.text == AGENT_PHONE
        assert number.attrib["url"] == t.url(f"/webhooks/twilio/voice/answered?agent={agent_id}")
        leg = {**call_params("CA" + secrets.token_hex(16)), "ParentCallSid": sid, "To": AGENT_PHONE}
        await step(t, f"/webhooks/twilio/voice/answered?agent={agent_id}", leg)
        (ticket,) = (await agent.get("/api/v1/tickets?channel=voice"))["items"]
        assert ticket["assignee_id"] == agent_id
        live = (await agent.get(f"/api/v1/tickets/{ticket['id']}/calls"))["items"][0]
        assert (live["live"], live["agent_id"], live["status"]) == (True, agent_id, "in-progress")
        done = call_params(sid, DialCallStatus="completed", DialCallDuration="60", CallStatus="in-progress")
        hangup = await step(t, "/webhooks/twilio/voice/dial", done)
        assert hangup is not None and [el.tag for el in hangup] == ["Hangup"]
        await step(t, "/webhooks/twilio/voice/status", call_params(sid, CallStatus="completed", CallDuration="75"))
        call = await the_call(t, sid)
        assert call.extras["outcome"] == "answered"
        assert (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["messages"] == []  # no call-back task


async def test_nobody_answers_then_voicemail_is_offered(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        await agent_with_phone(t, "sam@example.com", "Support")
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="2"))
        vm = await step(t, "/webhooks/twilio/voice/dial", call_params(sid, DialCallStatus="no-answer"))
        assert vm is not None and vm.find("Record") is not None
        await step(t, "/webhooks/twilio/voice/status", call_params(sid, CallStatus="completed", CallDuration="40"))
        call = await the_call(t, sid)
        assert call.extras["outcome"] == "missed"


async def test_closed_hours_go_to_voicemail(tmp_path: Path) -> None:
    hours = {"timezone": "Asia/Tehran", "days": [], "open": "09:00", "close": "17:00"}
    async with twilio_hub(tmp_path, overrides={"twilio.voice.hours": hours}) as t:
        await agent_with_phone(t, "sam@example.com", "Support")
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        vm = await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="2"))
        assert vm is not None and vm.find("Dial") is None and vm.find("Record") is not None
        assert vm[0].text == "We are closed now. Please leave a message after the tone."


async def test_click_to_call_rings_the_agent_then_the_customer(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent, agent_id = await agent_with_phone(t, "sam@example.com", "Support", online=False)
        assert await t.sms("Call me please", sid="SM" + secrets.token_hex(16)) == 200
        (ticket,) = (await agent.get("/api/v1/tickets?channel=sms"))["items"]
        view = await agent.post(f"/api/v1/tickets/{ticket['id']}/call", {}, status=201)
        (created,) = t.fake.calls
        assert (created["to"], created["from"]) == (AGENT_PHONE, NUMBER)
        assert created["url"] == t.url(f"/webhooks/twilio/voice/connect?ticket={ticket['id']}&agent={agent_id}")
        assert created["status_callback"] == t.url(
            f"/webhooks/twilio/voice/status?ticket={ticket['id']}&agent={agent_id}"
        )
        assert (view["call_sid"], view["direction"], view["customer"]) == (created["sid"], "outbound", CUSTOMER)
        leg = call_params(
            created["sid"], From=NUMBER, To=AGENT_PHONE, CallStatus="in-progress", Direction="outbound-api"
        )
        connect = await step(t, f"/webhooks/twilio/voice/connect?ticket={ticket['id']}&agent={agent_id}", leg)
        assert connect is not None
        number = connect.find("Dial/Number")
        assert number is not None and number.text == CUSTOMER
        events = await timeline_calls(agent, ticket["contact_id"])
        assert [e["event"] for e in events] == ["click_to_call", "agent_answered"]
        # An agent without a phone is told why.
        other = await t.agent("nophone@example.com")
        async with t.http.post(t.url(f"/api/v1/tickets/{ticket['id']}/call"), json={}, headers=other.headers) as r:
            assert r.status == 422
            assert "phone" in (await r.json())["error"]["message"]
        t.fake.fail_next(400, 21211)
        async with t.http.post(t.url(f"/api/v1/tickets/{ticket['id']}/call"), json={}, headers=agent.headers) as r:
            assert r.status == 502
            assert "Twilio error 21211" in (await r.json())["error"]["message"]


async def test_voice_webhooks_are_signature_checked(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        sid = "CA" + secrets.token_hex(16)
        for path in ("/webhooks/twilio/voice", "/webhooks/twilio/voice/menu", "/webhooks/twilio/voice/status"):
            async with t.http.post(t.url(path), data=call_params(sid), headers={"X-Twilio-Signature": "bad"}) as r:
                assert r.status == 403
        assert await t.fake.post_webhook(t.url("/webhooks/twilio/voice/nonsense"), call_params(sid), TOKEN) == 404
        async with t.hub.db.read() as s:
            assert await s.scalar(select(Call)) is None


async def test_a_reply_on_a_phone_ticket_sends_its_attachments_as_mms(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        await step(t, "/webhooks/twilio/voice/status", call_params(sid, CallStatus="completed", CallDuration="4"))
        agent = await t.agent()
        (ticket,) = (await agent.get("/api/v1/tickets?channel=voice"))["items"]
        pdf = {"url": "/attachments/k1/invoice.pdf", "content_type": "application/pdf", "filename": "invoice.pdf"}
        async with t.hub.db.write() as s:
            row = await s.get(Ticket, ticket["id"])
            assert row is not None
            # With words, and a file alone (no body at all).
            with_text = await do_post_message(s, row, body="Your invoice", author=Author.SYSTEM, attachments=[pdf])
            file_only = await do_post_message(s, row, body="", author=Author.SYSTEM, attachments=[pdf])

        async def settled() -> list[Message] | None:
            async with t.hub.db.read() as s:
                rows = [await s.get(Message, m.id) for m in (with_text, file_only)]
            done = [m for m in rows if m is not None and m.status not in ("queued", "sending")]
            return done if len(done) == 2 else None

        for sent in await eventually(settled):
            assert sent.status in ("sent", "delivered"), sent.status_reason
        created = [r for r in t.fake.requests if r.path.endswith("/Messages.json")]
        assert [(r.one("Body") or "", r.form.get("MediaUrl")) for r in created] == [
            ("Your invoice", [t.url(pdf["url"])]),
            ("", [t.url(pdf["url"])]),
        ]


async def test_callers_who_withhold_their_number_are_separate_contacts(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent, _ = await agent_with_phone(t, "sam@example.com", "Support", online=False)
        sids = ["CA" + secrets.token_hex(16) for _ in range(3)]
        # Two strangers with Twilio's "anonymous" number, one with the word.
        for sid, hidden in zip(sids, ("+266696687", "+266696687", "anonymous"), strict=True):
            params = call_params(sid, From=hidden, Caller=hidden)
            await step(t, "/webhooks/twilio/voice", params)
            await step(t, "/webhooks/twilio/voice/status", {**params, "CallStatus": "completed", "CallDuration": "3"})
        calls = [await the_call(t, sid) for sid in sids]
        assert len({c.contact_id for c in calls}) == 3
        assert len({c.ticket_id for c in calls}) == 3
        assert {c.customer for c in calls} == {"anonymous"}
        ticket = await agent.get(f"/api/v1/tickets/{calls[0].ticket_id}")
        # The team hears of the missed call, but gets no call-back task it cannot do.
        assert "call-back" not in ticket["labels"]
        (note,) = ticket["messages"]
        assert note["private"] and "withheld their number" in note["body"] and "cannot be called back" in note["body"]
        async with t.http.post(
            t.url(f"/api/v1/tickets/{calls[0].ticket_id}/call"), json={}, headers=agent.headers
        ) as r:
            assert r.status == 422
            assert "withheld" in (await r.json())["error"]["message"]
        assert t.fake.calls == []
        async with t.hub.db.write() as s:
            row = await s.get(Ticket, calls[0].ticket_id)
            assert row is not None
            reply = await do_post_message(s, row, body="Thanks for calling", author=Author.SYSTEM)

        async def settled() -> Message | None:
            async with t.hub.db.read() as s:
                m = await s.get(Message, reply.id)
            return m if m is not None and m.status not in ("queued", "sending") else None

        sent = await eventually(settled)
        assert sent.status == "failed"
        assert sent.status_reason == "the caller withheld their number, so there is no number to text a reply to"
        assert not [r for r in t.fake.requests if r.path.endswith("/Messages.json")]


async def test_the_agent_who_answers_gets_the_ticket_from_the_one_routing_chose(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent, first = await agent_with_phone(t, "sam@example.com", "Support")
        async with t.hub.db.write() as s:
            row = await do_create_agent(
                s, email="kim@example.com", name="Kim", password=PASSWORD, teams=["Support"], phone="+15550008888"
            )
            second = row.id
            await s.execute(update(AgentRow).where(AgentRow.id == second).values(presence="online"))
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        call = await the_call(t, sid)
        async with t.hub.db.write() as s:
            ticket = await s.get(Ticket, call.ticket_id)
            assert ticket is not None
            await do_assign(s, ticket, agent_id=first, team_id=None, actor="routing")
        dial_doc = await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="2"))
        assert dial_doc is not None
        assert {n.text for n in dial_doc.findall("Dial/Number")} == {AGENT_PHONE, "+15550008888"}
        leg = {**call_params("CA" + secrets.token_hex(16)), "ParentCallSid": sid, "To": "+15550008888"}
        await step(t, f"/webhooks/twilio/voice/answered?agent={second}", leg)
        detail = await agent.get(f"/api/v1/tickets/{call.ticket_id}")
        assert detail["assignee_id"] == second
        assert (await the_call(t, sid)).agent_id == second


async def test_a_voicemail_after_the_final_status_takes_back_the_call_back_task(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent = await t.agent()
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="1", CallStatus="in-progress"))
        # The caller hangs up at the end of their message: the final status
        # comes first, the <Record> action after it.
        await step(t, "/webhooks/twilio/voice/status", call_params(sid, CallStatus="completed", CallDuration="30"))
        call = await the_call(t, sid)
        assert call.extras["outcome"] == "abandoned"
        assert "call-back" in (await agent.get(f"/api/v1/tickets/{call.ticket_id}"))["labels"]
        url = t.fake.add_media(ACCOUNT, "Recordings", b"ID3fake", "audio/mpeg")
        rec = call_params(
            sid,
            CallStatus="completed",
            RecordingUrl=url,
            RecordingSid="RE" + "5" * 32,
            RecordingDuration="17",
            Digits="hangup",
        )
        async with agent.events() as ws:
            await step(t, "/webhooks/twilio/voice/recording", rec)
            frame = await next_frame(ws, "message.updated")
        assert "No call back needed: they left a voicemail." in frame["message"]["body"]
        assert "call-back" not in frame["ticket"]["labels"]
        # Twilio retries the action: nothing changes twice.
        await step(t, "/webhooks/twilio/voice/recording", rec)
        call = await the_call(t, sid)
        assert call.extras["outcome"] == "voicemail"
        assert call.voicemail_message_id is not None
        detail = await agent.get(f"/api/v1/tickets/{call.ticket_id}")
        assert "call-back" not in detail["labels"]
        (note,) = [m for m in detail["messages"] if m["private"]]
        assert note["body"].count("No call back needed") == 1
        assert [m["id"] for m in detail["messages"] if m["direction"] == "in"] == [call.voicemail_message_id]
        events = await timeline_calls(agent, detail["contact_id"])
        assert [e["event"] for e in events][-2:] == ["ended", "voicemail"]
        assert (events[-1]["outcome"], events[-1]["corrected_from"]) == ("voicemail", "abandoned")


async def test_a_final_status_carrying_the_recording_stores_the_voicemail(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent = await t.agent()
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="1", CallStatus="in-progress"))
        url = t.fake.add_media(ACCOUNT, "Recordings", b"ID3fake", "audio/mpeg")
        recording = {"RecordingUrl": url, "RecordingSid": "RE" + "6" * 32, "RecordingDuration": "9"}
        await step(
            t, "/webhooks/twilio/voice/status", call_params(sid, CallStatus="completed", CallDuration="20", **recording)
        )
        call = await the_call(t, sid)
        assert call.extras["outcome"] == "voicemail"
        detail = await agent.get(f"/api/v1/tickets/{call.ticket_id}")
        assert "call-back" not in detail["labels"]
        assert [m["id"] for m in detail["messages"]] == [call.voicemail_message_id]
        # The <Record> action, late, is the same voicemail.
        await step(t, "/webhooks/twilio/voice/recording", call_params(sid, CallStatus="completed", **recording))
        assert len((await agent.get(f"/api/v1/tickets/{call.ticket_id}"))["messages"]) == 1


async def test_a_transcription_reaches_the_agents_screens(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent = await t.agent()
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        url = t.fake.add_media(ACCOUNT, "Recordings", b"ID3fake", "audio/mpeg")
        rec = call_params(sid, RecordingUrl=url, RecordingSid="RE" + "7" * 32, RecordingDuration="5")
        await step(t, "/webhooks/twilio/voice/recording", rec)
        text = {**rec, "TranscriptionText": "Please call me about order 42.", "TranscriptionStatus": "completed"}
        async with agent.events() as ws:
            await step(t, "/webhooks/twilio/voice/transcription", text)
            frame = await next_frame(ws, "message.updated")
        assert frame["message"]["body"] == "Please call me about order 42."
        assert frame["message"]["id"] == (await the_call(t, sid)).voicemail_message_id


async def test_click_to_call_when_twilio_cannot_be_reached(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with twilio_hub(tmp_path, overrides={"twilio.api_base_url": dead}) as t:
        agent, _ = await agent_with_phone(t, "sam@example.com", "Support", online=False)
        await step(t, "/webhooks/twilio/voice", call_params("CA" + secrets.token_hex(16)))
        (ticket,) = (await agent.get("/api/v1/tickets?channel=voice"))["items"]
        async with t.http.post(t.url(f"/api/v1/tickets/{ticket['id']}/call"), json={}, headers=agent.headers) as r:
            assert r.status == 503
            message = (await r.json())["error"]["message"]
        assert "Twilio could not be reached, nothing was sent" in message and "no call was placed" in message
        assert [c["event"] for c in await timeline_calls(agent, ticket["contact_id"])] == ["incoming"]


@contextlib.asynccontextmanager
async def silent_twilio() -> AsyncIterator[str]:
    """An API that takes requests and answers none in time."""

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stall)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def click_to_call_twilio_does_not_answer(
    tmp_path: Path,
) -> AsyncIterator[tuple[TwilioHub, Agent, int, dict[str, Any], str]]:
    """Sam's click-to-call on an SMS ticket, whose request Twilio leaves
    unanswered past the timeout: the hub, sam, his id, the ticket and the
    502's message."""
    async with (
        silent_twilio() as slow,
        twilio_hub(tmp_path, overrides={"twilio.api_base_url": slow, "twilio.request_timeout_seconds": 0.5}) as t,
    ):
        agent, agent_id = await agent_with_phone(t, "sam@example.com", "Support", online=False)
        assert await t.sms("Call me please", sid="SM" + secrets.token_hex(16)) == 200
        (ticket,) = (await agent.get("/api/v1/tickets?channel=sms"))["items"]
        async with t.http.post(t.url(f"/api/v1/tickets/{ticket['id']}/call"), json={}, headers=agent.headers) as r:
            assert r.status == 502
            message = (await r.json())["error"]["message"]
        yield t, agent, agent_id, ticket, message


async def test_click_to_call_that_twilio_does_not_answer_in_time_still_connects(tmp_path: Path) -> None:
    async with click_to_call_twilio_does_not_answer(tmp_path) as (t, agent, agent_id, ticket, message):
        assert "Twilio did not answer within 0.5 s" in message and "may still have been placed" in message
        # Twilio did place it: the agent answers, and is put through to the customer.
        placed = "CA" + secrets.token_hex(16)
        leg = call_params(placed, From=NUMBER, To=AGENT_PHONE, CallStatus="in-progress", Direction="outbound-api")
        connect = await step(t, f"/webhooks/twilio/voice/connect?ticket={ticket['id']}&agent={agent_id}", leg)
        assert connect is not None
        number = connect.find("Dial/Number")
        assert number is not None and number.text == CUSTOMER
        call = await the_call(t, placed)
        assert (call.ticket_id, call.agent_id, call.direction, call.customer) == (
            ticket["id"],
            agent_id,
            "outbound",
            CUSTOMER,
        )
        events = await timeline_calls(agent, ticket["contact_id"])
        assert [e["event"] for e in events] == ["click_to_call", "agent_answered"]
        # A connect step for a call the hub cannot have placed dials nobody.
        other = call_params("CA" + secrets.token_hex(16), Direction="inbound")
        bye = await step(t, f"/webhooks/twilio/voice/connect?ticket={ticket['id']}&agent={agent_id}", other)
        assert bye is not None and bye.find("Dial") is None


async def test_a_team_of_more_than_ten_rings_ten_the_tickets_agent_first(tmp_path: Path) -> None:
    # Twilio refuses a <Dial> of more than ten numbers: every call to the team failed.
    async with twilio_hub(tmp_path) as t:
        ids = []
        async with t.hub.db.write() as s:
            for i in range(12):
                row = await do_create_agent(
                    s,
                    email=f"a{i}@example.com",
                    name=f"A{i}",
                    password=PASSWORD,
                    teams=["Support"],
                    phone=f"+1555000{i:04d}",
                )
                ids.append(row.id)
            await s.execute(update(AgentRow).where(AgentRow.id.in_(ids)).values(presence="online"))
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        call = await the_call(t, sid)
        async with t.hub.db.write() as s:
            ticket = await s.get(Ticket, call.ticket_id)
            assert ticket is not None
            # The team's last in turn, whom ten others would have pushed out.
            await do_assign(s, ticket, agent_id=ids[-1], team_id=None, actor="routing")
        dial_doc = await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="2"))
        assert dial_doc is not None
        numbers = [n.text for n in dial_doc.findall("Dial/Number")]
        assert len(numbers) == 10 and numbers[0] == "+15550000011"
        assert (await the_call(t, sid)).extras["dialed"] == [ids[-1], *ids[:9]]


async def test_an_agent_on_another_call_is_not_rung(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        _, agent_id = await agent_with_phone(t, "sam@example.com", "Support")
        other = "+15557650000"
        busy = "CA" + secrets.token_hex(16)
        first = call_params(busy, From=other, Caller=other)
        await step(t, "/webhooks/twilio/voice", first)
        await step(t, "/webhooks/twilio/voice/menu", {**first, "Digits": "2"})
        leg = {**call_params("CA" + secrets.token_hex(16)), "ParentCallSid": busy, "To": AGENT_PHONE}
        await step(t, f"/webhooks/twilio/voice/answered?agent={agent_id}", leg)
        # While sam talks, a caller whose ticket routing gave sam calls.
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        async with t.hub.db.write() as s:
            ticket = await s.get(Ticket, (await the_call(t, sid)).ticket_id)
            assert ticket is not None
            await do_assign(s, ticket, agent_id=agent_id, team_id=None, actor="routing")
        doc = await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="2"))
        assert doc is not None and doc.find("Dial") is None and doc.find("Record") is not None
        # Once that call ends, sam is rung again.
        await step(t, "/webhooks/twilio/voice/status", {**first, "CallStatus": "completed", "CallDuration": "60"})
        again = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(again))
        doc = await step(t, "/webhooks/twilio/voice/menu", call_params(again, Digits="2"))
        assert doc is not None and [n.text for n in doc.findall("Dial/Number")] == [AGENT_PHONE]


async def test_a_transcription_in_progress_waits_for_the_text(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        url = t.fake.add_media(ACCOUNT, "Recordings", b"ID3fake", "audio/mpeg")
        rec = call_params(sid, RecordingUrl=url, RecordingSid="RE" + "7" * 32, RecordingDuration="5")
        await step(t, "/webhooks/twilio/voice/recording", rec)
        note = {**rec, "TranscriptionSid": "TR" + "1" * 32}
        await step(t, "/webhooks/twilio/voice/transcription", {**note, "TranscriptionStatus": "in-progress"})
        text = {**note, "TranscriptionStatus": "completed", "TranscriptionText": "Call me about order 42."}
        await step(t, "/webhooks/twilio/voice/transcription", text)
        call = await the_call(t, sid)
        async with t.hub.db.read() as s:
            msg = await s.get(Message, call.voicemail_message_id)
        assert msg is not None and (msg.body, msg.extras["transcription"]) == ("Call me about order 42.", "completed")


async def test_values_twilio_never_sends_are_a_400_naming_them(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        await agent_with_phone(t, "sam@example.com", "Support")
        sid = "CA" + secrets.token_hex(16)
        await step(t, "/webhooks/twilio/voice", call_params(sid))
        for path, change in (
            # Wider than calls.menu_choice: a 500 on PostgreSQL.
            ("menu", {"Digits": "123456789"}),
            ("dial", {"DialCallStatus": "exploded"}),
            ("transcription", {"TranscriptionStatus": "done"}),
        ):
            url = t.url(f"/webhooks/twilio/voice/{path}")
            params = call_params(sid, **change)
            async with t.http.post(url, data=params, headers={"X-Twilio-Signature": _sign(url, params)}) as r:
                assert r.status == 400
                assert next(iter(change)) in (await r.json())["error"]["message"]
        await step(t, "/webhooks/twilio/voice/menu", call_params(sid, Digits="2"))
        # "answered" is Twilio's word for a dialled agent who picked up, as "completed".
        done = await step(t, "/webhooks/twilio/voice/dial", call_params(sid, DialCallStatus="answered"))
        assert done is not None and [el.tag for el in done] == ["Hangup"]


async def test_a_timed_out_click_to_call_nobody_answers_stays_on_the_ticket(tmp_path: Path) -> None:
    async with click_to_call_twilio_does_not_answer(tmp_path) as (t, agent, agent_id, ticket, _):
        (attempt,) = (await agent.get(f"/api/v1/tickets/{ticket['id']}/calls"))["items"]
        # Nobody knows yet whether Twilio placed it: not shown as a live call.
        assert (attempt["status"], attempt["live"], attempt["agent_id"]) == ("unconfirmed", False, agent_id)
        # Twilio did place it, rang sam, who did not answer: its callbacks claim the attempt.
        placed = "CA" + secrets.token_hex(16)
        callback = f"/webhooks/twilio/voice/status?ticket={ticket['id']}&agent={agent_id}"
        # Not another ticket's attempt, though it rings the same phone.
        other = call_params(placed, From=NUMBER, To=AGENT_PHONE, CallStatus="initiated", Direction="outbound-api")
        await step(t, f"/webhooks/twilio/voice/status?ticket={ticket['id'] + 1}&agent={agent_id}", other)
        (attempt,) = (await agent.get(f"/api/v1/tickets/{ticket['id']}/calls"))["items"]
        assert attempt["status"] == "unconfirmed"
        for status in ("initiated", "ringing", "no-answer"):
            leg = call_params(placed, From=NUMBER, To=AGENT_PHONE, CallStatus=status, Direction="outbound-api")
            await step(t, callback, leg)
        (call,) = (await agent.get(f"/api/v1/tickets/{ticket['id']}/calls"))["items"]
        assert (call["call_sid"], call["status"], call["outcome"], call["live"]) == (
            placed,
            "no-answer",
            "no-answer",
            False,
        )
        events = await timeline_calls(agent, ticket["contact_id"])
        assert [e["event"] for e in events] == ["click_to_call", "status", "ended"]
        assert "did not answer" in events[0]["unconfirmed"]
        # Another call's callbacks to sam's phone find no attempt left to claim.
        stray = call_params("CA" + secrets.token_hex(16), From=NUMBER, To=AGENT_PHONE, Direction="outbound-api")
        await step(t, "/webhooks/twilio/voice/status", {**stray, "CallStatus": "ringing"})
        assert len((await agent.get(f"/api/v1/tickets/{ticket['id']}/calls"))["items"]) == 1
