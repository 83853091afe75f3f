"""The second campaigns review, below the API: ``campaign create`` refuses a
CSV with no importable row, a template variable no recipient has, an empty
tag and an inverted last-contact range (exit 2, naming the option, no draft
left); :func:`do_csv_audience` changes nothing for such a file or for a
segment draft not asked to be replaced; names are read without their line
breaks and tabs."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from hub.campaigns import actions as ca
from hub.campaigns.audience import SegmentFilter, parse_csv
from hub.campaigns.templates import TEMPLATE_VARIABLES, UnknownVariables, check_variables, variables
from hub.cli import main
from hub.errors import Conflict, ValidationFailed
from storage.db import Database
from storage.models import CampaignRecipient, Contact
from tests.hub.campaigns.helpers import promo_config, seed_contacts, twilio_service, us_numbers
from tests.hub.procs import hub_env
from tests.hub.twilio_helpers import ACCOUNT, TOKEN

CREATE = ["campaign", "create", "--name", "X", "--sender", "promo"]


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


def _campaign_count(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "data" / "hub.db") as conn:
        return int(conn.execute("SELECT count(*) FROM campaigns").fetchone()[0])


def test_create_csv_with_no_importable_row_exits_2_listing_them(cli: CliRunner, tmp_path: Path) -> None:
    nat = tmp_path / "nat.csv"
    nat.write_text("phone,consent\n09121234567,yes\n09121234568,yes\n", encoding="utf-8")
    result = cli.invoke(main, [*CREATE, "--template", "hi", "--csv", str(nat)])
    assert result.exit_code == 2, result.output
    assert "Invalid value for --csv:" in result.output and "can be imported (2 invalid)" in result.output
    assert "CSV line 2:" in result.output and "CSV line 3:" in result.output, result.output
    assert _campaign_count(tmp_path) == 0
    empty = tmp_path / "empty.csv"
    empty.write_text("phone,consent\n", encoding="utf-8")
    result = cli.invoke(main, [*CREATE, "--template", "hi", "--csv", str(empty)])
    assert result.exit_code == 2 and "has no rows below its header" in result.output, result.output
    assert _campaign_count(tmp_path) == 0


def test_create_refuses_a_variable_no_recipient_has(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(main, [*CREATE, "--template", "Hi {{ firstname }}", "--tag", "bulk"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for --template:" in result.output, result.output
    assert "'firstname' (did you mean 'first_name'?)" in result.output, result.output
    template = tmp_path / "t.txt"
    template.write_text("{{ lipsum() }}", encoding="utf-8")
    result = cli.invoke(main, [*CREATE, "--template-file", str(template)])
    assert result.exit_code == 2 and "Invalid value for --template-file:" in result.output, result.output
    assert _campaign_count(tmp_path) == 0


@pytest.mark.parametrize(
    ("args", "option", "said"),
    [
        (["--tag", ""], "--tag", "a tag must not be empty"),
        (["--without-tag", " "], "--without-tag", "a tag must not be empty"),
        (
            ["--contacted-after", "2026-12-01T00:00Z", "--contacted-before", "2026-01-01T00:00Z"],
            "--contacted-before",
            "is not later than last_contact_after (--contacted-after)",
        ),
    ],
)
def test_create_refuses_a_filter_that_matches_nobody(
    cli: CliRunner, tmp_path: Path, args: list[str], option: str, said: str
) -> None:
    result = cli.invoke(main, [*CREATE, "--template", "hi", *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {option}:" in result.output and said in result.output, result.output
    assert _campaign_count(tmp_path) == 0


async def test_do_csv_audience_changes_nothing_it_refuses(tmp_path: Path, db: Database) -> None:
    config = promo_config(tmp_path)
    twilio = twilio_service(config, db)
    await seed_contacts(db, us_numbers(3))
    fresh = us_numbers(1, start=50)[0]
    try:
        async with db.write() as s:
            spec = ca.CampaignSpec(name="t", sender="promo", template="Hi", segment=SegmentFilter())
            campaign = await ca.do_create_campaign(s, twilio, config.campaigns, spec)
            cid = campaign.id
        async with db.write() as s:
            campaign = await ca.check_campaign(s, cid)
            bad = parse_csv("phone\nnot a number\n", "US")
            with pytest.raises(ValidationFailed, match="no row can be imported") as caught:
                await ca.do_csv_audience(s, twilio, config.campaigns, campaign, bad, source="bad.csv")
            assert caught.value.details == {
                "invalid_rows": [{"line": 2, "error": bad.invalid[0][1]}],
                "invalid_count": 1,
            }
            good = parse_csv(f"phone,consent\n{fresh},yes\n", "US")
            with pytest.raises(Conflict, match=r"replace=true"):
                await ca.do_csv_audience(s, twilio, config.campaigns, campaign, good, source="good.csv")
        with pytest.raises(Conflict, match=r"replace=true"):
            await ca.csv_audience(db, twilio, config.campaigns, cid, good, source="good.csv")
        with pytest.raises(ValidationFailed, match="no row can be imported"):
            await ca.csv_audience(db, twilio, config.campaigns, cid, bad, source="bad.csv", replace=True)
        async with db.read() as s:
            recipients = await s.scalar(
                select(func.count()).select_from(CampaignRecipient).where(CampaignRecipient.campaign_id == cid)
            )
            assert recipients == 3
            assert (await ca.check_campaign(s, cid)).audience["kind"] == "segment"
            assert await s.scalar(select(func.count()).select_from(Contact)) == 3
        async with db.write() as s:
            campaign = await ca.check_campaign(s, cid)
            summary = await ca.do_csv_audience(
                s, twilio, config.campaigns, campaign, good, source="good.csv", replace=True
            )
            assert summary["recipients"] == 1 and campaign.audience["kind"] == "csv"
    finally:
        await twilio.sms.close()


def test_csv_names_lose_line_breaks_and_tabs() -> None:
    parsed = parse_csv('phone,name\n+14155550100,"  Multi\r\n\tline  name "\n+14155550101,\t\n', "US")
    assert [r.name for r in parsed.rows] == ["Multi line name", None]


def test_first_name_splits_on_any_whitespace() -> None:
    for raw in ("Multi\nline", "Multi\tline", " Multi\u00a0line", "Multi  line"):
        values = variables(name=raw, phone="+14155550100", attributes={}, tags=[], stage=None)
        assert values["first_name"] == "Multi" and values["name"] == "Multi line", values
        assert values["contact"]["first_name"] == "Multi" and values["contact"]["name"] == "Multi line"


def test_the_checked_names_are_those_a_render_is_given() -> None:
    given = variables(name="A", phone="+14155550100", attributes={}, tags=[], stage=None)
    assert set(given) == set(TEMPLATE_VARIABLES)
    check_variables("{{ first_name }}{{ name }}{{ phone }}{{ contact.x }}")
    check_variables("{% for c in contact.tags %}{{ loop.index }}{{ c }}{% endfor %}")
    with pytest.raises(UnknownVariables, match="'loop'"):
        check_variables("{% for c in contact.tags %}{% endfor %}{{ loop }}")
