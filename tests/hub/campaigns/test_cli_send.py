"""``crm-hub campaign send`` as a marketer runs it: it joins a campaign that is
already running and finishes it even when an earlier crash left a row
``sending``; SIGTERM stops it without losing the messages it had not yet
handed to Twilio."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from storage.db import Database
from storage.models import Campaign, CampaignRecipient
from tests.fakes.twilio import FakeTwilio
from tests.hub.campaigns.helpers import seed_contacts, us_numbers
from tests.hub.procs import CLI, hub_env, run_cli
from tests.hub.twilio_helpers import ACCOUNT, TOKEN, eventually

pytestmark = pytest.mark.slow

PROMO = "+15550002222"


def _env(tmp_path: Path, fake: FakeTwilio, rate: float) -> dict[str, str]:
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "twilio": {
                    "api_base_url": fake.base_url,
                    "request_timeout_seconds": 2,  # under half the send lease
                    "senders": [{"inbox": "promo", "number": PROMO, "messages_per_second": rate}],
                },
                "campaigns": {"quiet_hours": None, "poll_seconds": 0.2, "send_lease_seconds": 5},
            }
        ),
        encoding="utf-8",
    )
    return hub_env(tmp_path / "data", HUB_CONFIG=str(config), TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=TOKEN)


async def _campaign(tmp_path: Path, env: dict[str, str], audience: int) -> tuple[Database, int]:
    await asyncio.to_thread(run_cli, ["migrate"], env)
    db = Database(f"sqlite+aiosqlite:///{(tmp_path / 'data' / 'hub.db').resolve()}")
    await seed_contacts(db, us_numbers(audience))
    create = ["campaign", "create", "--name", "Flash", "--sender", "promo", "--template", "Hi {{ first_name }}"]
    out = await asyncio.to_thread(run_cli, create, env)
    match = re.search(r"Campaign (\d+) \(Flash\): draft", out)
    assert match, out
    return db, int(match.group(1))


async def _counts(db: Database, cid: int) -> Counter[str]:
    async with db.read() as s:
        q = select(CampaignRecipient.status).where(CampaignRecipient.campaign_id == cid)
        return Counter((await s.scalars(q)).all())


async def test_send_joins_a_running_campaign_left_mid_send_by_a_crash(tmp_path: Path) -> None:
    async with FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake:
        env = _env(tmp_path, fake, rate=50)
        db, cid = await _campaign(tmp_path, env, audience=20)
        try:
            await asyncio.to_thread(run_cli, ["campaign", "send", str(cid), "--yes", "--detach"], env)
            async with db.write() as s:  # what a SIGKILL of an earlier `send` leaves
                first = await s.scalar(select(CampaignRecipient.id).order_by(CampaignRecipient.id).limit(1))
                await s.execute(
                    update(CampaignRecipient)
                    .where(CampaignRecipient.id == first)
                    .values(status="sending", claimed_by="cli-old", lease_until=datetime(2000, 1, 1, tzinfo=UTC))
                )
            out = await asyncio.to_thread(run_cli, ["campaign", "send", str(cid), "--yes"], env)
            assert f"Campaign {cid} is completed." in out
            # The row left mid-send was looked up in Twilio's list: never taken, so sent now, once.
            assert await _counts(db, cid) == {"sent": 20}
            assert len(fake.messages) == len({m["to"] for m in fake.messages}) == 20
        finally:
            await db.dispose()


async def test_sigterm_returns_unsent_rows_to_pending(tmp_path: Path) -> None:
    async with FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake:
        # 20 a second: ten rows at a time are marked sending, then paced out.
        env = _env(tmp_path, fake, rate=20)
        db, cid = await _campaign(tmp_path, env, audience=200)
        try:
            proc = subprocess.Popen(
                [CLI, "campaign", "send", str(cid), "--yes"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                await eventually(lambda: _sent_at_least(fake, 15), timeout=60)
                proc.send_signal(signal.SIGTERM)
                out, err = await asyncio.to_thread(proc.communicate, timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert proc.returncode == 0, err
            assert "Stopped watching" in out
            counts = await _counts(db, cid)
            assert counts["sending"] == 0 and counts["uncertain"] == 0, counts
            assert counts["sent"] == len(fake.messages) and counts["pending"] == 200 - counts["sent"]
            async with db.read() as s:
                assert await s.scalar(select(Campaign.status).where(Campaign.id == cid)) == "running"
        finally:
            await db.dispose()


@pytest.mark.parametrize("rate", ["-5", "0", "nan", "1e-300", "0.001"])
def test_create_refuses_a_rate_too_slow_to_pace(tmp_path: Path, rate: str) -> None:
    """Such a campaign used to be created, then failed the moment it was sent
    (1e-300: the pacer overflowed on every tick) and stayed "running" for ever."""
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {"twilio": {"api_base_url": "http://127.0.0.1:9", "senders": [{"inbox": "promo", "number": PROMO}]}}
        ),
        encoding="utf-8",
    )
    env = hub_env(tmp_path / "data", HUB_CONFIG=str(config), TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=TOKEN)
    run_cli(["migrate"], env)
    create = ["campaign", "create", "--name", "Slow", "--sender", "promo", "--template", "Hi", "--rate", rate]
    done = subprocess.run([CLI, *create], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "--rate" in done.stderr and "below 0.01 segments per second" in done.stderr, done.stderr
    assert run_cli(["campaign", "status"], env) == ""


@pytest.mark.parametrize("rate", [-5.0, 0.0, float("nan"), 1e-300, 0.009])
async def test_no_path_creates_a_campaign_with_a_rate_too_slow_to_pace(
    tmp_path: Path, db: Database, rate: float
) -> None:
    from hub.attachments import AttachmentStore
    from hub.campaigns import actions as ca
    from hub.config import load_config
    from hub.errors import ValidationFailed
    from hub.telephony import TwilioService

    config = load_config(
        path=None,
        env={"HUB_SECRET_KEY": "x", "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN},
        overrides={"data_dir": str(tmp_path / "data"), "twilio.senders": [{"inbox": "promo", "number": PROMO}]},
    )
    twilio = TwilioService(config, db, AttachmentStore(config.attachments_dir, max_bytes=config.attachments.max_bytes))
    spec = ca.CampaignSpec(name="t", sender="promo", template="Hi", rate_per_second=rate)
    try:
        with pytest.raises(ValidationFailed, match=r"rate_per_second must be at least 0\.01 segments per second"):
            async with db.write() as s:
                await ca.do_create_campaign(s, twilio, config.campaigns, spec)
    finally:
        await twilio.sms.close()
    async with db.read() as s:
        assert (await s.scalars(select(Campaign))).all() == []


async def _sent_at_least(fake: FakeTwilio, n: int) -> bool:
    await asyncio.sleep(0)
    return len(fake.messages) >= n
