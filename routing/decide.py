"""The routing decision: a pure function of the ticket and what the hub knows.

This is the first step only — the bot as first responder where an inbox has it
enabled, otherwise the ticket waits open and unassigned in the shared inbox.
Teams, skills, capacity and SLAs (the routing issue) extend the snapshot and
the decision without changing how the hub applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.core import TicketStatus


@dataclass(frozen=True, slots=True)
class TicketSnapshot:
    id: int
    status: TicketStatus
    channel: str
    inbox: str
    assignee_id: int | None
    team_id: int | None
    ticket_created: bool
    bot_enabled: bool
    bot_silenced: bool


@dataclass(frozen=True, slots=True)
class Decision:
    reason: str
    status: TicketStatus | None = None
    assignee_id: int | None = None
    team_id: int | None = None

    @property
    def changes_anything(self) -> bool:
        return self.status is not None or self.assignee_id is not None or self.team_id is not None


def decide(ticket: TicketSnapshot) -> Decision:
    if ticket.assignee_id is not None:
        return Decision(reason="already assigned")
    if ticket.status is not TicketStatus.OPEN:
        return Decision(reason=f"ticket is {ticket.status.value}")
    if ticket.bot_enabled and not ticket.bot_silenced and ticket.ticket_created:
        return Decision(reason="the bot answers first on this inbox", status=TicketStatus.PENDING)
    return Decision(reason="waits in the shared inbox, open and unassigned")
