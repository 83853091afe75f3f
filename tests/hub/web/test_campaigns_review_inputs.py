"""The campaigns API after the second review: a CSV with no importable row, or
sent to a segment draft without ``?replace=true``, changes nothing; a
template variable no recipient has is a 422 naming it; a segment filter that
can match nobody is a 422 naming its field; a name's line breaks and tabs do
not reach the message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from storage.models import Campaign, Contact
from tests.hub.campaigns.helpers import contact_of, seed_contacts, us_numbers
from tests.hub.helpers import Agent
from tests.hub.twilio_helpers import TwilioHub, twilio_hub

PROMO = "+15550002222"
OVERRIDES = {
    "twilio.senders": [{"inbox": "promo", "number": PROMO, "messages_per_second": 10}],
    "campaigns.quiet_hours": None,
}


def _new(template: str = "Hi {{ first_name }}", audience: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": "Spring", "sender": "promo", "template": template, "audience": audience or {"kind": "segment"}}


async def _upload(t: TwilioHub, admin: Agent, cid: int, text: str, status: int = 200, query: str = "") -> Any:
    async with t.http.post(
        f"{admin.base}/api/v1/campaigns/{cid}/audience?filename=list.csv{query}",
        data=text.encode(),
        headers={**admin.headers, "Content-Type": "text/csv"},
    ) as r:
        assert r.status == status, await r.text()
        return await r.json()


async def _campaigns(t: TwilioHub) -> int:
    async with t.hub.db.read() as s:
        return int(await s.scalar(select(func.count()).select_from(Campaign)) or 0)


async def test_a_csv_with_no_importable_row_keeps_the_drafts_audience(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        admin = await t.agent()
        draft = await admin.post("/api/v1/campaigns", _new(audience={"kind": "csv"}), status=201)
        phones = us_numbers(2)
        await _upload(t, admin, draft["id"], f"phone,consent\n{phones[0]},yes\n{phones[1]},yes\n")
        assert (await admin.get(f"/api/v1/campaigns/{draft['id']}"))["total"] == 2
        # National numbers with no phone.default_region: not one is readable.
        error = await _upload(t, admin, draft["id"], "phone,consent\n09121234567,yes\n09121234568,yes\n", status=422)
        assert "no row can be imported (2 invalid" in error["error"]["message"], error
        assert [r["line"] for r in error["error"]["details"]["invalid_rows"]] == [2, 3], error
        error = await _upload(t, admin, draft["id"], "phone,consent\n", status=422)
        assert "no rows below its header" in error["error"]["message"], error
        after = await admin.get(f"/api/v1/campaigns/{draft['id']}")
        assert after["total"] == 2 and after["audience"]["kind"] == "csv" and after["audience"]["source"] == "list.csv"


async def test_a_csv_replaces_a_segment_draft_only_when_asked(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        await seed_contacts(t.hub.db, us_numbers(3))
        admin = await t.agent()
        draft = await admin.post("/api/v1/campaigns", _new(), status=201)
        assert draft["total"] == 3
        csv_text = f"phone,consent\n{us_numbers(1, start=50)[0]},yes\n"
        error = await _upload(t, admin, draft["id"], csv_text, status=409)
        assert "?replace=true" in error["error"]["message"], error
        await _upload(t, admin, draft["id"], csv_text, status=400, query="&replace=ture")
        kept = await admin.get(f"/api/v1/campaigns/{draft['id']}")
        assert kept["total"] == 3 and kept["audience"]["kind"] == "segment" and "filter" in kept["audience"]
        # Nothing of the file was imported either.
        assert await contact_of(t.hub.db, us_numbers(1, start=50)[0]) is None
        summary = await _upload(t, admin, draft["id"], csv_text, query="&replace=true")
        assert summary["recipients"] == 1
        replaced = await admin.get(f"/api/v1/campaigns/{draft['id']}")
        assert replaced["total"] == 1 and replaced["audience"]["kind"] == "csv"


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("Hi {{ firstname }}", "'firstname' (did you mean 'first_name'?)"),
        ("{{ lipsum() }}", "'lipsum'"),
        ("{{ namespace }}", "'namespace'"),
        ("Hi {{ loop.index }}", "'loop'"),
        ("{{ range(3)|list }} {{ nme }}", "variables 'nme' (did you mean 'name'?), 'range'"),
    ],
)
async def test_a_variable_no_recipient_has_is_a_422_naming_it(tmp_path: Path, template: str, named: str) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        await seed_contacts(t.hub.db, us_numbers(2))
        admin = await t.agent()
        error = await admin.post("/api/v1/campaigns", _new(template), status=422)
        message = error["error"]["message"]
        assert message.startswith("template: unknown variable") and named in message, message
        assert "first_name, name, phone, contact" in message, message
        assert await _campaigns(t) == 0


async def test_variables_a_template_defines_or_some_contacts_lack_are_accepted(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        await seed_contacts(t.hub.db, us_numbers(2), attributes={"city": "SF"})
        admin = await t.agent()
        template = (
            "{% set greeting = 'Hi' %}{{ greeting }} {{ name }} {{ phone }} {{ contact.city }}"
            "{% for tag in contact.tags %}{{ loop.index }}{{ tag }}{% endfor %}"
        )
        created = await admin.post("/api/v1/campaigns", _new(template), status=201)
        assert created["audience"]["recipients"] == 2
        # An attribute only some contacts have stays a per-contact skip.
        created = await admin.post("/api/v1/campaigns", _new("Hi {{ contact.nosuch }}"), status=201)
        assert created["audience"]["skipped"] == {"template": 2}


@pytest.mark.parametrize(
    ("flt", "field", "said"),
    [
        ({"segments": ["nosuch"]}, "audience.filter.segments", "no contact is in the RFM segment(s) 'nosuch'"),
        ({"tags_any": [""]}, "audience.filter.tags_any", "a tag must not be empty"),
        ({"tags_all": ["vip", "  "]}, "audience.filter.tags_all", "a tag must not be empty"),
        (
            {"last_contact_after": "2026-12-01T00:00:00Z", "last_contact_before": "2026-01-01T00:00:00Z"},
            "audience.filter.last_contact_before",
            "is not later than last_contact_after",
        ),
        (
            {"last_contact_after": "2026-01-01T00:00:00Z", "last_contact_before": "2026-01-01T00:00:00Z"},
            "audience.filter.last_contact_before",
            "is not later than last_contact_after",
        ),
    ],
)
async def test_a_filter_that_matches_nobody_is_a_422_naming_the_field(
    tmp_path: Path, flt: dict[str, Any], field: str, said: str
) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        await seed_contacts(t.hub.db, us_numbers(2), tags=["vip"])
        admin = await t.agent()
        error = await admin.post("/api/v1/campaigns", _new(audience={"kind": "segment", "filter": flt}), status=422)
        message = error["error"]["message"]
        assert field in message and said in message, message
        assert await _campaigns(t) == 0


async def test_an_rfm_segment_contacts_are_in_is_accepted(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        ids = await seed_contacts(t.hub.db, us_numbers(2))
        async with t.hub.db.write() as s:
            (await s.get(Contact, ids[0])).segment = "champions"  # type: ignore[union-attr]
        admin = await t.agent()
        error = await admin.post(
            "/api/v1/campaigns",
            _new(audience={"kind": "segment", "filter": {"segments": ["champions", "champion"]}}),
            status=422,
        )
        assert "'champion' (segments contacts are in: champions)" in error["error"]["message"], error
        body = _new(audience={"kind": "segment", "filter": {"segments": ["champions"]}})
        assert (await admin.post("/api/v1/campaigns", body, status=201))["total"] == 1


async def test_line_breaks_and_tabs_in_a_csv_name_do_not_reach_the_message(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        admin = await t.agent()
        draft = await admin.post("/api/v1/campaigns", _new("Hi {{ first_name }}, sale!", {"kind": "csv"}), status=201)
        phones = us_numbers(2)
        csv_text = f'phone,name,consent\n{phones[0]},"Multi\nline",yes\n{phones[1]},"Ann\t \r\n Lee ",yes\n'
        await _upload(t, admin, draft["id"], csv_text)
        preview = await admin.get(f"/api/v1/campaigns/{draft['id']}/preview")
        bodies = {p["phone"]: p["body"] for p in preview["items"]}
        assert bodies[phones[0]].startswith("Hi Multi, sale!\n"), bodies
        assert bodies[phones[1]].startswith("Hi Ann, sale!\n"), bodies
        async with t.hub.db.read() as s:
            names = {c.name for c in (await s.scalars(select(Contact))).all()}
        assert names == {"Multi line", "Ann Lee"}
