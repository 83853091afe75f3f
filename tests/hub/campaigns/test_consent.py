"""SMS consent, on both engines: a CSV cannot write it except through its
``consent`` column (a column named ``sms_consent`` used to become an
attribute and overwrite a withdrawal, after which a list's "yes" counted as
new consent); anything but a "yes" in its place is never taken back by a
list; and a withdrawal is never sent to, whatever
``campaigns.require_consent`` says (it only decides about contacts never
asked)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from hub.campaigns import actions as ca
from hub.campaigns.audience import CsvInvalid, SegmentFilter, parse_csv, sms_consent
from storage.db import Database
from storage.models import CampaignRecipient, Contact
from tests.fakes.twilio import FakeTwilio
from tests.hub.campaigns.helpers import csv_campaign, promo_config, seed_contacts, twilio_service, us_numbers
from tests.hub.campaigns.test_runner_stops import _sends, world
from tests.hub.twilio_helpers import ACCOUNT, TOKEN


@pytest.mark.parametrize("column", ["sms_consent", "SMS_Consent_At", " sms_consent_source "])
def test_a_csv_column_named_after_consent_is_refused(column: str) -> None:
    with pytest.raises(CsvInvalid, match=f"column {column.strip().casefold()} is not allowed"):
        parse_csv(f"phone,{column},city\n+14155550100,yes,SF\n", "US")


@pytest.mark.parametrize(
    ("attributes", "consent"),
    [
        ({}, None),
        ({"sms_consent": None}, None),
        ({"sms_consent": True}, True),
        ({"sms_consent": False}, False),
        # Left by an import before such columns were refused, or by a bot: no "yes".
        ({"sms_consent": "yes"}, False),
        ({"sms_consent": "whatever"}, False),
        ({"sms_consent": 1}, False),
    ],
)
def test_only_true_is_consent(attributes: dict[str, object], consent: bool | None) -> None:
    assert sms_consent(attributes) is consent


async def _recipients(db: Database, campaign_id: int) -> dict[str, tuple[str, str | None]]:
    async with db.read() as s:
        rows = await s.execute(
            select(CampaignRecipient.phone, CampaignRecipient.status, CampaignRecipient.reason).where(
                CampaignRecipient.campaign_id == campaign_id
            )
        )
        return {phone: (status, reason) for phone, status, reason in rows.all()}


async def test_a_list_never_takes_back_a_withdrawal_whatever_holds_its_place(tmp_path: Path, db: Database) -> None:
    """The customer withdrew; an earlier import wrote a string over the
    answer (the withdrawal's time and source still beside it). A list's "yes"
    does not count as new consent."""
    phones = us_numbers(2)
    withdrew = (await seed_contacts(db, phones[:1], attributes={"sms_consent_source": "customer asked"}))[0]
    async with db.write() as s:
        contact = await s.get(Contact, withdrew)
        assert contact is not None
        contact.attributes = {**contact.attributes, "sms_consent": "whatever"}
    parsed = parse_csv(f"phone,consent\n{phones[0]},yes\n{phones[1]},yes\n", "US")
    campaign_id, summary = await csv_campaign(tmp_path, db, parsed)
    assert summary["consent_withdrawals_kept"] == 1
    assert summary["recipients"] == 1 and summary["skipped"] == {"no_consent": 1}
    async with db.read() as s:
        contact = await s.get(Contact, withdrew)
    assert contact is not None
    assert (contact.attributes["sms_consent"], contact.attributes["sms_consent_source"]) == (
        "whatever",
        "customer asked",
    )
    assert await _recipients(db, campaign_id) == {phones[0]: ("skipped", "no_consent"), phones[1]: ("pending", None)}


async def test_a_withdrawal_is_excluded_without_require_consent(tmp_path: Path, db: Database) -> None:
    config = promo_config(tmp_path)
    config.campaigns.require_consent = False
    twilio = twilio_service(config, db)
    phones = us_numbers(3)
    await seed_contacts(db, phones[:1], consent=False)
    await seed_contacts(db, phones[1:2], consent=None)
    await seed_contacts(db, phones[2:], consent=True)
    try:
        async with db.write() as s:
            spec = ca.CampaignSpec(name="t", sender="promo", template="Hi {{ first_name }}", segment=SegmentFilter())
            campaign = await ca.do_create_campaign(s, twilio, config.campaigns, spec)
    finally:
        await twilio.sms.close()
    assert campaign.audience["skipped"] == {"no_consent": 1}
    assert await _recipients(db, campaign.id) == {
        phones[0]: ("skipped", "no_consent"),
        phones[1]: ("pending", None),
        phones[2]: ("pending", None),
    }


async def test_a_withdrawal_while_it_runs_is_honoured_without_require_consent(tmp_path: Path, db: Database) -> None:
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=3) as w,
    ):
        w.config.campaigns.require_consent = False
        first = (await w.rows())[0]
        async with db.write() as s:
            await ca.do_set_sms_consent(s, first.contact_id, consent=False, source="customer asked", actor="agent")
        assert await w.runner().run_campaign(w.campaign_id) == "completed"
        assert await w.counts() == {"sent": 2, "skipped": 1}
        assert [(r.status, r.reason) for r in await w.rows() if r.id == first.id] == [("skipped", "no_consent")]
        assert first.phone not in {m["to"] for m in fake.messages} and _sends(fake) == [1, 1]
