"""The opt-out ledger: concurrent questions share lookups, and every answer is
as fresh as the moment it was asked."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event

from hub.telephony.ledger import SqlOptOutLedger, do_set_opt_out
from storage.db import Database


async def test_concurrent_questions_share_one_lookup_and_get_their_own_answers(db: Database) -> None:
    async with db.write() as s:
        await do_set_opt_out(s, phone="+15550000001", sender="promo", opted_out=True, source="STOP")
        await do_set_opt_out(s, phone="+15550000002", sender="support", opted_out=True, source="لغو")
        # Opted out, then back in.
        await do_set_opt_out(s, phone="+15550000003", sender="promo", opted_out=True, source="STOP")
        await do_set_opt_out(s, phone="+15550000003", sender="promo", opted_out=False, source="START")
    selects: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM sms_opt_outs" in statement:
            selects.append(statement)

    event.listen(db.read_engine.sync_engine, "before_cursor_execute", count)
    ledger = SqlOptOutLedger(db)
    questions = [(f"+1555000000{i % 4}", sender) for i in range(200) for sender in ("promo", "support")]
    answers = await asyncio.gather(*(ledger.opted_out(phone, sender) for phone, sender in questions))
    refused = {q for q, a in zip(questions, answers, strict=True) if a is not None}
    assert refused == {("+15550000001", "promo"), ("+15550000002", "support")}
    assert all("nothing is sent until they text START" in a for a in answers if a)
    # 400 questions, two senders: a handful of queries, not 400.
    assert 2 <= len(selects) <= 4

    # A STOP stored now is seen by the next question.
    async with db.write() as s:
        await do_set_opt_out(s, phone="+15550000000", sender="promo", opted_out=True, source="STOP")
    assert await ledger.opted_out("+15550000000", "promo") is not None


async def test_a_failed_lookup_fails_every_question_and_the_next_ones_work(db: Database) -> None:
    ledger = SqlOptOutLedger(db)
    real = ledger._opted_out_rows
    calls = 0

    async def flaky(waiting: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database gone")
        return await real(waiting)

    ledger._opted_out_rows = flaky  # type: ignore[method-assign]
    results = await asyncio.gather(
        *(ledger.opted_out(f"+1555000000{i}", "promo") for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await ledger.opted_out("+15550000001", "promo") is None
