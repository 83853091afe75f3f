"""Resuming a campaign, on both engines: a paused campaign whose only work
left is uncertain sends still to be looked up in Twilio can resume (the
runner settles them); one paused before its scheduled start waits for that
start again instead of sending at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from hub.campaigns import actions as ca
from hub.campaigns.audience import SegmentFilter
from hub.core import utcnow
from hub.errors import ValidationFailed
from storage.db import Database
from storage.models import Campaign, CampaignRecipient
from tests.hub.campaigns.helpers import promo_config, seed_contacts, twilio_service, us_numbers


@dataclass
class Draft:
    db: Database
    campaign_id: int

    async def start(self, scheduled_at: datetime | None = None) -> Campaign:
        async with self.db.write() as s:
            campaign = await ca.check_campaign(s, self.campaign_id, lock=True)
            return await ca.do_start(s, campaign, scheduled_at=scheduled_at)

    async def pause(self) -> Campaign:
        async with self.db.write() as s:
            return await ca.do_pause(s, await ca.check_campaign(s, self.campaign_id, lock=True))

    async def set_rows(self, ids: list[int], **values: object) -> None:
        async with self.db.write() as s:
            await s.execute(update(CampaignRecipient).where(CampaignRecipient.id.in_(ids)).values(**values))

    async def row_ids(self) -> list[int]:
        async with self.db.read() as s:
            found = await s.scalars(
                select(CampaignRecipient.id)
                .where(CampaignRecipient.campaign_id == self.campaign_id)
                .order_by(CampaignRecipient.id)
            )
            return list(found.all())


@pytest.fixture
async def draft(tmp_path: Path, db: Database) -> AsyncIterator[Draft]:
    """A draft campaign to three consenting contacts, nothing sent yet."""
    config = promo_config(tmp_path)
    twilio = twilio_service(config, db)
    await seed_contacts(db, us_numbers(3))
    try:
        async with db.write() as s:
            spec = ca.CampaignSpec(name="t", sender="promo", template="Hi {{ first_name }}", segment=SegmentFilter())
            campaign = await ca.do_create_campaign(s, twilio, config.campaigns, spec)
        yield Draft(db, campaign.id)
    finally:
        await twilio.sms.close()


async def test_paused_with_only_uncertain_sends_left_resumes(draft: Draft) -> None:
    first, *rest = await draft.row_ids()
    await draft.start()
    # A worker was killed mid-send and the admin paused meanwhile. Uncertain
    # rows Twilio could not tell about, tried for the last time (not_before
    # cleared), stay uncertain: no work left.
    await draft.set_rows([first], status=ca.SENT, external_id="SM1")
    await draft.set_rows(rest, status=ca.UNCERTAIN, not_before=None)
    await draft.pause()
    with pytest.raises(ValidationFailed, match="nobody left to send to"):
        await draft.start()
    # Still to be looked up in Twilio (not_before set): the runner settles
    # them, sending those Twilio never took, once the campaign runs.
    await draft.set_rows(rest, not_before=utcnow())
    resumed = await draft.start()
    assert resumed.status == ca.RUNNING


async def test_paused_before_its_scheduled_start_waits_for_it_again(draft: Draft) -> None:
    tomorrow = utcnow() + timedelta(days=1)
    assert (await draft.start(scheduled_at=tomorrow)).status == ca.SCHEDULED
    await draft.pause()
    resumed = await draft.start()
    assert (resumed.status, resumed.scheduled_at, resumed.started_at) == (ca.SCHEDULED, tomorrow, None)


async def test_paused_after_it_began_resumes_now_unless_told_when(draft: Draft) -> None:
    started = await draft.start()
    began = started.started_at
    assert started.status == ca.RUNNING and began is not None
    await draft.pause()
    assert (await draft.start()).status == ca.RUNNING
    await draft.pause()
    # "Resume tomorrow morning" is a schedule too; when it began is kept (the
    # runner looks up uncertain sends in Twilio from then on).
    later = utcnow() + timedelta(hours=12)
    resumed = await draft.start(scheduled_at=later)
    assert (resumed.status, resumed.scheduled_at, resumed.started_at) == (ca.SCHEDULED, later, began)
