"""The routing API over a running hub (SQLite and PostgreSQL), for what the
routing review found (reviews/routing.md): rules that could never fire are
refused naming the field, an admin can go back to config.yaml's rules, agent
languages are language tags, and availability applies routing's language rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.hub.helpers import Agent, make_config, running_hub
from tests.hub.web.test_routing import add_agent_to_db, ana_id
from tests.hub.web.test_routing_validation import AUTOMATION, RULES, refused

CONFIG_RULE = {"name": "vip", "when": {"vip": True}, "priority": "high"}


def config(tmp_path: Path, db_url: str) -> Any:
    return make_config(
        tmp_path,
        **{
            "database.url": db_url,
            "routing.default_team": "Support",
            "routing.teams": [{"name": "Support"}, {"name": "Sales"}],
            "routing.rules": [CONFIG_RULE],
            # A calendar no team uses, and no default one.
            "routing.calendars": {"closed": {"timezone": "UTC", "week": {"sun": ["00:00-00:01"]}}},
        },
    )


async def test_rules_that_could_never_fire_are_refused_naming_the_field(tmp_path: Path, db_url: str) -> None:
    cfg = config(tmp_path, db_url)
    await add_agent_to_db(cfg)
    async with running_hub(cfg) as server, aiohttp.ClientSession() as http:
        admin = await Agent.login(http, str(server.make_url("")).rstrip("/"), "admin@example.com")
        before = {path: await admin.get(path) for path in (RULES, AUTOMATION)}

        def sales(when: dict[str, Any]) -> dict[str, Any]:
            return {"items": [{"name": "x", "team": "Sales", "when": when}]}

        message = await refused(http, admin, RULES, sales({"inbox": ["no-such-inbox"]}))
        assert message.startswith("rule 'x': when.inbox 'no-such-inbox' is no inbox")
        assert "'webchat'" in message  # the inboxes there are
        assert "when.language 'english' is not a language the hub detects in messages (ar, en, fa)" in await refused(
            http, admin, RULES, sales({"language": ["english"]})
        )
        assert "rule 'x': when.calendar 'closed' is only read with business_hours" in await refused(
            http, admin, RULES, sales({"calendar": "closed"})
        )
        # No team has a calendar, nor is there a default one: the hub would count as always open.
        assert "rule 'x': when.business_hours has no calendar to consult" in await refused(
            http, admin, RULES, sales({"business_hours": False})
        )
        ghost = {"items": [{"name": "x", "on": "message.received", "actions": [{"assign_agent": "ghost@x.io"}]}]}
        assert "automation 'x': actions.0.assign_agent 'ghost@x.io' is not the email of an active agent" in (
            await refused(http, admin, AUTOMATION, ghost)
        )
        for path in (RULES, AUTOMATION):
            assert await admin.get(path) == before[path]
        # What can fire is saved.
        await admin.put(RULES, sales({"inbox": ["webchat"], "language": ["en"]}))
        await admin.put(RULES, sales({"business_hours": False, "calendar": "closed"}))
        ana = {"items": [{"name": "x", "on": "message.received", "actions": [{"assign_agent": "Ana@Example.com"}]}]}
        assert (await admin.put(AUTOMATION, ana))["version"] == before[AUTOMATION]["version"] + 1


async def test_an_admin_goes_back_to_config_yaml_rules_by_deleting_the_saved_ones(tmp_path: Path, db_url: str) -> None:
    cfg = config(tmp_path, db_url)
    await add_agent_to_db(cfg)
    async with running_hub(cfg) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        admin = await Agent.login(http, base, "admin@example.com")
        ana = await Agent.login(http, base, "ana@example.com")
        saved = await admin.put(RULES, {"items": [{"name": "low", "team": "Sales", "priority": "low"}]})
        assert saved["source"] == "api"
        async with http.delete(f"{base}{RULES}", headers=ana.headers) as r:
            assert r.status == 403
        async with http.delete(f"{base}{RULES}", headers=admin.headers) as r:
            assert r.status == 200, await r.text()
            back = await r.json()
        assert (back["source"], back["items"], back["version"]) == ("config", [CONFIG_RULE], saved["version"] + 1)
        assert await admin.get(RULES) == back
        await admin.put(
            AUTOMATION, {"items": [{"name": "a", "on": "message.received", "actions": [{"resolve": True}]}]}
        )
        async with http.delete(f"{base}{AUTOMATION}", headers=admin.headers) as r:
            assert r.status == 200
            assert ((await r.json())["source"], (await r.json())["items"]) == ("config", [])


async def test_agent_languages_are_language_tags_and_availability_applies_them(tmp_path: Path, db_url: str) -> None:
    cfg = config(tmp_path, db_url)
    await add_agent_to_db(cfg)
    async with running_hub(cfg) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        admin = await Agent.login(http, base, "admin@example.com")
        ana = await Agent.login(http, base, "ana@example.com")
        me = ana_id(await ana.get("/api/v1/me"))
        wrong = await admin.patch(f"/api/v1/agents/{me}", {"languages": ["english"]}, 422)
        assert "'english' is not a language tag" in wrong["error"]["message"]
        assert "languages.0" in wrong["error"]["message"]
        updated = await admin.patch(f"/api/v1/agents/{me}", {"languages": ["en-GB"], "teams": ["Support"]})
        assert updated["languages"] == ["en-gb"]
        await ana.put("/api/v1/me/presence", {"presence": "online"})
        support = {t["name"]: t["id"] for t in (await admin.get("/api/v1/teams"))["items"]}["Support"]
        path = f"/api/v1/teams/{support}/availability?channel=webchat"
        assert [a["id"] for a in (await ana.get(f"{path}&language=en"))["agents"]] == [me]
        assert [a["id"] for a in (await ana.get(path))["agents"]] == [me]
        assert (await ana.get(f"{path}&language=fa"))["agents"] == []
        bad = await ana.get(f"{path}&language=english", 400)
        assert "language: " in bad["error"]["message"] and "is not a language tag" in bad["error"]["message"]
