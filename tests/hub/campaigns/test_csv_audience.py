"""A large CSV audience is written in bulk, a chunk per statement, on both
engines: the statements do not grow with every row (one insert and a flush
per contact held the SQLite writer for minutes), and the result is the same
as row by row: contacts created and updated, merged contacts followed, each
recipient with the CSV's number. The rendering runs off the event loop's
thread, so a web process keeps serving while a large audience is priced."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from hub.campaigns import actions as ca
from hub.campaigns.audience import CsvInvalid, parse_csv
from hub.campaigns.templates import message_for
from storage.db import Database
from storage.models import CampaignRecipient, Contact, Identity
from tests.hub.campaigns.helpers import csv_campaign, promo_config, seed_contacts, twilio_service, us_numbers


async def test_large_csv_is_written_in_bulk(tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    config = promo_config(tmp_path)
    twilio = twilio_service(config, db)
    phones = us_numbers(3000)
    known = await seed_contacts(db, phones[:500], consent=None, names=[None] * 500, tags=["old"])
    survivor, merged = known[0], known[1]
    async with db.write() as s:
        (await s.get(Contact, merged)).merged_into_id = survivor  # type: ignore[union-attr]
    rows = "".join(f"{p},Name {i},yes,{'vip' if i % 2 else ''},City {i}\n" for i, p in enumerate(phones))
    parsed = parse_csv("phone,name,consent,tags,city\n" + rows, "US")

    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    rendered_on: Counter[str] = Counter()

    def spy(*args: Any, **kwargs: Any) -> Any:
        rendered_on[threading.current_thread().name] += 1
        return message_for(*args, **kwargs)

    event.listen(db.write_engine.sync_engine, "before_cursor_execute", count)
    monkeypatch.setattr(ca, "message_for", spy)
    try:
        async with db.write() as s:
            spec = ca.CampaignSpec(name="t", sender="promo", template="Hi {{ first_name }} in {{ contact.city }}")
            campaign = await ca.do_create_campaign(s, twilio, config.campaigns, spec)
            summary = await ca.do_csv_audience(s, twilio, config.campaigns, campaign, parsed, source="big.csv")
            cid = campaign.id
    finally:
        event.remove(db.write_engine.sync_engine, "before_cursor_execute", count)
        await twilio.sms.close()
    # On the loop's thread only the one probe of the template at creation.
    assert rendered_on[threading.current_thread().name] == 1 and rendered_on.total() == 3000, rendered_on
    # Per 1,000 rows a handful of statements, not one or more per row.
    assert statements < 60, statements
    assert (summary["contacts_created"], summary["contacts_updated"]) == (2500, 500)
    # The merged contact's row went to the contact it was merged into: one recipient for the two.
    assert summary["recipients"] == 2999 and summary["duplicates"] == 1
    async with db.read() as s:
        assert await s.scalar(select(func.count()).select_from(Contact)) == 3000
        assert await s.scalar(select(func.count()).select_from(Identity)) == 3000
        first = await s.get(Contact, survivor)
        # Its own row, then the merged contact's.
        assert first is not None and first.name == "Name 0" and first.attributes["city"] == "City 1"
        assert first.attributes["sms_consent"] is True and first.tags == ["old", "vip"]
        new = await s.scalar(select(Contact).join(Identity).where(Identity.address == phones[2999]))
        assert new is not None and new.name == "Name 2999" and new.tags == ["vip"]
        assert new.attributes["sms_consent_source"] == "csv big.csv"
        recipients = dict(
            (await s.execute(select(CampaignRecipient.phone, CampaignRecipient.body).where(
                CampaignRecipient.campaign_id == cid
            ))).all()
        )  # fmt: skip
    assert set(recipients) == set(phones) - {phones[1]}
    assert recipients[phones[2999]].startswith("Hi Name in City 2999")


def test_cells_no_contact_can_have_are_invalid_rows() -> None:
    """Reported with their line, never imported altered (a NUL stripped) nor
    silently ignored (a timezone that names no zone)."""
    parsed = parse_csv(
        "phone,name,timezone,city\n"
        "+14155550100,A\x00nn,,\n"  # line 2
        "+14155550101,Bob,PST,\n"  # line 3: not an IANA zone
        "+14155550102,Cy,Asia/Tehran,\n"
        f"+14155550103,{'x' * 513},,\n"  # line 5: longer than a contact's name
        "+14155550104,Di,,Te\x00hran\n",  # line 6: in an attribute too
        "US",
    )
    assert parsed.invalid == [
        (2, "column 'name' has a NUL character (\\x00)"),
        (3, "timezone 'PST' is not an IANA time zone (e.g. Asia/Tehran, Europe/Berlin)"),
        (5, "name has 513 characters; at most 512"),
        (6, "column 'city' has a NUL character (\\x00)"),
    ]
    assert [(r.line, r.timezone) for r in parsed.rows] == [(4, "Asia/Tehran")]
    with pytest.raises(CsvInvalid, match="line 1: a column name has a NUL character"):
        parse_csv("phone,ci\x00ty\n+14155550100,x\n", "US")


async def test_cells_no_contact_can_have_never_reach_the_database(tmp_path: Path, db: Database) -> None:
    """On PostgreSQL each of these rows failed the whole upload (a 500): text
    cannot hold NUL, and a name or language longer than its column is refused."""
    phones = us_numbers(5)
    parsed = parse_csv(
        "phone,name,language,timezone,consent\n"
        f"{phones[0]},A\x00nn,,,yes\n"
        f"{phones[1]},{'x' * 600},,,yes\n"
        f"{phones[2]},Cy,portuguese-brazilian,,yes\n"
        f"{phones[3]},Di,,PST,yes\n"
        f"{phones[4]},Ed,,America/New_York,yes\n",
        "US",
    )
    campaign_id, summary = await csv_campaign(tmp_path, db, parsed)
    assert [r["line"] for r in summary["invalid_rows"]] == [2, 3, 5]
    assert summary["contacts_created"] == 2 and summary["recipients"] == 2
    async with db.read() as s:
        rows = (
            await s.execute(
                select(CampaignRecipient.phone, CampaignRecipient.language, CampaignRecipient.timezones).where(
                    CampaignRecipient.campaign_id == campaign_id
                )
            )
        ).all()
    assert sorted(tuple(r) for r in rows) == [
        (phones[2], "pt", ["America/Los_Angeles"]),
        (phones[4], "en", ["America/New_York"]),
    ]


async def test_an_old_list_does_not_take_back_a_withdrawal(tmp_path: Path, db: Database) -> None:
    """A list's "yes" is stamped with the import's time, so it would look newer
    than any withdrawal: re-importing last year's sign-ups would text everyone
    who said no since. A "no" in a list, and a "yes" for anyone else, apply."""
    phones = us_numbers(4)
    withdrew, undecided, agreed = (
        (await seed_contacts(db, phones[:1], consent=False))[0],
        (await seed_contacts(db, phones[1:2], consent=None))[0],
        (await seed_contacts(db, phones[2:3], consent=True))[0],
    )
    parsed = parse_csv(f"phone,consent\n{phones[0]},yes\n{phones[1]},yes\n{phones[2]},no\n{phones[3]},yes\n", "US")
    campaign_id, summary = await csv_campaign(tmp_path, db, parsed, source="old.csv")
    assert summary["consent_withdrawals_kept"] == 1
    async with db.read() as s:
        consent: dict[int, bool] = dict(
            (await s.execute(select(Contact.id, Contact.attributes["sms_consent"].as_boolean()))).all()
        )
        statuses = dict(
            (
                await s.execute(
                    select(CampaignRecipient.phone, CampaignRecipient.reason).where(
                        CampaignRecipient.campaign_id == campaign_id
                    )
                )
            ).all()
        )
    assert (consent[withdrew], consent[undecided], consent[agreed]) == (False, True, False)
    assert statuses[phones[0]] == statuses[phones[2]] == "no_consent"
    assert statuses[phones[1]] is None and statuses[phones[3]] is None


def test_apostrophes_never_merge_rows() -> None:
    """The sniffer took ' for the quote when apostrophes paired up: the rows
    between two of them became one cell of a name, the numbers in it gone."""
    parsed = parse_csv(
        "phone,name,note\n"
        "+14155550100,'Ann,'90s fan\n"
        "+14155550101,Bo',x\n"
        '+14155550102,O\'Brien,"likes ""sales"", and \'deals\'"\n',
        "US",
    )
    assert parsed.invalid == []
    assert [(r.line, r.phone, r.name, r.attributes) for r in parsed.rows] == [
        (2, "+14155550100", "'Ann", {"note": "'90s fan"}),
        (3, "+14155550101", "Bo'", {"note": "x"}),
        (4, "+14155550102", "O'Brien", {"note": "likes \"sales\", and 'deals'"}),
    ]


def test_a_row_is_reported_at_the_line_it_starts_on() -> None:
    parsed = parse_csv(
        "phone;name;city\n"
        '+14155550100;"Ann\nSmith";SF\n'  # lines 2-3
        "\n"
        '"not a number\n(call first)";Bo;LA\n'  # lines 5-6
        '+14155550101; "Cy; Jr";NY\n',  # line 7: a quoted cell after a space
        "US",
    )
    assert [line for line, _ in parsed.invalid] == [5]
    assert "is not a phone number" in parsed.invalid[0][1]
    assert [(r.line, r.name, r.attributes) for r in parsed.rows] == [
        # The line break is read as part of the cell, then collapsed: it would go into every message.
        (2, "Ann Smith", {"city": "SF"}),
        (7, "Cy; Jr", {"city": "NY"}),
    ]
