"""Agents' accounts over the API: an admin renames an agent, makes them admin
(the last active admin stays one) or sets a new password for one who forgot
theirs (their sessions end); an agent renames themselves and changes their
password with their current one (their other sessions end, this one stays)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from hub.core import Role
from storage.migrate import upgrade_async
from tests.hub.helpers import PASSWORD, Agent, add_agent, make_config, running_hub

NEW_PASSWORD = "a much longer passphrase"


async def login(http: aiohttp.ClientSession, base: str, email: str, password: str) -> int:
    async with http.post(f"{base}/api/v1/auth/token", json={"email": email, "password": password}) as r:
        return r.status


async def test_an_admin_renames_promotes_and_resets_an_agent(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    await upgrade_async(config.database_url)
    await add_agent(config, "boss@example.com")
    await add_agent(config, "ana@example.com", Role.AGENT)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        boss = await Agent.login(http, base, "boss@example.com")
        ana = await Agent.login(http, base, "ana@example.com")
        (ana_id,) = [a["id"] for a in (await boss.get("/api/v1/agents"))["items"] if a["email"] == "ana@example.com"]
        boss_id = (await boss.get("/api/v1/me"))["id"]
        # An agent may not change another's account.
        await ana.patch(f"/api/v1/agents/{boss_id}", {"role": "agent"}, 403)
        view = await boss.patch(f"/api/v1/agents/{ana_id}", {"name": "  Ana \n Karimi ", "role": "admin"})
        assert (view["name"], view["role"]) == ("Ana Karimi", "admin")
        # Two admins now: the boss may step down, and then Ana is the last one.
        assert (await boss.patch(f"/api/v1/agents/{boss_id}", {"role": "agent"}))["role"] == "agent"
        error = await ana.patch(f"/api/v1/agents/{ana_id}", {"role": "agent"}, 409)
        assert "last active admin" in error["error"]["message"]
        # Ana forgot her password: the new one works, the old one and her sessions do not.
        await boss.patch(f"/api/v1/agents/{ana_id}", {"password": NEW_PASSWORD}, 403)  # no longer an admin
        other = await Agent.login(http, base, "ana@example.com")
        await ana.patch(f"/api/v1/agents/{boss_id}", {"role": "admin"})
        await boss.patch(f"/api/v1/agents/{ana_id}", {"password": NEW_PASSWORD})
        await other.get("/api/v1/me", 401)
        await ana.get("/api/v1/me", 401)
        assert await login(http, base, "ana@example.com", PASSWORD) == 401
        assert await login(http, base, "ana@example.com", NEW_PASSWORD) == 201
        # Refused by name, and nothing changed.
        for body, needle in (({"password": "short"}, "password"), ({"name": ""}, "name"), ({"role": "boss"}, "role")):
            error = await boss.patch(f"/api/v1/agents/{ana_id}", body, 422)
            assert needle in error["error"]["message"], error
        agents = {a["email"]: a for a in (await boss.get("/api/v1/agents"))["items"]}
        assert (agents["ana@example.com"]["name"], agents["ana@example.com"]["role"]) == ("Ana Karimi", "admin")


async def test_an_agent_changes_their_own_name_and_password(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    await upgrade_async(config.database_url)
    await add_agent(config, "ana@example.com", Role.AGENT)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        here = await Agent.login(http, base, "ana@example.com")
        elsewhere = await Agent.login(http, base, "ana@example.com")
        assert (await here.patch("/api/v1/me", {"name": "Ana K."}))["name"] == "Ana K."
        # The current password is needed, and must be right.
        error = await here.patch("/api/v1/me", {"password": NEW_PASSWORD}, 422)
        assert "current_password" in error["error"]["message"]
        await here.patch("/api/v1/me", {"password": NEW_PASSWORD, "current_password": "wrong guess!"}, 401)
        # (A 401 here is about the password, not the session.)
        await here.get("/api/v1/me")
        await here.patch("/api/v1/me", {"role": "admin"}, 422)
        await here.patch("/api/v1/me", {"password": NEW_PASSWORD, "current_password": PASSWORD})
        assert (await here.get("/api/v1/me"))["name"] == "Ana K."
        await elsewhere.get("/api/v1/me", 401)
        assert await login(http, base, "ana@example.com", PASSWORD) == 401
        assert await login(http, base, "ana@example.com", NEW_PASSWORD) == 201


async def test_an_agents_name_cannot_reorder_how_others_read_it(tmp_path: Path) -> None:
    """Colleagues and web chat visitors (the typing indicator) see it: "Eve
    \u202eevil" would show as "Eve live". Kept as a customer's name is."""
    config = make_config(tmp_path)
    await upgrade_async(config.database_url)
    await add_agent(config, "boss@example.com")
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        boss = await Agent.login(http, base, "boss@example.com")
        made = await boss.post(
            "/api/v1/agents",
            {"email": "eve@example.com", "name": "Eve \u202eevil\u202c", "password": NEW_PASSWORD},
            status=201,
        )
        assert made["name"] == "Eve evil"
        assert (await boss.patch("/api/v1/me", {"name": "Boss \u2067رضا\u2069"}))["name"] == "Boss رضا"
        refused = await boss.patch("/api/v1/me", {"name": "\u202e\u202c"}, status=422)
        assert "name must not be empty" in refused["error"]["message"]
