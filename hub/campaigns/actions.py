"""Every write a campaign makes, in the hub's ``check_*`` / ``do_*`` shape:
creating one (with its audience rendered and priced up front), a CSV audience,
start / pause / resume / cancel, SMS consent; and the read side: counts, the
estimate, the preview, the report and the recipients' CSV."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import phonenumbers
from sqlalchemy import ColumnElement, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from channels.twilio_sms import SmsSender
from hub.actions import audit, check_contact
from hub.campaigns.audience import (
    CONSENT_KEYS,
    Candidate,
    CsvAudience,
    CsvRow,
    SegmentFilter,
    consent_attributes,
    listed_candidates,
    segment_candidates,
    segments_in_use,
    sms_consent,
)
from hub.campaigns.schedule import MIN_RATE_PER_SECOND, zones_for
from hub.campaigns.templates import (
    TemplateInvalid,
    UnknownVariables,
    check_variables,
    compile_template,
    language_code,
    message_for,
    variables,
)
from hub.config import CampaignsConfig
from hub.core import IdentityKind, utcnow
from hub.errors import Conflict, NotFound, ValidationFailed
from hub.telephony import TwilioService
from hub.text import phone_region
from storage.db import Database
from storage.ingest import insert_ids, table
from storage.models import AuditLog, Campaign, CampaignRecipient, Contact, Identity
from storage.queries import cursor_id, decode_cursor, encode_cursor
from storage.views import iso

DRAFT, SCHEDULED, RUNNING, PAUSED, COMPLETED, CANCELLED = (
    "draft",
    "scheduled",
    "running",
    "paused",
    "completed",
    "cancelled",
)
# Recipient statuses.
PENDING, SENDING, SENT, DELIVERED, UNDELIVERED, FAILED, SKIPPED, UNCERTAIN = (
    "pending",
    "sending",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "skipped",
    "uncertain",
)
RECIPIENT_STATUSES = (PENDING, SENDING, SENT, DELIVERED, UNDELIVERED, FAILED, SKIPPED, UNCERTAIN)
# Recipients the campaign is done with (the progress it shows).
DONE_STATUSES = (SENT, DELIVERED, UNDELIVERED, FAILED, SKIPPED, UNCERTAIN)
INSERT_CHUNK = 1000


class TemplateForbidden(ValidationFailed):
    pass


class TemplateNamesUnknown(ValidationFailed):
    """The template uses a variable no recipient has (the CLI names its option)."""


class FilterRefused(ValidationFailed):
    """A segment filter that would select nobody, naming its field (the CLI
    names the option that fills it)."""

    def __init__(self, field: str, said: str) -> None:
        super().__init__(f"audience.filter.{field}: {said}")
        self.field = field
        self.said = said


# --- senders --------------------------------------------------------------------------


def check_sender(service: TwilioService | None, name: str) -> SmsSender:
    """A configured SMS sender by inbox key, number or Messaging Service SID."""
    if service is None or not service.senders:
        raise ValidationFailed("no SMS sender is configured (twilio.senders, TWILIO_PHONE_NUMBER)")
    for s in service.senders:
        if name in (s.inbox, s.key, s.number, s.messaging_service_sid):
            return s
    known = ", ".join(f"{s.inbox} ({s.key})" for s in service.senders)
    raise ValidationFailed(f"sender {name!r} is not configured; configured senders: {known}")


# --- creating ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    name: str
    sender: str
    template: str
    language: str | None = None
    segment: SegmentFilter | None = None
    quiet_hours: dict[str, str] | None = None
    rate_per_second: float | None = None
    scheduled_at: datetime | None = None


def _quiet(config: CampaignsConfig, value: dict[str, str] | None, given: bool) -> dict[str, str] | None:
    if given:
        return value
    return config.quiet_hours.model_dump() if config.quiet_hours else None


async def do_create_campaign(
    session: AsyncSession,
    service: TwilioService | None,
    config: CampaignsConfig,
    spec: CampaignSpec,
    *,
    quiet_hours_given: bool = False,
    actor: str = "system",
    build: bool = True,
) -> Campaign:
    """A draft campaign; with a segment, its audience is chosen, rendered and
    priced at once (what the preview shows is what is sent), all in
    ``session``'s transaction. With ``build=False`` the draft is only marked
    as building its audience (see :func:`create_campaign`, which builds it
    without holding the database's writer)."""
    sender = check_sender(service, spec.sender)
    if not spec.name.strip():
        raise ValidationFailed("name must not be empty")
    try:
        template = compile_template(spec.template)
    except TemplateInvalid as exc:
        raise ValidationFailed(f"template: {exc}") from exc
    probe = variables(name="Ada Lovelace", phone="+15550000000", attributes={}, tags=[], stage=None)
    _probe_render(template, probe)
    # After the probe, which names an escape ("cycler.__init__") as such
    # rather than as an unknown variable.
    try:
        check_variables(spec.template)
    except UnknownVariables as exc:
        raise TemplateNamesUnknown(f"template: {exc}") from exc
    except TemplateInvalid as exc:
        raise ValidationFailed(f"template: {exc}") from exc
    # Refused here, not when sending: the runner's pacer cannot pace slower
    # (see MIN_RATE_PER_SECOND), and the runner would only pause the campaign
    # once it runs. `not >=` refuses NaN too.
    if spec.rate_per_second is not None and not spec.rate_per_second >= MIN_RATE_PER_SECOND:
        raise ValidationFailed(
            f"rate_per_second must be at least {MIN_RATE_PER_SECOND:g} segments per second "
            f"(got {spec.rate_per_second:g})"
        )
    if spec.rate_per_second is None and not sender.messages_per_second >= MIN_RATE_PER_SECOND:
        raise ValidationFailed(
            f"sender {sender.key} may send {sender.messages_per_second:g} segments per second "
            f"(twilio.senders[].messages_per_second), below the slowest a campaign may go ({MIN_RATE_PER_SECOND:g})"
        )
    if spec.rate_per_second is not None and spec.rate_per_second > sender.messages_per_second:
        raise ValidationFailed(
            f"rate_per_second {spec.rate_per_second:g} is above what sender {sender.key} may send "
            f"({sender.messages_per_second:g} segments per second, twilio.senders[].messages_per_second)"
        )
    if spec.scheduled_at is not None and spec.scheduled_at.tzinfo is None:
        raise ValidationFailed("scheduled_at must carry a time zone")
    if spec.scheduled_at is not None and spec.scheduled_at <= utcnow():
        # Accepted, it would start at once on `send`: not what a schedule asks for.
        raise ValidationFailed(
            f"scheduled_at {spec.scheduled_at.isoformat()} is in the past; leave it out to start when sent"
        )
    language = language_code(spec.language)
    if spec.language and language is None:
        raise ValidationFailed(f"language {spec.language!r} is not a language code or name (en, fa, fa-IR, Persian)")
    if spec.segment is not None and spec.segment.segments:
        await _check_segments_in_use(session, spec.segment.segments)
    audience: dict[str, Any] = {}
    if spec.segment is not None:
        audience = {"kind": "segment", "filter": spec.segment.model_dump(mode="json")}
        if not build:
            audience[BUILD] = _new_build()
    campaign = Campaign(
        name=spec.name.strip(),
        status=DRAFT,
        sender=sender.key,
        template=spec.template,
        language=language,
        audience=audience,
        quiet_hours=_quiet(config, spec.quiet_hours, quiet_hours_given),
        rate_per_second=spec.rate_per_second,
        price_per_segment=config.price_per_segment,
        currency=config.currency,
        created_by=actor,
        scheduled_at=spec.scheduled_at,
    )
    session.add(campaign)
    await session.flush()
    if spec.segment is not None and build:
        totals = await build_recipients(
            _rows_into(session), service, config, campaign, segment_candidates(session, spec.segment)
        )
        campaign.audience = {**campaign.audience, **totals}
    await audit(session, actor, "campaign.created", "campaign", campaign.id, {"name": campaign.name})
    return campaign


async def _check_segments_in_use(session: AsyncSession, wanted: list[str]) -> None:
    """RFM segments are whatever the analytics that set them call them, not a
    fixed list: one nobody is in is most likely misspelt, and the draft would
    be for nobody."""
    found = await session.scalars(select(Contact.segment).where(Contact.segment.in_(wanted)).distinct())
    have = set(found.all())
    unknown = [name for name in wanted if name not in have]
    if unknown:
        known = await segments_in_use(session)
        raise FilterRefused(
            "segments",
            f"no contact is in the RFM segment(s) {', '.join(map(repr, unknown))} "
            f"(segments contacts are in: {', '.join(known) or 'none yet'})",
        )


def _probe_render(template: Any, values: dict[str, Any]) -> None:
    """A template that tries to reach past its variables is refused outright;
    one that only lacks a variable for this made-up contact is not."""
    try:
        message_for(template, values, language="en", template_language=None, opt_out_texts=None)
    except TemplateInvalid as exc:
        if str(exc).startswith("not allowed"):
            raise TemplateForbidden(f"template: {exc}") from exc


RowWriter = Callable[[list[dict[str, Any]]], Awaitable[None]]


def _rows_into(session: AsyncSession) -> RowWriter:
    async def write(rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), INSERT_CHUNK):
            await session.execute(insert(table(CampaignRecipient)), rows[start : start + INSERT_CHUNK])

    return write


async def build_recipients(
    write: RowWriter,
    service: TwilioService | None,
    config: CampaignsConfig,
    campaign: Campaign,
    pages: AsyncIterator[list[Candidate]],
) -> dict[str, Any]:
    """One row per distinct phone number: ``pending`` with the rendered body,
    its encoding, segments and price, or ``skipped`` with the reason (no
    consent, opted out, a number not in use, the template failed for them).
    Each page's rows go to ``write``."""
    assert service is not None
    ledger = service.ledger
    page_of = _PageRenderer(
        config=config,
        template=compile_template(campaign.template),
        opt_out=config.opt_out_texts if config.opt_out_line else None,
        campaign_id=campaign.id,
        language=campaign.language,
        price_per_segment=campaign.price_per_segment,
    )
    seen: set[str] = set()
    seen_contacts: set[int] = set()
    duplicates = 0
    async for page in pages:
        fresh = []
        for c in page:
            if c.phone in seen or c.contact_id in seen_contacts:
                duplicates += 1
                continue
            seen.add(c.phone)
            seen_contacts.add(c.contact_id)
            fresh.append(c)
        if not fresh:
            continue
        opted = await ledger.opted_out_numbers(campaign.sender, [c.phone for c in fresh])
        # Rendering a page is a few hundred milliseconds of pure CPU; in a
        # thread, the event loop keeps serving everyone else meanwhile.
        rows = await asyncio.to_thread(page_of.render, fresh, opted)
        await write(rows)
    return {
        "recipients": page_of.recipients,
        "duplicates": duplicates,
        "skipped": dict(page_of.skipped),
        "segments": page_of.segments,
        "estimated_cost": round(page_of.cost, 4),
    }


@dataclass
class _PageRenderer:
    """The recipients' rows of one page of candidates, and the running totals."""

    config: CampaignsConfig
    template: Any
    opt_out: dict[str, str] | None
    campaign_id: int
    language: str | None
    price_per_segment: float
    recipients: int = 0
    segments: int = 0
    cost: float = 0.0
    skipped: Counter[str] = field(default_factory=Counter)

    def render(self, fresh: list[Candidate], opted: set[str]) -> list[dict[str, Any]]:
        config = self.config
        rows: list[dict[str, Any]] = []
        for c in fresh:
            row: dict[str, Any] = {
                "campaign_id": self.campaign_id,
                "contact_id": c.contact_id,
                "phone": c.phone,
                "status": PENDING,
                "reason": None,
                "body": "",
                "segments": 0,
                "encoding": "GSM-7",
                "price": 0.0,
                "language": None,
                "timezones": [],
                "attempts": 0,
            }
            reason = _exclusion(config, c, opted)
            if reason is None:
                try:
                    msg = message_for(
                        self.template,
                        variables(name=c.name, phone=c.phone, attributes=c.attributes, tags=c.tags, stage=c.stage),
                        # Whatever a contact's attribute holds ("english-us", a
                        # number): a code, or unknown, never the raw value.
                        language=language_code(c.attributes.get("language")),
                        template_language=self.language,
                        opt_out_texts=self.opt_out,
                    )
                except TemplateInvalid as exc:
                    if str(exc).startswith("not allowed"):
                        raise TemplateForbidden(f"template: {exc}") from exc
                    reason = f"template: {exc}"
                else:
                    price = msg.segments * config.price_by_region.get(
                        phone_region(c.phone) or "", self.price_per_segment
                    )
                    row.update(
                        body=msg.body,
                        segments=msg.segments,
                        encoding=msg.encoding,
                        price=price,
                        language=msg.language,
                        timezones=zones_for(c.phone, c.attributes.get("timezone"), config.default_timezone),
                    )
                    self.segments += msg.segments
                    self.cost += price
                    self.recipients += 1
            if reason is not None:
                row.update(status=SKIPPED, reason=reason)
                self.skipped[reason.split(":")[0]] += 1
            rows.append(row)
        return rows


def _exclusion(config: CampaignsConfig, c: Candidate, opted: set[str]) -> str | None:
    if c.phone in opted:
        return "opted_out"
    consent = sms_consent(c.attributes)
    # A withdrawal always counts; require_consent only decides about contacts never asked.
    if consent is False or (config.require_consent and consent is not True):
        return "no_consent"
    try:
        valid = phonenumbers.is_valid_number(phonenumbers.parse(c.phone, None))
    except phonenumbers.NumberParseException:
        valid = False
    if not valid:
        return "invalid_number"
    return None


@dataclass
class _Imported:
    """What importing a CSV's rows did, added up over the chunks."""

    created: int = 0
    updated: int = 0
    withdrawals_kept: set[int] = field(default_factory=set)
    #: (contact id, the number it was listed with), in file order.
    listed: list[tuple[int, str]] = field(default_factory=list)


async def _import_contacts(
    session: AsyncSession, rows: list[CsvRow], source: str, now: datetime, out: _Imported
) -> None:
    """The contacts of ``rows`` created or updated (name if they had none,
    attributes, tags, consent), read and written in ``session``'s transaction,
    so an answer given meanwhile (a withdrawal through the API) is never
    overwritten by what was read before it."""
    owners: dict[str, int] = {}
    phones = [r.phone for r in rows]
    for start in range(0, len(phones), 1000):
        found = await session.execute(
            select(Identity.address, Identity.contact_id).where(
                Identity.channel == IdentityKind.PHONE.value, Identity.address.in_(phones[start : start + 1000])
            )
        )
        owners.update({a: cid for a, cid in found.all()})

    def attributes_of(r: CsvRow) -> dict[str, Any]:
        # Consent only ever from its column (parse_csv refuses columns of these
        # names; a CsvAudience built otherwise must not slip one in either).
        attrs: dict[str, Any] = {k: v for k, v in r.attributes.items() if k not in CONSENT_KEYS}
        if r.language:
            attrs["language"] = r.language
        if r.timezone:
            attrs["timezone"] = r.timezone
        if r.consent is not None:
            attrs.update(consent_attributes(r.consent, f"csv {source}"[:200], now))
        return attrs

    # In bulk, a chunk per statement (and csv_audience hands this a chunk of rows per transaction).
    known = [r for r in rows if r.phone in owners]
    fresh = [r for r in rows if r.phone not in owners]
    state: dict[int, dict[str, Any]] = {}  # known contacts: what they will be

    async def load(contact_ids: list[int]) -> None:
        for start in range(0, len(contact_ids), INSERT_CHUNK):
            found_rows = await session.execute(
                select(Contact.id, Contact.name, Contact.attributes, Contact.tags, Contact.merged_into_id).where(
                    Contact.id.in_(contact_ids[start : start + INSERT_CHUNK])
                )
            )
            for c in found_rows.all():
                state[c.id] = {
                    "cid": c.id,
                    "name": c.name,
                    "attributes": dict(c.attributes or {}),
                    "tags": list(c.tags or []),
                    "merged_into": c.merged_into_id,
                }

    await load(sorted({owners[r.phone] for r in known}))
    changed: dict[int, dict[str, Any]] = {}
    contact_of: dict[str, int] = {}
    withdrawals_kept: set[int] = set()
    for r in known:
        cid = owners[r.phone]
        while True:  # a contact merged into another: the one that lives on
            if cid not in state:
                await load([cid])
                if cid not in state:
                    raise NotFound(f"contact {cid} does not exist")
            if state[cid]["merged_into"] is None:
                break
            cid = state[cid]["merged_into"]
        c = state[cid]
        attrs = attributes_of(r)
        if r.consent is True and sms_consent(c["attributes"]) is False:
            # A list says "yes" as of its import, whatever its age: only the
            # customer (or an agent, through the API) takes a withdrawal back,
            # or any answer other than "yes" (sms_consent() says why).
            for key in CONSENT_KEYS:
                attrs.pop(key, None)
            withdrawals_kept.add(cid)
        if attrs:
            c["attributes"] = {**c["attributes"], **attrs}
        if r.tags:
            c["tags"] = sorted(set(c["tags"]) | set(r.tags))
        c["name"] = c["name"] or r.name
        changed[cid] = c
        contact_of[r.phone] = cid
    updates = list(changed.values())
    contacts = table(Contact)
    for start in range(0, len(updates), INSERT_CHUNK):
        await session.execute(
            update(contacts)
            .where(contacts.c.id == bindparam("cid"))
            .values(name=bindparam("name"), attributes=bindparam("attributes"), tags=bindparam("tags"))
            .execution_options(synchronize_session=False),
            [{k: u[k] for k in ("cid", "name", "attributes", "tags")} for u in updates[start : start + INSERT_CHUNK]],
        )
    for start in range(0, len(fresh), INSERT_CHUNK):
        chunk = fresh[start : start + INSERT_CHUNK]
        values = [{"name": r.name, "attributes": attributes_of(r), "tags": sorted(set(r.tags))} for r in chunk]
        new_ids, in_order = await insert_ids(session, table(Contact), values)
        if not in_order:
            raise RuntimeError("the database numbered new contacts out of order; nothing was imported")
        pairs = list(zip(chunk, new_ids, strict=True))
        await session.execute(
            insert(table(Identity)),
            [
                {"contact_id": cid, "channel": IdentityKind.PHONE.value, "address": r.phone, "display_name": r.name}
                for r, cid in pairs
            ],
        )
        contact_of.update({r.phone: cid for r, cid in pairs})
    out.created += len(fresh)
    out.updated += len(known)
    out.withdrawals_kept |= withdrawals_kept
    out.listed.extend((contact_of[r.phone], r.phone) for r in rows)


def _csv_summary(parsed: CsvAudience, source: str, imported: _Imported, totals: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "csv",
        "source": source,
        "rows": len(parsed.rows) + len(parsed.invalid) + len(parsed.duplicates),
        "contacts_created": imported.created,
        "contacts_updated": imported.updated,
        "invalid_rows": [{"line": line, "error": error} for line, error in parsed.invalid],
        "duplicate_lines": parsed.duplicates,
        "consent_withdrawn_lines": parsed.withdrawals,
        "consent_withdrawals_kept": len(imported.withdrawals_kept),
        **totals,
        "duplicates": totals["duplicates"] + len(parsed.duplicates),
    }


def check_csv_importable(parsed: CsvAudience) -> None:
    """Refused before anything changes: a file none of whose rows can be
    imported (a national-format export read without phone.default_region, the
    wrong file) would otherwise leave the draft with nobody."""
    if parsed.rows:
        return
    invalid = [{"line": line, "error": error} for line, error in parsed.invalid]
    if not invalid:
        raise ValidationFailed("CSV: the file has no rows below its header; nothing to import")
    first = "; ".join(f"line {r['line']}: {r['error']}" for r in invalid[:3])
    more = f"; and {len(invalid) - 3} more" if len(invalid) > 3 else ""
    raise ValidationFailed(
        f"CSV: no row can be imported ({len(invalid)} invalid, listed in details.invalid_rows): {first}{more}; "
        "the draft's audience is unchanged",
        details={"invalid_rows": invalid[:100], "invalid_count": len(invalid)},
    )


def check_csv_replaces(campaign: Campaign, replace: bool) -> None:
    """A segment draft becomes a CSV one only when asked: its filter would be
    dropped and its audience replaced by the file's numbers."""
    if replace or (campaign.audience or {}).get("kind") != "segment":
        return
    raise Conflict(
        f"campaign {campaign.id}'s audience is a segment (its filter); uploading a CSV would replace it with "
        f"the file's numbers and drop the filter. To do that, upload again with ?replace=true "
        f"(POST /api/v1/campaigns/{campaign.id}/audience?replace=true); else create a campaign with "
        '{"audience": {"kind": "csv"}} for the file'
    )


def _stored(summary: dict[str, Any]) -> dict[str, Any]:
    # Keep the stored summary small however bad the file was.
    return {**summary, "invalid_rows": summary["invalid_rows"][:100]}


async def do_csv_audience(
    session: AsyncSession,
    service: TwilioService | None,
    config: CampaignsConfig,
    campaign: Campaign,
    parsed: CsvAudience,
    *,
    source: str,
    actor: str = "system",
    replace: bool = False,
) -> dict[str, Any]:
    """A draft campaign's audience from a parsed CSV, all in ``session``'s
    transaction: contacts created or updated, then rendered and priced.
    Replaces an earlier audience of the draft (a segment's only with
    ``replace``); a file with no importable row changes nothing.
    :func:`csv_audience` does the same without holding the database's writer
    throughout."""
    check_draft(campaign)
    check_csv_importable(parsed)
    check_csv_replaces(campaign, replace)
    imported = _Imported()
    await _import_contacts(session, parsed.rows, source, utcnow(), imported)
    await session.flush()
    await session.execute(delete(CampaignRecipient).where(CampaignRecipient.campaign_id == campaign.id))
    totals = await build_recipients(
        _rows_into(session), service, config, campaign, listed_candidates(session, imported.listed)
    )
    summary = _csv_summary(parsed, source, imported, totals)
    campaign.audience = _stored(summary)
    await audit(
        session, actor, "campaign.audience", "campaign", campaign.id, {"source": source, "rows": summary["rows"]}
    )
    return summary


# --- building an audience in short transactions ---------------------------------------
#
# SQLite has one writer: a transaction that rendered a 50,000-contact audience
# held it for many seconds, and every webhook, status callback and agent's
# reply of the hub waited (Twilio gives up on a webhook after 15 s). So the
# draft is created in one short transaction, marked as building its audience
# (``audience["build"]``), pages are read and rendered outside any write
# transaction, and each page's rows are inserted in a short one of its own.
# ``start`` refuses a draft so marked; a build that died with its process
# leaves the mark (with how far it got), and the draft can be rebuilt (a
# segment: rebuild_audience; a CSV: upload it again) or cancelled.

BUILD = "build"


def _new_build() -> dict[str, Any]:
    return {"id": secrets.token_hex(8), "started_at": iso(utcnow()), "written": 0}


def build_state(campaign: Campaign) -> dict[str, Any] | None:
    """The mark of an audience still being built (or whose build stopped), or None when it is complete."""
    state = (campaign.audience or {}).get(BUILD)
    return state if isinstance(state, dict) else None


def check_audience_complete(campaign: Campaign) -> None:
    state = build_state(campaign)
    if state is None:
        return
    if (campaign.audience or {}).get("kind") == "csv":
        again = "upload the CSV again"
    else:
        again = f"rebuild it (crm-hub campaign rebuild {campaign.id}, or POST /api/v1/campaigns/{campaign.id}/rebuild)"
    prefix = f"campaign {campaign.id}'s audience is incomplete"
    if state.get("failed"):
        raise Conflict(f"{prefix}: its build failed ({state['failed']}); {again} or cancel the campaign")
    raise Conflict(
        f"{prefix}: its build started at {state.get('started_at')} has written {state.get('written', 0)} "
        f"recipients so far; wait for it to finish or, if it stopped (its process ended), {again} "
        "or cancel the campaign"
    )


@dataclass
class _Build:
    """One build of a draft's audience. Each of its transactions first checks
    that the draft still wants it (still a draft, still this build), so a
    rebuild, a new upload or a cancel stops an earlier build instead of
    mixing rows with it."""

    db: Database
    campaign_id: int
    token: str
    actor: str
    written: int = 0

    async def check(self, session: AsyncSession) -> Campaign:
        campaign = await check_campaign(session, self.campaign_id, lock=True)
        state = build_state(campaign)
        if campaign.status != DRAFT or state is None or state.get("id") != self.token:
            raise Conflict(
                f"campaign {self.campaign_id} changed while its audience was being built "
                f"(it is {campaign.status}, or another build replaced this one); this build stopped"
            )
        return campaign

    async def write(self, rows: list[dict[str, Any]]) -> None:
        async with self.db.write() as session:
            campaign = await self.check(session)
            for start in range(0, len(rows), INSERT_CHUNK):
                await session.execute(insert(table(CampaignRecipient)), rows[start : start + INSERT_CHUNK])
            self.written += len(rows)
            state = {**(build_state(campaign) or {}), "written": self.written, "at": iso(utcnow())}
            campaign.audience = {**campaign.audience, BUILD: state}

    async def clear(self) -> None:
        """An earlier audience's rows, a chunk per transaction."""
        while True:
            async with self.db.write() as session:
                await self.check(session)
                ids = list(
                    (
                        await session.scalars(
                            select(CampaignRecipient.id)
                            .where(CampaignRecipient.campaign_id == self.campaign_id)
                            .limit(INSERT_CHUNK)
                        )
                    ).all()
                )
                if not ids:
                    return
                await session.execute(delete(CampaignRecipient).where(CampaignRecipient.id.in_(ids)))

    async def finish(self, audience: dict[str, Any], audit_data: dict[str, Any] | None = None) -> None:
        async with self.db.write() as session:
            campaign = await self.check(session)
            campaign.audience = audience
            if audit_data is not None:
                await audit(session, self.actor, "campaign.audience", "campaign", self.campaign_id, audit_data)

    async def fail(self, exc: BaseException) -> None:
        """The reason kept with the mark, for start to show. Best effort: the
        caller raises ``exc`` either way, and the mark alone says enough."""
        reason = (getattr(exc, "message", None) or str(exc) or type(exc).__name__)[:300]
        with contextlib.suppress(Exception):
            async with self.db.write() as session:
                campaign = await self.check(session)
                campaign.audience = {**campaign.audience, BUILD: {**(build_state(campaign) or {}), "failed": reason}}

    async def discard(self, exc: BaseException) -> None:
        """The draft gone again, its creation having failed, unless someone
        took it over meanwhile. Best effort: if this fails too, the draft stays
        marked incomplete, as after a crash."""
        with contextlib.suppress(Exception):
            await self.clear()
            async with self.db.write() as session:
                campaign = await self.check(session)
                await session.delete(campaign)
                reason = (getattr(exc, "message", None) or str(exc) or type(exc).__name__)[:300]
                await audit(session, self.actor, "campaign.discarded", "campaign", self.campaign_id, {"reason": reason})


async def create_campaign(
    db: Database,
    service: TwilioService | None,
    config: CampaignsConfig,
    spec: CampaignSpec,
    *,
    quiet_hours_given: bool = False,
    actor: str = "system",
) -> int:
    """:func:`do_create_campaign` without holding the writer while the
    audience is rendered (see above). A failure of the build (a template that
    fails for some contact in a way it may not) removes the draft again, so
    bad input still creates nothing. Answers the campaign's id."""
    async with db.write() as session:
        campaign = await do_create_campaign(
            session, service, config, spec, quiet_hours_given=quiet_hours_given, actor=actor, build=False
        )
    state = build_state(campaign)
    if state is not None:
        build = _Build(db, campaign.id, str(state["id"]), actor)
        try:
            await _build_segment(build, service, config, campaign)
        except Exception as exc:
            await build.discard(exc)
            raise
    return campaign.id


async def _build_segment(
    build: _Build, service: TwilioService | None, config: CampaignsConfig, campaign: Campaign
) -> None:
    stored = dict((campaign.audience or {}).get("filter") or {})
    flt = SegmentFilter.model_validate(stored)
    async with build.db.read() as session:
        totals = await build_recipients(build.write, service, config, campaign, segment_candidates(session, flt))
    await build.finish({"kind": "segment", "filter": stored, **totals})


async def rebuild_audience(
    db: Database, service: TwilioService | None, config: CampaignsConfig, campaign_id: int, *, actor: str = "system"
) -> None:
    """A segment draft's audience chosen again from its filter (after a build
    that stopped, or to take in contacts added since). A build still running
    stops at its next page."""
    async with db.write() as session:
        campaign = await check_campaign(session, campaign_id, lock=True)
        check_draft(campaign)
        audience = campaign.audience or {}
        if audience.get("kind") != "segment":
            raise Conflict(f"campaign {campaign_id}'s audience comes from a CSV: upload the file again to rebuild it")
        state = _new_build()
        campaign.audience = {"kind": "segment", "filter": audience.get("filter") or {}, BUILD: state}
        await audit(session, actor, "campaign.rebuilt", "campaign", campaign_id)
    build = _Build(db, campaign_id, str(state["id"]), actor)
    try:
        await build.clear()
        await _build_segment(build, service, config, campaign)
    except Exception as exc:
        await build.fail(exc)
        raise


async def csv_audience(
    db: Database,
    service: TwilioService | None,
    config: CampaignsConfig,
    campaign_id: int,
    parsed: CsvAudience,
    *,
    source: str,
    actor: str = "system",
    discard_on_failure: bool = False,
    replace: bool = False,
) -> dict[str, Any]:
    """:func:`do_csv_audience` in short transactions: the draft marked, its
    earlier rows removed, the contacts imported a chunk per transaction, then
    the recipients a page per transaction. A failure is kept in the mark (or,
    with ``discard_on_failure``, for a draft made for this file, removes it).
    Refused before anything changes, as :func:`do_csv_audience` is."""
    async with db.write() as session:
        campaign = await check_campaign(session, campaign_id, lock=True)
        check_draft(campaign)
        check_csv_importable(parsed)
        check_csv_replaces(campaign, replace)
        state = _new_build()
        campaign.audience = {"kind": "csv", "source": source, BUILD: state}
    build = _Build(db, campaign_id, str(state["id"]), actor)
    try:
        await build.clear()
        imported = _Imported()
        now = utcnow()
        for start in range(0, len(parsed.rows), INSERT_CHUNK):
            async with db.write() as session:
                await build.check(session)
                await _import_contacts(session, parsed.rows[start : start + INSERT_CHUNK], source, now, imported)
        async with db.read() as session:
            totals = await build_recipients(
                build.write, service, config, campaign, listed_candidates(session, imported.listed)
            )
        summary = _csv_summary(parsed, source, imported, totals)
        await build.finish(_stored(summary), {"source": source, "rows": summary["rows"]})
    except Exception as exc:
        await (build.discard(exc) if discard_on_failure else build.fail(exc))
        raise
    return summary


# --- lifecycle ------------------------------------------------------------------------


async def check_campaign(session: AsyncSession, campaign_id: int, *, lock: bool = False) -> Campaign:
    stmt = select(Campaign).where(Campaign.id == campaign_id)
    if lock:
        stmt = stmt.with_for_update()
    campaign = await session.scalar(stmt)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return campaign


def check_draft(campaign: Campaign) -> None:
    if campaign.status != DRAFT:
        raise Conflict(f"campaign {campaign.id} is {campaign.status}; its audience can only change while a draft")


def unfinished() -> ColumnElement[bool]:
    """Recipients a campaign still has work for: pending, in flight, and
    uncertain ones still to be looked up in Twilio (those go back to pending
    when Twilio never took them; see :mod:`hub.campaigns.runner`, step 6). The
    runner's idle check counts the same rows."""
    c = CampaignRecipient
    return or_(c.status.in_((PENDING, SENDING)), and_(c.status == UNCERTAIN, c.not_before.is_not(None)))


async def do_start(
    session: AsyncSession, campaign: Campaign, *, scheduled_at: datetime | None = None, actor: str = "system"
) -> Campaign:
    """Draft or paused -> running, or scheduled until ``scheduled_at`` (given,
    or the one it was scheduled for, when it was paused before it began)."""
    if campaign.status not in (DRAFT, PAUSED, SCHEDULED):
        raise Conflict(f"campaign {campaign.id} is {campaign.status}; only a draft, scheduled or paused one can start")
    check_audience_complete(campaign)
    left = await session.scalar(
        select(func.count())
        .select_from(CampaignRecipient)
        .where(CampaignRecipient.campaign_id == campaign.id, unfinished())
    )
    if not left:
        raise ValidationFailed(f"campaign {campaign.id} has nobody left to send to")
    now = utcnow()
    when = scheduled_at if scheduled_at is not None else campaign.scheduled_at
    # One that has begun sending resumes now unless told when; one paused
    # while it waited for its start waits for that start again.
    resumes_now = campaign.started_at is not None and scheduled_at is None
    if resumes_now or when is None or when <= now:
        campaign.status = RUNNING
        campaign.started_at = campaign.started_at or now
    else:
        campaign.status = SCHEDULED
    campaign.scheduled_at = when
    await audit(session, actor, "campaign.started", "campaign", campaign.id, {"status": campaign.status})
    return campaign


async def do_pause(session: AsyncSession, campaign: Campaign, *, actor: str = "system") -> Campaign:
    """Nothing more is handed to Twilio once this commits; messages already in
    flight finish and are recorded."""
    if campaign.status not in (RUNNING, SCHEDULED):
        raise Conflict(f"campaign {campaign.id} is {campaign.status}; only a running or scheduled one can pause")
    campaign.status = PAUSED
    await audit(session, actor, "campaign.paused", "campaign", campaign.id)
    return campaign


async def do_cancel(session: AsyncSession, campaign: Campaign, *, actor: str = "system") -> Campaign:
    """Everyone not yet sent to is skipped ("cancelled"); terminal."""
    if campaign.status in (COMPLETED, CANCELLED):
        raise Conflict(f"campaign {campaign.id} is already {campaign.status}")
    campaign.status = CANCELLED
    campaign.cancelled_at = utcnow()
    await session.execute(
        update(CampaignRecipient)
        .where(CampaignRecipient.campaign_id == campaign.id, CampaignRecipient.status == PENDING)
        .values(status=SKIPPED, reason="cancelled", claimed_by=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    await audit(session, actor, "campaign.cancelled", "campaign", campaign.id)
    return campaign


async def do_set_sms_consent(
    session: AsyncSession, contact_id: int, *, consent: bool, source: str, actor: str
) -> Contact:
    contact = await check_contact(session, contact_id)
    contact.attributes = {**(contact.attributes or {}), **consent_attributes(consent, source, utcnow())}
    await audit(session, actor, "contact.sms_consent", "contact", contact.id, {"consent": consent, "source": source})
    return contact


# --- reading --------------------------------------------------------------------------


async def counts(session: AsyncSession, campaign_id: int) -> dict[str, dict[str, float]]:
    rows = await session.execute(
        select(
            CampaignRecipient.status,
            func.count(),
            func.coalesce(func.sum(CampaignRecipient.segments), 0),
            func.coalesce(func.sum(CampaignRecipient.price), 0.0),
        )
        .where(CampaignRecipient.campaign_id == campaign_id)
        .group_by(CampaignRecipient.status)
    )
    return {status: {"count": n, "segments": int(seg), "price": float(price)} for status, n, seg, price in rows.all()}


async def counts_of(session: AsyncSession, campaign_ids: list[int]) -> dict[int, dict[str, dict[str, float]]]:
    """:func:`counts` of several campaigns in one grouped query (a page of the list)."""
    if not campaign_ids:
        return {}
    c = CampaignRecipient
    rows = await session.execute(
        select(
            c.campaign_id,
            c.status,
            func.count(),
            func.coalesce(func.sum(c.segments), 0),
            func.coalesce(func.sum(c.price), 0.0),
        )
        .where(c.campaign_id.in_(campaign_ids))
        .group_by(c.campaign_id, c.status)
    )
    out: dict[int, dict[str, dict[str, float]]] = {}
    for cid, status, n, seg, price in rows.all():
        out.setdefault(cid, {})[status] = {"count": n, "segments": int(seg), "price": float(price)}
    return out


async def status_reasons(session: AsyncSession, campaigns: list[Campaign]) -> dict[int, str]:
    """Why each paused one of ``campaigns`` is paused: the runner's reason
    (Twilio unreachable, the sender gone), else who paused it; one query."""
    paused = [c.id for c in campaigns if c.status == PAUSED]
    if not paused:
        return {}
    latest = (
        select(func.max(AuditLog.id))
        .where(AuditLog.entity == "campaign", AuditLog.entity_id.in_(paused), AuditLog.action == "campaign.paused")
        .group_by(AuditLog.entity_id)
    )
    rows = await session.execute(
        select(AuditLog.entity_id, AuditLog.actor, AuditLog.data).where(AuditLog.id.in_(latest))
    )
    out: dict[int, str] = {}
    for entity_id, actor, data in rows.all():
        reason = (data or {}).get("reason")
        out[int(entity_id)] = str(reason) if reason else f"paused by {actor}"
    return out


async def status_reason(session: AsyncSession, campaign: Campaign) -> str | None:
    """Why a campaign is paused (see :func:`status_reasons`); None when it is not paused."""
    return (await status_reasons(session, [campaign])).get(campaign.id)


async def campaign_view(session: AsyncSession, campaign: Campaign) -> dict[str, Any]:
    return _view(campaign, await counts(session, campaign.id), await status_reason(session, campaign))


async def campaign_page(
    session: AsyncSession, *, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of campaigns, newest first, and the cursor of the next (None on
    the last page); three queries whatever the page's size. A cursor this did
    not issue raises :class:`storage.queries.BadCursor`."""
    stmt = select(Campaign)
    if cursor:
        (last,) = decode_cursor(cursor, 1)
        stmt = stmt.where(Campaign.id < cursor_id(last))
    rows = list((await session.scalars(stmt.order_by(Campaign.id.desc()).limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    by_campaign = await counts_of(session, [c.id for c in rows])
    reasons = await status_reasons(session, rows)
    items = [_view(c, by_campaign.get(c.id, {}), reasons.get(c.id)) for c in rows]
    return items, encode_cursor(rows[-1].id) if more else None


def _view(campaign: Campaign, by_status: dict[str, dict[str, float]], reason: str | None) -> dict[str, Any]:
    count = {s: int(by_status.get(s, {}).get("count", 0)) for s in RECIPIENT_STATUSES}
    to_send = [s for s in RECIPIENT_STATUSES if s != SKIPPED]
    total = sum(count.values())
    done = sum(count[s] for s in DONE_STATUSES)
    return {
        "id": campaign.id,
        "name": campaign.name,
        "status": campaign.status,
        "status_reason": reason,
        "sender": campaign.sender,
        "template": campaign.template,
        "language": campaign.language,
        "audience": campaign.audience,
        "quiet_hours": campaign.quiet_hours,
        "rate_per_second": campaign.rate_per_second,
        "created_by": campaign.created_by,
        "created_at": iso(campaign.created_at),
        "scheduled_at": iso(campaign.scheduled_at),
        "started_at": iso(campaign.started_at),
        "completed_at": iso(campaign.completed_at),
        "cancelled_at": iso(campaign.cancelled_at),
        "counts": count,
        "total": total,
        # A draft has done nothing yet: the rows skipped when its audience
        # was chosen are not progress.
        "progress": round(done / total, 4) if total and campaign.status != DRAFT else 0.0,
        "estimate": {
            "messages": sum(count[s] for s in to_send),
            "segments": int(sum(by_status.get(s, {}).get("segments", 0) for s in to_send)),
            "cost": round(sum(by_status.get(s, {}).get("price", 0.0) for s in to_send), 4),
            "currency": campaign.currency,
        },
    }


async def preview(session: AsyncSession, campaign: Campaign, limit: int = 5) -> list[dict[str, Any]]:
    """The messages of the first few real recipients, as they will be sent."""
    rows = (
        await session.execute(
            select(CampaignRecipient, Contact.name)
            .join(Contact, Contact.id == CampaignRecipient.contact_id)
            .where(CampaignRecipient.campaign_id == campaign.id, CampaignRecipient.status != SKIPPED)
            .order_by(CampaignRecipient.id)
            .limit(limit)
        )
    ).all()
    return [
        {
            "recipient_id": r.id,
            "contact_id": r.contact_id,
            "name": name,
            "phone": r.phone,
            "body": r.body,
            "encoding": r.encoding,
            "segments": r.segments,
            "characters": len(r.body),
            "language": r.language,
            "timezones": r.timezones,
            "price": round(r.price, 4),
        }
        for r, name in rows
    ]


async def report(session: AsyncSession, campaign: Campaign, *, receipts: bool = True) -> dict[str, Any]:
    """Sent, delivered, failed by error code, opted out, replied, segments used,
    cost. ``receipts``: whether Twilio can send status callbacks (the hub has a
    ``server.public_url``); without them nothing is ever reported delivered,
    and a delivery rate of 0 would say something false."""
    c = CampaignRecipient
    accepted = c.external_id.is_not(None)
    base = select(func.count()).select_from(c).where(c.campaign_id == campaign.id)
    by_status = await counts(session, campaign.id)
    n = {s: int(by_status.get(s, {}).get("count", 0)) for s in RECIPIENT_STATUSES}
    sent_total = int(await session.scalar(base.where(accepted)) or 0)
    used = (
        await session.execute(
            select(func.coalesce(func.sum(c.segments), 0), func.coalesce(func.sum(c.price), 0.0)).where(
                c.campaign_id == campaign.id, accepted
            )
        )
    ).one()
    failed_codes = Counter[str]()
    for code, count in (
        await session.execute(
            select(c.error_code, func.count())
            .where(c.campaign_id == campaign.id, c.status.in_((FAILED, UNDELIVERED)))
            .group_by(c.error_code)
        )
    ).all():
        failed_codes[code or "none"] += count
    skipped = Counter[str]()
    for reason, count in (
        await session.execute(
            select(c.reason, func.count()).where(c.campaign_id == campaign.id, c.status == SKIPPED).group_by(c.reason)
        )
    ).all():
        skipped[(reason or "unknown").split(":")[0]] += count
    opted_out = int(await session.scalar(base.where(c.opted_out_at.is_not(None))) or 0)
    replied = int(await session.scalar(base.where(c.replied_at.is_not(None))) or 0)
    return {
        "campaign_id": campaign.id,
        "status": campaign.status,
        "status_reason": await status_reason(session, campaign),
        "recipients": sum(n.values()),
        "sent": sent_total,
        "delivered": n[DELIVERED],
        "undelivered": n[UNDELIVERED],
        "failed": n[FAILED],
        "failed_by_error_code": dict(failed_codes),
        "pending": n[PENDING] + n[SENDING],
        "uncertain": n[UNCERTAIN],
        "skipped": dict(skipped),
        "opted_out": opted_out,
        "replied": replied,
        "segments_used": int(used[0]),
        "cost": round(float(used[1]), 4),
        "currency": campaign.currency,
        "delivery_rate": round(n[DELIVERED] / sent_total, 4) if sent_total and receipts else None,
        "reply_rate": round(replied / sent_total, 4) if sent_total else None,
    }


EXPORT_COLUMNS = (
    "recipient_id",
    "contact_id",
    "phone",
    "status",
    "reason",
    "error_code",
    "segments",
    "encoding",
    "price",
    "twilio_sid",
    "sent_at",
    "delivered_at",
    "replied_at",
    "opted_out_at",
)


async def recipients_csv(session: AsyncSession, campaign_id: int) -> AsyncIterator[str]:
    """The recipients with their status, as CSV text in pages (for streaming)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(EXPORT_COLUMNS)
    after = 0
    c = CampaignRecipient
    while True:
        rows = (
            await session.execute(
                select(
                    c.id,
                    c.contact_id,
                    c.phone,
                    c.status,
                    c.reason,
                    c.error_code,
                    c.segments,
                    c.encoding,
                    c.price,
                    c.external_id,
                    c.sent_at,
                    c.delivered_at,
                    c.replied_at,
                    c.opted_out_at,
                )
                .where(c.campaign_id == campaign_id, c.id > after)
                .order_by(c.id)
                .limit(2000)
            )
        ).all()
        for r in rows:
            writer.writerow(
                [
                    r.id,
                    r.contact_id,
                    r.phone,
                    r.status,
                    r.reason or "",
                    r.error_code or "",
                    # Charged only for what Twilio took: the column then sums
                    # to the report's cost (refused and skipped rows cost nothing).
                    r.segments if r.external_id else 0,
                    r.encoding,
                    round(r.price, 4) if r.external_id else 0.0,
                    r.external_id or "",
                    iso(r.sent_at) or "",
                    iso(r.delivered_at) or "",
                    iso(r.replied_at) or "",
                    iso(r.opted_out_at) or "",
                ]
            )
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
        if len(rows) < 2000:
            return
        after = rows[-1].id


async def release_claims(session: AsyncSession, campaign_id: int, owner: str) -> None:
    await session.execute(
        update(CampaignRecipient)
        .where(
            CampaignRecipient.campaign_id == campaign_id,
            CampaignRecipient.status == PENDING,
            CampaignRecipient.claimed_by == owner,
        )
        .values(claimed_by=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
