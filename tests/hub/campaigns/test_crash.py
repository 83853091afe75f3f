"""SIGKILL the real ``crm-hub serve`` in the middle of a campaign and start it
again: nobody is sent to twice (the fake counts sends per number), the few
whose send was in flight are marked uncertain and looked up in Twilio's
message list (taken: sent; never taken: sent now), and the rest of the
campaign goes out. Created and started with the CLI, as a marketer would."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.db import Database
from storage.models import Campaign, CampaignRecipient
from tests.fakes.twilio import FakeTwilio
from tests.hub.campaigns.helpers import seed_contacts, us_numbers
from tests.hub.procs import HubProcess, free_port, hub_env, run_cli
from tests.hub.twilio_helpers import ACCOUNT, TOKEN, eventually

pytestmark = pytest.mark.slow

PROMO = "+15550002222"
AUDIENCE = 1200


async def test_sigkill_mid_campaign_and_resume_sends_nobody_twice(tmp_path: Path) -> None:
    async with FakeTwilio({ACCOUNT: TOKEN}, callback_statuses=()) as fake:
        port = free_port()
        config = tmp_path / "config.yaml"
        config.write_text(
            json.dumps(
                {
                    "twilio": {
                        "api_base_url": fake.base_url,
                        # Under half the send lease: a send must end well within it.
                        "request_timeout_seconds": 1.5,
                        "senders": [{"inbox": "promo", "number": PROMO, "messages_per_second": 150}],
                    },
                    "campaigns": {
                        "quiet_hours": None,
                        "send_lease_seconds": 4,
                        "claim_lease_seconds": 3,
                        "poll_seconds": 0.2,
                    },
                }
            ),
            encoding="utf-8",
        )
        env = hub_env(
            tmp_path / "data",
            HUB_CONFIG=str(config),
            HUB_PUBLIC_URL=f"http://127.0.0.1:{port}",
            TWILIO_ACCOUNT_SID=ACCOUNT,
            TWILIO_AUTH_TOKEN=TOKEN,
        )
        run_cli(["migrate"], env)
        db = Database(f"sqlite+aiosqlite:///{(tmp_path / 'data' / 'hub.db').resolve()}")
        phones = us_numbers(AUDIENCE)
        try:
            await seed_contacts(db, phones)
        finally:
            await db.dispose()
        out = run_cli(["campaign", "create", "--name", "Flash", "--sender", "promo",
                       "--template", "Flash sale today only, {{ first_name }}!"], env)  # fmt: skip
        match = re.search(r"Campaign (\d+) \(Flash\): draft", out)
        assert match, out
        cid = match.group(1)
        assert f"{AUDIENCE} messages, {AUDIENCE} segments" in out
        assert "Flash sale today only, Customer!\nReply STOP to opt out." in run_cli(["campaign", "preview", cid], env)
        run_cli(["campaign", "send", cid, "--yes", "--detach"], env)

        server = HubProcess(env, port=port, log=tmp_path / "hub.log")
        await server.start()
        try:
            await eventually(lambda: _at_least(fake, 300), timeout=60)
            # Killed while Twilio holds the answer to a send it has taken, so
            # that something surely is in flight, whatever the machine's speed.
            fake.stall_next(10)
            await eventually(lambda: _no_stall_left(fake), timeout=60)
        finally:
            server.kill()
        at_kill = len(fake.messages)
        assert at_kill < AUDIENCE, "the campaign finished before the kill; nothing was tested"

        server = HubProcess(env, port=port, log=tmp_path / "hub.log")
        await server.start()
        db = Database(f"sqlite+aiosqlite:///{(tmp_path / 'data' / 'hub.db').resolve()}")
        try:

            async def completed() -> bool:
                async with db.read() as s:
                    return await s.scalar(select(Campaign.status).where(Campaign.id == int(cid))) == "completed"

            await eventually(completed, timeout=90)
            async with db.read() as s:
                rows = (await s.scalars(select(CampaignRecipient))).all()
        finally:
            server.stop()
            await db.dispose()
        sends = Counter(m["to"] for m in fake.messages)
        assert max(sends.values()) == 1, f"sent twice: {[p for p, n in sends.items() if n > 1][:5]}"
        assert len(fake.messages) > at_kill, "nothing was sent after the restart"
        status = Counter(r.status for r in rows)
        # Everyone got their message exactly once, the ones in flight at the kill included.
        assert status == {"sent": AUDIENCE}, status
        assert set(sends) == set(phones)
        by_sid = {m["sid"]: m["to"] for m in fake.messages}
        for r in rows:
            assert sends[r.phone] == 1 and by_sid[r.external_id] == r.phone
        # The rows in flight at the kill were looked up; those Twilio had taken were not resent.
        assert any(r.reason and "Twilio had taken it" in r.reason for r in rows), "nothing was in flight at the kill"
        report = json.loads(run_cli(["campaign", "report", cid], env))
        assert report["uncertain"] == 0
        assert report["sent"] == AUDIENCE


async def _at_least(fake: FakeTwilio, n: int) -> bool:
    await asyncio.sleep(0)
    return len(fake.messages) >= n


async def _no_stall_left(fake: FakeTwilio) -> bool:
    return fake.stalls_pending == 0
