"""A 2,000-recipient campaign through a running hub and the local Twilio fake:
the sender's rate holds (measured on the fake's own timestamps), quiet hours
hold, opted-out and non-consenting contacts are excluded, a STOP in the middle
of the campaign is honoured, receipts and replies land on the recipients, and
nobody gets a message twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from hub.campaigns.actions import PENDING, SKIPPED
from hub.telephony.ledger import do_set_opt_out
from hub.text import sms_segments
from storage.models import CampaignRecipient, Message
from tests.hub.campaigns.helpers import iran_numbers, seed_contacts, us_numbers
from tests.hub.twilio_helpers import TwilioHub, eventually, twilio_hub

PROMO = "+15550002222"
RATE = 400.0

TEMPLATE = (
    "{% if contact.language == 'fa' %}سلام {{ first_name }}، حراج تابستانه امروز شروع می‌شود: ۲۰٪ تخفیف روی همه چیز."
    "{% else %}Hi {{ first_name }}, our summer sale starts today: 20% off everything at example.com/sale "
    "- show this text in store for a free gift [while stocks last].{% endif %}"
)


def _quiet_now_in_tehran() -> dict[str, str]:
    """A quiet window around the present moment in Tehran (and so far from the
    present in Los Angeles, 10-12 hours behind)."""
    now = datetime.now(ZoneInfo("Asia/Tehran"))
    return {"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": (now + timedelta(hours=1)).strftime("%H:%M")}


def _messages(t: TwilioHub) -> list[Any]:
    return [r for r in t.fake.requests if r.path.endswith("/Messages.json") and r.one("From") == PROMO]


async def _recipients(t: TwilioHub, campaign_id: int) -> dict[str, CampaignRecipient]:
    async with t.hub.db.read() as s:
        rows = (await s.scalars(select(CampaignRecipient).where(CampaignRecipient.campaign_id == campaign_id))).all()
    return {r.phone: r for r in rows}


async def test_two_thousand_recipients(tmp_path: Path) -> None:
    senders = [{"inbox": "promo", "number": PROMO, "messages_per_second": RATE}]
    overrides = {"twilio.senders": senders, "campaigns.quiet_hours": _quiet_now_in_tehran()}
    async with twilio_hub(tmp_path, overrides=overrides) as t:
        db = t.hub.db
        english = us_numbers(1460)
        persian = us_numbers(500, start=1460)
        no_consent = us_numbers(20, start=1960)
        opted = us_numbers(10, start=1980)
        tehran = iran_numbers(10)
        await seed_contacts(db, english, tags=["vip"], names=[f"Ann {i}" for i in range(len(english))])
        await seed_contacts(db, persian, attributes={"language": "fa"}, names=["سارا"] * len(persian))
        await seed_contacts(db, no_consent, consent=None)
        await seed_contacts(db, opted)
        await seed_contacts(db, tehran)
        async with db.write() as s:
            for phone in opted:
                await do_set_opt_out(s, phone=phone, sender=PROMO, opted_out=True, source="texted 'STOP'")
        agent = await t.agent()
        campaign = await agent.post(
            "/api/v1/campaigns",
            {"name": "Summer sale", "sender": "promo", "template": TEMPLATE, "audience": {"kind": "segment"}},
            status=201,
        )
        cid = campaign["id"]
        assert campaign["status"] == "draft"
        assert campaign["total"] == 2000
        assert campaign["counts"]["pending"] == 1970  # 1,960 Americans and 10 in Tehran
        assert campaign["audience"]["skipped"] == {"no_consent": 20, "opted_out": 10}
        en_seg, fa_seg = (sms_segments(b).segments for b in await _bodies(t, agent, cid, persian[0]))
        assert (en_seg, fa_seg) == (2, 2)  # GSM-7 over 160 with [ ]; UCS-2 over 70
        assert campaign["estimate"]["segments"] == 1970 * 2
        assert campaign["estimate"]["cost"] == round(1970 * 2 * 0.0083, 4)
        # Nothing goes before the start.
        await asyncio.sleep(0.3)
        assert _messages(t) == []

        await agent.post(f"/api/v1/campaigns/{cid}/start", {}, status=200)
        stopper = english[-1]  # the last to be sent to: it texts STOP meanwhile
        await eventually(lambda: _sent_at_least(t, 200), timeout=60)
        assert await t.sms("STOP", sid="SM" + "5" * 32, frm=stopper, to=PROMO) == 200

        async def done_with_americans() -> bool:
            view = await agent.get(f"/api/v1/campaigns/{cid}")
            c = view["counts"]
            return bool(c["pending"] == 10 and c["sending"] == 0)

        await eventually(done_with_americans, timeout=90)
        rows = await _recipients(t, cid)
        sent = Counter(r.one("To") for r in _messages(t))
        assert max(sent.values()) == 1, "someone got the campaign twice"
        assert (
            sent[stopper] == 0
            and rows[stopper].status == SKIPPED
            and (rows[stopper].reason or "").startswith("opted_out")
        )
        assert not any(sent[p] for p in no_consent + opted + tehran)
        assert len(sent) == 1959
        # Quiet hours: Tehran's recipients wait for the end of the window, in Tehran.
        for phone in tehran:
            row = rows[phone]
            assert row.status == PENDING and row.timezones == ["Asia/Tehran"]
            assert row.not_before is not None and row.not_before > datetime.now(UTC)
            local_end = row.not_before.astimezone(ZoneInfo("Asia/Tehran")).strftime("%H:%M")
            assert local_end == overrides["campaigns.quiet_hours"]["end"]  # type: ignore[index]
        # The throttle, as Twilio saw it.
        _assert_paced(_messages(t), RATE)
        # Receipts (the fake reports sent, then delivered).
        await t.fake.settled()

        async def all_delivered() -> bool:
            report = await agent.get(f"/api/v1/campaigns/{cid}/report")
            return bool(report["delivered"] == 1959)

        await eventually(all_delivered, timeout=60)
        # A reply opens a ticket attributed to the campaign; a STOP reply counts as opted out.
        replier, quitter = english[3], persian[7]
        assert await t.sms("Yes please, tell me more", sid="SM" + "6" * 32, frm=replier, to=PROMO) == 200
        assert await t.sms("لغو", sid="SM" + "7" * 32, frm=quitter, to=PROMO) == 200

        async def replied() -> dict[str, Any] | None:
            report: dict[str, Any] = await agent.get(f"/api/v1/campaigns/{cid}/report")
            return report if report["replied"] == 1 and report["opted_out"] == 1 else None

        report = await eventually(replied)
        async with db.read() as s:
            reply = await s.scalar(select(Message).where(Message.external_id == "SM" + "6" * 32))
        assert reply is not None and reply.extras["campaign_id"] == cid
        ticket = await agent.get(f"/api/v1/tickets/{reply.ticket_id}")
        assert ticket["status"] in ("open", "pending")
        timeline = await agent.get(f"/api/v1/contacts/{reply.contact_id}/timeline")
        sources = [e["event"]["data"] for e in timeline["items"] if e.get("event", {}).get("kind") == "contact.source"]
        assert sources and sources[0]["source"] == f"campaign:{cid}"
        assert report["sent"] == 1959 and report["failed"] == 0
        assert report["skipped"] == {"no_consent": 20, "opted_out": 11}
        assert report["segments_used"] == 1959 * 2
        assert report["cost"] == round(1959 * 2 * 0.0083, 4)
        # The export has every recipient with their status.
        async with t.http.get(agent.base + f"/api/v1/campaigns/{cid}/recipients.csv", headers=agent.headers) as r:
            assert r.status == 200 and r.content_type == "text/csv"
            lines = (await r.text()).splitlines()
        assert len(lines) == 2001 and lines[0].startswith("recipient_id,contact_id,phone,status")
        assert sum(",delivered," in line for line in lines) == 1959


async def _bodies(t: TwilioHub, agent: Any, cid: int, persian: str) -> tuple[str, str]:
    """The English body as the preview shows it, and a Persian speaker's as
    rendered for them (the preview's first 50 are all English speakers)."""
    preview = (await agent.get(f"/api/v1/campaigns/{cid}/preview?limit=50"))["items"]
    en = next(p for p in preview if p["encoding"] == "GSM-7")
    page = await agent.get(f"/api/v1/campaigns/{cid}/preview?limit=50")
    assert page["items"] == preview
    assert en["body"].endswith("\nReply STOP to opt out.")
    async with t.hub.db.read() as s:
        row = await s.scalar(
            select(CampaignRecipient).where(CampaignRecipient.campaign_id == cid, CampaignRecipient.phone == persian)
        )
    assert row is not None and row.encoding == "UCS-2"
    assert row.body == (
        "سلام سارا، حراج تابستانه امروز شروع می‌شود: ۲۰٪ تخفیف روی همه چیز.\nبرای لغو اشتراک «لغو» را بفرستید."
    )
    return str(en["body"]), row.body


async def _sent_at_least(t: TwilioHub, n: int) -> bool:
    return len(_messages(t)) >= n


def _assert_paced(requests: list[Any], rate: float) -> None:
    """In no one-second window did Twilio get more segments than the rate
    allows (10% for the arrival jitter of a busy machine), and the whole run
    took at least as long as its segments need at that rate."""
    stamps = sorted((r.at, sms_segments(r.one("Body") or "").segments) for r in requests)
    j = 0
    window = 0
    worst = 0
    for i, (at, seg) in enumerate(stamps):
        window += seg
        while stamps[j][0] <= at - 1.0:
            window -= stamps[j][1]
            j += 1
        worst = max(worst, window)
        assert i >= j
    assert worst <= rate * 1.1 + 4, f"{worst} segments within one second at {rate}/s"
    total = sum(seg for _, seg in stamps[:-1])
    assert stamps[-1][0] - stamps[0][0] >= 0.9 * total / rate
