"""An opt-out keyword Twilio does not know («لغو», «توقف») is confirmed by the
hub (``twilio.opt_out.stop_reply``), once, past the ledger that now refuses
everything else; Twilio's own keywords are left to Twilio to confirm."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import select

from storage.models import Message, SmsOptOut
from tests.hub.twilio_helpers import CUSTOMER, TwilioHub, eventually, twilio_hub

STOP_REPLY = {"en": "You are unsubscribed.", "fa": "اشتراک شما لغو شد."}


def new_sid() -> str:
    return "SM" + secrets.token_hex(16)


async def opt_out_notes(t: TwilioHub) -> int:
    async with t.hub.db.read() as s:
        notes = (await s.scalars(select(Message.body).where(Message.private.is_(True)))).all()
    return sum("opted out" in n for n in notes)


async def opted_out(t: TwilioHub) -> bool:
    async with t.hub.db.read() as s:
        row = await s.scalar(select(SmsOptOut).where(SmsOptOut.phone == CUSTOMER))
        return row is not None and row.opted_out


async def test_a_persian_opt_out_is_confirmed_once(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides={"twilio.opt_out.stop_reply": STOP_REPLY}) as t:
        agent = await t.agent()
        assert await t.sms("سلام", sid=new_sid()) == 200
        assert await t.sms("لغو", sid=new_sid()) == 200
        await eventually(lambda: opted_out(t))

        async def confirmed() -> list[dict[str, Any]]:
            return list(t.fake.messages)

        (sent,) = await eventually(confirmed)
        assert (sent["body"], sent["to"]) == ("اشتراک شما لغو شد.", CUSTOMER)

        async def recorded_sent() -> Message | None:
            # The fake has it before the sender has recorded Twilio's answer.
            async with t.hub.db.read() as s:
                row = await s.scalar(select(Message).where(Message.body == "اشتراک شما لغو شد."))
            return row if row is not None and row.status in ("sent", "delivered") else None

        row = await eventually(recorded_sent)
        assert not row.private
        ticket_id = row.ticket_id
        # The ledger still refuses everything else.
        reply = await agent.post(f"/api/v1/tickets/{ticket_id}/messages", {"body": "Are you sure?"}, status=201)

        async def failed() -> dict[str, Any] | None:
            msgs = (await agent.get(f"/api/v1/tickets/{ticket_id}"))["messages"]
            m = next(m for m in msgs if m["id"] == reply["id"])
            return m if m["status"] == "failed" else None

        assert "opted out" in (await eventually(failed))["status_reason"]
        # Already opted out: the second keyword changes nothing and is not confirmed again.
        assert await t.sms("توقف", sid=new_sid()) == 200

        async def keyword_handled() -> bool:
            async with t.hub.db.read() as s:
                row = await s.scalar(select(Message).where(Message.body == "توقف"))
                return row is not None and (row.extras or {}).get("keyword") == "stop"

        await eventually(keyword_handled)
        await t.hub.sender.sweep_once()
        assert len(t.fake.messages) == 1
        assert await opt_out_notes(t) == 1


async def test_twilio_confirms_its_own_stop(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides={"twilio.opt_out.stop_reply": STOP_REPLY}) as t:
        assert await t.sms("Hello", sid=new_sid()) == 200
        assert await t.sms("STOP", sid=new_sid()) == 200
        await eventually(lambda: opted_out(t))

        async def noted() -> bool:
            return await opt_out_notes(t) == 1

        await eventually(noted)
        await t.hub.sender.sweep_once()
        assert t.fake.messages == []
        async with t.hub.db.read() as s:
            assert await s.scalar(select(Message).where(Message.body == "You are unsubscribed.")) is None


def test_stop_reply_is_configured_by_default() -> None:
    from hub.config import TwilioOptOutConfig

    assert TwilioOptOutConfig().stop_reply["fa"]
