"""The knowledge-gap report: questions the bot handed off or whose answer the
customer said did not help, so admins can grow the knowledge base from real
traffic."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import BotTurn
from storage.queries import cursor_id, decode_cursor, encode_cursor
from storage.views import iso

# Handoffs that say nothing about the knowledge base (the customer asked for a
# person, a VIP, a qualified lead) are left out; an unhelpful answer shows as
# the answered question, not as the "No" that followed it, and a rejected
# clarification as the question, not as the "None of these".
GAP_REASONS = ("no_match", "repeated_misses")


async def gaps(session: AsyncSession, *, cursor: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the report, newest first, and the cursor of the next (None
    on the last page)."""
    if limit < 1:
        # A page of nothing could never move the cursor on.
        raise ValueError(f"limit must be at least 1, not {limit}")
    stmt = select(BotTurn).where(
        or_(BotTurn.feedback == "no", (BotTurn.action == "handoff") & BotTurn.reason.in_(GAP_REASONS))
    )
    if cursor:
        (last,) = decode_cursor(cursor, 1)
        stmt = stmt.where(BotTurn.id < cursor_id(last))
    rows = list((await session.scalars(stmt.order_by(BotTurn.id.desc()).limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "turn_id": t.id,
            "question": t.question,
            "language": t.language,
            "why": ("none_of_these" if t.action == "clarify" else "unhelpful") if t.feedback == "no" else t.reason,
            "entry_id": t.entry_key,
            "confidence": t.confidence,
            "candidates": t.candidates,
            "ticket_id": t.ticket_id,
            "contact_id": t.contact_id,
            "at": iso(t.created_at),
        }
        for t in rows
    ]
    return items, encode_cursor(rows[-1].id) if more else None
