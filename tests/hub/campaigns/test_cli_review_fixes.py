"""``crm-hub campaign`` after the CLI review: a misspelt --stage, --channel or
--rfm is refused naming the option and what there is, before anything is
created (and a stage over the API is a 422); ``send`` exits 1 naming the CLI's
resume command when Twilio cannot be reached and the campaign pauses, and
writes plain progress lines (no carriage-return redraws) when its output is
not a terminal; read-only commands do not warn about Twilio's settings."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select, update

from hub.campaigns import cli as campaign_cli
from hub.campaigns import runner
from hub.cli import main
from storage.db import Database
from storage.models import Campaign, Contact
from tests.hub.campaigns.helpers import seed_contacts, us_numbers
from tests.hub.procs import hub_env
from tests.hub.twilio_helpers import ACCOUNT, TOKEN, twilio_hub

CREATE = ["campaign", "create", "--name", "X", "--sender", "promo", "--template", "Hi"]


@pytest.fixture
def cli(tmp_path: Path) -> CliRunner:
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                # Nothing listens there: Twilio cannot be reached.
                "twilio": {
                    "api_base_url": "http://127.0.0.1:9",
                    "senders": [{"inbox": "promo", "number": "+15550002222"}],
                },
                "campaigns": {"quiet_hours": None, "poll_seconds": 0.1},
            }
        ),
        encoding="utf-8",
    )
    env = hub_env(tmp_path / "data", HUB_CONFIG=str(config), TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=TOKEN)
    runner = CliRunner(env=env)
    assert runner.invoke(main, ["migrate"]).exit_code == 0
    return runner


def _db(tmp_path: Path) -> Database:
    return Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'hub.db'}")


def _seed(tmp_path: Path, n: int, segment: str | None = None) -> None:
    async def seed() -> None:
        db = _db(tmp_path)
        try:
            await seed_contacts(db, us_numbers(n))
            if segment is not None:
                async with db.write() as s:
                    await s.execute(update(Contact).values(segment=segment))
        finally:
            await db.dispose()

    asyncio.run(seed())


def _campaign_count(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "data" / "hub.db") as conn:
        return int(conn.execute("SELECT count(*) FROM campaigns").fetchone()[0])


def _created(result: Result) -> int:
    assert result.exit_code == 0, result.output
    match = re.search(r"Campaign (\d+) \(X\): draft", result.output)
    assert match, result.output
    return int(match.group(1))


@pytest.mark.parametrize(
    ("args", "option", "listed"),
    [
        (["--stage", "customers"], "--stage", "lead, marketing_qualified, sales_qualified, customer"),
        (["--stage", "customer", "--stage", "bogus"], "--stage", "'bogus'"),
        (["--channel", "bogus"], "--channel", "'webchat', 'phone', 'email', 'telegram' or 'rasa'"),
        (["--rfm", "bogus"], "--rfm", "segments contacts are in: none yet"),
    ],
)
def test_a_misspelt_filter_is_refused_naming_its_option(
    cli: CliRunner, tmp_path: Path, args: list[str], option: str, listed: str
) -> None:
    result = cli.invoke(main, [*CREATE, *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {option}:" in result.output and listed in result.output, result.output
    assert "pydantic" not in result.output and "Traceback" not in result.output
    assert _campaign_count(tmp_path) == 0


def test_rfm_segments_are_checked_against_those_contacts_are_in(cli: CliRunner, tmp_path: Path) -> None:
    _seed(tmp_path, 2, segment="champions")
    result = cli.invoke(main, [*CREATE, "--rfm", "champion"])
    assert result.exit_code == 2, result.output
    assert "'champion'" in result.output and "segments contacts are in: champions" in result.output
    assert _campaign_count(tmp_path) == 0
    created = cli.invoke(main, [*CREATE, "--rfm", "champions", "--stage", "customer", "--channel", "phone"])
    assert _created(created) == 1
    # The stage and the segment are both applied: the seeded contacts have no stage.
    assert "0 messages" in created.output
    # --channel beside the phone number a campaign joins (its subquery once lost its FROM).
    assert "2 messages" in cli.invoke(main, [*CREATE, "--rfm", "champions", "--channel", "phone"]).output


async def test_the_api_refuses_an_unknown_lifecycle_stage(tmp_path: Path) -> None:
    overrides = {"twilio.senders": [{"inbox": "promo", "number": "+15550002222"}], "campaigns.quiet_hours": None}
    async with twilio_hub(tmp_path, overrides=overrides) as t:
        admin = await t.agent()
        body = {
            "name": "Spring",
            "sender": "promo",
            "template": "Hi",
            "audience": {"kind": "segment", "filter": {"lifecycle_stages": ["customers"]}},
        }
        error = await admin.post("/api/v1/campaigns", body, status=422)
        assert "lifecycle_stages" in error["error"]["message"], error
        assert "sales_qualified" in error["error"]["message"], error
        async with t.hub.db.read() as s:
            assert await s.scalar(select(func.count()).select_from(Campaign)) == 0
        body["audience"]["filter"] = {"lifecycle_stages": ["customer"]}  # type: ignore[index]
        await admin.post("/api/v1/campaigns", body, status=201)


def test_send_exits_1_naming_resume_when_twilio_cannot_be_reached(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pause after three unreachable rounds, ~1.5 s in (the default takes ~30 s).
    monkeypatch.setattr(runner, "UNREACHABLE_BACKOFF_SECONDS", 0.5)
    monkeypatch.setattr(runner, "UNREACHABLE_PAUSE_AFTER", 3)
    monkeypatch.setattr(campaign_cli, "PROGRESS_LINE_SECONDS", 0.1)
    _seed(tmp_path, 3)
    cid = _created(cli.invoke(main, CREATE))
    result = cli.invoke(main, ["campaign", "send", str(cid), "--yes"])
    assert result.exit_code == 1, result.output
    assert f"campaign {cid} is paused, not completed: Twilio could not be reached 3 times" in result.stderr
    assert f"`crm-hub campaign resume {cid}`" in result.stderr
    assert "Traceback" not in result.output
    # The report is still printed (stdout), the run's outcome on stderr.
    assert json.loads(result.stdout[result.stdout.index("{") :])["status"] == "paused"
    # Not a terminal: plain lines, each ended, no carriage-return redraws.
    assert "\r" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith(f"campaign {cid}: ")]
    assert len(progress) >= 2, result.stderr
    assert progress[-1] == f"campaign {cid}: 0/3 done (0%); delivered 0, failed 0, skipped 0, waiting 3"


def test_read_only_commands_do_not_warn_about_twilio(
    cli: CliRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cid = _created(cli.invoke(main, CREATE))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for args in (["status"], ["status", str(cid)], ["report", str(cid)], ["preview", str(cid)]):
            result = cli.invoke(main, ["campaign", *args])
            assert result.exit_code == 0, result.output
    assert not [r for r in caplog.records if "public_url is not set" in r.getMessage()]
