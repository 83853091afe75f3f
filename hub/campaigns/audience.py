"""Who a campaign goes to: a segment of the contacts (filters on tags,
lifecycle stage, attributes, last contact, channel identities, RFM segment, and
whatever analytics registers in :data:`EXTRA_FILTERS`), or a CSV of phone
numbers that creates or updates contacts. Parsing is pure; the queries read
contacts in id-ordered pages, so a large audience never sits in memory whole.

**SMS consent** is the contact attribute ``sms_consent`` (``true`` / ``false``,
with ``sms_consent_at`` and ``sms_consent_source``), set by a CSV's ``consent``
column or ``PUT /api/v1/contacts/{id}/sms_consent``, never by a CSV column of
those names. A withdrawal is never sent to; with ``campaigns.require_consent``
only contacts with ``true`` are (see :func:`sms_consent`).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import ColumnElement, and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from hub.campaigns.templates import language_code
from hub.config import iana_zone
from hub.core import IdentityKind, UTCDateTime
from hub.text import InvalidPhoneNumber, parse_phone
from storage.models import Contact, Identity, Ticket

#: Filters other parts add (analytics: churn risk, ...): name -> a function of
#: the filter's value returning a condition on :class:`storage.models.Contact`
#: (correlated subqueries welcome). ``SegmentFilter.extra`` names them.
ExtraFilter = Callable[[Any], ColumnElement[bool]]
EXTRA_FILTERS: dict[str, ExtraFilter] = {}

PAGE = 2000


class SegmentFilter(BaseModel):
    """All given conditions must hold (an empty filter is every contact with a
    phone number)."""

    model_config = ConfigDict(extra="forbid")

    tags_any: list[str] = Field(default_factory=list, description="has at least one of these tags")
    tags_all: list[str] = Field(default_factory=list, description="has every one of these tags")
    tags_none: list[str] = Field(default_factory=list, description="has none of these tags")
    lifecycle_stages: list[str] = Field(
        default_factory=list, description="lead, marketing_qualified, sales_qualified or customer"
    )
    attributes: dict[str, Any] = Field(default_factory=dict, description="attribute equals value (null: unset)")
    attributes_present: list[str] = Field(default_factory=list, description="these attributes are set")
    last_contact_after: UTCDateTime | None = Field(default=None, description="last message, in or out, after this")
    last_contact_before: UTCDateTime | None = Field(default=None, description="... before this (or never)")
    channels: list[IdentityKind] = Field(default_factory=list, description="has an identity on each of these")
    segments: list[str] = Field(default_factory=list, description="RFM segment (the contact's segment)")
    extra: dict[str, Any] = Field(default_factory=dict, description="filters added by other modules (analytics)")

    @field_validator("extra")
    @classmethod
    def _known(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(EXTRA_FILTERS))
        if unknown:
            known = ", ".join(sorted(EXTRA_FILTERS)) or "none yet"
            raise ValueError(f"unknown filter(s) {', '.join(unknown)} (known: {known})")
        return value

    @field_validator("tags_any", "tags_all", "tags_none")
    @classmethod
    def _no_empty_tag(cls, value: list[str]) -> list[str]:
        # No contact has a blank tag: `tags_any: [""]` would select nobody, silently.
        if any(not tag.strip() for tag in value):
            raise ValueError("a tag must not be empty (no contact has an empty tag)")
        return value

    @field_validator("last_contact_before")
    @classmethod
    def _before_after_after(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        # An inverted range selects nobody, silently. The fields are checked
        # in order, so a valid last_contact_after is in info.data by now.
        after = info.data.get("last_contact_after")
        if value is not None and after is not None and value <= after:
            raise ValueError(
                f"{value.isoformat()} is not later than last_contact_after (--contacted-after) "
                f"{after.isoformat()}: no contact's last message can be after the one and before the other"
            )
        return value

    @field_validator("lifecycle_stages")
    @classmethod
    def _known_stages(cls, value: list[str]) -> list[str]:
        # A misspelt stage ("customers") would select nobody, silently.
        from hub.contact_actions import LIFECYCLE_STAGES  # it imports this module

        unknown = [stage for stage in value if stage not in LIFECYCLE_STAGES]
        if unknown:
            raise ValueError(
                f"unknown lifecycle stage(s) {', '.join(map(repr, unknown))} (known: {', '.join(LIFECYCLE_STAGES)})"
            )
        return value

    @field_validator("attributes")
    @classmethod
    def _a_language_is_a_language(cls, value: dict[str, Any]) -> dict[str, Any]:
        wanted = value.get("language")
        if wanted is not None and language_code(wanted) is None:
            raise ValueError(f"language {wanted!r} is not a language code or name (en, fa, fa-IR, Persian)")
        return value

    def matches(self, tags: list[Any], attributes: dict[str, Any]) -> bool:
        """The conditions evaluated in Python (JSON columns differ by engine)."""
        have = {str(t).casefold() for t in tags or []}
        if self.tags_any and not have & {t.casefold() for t in self.tags_any}:
            return False
        if self.tags_all and not {t.casefold() for t in self.tags_all} <= have:
            return False
        if self.tags_none and have & {t.casefold() for t in self.tags_none}:
            return False
        for key, value in self.attributes.items():
            if key == "language" and value is not None:
                # Written any way on either side ("fa", "fa-IR", "Persian"): the
                # code decides, as it does for the recipient's opt-out line.
                if language_code(attributes.get(key)) != language_code(value):
                    return False
            elif not attribute_equals(attributes.get(key), value):
                return False
        return all(attributes.get(key) not in (None, "") for key in self.attributes_present)


async def segments_in_use(session: AsyncSession) -> list[str]:
    """The RFM segments contacts have now. Segments are whatever the analytics
    that set them call them, not a fixed list: a segment nobody has is most
    likely misspelt, and would select nobody."""
    rows = await session.scalars(select(Contact.segment).where(Contact.segment.is_not(None)).distinct())
    return sorted(name for name in rows.all() if name)


def attribute_equals(stored: Any, wanted: Any) -> bool:
    """Equal, or the same scalar once one side is text: a CSV stores every
    cell as a string ("30", "true") while a filter typed on the command line
    or in JSON says 30 or true, and nobody would guess to quote it. Two
    strings still compare exactly."""
    if stored == wanted:
        return True
    if isinstance(stored, str) == isinstance(wanted, str):
        return False
    text, other = (stored, wanted) if isinstance(stored, str) else (wanted, stored)
    if isinstance(other, bool):
        return text.strip().casefold() == ("true" if other else "false")
    if isinstance(other, int | float):
        try:
            return float(text) == other
        except ValueError:
            return False
    return False


@dataclass(frozen=True, slots=True)
class Candidate:
    contact_id: int
    phone: str
    name: str | None
    attributes: dict[str, Any]
    tags: list[Any]
    stage: str | None


def _with_phone() -> Any:
    """Contacts' fields and their newest phone number (contacts without one are left out)."""
    latest = (
        select(Identity.contact_id, func.max(Identity.id).label("identity_id"))
        .where(Identity.channel == IdentityKind.PHONE.value)
        .group_by(Identity.contact_id)
        .subquery()
    )
    return (
        select(Contact.id, Contact.name, Contact.attributes, Contact.tags, Contact.lifecycle_stage, Identity.address)
        .join(latest, latest.c.contact_id == Contact.id)
        .join(Identity, Identity.id == latest.c.identity_id)
    )


def _candidate(r: Any) -> Candidate:
    return Candidate(r.id, r.address, r.name, dict(r.attributes or {}), list(r.tags or []), r.lifecycle_stage)


def segment_conditions(flt: SegmentFilter) -> list[ColumnElement[bool]]:
    """What SQL asks of a contact for ``flt``; tags and attributes are asked of
    each row by :meth:`SegmentFilter.matches` (tags in any case, attributes as
    text). The contacts list applies the same filter."""
    conditions: list[ColumnElement[bool]] = []
    if flt.lifecycle_stages:
        conditions.append(Contact.lifecycle_stage.in_(flt.lifecycle_stages))
    if flt.segments:
        conditions.append(Contact.segment.in_(flt.segments))
    for kind in flt.channels:
        # An alias: a campaign's query joins Identity for the phone number, and
        # the subquery would correlate to that join and lose its FROM.
        other = aliased(Identity)
        conditions.append(
            exists().where(and_(other.contact_id == Contact.id, other.channel == IdentityKind(kind).value))
        )
    if flt.last_contact_after is not None or flt.last_contact_before is not None:
        last = select(func.max(Ticket.last_message_at)).where(Ticket.contact_id == Contact.id).scalar_subquery()
        if flt.last_contact_after is not None:
            conditions.append(last > flt.last_contact_after)
        if flt.last_contact_before is not None:
            conditions.append((last < flt.last_contact_before) | last.is_(None))
    for name, value in flt.extra.items():
        conditions.append(EXTRA_FILTERS[name](value))
    return conditions


async def segment_candidates(session: AsyncSession, flt: SegmentFilter) -> AsyncIterator[list[Candidate]]:
    """Pages of live (not merged) contacts with a phone number matching ``flt``."""
    conditions = [Contact.merged_into_id.is_(None), *segment_conditions(flt)]
    after = 0
    while True:
        query = _with_phone().where(Contact.id > after, *conditions).order_by(Contact.id).limit(PAGE)
        rows = (await session.execute(query)).all()
        if not rows:
            return
        after = rows[-1].id
        yield [_candidate(r) for r in rows if flt.matches(list(r.tags or []), dict(r.attributes or {}))]


async def listed_candidates(session: AsyncSession, listed: list[tuple[int, str]]) -> AsyncIterator[list[Candidate]]:
    """Pages of the given (contact id, phone number) pairs (a CSV's rows): each
    contact with the number it was listed with, which is the number its
    consent came for, never another number the contact also has."""
    for start in range(0, len(listed), PAGE):
        page = listed[start : start + PAGE]
        rows = (
            await session.execute(
                select(Contact.id, Contact.name, Contact.attributes, Contact.tags, Contact.lifecycle_stage).where(
                    Contact.id.in_({cid for cid, _ in page})
                )
            )
        ).all()
        by_id = {r.id: r for r in rows}
        yield [
            Candidate(cid, phone, r.name, dict(r.attributes or {}), list(r.tags or []), r.lifecycle_stage)
            for cid, phone in page
            if (r := by_id.get(cid)) is not None
        ]


# --- CSV -----------------------------------------------------------------------------

PHONE_COLUMNS = (
    "phone",
    "phone_number",
    "number",
    "mobile",
    "mobile_phone",
    "mobile_number",
    "cell_phone",
    "msisdn",
    "to",
    "شماره",
    "موبایل",
    "تلفن",
)


def _column_key(name: str) -> str:
    # Exports spell the same column "Phone Number", "phone_number" or "Mobile-Phone".
    return re.sub(r"[\s_-]+", "", name.casefold())


_TRUE = {"1", "true", "yes", "y", "on", "بله", "آری", "opt-in", "opted_in"}
_FALSE = {"0", "false", "no", "n", "off", "خیر", "نه", "opt-out", "opted_out"}
# A contact's SMS consent: the answer, when, and how, always written together
# (consent_attributes), by the consent column or the API only.
SMS_CONSENT = "sms_consent"
CONSENT_KEYS = (SMS_CONSENT, "sms_consent_at", "sms_consent_source")
RESERVED = {"name", "language", "consent", "tags", "timezone"}
# As long as contacts' and identities' name columns take.
MAX_NAME = 512


@dataclass(slots=True)
class CsvRow:
    line: int
    phone: str
    name: str | None = None
    language: str | None = None
    consent: bool | None = None
    tags: list[str] = field(default_factory=list)
    timezone: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class CsvAudience:
    rows: list[CsvRow]
    #: (line number, what is wrong), in file order.
    invalid: list[tuple[int, str]]
    #: lines whose number an earlier line already had.
    duplicates: list[int]
    #: duplicate lines whose "no" withdrew the consent an earlier line gave
    #: (a withdrawal anywhere in the file wins).
    withdrawals: list[int] = field(default_factory=list)


class CsvInvalid(ValueError):
    """The file as a whole cannot be read (no phone column, not CSV)."""


def parse_consent(raw: str) -> bool | None:
    value = raw.strip().casefold()
    if not value:
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"consent {raw!r} is not yes/no (true/false, 1/0)")


def parse_csv(text: str, default_region: str | None) -> CsvAudience:
    """A CSV of phone numbers (header row required; column ``phone``, or
    ``number`` / ``mobile`` ...; optional ``name``, ``language``, ``consent``,
    ``tags`` separated by ``;`` or ``|``, ``timezone``; any other column becomes
    a contact attribute, except ``sms_consent``, ``sms_consent_at`` and
    ``sms_consent_source``, which refuse the file). Numbers must be in use in
    their country's plan (``parse_phone(strict=True)``), read in
    ``default_region`` without a country code; a language is stored as its code
    (``fa-IR``, ``Persian`` -> ``fa``), a timezone must be an IANA zone. Bad
    rows (those too, and any cell with a NUL character) are reported with the
    line they start on; duplicates are counted, and a duplicate's "no"
    withdraws the consent an earlier line gave (listed in ``withdrawals``).
    The phone column's name is matched ignoring case, spaces, ``_`` and
    ``-`` ("Phone Number", "Mobile Phone")."""
    text = text.lstrip("\ufeff")
    # Only the delimiter is guessed. The sniffer also guesses the quote, and
    # takes ' for one when apostrophes pair up ("O'Brien", "'90s"): the rows
    # between them are then read as one cell, silently gone. Spreadsheets quote
    # with " (doubled inside), and the cells are stripped anyway, so spaces
    # after a delimiter may as well be skipped before a quote.
    try:
        delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, quotechar='"', doublequote=True, skipinitialspace=True)
    try:
        header = [h.strip().casefold() for h in next(reader)]
    except StopIteration:
        raise CsvInvalid("the file is empty") from None
    except csv.Error as exc:
        raise CsvInvalid(f"line 1: {exc}") from exc
    if any("\x00" in h for h in header):
        raise CsvInvalid("line 1: a column name has a NUL character (\\x00); is this a text file?")
    # Else any other column becomes an attribute: one named sms_consent would
    # overwrite a withdrawal with whatever it holds (and a later list's "yes"
    # would then count as new consent). Refused whole, so nobody believes
    # such a column was imported as consent.
    taken = [h for h in CONSENT_KEYS if h in header]
    if taken:
        raise CsvInvalid(
            f"line 1: column {', '.join(taken)} is not allowed: SMS consent is recorded only from the "
            "'consent' column (yes/no), with the time and this file as its source; rename or remove it"
        )
    keys = [_column_key(h) for h in header]
    phone_col = next((keys.index(k) for k in map(_column_key, PHONE_COLUMNS) if k in keys), None)
    if phone_col is None:
        raise CsvInvalid(f"no phone column: name one of {', '.join(PHONE_COLUMNS[:5])} in the header row")
    out = CsvAudience([], [], [])
    seen: dict[str, CsvRow] = {}
    while True:
        # Where the record starts: a quoted cell may span lines, and the reader
        # counts the lines read so far (a blank line is a record of its own).
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            out.invalid.append((line, f"not readable as CSV: {exc}"))
            continue
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            out.invalid.append((line, f"{len(cells)} cells but the header has {len(header)} columns"))
            continue
        # PostgreSQL cannot store it in text, and stripping it would import
        # something other than what the file says.
        nul = next((header[i] for i, cell in enumerate(cells) if "\x00" in cell), None)
        if nul is not None:
            out.invalid.append((line, f"column {nul!r} has a NUL character (\\x00)"))
            continue
        values = {header[i]: cells[i].strip() for i in range(len(cells))}
        raw = values.get(header[phone_col], "")
        try:
            phone = parse_phone(raw, default_region, strict=True)
        except InvalidPhoneNumber as exc:
            out.invalid.append((line, str(exc)))
            continue
        try:
            consent = parse_consent(values.get("consent", ""))
        except ValueError as exc:
            out.invalid.append((line, str(exc)))
            continue
        # A quoted cell may hold line breaks and tabs, which would go into
        # every message verbatim ("Hi Multi\nline").
        name = " ".join(values.get("name", "").split()) or None
        if name is not None and len(name) > MAX_NAME:
            out.invalid.append((line, f"name has {len(name)} characters; at most {MAX_NAME}"))
            continue
        raw_language = values.get("language", "")
        language = language_code(raw_language)
        if raw_language and language is None:
            out.invalid.append(
                (line, f"language {raw_language!r} is not a language code or name (en, fa, fa-IR, Persian)")
            )
            continue
        timezone = values.get("timezone") or None
        if timezone is not None:
            try:
                iana_zone(timezone)
            except ValueError as exc:
                out.invalid.append((line, f"timezone {exc}"))
                continue
        kept = seen.get(phone)
        if kept is not None:
            out.duplicates.append(line)
            if consent is False and kept.consent is not False:
                # A customer who withdrew is often appended to the sheet
                # later: the "no" must not be dropped as a mere duplicate.
                kept.consent = False
                out.withdrawals.append(line)
            continue
        tags = [t.strip() for t in values.get("tags", "").replace("|", ";").split(";") if t.strip()]
        attrs = {
            k: v for k, v in values.items() if k and k != header[phone_col] and k not in RESERVED and v and len(k) <= 64
        }
        row = CsvRow(
            line=line,
            phone=phone,
            name=name,
            language=language,
            consent=consent,
            tags=tags,
            timezone=timezone,
            attributes=attrs,
        )
        seen[phone] = row
        out.rows.append(row)
    return out


def sms_consent(attributes: Mapping[str, Any] | None) -> bool | None:
    """A contact's SMS consent: ``True`` only for the ``true`` that
    :func:`consent_attributes` writes; ``None`` when there is no answer;
    ``False`` for a withdrawal and for any other value (a string an old
    import or a bot left there): not a "yes", so never taken for consent, and
    not a blank either, so a list's "yes" never overwrites it. Only the
    customer or an agent (the API) turns it into a "yes"."""
    value = (attributes or {}).get(SMS_CONSENT)
    if value is None:
        return None
    return value is True


def consent_attributes(consent: bool, source: str, at: datetime) -> dict[str, Any]:
    return dict(zip(CONSENT_KEYS, (consent, at.isoformat(), source[:200]), strict=True))
