"""The contacts part of the agents' REST API (``/api/v1/contacts``).

A contact merged into another keeps its id as a pointer: reading it (the
detail, the timeline, an edit) answers the contact it lives on in, whose
``id`` then differs from the one asked for and ``resolved_from_id`` says so.
Answered, not redirected: the inbox and other clients read a contact's id from
old links and tickets, and a redirect would need every client to follow it with
its token (and show nothing until it does)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from hub.actions import actor_of, check_contact, do_merge_contacts
from hub.app import HUB
from hub.campaigns.audience import SegmentFilter
from hub.contact_actions import (
    LIFECYCLE_STAGES,
    check_contact_changes,
    check_live_contact,
    do_update_contact,
    segment_query,
)
from hub.errors import BadRequest, NotFound
from hub.web.api import API, MAX_PAGE, _csv, _paged, current_agent, int_param, page_limit
from hub.web.registry import ROUTES, parse_body
from hub.web.schemas import ContactDetail, ContactList, ContactPatchIn, ContactTimeline, MergeIn
from storage import queries

# --- contacts -------------------------------------------------------------------

# The list's own filters, each the campaign segment filter's field it fills.
_SIMPLE_FILTERS = {"tag": "tags_any", "lifecycle_stage": "lifecycle_stages", "segment": "segments"}


def _segment_filter(request: web.Request) -> SegmentFilter | None:
    """The list's filters as one campaign segment filter, so the list shows
    exactly whom a campaign with that audience would consider (with a phone
    number or not)."""
    q = request.query
    raw: dict[str, Any] = {}
    if q.get("audience"):
        try:
            raw = json.loads(q["audience"])
        except ValueError as exc:
            raise BadRequest(f"audience is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise BadRequest("audience must be a JSON object: a campaign's audience filter")
    for param, key in _SIMPLE_FILTERS.items():
        values = _csv(q.get(param))
        if not values:
            continue
        if key in raw:
            raise BadRequest(f"give {param} or audience's {key}, not both")
        raw[key] = values
    if not raw:
        return None
    try:
        return SegmentFilter.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(filter)'}: {e['msg']}" for e in exc.errors())
        raise BadRequest(f"audience: {problems}") from exc


@ROUTES.route(
    "GET",
    f"{API}/contacts",
    summary="Contacts, newest first, with their identities on every channel",
    tag="contacts",
    response=ContactList,
    query={
        "q": "text in the name or any address",
        "tag": "has any of these tags (comma-separated; in any case)",
        "lifecycle_stage": f"any of these stages (comma-separated: {', '.join(LIFECYCLE_STAGES)}, ...)",
        "segment": "any of these RFM segments (comma-separated)",
        "audience": "a campaign's segment filter as JSON (tags_any, tags_all, tags_none, lifecycle_stages, "
        "attributes, attributes_present, last_contact_after, last_contact_before, channels, segments, extra)",
        "cursor": "next_cursor of the previous page",
        "limit": "page size",
    },
    errors=(400,),
)
async def list_contacts(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    limit = page_limit(request)
    flt = _segment_filter(request)
    where, keep = segment_query(flt) if flt is not None else ([], None)
    async with hub.db.read() as session:
        return await _paged(
            queries.list_contacts(
                session,
                text=(request.query.get("q") or "").strip() or None,
                cursor=request.query.get("cursor"),
                limit=limit,
                where=where,
                keep=keep,
            )
        )


@ROUTES.route(
    "GET",
    f"{API}/contacts/{{id}}",
    summary=f"A contact: identities, attributes, lead stage and score, its newest {queries.CONTACT_TICKETS} "
    "tickets (tickets_next_cursor pages the rest); a merged-away id answers the contact it was merged into",
    tag="contacts",
    response=ContactDetail,
    errors=(404,),
)
async def get_contact(request: web.Request) -> web.Response:
    await current_agent(request)
    contact_id = int_param(request, "id")
    return await _contact_answer(request, contact_id)


@ROUTES.route(
    "PATCH",
    f"{API}/contacts/{{id}}",
    summary="Edit a contact: name, attributes (merge patch), tags, lifecycle stage, add an email or phone",
    tag="contacts",
    body=ContactPatchIn,
    response=ContactDetail,
    errors=(404, 409),
)
async def update_contact(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    contact_id = int_param(request, "id")
    body = await parse_body(request, ContactPatchIn)
    changes = check_contact_changes(body.model_dump(exclude_unset=True), phone_region=hub.config.phone.default_region)
    async with hub.db.write() as session:
        contact = await check_live_contact(session, contact_id)
        await do_update_contact(session, contact, changes, actor=actor_of(agent))
    return await _contact_answer(request, contact_id)


@ROUTES.route(
    "GET",
    f"{API}/contacts/{{id}}/timeline",
    summary="Every message and event of the customer across all tickets and channels, newest first "
    "(a merged-away id: of the contact it was merged into)",
    tag="contacts",
    response=ContactTimeline,
    query={"cursor": "next_cursor of the previous page", "limit": f"page size, 1 to {MAX_PAGE} (default 50)"},
    errors=(400, 404),
)
async def contact_timeline(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    contact_id = int_param(request, "id")
    limit = page_limit(request)
    async with hub.db.read() as session:
        live_id = await queries.live_contact_id(session, contact_id)
        if live_id is None:
            raise NotFound(f"contact {contact_id} does not exist")
        try:
            items, next_cursor = await queries.timeline(
                session, live_id, cursor=request.query.get("cursor"), limit=limit
            )
        except queries.BadCursor as exc:
            raise BadRequest(str(exc)) from exc
    return web.json_response(
        {
            "items": items,
            "next_cursor": next_cursor,
            "contact_id": live_id,
            "resolved_from_id": contact_id if live_id != contact_id else None,
        }
    )


@ROUTES.route(
    "POST",
    f"{API}/contacts/{{id}}/merge",
    summary="Merge contact source_id into this contact (identities, tickets, history move here)",
    tag="contacts",
    body=MergeIn,
    response=ContactDetail,
    errors=(404, 409),
)
async def merge_contacts(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    target_id = int_param(request, "id")
    body = await parse_body(request, MergeIn)
    async with hub.db.write() as session:
        target = await check_contact(session, target_id)
        source = await check_contact(session, body.source_id)
        await do_merge_contacts(session, target, source, actor=actor_of(agent))
    return await _contact_answer(request, target_id)


async def _contact_answer(request: web.Request, contact_id: int) -> web.Response:
    """The contact as GET answers it (a merged-away id: the one it lives on in)."""
    async with request.app[HUB].db.read() as session:
        view = await queries.get_contact(session, contact_id)
    if view is None:
        raise NotFound(f"contact {contact_id} does not exist")
    return web.json_response(view)
