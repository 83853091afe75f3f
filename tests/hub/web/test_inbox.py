"""The inbox's API (views, unread counts, queues, read markers, priority, canned
responses, presence, replies on another channel) and its pages, against a real
server on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from hub.actions import do_create_agent, do_ensure_inbox
from hub.config import HubConfig
from hub.core import Channel, InboundMessage, Role
from hub.web.inbox import CannedList, CannedOut, InboxCounts, InboxTicketList, ReadOut
from hub.web.schemas import TicketOut
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import TeamMember
from tests.hub.helpers import PASSWORD, Agent, add_agent, config_on, make_config, next_frame, running_hub


@dataclass
class Env:
    base: str
    http: aiohttp.ClientSession
    admin: Agent
    bob: Agent
    support_id: int
    db: Database

    async def inbound(self, sender: str, ext: str, body: str = "hello") -> IngestResult:
        async with self.db.write() as s:
            (r,) = await ingest_batch(
                s, [InboundMessage(channel=Channel.WEBCHAT, inbox="webchat", external_id=ext, sender=sender, body=body)]
            )
        assert isinstance(r, IngestResult)
        return r


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    async for config in config_on(request.param, tmp_path):
        async for e in _env(config):
            yield e


async def _env(config: HubConfig) -> AsyncIterator[Env]:
    async with running_hub(config) as server:
        await add_agent(config, "admin@example.com")
        db = Database(config.database_url)
        async with db.write() as s:
            bob = await do_create_agent(
                s, email="bob@example.com", name="Bob Jones", password=PASSWORD, role=Role.AGENT, teams=["Support"]
            )
            await s.flush()
            support_id = await s.scalar(select(TeamMember.team_id).where(TeamMember.agent_id == bob.id))
        assert support_id is not None
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            admin = await Agent.login(http, base, "admin@example.com")
            yield Env(base, http, admin, await Agent.login(http, base, "bob@example.com"), support_id, db)
        await db.dispose()


async def test_views_unread_counts_and_team_queues(env: Env) -> None:
    first = await env.inbound("v1", "v1:1", "hello")
    await env.inbound("v1", "v1:2", "anyone there?")
    other = await env.inbound("v2", "v2:1", "hi")
    tid = first.ticket_id

    listing = InboxTicketList.model_validate(await env.bob.get("/api/v1/inbox/tickets?view=unassigned"))
    assert {t.id: t.unread for t in listing.items} == {tid: 2, other.ticket_id: 1}
    counts = InboxCounts.model_validate(await env.bob.get("/api/v1/inbox/counts"))
    assert counts.views["unassigned"] is not None
    assert counts.views["unassigned"].model_dump() == {"total": 2, "unread": 2}
    assert counts.views["all"] is None  # bob is no admin
    await env.bob.get("/api/v1/inbox/tickets?view=all", 403)
    admin_counts = InboxCounts.model_validate(await env.admin.get("/api/v1/inbox/counts"))
    assert admin_counts.views["all"] is not None and admin_counts.views["all"].total == 2

    # To the Support team: it waits in the team's queue, and shows in bob's teams view.
    await env.admin.post(f"/api/v1/tickets/{tid}/assign", {"agent_id": None, "team_id": env.support_id})
    queues = InboxCounts.model_validate(await env.bob.get("/api/v1/inbox/counts")).queues
    assert [(q.name, q.length) for q in queues] == [("Support", 1)]
    assert queues[0].oldest_waiting_since is not None
    teams = InboxTicketList.model_validate(await env.bob.get("/api/v1/inbox/tickets?view=teams"))
    assert [t.id for t in teams.items] == [tid]

    # bob takes it: out of the queue, into mine; reading it clears the unread count.
    bob_id = (await env.bob.get("/api/v1/me"))["id"]
    await env.bob.post(f"/api/v1/tickets/{tid}/assign", {"agent_id": bob_id, "team_id": env.support_id})
    counts = InboxCounts.model_validate(await env.bob.get("/api/v1/inbox/counts"))
    assert counts.queues[0].length == 0
    assert counts.views["mine"] is not None and counts.views["mine"].model_dump() == {"total": 1, "unread": 1}
    read = ReadOut.model_validate(await env.bob.post(f"/api/v1/tickets/{tid}/read", {}))
    assert read.unread == 0
    mine = InboxTicketList.model_validate(await env.bob.get("/api/v1/inbox/tickets?view=mine"))
    assert [(t.id, t.unread) for t in mine.items] == [(tid, 0)]
    # Unread is per agent: the admin has still read nothing.
    everything = InboxTicketList.model_validate(await env.admin.get("/api/v1/inbox/tickets?view=all"))
    assert {t.id: t.unread for t in everything.items}[tid] == 2

    # A new customer message is unread again; a late, older marker changes nothing.
    await env.inbound("v1", "v1:3", "hello again")
    again = await env.bob.post(f"/api/v1/tickets/{tid}/read", {"message_id": first.message_id})
    assert again["last_read_message_id"] == read.last_read_message_id
    assert again["unread"] == 1
    await env.bob.post(f"/api/v1/tickets/{tid}/read", {"message_id": other.message_id}, 422)
    await env.bob.post(f"/api/v1/tickets/{tid}/read", {"message_id": 2**64}, 422)
    await env.bob.post("/api/v1/tickets/999/read", {}, 404)


async def test_filters_bad_values_are_named(env: Env) -> None:
    r = await env.inbound("v1", "v1:1", "نیاز به کمک فوری")
    await env.admin.post(f"/api/v1/tickets/{r.ticket_id}/priority", {"priority": "urgent"})
    found = InboxTicketList.model_validate(
        await env.admin.get("/api/v1/inbox/tickets?view=all&priority=urgent,high&channel=webchat&q=فوری")
    )
    assert [t.id for t in found.items] == [r.ticket_id]
    none = await env.admin.get("/api/v1/inbox/tickets?view=all&priority=low")
    assert none["items"] == []
    for query, needle in [
        ("view=everything", "view 'everything'"),
        ("priority=extreme", "priority 'extreme'"),
        ("status=closed", "status 'closed'"),
        ("cursor=zzz", "cursor"),
    ]:
        error = await env.admin.get(f"/api/v1/inbox/tickets?{query}", 400)
        assert needle in error["error"]["message"]


async def test_priority_is_an_action_with_a_live_event(env: Env) -> None:
    r = await env.inbound("v1", "v1:1")
    async with env.admin.events() as events:
        ticket = TicketOut.model_validate(
            await env.bob.post(f"/api/v1/tickets/{r.ticket_id}/priority", {"priority": "high"})
        )
        assert ticket.priority == "high"
        live = await next_frame(events, "ticket.priority_changed")
        assert live["ticket"]["priority"] == "high"
        assert live["data"] == {"from": "normal", "to": "high"}
    error = await env.bob.post(f"/api/v1/tickets/{r.ticket_id}/priority", {"priority": "asap"}, 422)
    assert "priority" in error["error"]["message"]
    await env.bob.post("/api/v1/tickets/404/priority", {"priority": "low"}, 404)


async def test_canned_responses(env: Env) -> None:
    made = CannedOut.model_validate(
        await env.bob.post("/api/v1/canned_responses", {"short_code": "/Hours", "body": "We answer 9 to 5."}, 201)
    )
    assert made.short_code == "hours"
    await env.admin.post("/api/v1/canned_responses", {"short_code": "ساعت", "body": "۹ تا ۵ پاسخ می‌دهیم."}, 201)
    dup = await env.admin.post("/api/v1/canned_responses", {"short_code": "HOURS", "body": "x"}, 409)
    assert "/hours already exists" in dup["error"]["message"]
    bad = await env.admin.post("/api/v1/canned_responses", {"short_code": "two words", "body": "x"}, 422)
    assert "one word" in bad["error"]["message"]

    listed = CannedList.model_validate(await env.bob.get("/api/v1/canned_responses"))
    assert [c.short_code for c in listed.items] == ["hours", "ساعت"]
    assert [
        c.short_code for c in CannedList.model_validate(await env.bob.get("/api/v1/canned_responses?q=پاسخ")).items
    ] == ["ساعت"]

    admins = next(c for c in listed.items if c.short_code == "ساعت")
    denied = await env.bob.put(f"/api/v1/canned_responses/{admins.id}", {"short_code": "x", "body": "y"}, 403)
    assert "belongs to another agent" in denied["error"]["message"]
    changed = await env.admin.put(f"/api/v1/canned_responses/{made.id}", {"short_code": "hours", "body": "9-6"})
    assert changed["body"] == "9-6"
    await env.bob.delete(f"/api/v1/canned_responses/{admins.id}", 403)
    await env.bob.delete(f"/api/v1/canned_responses/{made.id}")
    await env.bob.delete(f"/api/v1/canned_responses/{made.id}", 404)
    assert [c["short_code"] for c in (await env.bob.get("/api/v1/canned_responses"))["items"]] == ["ساعت"]


async def test_presence_is_announced_live(env: Env) -> None:
    async with env.admin.events() as events:
        me = await env.bob.put("/api/v1/me/presence", {"presence": "online"})
        assert me["presence"] == "online"
        # The admin's own socket may announce them first (its heartbeat): wait for bob.
        live = await next_frame(events, "agent.presence", agent_id=me["id"])
        assert live["presence"] == "online" and live["agent"]["email"] == "bob@example.com"
        # With the teams he is in, as GET /agents has him.
        assert live["agent"]["team_ids"] == [env.support_id]
    bad = await env.bob.put("/api/v1/me/presence", {"presence": "busy"}, 422)
    assert "presence" in bad["error"]["message"]
    agents = (await env.admin.get("/api/v1/agents"))["items"]
    assert {a["email"]: a["presence"] for a in agents}["bob@example.com"] == "online"


async def test_reply_on_another_channel_of_the_contact(env: Env) -> None:
    """A visitor left an email in the offline form: the agent answers by email.
    No email channel runs in this hub, so the send fails with that reason."""
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{env.base}/chat/ws") as visitor:
        await next_frame(visitor, "session")
        await visitor.send_json({"type": "identify", "email": "Sara@Example.com", "offline": True})
        await next_frame(visitor, "identified")
        await visitor.send_json({"type": "message", "text": "call me back", "client_id": "c1"})
        await next_frame(visitor, "message", client_id="c1")
    (ticket,) = (await env.admin.get("/api/v1/inbox/tickets?view=all"))["items"]
    path = f"/api/v1/tickets/{ticket['id']}/messages"
    error = await env.admin.post(path, {"body": "on it", "channel": "email"}, 422)
    assert "no email inbox is configured" in error["error"]["message"]
    error = await env.admin.post(path, {"body": "on it", "channel": "sms"}, 422)
    assert "no phone address" in error["error"]["message"]

    async with env.db.write() as s:
        await do_ensure_inbox(s, key="mail:support", channel=Channel.EMAIL, name="Support mail")
    async with env.admin.events() as events:
        reply = await env.admin.post(path, {"body": "on it", "channel": "email"}, 201)
        assert reply["channel"] == "email"
        failed = await next_frame(events, "message.status", message__id=reply["id"], message__status="failed")
        assert failed["message"]["inbox"] == "mail:support"
        assert "email channel is not configured" in failed["message"]["status_reason"]
    # The conversation names each message's own inbox, as the live event did.
    detail = await env.admin.get(f"/api/v1/tickets/{ticket['id']}")
    assert [m["inbox"] for m in detail["messages"]] == ["webchat", "mail:support"]
    page = await env.admin.get(f"{path}?limit=5")
    assert [m["inbox"] for m in page["items"]] == ["webchat", "mail:support"]
    contact = await env.admin.get(f"/api/v1/contacts/{ticket['contact_id']}")
    assert {(i["channel"], i["address"]) for i in contact["identities"]} >= {("email", "sara@example.com")}
    assert contact["attributes"]["reply_channel"] == "email"


async def test_inbox_pages_are_served_with_a_strict_policy(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with http.get(f"{base}/inbox", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/inbox/"
        async with http.get(f"{base}/inbox/") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/html")
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            html = await r.text()
        assert 'type="module"' in html
        async with http.get(f"{base}/inbox/app.js") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        for bad in ("../config.yaml", "..%2Fchat.py", "App.JS", "nothing.js", ".hidden.js"):
            async with http.get(f"{base}/inbox/{bad}") as r:
                assert r.status == 404, bad
                assert (await r.json())["error"]["code"] == "not_found"
