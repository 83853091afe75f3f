"""Who owns a ticket now: bot, team or agent. The decisions are pure (rules,
agent choice, business hours, SLA arithmetic, automation matching); the hub
loads what they need and applies them (``hub/router.py``)."""

from routing.decide import (
    AgentState,
    Decision,
    RoutingSnapshot,
    StickyOwner,
    TeamState,
    TicketSnapshot,
    choose_agent,
    decide,
)

__all__ = [
    "AgentState",
    "Decision",
    "RoutingSnapshot",
    "StickyOwner",
    "TeamState",
    "TicketSnapshot",
    "choose_agent",
    "decide",
]
