"""What the campaigns API answers to input that used to break it: a template
whose filter raises on the contacts' values (a 500, now those contacts
skipped with the reason), a rate too slow for the pacer (accepted, then the
campaign stuck "running"; now a 422 naming the field), a CSV column that
would write SMS consent (now a 422 naming the column)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.hub.campaigns.helpers import seed_contacts, us_numbers
from tests.hub.helpers import Agent
from tests.hub.twilio_helpers import TwilioHub, twilio_hub

PROMO = "+15550002222"
OVERRIDES = {
    "twilio.senders": [{"inbox": "promo", "number": PROMO, "messages_per_second": 10}],
    "campaigns.quiet_hours": None,
}


def _new(template: str = "Hi {{ first_name }}", kind: str = "segment", **extra: Any) -> dict[str, Any]:
    return {"name": "Spring", "sender": "promo", "template": template, "audience": {"kind": kind}, **extra}


async def _upload(t: TwilioHub, admin: Agent, cid: int, text: str, status: int = 200) -> dict[str, Any]:
    async with t.http.post(
        f"{admin.base}/api/v1/campaigns/{cid}/audience?filename=list.csv",
        data=text.encode(),
        headers={**admin.headers, "Content-Type": "text/csv"},
    ) as r:
        assert r.status == status, await r.text()
        body: dict[str, Any] = await r.json()
        return body


@pytest.mark.parametrize(
    "template", ["Hi {{ name|xmlattr }}", "Hi {{ name|dictsort }}", "Hi {{ first_name|truncate(-5) }}"]
)
async def test_a_template_failing_for_every_contact_skips_them_with_the_reason(tmp_path: Path, template: str) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        await seed_contacts(t.hub.db, us_numbers(3))
        admin = await t.agent()
        created = await admin.post("/api/v1/campaigns", _new(template), status=201)
        assert created["audience"]["recipients"] == 0
        assert created["audience"]["skipped"] == {"template": 3}
        assert created["counts"]["skipped"] == 3


async def test_a_template_failing_for_one_csv_row_skips_that_row(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        admin = await t.agent()
        # The made-up contact of the check at creation has no prefs: fine there.
        draft = await admin.post(
            "/api/v1/campaigns", _new("Hi {{ contact.prefs|default({})|dictsort|length }}", kind="csv"), status=201
        )
        phones = us_numbers(2)
        summary = await _upload(t, admin, draft["id"], f"phone,consent,prefs\n{phones[0]},yes,a\n{phones[1]},yes,\n")
        assert summary["recipients"] == 1 and summary["skipped"] == {"template": 1}
        preview = await admin.get(f"/api/v1/campaigns/{draft['id']}/preview")
        assert [p["phone"] for p in preview["items"]] == [phones[1]]


@pytest.mark.parametrize("rate", [1e-300, 0.001, -1.0])
async def test_a_rate_too_slow_to_pace_is_a_422_naming_the_field(tmp_path: Path, rate: float) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        await seed_contacts(t.hub.db, us_numbers(1))
        admin = await t.agent()
        error = await admin.post("/api/v1/campaigns", _new(rate_per_second=rate), status=422)
        assert "rate_per_second" in error["error"]["message"] and "0.01" in error["error"]["message"], error
        await admin.post("/api/v1/campaigns", _new(rate_per_second=0.01), status=201)


async def test_a_csv_column_that_would_write_consent_is_a_422(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        admin = await t.agent()
        draft = await admin.post("/api/v1/campaigns", _new(kind="csv"), status=201)
        phone = us_numbers(1)[0]
        error = await _upload(t, admin, draft["id"], f"phone,consent,sms_consent\n{phone},yes,false\n", status=422)
        assert "column sms_consent is not allowed" in error["error"]["message"], error
        assert (await admin.get(f"/api/v1/campaigns/{draft['id']}"))["total"] == 0
