"""The rasa-sdk actions on their own, with a fake hub behind them: what they
send the hub, what they answer Rasa, and how they read a tracker whose
fields are not what Rasa sends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher

from bots.rasa_actions import (
    Handoff,
    LookupCustomer,
    UpdateLead,
    action_call_problem,
    hub_conversation,
    settle_tracker,
    transcript,
)


class FakeHub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def lookup(self, sender_id: str, email: str | None, phone: str | None) -> dict[str, Any]:
        self.calls.append(("lookup", (sender_id, email, phone)))
        return {"hub_contact_id": 7}

    async def update_lead(self, sender_id: str, values: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("update_lead", (sender_id, values)))
        return {"hub_contact_id": 7}

    async def handoff(self, sender_id: str, reason: str, transcript: Sequence[str]) -> dict[str, Any]:
        self.calls.append(("handoff", (sender_id, reason, list(transcript))))
        return {"handed_off": True}


def tracker(sender: str, slots: dict[str, Any] | None = None, **fields: Any) -> Tracker:
    state: dict[str, Any] = {
        "sender_id": sender,
        "slots": slots or {},
        "latest_message": {"intent": {"name": "human_handoff"}},
        "events": [{"event": "user", "text": "a person please"}],
        **fields,
    }
    return Tracker.from_dict(state)


@pytest.mark.parametrize(
    ("sender", "payload"),
    [
        # The hub's rasa backend hands off on the payload, with Rasa's texts.
        ("hub-contact-12", [{"handoff": {"reason": "human_handoff"}}]),
        # Rasa's own channels would pass it on to the customer (Twilio as a message body).
        ("+989121234567", []),
        ("9f1c2d", []),
        ("hub-contact-", []),
        ("hub-contact-12x", []),
    ],
)
async def test_the_handoff_payload_is_sent_to_hub_conversations_only(sender: str, payload: list[Any]) -> None:
    dispatcher = CollectingDispatcher()
    events = await Handoff(FakeHub()).run(dispatcher, tracker(sender), {})
    assert [m["custom"] for m in dispatcher.messages] == payload
    assert events == [{"event": "slot", "timestamp": None, "name": "hub_handed_off", "value": True}]


async def test_the_actions_never_ask_the_hub_about_the_contact_slot() -> None:
    # A lookup by a typed address puts someone else's contact in the slot.
    hub = FakeHub()
    slots = {
        "hub_contact_id": 7,
        "email": " sara@acme.example ",
        "phone": 42,
        "handoff_reason": "billing",
        "budget": "",
    }
    for action in (LookupCustomer(hub), UpdateLead(hub, ["email", "budget"]), Handoff(hub)):
        await action.run(CollectingDispatcher(), tracker("9f1c2d", slots), {})
    assert hub.calls == [
        # A slot that is not text is not an address.
        ("lookup", ("9f1c2d", "sara@acme.example", None)),
        ("update_lead", ("9f1c2d", {"email": " sara@acme.example "})),
        ("handoff", ("9f1c2d", "billing", ["Customer: a person please"])),
    ]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"latest_message": None}, "rasa"),
        ({"latest_message": {"intent": "human"}}, "rasa"),
        ({"latest_message": {"intent": {"name": 5}}}, "rasa"),
        ({"slots": {"handoff_reason": ["x"]}}, "human_handoff"),
        ({"slots": {"handoff_reason": "  "}}, "human_handoff"),
    ],
)
async def test_a_handoff_reason_of_the_wrong_type_falls_back(fields: dict[str, Any], reason: str) -> None:
    hub = FakeHub()
    await Handoff(hub).run(CollectingDispatcher(), tracker("9f1c2d", **fields), {})
    assert hub.calls[0][1][1] == reason


def test_settling_a_tracker_gives_its_fields_their_types() -> None:
    state: dict[str, Any] = {
        "sender_id": "x",
        "slots": None,
        "latest_message": "hi",
        "events": ["garbage", {"event": "bot", "text": "Hello"}, None],
    }
    settle_tracker(state)
    assert state == {"sender_id": "x", "slots": {}, "latest_message": {}, "events": [{"event": "bot", "text": "Hello"}]}
    state = {"sender_id": "x", "events": None}
    settle_tracker(state)
    assert state == {"sender_id": "x", "slots": {}, "latest_message": {}, "events": []}


def test_a_transcript_keeps_message_texts_only() -> None:
    events = [
        {"event": "user", "text": "hi"},
        {"event": "user", "text": 42},
        {"event": "bot", "text": ""},
        {"event": "action", "name": "action_listen"},
        "garbage",
        {"event": "bot", "text": "Hello"},
    ]
    assert transcript(tracker("x", events=events)) == ["Customer: hi", "Bot: Hello"]
    assert transcript(tracker("x", events=None)) == []


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        ({"next_action": "a", "tracker": {"sender_id": "x"}}, None),
        ({"next_action": "a", "tracker": {"sender_id": "x"}, "version": None, "domain": None}, None),
        ([], "the body must be a JSON object (an action call)"),
        (None, "the body must be a JSON object (an action call)"),
        ({"tracker": {"sender_id": "x"}}, "next_action must be the name of an action"),
        ({"next_action": "", "tracker": {"sender_id": "x"}}, "next_action must be the name of an action"),
        ({"next_action": "a", "tracker": {"sender_id": "x"}, "version": 3}, "version must be a string"),
        ({"next_action": "a", "tracker": {"sender_id": "x"}, "domain": []}, "domain must be an object"),
        ({"next_action": "a"}, "tracker must be an object"),
        ({"next_action": "a", "tracker": "x"}, "tracker must be an object"),
        ({"next_action": "a", "tracker": {}}, "tracker.sender_id must be a string"),
        ({"next_action": "a", "tracker": {"sender_id": 12345}}, "tracker.sender_id must be a string"),
    ],
)
def test_what_cannot_be_an_action_call(call: Any, problem: str | None) -> None:
    assert action_call_problem(call) == problem


@pytest.mark.parametrize(
    ("sender", "hub"),
    [("hub-contact-1", True), ("hub-contact-" + "9" * 30, True), ("hub-contact-٣", False), ("x-hub-contact-1", False)],
)
def test_a_hub_conversation_is_named_by_the_hubs_sender_id(sender: str, hub: bool) -> None:
    assert hub_conversation(sender) is hub
