"""How the sending loop stops and starts again, on both engines: Twilio that
cannot be reached at all (nothing lost, the campaign pauses and says why)
against Twilio that may have the message (uncertain, then looked up in
Twilio's message list: sent once, never twice); a worker stopped mid-batch
(the rows it never handed to Twilio go back to pending); a cancel while a 429
is being answered (nothing pending is left in a cancelled campaign); a run
started after a crash that left rows ``sending``."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import select, update

from hub.attachments import AttachmentStore
from hub.campaigns import actions as ca
from hub.campaigns import runner as runner_module
from hub.campaigns.audience import SegmentFilter
from hub.campaigns.runner import CALLBACK_PARAM, CampaignReceipts, CampaignRunner
from hub.config import HubConfig, load_config
from hub.core import Channel, DeliveryReceipt, DeliveryStatus
from hub.telephony import TwilioService
from storage.db import Database
from storage.models import Campaign, CampaignRecipient
from tests.fakes.twilio import FakeTwilio
from tests.hub.campaigns.helpers import seed_contacts, us_numbers
from tests.hub.twilio_helpers import ACCOUNT, TOKEN, eventually, free_port

PROMO = "+15550002222"


@dataclass
class World:
    db: Database
    twilio: TwilioService
    config: HubConfig
    campaign_id: int

    def runner(self, owner: str = "w1") -> CampaignRunner:
        return CampaignRunner(self.db, self.twilio, self.config.campaigns, owner=owner)

    async def counts(self) -> dict[str, int]:
        async with self.db.read() as s:
            return {k: int(v["count"]) for k, v in (await ca.counts(s, self.campaign_id)).items()}

    async def rows(self) -> list[CampaignRecipient]:
        async with self.db.read() as s:
            q = select(CampaignRecipient).where(CampaignRecipient.campaign_id == self.campaign_id)
            return list((await s.scalars(q.order_by(CampaignRecipient.id))).all())

    async def view(self) -> dict[str, Any]:
        async with self.db.read() as s:
            return await ca.campaign_view(s, await ca.check_campaign(s, self.campaign_id))

    async def report(self) -> dict[str, Any]:
        async with self.db.read() as s:
            return await ca.report(s, await ca.check_campaign(s, self.campaign_id))

    async def cancel(self) -> None:
        async with self.db.write() as s:
            await ca.do_cancel(s, await ca.check_campaign(s, self.campaign_id, lock=True))


@asynccontextmanager
async def world(tmp_path: Path, db: Database, api_base: str, *, rate: float, audience: int) -> AsyncIterator[World]:
    config = load_config(
        path=None,
        env={"HUB_SECRET_KEY": "x", "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "logging.level": "WARNING",
            "twilio.api_base_url": api_base,
            "twilio.senders": [{"inbox": "promo", "number": PROMO, "messages_per_second": rate}],
            "campaigns.quiet_hours": None,
            "campaigns.poll_seconds": 0.05,
            "campaigns.reconcile_after_seconds": 0.05,
        },
    )
    twilio = TwilioService(config, db, AttachmentStore(config.attachments_dir, max_bytes=config.attachments.max_bytes))
    await seed_contacts(db, us_numbers(audience))
    async with db.write() as s:
        spec = ca.CampaignSpec(name="t", sender="promo", template="Hi {{ first_name }}", segment=SegmentFilter())
        campaign = await ca.do_create_campaign(s, twilio, config.campaigns, spec)
        await ca.do_start(s, campaign)
        cid = campaign.id
    try:
        yield World(db, twilio, config, cid)
    finally:
        await twilio.sms.close()


async def test_unreachable_twilio_pauses_the_campaign_and_loses_nothing(tmp_path: Path, db: Database) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # connection refused: Twilio never sees a request
    async with world(tmp_path, db, nobody, rate=50, audience=40) as w:
        runner = w.runner()
        runner.unreachable_pause_after = 3
        runner.unreachable_backoff = 0.01
        assert await runner.run_campaign(w.campaign_id) == "paused"
        assert await w.counts() == {"pending": 40}
        rows = await w.rows()
        assert all(r.attempts == 0 and r.claimed_by is None for r in rows)
        assert "could not be reached, nothing was sent" in (rows[0].reason or "")
        view = await w.view()
        assert view["status"] == "paused"
        assert view["status_reason"].startswith("Twilio could not be reached 3 times in a row")
        assert "ClientConnectorError" in view["status_reason"]
        report = await w.report()
        assert report["pending"] == 40 and report["uncertain"] == 0
        assert report["status_reason"] == view["status_reason"]
        # Resumed once Twilio is back, everyone gets their message.
        async with FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake:
            w.twilio.sms.api_base_url = fake.base_url
            await w.twilio.sms.close()
            async with db.write() as s:
                await ca.do_start(s, await ca.check_campaign(s, w.campaign_id, lock=True))
            assert (await w.view())["status_reason"] is None
            async with db.write() as s:  # the backoff is over
                await s.execute(update(CampaignRecipient).values(not_before=None))
            assert await w.runner().run_campaign(w.campaign_id) == "completed"
            assert await w.counts() == {"sent": 40}
            assert len(fake.messages) == 40


async def test_a_connection_dropped_mid_answer_is_uncertain(tmp_path: Path, db: Database) -> None:
    """Twilio got the request and may have sent the message, and its message
    list cannot be read either: never resent, asked a few times, then shown."""

    async def drop(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", drop)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        world(tmp_path, db, str(server.make_url("")).rstrip("/"), rate=50, audience=5) as w,
    ):
        assert await w.runner().run_campaign(w.campaign_id) == "completed"
        assert await w.counts() == {"uncertain": 5}
        assert (await w.view())["status_reason"] is None
        for r in await w.rows():
            assert r.lookups == 5 and r.not_before is None and r.attempts == 1
            assert "could not be asked 5 times, so it is left uncertain" in (r.reason or ""), r.reason


async def test_a_send_that_timed_out_but_went_through_is_not_sent_again(tmp_path: Path, db: Database) -> None:
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=6) as w,
    ):
        w.twilio.sms.timeout = 0.3
        fake.stall_next(1.0, times=2)  # Twilio takes them but answers too late
        fake.failing_lookups = 1  # and the first lookup fails: asked again later
        assert await asyncio.wait_for(w.runner().run_campaign(w.campaign_id), 60) == "completed"
        assert await w.counts() == {"sent": 6}
        assert _sends(fake) == [1] * 6
        by_sid = {m["sid"]: m["to"] for m in fake.messages}
        rows = await w.rows()
        assert all(by_sid[r.external_id] == r.phone for r in rows if r.external_id)
        found = [r for r in rows if "Twilio had taken it" in (r.reason or "")]
        assert len(found) == 2 and all(r.external_id and r.attempts == 1 for r in found)


async def test_a_send_twilio_never_took_is_sent_after_the_lookup(tmp_path: Path, db: Database) -> None:
    """A 5xx: Twilio may have it; its list says it has not, so it is sent."""
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=4) as w,
    ):
        fake.fail_next(500, 20500)
        assert await asyncio.wait_for(w.runner().run_campaign(w.campaign_id), 60) == "completed"
        assert await w.counts() == {"sent": 4}
        assert _sends(fake) == [1] * 4
        posts = [r for r in fake.requests if r.method == "POST"]
        lookups = [r for r in fake.requests if r.method == "GET"]
        assert len(posts) == 5 and len(lookups) == 1
        # The lookup came before the second send to that number.
        refused = posts[0].one("To")
        again = next(r for r in posts[1:] if r.one("To") == refused)
        assert lookups[0].at < again.at
        assert all(r.attempts == 1 and r.external_id for r in await w.rows())


async def test_a_stopped_worker_returns_what_it_never_sent(tmp_path: Path, db: Database) -> None:
    # 20 a second: rows are marked sending ten at a time, then paced out.
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=20, audience=60) as w,
    ):
        task = asyncio.create_task(w.runner().run_campaign(w.campaign_id))
        await eventually(lambda: _at_least(fake, 3))
        task.cancel()  # as SIGTERM / Ctrl-C do
        with suppress(asyncio.CancelledError):
            await task
        counts = await w.counts()
        assert "sending" not in counts and "uncertain" not in counts, counts
        assert counts["sent"] == len(fake.messages)
        assert counts["sent"] + counts["pending"] == 60
        assert all(r.attempts == 0 and r.claimed_by is None for r in await w.rows() if r.status == "pending")
        # Another run sends the rest, and nobody twice.
        assert await w.runner("w2").run_campaign(w.campaign_id) == "completed"
        assert await w.counts() == {"sent": 60}
        assert len({m["to"] for m in fake.messages}) == len(fake.messages) == 60


async def test_cancel_while_twilio_answers_429_leaves_nothing_pending(tmp_path: Path, db: Database) -> None:
    asked = asyncio.Event()
    answer = asyncio.Event()

    async def too_many(request: web.Request) -> web.Response:
        await request.read()
        asked.set()
        await answer.wait()
        body = {"code": 20429, "message": "Too Many Requests", "more_info": "", "status": 429}
        return web.json_response(body, status=429)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", too_many)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        world(tmp_path, db, str(server.make_url("")).rstrip("/"), rate=1, audience=3) as w,
    ):
        task = asyncio.create_task(w.runner().run_campaign(w.campaign_id))
        await asyncio.wait_for(asked.wait(), 30)
        await w.cancel()  # while the send is with Twilio
        answer.set()
        assert await asyncio.wait_for(task, 30) == "cancelled"
        rows = await w.rows()
        assert [(r.status, r.reason) for r in rows] == [("skipped", "cancelled")] * 3


async def test_a_run_after_a_crash_settles_rows_left_sending(tmp_path: Path, db: Database) -> None:
    """The CLI's ``send`` has no worker tick to mark abandoned rows: it must
    not wait for them forever."""
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=10) as w,
    ):
        first = (await w.rows())[0].id
        async with db.write() as s:  # what a SIGKILL mid-send leaves
            await s.execute(
                update(CampaignRecipient)
                .where(CampaignRecipient.id == first)
                .values(status="sending", claimed_by="cli-old", lease_until=datetime(2000, 1, 1, tzinfo=UTC))
            )
        assert await asyncio.wait_for(w.runner("cli-new").run_campaign(w.campaign_id), 60) == "completed"
        # Twilio's list has no message to it: it was never taken, so it is sent now.
        assert await w.counts() == {"sent": 10}
        assert _sends(fake) == [1] * 10


async def test_a_send_twilio_took_before_the_crash_is_found_not_resent(tmp_path: Path, db: Database) -> None:
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=3) as w,
    ):
        first = (await w.rows())[0]
        # The crashed worker's request reached Twilio; its answer never came back.
        taken = await w.twilio.sms.send_sms(w.twilio.sms.senders["promo"], first.phone, first.body)
        async with db.write() as s:
            await s.execute(
                update(CampaignRecipient)
                .where(CampaignRecipient.id == first.id)
                .values(
                    status="sending", claimed_by="cli-old", attempts=1, lease_until=datetime(2000, 1, 1, tzinfo=UTC)
                )
            )
        assert await asyncio.wait_for(w.runner("cli-new").run_campaign(w.campaign_id), 60) == "completed"
        assert await w.counts() == {"sent": 3}
        assert _sends(fake) == [1] * 3
        row = (await w.rows())[0]
        assert row.external_id == taken.external_id and row.attempts == 1


async def _at_least(fake: FakeTwilio, n: int) -> bool:
    await asyncio.sleep(0)
    return len(fake.messages) >= n


def _sends(fake: FakeTwilio) -> list[int]:
    """Messages Twilio took per number."""
    return sorted(Counter(m["to"] for m in fake.messages).values())


async def test_a_status_callback_settles_an_uncertain_send(tmp_path: Path, db: Database) -> None:
    """Twilio took a send whose answer came too late, and says so in a status
    callback (queued): sent, never looked up and resent."""
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=3) as w,
    ):
        w.twilio.sms.timeout = 0.3
        w.config.campaigns.reconcile_after_seconds = 600  # the callback comes first
        fake.stall_next(1.0)
        assert await w.runner().run_campaign(w.campaign_id, until_idle=True) == "running"
        (row,) = [r for r in await w.rows() if r.status == "uncertain"]
        (sid,) = [m["sid"] for m in fake.messages if m["to"] == row.phone]
        receipts = CampaignReceipts(db, w.twilio, w.config.campaigns)
        receipt = DeliveryReceipt(channel=Channel.SMS, external_id=sid, status=DeliveryStatus.QUEUED)
        # A recipient id that is no id ("²": str.isdigit passes it, int raised)
        # places nothing, and breaks nothing.
        assert not await receipts.on_receipt(receipt, {CALLBACK_PARAM: "²"})
        assert await receipts.on_receipt(receipt, {CALLBACK_PARAM: str(row.id)})
        assert await w.counts() == {"sent": 3}
        (row,) = [r for r in await w.rows() if r.id == row.id]
        assert (row.external_id, row.reason) == (sid, None)
        assert await w.runner().run_campaign(w.campaign_id) == "completed"
        assert _sends(fake) == [1] * 3


async def test_an_uncertain_send_whose_sid_is_known_is_sent_without_a_lookup(tmp_path: Path, db: Database) -> None:
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=2) as w,
    ):
        first = (await w.rows())[0]
        taken = await w.twilio.sms.send_sms(w.twilio.sms.senders["promo"], first.phone, first.body)
        async with db.write() as s:  # an earlier receipt named it, but the row stayed uncertain
            await s.execute(
                update(CampaignRecipient)
                .where(CampaignRecipient.id == first.id)
                .values(status="uncertain", external_id=taken.external_id, not_before=datetime(2000, 1, 1, tzinfo=UTC))
            )
        assert await w.runner().run_campaign(w.campaign_id) == "completed"
        assert await w.counts() == {"sent": 2}
        assert _sends(fake) == [1, 1]
        assert not [r for r in fake.requests if r.method == "GET"]


async def test_consent_withdrawn_after_the_audience_was_chosen_is_honoured(tmp_path: Path, db: Database) -> None:
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=5) as w,
    ):
        first = (await w.rows())[0]
        async with db.write() as s:
            await ca.do_set_sms_consent(s, first.contact_id, consent=False, source="customer asked", actor="agent")
        assert await w.runner().run_campaign(w.campaign_id) == "completed"
        assert await w.counts() == {"sent": 4, "skipped": 1}
        assert [(r.status, r.reason) for r in await w.rows() if r.id == first.id] == [("skipped", "no_consent")]
        assert first.phone not in {m["to"] for m in fake.messages}


async def test_a_cancel_stops_rows_already_marked_sending(
    tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20 a second: ten rows at a time are marked sending, then paced out one by one.
    monkeypatch.setattr(runner_module, "STATUS_CHECK_SECONDS", 0.0)
    handed: list[int] = []  # rows handed to a send task, in order
    send_one = CampaignRunner._send_one

    async def counted(self: CampaignRunner, campaign: Any, sender: Any, w: Any, slots: asyncio.Semaphore) -> None:
        handed.append(w.id)
        await send_one(self, campaign, sender, w, slots)

    monkeypatch.setattr(CampaignRunner, "_send_one", counted)
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=20, audience=40) as w,
    ):
        task = asyncio.create_task(w.runner().run_campaign(w.campaign_id))
        await eventually(lambda: _at_least(fake, 3))
        await w.cancel()
        at_cancel = len(handed)
        assert await asyncio.wait_for(task, 30) == "cancelled"
        # Counted where the runner hands rows over, not where Twilio gets them,
        # so that a slow machine (sends in flight longer) cannot move it: only
        # the row whose status check came just before the cancel committed may
        # still go.
        assert len(handed) <= at_cancel + 1, (at_cancel, len(handed))
        assert sorted(handed) == sorted({r.id for r in await w.rows() if r.status == "sent"})
        counts = await w.counts()
        assert counts["sent"] == len(fake.messages) == len(handed), (counts, len(fake.messages))
        assert counts["skipped"] == 40 - len(handed), counts


async def test_a_refusal_after_a_429_is_reported_with_its_own_code(tmp_path: Path, db: Database) -> None:
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=1) as w,
    ):
        fake.fail_next(429, 20429)
        fake.fail_next(400, 21211)
        assert await asyncio.wait_for(w.runner().run_campaign(w.campaign_id), 60) == "completed"
        (row,) = await w.rows()
        assert (row.status, row.error_code) == ("failed", "21211")
        assert (await w.report())["failed_by_error_code"] == {"21211": 1}


async def test_a_rate_too_slow_to_pace_pauses_the_campaign_with_the_reason(tmp_path: Path, db: Database) -> None:
    """Created before such rates were refused: the pacer overflowed on every
    tick and the campaign stayed "running" for ever, nothing said."""
    async with (
        FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake,
        world(tmp_path, db, fake.base_url, rate=50, audience=2) as w,
    ):
        async with db.write() as s:
            await s.execute(update(Campaign).where(Campaign.id == w.campaign_id).values(rate_per_second=1e-300))
        assert await asyncio.wait_for(w.runner().run_campaign(w.campaign_id), 30) == "paused"
        view = await w.view()
        assert view["status_reason"].startswith("its rate, 1e-300 segments per second, is below the slowest"), view
        assert await w.counts() == {"pending": 2}
        assert fake.messages == []
