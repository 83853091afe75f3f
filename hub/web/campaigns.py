"""Campaigns' admin API: create (audience by segment filter, or a CSV upload
afterwards), preview, start / pause / resume / cancel, live counts, the report
and the recipients' CSV; and contacts' SMS consent. Thin handlers: the work is
in :mod:`hub.campaigns`."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub.actions import actor_of
from hub.app import HUB, Hub
from hub.campaigns import actions as ca
from hub.campaigns.audience import CsvInvalid, SegmentFilter, parse_csv
from hub.campaigns.schedule import MIN_RATE_PER_SECOND
from hub.core import UTCDateTime
from hub.errors import BadRequest, PayloadTooLarge, ValidationFailed
from hub.web.api import API, int_param, page_limit, require_admin
from hub.web.registry import ROUTES, parse_body
from storage.queries import BadCursor


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class QuietHoursIn(_In):
    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM, recipient's local time")
    end: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHoursIn:
        # As campaigns.quiet_hours: an empty window would hold every message for ever.
        if self.start == self.end:
            raise ValueError("start and end must differ (null disables quiet hours)")
        return self


class AudienceIn(_In):
    kind: Literal["segment", "csv"] = Field(
        description="segment: contacts matching `filter`; csv: upload the numbers to .../audience next"
    )
    filter: SegmentFilter = Field(default_factory=SegmentFilter)

    @model_validator(mode="after")
    def _csv_takes_no_filter(self) -> AudienceIn:
        # Else silently ignored: everyone in the file would be sent to.
        if self.kind == "csv" and self.filter != SegmentFilter():
            raise ValueError("a csv audience takes no filter: the uploaded file chooses the contacts")
        return self


class CampaignIn(_In):
    name: str = Field(min_length=1, max_length=200)
    sender: str = Field(min_length=1, description="an SMS sender: its inbox key, number or Messaging Service SID")
    template: str = Field(
        min_length=1, max_length=5000, description="Jinja2 (sandboxed): {{ first_name }}, {{ contact.<attribute> }}"
    )
    # Longer than any code: a tag or a name ("english-us", "Portuguese") is reduced to its code.
    language: str | None = Field(
        default=None,
        max_length=64,
        description="the template's language, for the opt-out line (en, fa, fa-IR, Persian)",
    )
    audience: AudienceIn
    quiet_hours: QuietHoursIn | None = Field(default=None, description="default: campaigns.quiet_hours; null: none")
    rate_per_second: float | None = Field(
        default=None,
        ge=MIN_RATE_PER_SECOND,
        description=f"segments/s: at least {MIN_RATE_PER_SECOND:g}, at most the sender's",
    )
    scheduled_at: UTCDateTime | None = None


class StartIn(_In):
    scheduled_at: UTCDateTime | None = Field(default=None, description="start later (default: now)")


class ConsentIn(_In):
    consent: bool
    source: str = Field(default="api", min_length=1, max_length=200, description="how it was given (form, call...)")


class Estimate(_Out):
    messages: int
    segments: int
    cost: float
    currency: str


class CampaignOut(_Out):
    id: int
    name: str
    status: Literal["draft", "scheduled", "running", "paused", "completed", "cancelled"]
    status_reason: str | None = Field(
        default=None, description="why it is paused (Twilio unreachable, sender gone, or who paused it)"
    )
    sender: str
    template: str
    audience: dict[str, Any]
    counts: dict[str, int]
    total: int
    progress: float
    estimate: Estimate


class CampaignList(_Out):
    items: list[CampaignOut]
    next_cursor: str | None = None


class PreviewItem(_Out):
    recipient_id: int
    contact_id: int
    phone: str
    body: str
    encoding: Literal["GSM-7", "UCS-2"]
    segments: int
    characters: int


class PreviewOut(_Out):
    items: list[PreviewItem]
    estimate: Estimate
    skipped: dict[str, Any]


class ReportOut(_Out):
    campaign_id: int
    status_reason: str | None = None
    sent: int
    delivered: int
    failed: int
    failed_by_error_code: dict[str, int]
    opted_out: int
    replied: int
    segments_used: int
    cost: float


class AudienceOut(_Out):
    rows: int
    recipients: int
    contacts_created: int
    contacts_updated: int
    invalid_rows: list[dict[str, Any]]
    duplicates: int
    skipped: dict[str, int]
    segments: int
    estimated_cost: float


class ConsentOut(_Out):
    contact_id: int
    sms_consent: bool
    sms_consent_at: str
    sms_consent_source: str


def _hub(request: web.Request) -> Hub:
    return request.app[HUB]


def _wake(hub: Hub) -> None:
    if hub.campaigns is not None:
        hub.campaigns.runner.wake()


async def _view(hub: Hub, campaign_id: int) -> dict[str, Any]:
    async with hub.db.read() as session:
        return await ca.campaign_view(session, await ca.check_campaign(session, campaign_id))


@ROUTES.route(
    "GET",
    f"{API}/campaigns",
    summary="Campaigns, newest first (admin)",
    tag="campaigns",
    admin=True,
    response=CampaignList,
    query={"cursor": "next_cursor of the previous page", "limit": "page size"},
    errors=(400,),
)
async def list_campaigns(request: web.Request) -> web.Response:
    hub = _hub(request)
    await require_admin(request)
    limit = page_limit(request)
    async with hub.db.read() as session:
        try:
            items, next_cursor = await ca.campaign_page(session, cursor=request.query.get("cursor"), limit=limit)
        except BadCursor as exc:
            raise BadRequest(str(exc)) from exc
    return web.json_response({"items": items, "next_cursor": next_cursor})


@ROUTES.route(
    "POST",
    f"{API}/campaigns",
    summary="Create a draft campaign: audience (segment filter, or csv then POST .../audience), template, sender, "
    "schedule, rate; answers the estimate",
    tag="campaigns",
    admin=True,
    body=CampaignIn,
    response=CampaignOut,
    status=201,
)
async def create_campaign(request: web.Request) -> web.Response:
    hub = _hub(request)
    admin = await require_admin(request)
    body = await parse_body(request, CampaignIn)
    spec = ca.CampaignSpec(
        name=body.name,
        sender=body.sender,
        template=body.template,
        language=body.language,
        segment=body.audience.filter if body.audience.kind == "segment" else None,
        quiet_hours=body.quiet_hours.model_dump() if body.quiet_hours else None,
        rate_per_second=body.rate_per_second,
        scheduled_at=body.scheduled_at,
    )
    # Built in short transactions: other writes of the hub go on meanwhile.
    campaign_id = await ca.create_campaign(
        hub.db,
        hub.twilio,
        hub.config.campaigns,
        spec,
        quiet_hours_given="quiet_hours" in body.model_fields_set,
        actor=actor_of(admin),
    )
    return web.json_response(await _view(hub, campaign_id), status=201)


@ROUTES.route(
    "GET",
    f"{API}/campaigns/{{id}}",
    summary="A campaign: live counts by recipient status, progress, the estimate in segments and cost",
    tag="campaigns",
    admin=True,
    response=CampaignOut,
    errors=(404,),
)
async def get_campaign(request: web.Request) -> web.Response:
    hub = _hub(request)
    await require_admin(request)
    return web.json_response(await _view(hub, int_param(request, "id")))


async def _read_csv(request: web.Request, limit: int) -> str:
    if request.content_type not in ("text/csv", "text/plain", "application/octet-stream"):
        raise BadRequest("send the CSV as the request body with Content-Type: text/csv")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the CSV is larger than campaigns.max_csv_bytes ({limit} bytes)")
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the CSV is not UTF-8 text: {exc}") from exc


@ROUTES.route(
    "POST",
    f"{API}/campaigns/{{id}}/audience",
    summary="Upload the audience of a draft as CSV (text/csv: phone, name, language, consent, tags, timezone, "
    "other columns as attributes, but no sms_consent* column); creates or updates contacts; invalid rows come "
    "back with their line numbers",
    tag="campaigns",
    admin=True,
    response=AudienceOut,
    query={
        "filename": "the file's name, kept with the campaign",
        "replace": "true: replace the audience of a draft created as a segment (its filter is dropped); "
        "without it such a draft is a 409",
    },
    errors=(400, 404, 409, 413, 422),
)
async def upload_audience(request: web.Request) -> web.Response:
    hub = _hub(request)
    admin = await require_admin(request)
    campaign_id = int_param(request, "id")
    replace = _flag(request, "replace")
    text = await _read_csv(request, hub.config.campaigns.max_csv_bytes)
    try:
        # Seconds of CPU for a large file: off the event loop, which serves everyone else.
        parsed = await asyncio.to_thread(parse_csv, text, hub.config.phone.default_region)
    except CsvInvalid as exc:
        raise ValidationFailed(f"CSV: {exc}") from exc
    summary = await ca.csv_audience(
        hub.db,
        hub.twilio,
        hub.config.campaigns,
        campaign_id,
        parsed,
        source=request.query.get("filename", "upload")[:100],
        actor=actor_of(admin),
        replace=replace,
    )
    return web.json_response(summary)


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").strip().casefold()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    # A typo ("ture") taken for false would answer 409 with no hint why.
    raise BadRequest(f"{name} must be true or false (got {request.query[name]!r})")


@ROUTES.route(
    "POST",
    f"{API}/campaigns/{{id}}/rebuild",
    summary="Choose a segment draft's audience again from its filter (after a build that stopped)",
    tag="campaigns",
    admin=True,
    response=CampaignOut,
    errors=(404, 409, 422),
)
async def rebuild_campaign(request: web.Request) -> web.Response:
    hub = _hub(request)
    admin = await require_admin(request)
    campaign_id = int_param(request, "id")
    await ca.rebuild_audience(hub.db, hub.twilio, hub.config.campaigns, campaign_id, actor=actor_of(admin))
    return web.json_response(await _view(hub, campaign_id))


@ROUTES.route(
    "GET",
    f"{API}/campaigns/{{id}}/preview",
    summary="The messages of the first recipients as they will be sent (encoding, segments), and the totals",
    tag="campaigns",
    admin=True,
    response=PreviewOut,
    query={"limit": "how many recipients (default 5, at most 50)"},
    errors=(400, 404),
)
async def preview_campaign(request: web.Request) -> web.Response:
    hub = _hub(request)
    await require_admin(request)
    limit = page_limit(request, default=5, most=50)
    async with hub.db.read() as session:
        campaign = await ca.check_campaign(session, int_param(request, "id"))
        items = await ca.preview(session, campaign, limit)
        view = await ca.campaign_view(session, campaign)
    return web.json_response(
        {"items": items, "estimate": view["estimate"], "skipped": (campaign.audience or {}).get("skipped", {})}
    )


async def _transition(request: web.Request, action: str) -> web.Response:
    hub = _hub(request)
    admin = await require_admin(request)
    campaign_id = int_param(request, "id")
    scheduled_at: datetime | None = None
    if action == "start" and request.can_read_body:
        scheduled_at = (await parse_body(request, StartIn)).scheduled_at
    async with hub.db.write() as session:
        campaign = await ca.check_campaign(session, campaign_id, lock=True)
        actor = actor_of(admin)
        if action == "start":
            await ca.do_start(session, campaign, scheduled_at=scheduled_at, actor=actor)
        elif action == "pause":
            await ca.do_pause(session, campaign, actor=actor)
        else:
            await ca.do_cancel(session, campaign, actor=actor)
        view = await ca.campaign_view(session, campaign)
    _wake(hub)
    return web.json_response(view)


@ROUTES.route(
    "POST",
    f"{API}/campaigns/{{id}}/start",
    summary="Start (or resume) a campaign now, or at scheduled_at (optional JSON body)",
    tag="campaigns",
    admin=True,
    response=CampaignOut,
    errors=(400, 404, 409, 413, 422),
)
async def start_campaign(request: web.Request) -> web.Response:
    return await _transition(request, "start")


@ROUTES.route(
    "POST",
    f"{API}/campaigns/{{id}}/pause",
    summary="Pause: nothing more goes to Twilio from now on; start resumes",
    tag="campaigns",
    admin=True,
    response=CampaignOut,
    errors=(404, 409),
)
async def pause_campaign(request: web.Request) -> web.Response:
    return await _transition(request, "pause")


@ROUTES.route(
    "POST",
    f"{API}/campaigns/{{id}}/cancel",
    summary="Cancel: everyone not yet sent to is skipped (cancelled)",
    tag="campaigns",
    admin=True,
    response=CampaignOut,
    errors=(404, 409),
)
async def cancel_campaign(request: web.Request) -> web.Response:
    return await _transition(request, "cancel")


@ROUTES.route(
    "GET",
    f"{API}/campaigns/{{id}}/report",
    summary="Sent, delivered, failed by Twilio error code, skipped by reason, opted out, replied, segments, cost",
    tag="campaigns",
    admin=True,
    response=ReportOut,
    errors=(404,),
)
async def campaign_report(request: web.Request) -> web.Response:
    hub = _hub(request)
    await require_admin(request)
    async with hub.db.read() as session:
        campaign = await ca.check_campaign(session, int_param(request, "id"))
        report = await ca.report(session, campaign, receipts=bool(hub.config.server.public_url))
    return web.json_response(report)


@ROUTES.route(
    "GET",
    f"{API}/campaigns/{{id}}/recipients.csv",
    summary="Every recipient with their status, reason, Twilio SID and times (CSV)",
    tag="campaigns",
    admin=True,
    content_type="text/csv",
    errors=(404,),
)
async def campaign_recipients_csv(request: web.Request) -> web.StreamResponse:
    hub = _hub(request)
    await require_admin(request)
    campaign_id = int_param(request, "id")
    async with hub.db.read() as session:
        await ca.check_campaign(session, campaign_id)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="campaign-{campaign_id}-recipients.csv"',
        }
    )
    await resp.prepare(request)
    async with hub.db.read() as session:
        async for text in ca.recipients_csv(session, campaign_id):
            await resp.write(text.encode("utf-8"))
    await resp.write_eof()
    return resp


@ROUTES.route(
    "PUT",
    f"{API}/contacts/{{id}}/sms_consent",
    summary="Record whether a contact agreed to marketing SMS (campaigns.require_consent)",
    tag="contacts",
    admin=True,
    body=ConsentIn,
    response=ConsentOut,
    errors=(404,),
)
async def set_sms_consent(request: web.Request) -> web.Response:
    hub = _hub(request)
    admin = await require_admin(request)
    contact_id = int_param(request, "id")
    body = await parse_body(request, ConsentIn)
    async with hub.db.write() as session:
        contact = await ca.do_set_sms_consent(
            session, contact_id, consent=body.consent, source=body.source, actor=actor_of(admin)
        )
        attrs = dict(contact.attributes or {})
    return web.json_response(
        {
            "contact_id": contact_id,
            "sms_consent": attrs["sms_consent"],
            "sms_consent_at": attrs["sms_consent_at"],
            "sms_consent_source": attrs["sms_consent_source"],
        }
    )
