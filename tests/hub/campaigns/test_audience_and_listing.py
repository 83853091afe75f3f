"""Audiences and figures the review found wrong: attribute filters typed as
numbers or true/false match CSV text; a later CSV line withdrawing consent
wins; phone columns named as exports name them; a schedule in the past; the
list's counts in grouped queries; templates' `self` and attr()."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from hub.campaigns import actions as ca
from hub.campaigns.audience import SegmentFilter, parse_csv
from hub.campaigns.templates import TemplateInvalid, compile_template
from hub.core import utcnow
from hub.errors import ValidationFailed
from storage.db import Database
from storage.models import Contact
from tests.hub.campaigns.helpers import csv_campaign, promo_config, seed_contacts, twilio_service, us_numbers


@pytest.mark.parametrize(
    ("wanted", "stored", "match"),
    [
        (30, "30", True),
        (30, " 30 ", True),
        (30.5, "30.5", True),
        (30, "31", False),
        (30, "thirty", False),
        (True, "true", True),
        (True, "TRUE", True),
        (False, "false", True),
        (True, "false", False),
        ("30", 30, True),
        ("Berlin", "Berlin", True),
        ("Berlin", "berlin", False),  # text against text stays exact
        (None, None, True),
        (None, "", False),
    ],
)
def test_attribute_filters_compare_scalars_as_text(wanted: Any, stored: Any, match: bool) -> None:
    assert SegmentFilter(attributes={"k": wanted}).matches([], {"k": stored}) is match


async def test_a_numeric_filter_finds_contacts_imported_from_a_csv(tmp_path: Path, db: Database) -> None:
    parsed = parse_csv("phone,consent,age\n+14155550101,yes,30\n+14155550102,yes,41\n", None)
    await csv_campaign(tmp_path, db, parsed)
    config = promo_config(tmp_path)
    twilio = twilio_service(config, db)
    try:
        spec = ca.CampaignSpec(name="a", sender="promo", template="Hi", segment=SegmentFilter(attributes={"age": 30}))
        cid = await ca.create_campaign(db, twilio, config.campaigns, spec)
    finally:
        await twilio.sms.close()
    async with db.read() as s:
        campaign = await ca.check_campaign(s, cid)
    assert campaign.audience["recipients"] == 1


LEADS = (
    "phone,name,consent\n"
    "+14155550101,Ada Lovelace,yes\n"
    "+14155550102,Bob,yes\n"
    "+14155550101,Ada again,no\n"  # line 4: Ada withdrew, appended later
    "+14155550102,Bob again,yes\n"
)


async def test_a_later_line_withdrawing_consent_wins(tmp_path: Path, db: Database) -> None:
    parsed = parse_csv(LEADS, None)
    assert parsed.duplicates == [4, 5] and parsed.withdrawals == [4]
    assert [r.consent for r in parsed.rows] == [False, True]
    _, summary = await csv_campaign(tmp_path, db, parsed)
    assert summary["consent_withdrawn_lines"] == [4]
    assert summary["recipients"] == 1 and summary["skipped"] == {"no_consent": 1}
    async with db.read() as s:
        ada = (await s.execute(Contact.__table__.select().where(Contact.name == "Ada Lovelace"))).one()
    assert ada.attributes["sms_consent"] is False


@pytest.mark.parametrize("header", ["Phone Number", "Mobile Phone", "Phone", "Mobile", "mobile_number", "PHONE-NUMBER"])
def test_phone_columns_as_exports_name_them(header: str) -> None:
    parsed = parse_csv(f"{header},Name\n+14155550101,Ada\n", None)
    assert [(r.phone, r.name) for r in parsed.rows] == [("+14155550101", "Ada")]
    assert parsed.rows[0].attributes == {}


async def test_a_schedule_in_the_past_is_refused(tmp_path: Path, db: Database) -> None:
    config = promo_config(tmp_path)
    twilio = twilio_service(config, db)
    spec = ca.CampaignSpec(name="t", sender="promo", template="Hi", scheduled_at=utcnow() - timedelta(minutes=1))
    try:
        with pytest.raises(ValidationFailed, match="is in the past"):
            await ca.create_campaign(db, twilio, config.campaigns, spec)
    finally:
        await twilio.sms.close()


async def test_a_page_of_campaigns_takes_the_same_queries_however_many(tmp_path: Path, db: Database) -> None:
    config = promo_config(tmp_path)
    twilio = twilio_service(config, db)
    await seed_contacts(db, us_numbers(2))
    try:
        for _ in range(12):
            spec = ca.CampaignSpec(name="t", sender="promo", template="Hi", segment=SegmentFilter())
            cid = await ca.create_campaign(db, twilio, config.campaigns, spec)
    finally:
        await twilio.sms.close()
    async with db.write() as s:
        await ca.do_pause(s, await ca.do_start(s, await ca.check_campaign(s, cid, lock=True)), actor="ana")
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    async def page(limit: int) -> list[dict[str, Any]]:
        statements.clear()
        event.listen(db.read_engine.sync_engine, "before_cursor_execute", count)
        try:
            async with db.read() as s:
                items, _ = await ca.campaign_page(s, cursor=None, limit=limit)
        finally:
            event.remove(db.read_engine.sync_engine, "before_cursor_execute", count)
        return items

    small = len(await page(2)), len(statements)
    items = await page(12)
    assert (len(items), len(statements)) == (12, small[1])
    assert items[0]["status_reason"] == "paused by ana" and items[0]["total"] == 2
    assert items[1]["status_reason"] is None


@pytest.mark.parametrize(
    "source", ["{{ self }}", "{{ self._TemplateReference__context }}", "{{ contact|attr('items') }}"]
)
def test_templates_reach_neither_self_nor_attr(source: str) -> None:
    with pytest.raises(TemplateInvalid):
        compile_template(source)
