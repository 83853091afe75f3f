"""The outcome of a click-to-call is the customer's: the agent picking up is
not a conversation; a customer who did not answer leaves a call-back task."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from tests.hub.helpers import Agent
from tests.hub.twilio_helpers import NUMBER, TwilioHub, twilio_hub
from tests.hub.web.test_twilio_voice import AGENT_PHONE, agent_with_phone, call_params, step, timeline_calls


async def click_to_call(t: TwilioHub) -> tuple[Agent, dict[str, Any], dict[str, str]]:
    """The agent asked for the call and picked up; the customer is being rung."""
    agent, agent_id = await agent_with_phone(t, "sam@example.com", "Support", online=False)
    assert await t.sms("Call me please", sid="SM" + secrets.token_hex(16)) == 200
    (ticket,) = (await agent.get("/api/v1/tickets?channel=sms"))["items"]
    await agent.post(f"/api/v1/tickets/{ticket['id']}/call", {}, status=201)
    (created,) = t.fake.calls
    leg = call_params(created["sid"], From=NUMBER, To=AGENT_PHONE, CallStatus="in-progress", Direction="outbound-api")
    await step(t, f"/webhooks/twilio/voice/connect?ticket={ticket['id']}&agent={agent_id}", leg)
    return agent, ticket, leg


async def the_call(agent: Agent, ticket_id: int) -> dict[str, Any]:
    (call,) = (await agent.get(f"/api/v1/tickets/{ticket_id}/calls"))["items"]
    return dict(call)


async def test_a_click_to_call_the_customer_did_not_answer(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent, ticket, leg = await click_to_call(t)
        assert (await the_call(agent, ticket["id"]))["answered_at"] is None  # only the agent picked up
        await step(t, "/webhooks/twilio/voice/dial?direction=outbound", {**leg, "DialCallStatus": "no-answer"})
        await step(t, "/webhooks/twilio/voice/status", {**leg, "CallStatus": "completed", "CallDuration": "40"})
        call = await the_call(agent, ticket["id"])
        assert (call["status"], call["outcome"], call["answered_at"]) == ("completed", "no-answer", None)
        detail = await agent.get(f"/api/v1/tickets/{ticket['id']}")
        assert "call-back" in detail["labels"]
        (note,) = [m for m in detail["messages"] if m["private"]]
        assert "was not answered (no-answer)" in note["body"]


async def test_a_click_to_call_the_customer_answered(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent, ticket, leg = await click_to_call(t)
        dial = {**leg, "DialCallStatus": "completed", "DialCallDuration": "30"}
        await step(t, "/webhooks/twilio/voice/dial?direction=outbound", dial)
        await step(t, "/webhooks/twilio/voice/status", {**leg, "CallStatus": "completed", "CallDuration": "40"})
        call = await the_call(agent, ticket["id"])
        assert (call["outcome"], call["answered_at"] is not None) == ("completed", True)
        detail = await agent.get(f"/api/v1/tickets/{ticket['id']}")
        assert "call-back" not in detail["labels"]


async def test_a_late_dial_outcome_corrects_the_calls_outcome(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent, ticket, leg = await click_to_call(t)
        # Twilio's final status overtook the <Dial> action.
        await step(t, "/webhooks/twilio/voice/status", {**leg, "CallStatus": "completed", "CallDuration": "25"})
        await step(t, "/webhooks/twilio/voice/dial?direction=outbound", {**leg, "DialCallStatus": "busy"})
        call = await the_call(agent, ticket["id"])
        assert (call["outcome"], call["answered_at"]) == ("busy", None)
        assert "call-back" in (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["labels"]
        events = await timeline_calls(agent, ticket["contact_id"])
        assert events[-1]["event"] == "outcome" and events[-1]["corrected_from"] == "completed"


async def test_an_agent_who_never_picked_up_leaves_no_call_back(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent, agent_id = await agent_with_phone(t, "sam@example.com", "Support", online=False)
        assert await t.sms("Call me please", sid="SM" + secrets.token_hex(16)) == 200
        (ticket,) = (await agent.get("/api/v1/tickets?channel=sms"))["items"]
        await agent.post(f"/api/v1/tickets/{ticket['id']}/call", {}, status=201)
        (created,) = t.fake.calls
        leg = call_params(created["sid"], From=NUMBER, To=AGENT_PHONE, CallStatus="no-answer", Direction="outbound-api")
        await step(t, f"/webhooks/twilio/voice/status?ticket={ticket['id']}&agent={agent_id}", leg)
        call = await the_call(agent, ticket["id"])
        assert (call["outcome"], call["answered_at"]) == ("no-answer", None)
        assert "call-back" not in (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["labels"]
