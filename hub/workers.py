"""What the workers do with each event from the stream.

A dispatch table from event kind to an ordered list of steps (zulip's webhook
views). The spine registers routing and sending; channels, the bot and
routing's other steps (handoff, status changes, SLA) add their own with
:meth:`EventProcessor.subscribe` in the composition root. Steps for one event run
in registration order (routing before the bot, so the bot sees whether the
ticket is its own). Every step is idempotent, because the stream delivers at
least once: routing applies a decision only if the ticket is still in the state
the decision was made for; sending claims the message row; live events are
re-sendable by nature.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from hub.core import TicketEventKind
from hub.router import Router
from hub.sender import Sender
from hub.stream.base import Event, LiveBus
from storage.db import Database

log = logging.getLogger(__name__)

AGENTS_CHANNEL = "agents"

Step = Callable[[Event], Awaitable[None]]


class EventProcessor:
    def __init__(self, db: Database, live: LiveBus, sender: Sender, router: Router | None = None) -> None:
        self.db = db
        self.live = live
        self.sender = sender
        self.router = router or Router(db)
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

    async def _on_received(self, event: Event) -> None:
        # Routing is the first step of a new message: the bot, a team, an agent
        # or the team's queue (see hub/router.py).
        await self.router.on_received(event)

    async def _on_created(self, event: Event) -> None:
        message = event.payload["message"]
        if message["direction"] == "out" and not message["private"] and message["status"] == "queued":
            await self.sender.deliver(int(message["id"]))
