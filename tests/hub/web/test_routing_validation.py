"""Rules an admin saves over the API are refused, naming the field, when they
could only fail later (on every ticket, in a worker, in the database), and a
team name that matches no team is refused unless the request asks to create
it: a typo would otherwise make an empty team whose tickets wait for ever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.hub.helpers import Agent, make_config, running_hub
from tests.hub.web.test_routing import add_agent_to_db, ana_id

RULES, AUTOMATION = "/api/v1/routing/rules", "/api/v1/routing/automation"


async def refused(http: aiohttp.ClientSession, admin: Agent, path: str, body: str | dict[str, Any]) -> str:
    """PUT ``body`` (raw text: sent as it is, for numbers json.dumps cannot
    write); it must be refused with 422. Returns the error message."""
    if isinstance(body, str):
        request = http.put(
            f"{admin.base}{path}", data=body, headers={**admin.headers, "Content-Type": "application/json"}
        )
    else:
        request = http.put(f"{admin.base}{path}", json=body, headers=admin.headers)
    async with request as r:
        assert r.status == 422, await r.text()
        message: str = (await r.json())["error"]["message"]
        return message


def config(tmp_path: Path, db_url: str) -> Any:
    # Both engines: PostgreSQL enforces the column lengths SQLite ignores.
    return make_config(
        tmp_path,
        **{
            "database.url": db_url,
            "routing.default_team": "Support",
            "routing.teams": [{"name": "Support"}, {"name": "Sales"}],
        },
    )


async def test_values_that_would_only_fail_later_are_refused_and_change_nothing(tmp_path: Path, db_url: str) -> None:
    cfg = config(tmp_path, db_url)
    await add_agent_to_db(cfg)
    async with running_hub(cfg) as server, aiohttp.ClientSession() as http:
        admin = await Agent.login(http, str(server.make_url("")).rstrip("/"), "admin@example.com")
        before = {path: await admin.get(path) for path in (RULES, AUTOMATION)}
        idle = '{"items": [{"name": "x", "on": "idle", "idle_minutes": %s, "actions": [{"add_labels": ["a"]}]}]}'
        for number in ("1e999", "Infinity", "NaN", "1e10"):
            assert "items.0.idle_minutes" in await refused(http, admin, AUTOMATION, idle % number)
        snooze = '{"items": [{"name": "y", "on": "message.received", "actions": [{"snooze_minutes": %s}]}]}'
        for number in ("1e999", "1e10"):
            assert "items.0.actions.0.snooze_minutes" in await refused(http, admin, AUTOMATION, snooze % number)
        long_label = {"items": [{"name": "tag-all", "labels": ["x" * 101]}]}
        assert "items.0.labels.0: String should have at most 100 characters" in await refused(
            http, admin, RULES, long_label
        )
        long_add = {"items": [{"name": "a", "on": "message.received", "actions": [{"add_labels": ["x" * 101]}]}]}
        assert "items.0.actions.0.add_labels.0" in await refused(http, admin, AUTOMATION, long_add)
        long_team = {"items": [{"name": "r", "team": "T" * 201}], "create_teams": True}
        assert "items.0.team: String should have at most 200 characters" in await refused(http, admin, RULES, long_team)
        hot = {"items": [{"name": "hot", "team": "Sales", "when": {"keywords": ["🔥", "!!!"]}}]}
        assert "rule 'hot': keyword '🔥' has no letter or digit" in await refused(http, admin, RULES, hot)
        question = {
            "items": [
                {"name": "q", "on": "message.received", "when": {"keywords": ["?"]}, "actions": [{"resolve": True}]}
            ]
        }
        assert "automation 'q': keyword '?' has no letter or digit" in await refused(http, admin, AUTOMATION, question)
        for path in (RULES, AUTOMATION):
            assert await admin.get(path) == before[path]
        teams = {t["name"] for t in (await admin.get("/api/v1/teams"))["items"]}
        assert teams == {"Support", "Sales"}


async def test_team_names_are_stripped_and_unknown_ones_refused_unless_created(tmp_path: Path, db_url: str) -> None:
    cfg = config(tmp_path, db_url)
    await add_agent_to_db(cfg)
    async with running_hub(cfg) as server, aiohttp.ClientSession() as http:
        admin = await Agent.login(http, str(server.make_url("")).rstrip("/"), "admin@example.com")
        ana = await Agent.login(http, admin.base, "ana@example.com")
        version = (await admin.get(RULES))["version"]
        # A stray space is the same team (the one the ticket is routed to).
        saved = await admin.put(RULES, {"items": [{"name": "billing", "team": "Sales "}]})
        assert saved["items"] == [{"name": "billing", "team": "Sales"}] and saved["version"] == version + 1
        assert saved["warnings"] == [
            "team 'Sales' (rule 'billing') has no active member: its tickets wait in its queue until an agent joins it"
        ]
        # Another capitalisation or a typo is not a new team, even when asked to create teams.
        case = {"items": [{"name": "billing", "team": "sales"}]}
        message = await refused(http, admin, RULES, case)
        assert "rule 'billing': team 'sales' does not exist; did you mean 'Sales'?" in message
        assert message.endswith("(the teams: 'Sales', 'Support')")  # creating would not help
        assert "did you mean 'Sales'?" in await refused(http, admin, RULES, {**case, "create_teams": True})
        typo = {"items": [{"name": "move", "on": "sla.breach", "actions": [{"assign_team": "Slaes"}]}]}
        message = await refused(http, admin, AUTOMATION, typo)
        assert "automation 'move': team 'Slaes' does not exist; did you mean 'Sales'?" in message
        assert message.endswith('to create new teams, send "create_teams": true')
        condition = {"items": [{"name": "vip", "when": {"team": ["Salse"]}, "priority": "high"}]}
        for body in (condition, {**condition, "create_teams": True}):
            message = await refused(http, admin, RULES, body)
            assert message.startswith(
                "rule 'vip': team 'Salse' does not exist, so the condition on it holds for no ticket; "
                "did you mean 'Sales'?"
            )
            assert '"create_teams"' not in message
        assert (await admin.get(RULES))["version"] == version + 1
        assert {t["name"] for t in (await admin.get("/api/v1/teams"))["items"]} == {"Support", "Sales"}
        # Asked for, a new team is created (and said to have nobody yet).
        new = await admin.put(RULES, {"items": [{"name": "b2b", "team": "Wholesale"}], "create_teams": True})
        assert new["warnings"] == [
            "team 'Wholesale' (rule 'b2b') has no active member: its tickets wait in its queue until an agent joins it"
        ]
        assert "Wholesale" in {t["name"] for t in (await admin.get("/api/v1/teams"))["items"]}
        # Agents' teams: the same checks.
        ana_url = f"/api/v1/agents/{ana_id(await ana.get('/api/v1/me'))}"
        long = await admin.patch(ana_url, {"teams": ["T" * 201]}, 422)
        assert "teams.0: String should have at most 200 characters" in long["error"]["message"]
        typo_team = await admin.patch(ana_url, {"teams": ["sales"]}, 422)
        assert "team 'sales' does not exist; did you mean 'Sales'?" in typo_team["error"]["message"]
        await admin.patch(ana_url, {"teams": ["Retail"]}, 422)
        joined = await admin.patch(ana_url, {"teams": ["Sales ", "Retail"], "create_teams": True})
        teams = {t["name"]: t["id"] for t in (await admin.get("/api/v1/teams"))["items"]}
        assert sorted(joined["team_ids"]) == sorted([teams["Sales"], teams["Retail"]])
        staffed = await admin.put(RULES, {"items": [{"name": "billing", "team": "Sales"}]})
        assert staffed["warnings"] == []
