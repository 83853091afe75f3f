"""The routing API over a running hub: rules edited by an admin take effect,
bad rules are refused naming what is wrong, agents see queues and set presence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from hub.core import Role
from tests.hub.helpers import PASSWORD, Agent, add_agent, make_config, next_frame, running_hub


async def test_rules_presence_queues_and_availability(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        **{
            "routing.default_team": "Support",
            "routing.calendars": {"office": {"timezone": "Asia/Tehran", "always_open": True}},
            "routing.teams": [{"name": "Support", "calendar": "office"}],
        },
    )
    await add_agent_to_db(config)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        admin = await Agent.login(http, base, "admin@example.com")
        ana = await Agent.login(http, base, "ana@example.com")
        # Bad rules change nothing and say why.
        before = await admin.get("/api/v1/routing/rules")
        async with http.put(
            f"{base}/api/v1/routing/rules",
            json={"items": [{"name": "x", "when": {"language": ["fa"]}}]},
            headers=admin.headers,
        ) as r:
            assert r.status == 422
            assert "sets nothing" in (await r.json())["error"]["message"]
        async with http.put(
            f"{base}/api/v1/routing/rules",
            json={"items": [{"name": "x", "team": "Sales", "when": {"calendar": "nope", "business_hours": True}}]},
            headers=admin.headers,
        ) as r:
            assert r.status == 422
            assert "calendar 'nope'" in (await r.json())["error"]["message"]
        async with http.put(f"{base}/api/v1/routing/rules", json={"items": []}, headers=ana.headers) as r:
            assert r.status == 403
        assert (await admin.get("/api/v1/routing/rules"))["version"] == before["version"]
        saved = await admin.put(
            "/api/v1/routing/rules",
            {
                "items": [{"name": "persian", "when": {"language": ["fa"]}, "team": "Persian", "priority": "high"}],
                "create_teams": True,
            },
        )
        assert saved["source"] == "api" and saved["version"] == before["version"] + 1
        assert saved["warnings"] == [
            "team 'Persian' (rule 'persian') has no active member: its tickets wait in its queue until an agent "
            "joins it"
        ]
        teams = {t["name"]: t["id"] for t in (await admin.get("/api/v1/teams"))["items"]}
        assert "Persian" in teams  # created for the rule
        # Ana joins Persian with room for one chat, and goes online.
        updated = await admin.patch(
            f"/api/v1/agents/{ana_id(await ana.get('/api/v1/me'))}",
            {"teams": ["Persian"], "capacity": {"webchat": 1}, "languages": ["fa"]},
        )
        assert updated["capacity"] == {"webchat": 1}
        # Opening the inbox's websocket is the heartbeat: the admin comes online.
        assert (await admin.get("/api/v1/me"))["presence"] == "offline"
        async with admin.events():
            for _ in range(100):
                if (await admin.get("/api/v1/me"))["presence"] == "online":
                    break
                await asyncio.sleep(0.05)
            assert (await admin.get("/api/v1/me"))["presence"] == "online"
        await admin.put("/api/v1/me/presence", {"presence": "offline"})
        me = await ana.put("/api/v1/me/presence", {"presence": "online"})
        assert me["presence"] == "online"
        async with ana.events() as ws:
            async with http.ws_connect(f"{base}/chat/ws") as visitor:
                await visitor.receive_json(timeout=5)
                await visitor.send_json({"type": "message", "text": "سلام، کمک می‌خواهم", "client_id": "c1"})
                routed = await next_frame(ws, "ticket.routed")
            assert routed["ticket"]["team_id"] == teams["Persian"]
            assert routed["ticket"]["assignee_id"] == me["id"]
            assert routed["ticket"]["priority"] == "high"
            async with http.ws_connect(f"{base}/chat/ws") as other:
                await other.receive_json(timeout=5)
                await other.send_json({"type": "message", "text": "سلام دوباره", "client_id": "c2"})
                queued = await next_frame(ws, "ticket.routed", data__queued=True)
        assert queued["ticket"]["assignee_id"] is None
        queues = {q["team"]: q for q in (await ana.get("/api/v1/queues"))["items"]}
        assert queues["Persian"]["queued"] == 1 and queues["Persian"]["agents_online"] == 1
        assert queues["Support"]["open"] is True
        availability = await ana.get(f"/api/v1/teams/{teams['Persian']}/availability?channel=webchat")
        assert availability["agents"] == []  # full
        # Resolving the first chat hands Ana the queued one.
        await ana.post(f"/api/v1/tickets/{routed['ticket']['id']}/status", {"status": "resolved"})
        for _ in range(100):
            if (await ana.get("/api/v1/queues"))["items"][0]["queued"] == 0:
                break
            await asyncio.sleep(0.05)
        ticket = await ana.get(f"/api/v1/tickets/{queued['ticket']['id']}")
        assert ticket["assignee_id"] == me["id"]
        sla = await ana.get(f"/api/v1/tickets/{queued['ticket']['id']}/sla")
        assert [c["number"] for c in sla["items"]] == [1]
        async with http.put(f"{base}/api/v1/me/presence", json={"presence": "busy"}, headers=ana.headers) as r:
            assert r.status == 422


async def test_rule_names_are_unique_and_the_built_in_name_is_reserved(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    await add_agent_to_db(config)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        admin = await Agent.login(http, base, "admin@example.com")
        before = {kind: await admin.get(f"/api/v1/routing/{kind}") for kind in ("rules", "automation")}
        resolve = {"on": "message.received", "actions": [{"resolve": True}]}
        refused = [
            (
                "rules",
                [{"name": "billing", "team": "Sales"}, {"name": "billing", "team": "Support"}],
                "two rules are named 'billing'",
            ),
            (
                "automation",
                [{"name": "close", **resolve}, {"name": "close", **resolve}],
                "two automation rules are named 'close'",
            ),
            (
                "automation",
                [{"name": "auto-resolve-idle-pending", **resolve}],
                "automation rule name 'auto-resolve-idle-pending' is reserved",
            ),
        ]
        for kind, items, needle in refused:
            async with http.put(f"{base}/api/v1/routing/{kind}", json={"items": items}, headers=admin.headers) as r:
                assert r.status == 422, await r.text()
                assert needle in (await r.json())["error"]["message"]
        for kind in ("rules", "automation"):
            assert await admin.get(f"/api/v1/routing/{kind}") == before[kind]
        # A routing rule may share a name with an automation rule: they are different lists.
        await admin.put("/api/v1/routing/rules", {"items": [{"name": "close", "team": "Sales"}], "create_teams": True})


def ana_id(me: dict[str, object]) -> int:
    value = me["id"]
    assert isinstance(value, int)
    return value


async def add_agent_to_db(config: object) -> None:
    from hub.config import HubConfig
    from storage.migrate import upgrade_async

    assert isinstance(config, HubConfig)
    await upgrade_async(config.database_url)
    await add_agent(config, "admin@example.com")
    await add_agent(config, "ana@example.com", Role.AGENT)


async def test_a_deactivated_agent_loses_access_and_their_tickets_return_to_the_queue(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        **{
            "routing.default_team": "Support",
            "routing.teams": [{"name": "Support"}],
            "routing.presence.heartbeat_seconds": 0.2,
        },
    )
    await add_agent_to_db(config)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        base = str(server.make_url("")).rstrip("/")
        admin = await Agent.login(http, base, "admin@example.com")
        ana = await Agent.login(http, base, "ana@example.com")
        ana_me = await ana.get("/api/v1/me")
        await admin.patch(f"/api/v1/agents/{ana_id(ana_me)}", {"teams": ["Support"], "capacity": {"webchat": 2}})
        await ana.put("/api/v1/me/presence", {"presence": "online"})
        async with ana.events() as ws:
            async with http.ws_connect(f"{base}/chat/ws") as visitor:
                await visitor.receive_json(timeout=5)
                await visitor.send_json({"type": "message", "text": "Hello, I need help", "client_id": "c1"})
                routed = await next_frame(ws, "ticket.routed")
            tid = routed["ticket"]["id"]
            assert routed["ticket"]["assignee_id"] == ana_me["id"]
            # Nobody can lock the hub out of its last admin, or themselves out.
            admin_id = ana_id(await admin.get("/api/v1/me"))
            await admin.patch(f"/api/v1/agents/{admin_id}", {"active": False}, 409)
            gone = await admin.patch(f"/api/v1/agents/{ana_id(ana_me)}", {"active": False})
            assert (gone["active"], gone["presence"]) == (False, "offline")
            # Her open inbox is closed at its next heartbeat, and every token is revoked.
            closed = await ws.receive(timeout=5)
            while closed.type == aiohttp.WSMsgType.TEXT:
                closed = await ws.receive(timeout=5)
            assert ws.close_code == 4401
        await ana.get("/api/v1/me", 401)
        async with http.post(f"{base}/api/v1/auth/token", json={"email": "ana@example.com", "password": PASSWORD}) as r:
            assert r.status == 401
        ticket = await admin.get(f"/api/v1/tickets/{tid}")
        assert ticket["assignee_id"] is None and ticket["team_id"] == routed["ticket"]["team_id"]
        queues = {q["team"]: q for q in (await admin.get("/api/v1/queues"))["items"]}
        assert queues["Support"]["queued"] == 1
        # She cannot be given tickets while deactivated; once back, she can log in.
        await admin.post(f"/api/v1/tickets/{tid}/assign", {"agent_id": ana_me["id"]}, 409)
        back = await admin.patch(f"/api/v1/agents/{ana_id(ana_me)}", {"active": True})
        assert back["active"] is True
        again = await Agent.login(http, base, "ana@example.com")
        assert (await again.get("/api/v1/me"))["id"] == ana_me["id"]
