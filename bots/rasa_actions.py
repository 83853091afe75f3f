"""rasa-sdk custom actions that expose the hub to a team's own Rasa assistant.

* ``action_hub_lookup_customer``: the customer and their recent history across
  channels into slots (``hub_contact_id``, ``hub_customer_name``,
  ``hub_customer_email``, ``hub_customer_phone``, ``hub_lifecycle_stage``,
  ``hub_lead_score``, ``hub_vip``, ``hub_recent_history``).
* ``action_hub_update_lead``: the qualification slots Rasa collected (named as
  in ``bot.qualification.slots``: email, phone, company, budget...) become
  contact attributes, a lead score and a lifecycle stage.
* ``action_hub_handoff``: hand the conversation to a person, with the reason
  from the ``handoff_reason`` slot (or the last intent). A conversation of the
  hub's own rasa backend (``hub-contact-<id>``) also gets the custom payload
  that backend hands off on.

The ``hub_contact_id`` slot is what the actions answer, never what they ask
the hub about: a lookup by a typed address fills it with someone else's
contact, which a later write must not follow. The hub knows a conversation's
contact by its sender id alone.

The actions reach the hub through a :class:`HubPort` (implemented by
``hub.rasa_actions``), so this module stays free of the hub's internals.

A tracker comes from whoever can reach the action server, so every field is
read for what it is: a slot, message or event of the wrong type counts as
absent, and only a request that cannot be an action call at all
(:func:`action_call_problem`) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import ActionExecutor, CollectingDispatcher
from rasa_sdk.interfaces import ActionExecutionRejection

# The slot the actions put the hub's contact id in, for the assistant to use.
CONTACT_SLOT = "hub_contact_id"
# The conversation id the hub's own rasa backend gives Rasa
# (bots.rasa_backend.sender_id): such a conversation names its contact.
HUB_SENDER = re.compile(r"hub-contact-([0-9]+)")
# The longest handoff reason the hub keeps (ticket events, the custom payload).
MAX_REASON = 64


class HubPort(Protocol):
    async def lookup(self, sender_id: str, email: str | None, phone: str | None) -> dict[str, Any] | None: ...

    async def update_lead(self, sender_id: str, values: dict[str, Any]) -> dict[str, Any]: ...

    async def handoff(self, sender_id: str, reason: str, transcript: Sequence[str]) -> dict[str, Any]: ...


def hub_conversation(sender_id: str) -> bool:
    """Whether the conversation runs through the hub's rasa backend."""
    return HUB_SENDER.fullmatch(sender_id) is not None


def action_call_problem(call: Any) -> str | None:
    """Why a decoded request body cannot be a call of an action, or None.
    Only the fields the server needs before an action runs are checked here;
    the tracker's other fields are read leniently by the actions."""
    if not isinstance(call, dict):
        return "the body must be a JSON object (an action call)"
    if not isinstance(call.get("next_action"), str) or not call["next_action"]:
        return "next_action must be the name of an action"
    if call.get("version") is not None and not isinstance(call["version"], str):
        return "version must be a string"
    if call.get("domain") is not None and not isinstance(call["domain"], dict):
        return "domain must be an object"
    tracker = call.get("tracker")
    if not isinstance(tracker, dict):
        return "tracker must be an object"
    if not isinstance(tracker.get("sender_id"), str):
        return "tracker.sender_id must be a string"
    return None


def settle_tracker(tracker: dict[str, Any]) -> None:
    """Fields of the wrong type become their defaults, in place: rasa-sdk
    reads some of them itself after the action ran (``latest_message`` for
    tracing), where a bad one would fail a call whose writes are done."""
    for key, kind, default in (
        ("slots", dict, dict),
        ("latest_message", dict, dict),
        ("events", list, list),
    ):
        if not isinstance(tracker.get(key), kind):
            tracker[key] = default()
    tracker["events"] = [e for e in tracker["events"] if isinstance(e, dict)]


class CheckedExecutor(ActionExecutor):  # type: ignore[misc]
    """rasa-sdk's executor, given trackers whose fields have their types."""

    async def run(self, action_call: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        # The server refuses a call without a tracker (action_call_problem);
        # rasa-sdk's own answer to one is left as it is.
        if isinstance(action_call.get("tracker"), dict):
            settle_tracker(action_call["tracker"])
        return await super().run(action_call, *args, **kwargs)


def slot(tracker: Tracker, name: str) -> Any:
    slots = tracker.slots
    return slots.get(name) if isinstance(slots, dict) else None


def text_slot(tracker: Tracker, name: str) -> str | None:
    value = slot(tracker, name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def latest_intent(tracker: Tracker) -> str | None:
    message = tracker.latest_message
    intent = message.get("intent") if isinstance(message, dict) else None
    name = intent.get("name") if isinstance(intent, dict) else None
    return name if isinstance(name, str) and name else None


def transcript(tracker: Tracker, limit: int = 10) -> list[str]:
    lines = []
    events = tracker.events if isinstance(tracker.events, list) else []
    for e in events:
        if not isinstance(e, dict) or not isinstance(e.get("text"), str) or not e["text"]:
            continue
        if e.get("event") == "user":
            lines.append(f"Customer: {e['text']}")
        elif e.get("event") == "bot":
            lines.append(f"Bot: {e['text']}")
    return lines[-limit:]


class _HubAction(Action):  # type: ignore[misc]
    def __init__(self, port: HubPort) -> None:
        self.port = port

    def sender(self, tracker: Tracker) -> str:
        # The server refuses such a call before it gets here
        # (action_call_problem); this keeps the action safe on its own.
        if not isinstance(tracker.sender_id, str):
            raise ActionExecutionRejection(self.name(), "tracker.sender_id must be a string")
        return tracker.sender_id


class LookupCustomer(_HubAction):
    def name(self) -> str:
        return "action_hub_lookup_customer"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        found = await self.port.lookup(self.sender(tracker), text_slot(tracker, "email"), text_slot(tracker, "phone"))
        if found is None:
            return [SlotSet(CONTACT_SLOT, None)]
        return [SlotSet(f"hub_{k}" if not k.startswith("hub_") else k, v) for k, v in found.items()]


class UpdateLead(_HubAction):
    def __init__(self, port: HubPort, slots: Sequence[str]) -> None:
        super().__init__(port)
        self.slots = list(slots)

    def name(self) -> str:
        return "action_hub_update_lead"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        values = {s: v for s in self.slots if (v := slot(tracker, s)) is not None and v != ""}
        result = await self.port.update_lead(self.sender(tracker), values)
        return [SlotSet(k, v) for k, v in result.items()]


class Handoff(_HubAction):
    def name(self) -> str:
        return "action_hub_handoff"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        sender = self.sender(tracker)
        reason = text_slot(tracker, "handoff_reason") or latest_intent(tracker) or "rasa"
        result = await self.port.handoff(sender, reason, transcript(tracker))
        if hub_conversation(sender):
            # Only the hub's rasa backend reads this payload: it hands off on
            # it, with Rasa's texts, in one transaction. Rasa's own channels
            # would pass it to the customer (Twilio as a message body).
            dispatcher.utter_message(json_message={"handoff": {"reason": reason[:MAX_REASON]}})
        return [SlotSet("hub_handed_off", bool(result.get("handed_off")))]
