"""The SMS opt-out ledger, kept in the database (``sms_opt_outs``), keyed by
the customer's number and the sender (a number or a Messaging Service).

It is consulted inside :meth:`channels.twilio_sms.TwilioSmsChannel.send_sms`,
the one path every SMS takes (agents' and the bot's replies, replies on phone
tickets, campaigns), so nothing can send around it."""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.actions import audit
from hub.core import utcnow
from storage.db import Database
from storage.ingest import dialect_insert
from storage.models import SmsOptOut


async def do_set_opt_out(
    session: AsyncSession, *, phone: str, sender: str, opted_out: bool, source: str, actor: str = "contact"
) -> bool:
    """Record that ``phone`` opted out of (or back in to) SMS from ``sender``.
    Returns False, changing nothing, when the ledger already says so."""
    current = await session.scalar(
        select(SmsOptOut).where(SmsOptOut.phone == phone, SmsOptOut.sender == sender).with_for_update()
    )
    if current is not None and current.opted_out == opted_out:
        return False
    if current is None and not opted_out:
        return False  # never opted out: nothing to undo
    now = utcnow()
    values = {"opted_out": opted_out, "source": source[:200], "changed_at": now}
    await session.execute(
        dialect_insert(session, SmsOptOut)
        .values(phone=phone, sender=sender, **values)
        .on_conflict_do_update(index_elements=["phone", "sender"], set_=values)
    )
    await audit(
        session,
        actor,
        "sms.opt_out" if opted_out else "sms.opt_in",
        "sms_opt_out",
        None,
        {"phone": phone, "sender": sender, "source": source},
    )
    return True


LINGER_SECONDS = 0.003


class SqlOptOutLedger:
    """:class:`channels.twilio_sms.OptOutLedger` over the database.

    Asked before every SMS (a campaign asks 100,000 times, dozens at once): the
    questions asked while a lookup runs wait for the next one, and each lookup
    answers all of them in one query per sender. Every answer still comes from
    a query that started after it was asked, so a STOP stored a moment ago is
    honoured."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: dict[str, dict[str, list[asyncio.Future[str | None]]]] = {}
        self._lookups: asyncio.Task[None] | None = None

    async def opted_out(self, phone: str, sender: str) -> str | None:
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(sender, {}).setdefault(phone, []).append(fut)
        if self._lookups is None or self._lookups.done():
            self._lookups = asyncio.create_task(self._look_up())
        return await fut

    async def _look_up(self) -> None:
        while self._waiting:
            # Questions asked in the next few milliseconds join in: each lookup
            # costs a pooled connection and several thread hand-offs on SQLite.
            await asyncio.sleep(LINGER_SECONDS)
            waiting, self._waiting = self._waiting, {}
            try:
                found = await self._opted_out_rows(waiting)
            except Exception as exc:  # noqa: BLE001 - every caller hears it, none waits forever
                for futs in (f for phones in waiting.values() for f in phones.values()):
                    for fut in futs:
                        if not fut.done():
                            fut.set_exception(exc)
                continue
            for sender, phones in waiting.items():
                for phone, futs in phones.items():
                    answer = found.get((sender, phone))
                    for fut in futs:
                        if not fut.done():
                            fut.set_result(answer)

    async def _opted_out_rows(
        self, waiting: dict[str, dict[str, list[asyncio.Future[str | None]]]]
    ) -> dict[tuple[str, str], str]:
        found: dict[tuple[str, str], str] = {}
        # One Core query per sender and 500 numbers, on a pooled connection
        # without an ORM session around it.
        async with self.db.read_engine.connect() as conn:
            for sender, phones in waiting.items():
                numbers = list(phones)
                for start in range(0, len(numbers), 500):
                    rows = await conn.execute(
                        select(SmsOptOut.phone, SmsOptOut.changed_at, SmsOptOut.source).where(
                            SmsOptOut.sender == sender,
                            SmsOptOut.opted_out.is_(True),
                            SmsOptOut.phone.in_(numbers[start : start + 500]),
                        )
                    )
                    for row in rows.all():
                        found[(sender, row.phone)] = (
                            f"{row.phone} opted out of SMS from {sender} on {row.changed_at:%Y-%m-%d %H:%M} UTC "
                            f"({row.source}); nothing is sent until they text START"
                        )
        return found

    async def record_opt_out(self, phone: str, sender: str, source: str) -> None:
        async with self.db.write() as session:
            await do_set_opt_out(session, phone=phone, sender=sender, opted_out=True, source=source, actor="twilio")

    async def opted_out_numbers(self, sender: str, phones: list[str]) -> set[str]:
        """Which of ``phones`` opted out of ``sender`` (for excluding a campaign's
        audience up front, in one query per 500 numbers)."""
        out: set[str] = set()
        async with self.db.read() as session:
            for start in range(0, len(phones), 500):
                rows = await session.scalars(
                    select(SmsOptOut.phone).where(
                        SmsOptOut.sender == sender,
                        SmsOptOut.opted_out.is_(True),
                        SmsOptOut.phone.in_(phones[start : start + 500]),
                    )
                )
                out.update(rows.all())
        return out
