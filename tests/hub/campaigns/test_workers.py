"""Two real worker processes on PostgreSQL (and Redis, which separate
processes need) send one campaign together: recipients are claimed with
SKIP LOCKED so nobody gets a message twice, both workers take part, and their
shared token bucket keeps the sender's rate between them."""

from __future__ import annotations

import json
import re
import secrets
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from sqlalchemy import select

from storage.db import Database
from storage.models import Campaign, CampaignRecipient
from tests.fakes.twilio import FakeTwilio
from tests.hub.campaigns.helpers import seed_contacts, us_numbers
from tests.hub.campaigns.test_runner import _assert_paced
from tests.hub.procs import HubProcess, hub_env, run_cli
from tests.hub.twilio_helpers import ACCOUNT, TOKEN, eventually

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

PROMO = "+15550002222"
AUDIENCE = 2000
RATE = 300.0


async def test_two_workers_never_send_to_the_same_recipient(
    tmp_path: Path, postgres_url: str, redis: aioredis.Redis
) -> None:
    prefix = f"hubtest:{secrets.token_hex(4)}"
    async with FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake:
        config = tmp_path / "config.yaml"
        config.write_text(
            json.dumps(
                {
                    "redis": {"stream": f"{prefix}:events", "live_channel": f"{prefix}:live"},
                    "twilio": {
                        "api_base_url": fake.base_url,
                        "senders": [{"inbox": "promo", "number": PROMO, "messages_per_second": RATE}],
                    },
                    # Small claims, so the two workers interleave through the whole audience.
                    "campaigns": {"quiet_hours": None, "claim_batch": 25, "poll_seconds": 0.2},
                }
            ),
            encoding="utf-8",
        )
        env = hub_env(
            tmp_path / "data",
            HUB_CONFIG=str(config),
            HUB_DATABASE_URL=postgres_url,
            HUB_REDIS_URL="redis://127.0.0.1:6379/0",
            TWILIO_ACCOUNT_SID=ACCOUNT,
            TWILIO_AUTH_TOKEN=TOKEN,
        )
        run_cli(["migrate"], env)
        db = Database(postgres_url)
        try:
            phones = us_numbers(AUDIENCE)
            await seed_contacts(db, phones)
            out = run_cli(
                ["campaign", "create", "--name", "Both", "--sender", PROMO, "--template", "Hello {{ first_name }}"], env
            )
            match = re.search(r"Campaign (\d+) \(Both\)", out)
            assert match, out
            cid = int(match.group(1))
            workers = [HubProcess(env, "worker", log=tmp_path / f"worker{i}.log") for i in range(2)]
            for w in workers:
                await w.start()
            try:
                run_cli(["campaign", "send", str(cid), "--yes", "--detach"], env)

                async def completed() -> bool:
                    async with db.read() as s:
                        return await s.scalar(select(Campaign.status).where(Campaign.id == cid)) == "completed"

                await eventually(completed, timeout=100)
            finally:
                for w in workers:
                    w.stop()
            async with db.read() as s:
                rows = (await s.scalars(select(CampaignRecipient).where(CampaignRecipient.campaign_id == cid))).all()
        finally:
            await db.dispose()
        sends = Counter(m["to"] for m in fake.messages)
        assert max(sends.values()) == 1
        assert set(sends) == set(phones)
        assert Counter(r.status for r in rows) == {"sent": AUDIENCE}
        by_worker = Counter(r.claimed_by for r in rows)
        assert len(by_worker) == 2, by_worker  # both took part
        _assert_paced([r for r in fake.requests if r.path.endswith("/Messages.json")], RATE)
