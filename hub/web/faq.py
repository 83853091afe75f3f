"""The bot's admin API: the knowledge base (CRUD, import, version history),
asking the bot what it would do, and the knowledge-gap report."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bots.brain import Brain
from bots.kb import KbEntry, KbError, entry_from, parse_csv, parse_yaml
from hub.actions import actor_of
from hub.app import HUB, Hub
from hub.bot_actions import (
    check_faq,
    check_faq_teams,
    configured_teams,
    do_delete_faq,
    do_import_faq,
    do_save_faq,
    faq_view,
)
from hub.bot_report import gaps
from hub.errors import BadRequest, NotFound, ValidationFailed
from hub.web.api import API, MAX_PAGE, current_agent, page_limit, require_admin
from hub.web.registry import ROUTES, parse_body
from storage import queries
from storage.models import FaqEntry, FaqVersion
from storage.views import iso


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


READ_ONLY: dict[str, Any] = {"readOnly": True}


class FaqEntryIn(_In):
    id: str = Field(min_length=1, max_length=200, description="stable slug: letters, digits, . _ : -")
    questions: list[str] = Field(min_length=1, max_length=500)
    answer: str | dict[str, str] = Field(description="one text, or one per language: {en: ..., fa: ...}")
    tags: list[str] = Field(default_factory=list)
    team: str | None = Field(
        default=None,
        description=(
            "the team a person is asked from when the bot hands off after this answer: an existing team, "
            "or one the hub's config names (matched in any case, stored as the team is spelled); "
            "any other is refused with 422"
        ),
    )


class FaqEntryPutIn(FaqEntryIn):
    """What GET answers can be sent back as it is: the fields the server sets
    are accepted and ignored, except ``version``, which guards the write."""

    version: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description=(
            "the entry's version you read (as GET gives it): if the entry is no longer at that version "
            "(another admin changed or deleted it), the answer is 409 Conflict naming the current version "
            "and nothing changes. Left out, the last write wins"
        ),
    )
    updated_at: str | None = Field(default=None, description="read-only: ignored", json_schema_extra=READ_ONLY)
    updated_by: str | None = Field(default=None, description="read-only: ignored", json_schema_extra=READ_ONLY)


class FaqEntryOut(_Out):
    id: str
    questions: list[str]
    answer: str | dict[str, str]
    tags: list[str]
    team: str | None
    version: int
    updated_at: str
    updated_by: str


class FaqList(_Out):
    items: list[FaqEntryOut]
    next_cursor: str | None = None


class FaqVersionOut(_Out):
    version: int
    change: Literal["created", "updated", "deleted"]
    document: dict[str, Any]
    actor: str
    created_at: str


class FaqVersionList(_Out):
    items: list[FaqVersionOut]
    next_cursor: str | None = None


#: The most characters an import's content may have. Its body may be larger
#: than the server's usual limit (server.max_body_bytes): JSON may escape each
#: character as \uXXXX, six bytes, and a knowledge base in Persian is all
#: such characters when the client escapes non-ASCII, as most do.
IMPORT_MAX_CHARS = 2_000_000
IMPORT_MAX_BODY = 6 * IMPORT_MAX_CHARS + 65_536


class FaqImportIn(_In):
    format: Literal["yaml", "csv"] = "yaml"
    content: str = Field(
        min_length=1,
        max_length=IMPORT_MAX_CHARS,
        description=(
            f"the file's text, at most {IMPORT_MAX_CHARS:,} characters (a request body of at most "
            f"{IMPORT_MAX_BODY:,} bytes); a file without entries is refused"
        ),
    )
    replace: bool = Field(default=False, description="delete the entries the content does not have")


class FaqImportOut(_Out):
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    deleted: list[str]


class BotAskIn(_In):
    text: str = Field(min_length=1, max_length=5000)


class BotCandidate(_Out):
    entry_id: str
    confidence: float


class BotAskOut(_Out):
    action: Literal["answer", "clarify", "handoff"]
    reason: str | None = Field(
        description="why, when the knowledge base did not decide it alone: requested, frustration, vip (handoff), "
        "smalltalk (a greeting), qualify (a question about buying starts the qualification)"
    )
    replies: list[str] = Field(description="what the bot would reply")
    entry_id: str | None = Field(description="the knowledge base's best entry")
    confidence: float
    candidates: list[BotCandidate]


class GapItem(_Out):
    turn_id: int
    question: str
    why: str | None
    entry_id: str | None
    confidence: float | None
    ticket_id: int
    contact_id: int
    at: str


class GapList(_Out):
    items: list[GapItem]
    next_cursor: str | None = None


async def _known_teams(session: AsyncSession, hub: Hub, entries: list[KbEntry]) -> list[KbEntry]:
    return await check_faq_teams(session, entries, configured_teams(hub.config))


def _entry(body: FaqEntryIn, key: str | None = None) -> KbEntry:
    # Only the entry's own fields: a PUT's version and read-only fields are not
    # part of the knowledge-base document.
    raw = body.model_dump(include=set(FaqEntryIn.model_fields))
    if key is not None and raw["id"] != key:
        raise BadRequest(f"the body's id {raw['id']!r} differs from the URL's {key!r}")
    try:
        return entry_from(raw, "entry")
    except KbError as exc:
        raise ValidationFailed(str(exc)) from exc


T = TypeVar("T")

# PostgreSQL's SQLSTATE for a unique violation.
UNIQUE_VIOLATION = "23505"
WRITE_TRIES = 3


async def _save(hub: Hub, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``work`` in a unit of work, tried again when another transaction
    created one of its new entries first. The row lock that keeps two edits of
    an entry apart cannot hold a row that does not exist yet: on PostgreSQL two
    requests creating the same id both insert, and the one that commits second
    meets the unique index. Tried again, it sees the entry and does what it
    would have done had it come second (409 for POST, a new version for PUT and
    import). SQLite has one writer at a time, so there this never happens."""
    for _ in range(WRITE_TRIES - 1):
        try:
            async with hub.db.write() as session:
                return await work(session)
        except IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
    async with hub.db.write() as session:
        return await work(session)


@ROUTES.route("GET", f"{API}/faq", summary="The bot's knowledge base", tag="bot", response=FaqList)
async def list_faq(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    async with hub.db.read() as session:
        rows = (await session.scalars(select(FaqEntry).where(FaqEntry.deleted.is_(False)).order_by(FaqEntry.key))).all()
    return web.json_response({"items": [faq_view(r) for r in rows], "next_cursor": None})


@ROUTES.route(
    "POST",
    f"{API}/faq",
    summary="Add a knowledge-base entry (admin)",
    tag="bot",
    admin=True,
    body=FaqEntryIn,
    response=FaqEntryOut,
    status=201,
    errors=(409,),
)
async def create_faq(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    admin = await require_admin(request)
    entry = _entry(await parse_body(request, FaqEntryIn))

    async def create(session: AsyncSession) -> dict[str, Any]:
        [checked] = await _known_teams(session, hub, [entry])
        row, _ = await do_save_faq(session, checked, actor=actor_of(admin), create_only=True)
        return faq_view(row)

    view = await _save(hub, create)
    hub.bot.kb_changed()
    return web.json_response(view, status=201)


@ROUTES.route(
    "GET", f"{API}/faq/{{key}}", summary="One knowledge-base entry", tag="bot", response=FaqEntryOut, errors=(404,)
)
async def get_faq(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    async with hub.db.read() as session:
        row = await check_faq(session, request.match_info["key"])
    return web.json_response(faq_view(row))


@ROUTES.route(
    "PUT",
    f"{API}/faq/{{key}}",
    summary=(
        "Create or replace a knowledge-base entry (admin); a new version when it changes. "
        "With the version you read, 409 Conflict if someone changed it since"
    ),
    tag="bot",
    admin=True,
    body=FaqEntryPutIn,
    response=FaqEntryOut,
    errors=(409,),
)
async def put_faq(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    admin = await require_admin(request)
    body = await parse_body(request, FaqEntryPutIn)
    entry = _entry(body, request.match_info["key"])

    async def save(session: AsyncSession) -> dict[str, Any]:
        [checked] = await _known_teams(session, hub, [entry])
        row, _ = await do_save_faq(session, checked, actor=actor_of(admin), expected_version=body.version)
        return faq_view(row)

    view = await _save(hub, save)
    hub.bot.kb_changed()
    return web.json_response(view)


@ROUTES.route(
    "DELETE",
    f"{API}/faq/{{key}}",
    summary="Delete a knowledge-base entry (admin)",
    tag="bot",
    admin=True,
    status=204,
    query={
        "version": (
            "the entry's version you read (as GET gives it): if the entry is no longer at that version "
            "(another admin changed it), the answer is 409 Conflict naming the current version and nothing "
            "is deleted. Left out, the entry is deleted whatever its version"
        )
    },
    errors=(404, 409),
)
async def delete_faq(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    admin = await require_admin(request)
    version = _version_query(request)
    async with hub.db.write() as session:
        await do_delete_faq(session, request.match_info["key"], actor=actor_of(admin), expected_version=version)
    hub.bot.kb_changed()
    return web.Response(status=204)


def _version_query(request: web.Request) -> int | None:
    given = request.query.get("version")
    if given is None:
        return None
    if not given.isascii() or not given.isdecimal() or int(given) < 1:
        raise BadRequest(
            f"version must be a whole number from 1 (the entry's version as GET gives it), not {given[:40]!r}"
        )
    return int(given)


@ROUTES.route(
    "GET",
    f"{API}/faq/{{key}}/versions",
    summary="Who changed a knowledge-base entry, when, and to what (newest first)",
    tag="bot",
    response=FaqVersionList,
    errors=(404,),
)
async def faq_versions(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    key = request.match_info["key"]
    async with hub.db.read() as session:
        rows = (
            await session.scalars(
                select(FaqVersion).where(FaqVersion.entry_key == key).order_by(FaqVersion.version.desc())
            )
        ).all()
    if not rows:
        raise NotFound(f"knowledge-base entry {key!r} has no history")
    items = [
        {
            "version": v.version,
            "change": v.change,
            "document": v.document,
            "actor": v.actor,
            "created_at": iso(v.created_at),
        }
        for v in rows
    ]
    return web.json_response({"items": items, "next_cursor": None})


@ROUTES.route(
    "POST",
    f"{API}/faq/import",
    summary=(
        "Import a YAML or CSV knowledge base (admin); all or nothing. "
        f"The body may be up to {IMPORT_MAX_BODY:,} bytes, past the server's usual limit"
    ),
    tag="bot",
    admin=True,
    body=FaqImportIn,
    response=FaqImportOut,
)
async def import_faq(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    admin = await require_admin(request)
    # Only this route's body may be this large, and only an admin's.
    limit = max(hub.config.server.max_body_bytes, IMPORT_MAX_BODY)
    body = await parse_body(request.clone(client_max_size=limit), FaqImportIn)
    parse = parse_csv if body.format == "csv" else parse_yaml
    try:
        # Reading a large YAML file takes seconds: not on the event loop.
        entries = await asyncio.to_thread(parse, body.content, "content")
    except KbError as exc:
        raise ValidationFailed(str(exc)) from exc

    async def save(session: AsyncSession) -> dict[str, list[str]]:
        checked = await _known_teams(session, hub, entries)
        return await do_import_faq(session, checked, actor=actor_of(admin), replace=body.replace)

    result = await _save(hub, save)
    hub.bot.kb_changed()
    return web.json_response(result)


@ROUTES.route(
    "POST",
    f"{API}/bot/ask",
    summary="What the bot would do with a question: answer, clarify or handoff, with its confidence",
    tag="bot",
    body=BotAskIn,
    response=BotAskOut,
)
async def bot_ask(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    body = await parse_body(request, BotAskIn)
    brain = Brain(hub.config.bot, await hub.bot.kb.matcher())
    return web.json_response(brain.ask(body.text))


@ROUTES.route(
    "GET",
    f"{API}/bot/report",
    summary="Questions the bot handed off or whose answer did not help, newest first",
    tag="bot",
    response=GapList,
    query={"cursor": "next_cursor of the previous page", "limit": f"page size, 1 to {MAX_PAGE} (default 50)"},
    errors=(400,),
)
async def bot_report(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    limit = page_limit(request)
    async with hub.db.read() as session:
        try:
            items, cursor = await gaps(session, cursor=request.query.get("cursor"), limit=limit)
        except queries.BadCursor as exc:
            raise BadRequest(str(exc)) from exc
    return web.json_response({"items": items, "next_cursor": cursor})
