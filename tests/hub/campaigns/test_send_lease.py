"""A send lease covers a send, not the wait for the sender's rate, on both
engines. A row used to be marked ``sending`` before its turn at the rate came;
when the wait (shared by every worker on the sender) outlasted
``campaigns.send_lease_seconds``, another worker took it for a send that died,
found nothing in Twilio's list and sent it, and the first worker sent it too.
Now a row waits for its turn ``pending`` (its claim held), and a send whose
lease ran out goes to Twilio only once the database says the row is still this
worker's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from hub.campaigns.runner import CampaignRunner, Work, mark_abandoned
from hub.core import utcnow
from storage.db import Database
from storage.ingest import dialect_insert
from storage.models import Campaign, CampaignRecipient, SmsPacing
from tests.fakes.twilio import FakeTwilio
from tests.hub.campaigns.test_runner_stops import World, _sends, world
from tests.hub.twilio_helpers import ACCOUNT, TOKEN

PAST = datetime(2000, 1, 1, tzinfo=UTC)


async def test_a_row_waiting_for_its_turn_is_not_taken_for_abandoned(tmp_path: Path, db: Database) -> None:
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        # One segment a second: the third message waits two seconds for its turn.
        world(tmp_path, db, fake.base_url, rate=1, audience=3) as w,
    ):
        w.config.campaigns.send_lease_seconds = 0.4
        # Two workers: one claims all three, the other looks for abandoned sends meanwhile.
        done = await asyncio.wait_for(
            asyncio.gather(w.runner("w1").run_campaign(w.campaign_id), w.runner("w2").run_campaign(w.campaign_id)),
            60,
        )
        assert list(done) == ["completed", "completed"]
        assert _sends(fake) == [1, 1, 1]
        assert await w.counts() == {"sent": 3}
        assert all(r.attempts == 1 and r.lookups == 0 for r in await w.rows())


async def _one_row_sending(w: World, *, claimed_by: str) -> tuple[Campaign, Work]:
    """The campaign's only row as a worker that marked it ``sending`` holds
    it, its lease over (the worker waited too long for a slot)."""
    (row,) = await w.rows()
    async with w.db.write() as s:
        await s.execute(
            update(CampaignRecipient)
            .where(CampaignRecipient.id == row.id)
            .values(status="sending", claimed_by=claimed_by, attempts=1, lease_until=PAST)
        )
        campaign = await s.get(Campaign, w.campaign_id)
    assert campaign is not None
    return campaign, Work(row.id, row.contact_id, row.phone, row.body, row.segments, [], 0)


async def _send_one(runner: CampaignRunner, w: World, campaign: Campaign, work: Work) -> None:
    sender = w.twilio.sms.sender_by_key(campaign.sender)
    assert sender is not None
    slots = asyncio.Semaphore(1)
    await slots.acquire()
    await runner._send_one(campaign, sender, work, slots)
    await runner._flush()
    assert not slots.locked()


async def test_a_send_another_worker_took_over_is_not_made(tmp_path: Path, db: Database) -> None:
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=1) as w,
    ):
        campaign, work = await _one_row_sending(w, claimed_by="w1")
        async with db.write() as s:  # another worker's tick: abandoned, to be looked up
            assert await mark_abandoned(s, w.campaign_id) == 1
        await _send_one(w.runner("w1"), w, campaign, work)
        assert fake.messages == []
        (row,) = await w.rows()
        assert (row.status, row.claimed_by) == ("uncertain", None)
        # The lookup finds that Twilio never had it: sent once.
        assert await w.runner("w2").run_campaign(w.campaign_id) == "completed"
        assert _sends(fake) == [1]
        assert await w.counts() == {"sent": 1}


async def test_a_send_whose_lease_ran_out_unnoticed_is_renewed_and_made(tmp_path: Path, db: Database) -> None:
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=1) as w,
    ):
        campaign, work = await _one_row_sending(w, claimed_by="w1")
        # Nobody marked it abandoned: still this worker's, so it goes.
        await _send_one(w.runner("w1"), w, campaign, work)
        assert _sends(fake) == [1]
        assert work.lease_until is not None and work.lease_until > utcnow()
        assert await w.counts() == {"sent": 1}


async def test_a_claim_is_held_while_its_turn_is_late(tmp_path: Path, db: Database) -> None:
    """Other workers on the sender put the turn past the claim: the claim is
    extended, so no other worker takes the row meanwhile (and books a turn of
    its own, which this worker's mark then makes it lose, and so on)."""
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=1) as w,
    ):
        w.config.campaigns.claim_lease_seconds = 0.3
        async with db.write() as s:  # another worker's sends take the sender's next 1.5 s
            campaign = await s.get(Campaign, w.campaign_id)
            assert campaign is not None
            busy = utcnow() + timedelta(seconds=1.5)
            await s.execute(dialect_insert(s, SmsPacing).values(sender=campaign.sender, next_at=busy))
        task = asyncio.create_task(w.runner("w1").run_campaign(w.campaign_id))
        try:
            await asyncio.sleep(0.8)  # the claim alone would have ended 0.5 s ago
            (row,) = await w.rows()
            assert (row.status, row.claimed_by) == ("pending", "w1")
            assert row.lease_until is not None and row.lease_until > busy
            assert await w.runner("w2")._claim(campaign, 50) == []
            assert await asyncio.wait_for(task, 30) == "completed"
        finally:
            task.cancel()
        assert _sends(fake) == [1]
