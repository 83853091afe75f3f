"""rasa-sdk custom actions that expose the hub to a team's own Rasa assistant.

* ``action_hub_lookup_customer``: the customer and their recent history across
  channels into slots (``hub_contact_id``, ``hub_customer_name``,
  ``hub_customer_email``, ``hub_customer_phone``, ``hub_lifecycle_stage``,
  ``hub_lead_score``, ``hub_vip``, ``hub_recent_history``).
* ``action_hub_update_lead``: the qualification slots Rasa collected (named as
  in ``bot.qualification.slots``: email, phone, company, budget...) become
  contact attributes, a lead score and a lifecycle stage.
* ``action_hub_handoff``: hand the conversation to a person, with the reason
  from the ``handoff_reason`` slot (or the last intent).

The actions reach the hub through a :class:`HubPort` (implemented by
``hub.rasa_actions``), so this module stays free of the hub's internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher


class HubPort(Protocol):
    async def lookup(self, sender_id: str, email: str | None, phone: str | None) -> dict[str, Any] | None: ...

    async def update_lead(self, sender_id: str, values: dict[str, Any]) -> dict[str, Any]: ...

    async def handoff(self, sender_id: str, reason: str, transcript: Sequence[str]) -> dict[str, Any]: ...


def transcript(tracker: Tracker, limit: int = 10) -> list[str]:
    lines = []
    for e in tracker.events:
        if e.get("event") == "user" and e.get("text"):
            lines.append(f"Customer: {e['text']}")
        elif e.get("event") == "bot" and e.get("text"):
            lines.append(f"Bot: {e['text']}")
    return lines[-limit:]


class _HubAction(Action):  # type: ignore[misc]
    def __init__(self, port: HubPort) -> None:
        self.port = port


class LookupCustomer(_HubAction):
    def name(self) -> str:
        return "action_hub_lookup_customer"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        found = await self.port.lookup(tracker.sender_id, tracker.get_slot("email"), tracker.get_slot("phone"))
        if found is None:
            return [SlotSet("hub_contact_id", None)]
        return [SlotSet(f"hub_{k}" if not k.startswith("hub_") else k, v) for k, v in found.items()]


class UpdateLead(_HubAction):
    def __init__(self, port: HubPort, slots: Sequence[str]) -> None:
        super().__init__(port)
        self.slots = list(slots)

    def name(self) -> str:
        return "action_hub_update_lead"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        values = {s: tracker.get_slot(s) for s in self.slots if tracker.get_slot(s) not in (None, "")}
        result = await self.port.update_lead(tracker.sender_id, values)
        return [SlotSet(k, v) for k, v in result.items()]


class Handoff(_HubAction):
    def name(self) -> str:
        return "action_hub_handoff"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[EventType]:
        reason = tracker.get_slot("handoff_reason") or (tracker.latest_message.get("intent") or {}).get("name")
        result = await self.port.handoff(tracker.sender_id, str(reason or "rasa"), transcript(tracker))
        # Through the hub's rasa backend this tells the hub to hand off (it
        # does so with Rasa's texts in the same transaction).
        dispatcher.utter_message(json_message={"handoff": {"reason": str(reason or "rasa")[:64]}})
        return [SlotSet("hub_handed_off", bool(result.get("handed_off")))]
