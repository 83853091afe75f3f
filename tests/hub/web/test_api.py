"""The agents' REST API against a real server, on the embedded database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from hub.actions import do_get_or_create_team
from hub.config import HubConfig
from hub.core import Channel, InboundMessage, Role
from hub.web.schemas import ContactDetail, TicketList, TicketOut, Timeline
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Identity, Ticket
from storage.queries import encode_cursor
from tests.hub.helpers import PASSWORD, Agent, add_agent, config_on, next_frame, running_hub


@dataclass
class Env:
    base: str
    http: aiohttp.ClientSession
    admin: Agent
    db: Database

    async def inbound(self, sender: str, ext: str, body: str = "hello", name: str | None = None) -> IngestResult:
        message = InboundMessage(
            channel=Channel.WEBCHAT, inbox="webchat", external_id=ext, sender=sender, sender_name=name, body=body
        )
        async with self.db.write() as s:
            (r,) = await ingest_batch(s, [message])
        assert isinstance(r, IngestResult)
        return r


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    """The API on the embedded database and on PostgreSQL."""
    async for config in config_on(request.param, tmp_path):
        async for e in _env(config):
            yield e


async def _env(config: HubConfig) -> AsyncIterator[Env]:
    async with running_hub(config) as server:
        await add_agent(config, "admin@example.com")
        await add_agent(config, "agent@example.com", Role.AGENT)
        base = str(server.make_url("")).rstrip("/")
        db = Database(config.database_url)
        async with aiohttp.ClientSession() as http:
            yield Env(base, http, await Agent.login(http, base, "admin@example.com"), db)
        await db.dispose()


async def test_login_errors_do_not_say_which_part_was_wrong(env: Env) -> None:
    for body in ({"email": "admin@example.com", "password": "wrong"}, {"email": "nobody@x.org", "password": "x"}):
        async with env.http.post(f"{env.base}/api/v1/auth/token", json=body) as r:
            assert r.status == 401
            assert (await r.json())["error"]["message"] == "email or password is wrong"


async def test_failed_logins_are_throttled(env: Env) -> None:
    url = f"{env.base}/api/v1/auth/token"
    wrong = {"email": "agent@example.com", "password": "wrong"}
    for _ in range(10):
        async with env.http.post(url, json=wrong) as r:
            assert r.status == 401
    # Now even the right password waits: a guesser cannot tell which try was right.
    async with env.http.post(url, json={"email": "agent@example.com", "password": PASSWORD}) as r:
        assert r.status == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 15 * 60
        error = (await r.json())["error"]
        assert error["code"] == "too_many_requests" and "too many failed logins" in error["message"]
    # Another account from the same address is not locked out by them.
    await Agent.login(env.http, env.base, "admin@example.com")


async def test_bad_and_revoked_tokens(env: Env) -> None:
    async with env.http.get(f"{env.base}/api/v1/tickets", headers={"Authorization": "Bearer nope"}) as r:
        assert r.status == 401
    async with env.http.post(f"{env.base}/api/v1/auth/logout", headers=env.admin.headers) as r:
        assert r.status == 204
    async with env.http.get(f"{env.base}/api/v1/tickets", headers=env.admin.headers) as r:
        assert r.status == 401


async def test_filters_and_cursor_pagination(env: Env) -> None:
    for i in range(7):
        await env.inbound(f"visitor-{i}", f"visitor-{i}:1", body=f"question number {i}")
    seen: list[int] = []
    cursor = ""
    while True:
        page = TicketList.model_validate(await env.admin.get(f"/api/v1/tickets?limit=3{cursor}"))
        seen += [t.id for t in page.items]
        if page.next_cursor is None:
            break
        cursor = f"&cursor={page.next_cursor}"
    assert len(seen) == 7
    assert len(set(seen)) == 7
    assert seen == sorted(seen, reverse=True)  # newest activity first
    found = TicketList.model_validate(await env.admin.get("/api/v1/tickets?q=number%205"))
    assert len(found.items) == 1
    assert found.items[0].last_message is not None
    assert found.items[0].last_message["body"] == "question number 5"
    assert (await env.admin.get("/api/v1/tickets?assignee=none&status=open,pending"))["items"]
    assert (await env.admin.get("/api/v1/tickets?assignee=me"))["items"] == []
    assert (await env.admin.get("/api/v1/tickets?channel=sms"))["items"] == []


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        ("/api/v1/tickets?status=closed", 400, "status 'closed'"),
        ("/api/v1/tickets?limit=0", 400, "limit"),
        ("/api/v1/tickets?cursor=garbage", 400, "cursor"),
        ("/api/v1/tickets/999", 404, "ticket 999 does not exist"),
        ("/api/v1/tickets/abc", 400, "id must be an integer"),
        ("/api/v1/contacts/999/timeline", 404, "contact 999"),
        ("/api/v1/nothing-here", 404, "no such endpoint"),
        ("/api/v1/tickets/99999999999999999999", 400, "id must be at most 9223372036854775807"),
        ("/api/v1/tickets/9223372036854775807", 404, "ticket 9223372036854775807 does not exist"),
        ("/api/v1/tickets?contact=99999999999999999999", 400, "contact must be at most"),
        ("/api/v1/tickets?team=99999999999999999999", 400, "team must be at most"),
        ("/api/v1/tickets?assignee=99999999999999999999", 400, "assignee must be at most"),
        ("/api/v1/tickets?assignee=0", 400, "assignee must be a positive integer, not 0"),
        ("/api/v1/tickets?assignee=bob", 400, "assignee must be an agent id, 'me' or 'none', not 'bob'"),
        ("/api/v1/tickets?team=0", 400, "team must be a positive integer"),
        ("/api/v1/tickets?contact=-1", 400, "contact must be a positive integer, not -1"),
        ("/api/v1/tickets/0", 404, "id 0 does not exist"),
        ("/api/v1/contacts/99999999999999999999", 400, "id must be at most"),
        ("/api/v1/contacts/99999999999999999999/timeline", 400, "id must be at most"),
        (f"/api/v1/tickets?cursor={encode_cursor('2024-01-01T00:00:00+00:00', 'abc')}", 400, "cursor"),
        (f"/api/v1/tickets?cursor={encode_cursor('2024-01-01T00:00:00+00:00', 10**20)}", 400, "cursor"),
        (f"/api/v1/tickets?cursor={encode_cursor('2024-01-01T00:00:00+00:00', None)}", 400, "cursor"),
        (f"/api/v1/contacts?cursor={encode_cursor('abc')}", 400, "cursor"),
        (f"/api/v1/contacts?cursor={encode_cursor(10**20)}", 400, "cursor"),
        (f"/api/v1/contacts?cursor={encode_cursor(1.5)}", 400, "cursor"),
    ],
)
async def test_errors_are_json_and_name_the_problem(env: Env, path: str, status: int, needle: str) -> None:
    body = await env.admin.get(path, status)
    assert set(body) == {"error"}
    assert needle in body["error"]["message"]


async def test_assign_status_and_live_events(env: Env) -> None:
    r = await env.inbound("v-assign", "v-assign:1")
    agents = (await env.admin.get("/api/v1/agents"))["items"]
    agent_id = next(a["id"] for a in agents if a["email"] == "agent@example.com")
    async with env.admin.events() as events:
        out = TicketOut.model_validate(
            await env.admin.post(f"/api/v1/tickets/{r.ticket_id}/assign", {"agent_id": agent_id})
        )
        assert out.assignee_id == agent_id
        await next_frame(events, "ticket.assigned", ticket__id=r.ticket_id)
        await env.admin.post(f"/api/v1/tickets/{r.ticket_id}/status", {"status": "resolved"})
        frame = await next_frame(events, "ticket.status_changed", ticket__id=r.ticket_id)
        assert frame["data"] == {"from": "open", "to": "resolved"}
    bad = await env.admin.post(f"/api/v1/tickets/{r.ticket_id}/status", {"status": "snoozed"}, 422)
    assert "snoozed_until" in bad["error"]["message"]
    bad = await env.admin.post(f"/api/v1/tickets/{r.ticket_id}/assign", {"agent_id": 12345}, 404)
    assert "agent 12345" in bad["error"]["message"]
    # The next message from the same visitor opens a new ticket; reopening the
    # old one while the new one is open would make two current tickets.
    r2 = await env.inbound("v-assign", "v-assign:2")
    assert r2.ticket_id != r.ticket_id
    conflict = await env.admin.post(f"/api/v1/tickets/{r.ticket_id}/status", {"status": "open"}, 409)
    assert f"ticket {r2.ticket_id}" in conflict["error"]["message"]
    mine = await env.admin.get(f"/api/v1/tickets?assignee={agent_id}&status=resolved")
    assert [t["id"] for t in mine["items"]] == [r.ticket_id]


async def test_assigning_a_bot_ticket_takes_it_from_the_bot(env: Env) -> None:
    agents = (await env.admin.get("/api/v1/agents"))["items"]
    agent_id = next(a["id"] for a in agents if a["email"] == "agent@example.com")
    async with env.db.write() as s:
        team_id = (await do_get_or_create_team(s, "Sales")).id

    async def bot_ticket(sender: str) -> int:
        r = await env.inbound(sender, f"{sender}:1")
        await env.admin.post(f"/api/v1/tickets/{r.ticket_id}/status", {"status": "pending"})
        return r.ticket_id

    for target in ({"agent_id": agent_id}, {"team_id": team_id}):
        tid = await bot_ticket(f"v-bot-{next(iter(target))}")
        out = await env.admin.post(f"/api/v1/tickets/{tid}/assign", target)
        assert out["status"] == "open"
        async with env.db.read() as s:
            ticket = await s.get(Ticket, tid)
            assert ticket is not None
            assert ticket.bot_silenced
    # Clearing both is nobody taking it: the bot keeps the ticket.
    tid = await bot_ticket("v-bot-none")
    out = await env.admin.post(f"/api/v1/tickets/{tid}/assign", {"agent_id": None, "team_id": None})
    assert out["status"] == "pending"


async def test_assigning_changes_only_the_fields_given(env: Env) -> None:
    agents = (await env.admin.get("/api/v1/agents"))["items"]
    agent_id = next(a["id"] for a in agents if a["email"] == "agent@example.com")
    async with env.db.write() as s:
        team_id = (await do_get_or_create_team(s, "Billing")).id
    r = await env.inbound("v-partial", "v-partial:1")
    url = f"/api/v1/tickets/{r.ticket_id}/assign"
    assert (await env.admin.post(url, {"team_id": team_id}))["team_id"] == team_id
    # Giving it to an agent keeps its team, and moving it to a team keeps its agent.
    out = await env.admin.post(url, {"agent_id": agent_id})
    assert (out["assignee_id"], out["team_id"]) == (agent_id, team_id)
    out = await env.admin.post(url, {"team_id": None})
    assert (out["assignee_id"], out["team_id"]) == (agent_id, None)
    out = await env.admin.post(url, {"agent_id": None})
    assert (out["assignee_id"], out["team_id"]) == (None, None)
    bad = await env.admin.post(url, {}, 422)
    assert "agent_id, team_id" in bad["error"]["message"]


async def test_two_agents_taking_one_ticket_at_once_do_not_both_get_it(env: Env) -> None:
    """ "Assign to me" says whom the agent saw holding the ticket: the one who
    comes second hears who took it, instead of a 200 that the first one's
    write then contradicts (or that silently takes it from them)."""
    agent = await Agent.login(env.http, env.base, "agent@example.com")
    ids = {a["email"]: a["id"] for a in (await env.admin.get("/api/v1/agents"))["items"]}
    r = await env.inbound("v-claim", "v-claim:1")
    url = f"{env.base}/api/v1/tickets/{r.ticket_id}/assign"

    async def take(who: Agent, email: str) -> tuple[int, dict[str, Any]]:
        body = {"agent_id": ids[email], "expected_assignee_id": None}
        async with env.http.post(url, json=body, headers=who.headers) as resp:
            return resp.status, await resp.json()

    results = await asyncio.gather(take(env.admin, "admin@example.com"), take(agent, "agent@example.com"))
    assert sorted(status for status, _ in results) == [200, 409]
    (winner,) = [out for status, out in results if status == 200]
    (loser,) = [out for status, out in results if status == 409]
    holder = next(a for a in (await env.admin.get("/api/v1/agents"))["items"] if a["id"] == winner["assignee_id"])
    assert loser["error"]["message"] == (
        f"ticket {r.ticket_id} is now assigned to {holder['name']} (agent {holder['id']}); it changed since you looked"
    )
    assert (await env.admin.get(f"/api/v1/tickets/{r.ticket_id}"))["assignee_id"] == winner["assignee_id"]
    # Without the field, an assignment overrides as before (an admin reassigning).
    out = await env.admin.post(url.removeprefix(env.base), {"agent_id": ids["agent@example.com"]})
    assert out["assignee_id"] == ids["agent@example.com"]
    refused = await env.admin.post(url.removeprefix(env.base), {"agent_id": None, "expected_assignee_id": 99}, 409)
    assert "changed since you looked" in refused["error"]["message"]
    wrong = await env.admin.post(url.removeprefix(env.base), {"agent_id": None, "expected_assignee_id": True}, 422)
    assert "expected_assignee_id" in wrong["error"]["message"]


async def test_snooze_then_customer_message_wakes_ticket(env: Env) -> None:
    r = await env.inbound("v-snooze", "v-snooze:1")
    out = await env.admin.post(
        f"/api/v1/tickets/{r.ticket_id}/status", {"status": "snoozed", "snoozed_until": "2099-01-01T00:00:00+03:30"}
    )
    assert out["snoozed_until"].startswith("2098-12-31T20:30:00")
    await env.inbound("v-snooze", "v-snooze:2")
    assert (await env.admin.get(f"/api/v1/tickets/{r.ticket_id}"))["status"] == "open"


async def test_merge_and_cross_channel_timeline(env: Env) -> None:
    a = await env.inbound("v-merge-a", "v-merge-a:1", body="first from a")
    b = await env.inbound("v-merge-b", "v-merge-b:1", body="first from b")
    reply = await env.admin.post(f"/api/v1/tickets/{a.ticket_id}/messages", {"body": "reply to a"}, 201)
    assert reply["inbox"] == "webchat"  # as the message.created event has it
    merged = ContactDetail.model_validate(
        await env.admin.post(f"/api/v1/contacts/{a.contact_id}/merge", {"source_id": b.contact_id})
    )
    assert {i.address for i in merged.identities} == {"v-merge-a", "v-merge-b"}
    # Only one ticket per inbox stays open after the merge.
    assert sorted(t.status for t in merged.tickets) == ["open", "resolved"]
    again = await env.admin.post(f"/api/v1/contacts/{a.contact_id}/merge", {"source_id": b.contact_id}, 409)
    assert "already merged" in again["error"]["message"]
    # The merged-away id answers the contact it lives on in, saying so.
    gone = await env.admin.get(f"/api/v1/contacts/{b.contact_id}")
    assert (gone["id"], gone["resolved_from_id"]) == (a.contact_id, b.contact_id)

    bodies: list[str] = []
    kinds: list[str] = []
    cursor = ""
    while True:
        page = Timeline.model_validate(await env.admin.get(f"/api/v1/contacts/{a.contact_id}/timeline?limit=2{cursor}"))
        for item in page.items:
            if item.message is not None:
                bodies.append(item.message.body)
            else:
                assert item.event is not None
                kinds.append(item.event["kind"])
        if page.next_cursor is None:
            break
        cursor = f"&cursor={page.next_cursor}"
    assert bodies == ["reply to a", "first from b", "first from a"]
    assert kinds.count("ticket.created") == 2
    assert "contact.merged" in kinds


async def test_admin_only_agent_creation(env: Env) -> None:
    new = {"email": "New@Example.com", "name": "New", "password": "longenough"}
    # A team nobody set up is refused (a typo would make an empty team), unless asked for.
    refused = await env.admin.post("/api/v1/agents", {**new, "teams": ["Sales"]}, 422)
    assert "team 'Sales' does not exist" in refused["error"]["message"]
    await env.admin.post("/api/v1/agents", {**new, "capacity": {"fax": 1}}, 422)
    await env.admin.post("/api/v1/agents", {**new, "teams": ["S" * 201], "create_teams": True}, 422)
    # Bounded as PATCH /agents/{id} bounds them: JSON's true is no capacity, and
    # neither a number beyond 64 bits nor a lone surrogate would store.
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"capacity": {"webchat": True}}, "capacity.webchat: Input should be a valid integer"),
        ({"capacity": {"webchat": 10**20}}, "capacity.webchat: Input should be less than or equal to 10000"),
        ({"skills": [" "]}, "skills.0: String should have at least 1 character"),
        ({"skills": ["\ud800"]}, "skills.0: Input should be a valid string"),
        ({"languages": ["x" * 36]}, "languages.0: String should have at most 35 characters"),
    ]
    for body, message in refusals:
        answer = await env.admin.post("/api/v1/agents", {**new, **body}, 422)
        assert message in answer["error"]["message"], (body, answer)
    assert len((await env.admin.get("/api/v1/agents"))["items"]) == 2
    created = await env.admin.post(
        "/api/v1/agents",
        {
            **new,
            "teams": [" Sales "],
            "create_teams": True,
            "capacity": {"sms": 2},
            "skills": [" billing ", "billing"],
            "languages": ["FA "],
        },
        201,
    )
    assert created["email"] == "new@example.com"
    assert created["skills"] == ["billing"] and created["languages"] == ["fa"]
    assert len(created["team_ids"]) == 1 and created["capacity"] == {"sms": 2}
    assert [t["name"] for t in (await env.admin.get("/api/v1/teams"))["items"]] == ["Sales"]
    await env.admin.post("/api/v1/agents", {"email": "new@example.com", "name": "x", "password": "longenough"}, 409)
    plain = await Agent.login(env.http, env.base, "agent@example.com")
    denied = await plain.post("/api/v1/agents", {"email": "z@example.com", "name": "z", "password": "longenough"}, 403)
    assert denied["error"]["code"] == "forbidden"


async def test_oversize_and_malformed_bodies_change_nothing(env: Env) -> None:
    r = await env.inbound("v-big", "v-big:1")
    url = f"{env.base}/api/v1/tickets/{r.ticket_id}/messages"
    async with env.http.post(url, data="x" * 2_000_000, headers=env.admin.headers) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"
    async with env.http.post(url, data="{not json", headers=env.admin.headers) as resp:
        assert resp.status == 400
        assert "not valid JSON" in (await resp.json())["error"]["message"]
    await env.admin.post(f"/api/v1/tickets/{r.ticket_id}/messages", {"body": "   "}, 422)
    # PostgreSQL cannot store a NUL: named, not a 500 at the write.
    nul = await env.admin.post(f"/api/v1/tickets/{r.ticket_id}/messages", {"body": "a\u0000b"}, 422)
    assert nul["error"]["message"] == "invalid request body: body: the NUL character (\\u0000) is not allowed"
    nested = await env.admin.put(f"/api/v1/tickets/{r.ticket_id}/labels", {"labels": ["ok", "b\u0000"]}, 422)
    assert "labels.1: the NUL character" in nested["error"]["message"]
    detail = await env.admin.get(f"/api/v1/tickets/{r.ticket_id}")
    assert [m["direction"] for m in detail["messages"]] == ["in"]


async def test_concurrent_replies_are_all_delivered_in_order(env: Env) -> None:
    async with env.http.ws_connect(f"{env.base}/chat/ws") as visitor:
        await next_frame(visitor, "session")
        await visitor.send_json({"type": "message", "text": "hi", "client_id": "1"})
        ack = await next_frame(visitor, "message", client_id="1")
        tickets = (await env.admin.get("/api/v1/tickets"))["items"]
        tid = next(t["id"] for t in tickets if t["last_message"]["id"] == ack["id"])
        posts = [env.admin.post(f"/api/v1/tickets/{tid}/messages", {"body": f"reply {i}"}, 201) for i in range(10)]
        created: list[dict[str, Any]] = list(await asyncio.gather(*posts))
        got = [(await next_frame(visitor, "message", author="agent"))["id"] for _ in range(10)]
        assert got == sorted(m["id"] for m in created)


async def test_password_hashing_blocks_neither_the_hub_nor_its_writers(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Argon2 takes a few hundred milliseconds per login: while it runs, the hub
    must still answer other requests and other transactions must still write
    (SQLite has one writer: a login holding it would stall every ingest)."""
    import hub.actions
    from hub.security import hash_password, verify_password

    loop = asyncio.get_running_loop()
    seen: list[str] = []

    def meanwhile(what: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            seen.append(f"{what} on the event loop")
            return
        n = len(seen)
        asyncio.run_coroutine_threadsafe(env.admin.get("/api/v1/me"), loop).result()
        asyncio.run_coroutine_threadsafe(env.inbound(f"v-hash-{n}", f"v-hash-{n}:1"), loop).result()
        seen.append(f"{what} in a thread, hub and writers free")

    def watched_verify(password_hash: str, password: str) -> bool:
        meanwhile("verify")
        return verify_password(password_hash, password)

    def watched_hash(password: str) -> str:
        meanwhile("hash")
        return hash_password(password)

    monkeypatch.setattr(hub.actions, "verify_password", watched_verify)
    monkeypatch.setattr(hub.actions, "hash_password", watched_hash)
    wrong = {"email": "admin@example.com", "password": "wrong"}
    async with env.http.post(f"{env.base}/api/v1/auth/token", json=wrong) as r:
        assert r.status == 401
    await Agent.login(env.http, env.base, "agent@example.com")
    await env.admin.post("/api/v1/agents", {"email": "h@example.com", "name": "H", "password": "longenough"}, 201)
    assert seen == [
        "verify in a thread, hub and writers free",
        "verify in a thread, hub and writers free",
        "hash in a thread, hub and writers free",
    ]


async def test_bad_timeline_cursors_are_refused(env: Env) -> None:
    r = await env.inbound("v-cursor", "v-cursor:1")
    at = "2024-01-01T00:00:00+00:00"
    for bad in (encode_cursor(at, "message", "abc"), encode_cursor(at, "message", 10**20), encode_cursor(at, 1, 1)):
        body = await env.admin.get(f"/api/v1/contacts/{r.contact_id}/timeline?cursor={bad}", 400)
        assert "cursor is not one this API issued" in body["error"]["message"]


async def test_out_of_range_ids_in_bodies_are_refused_and_change_nothing(env: Env) -> None:
    a = await env.inbound("v-range-a", "v-range-a:1")
    huge = 99999999999999999999
    for path, body, field in (
        (f"/api/v1/contacts/{a.contact_id}/merge", {"source_id": huge}, "source_id"),
        (f"/api/v1/contacts/{a.contact_id}/merge", {"source_id": 0}, "source_id"),
        (f"/api/v1/tickets/{a.ticket_id}/assign", {"agent_id": huge}, "agent_id"),
        (f"/api/v1/tickets/{a.ticket_id}/assign", {"team_id": -1}, "team_id"),
        (
            f"/api/v1/tickets/{a.ticket_id}/messages",
            {"body": "x", "attachments": [{"url": "https://example.com/a.png", "size": huge}]},
            "attachments.0.size",
        ),
        (
            "/api/v1/agents",
            {"email": "cap@example.com", "name": "C", "password": "longenough", "capacity": {"webchat": huge}},
            "capacity.webchat",
        ),
    ):
        error = (await env.admin.post(path, body, 422))["error"]
        assert error["message"].startswith(f"invalid request body: {field}:"), error
    ticket = await env.admin.get(f"/api/v1/tickets/{a.ticket_id}")
    assert (ticket["assignee_id"], ticket["team_id"]) == (None, None)
    assert [m["direction"] for m in ticket["messages"]] == ["in"]
    contact = await env.admin.get(f"/api/v1/contacts/{a.contact_id}")
    assert contact["merged_into_id"] is None
    assert [x["email"] for x in (await env.admin.get("/api/v1/agents"))["items"]] == [
        "admin@example.com",
        "agent@example.com",
    ]


async def test_search_folds_arabic_and_persian_letter_forms(env: Env) -> None:
    """«علي كريمي» typed on an Arabic keyboard is found by «علی» and «کریمی»
    typed on a Persian one, and the other way round."""
    async with env.db.write() as s:
        arabic, persian = await ingest_batch(
            s,
            [
                InboundMessage(
                    channel=Channel.WEBCHAT,
                    inbox="webchat",
                    external_id="v-ar:1",
                    sender="v-ar",
                    sender_name="علي كريمي",
                    body="سلام، سفارشم كجاست؟",
                ),
                InboundMessage(
                    channel=Channel.WEBCHAT, inbox="webchat", external_id="v-fa:1", sender="v-fa", body="یک سؤال دارم"
                ),
            ],
        )
    assert isinstance(arabic, IngestResult) and isinstance(persian, IngestResult)

    async def tickets(q: str) -> list[int]:
        return [t["id"] for t in (await env.admin.get(f"/api/v1/tickets?q={quote(q)}"))["items"]]

    async def contacts(q: str) -> list[int]:
        return [c["id"] for c in (await env.admin.get(f"/api/v1/contacts?q={quote(q)}"))["items"]]

    assert await tickets("علی") == [arabic.ticket_id]  # the contact's name
    assert await tickets("کجاست") == [arabic.ticket_id]  # a message
    assert await tickets("علي كريمي") == [arabic.ticket_id]  # as stored
    assert await tickets("يك سؤال") == [persian.ticket_id]  # Arabic letters, Persian text
    assert await contacts("کریمی") == [arabic.contact_id]
    assert await contacts("علي") == [arabic.contact_id]
    assert await tickets("علی_") == []  # LIKE wildcards still match only themselves


async def _search(env: Env, what: str, q: str) -> list[int]:
    return [item["id"] for item in (await env.admin.get(f"/api/v1/{what}?q={quote(q)}"))["items"]]


async def test_contact_search_finds_a_phone_however_it_is_typed(env: Env) -> None:
    """Agents read a number off a screen or a customer: in Persian digits, with
    spaces and dashes, with the trunk 0 instead of the country code."""
    sara = await env.inbound("v-sara", "v-sara:1")
    other = await env.inbound("v-other", "v-other:1")
    async with env.db.write() as s:
        s.add(Identity(contact_id=sara.contact_id, channel="phone", address="+989121234567"))
        s.add(Identity(contact_id=other.contact_id, channel="phone", address="+989121234568"))
    for q in ("۹۱۲۱۲۳۴۵۶۷", "٩١٢١٢٣٤٥٦٧", "+98 912 123 4567", "+۹۸ ۹۱۲ ۱۲۳ ۴۵۶۷", "0912-123-4567", "(0912) 123 4567"):
        assert await _search(env, "contacts", q) == [sara.contact_id], q
    assert await _search(env, "contacts", "+98 912 123 456") == [other.contact_id, sara.contact_id]
    assert await _search(env, "contacts", "+98 912 123 4569") == []


async def test_ticket_search_finds_the_customers_phone_and_email(env: Env) -> None:
    """An agent with a caller's number or a customer's address finds their
    tickets from the inbox's search, as the contacts search finds them."""
    sara = await env.inbound("v-sara", "v-sara:1")
    other = await env.inbound("v-other", "v-other:1")
    async with env.db.write() as s:
        s.add(Identity(contact_id=sara.contact_id, channel="phone", address="+989121234567"))
        s.add(Identity(contact_id=other.contact_id, channel="email", address="ali@acme.example"))
    for q in ("0912 123 4567", "+۹۸ ۹۱۲ ۱۲۳ ۴۵۶۷", "9121234567"):
        assert await _search(env, "tickets", q) == [sara.ticket_id], q
    assert await _search(env, "tickets", "ali@acme") == [other.ticket_id]
    assert await _search(env, "tickets", "0912 123 4568") == []


async def test_search_matches_a_half_space_and_a_space_alike(env: Env) -> None:
    """«محمد‌رضا» is written with the half-space (ZWNJ) or a space; either finds
    the other, in names and in messages."""
    async with env.db.write() as s:
        zwnj, space = await ingest_batch(
            s,
            [
                InboundMessage(
                    channel=Channel.WEBCHAT,
                    inbox="webchat",
                    external_id="v-z:1",
                    sender="v-z",
                    sender_name="محمد\u200cرضا کریمی",
                    body="سلام",
                ),
                InboundMessage(
                    channel=Channel.WEBCHAT,
                    inbox="webchat",
                    external_id="v-s:1",
                    sender="v-s",
                    sender_name="علی رضایی",
                    body="کتاب‌ها رسید",
                ),
            ],
        )
    assert isinstance(zwnj, IngestResult) and isinstance(space, IngestResult)
    assert await _search(env, "contacts", "محمد رضا") == [zwnj.contact_id]
    assert await _search(env, "contacts", "علی\u200cرضایی") == [space.contact_id]
    assert await _search(env, "tickets", "محمد رضا") == [zwnj.ticket_id]
    assert await _search(env, "tickets", "کتاب ها") == [space.ticket_id]
    # Or with neither: «محمدرضا» is one word to some, two to others.
    assert await _search(env, "contacts", "محمدرضا") == [zwnj.contact_id]
    assert await _search(env, "contacts", "علیرضایی") == [space.contact_id]
    assert await _search(env, "tickets", "کتابها") == [space.ticket_id]
    joined = await env.inbound("v-j", "v-j:1", body="سلام", name="محمدرضا احمدی")
    assert await _search(env, "contacts", "محمد‌رضا") == [zwnj.contact_id, joined.contact_id][::-1]
    assert await _search(env, "contacts", "محمد رضا احمدی") == [joined.contact_id]


async def test_ticket_search_folds_persian_and_arabic_indic_digits(env: Env) -> None:
    persian = await env.inbound("v-o", "v-o:1", body="سفارش ۴۵۶۷۸ من کجاست؟")
    arabic = await env.inbound("v-a", "v-a:1", body="الطلب ٩٨٧٦٥")
    ascii_ = await env.inbound("v-l", "v-l:1", body="order 13579")
    assert await _search(env, "tickets", "45678") == [persian.ticket_id]
    assert await _search(env, "tickets", "سفارش 45678") == [persian.ticket_id]
    assert await _search(env, "tickets", "98765") == [arabic.ticket_id]
    assert await _search(env, "tickets", "۹۸۷۶۵") == [arabic.ticket_id]
    assert await _search(env, "tickets", "۱۳۵۷۹") == [ascii_.ticket_id]
