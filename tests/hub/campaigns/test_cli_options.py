"""``crm-hub campaign`` after the review: --csv refuses segment options
instead of ignoring them; resume refuses anything but a paused campaign;
per-campaign quiet hours from the command line; rebuild chooses a segment
draft's audience again."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hub.cli import main
from storage.db import Database
from tests.hub.campaigns.helpers import seed_contacts, us_numbers
from tests.hub.procs import hub_env
from tests.hub.twilio_helpers import ACCOUNT, TOKEN


@pytest.fixture
def cli(tmp_path: Path) -> CliRunner:
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "twilio": {
                    "api_base_url": "http://127.0.0.1:9",
                    "senders": [{"inbox": "promo", "number": "+15550002222"}],
                }
            }
        ),
        encoding="utf-8",
    )
    env = hub_env(tmp_path / "data", HUB_CONFIG=str(config), TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=TOKEN)
    runner = CliRunner(env=env)
    assert runner.invoke(main, ["migrate"]).exit_code == 0
    return runner


CREATE = ["campaign", "create", "--name", "X", "--sender", "promo", "--template", "Hi"]


def _created(result: Result) -> int:
    assert result.exit_code == 0, result.output
    match = re.search(r"Campaign (\d+) \(X\): draft", result.output)
    assert match, result.output
    return int(match.group(1))


def _campaigns(tmp_path: Path) -> list[tuple[int, str, str | None]]:
    with sqlite3.connect(tmp_path / "data" / "hub.db") as conn:
        return list(conn.execute("SELECT id, status, quiet_hours FROM campaigns ORDER BY id"))


def test_csv_cannot_be_combined_with_a_segment(cli: CliRunner, tmp_path: Path) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text("phone,consent,city\n+14155550101,yes,Berlin\n+14155550102,yes,Paris\n", encoding="utf-8")
    result = cli.invoke(main, [*CREATE, "--csv", str(leads), "--tag", "vip", "--attr", "city=Berlin"])
    assert result.exit_code == 2, result.output
    assert "--csv cannot be combined with --tag, --attr" in result.output
    assert _campaigns(tmp_path) == []
    assert _created(cli.invoke(main, [*CREATE, "--csv", str(leads)])) == 1


def test_resume_refuses_a_draft(cli: CliRunner, tmp_path: Path) -> None:
    cid = _created(cli.invoke(main, CREATE))
    result = cli.invoke(main, ["campaign", "resume", str(cid)])
    assert result.exit_code == 1
    assert f"campaign {cid} is draft, not paused; use `crm-hub campaign send {cid}`" in result.output
    assert _campaigns(tmp_path)[0][1] == "draft"


def test_quiet_hours_per_campaign(cli: CliRunner, tmp_path: Path) -> None:
    _created(cli.invoke(main, [*CREATE, "--quiet-hours", "22:00-08:30"]))
    assert json.loads(_campaigns(tmp_path)[0][2] or "null") == {"start": "22:00", "end": "08:30"}
    for bad in ("22:00", "25:00-08:00", "09:00-09:00"):
        result = cli.invoke(main, [*CREATE, "--quiet-hours", bad])
        assert result.exit_code == 2 and "--quiet-hours" in result.output, result.output
    result = cli.invoke(main, [*CREATE, "--quiet-hours", "22:00-08:00", "--no-quiet-hours"])
    assert result.exit_code == 2 and "not both" in result.output
    assert len(_campaigns(tmp_path)) == 1


def _seed(tmp_path: Path, phones: list[str]) -> None:
    async def seed() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'hub.db'}")
        try:
            await seed_contacts(db, phones, tags=["vip"])
        finally:
            await db.dispose()

    asyncio.run(seed())


def test_rebuild_chooses_the_audience_again(cli: CliRunner, tmp_path: Path) -> None:
    _seed(tmp_path, us_numbers(2))
    created = cli.invoke(main, [*CREATE, "--tag", "vip"])
    cid = _created(created)
    assert "2 messages" in created.output
    _seed(tmp_path, us_numbers(3, start=100))
    result = cli.invoke(main, ["campaign", "rebuild", str(cid)])
    assert result.exit_code == 0, result.output
    assert f"Campaign {cid} (X): draft" in result.output and "5 messages" in result.output
    assert "incomplete" not in result.output

    result = cli.invoke(main, ["campaign", "rebuild", "999"])
    assert result.exit_code == 1 and "campaign 999" in result.output, result.output
