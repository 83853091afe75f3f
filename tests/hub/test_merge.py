"""Merging two contacts found to be one person (``do_merge_contacts``): every
row about the person follows them (calls, campaign rows), their SMS consent is
the later decision (a withdrawal when that cannot be told), one campaign sends
them one message, and their lifecycle stage never goes back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hub.actions import do_merge_contacts
from hub.campaigns import actions as ca
from hub.campaigns.audience import consent_attributes
from hub.core import Channel, InboundMessage
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import AuditLog, Call, Campaign, CampaignRecipient, Contact
from tests.fakes.twilio import FakeTwilio
from tests.hub.campaigns.test_runner_stops import world
from tests.hub.twilio_helpers import ACCOUNT, TOKEN

OLD = datetime(2024, 1, 1, tzinfo=UTC)
NEW = OLD + timedelta(days=300)


def sms(sender: str, ext: str) -> InboundMessage:
    return InboundMessage(channel=Channel.SMS, inbox="sms:+15550001111", external_id=ext, sender=sender, body="hi")


async def two_customers(db: Database) -> tuple[IngestResult, IngestResult]:
    async with db.write() as s:
        a, b = await ingest_batch(s, [sms("+15550000001", "a1"), sms("+15550000002", "b1")])
        assert isinstance(a, IngestResult) and isinstance(b, IngestResult)
    return a, b


async def merge(db: Database, target_id: int, source_id: int) -> None:
    async with db.write() as s:
        target, source = await s.get(Contact, target_id), await s.get(Contact, source_id)
        assert target is not None and source is not None
        await do_merge_contacts(s, target, source, actor="agent:1")


async def test_calls_and_campaign_rows_follow_the_person(db: Database) -> None:
    a, b = await two_customers(db)
    async with db.write() as s:
        campaign = Campaign(name="spring", sender="promo", template="Hi")
        s.add(campaign)
        await s.flush()
        call = Call(
            call_sid="CA1",
            ticket_id=b.ticket_id,
            contact_id=b.contact_id,
            direction="inbound",
            customer="+15550000002",
            line="+15550001111",
            status="completed",
        )
        row = CampaignRecipient(
            campaign_id=campaign.id, contact_id=b.contact_id, phone="+15550000002", status="delivered"
        )
        s.add_all([call, row])
        await s.flush()
        call_id, row_id = call.id, row.id
    await merge(db, a.contact_id, b.contact_id)
    async with db.read() as s:
        moved_call, moved_row = await s.get(Call, call_id), await s.get(CampaignRecipient, row_id)
        assert moved_call is not None and moved_row is not None
        assert moved_call.contact_id == a.contact_id
        assert (moved_row.contact_id, moved_row.status) == (a.contact_id, "delivered")


def consent(value: bool, at: datetime | None, source: str) -> dict[str, Any]:
    attrs = consent_attributes(value, source, at or OLD)
    if at is None:
        del attrs["sms_consent_at"]
    return attrs


@pytest.mark.parametrize(
    ("target", "source", "kept"),
    [
        # The later decision wins, whichever contact it is on.
        (consent(True, OLD, "csv"), consent(False, NEW, "texted: stop marketing"), "source"),
        (consent(False, OLD, "asked"), consent(True, NEW, "signed up again"), "source"),
        (consent(True, NEW, "signed up again"), consent(False, OLD, "asked"), "target"),
        # Equal or missing times: the withdrawal.
        (consent(True, OLD, "csv"), consent(False, OLD, "asked"), "source"),
        (consent(True, None, "csv"), consent(False, NEW, "asked"), "source"),
        (consent(False, None, "asked"), consent(True, NEW, "csv"), "target"),
        ({**consent(True, OLD, "csv"), "sms_consent_at": "not a time"}, consent(False, OLD, "asked"), "source"),
        # One decision only: it is kept, whole.
        ({"language": "fa"}, consent(False, OLD, "asked"), "source"),
        (consent(True, NEW, "csv"), {"language": "fa"}, "target"),
        # Both agree: still the later record of it (when and how is what a complaint asks for).
        (consent(True, OLD, "csv"), consent(True, NEW, "web form"), "source"),
        # ... and when the times do not tell either, the target's, as for any attribute.
        (consent(True, OLD, "csv"), consent(True, OLD, "web form"), "target"),
        (consent(False, None, "asked"), consent(False, NEW, "texted STOP"), "target"),
    ],
)
async def test_the_merged_contact_keeps_the_later_consent_or_the_withdrawal(
    db: Database, target: dict[str, Any], source: dict[str, Any], kept: str
) -> None:
    a, b = await two_customers(db)
    async with db.write() as s:
        for cid, attrs in ((a.contact_id, target), (b.contact_id, source)):
            contact = await s.get(Contact, cid)
            assert contact is not None
            contact.attributes = {**attrs, "city": f"city of {cid}"}
    await merge(db, a.contact_id, b.contact_id)
    async with db.read() as s:
        merged = await s.get(Contact, a.contact_id)
        assert merged is not None
    chosen = target if kept == "target" else source
    keys = ("sms_consent", "sms_consent_at", "sms_consent_source")
    assert {k: merged.attributes.get(k) for k in keys} == {k: chosen.get(k) for k in keys}
    # Every other attribute: the target's still wins.
    assert merged.attributes["city"] == f"city of {a.contact_id}"
    assert merged.attributes.get("language") == (target.get("language") or source.get("language"))


async def recipients(db: Database, rows: list[tuple[int, str, str]]) -> tuple[int, list[int]]:
    async with db.write() as s:
        campaign = Campaign(name="spring", sender="promo", template="Hi", status="running")
        s.add(campaign)
        await s.flush()
        made = [CampaignRecipient(campaign_id=campaign.id, contact_id=c, phone=p, status=st) for c, p, st in rows]
        s.add_all(made)
        await s.flush()
        return campaign.id, [r.id for r in made]


async def statuses(db: Database, ids: list[int]) -> list[tuple[int, str, str | None]]:
    async with db.read() as s:
        rows = {r.id: r for r in (await s.scalars(select(CampaignRecipient))).all()}
    return [(rows[i].contact_id, rows[i].status, rows[i].reason) for i in ids]


@pytest.mark.parametrize(
    ("target_status", "source_status", "after"),
    [
        # Both waiting: the target's number gets it, once.
        ("pending", "pending", [("pending", None), ("skipped", "duplicate")]),
        # Already sent (or being sent) to one of the numbers: nothing more.
        ("sent", "pending", [("sent", None), ("skipped", "duplicate")]),
        ("pending", "sending", [("skipped", "duplicate"), ("sending", None)]),
        # The target's own row was skipped (no consent then, a number that opted out): the other one may still go.
        ("skipped", "pending", [("skipped", None), ("pending", None)]),
    ],
)
async def test_one_campaign_sends_the_merged_person_one_message(
    db: Database, target_status: str, source_status: str, after: list[tuple[str, str | None]]
) -> None:
    a, b = await two_customers(db)
    _, ids = await recipients(
        db, [(a.contact_id, "+15550000001", target_status), (b.contact_id, "+15550000002", source_status)]
    )
    # Another campaign with only one of them is left alone.
    _, (alone,) = await recipients(db, [(b.contact_id, "+15550000002", "pending")])
    await merge(db, a.contact_id, b.contact_id)
    assert await statuses(db, [*ids, alone]) == [
        *((a.contact_id, status, reason) for status, reason in after),
        (a.contact_id, "pending", None),
    ]
    async with db.read() as s:
        audit = (await s.scalars(select(AuditLog).where(AuditLog.action == "contact.merged"))).one()
    skipped = [i for i, (status, reason) in zip(ids, after, strict=True) if reason == "duplicate"]
    assert audit.data.get("campaign_recipients_skipped", []) == skipped


async def test_a_withdrawal_before_the_merge_stops_a_running_campaign(tmp_path: Path, db: Database) -> None:
    """Two recipients of one running campaign are one person: one of them
    asked for no more marketing SMS, then an agent merges that contact into
    the other (whose consent is older). Neither number is sent to."""
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=3) as w,
    ):
        kept, merged, other = await w.rows()
        async with db.write() as s:
            await ca.do_set_sms_consent(s, merged.contact_id, consent=False, source="texted us", actor="agent:1")
        await merge(db, kept.contact_id, merged.contact_id)
        assert await w.runner().run_campaign(w.campaign_id) == "completed"
        assert {m["to"] for m in fake.messages} == {other.phone}
        assert await statuses(db, [kept.id, merged.id]) == [
            (kept.contact_id, "skipped", "no_consent"),
            (kept.contact_id, "skipped", "duplicate"),
        ]


async def test_a_withdrawal_after_the_merge_stops_a_running_campaign(tmp_path: Path, db: Database) -> None:
    """The merged-away contact's campaign row follows the person, so a
    withdrawal recorded on the surviving contact is honoured for it."""
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=2) as w,
    ):
        first, other = await w.rows()
        async with db.write() as s:
            person = Contact(name="Web visitor", attributes={}, tags=[])
            s.add(person)
            await s.flush()
            person_id = person.id
        await merge(db, person_id, first.contact_id)
        async with db.write() as s:
            await ca.do_set_sms_consent(s, person_id, consent=False, source="customer asked", actor="agent:1")
        assert await w.runner().run_campaign(w.campaign_id) == "completed"
        assert {m["to"] for m in fake.messages} == {other.phone}
        assert await statuses(db, [first.id]) == [(person_id, "skipped", "no_consent")]


@pytest.mark.parametrize(
    ("target", "source", "merged"),
    [
        ("lead", "sales_qualified", "sales_qualified"),
        ("marketing_qualified", "lead", "marketing_qualified"),
        (None, "lead", "lead"),
        ("lead", None, "lead"),
        # A stage set outside the bot's ladder: nothing says how it compares, the target's stays.
        ("customer", "sales_qualified", "customer"),
        ("lead", "customer", "lead"),
    ],
)
async def test_the_lifecycle_stage_never_goes_back(
    db: Database, target: str | None, source: str | None, merged: str | None
) -> None:
    a, b = await two_customers(db)
    async with db.write() as s:
        for cid, stage in ((a.contact_id, target), (b.contact_id, source)):
            contact = await s.get(Contact, cid)
            assert contact is not None
            contact.lifecycle_stage = stage
    await merge(db, a.contact_id, b.contact_id)
    async with db.read() as s:
        contact = await s.get(Contact, a.contact_id)
        assert contact is not None
        assert contact.lifecycle_stage == merged
