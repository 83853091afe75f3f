"""Contacts in bulk for campaign tests and the benchmark, and small helpers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from hub.attachments import AttachmentStore
from hub.campaigns import actions as ca
from hub.campaigns.audience import CsvAudience
from hub.config import HubConfig, load_config
from hub.core import IdentityKind
from hub.telephony import TwilioService
from storage.db import Database
from storage.ingest import table
from storage.models import Contact, Identity
from tests.hub.twilio_helpers import ACCOUNT, TOKEN

if TYPE_CHECKING:
    import pytest


def promo_config(tmp_path: Path) -> HubConfig:
    """A hub with one Twilio sender, ``promo`` (10 messages a second)."""
    return load_config(
        path=None,
        env={"HUB_SECRET_KEY": "x", "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "logging.level": "WARNING",
            "twilio.senders": [{"inbox": "promo", "number": "+15550002222", "messages_per_second": 10}],
        },
    )


def twilio_service(config: HubConfig, db: Database) -> TwilioService:
    return TwilioService(config, db, AttachmentStore(config.attachments_dir, max_bytes=config.attachments.max_bytes))


async def csv_campaign(
    tmp_path: Path,
    db: Database,
    parsed: CsvAudience,
    *,
    template: str = "Hi {{ first_name }}",
    source: str = "list.csv",
) -> tuple[int, dict[str, Any]]:
    """A draft campaign of the promo sender with ``parsed`` as its audience:
    its id and the audience's answer."""
    config = promo_config(tmp_path)
    twilio = twilio_service(config, db)
    try:
        async with db.write() as s:
            spec = ca.CampaignSpec(name="t", sender="promo", template=template)
            campaign = await ca.do_create_campaign(s, twilio, config.campaigns, spec)
            summary = await ca.do_csv_audience(s, twilio, config.campaigns, campaign, parsed, source=source)
    finally:
        await twilio.sms.close()
    return campaign.id, summary


def us_numbers(n: int, start: int = 0, area: str = "415") -> list[str]:
    """Valid (libphonenumber-assigned) US numbers, America/Los_Angeles for 415."""
    return [
        f"+1{area}555{(start + i) % 10000:04d}"
        if start + i < 10000
        else f"+1{area}{200 + (start + i) // 10000}{(start + i) % 10000:04d}"
        for i in range(n)
    ]


def iran_numbers(n: int, start: int = 0) -> list[str]:
    return [f"+98912{1000000 + start + i:07d}" for i in range(n)]


async def seed_contacts(
    db: Database,
    phones: Sequence[str],
    *,
    consent: bool | None = True,
    tags: Sequence[str] = (),
    stage: str | None = None,
    attributes: dict[str, Any] | None = None,
    names: Sequence[str | None] | None = None,
) -> list[int]:
    """One contact with a phone identity per number (bulk inserts); returns ids."""
    attrs = dict(attributes or {})
    if consent is not None:
        attrs["sms_consent"] = consent
    ids: list[int] = []
    async with db.write() as session:
        for start in range(0, len(phones), 1000):
            chunk = phones[start : start + 1000]
            rows = [
                {
                    "name": (names[start + i] if names else f"Customer {start + i}"),
                    "attributes": attrs,
                    "tags": list(tags),
                    "lifecycle_stage": stage,
                    "lead_score": 0,
                }
                for i in range(len(chunk))
            ]
            new = list((await session.execute(insert(table(Contact)).returning(Contact.id), rows)).scalars().all())
            new.sort()
            await session.execute(
                insert(table(Identity)),
                [
                    {"contact_id": cid, "channel": IdentityKind.PHONE.value, "address": phone}
                    for cid, phone in zip(new, chunk, strict=True)
                ],
            )
            ids.extend(new)
    return ids


async def contact_of(db: Database, phone: str) -> int | None:
    async with db.read() as session:
        return await session.scalar(select(Identity.contact_id).where(Identity.address == phone))


class RenderGate:
    """Holds the first page's render (it runs in a thread) until released:
    a campaign's audience is then being built, for as long as a test needs."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = ca._PageRenderer.render

        def render(renderer: ca._PageRenderer, fresh: list[Any], opted: set[str]) -> list[dict[str, Any]]:
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                assert self.release.wait(60), "the test never released the render"
            return original(renderer, fresh, opted)

        monkeypatch.setattr(ca._PageRenderer, "render", render)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30), "no page was rendered"
