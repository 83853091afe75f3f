"""Building a campaign's audience without holding the database's writer, on
both engines: other writes commit while a page is being rendered; start is
refused until the audience is complete; a build that stopped leaves a draft
that says so and can be rebuilt or cancelled; a rebuild stops an earlier
build instead of mixing rows with it; a failed build creates nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.campaigns import actions as ca
from hub.campaigns.audience import SegmentFilter, parse_csv
from hub.config import HubConfig
from hub.errors import Conflict, ValidationFailed
from hub.telephony import TwilioService
from storage.db import Database
from storage.models import Campaign, CampaignRecipient, Contact
from tests.hub.campaigns.helpers import RenderGate, promo_config, seed_contacts, twilio_service, us_numbers

N = 30


@dataclass
class World:
    db: Database
    config: HubConfig
    twilio: TwilioService
    contacts: list[int]

    def spec(self, template: str = "Hi {{ first_name }}") -> ca.CampaignSpec:
        return ca.CampaignSpec(name="t", sender="promo", template=template, segment=SegmentFilter())

    async def create(self, spec: ca.CampaignSpec | None = None) -> int:
        return await ca.create_campaign(self.db, self.twilio, self.config.campaigns, spec or self.spec())

    async def campaign(self, campaign_id: int) -> Campaign:
        async with self.db.read() as s:
            return await ca.check_campaign(s, campaign_id)

    async def rows(self, campaign_id: int) -> int:
        async with self.db.read() as s:
            n = await s.scalar(
                select(func.count()).select_from(CampaignRecipient).where(CampaignRecipient.campaign_id == campaign_id)
            )
            return int(n or 0)

    async def start(self, campaign_id: int) -> Campaign:
        async with self.db.write() as s:
            return await ca.do_start(s, await ca.check_campaign(s, campaign_id, lock=True))

    async def only_draft(self) -> int:
        async with self.db.read() as s:
            (cid,) = (await s.scalars(select(Campaign.id))).all()
            return cid


@pytest.fixture
async def world(tmp_path: Path, db: Database) -> AsyncIterator[World]:
    config = promo_config(tmp_path)
    twilio = twilio_service(config, db)
    try:
        yield World(db, config, twilio, await seed_contacts(db, us_numbers(N)))
    finally:
        await twilio.sms.close()


async def _withdraw_meanwhile(world: World) -> None:
    """A write of another part of the hub (an agent recording a withdrawal)
    while the audience's page is being rendered: it must commit now, not
    after the build (the timeout only keeps a regression from hanging)."""
    async with asyncio.timeout(30), world.db.write() as s:
        await ca.do_set_sms_consent(s, world.contacts[-1], consent=False, source="call", actor="agent")
    async with world.db.read() as s:
        contact = await s.get(Contact, world.contacts[-1])
        assert contact is not None and contact.attributes["sms_consent"] is False


async def test_other_writes_commit_while_a_campaign_is_built(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = RenderGate()
    gate.install(monkeypatch)
    create = asyncio.create_task(world.create())
    try:
        await gate.wait_entered()
        await _withdraw_meanwhile(world)
        # Meanwhile the draft exists, says its audience is being built, and
        # cannot be started.
        cid = await world.only_draft()
        assert ca.build_state(await world.campaign(cid)) is not None
        with pytest.raises(Conflict, match=rf"campaign {cid}'s audience is incomplete: its build started at"):
            await world.start(cid)
    finally:
        gate.release.set()
    assert await create == cid
    campaign = await world.campaign(cid)
    assert ca.build_state(campaign) is None
    assert campaign.audience["recipients"] == N and await world.rows(cid) == N
    assert (await world.start(cid)).status == ca.RUNNING


async def test_a_csv_upload_does_not_hold_the_writer(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    async with world.db.write() as s:
        draft = await ca.do_create_campaign(
            s, world.twilio, world.config.campaigns, ca.CampaignSpec(name="c", sender="promo", template="Hi")
        )
    parsed = parse_csv("phone,consent\n" + "".join(f"{p},yes\n" for p in us_numbers(5, start=500)), None)
    gate = RenderGate()
    gate.install(monkeypatch)
    upload = asyncio.create_task(
        ca.csv_audience(world.db, world.twilio, world.config.campaigns, draft.id, parsed, source="l.csv")
    )
    try:
        await gate.wait_entered()
        await _withdraw_meanwhile(world)
        with pytest.raises(Conflict, match=r"audience is incomplete.*upload the CSV again"):
            await world.start(draft.id)
    finally:
        gate.release.set()
    summary = await upload
    assert (summary["contacts_created"], summary["recipients"]) == (5, 5)
    assert ca.build_state(await world.campaign(draft.id)) is None
    assert (await world.start(draft.id)).status == ca.RUNNING


async def test_a_build_that_stopped_can_be_rebuilt_or_cancelled(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = RenderGate()
    gate.install(monkeypatch)
    create = asyncio.create_task(world.create())
    await gate.wait_entered()
    # The process ends mid-build (nothing after this point runs for it).
    create.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await create
    gate.release.set()
    cid = await world.only_draft()
    stopped = await world.campaign(cid)
    assert stopped.status == ca.DRAFT and ca.build_state(stopped) is not None
    with pytest.raises(Conflict, match=rf"crm-hub campaign rebuild {cid}"):
        await world.start(cid)
    await ca.rebuild_audience(world.db, world.twilio, world.config.campaigns, cid)
    rebuilt = await world.campaign(cid)
    assert ca.build_state(rebuilt) is None and rebuilt.audience["recipients"] == N
    assert await world.rows(cid) == N
    assert (await world.start(cid)).status == ca.RUNNING
    # Or, instead of rebuilding it, cancelled.
    gate2 = RenderGate()
    gate2.install(monkeypatch)
    create = asyncio.create_task(world.create())
    await gate2.wait_entered()
    create.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await create
    gate2.release.set()
    async with world.db.read() as s:
        other = await s.scalar(select(Campaign.id).where(Campaign.id != cid))
    assert other is not None
    async with world.db.write() as s:
        assert (await ca.do_cancel(s, await ca.check_campaign(s, other, lock=True))).status == ca.CANCELLED


async def test_a_rebuild_stops_the_build_it_replaces(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = RenderGate()  # holds only the first build's page
    gate.install(monkeypatch)
    first = asyncio.create_task(world.create())
    await gate.wait_entered()
    cid = await world.only_draft()
    await ca.rebuild_audience(world.db, world.twilio, world.config.campaigns, cid)
    gate.release.set()
    with pytest.raises(Conflict, match="another build replaced this one"):
        await first
    # The first build wrote nothing, and did not take the draft away with it.
    campaign = await world.campaign(cid)
    assert ca.build_state(campaign) is None and campaign.audience["recipients"] == N
    assert await world.rows(cid) == N


async def test_a_build_that_fails_creates_nothing(world: World) -> None:
    # Passes the up-front probe (the made-up contact has no `x`), then is
    # refused for the real contacts, on the first page.
    spec = world.spec("{% if contact.x is defined %}{{ ''.__class__ }}{% endif %}Hi")
    await seed_contacts(world.db, us_numbers(1, start=900), attributes={"x": 1})
    with pytest.raises(ValidationFailed, match="not allowed"):
        await world.create(spec)
    async with world.db.read() as s:
        assert (await s.scalars(select(Campaign))).all() == []
        assert await s.scalar(select(func.count()).select_from(CampaignRecipient)) == 0


async def test_a_failed_csv_upload_says_so_when_started(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    async with world.db.write() as s:
        draft = await ca.do_create_campaign(
            s, world.twilio, world.config.campaigns, ca.CampaignSpec(name="c", sender="promo", template="Hi")
        )
    parsed = parse_csv("phone,consent\n+14155550900,yes\n", None)

    def broken(*_: Any) -> list[dict[str, Any]]:
        raise ValidationFailed("the disk is full")

    monkeypatch.setattr(ca._PageRenderer, "render", broken)
    with pytest.raises(ValidationFailed):
        await ca.csv_audience(world.db, world.twilio, world.config.campaigns, draft.id, parsed, source="l.csv")
    with pytest.raises(Conflict, match=r"its build failed \(the disk is full\); upload the CSV again"):
        await world.start(draft.id)
