"""What the workers do with each event from the stream.

A dispatch table from event kind to an ordered list of steps (zulip's webhook
views). The spine registers routing and sending; channels, the bot and
routing's later parts add their own steps with :meth:`EventProcessor.subscribe`
in the composition root, without touching this module. Steps for one event run
in registration order (routing before the bot, so the bot sees whether the
ticket is its own). Every step is idempotent, because the stream delivers at
least once: routing applies a decision only if the ticket is still in the state
the decision was made for; sending claims the message row; live events are
re-sendable by nature.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import select, update

from hub.core import TicketEventKind, TicketStatus
from hub.sender import Sender
from hub.stream.base import Event, LiveBus
from routing import Decision, TicketSnapshot, decide
from storage.db import Database
from storage.ingest import add_outbox, outbox_row
from storage.models import Inbox, Ticket, TicketEventRow
from storage.views import ticket_view

log = logging.getLogger(__name__)

AGENTS_CHANNEL = "agents"

Step = Callable[[Event], Awaitable[None]]


class EventProcessor:
    def __init__(self, db: Database, live: LiveBus, sender: Sender) -> None:
        self.db = db
        self.live = live
        self.sender = sender
        self._bot_inboxes: dict[str, bool] = {}
        self._steps: dict[str, list[Step]] = {}
        self.subscribe(TicketEventKind.MESSAGE_RECEIVED, self._on_received)
        self.subscribe(TicketEventKind.MESSAGE_CREATED, self._on_created)

    def subscribe(self, kind: TicketEventKind | str, step: Step) -> None:
        """Run ``step`` for every event of ``kind``, after the steps registered
        before it. A step that raises fails the event, which the stream
        redelivers (and dead-letters after ``workers.max_deliveries``)."""
        self._steps.setdefault(str(kind), []).append(step)

    async def handle(self, events: Sequence[Event]) -> None:
        # Per-event work for the kinds that need it, then one live fan-out.
        for event in events:
            for step in self._steps.get(event.kind, ()):
                await step(event)
        await self.live.publish_many(
            [(AGENTS_CHANNEL, {"type": e.kind, **{k: v for k, v in e.payload.items() if k != "kind"}}) for e in events]
        )

    async def _bot_enabled(self, inbox: str) -> bool:
        if inbox not in self._bot_inboxes:
            async with self.db.read() as session:
                enabled = await session.scalar(select(Inbox.bot_enabled).where(Inbox.key == inbox))
            self._bot_inboxes[inbox] = bool(enabled)
        return self._bot_inboxes[inbox]

    async def _on_received(self, event: Event) -> None:
        ticket: dict[str, Any] = event.payload["ticket"]
        inbox = event.payload["message"].get("inbox") or ""
        snapshot = TicketSnapshot(
            id=ticket["id"],
            status=TicketStatus(ticket["status"]),
            channel=ticket["channel"],
            inbox=inbox,
            assignee_id=ticket["assignee_id"],
            team_id=ticket["team_id"],
            ticket_created=bool(event.payload.get("ticket_created")),
            # Out-of-office and bulk mail go to people, never to the bot: two
            # automatic responders would answer each other forever.
            bot_enabled=await self._bot_enabled(inbox) and not event.payload["message"].get("auto_reply"),
            bot_silenced=False,
        )
        decision = decide(snapshot)
        if decision.changes_anything:
            changed = await self.apply(snapshot, decision)
            if changed is not None:
                event.payload["ticket"] = changed

    async def apply(self, snapshot: TicketSnapshot, decision: Decision) -> dict[str, Any] | None:
        """Apply a routing decision atomically, only if the ticket is still as it
        was decided on (a redelivered event, or an agent faster than the router,
        finds it changed and leaves it alone)."""
        values: dict[str, Any] = {}
        if decision.status is not None:
            values["status"] = decision.status.value
        if decision.assignee_id is not None:
            values["assignee_id"] = decision.assignee_id
        if decision.team_id is not None:
            values["team_id"] = decision.team_id
        async with self.db.write() as session:
            result = await session.execute(
                update(Ticket)
                .where(
                    Ticket.id == snapshot.id,
                    Ticket.status == snapshot.status.value,
                    Ticket.assignee_id.is_(None)
                    if snapshot.assignee_id is None
                    else Ticket.assignee_id == snapshot.assignee_id,
                    Ticket.bot_silenced.is_(False),
                )
                .values(**values)
                .returning(Ticket.id)
                .execution_options(synchronize_session=False)
            )
            if result.scalar_one_or_none() is None:
                return None
            ticket = await session.get(Ticket, snapshot.id, populate_existing=True)
            assert ticket is not None
            data = {"reason": decision.reason, **{k: v for k, v in values.items()}}
            session.add(
                TicketEventRow(
                    ticket_id=ticket.id,
                    contact_id=ticket.contact_id,
                    kind=TicketEventKind.STATUS_CHANGED.value if "status" in values else TicketEventKind.ASSIGNED.value,
                    actor="router",
                    data=data,
                )
            )
            view = ticket_view(ticket)
            # Other consumers (the bot, analytics) hear about it on the stream too;
            # marked so this processor does not route its own event again.
            await add_outbox(
                session,
                [
                    outbox_row(
                        TicketEventKind.ROUTED.value, ticket.id, {"ticket": view, "actor": "router", "data": data}
                    )
                ],
            )
            return view

    async def _on_created(self, event: Event) -> None:
        message = event.payload["message"]
        if message["direction"] == "out" and not message["private"] and message["status"] == "queued":
            await self.sender.deliver(int(message["id"]))
