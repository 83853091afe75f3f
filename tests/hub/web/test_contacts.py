"""The contacts API: editing a contact, the list's segment filters, ids in
bodies, the detail's ticket cap and merged-away ids; on both engines."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import select, update

from hub.core import utcnow
from hub.web.schemas import ContactDetail, ContactTimeline
from storage.models import AuditLog, Contact, Identity, Ticket
from tests.hub.helpers import config_on, next_frame
from tests.hub.web.test_api import Env, _env


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    async for config in config_on(request.param, tmp_path):
        async for e in _env(config):
            yield e


# --- ids in bodies are integers -------------------------------------------------


@pytest.mark.parametrize("bad", [True, "2", 2.0])
async def test_merge_source_id_must_be_an_integer(env: Env, bad: Any) -> None:
    a = await env.inbound("v-id-a", "v-id-a:1")
    b = await env.inbound("v-id-b", "v-id-b:1")
    for target in (a.contact_id, b.contact_id):
        error = (await env.admin.post(f"/api/v1/contacts/{target}/merge", {"source_id": bad}, 422))["error"]
        assert error["message"].startswith("invalid request body: source_id:"), error
    for contact_id in (a.contact_id, b.contact_id):
        contact = await env.admin.get(f"/api/v1/contacts/{contact_id}")
        assert (contact["id"], contact["merged_into_id"], contact["resolved_from_id"]) == (contact_id, None, None)


@pytest.mark.parametrize("field", ["agent_id", "team_id"])
@pytest.mark.parametrize("bad", [True, "1", 1.0])
async def test_assign_ids_must_be_integers(env: Env, field: str, bad: Any) -> None:
    r = await env.inbound(f"v-assign-{field}", f"v-assign-{field}:1")
    if field == "team_id":
        await env.admin.post(
            "/api/v1/agents",
            {"email": "t@example.com", "name": "T", "password": "longenough", "teams": ["sales"], "create_teams": True},
            201,
        )
    error = (await env.admin.post(f"/api/v1/tickets/{r.ticket_id}/assign", {field: bad}, 422))["error"]
    assert error["message"].startswith(f"invalid request body: {field}:"), error
    ticket = await env.admin.get(f"/api/v1/tickets/{r.ticket_id}")
    assert (ticket["assignee_id"], ticket["team_id"]) == (None, None)


# --- PATCH /contacts/{id} -------------------------------------------------------


async def test_an_agent_edits_a_contact(env: Env) -> None:
    r = await env.inbound("v-edit", "v-edit:1", name="visitor")
    path = f"/api/v1/contacts/{r.contact_id}"
    async with env.admin.events() as ws:
        edited = ContactDetail.model_validate(
            await env.admin.patch(
                path,
                {
                    # Spaces folded, and no override that would show agents "emaN laeR".
                    "name": "  Real   \u202eName\u202c ",
                    "attributes": {"company": "Acme", "language": "Persian", "timezone": "Asia/Tehran", "seats": 5},
                    "tags": [" VIP ", "vip", "Wholesale", ""],
                    "lifecycle_stage": "customer",
                    "add_email": " Sara@Example.COM ",
                    "add_phone": "+1 (415) 555-2671",
                },
            )
        )
        frame = await next_frame(ws, "contact.updated")
    assert edited.name == "Real Name"
    assert edited.attributes == {"company": "Acme", "language": "fa", "timezone": "Asia/Tehran", "seats": 5}
    assert edited.tags == ["VIP", "Wholesale"]
    assert edited.lifecycle_stage == "customer"
    assert {(i.channel, i.address) for i in edited.identities} >= {
        ("email", "sara@example.com"),
        ("phone", "+14155552671"),
    }
    assert frame["contact"]["id"] == r.contact_id and frame["contact"]["tags"] == ["VIP", "Wholesale"]
    # Said as a visitor's own change is, so an open inbox follows either.
    assert frame["contact_id"] == r.contact_id
    assert frame["changed"] == ["attributes", "identities_added", "lifecycle_stage", "name", "tags"]
    assert frame["data"]["to"]["lifecycle_stage"] == "customer"

    # Merge patch: null removes a key, others stay; a tag in another case keeps the stored spelling.
    again = await env.admin.patch(path, {"attributes": {"company": None, "seats": 6}, "tags": ["vip", "new"]})
    assert again["attributes"] == {"language": "fa", "timezone": "Asia/Tehran", "seats": 6}
    assert again["tags"] == ["VIP", "new"]
    # Fields left out stay; null clears the name and the stage.
    cleared = await env.admin.patch(path, {"name": None, "lifecycle_stage": None})
    assert (cleared["name"], cleared["lifecycle_stage"], cleared["tags"]) == (None, None, ["VIP", "new"])
    async with env.db.read() as s:
        actions = (await s.scalars(select(AuditLog.action).where(AuditLog.entity_id == r.contact_id))).all()
    assert list(actions).count("contact.updated") == 3
    # Nothing changes: no audit entry.
    await env.admin.patch(path, {"tags": ["new", "VIP"]})
    async with env.db.read() as s:
        actions = (await s.scalars(select(AuditLog.action).where(AuditLog.entity_id == r.contact_id))).all()
    assert list(actions).count("contact.updated") == 3


async def test_an_address_of_another_contact_is_a_conflict_naming_it(env: Env) -> None:
    owner = await env.inbound("v-owner", "v-owner:1")
    other = await env.inbound("v-other", "v-other:1")
    async with env.db.write() as s:
        s.add(Identity(contact_id=owner.contact_id, channel="email", address="taken@example.com"))
        s.add(Identity(contact_id=owner.contact_id, channel="phone", address="+14155552671"))
    for body in ({"add_email": "TAKEN@example.com"}, {"add_phone": "+1 415 555 2671", "name": "Not applied"}):
        error = (await env.admin.patch(f"/api/v1/contacts/{other.contact_id}", body, 409))["error"]
        assert f"contact {owner.contact_id}" in error["message"], error
    contact = await env.admin.get(f"/api/v1/contacts/{other.contact_id}")
    assert contact["name"] is None and [i["channel"] for i in contact["identities"]] == ["webchat"]
    # Its own address again changes nothing.
    same = await env.admin.patch(f"/api/v1/contacts/{owner.contact_id}", {"add_email": "taken@example.com"})
    assert sum(i["address"] == "taken@example.com" for i in same["identities"]) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"attributes": {"sms_consent": True}}, "attributes.sms_consent"),
        ({"attributes": {"sms_consent_source": "x"}}, "attributes.sms_consent_source"),
        ({"attributes": {"x" * 65: "long name"}}, "attributes." + "x" * 65),
        ({"attributes": {"note": "x" * 501}}, "attributes.note"),
        ({"attributes": {"nested": {"a": 1}}}, "attributes.nested"),
        ({"attributes": {"big": 2**60}}, "attributes.big"),
        ({"attributes": {"language": "Klingonish"}}, "attributes.language"),
        ({"attributes": {"timezone": "PST"}}, "attributes.timezone"),
        ({"tags": ["x" * 101]}, "tags.0"),
        ({"lifecycle_stage": "won"}, "lifecycle_stage"),
        ({"name": "   "}, "name"),
        ({"add_email": "not an address"}, "add_email"),
        ({"add_phone": "12"}, "add_phone"),
        ({"merged_into_id": 3}, "merged_into_id"),
        ({"tags": None}, "tags"),
    ],
)
async def test_a_bad_edit_is_refused_naming_the_field_and_changes_nothing(
    env: Env, body: dict[str, Any], field: str
) -> None:
    r = await env.inbound("v-bad-edit", "v-bad-edit:1")
    error = (await env.admin.patch(f"/api/v1/contacts/{r.contact_id}", body, 422))["error"]
    assert error["message"].startswith(f"invalid request body: {field}:"), error
    contact = await env.admin.get(f"/api/v1/contacts/{r.contact_id}")
    assert (contact["attributes"], contact["tags"], contact["lifecycle_stage"]) == ({}, [], None)


async def test_editing_an_unknown_contact_is_404(env: Env) -> None:
    assert "contact 999" in (await env.admin.patch("/api/v1/contacts/999", {"name": "x"}, 404))["error"]["message"]


# --- the list's filters ---------------------------------------------------------


async def test_the_contact_list_filters_by_tag_stage_segment_and_audience(env: Env) -> None:
    made = [await env.inbound(f"v-filter-{i}", f"v-filter-{i}:1") for i in range(4)]
    ids = [m.contact_id for m in made]
    await env.admin.patch(f"/api/v1/contacts/{ids[0]}", {"tags": ["VIP"], "lifecycle_stage": "customer"})
    await env.admin.patch(f"/api/v1/contacts/{ids[1]}", {"tags": ["vip", "late"], "attributes": {"city": "Tehran"}})
    await env.admin.patch(f"/api/v1/contacts/{ids[2]}", {"lifecycle_stage": "lead"})
    async with env.db.write() as s:
        await s.execute(update(Contact).where(Contact.id == ids[3]).values(segment="champions"))

    async def listed(query: str, status: int = 200) -> Any:
        body = await env.admin.get(f"/api/v1/contacts?{query}", status)
        return sorted(c["id"] for c in body["items"]) if status == 200 else body["error"]["message"]

    assert await listed("tag=vip") == [ids[0], ids[1]]
    assert await listed("tag=late,nothing") == [ids[1]]
    assert await listed("lifecycle_stage=customer,lead") == [ids[0], ids[2]]
    assert await listed("segment=champions") == [ids[3]]
    assert await listed("tag=vip&lifecycle_stage=customer") == [ids[0]]
    audience = quote('{"tags_all": ["VIP", "late"], "attributes": {"city": "Tehran"}}')
    assert await listed(f"audience={audience}") == [ids[1]]
    # A tag filter pages as the plain list does.
    first = await env.admin.get("/api/v1/contacts?tag=vip&limit=1")
    assert [c["id"] for c in first["items"]] == [ids[1]]
    second = await env.admin.get(f"/api/v1/contacts?tag=vip&limit=1&cursor={first['next_cursor']}")
    assert [c["id"] for c in second["items"]] == [ids[0]] and second["next_cursor"] is None
    assert "unknown query parameter 'stage'" in await listed("stage=lead", 400)
    both = quote(json.dumps({"tags_any": ["x"]}))
    assert "tags_any" in await listed(f"tag=vip&audience={both}", 400)
    assert "colour" in await listed(f"audience={quote(json.dumps({'colour': 1}))}", 400)


# --- the detail's tickets, merged-away ids --------------------------------------


async def test_the_detail_says_when_it_holds_only_the_newest_tickets(env: Env) -> None:
    r = await env.inbound("v-many", "v-many:1")
    async with env.db.write() as s:
        ticket = await s.get(Ticket, r.ticket_id)
        assert ticket is not None
        now = utcnow()
        for i in range(60):
            s.add(
                Ticket(
                    contact_id=r.contact_id,
                    inbox_id=ticket.inbox_id,
                    channel=ticket.channel,
                    status="resolved",
                    last_message_at=now - timedelta(minutes=i + 1),
                    resolved_at=now,
                )
            )
    detail = ContactDetail.model_validate(await env.admin.get(f"/api/v1/contacts/{r.contact_id}"))
    assert (len(detail.tickets), detail.tickets_total) == (50, 61)
    assert detail.tickets_next_cursor is not None
    rest = await env.admin.get(f"/api/v1/tickets?contact={r.contact_id}&cursor={detail.tickets_next_cursor}&limit=200")
    seen = [t.id for t in detail.tickets] + [t["id"] for t in rest["items"]]
    assert len(seen) == len(set(seen)) == 61
    small = await env.inbound("v-few", "v-few:1")
    few = await env.admin.get(f"/api/v1/contacts/{small.contact_id}")
    assert (len(few["tickets"]), few["tickets_total"], few["tickets_next_cursor"]) == (1, 1, None)


async def test_a_merged_away_id_answers_the_contact_it_lives_on_in(env: Env) -> None:
    a = await env.inbound("v-chain-a", "v-chain-a:1", body="from a")
    b = await env.inbound("v-chain-b", "v-chain-b:1", body="from b")
    c = await env.inbound("v-chain-c", "v-chain-c:1", body="from c")
    await env.admin.post(f"/api/v1/contacts/{b.contact_id}/merge", {"source_id": a.contact_id})
    await env.admin.post(f"/api/v1/contacts/{c.contact_id}/merge", {"source_id": b.contact_id})
    detail = await env.admin.get(f"/api/v1/contacts/{a.contact_id}")
    assert (detail["id"], detail["resolved_from_id"], detail["merged_into_id"]) == (c.contact_id, a.contact_id, None)
    assert {i["address"] for i in detail["identities"]} == {"v-chain-a", "v-chain-b", "v-chain-c"}
    timeline = ContactTimeline.model_validate(await env.admin.get(f"/api/v1/contacts/{a.contact_id}/timeline"))
    assert (timeline.contact_id, timeline.resolved_from_id) == (c.contact_id, a.contact_id)
    bodies = [i.message.body for i in timeline.items if i.message is not None]
    assert sorted(bodies) == ["from a", "from b", "from c"]
    live = await env.admin.get(f"/api/v1/contacts/{c.contact_id}/timeline")
    assert (live["contact_id"], live["resolved_from_id"]) == (c.contact_id, None)
    # An edit through the old id edits the surviving contact.
    edited = await env.admin.patch(f"/api/v1/contacts/{a.contact_id}", {"tags": ["vip"]})
    assert (edited["id"], edited["tags"]) == (c.contact_id, ["vip"])
    await env.admin.get("/api/v1/contacts/999/timeline", 404)


async def test_the_ticket_list_filters_by_a_merged_away_contact_id(env: Env) -> None:
    a = await env.inbound("v-list-a", "v-list-a:1")
    b = await env.inbound("v-list-b", "v-list-b:1")
    c = await env.inbound("v-list-c", "v-list-c:1")
    await env.admin.post(f"/api/v1/contacts/{b.contact_id}/merge", {"source_id": a.contact_id})
    await env.admin.post(f"/api/v1/contacts/{c.contact_id}/merge", {"source_id": b.contact_id})
    everything = {a.ticket_id, b.ticket_id, c.ticket_id}
    for asked in (a.contact_id, b.contact_id, c.contact_id):
        listed = await env.admin.get(f"/api/v1/tickets?contact={asked}")
        assert {t["id"] for t in listed["items"]} == everything, asked
    # The detail's cursor, taken with the id the detail was asked for, pages on.
    detail = await env.admin.get(f"/api/v1/contacts/{a.contact_id}")
    first = await env.admin.get(f"/api/v1/tickets?contact={a.contact_id}&limit=1")
    rest = await env.admin.get(f"/api/v1/tickets?contact={a.contact_id}&cursor={first['next_cursor']}")
    assert [t["id"] for t in first["items"] + rest["items"]] == [t["id"] for t in detail["tickets"]]
    assert (await env.admin.get("/api/v1/tickets?contact=999"))["items"] == []
