"""``crm-hub`` after the CLI review: a team given twice (or with spaces) joins
the agent once, over the CLI and the API, and "created team" is said only of
a team that was created; commands run before ``migrate`` leave no database
file behind, and ``migrate`` makes it owner-only; smaller things: the
--config file named as such, one exit status for a short password, a role
the agent already had is not "changed", rasa-actions says which database is
not migrated."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from hub.cli import main
from storage.db import SQLITE_MAY_CREATE, Database
from storage.models import Agent as AgentRow
from storage.models import Team, TeamMember
from tests.hub.helpers import PASSWORD, Agent, add_agent, make_config, running_hub
from tests.hub.procs import hub_env

NOT_MIGRATED = "the database is not migrated: run `crm-hub migrate`"


@pytest.fixture
def cli(tmp_path: Path) -> CliRunner:
    runner = CliRunner(env=hub_env(tmp_path / "data"))
    assert runner.invoke(main, ["migrate"]).exit_code == 0
    return runner


async def _teams_of(tmp_path: Path, email: str) -> list[str]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'hub.db'}")
    try:
        async with db.read() as s:
            q = (
                select(Team.name)
                .join(TeamMember, TeamMember.team_id == Team.id)
                .join(AgentRow, AgentRow.id == TeamMember.agent_id)
                .where(AgentRow.email == email)
            )
            return sorted((await s.scalars(q)).all())
    finally:
        await db.dispose()


def _memberships(tmp_path: Path, email: str) -> list[str]:
    return asyncio.run(_teams_of(tmp_path, email))


def _add(cli: CliRunner, email: str, *teams: str) -> Result:
    args = ["agent", "add", "--email", email, "--name", "A"]
    for team in teams:
        args += ["--team", team]
    return cli.invoke(main, args)


def test_a_team_given_twice_is_joined_once(cli: CliRunner, tmp_path: Path) -> None:
    """It was an IntegrityError traceback (UNIQUE team_members)."""
    result = _add(cli, "bob@example.com", "NewTeam", "NewTeam", " NewTeam ")
    assert result.exit_code == 0, result.output
    assert result.output.count("created team NewTeam") == 1, result.output
    assert _memberships(tmp_path, "bob@example.com") == ["NewTeam"]


def test_created_team_is_said_only_of_a_new_team(cli: CliRunner, tmp_path: Path) -> None:
    assert "created team Support" in _add(cli, "a@example.com", "Support").output
    result = _add(cli, "g@example.com", " Support ")
    assert result.exit_code == 0, result.output
    assert "created team" not in result.output
    assert _memberships(tmp_path, "g@example.com") == ["Support"]


async def test_the_api_joins_a_team_given_twice_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "boss@example.com")
        base = str(server.make_url("")).rstrip("/")
        boss = await Agent.login(http, base, "boss@example.com")
        body = {
            "email": "dup@example.com",
            "name": "Dup",
            "password": PASSWORD,
            "teams": ["Support", "Support", " Support "],
            "create_teams": True,
        }
        await boss.post("/api/v1/agents", body, status=201)
    assert await _teams_of(tmp_path, "dup@example.com") == ["Support"]


@pytest.mark.parametrize(
    "args",
    [
        ["agent", "add", "--email", "a@example.com", "--name", "A"],
        ["agent", "deactivate", "--email", "a@example.com"],
        ["demo"],
        ["faq", "export"],
        ["bot", "ask", "hi"],
        ["campaign", "status"],
        ["campaign", "status", "1"],
        ["rasa-actions", "--port", "0"],
    ],
)
def test_commands_before_migrate_leave_no_database(tmp_path: Path, args: list[str]) -> None:
    data = tmp_path / "data"
    # As an operator makes it (or an earlier command did): SQLite would create the file in it.
    data.mkdir(mode=0o755)
    runner = CliRunner(env=hub_env(data))
    result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output
    # Which database, as every command says it (rasa-actions once said only the first part).
    assert f"{NOT_MIGRATED} (database sqlite+aiosqlite:///{(data / 'hub.db').resolve()}" in result.output
    assert not (data / "hub.db").exists()
    # The switch is the command's own: code run after it may create files again.
    assert SQLITE_MAY_CREATE.get() is True
    assert runner.invoke(main, ["migrate"]).exit_code == 0
    assert stat.S_IMODE((data / "hub.db").stat().st_mode) == 0o600


def test_a_missing_config_file_is_named_as_given(tmp_path: Path) -> None:
    result = CliRunner(env=hub_env(tmp_path / "data")).invoke(main, ["--config", "nope.yaml", "migrate"])
    assert result.exit_code == 1
    assert "config file nope.yaml does not exist (--config)" in result.output
    assert "HUB_CONFIG" not in result.output


def test_a_short_password_exits_1_on_add_and_update(cli: CliRunner) -> None:
    add = ["agent", "add", "--email", "c@example.com", "--name", "C", "--password-stdin"]
    update = ["agent", "update", "--email", "c@example.com", "--password-stdin"]
    said = "password must have at least 8 characters"
    refused = cli.invoke(main, add, input="short\n")
    assert refused.exit_code == 1 and said in refused.output, refused.output
    assert cli.invoke(main, add, input=PASSWORD + "\n").exit_code == 0
    refused = cli.invoke(main, update, input="short\n")
    assert refused.exit_code == 1 and said in refused.output, refused.output


def test_update_says_only_what_changed(cli: CliRunner) -> None:
    cli.invoke(main, ["agent", "add", "--email", "c@example.com", "--name", "C", "--role", "agent"])
    result = cli.invoke(main, ["agent", "update", "--email", "c@example.com", "--role", "agent"])
    assert result.exit_code == 0, result.output
    assert result.output == "c@example.com: nothing changed; already had role agent\n"
    result = cli.invoke(main, ["agent", "update", "--email", "c@example.com", "--name", "C", "--role", "admin"])
    assert result.output == "c@example.com: changed role admin; already had name 'C'\n"


def test_agent_list_shows_every_agent_with_teams_and_whether_they_may_log_in(cli: CliRunner) -> None:
    assert cli.invoke(main, ["agent", "list"]).output.startswith("no agents yet")
    assert _add(cli, "ana@example.com", "Support", "Sales").exit_code == 0
    assert _add(cli, "reza@example.com").exit_code == 0
    assert cli.invoke(main, ["agent", "deactivate", "--email", "reza@example.com"]).exit_code == 0
    result = cli.invoke(main, ["agent", "list"])
    assert result.exit_code == 0, result.output
    header, ana, reza = result.output.splitlines()
    assert header.split() == ["EMAIL", "NAME", "ROLE", "TEAMS", "PRESENCE", "SKILLS", "LANGUAGES"]
    assert ana.split()[:5] == ["ana@example.com", "A", "agent", "Sales,", "Support"]
    assert "agent (deactivated)" in reza
    listed = [json.loads(line) for line in cli.invoke(main, ["agent", "list", "--json"]).output.splitlines()]
    assert [(a["email"], a["active"], len(a["team_ids"])) for a in listed] == [
        ("ana@example.com", True, 2),
        ("reza@example.com", False, 0),
    ]


def test_agent_list_on_a_database_never_migrated_says_so(tmp_path: Path) -> None:
    result = CliRunner(env=hub_env(tmp_path / "data")).invoke(main, ["agent", "list"])
    assert result.exit_code == 1 and NOT_MIGRATED in result.output
