"""Who owns a ticket now. The decision is pure; the hub applies it."""

from routing.decide import Decision, TicketSnapshot, decide

__all__ = ["Decision", "TicketSnapshot", "decide"]
