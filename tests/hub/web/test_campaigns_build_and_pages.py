"""The campaigns API after the review: creating a large campaign leaves the
hub's other writes going; a csv audience refuses a filter; the list pages
with a cursor; the recipients' CSV and the report add up; no delivery rate
where no status callback can arrive."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import pytest

from tests.hub.campaigns.helpers import RenderGate, seed_contacts, us_numbers
from tests.hub.helpers import Agent
from tests.hub.twilio_helpers import TwilioHub, eventually, twilio_hub

PROMO = "+15550002222"
OVERRIDES: dict[str, Any] = {
    "twilio.senders": [{"inbox": "promo", "number": PROMO, "messages_per_second": 100}],
    "campaigns.quiet_hours": None,
    "campaigns.poll_seconds": 0.1,
}


def _new(audience: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": "Spring",
        "sender": "promo",
        "template": "Hi {{ first_name }} 😀",
        "audience": audience or {"kind": "segment"},
        **extra,
    }


async def test_webhooks_and_consent_are_written_while_a_campaign_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        ids = await seed_contacts(t.hub.db, us_numbers(18))
        await seed_contacts(t.hub.db, us_numbers(2, start=100), consent=None)
        admin = await t.agent()
        gate = RenderGate()
        gate.install(monkeypatch)
        create = asyncio.create_task(admin.post("/api/v1/campaigns", _new(), status=201))
        try:
            await gate.wait_entered()
            # The timeout only keeps a regression from hanging the suite.
            async with asyncio.timeout(30):
                await admin.put(f"/api/v1/contacts/{ids[0]}/sms_consent", {"consent": False, "source": "call"})
                assert await t.sms("Hello?", sid="SM" + "1" * 32) == 200
                (draft,) = (await admin.get("/api/v1/campaigns"))["items"]
                assert draft["audience"]["build"]["written"] == 0
                error = await admin.post(f"/api/v1/campaigns/{draft['id']}/start", {}, status=409)
                assert "audience is incomplete" in error["error"]["message"]
        finally:
            gate.release.set()
        created = await create
        assert "build" not in created["audience"] and created["total"] == 20
        # Same answer as before: counts and estimate; a draft's progress is 0
        # although the contacts never asked are already skipped. (The
        # withdrawal came after its page was read: the runner checks consent
        # again when it claims the row.)
        assert created["counts"]["skipped"] == 2 and created["estimate"]["messages"] == 18
        assert created["progress"] == 0.0
        await admin.post(f"/api/v1/campaigns/{created['id']}/start", {}, status=200)


async def test_a_csv_audience_takes_no_filter(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        admin = await t.agent()
        body = _new(audience={"kind": "csv", "filter": {"tags_any": ["vip"]}})
        error = await admin.post("/api/v1/campaigns", body, status=422)
        assert "a csv audience takes no filter" in error["error"]["message"]
        await admin.post("/api/v1/campaigns", _new(audience={"kind": "csv", "filter": {}}), status=201)


async def test_the_list_pages_with_a_cursor(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        await seed_contacts(t.hub.db, us_numbers(3))
        admin = await t.agent()
        made = [(await admin.post("/api/v1/campaigns", _new(), status=201))["id"] for _ in range(5)]
        seen: list[int] = []
        cursor = ""
        while True:
            page = await admin.get(f"/api/v1/campaigns?limit=2{cursor}")
            assert len(page["items"]) <= 2
            seen.extend(item["id"] for item in page["items"])
            assert all(item["total"] == 3 for item in page["items"])
            if page["next_cursor"] is None:
                break
            cursor = f"&cursor={page['next_cursor']}"
        assert seen == sorted(made, reverse=True)
        await admin.get("/api/v1/campaigns?cursor=nonsense", status=400)
        await admin.get("/api/v1/campaigns?limit=0", status=400)


async def _completed(admin: Agent, cid: int) -> dict[str, Any] | None:
    view: dict[str, Any] = await admin.get(f"/api/v1/campaigns/{cid}")
    return view if view["status"] == "completed" else None


async def _export(t: TwilioHub, admin: Agent, cid: int) -> list[dict[str, str]]:
    url = str(t.server.make_url(f"/api/v1/campaigns/{cid}/recipients.csv"))
    async with t.http.get(url, headers={"Authorization": f"Bearer {admin.token}"}) as resp:
        assert resp.status == 200
        return list(csv.DictReader(io.StringIO(await resp.text())))


async def test_the_export_prices_only_what_twilio_took(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        await seed_contacts(t.hub.db, us_numbers(8))
        await seed_contacts(t.hub.db, us_numbers(2, start=100), consent=None)
        admin = await t.agent()
        cid = (await admin.post("/api/v1/campaigns", _new(), status=201))["id"]
        t.fake.fail_next(400, 21211)  # refused: no SID, never charged
        t.fake.fail_next(400, 21610)  # unsubscribed at Twilio: skipped when sent
        await admin.post(f"/api/v1/campaigns/{cid}/start", {}, status=200)
        await eventually(lambda: _completed(admin, cid), timeout=30)
        report = await admin.get(f"/api/v1/campaigns/{cid}/report")
        rows = await _export(t, admin, cid)
        assert report["sent"] == 6 and report["cost"] > 0
        assert round(sum(float(r["price"]) for r in rows), 4) == report["cost"]
        assert sum(int(r["segments"]) for r in rows) == report["segments_used"]
        for r in rows:
            if not r["twilio_sid"]:
                assert (float(r["price"]), int(r["segments"])) == (0.0, 0), r
        assert report["delivery_rate"] is not None


async def test_no_delivery_rate_without_status_callbacks(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path, overrides={**OVERRIDES, "server.public_url": None}) as t:
        await seed_contacts(t.hub.db, us_numbers(2))
        admin = await t.agent()
        cid = (await admin.post("/api/v1/campaigns", _new(), status=201))["id"]
        await admin.post(f"/api/v1/campaigns/{cid}/start", {}, status=200)
        await eventually(lambda: _completed(admin, cid), timeout=30)
        report = await admin.get(f"/api/v1/campaigns/{cid}/report")
        assert report["sent"] == 2 and report["delivery_rate"] is None


async def test_rebuild_takes_in_contacts_added_since(tmp_path: Path) -> None:
    """POST .../rebuild chooses a segment draft's audience again from its filter."""
    async with twilio_hub(tmp_path, overrides=OVERRIDES) as t:
        await seed_contacts(t.hub.db, us_numbers(3))
        admin = await t.agent()
        draft = await admin.post("/api/v1/campaigns", _new(), status=201)
        assert draft["audience"]["recipients"] == 3
        await seed_contacts(t.hub.db, us_numbers(2, start=100))
        rebuilt = await admin.post(f"/api/v1/campaigns/{draft['id']}/rebuild", {})
        assert rebuilt["audience"]["recipients"] == 5
        assert "build" not in rebuilt["audience"]
