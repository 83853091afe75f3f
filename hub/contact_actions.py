"""An agent's edits of a contact (``PATCH /api/v1/contacts/{id}``) and the
contact list's segment filters.

As in :mod:`hub.actions`: ``check_*`` validates (a :class:`HubError` naming the
field, before anything is written), ``do_*`` writes inside the caller's unit of
work with its audit entry and its live event in the same transaction. The
limits are those the hub already applies where contacts are written: the CSV
import and the bot (attribute names up to 64 characters, SMS consent never as
an attribute, a language stored as its code, a timezone an IANA zone), tags
cleaned as labels are, emails as the web chat form stores them, phone numbers
E.164 with ``phone.default_region``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bots.dialog import STAGES
from channels.base import InvalidPayload
from channels.webchat import parse_identify
from hub.actions import audit
from hub.campaigns.audience import CONSENT_KEYS, SegmentFilter, segment_conditions
from hub.campaigns.templates import language_code
from hub.config import iana_zone
from hub.core import IdentityKind
from hub.errors import Conflict, NotFound, ValidationFailed
from hub.inbox import CONTACT_UPDATED, notify_contact_updated
from hub.text import InvalidPhoneNumber, clean_label, label_key, parse_phone, strip_bidi_controls
from storage.models import Contact, Identity
from storage.queries import MAX_MERGE_HOPS

# The bot's qualification ladder, and "customer", which campaigns' segments
# and the README's examples use for a lead that bought.
LIFECYCLE_STAGES = (*STAGES, "customer")
# As the CSV import and the bot's slot names take them.
MAX_ATTRIBUTE_NAME = 64
# As long as the bot's longest stored answer.
MAX_ATTRIBUTE_TEXT = 500
# The largest integer a browser reads exactly (as attachment sizes).
MAX_ATTRIBUTE_INT = 2**53 - 1
# As long as a ticket label.
MAX_TAG = 100
# As long as contacts' name column takes.
MAX_NAME = 512


@dataclass(slots=True)
class ContactChanges:
    """What an edit asks for, checked and normalized; ``fields`` are those given."""

    fields: set[str] = field(default_factory=set)
    name: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    lifecycle_stage: str | None = None
    identities: list[tuple[IdentityKind, str]] = field(default_factory=list)


def _invalid(where: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"invalid request body: {where}: {message}", details=[{"field": where, "message": message}])


def check_contact_changes(given: Mapping[str, Any], *, phone_region: str | None) -> ContactChanges:
    """The fields of a contact edit that were given (``exclude_unset``), checked."""
    out = ContactChanges(fields={k for k in given if k not in ("add_email", "add_phone") or given[k] is not None})
    if "name" in given:
        name = given["name"]
        # As customers' own names are stored: no controls that reorder what agents read.
        out.name = None if name is None else " ".join(strip_bidi_controls(str(name)).split())
        if out.name == "":
            raise _invalid("name", "name is empty; null clears it")
        if out.name is not None and len(out.name) > MAX_NAME:
            raise _invalid("name", f"name has {len(out.name)} characters; at most {MAX_NAME}")
    for key, value in (given.get("attributes") or {}).items():
        out.attributes[key] = _attribute(key, value)
    if "tags" in given:
        out.tags = _tags(given["tags"])
    if "lifecycle_stage" in given:
        stage = given["lifecycle_stage"]
        if stage is not None and stage not in LIFECYCLE_STAGES:
            raise _invalid("lifecycle_stage", f"{stage!r} is not one of {', '.join(LIFECYCLE_STAGES)} (or null)")
        out.lifecycle_stage = stage
    if given.get("add_email") is not None:
        if not str(given["add_email"]).strip():
            raise _invalid("add_email", "add_email is empty")
        try:
            email = parse_identify({"email": given["add_email"]}).email
        except InvalidPayload as exc:
            raise _invalid("add_email", str(exc)) from exc
        assert email is not None
        out.identities.append((IdentityKind.EMAIL, email))
    if given.get("add_phone") is not None:
        try:
            out.identities.append((IdentityKind.PHONE, parse_phone(given["add_phone"], phone_region)))
        except InvalidPhoneNumber as exc:
            raise _invalid("add_phone", str(exc)) from exc
    return out


def _attribute(key: str, value: Any) -> Any:
    where = f"attributes.{key}"
    if not key.strip() or key != key.strip() or len(key) > MAX_ATTRIBUTE_NAME:
        raise _invalid(where, f"an attribute name is 1 to {MAX_ATTRIBUTE_NAME} characters, without spaces around it")
    if key in CONSENT_KEYS or key.startswith("sms_consent"):
        # Consent is recorded with its time and source, never as a bare value
        # (the CSV import and the bot refuse it too).
        raise _invalid(where, "SMS consent is set with PUT /api/v1/contacts/{id}/sms_consent")
    if value is None:
        return None  # removes the key
    if key == "language":
        code = language_code(value) if isinstance(value, str) else None
        if code is None:
            raise _invalid(where, f"{value!r} is not a language code or name (en, fa, fa-IR, Persian)")
        return code
    if key == "timezone":
        try:
            return iana_zone(str(value))
        except ValueError as exc:
            raise _invalid(where, f"timezone {exc}") from exc
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_ATTRIBUTE_INT:
            raise _invalid(where, f"a number is at most {MAX_ATTRIBUTE_INT} either side of 0")
        return value
    if isinstance(value, float):
        # JSON's NaN and Infinity: not storable as JSON on PostgreSQL.
        if not math.isfinite(value):
            raise _invalid(where, "a number must be finite")
        return value
    if isinstance(value, str):
        if len(value) > MAX_ATTRIBUTE_TEXT:
            raise _invalid(where, f"text has {len(value)} characters; at most {MAX_ATTRIBUTE_TEXT}")
        return value
    raise _invalid(where, "a value is text, a number, true or false (null removes the attribute)")


def _tags(given: list[str]) -> list[str]:
    chosen: dict[str, str] = {}
    for i, tag in enumerate(given):
        spelled = clean_label(tag)
        if len(spelled) > MAX_TAG:
            raise _invalid(f"tags.{i}", f"a tag is at most {MAX_TAG} characters")
        if spelled:
            chosen.setdefault(label_key(spelled), spelled)
    return sorted(chosen.values())


async def check_live_contact(session: AsyncSession, contact_id: int) -> Contact:
    """The contact, or the one it was merged into (to the end of the chain),
    locked for the edit: a merge taking it meanwhile is waited for and followed."""
    current = contact_id
    for _ in range(MAX_MERGE_HOPS):
        contact = await session.scalar(
            select(Contact)
            .where(Contact.id == current)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )
        if contact is None:
            break
        if contact.merged_into_id is None:
            return contact
        current = contact.merged_into_id
    raise NotFound(f"contact {contact_id} does not exist")


async def do_update_contact(session: AsyncSession, contact: Contact, changes: ContactChanges, *, actor: str) -> bool:
    """Apply an agent's edit; returns whether anything changed. Tags keep the
    contact's spelling of a tag given in another case, as labels do."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}

    def change(name: str, old: Any, new: Any) -> None:
        if old != new:
            before[name], after[name] = old, new

    if "name" in changes.fields:
        change("name", contact.name, changes.name)
        contact.name = changes.name
    if changes.attributes:
        old = dict(contact.attributes or {})
        new = {k: v for k, v in {**old, **changes.attributes}.items() if v is not None}
        touched = sorted(k for k in changes.attributes if old.get(k) != new.get(k))
        if touched:
            before["attributes"] = {k: old.get(k) for k in touched}
            after["attributes"] = {k: new.get(k) for k in touched}
            contact.attributes = new
    if "tags" in changes.fields:
        old_tags = [str(t) for t in contact.tags or []]
        spelled = {label_key(t): t for t in old_tags}
        tags = sorted({spelled.get(label_key(t), t) for t in changes.tags})
        change("tags", sorted(old_tags), tags)
        contact.tags = tags
    if "lifecycle_stage" in changes.fields:
        change("lifecycle_stage", contact.lifecycle_stage, changes.lifecycle_stage)
        contact.lifecycle_stage = changes.lifecycle_stage
    added = [await _add_identity(session, contact, kind, address) for kind, address in changes.identities]
    added_view = [{"channel": kind.value, "address": address} for kind, address, new in added if new]
    if added_view:
        after["identities_added"] = added_view
    if not after:
        return False  # nothing changes: no audit entry, no event claiming it did
    await session.flush()
    data = {"from": before, "to": after}
    await audit(session, actor, CONTACT_UPDATED, "contact", contact.id, data)
    await notify_contact_updated(session, contact, list(after), actor=actor, data=data)
    return True


async def _add_identity(
    session: AsyncSession, contact: Contact, kind: IdentityKind, address: str
) -> tuple[IdentityKind, str, bool]:
    def owned_by(owner: int) -> Conflict:
        return Conflict(
            f"{kind.value} {address} belongs to contact {owner}; merge the two contacts to give it to this one"
        )

    owner = await session.scalar(
        select(Identity.contact_id).where(Identity.channel == kind.value, Identity.address == address)
    )
    if owner == contact.id:
        return kind, address, False
    if owner is not None:
        raise owned_by(owner)
    try:
        async with session.begin_nested():
            session.add(Identity(contact_id=contact.id, channel=kind.value, address=address, display_name=contact.name))
    except IntegrityError:
        # Taken meanwhile (a message from that address, another edit).
        owner = await session.scalar(
            select(Identity.contact_id).where(Identity.channel == kind.value, Identity.address == address)
        )
        if owner is None or owner == contact.id:
            raise
        raise owned_by(owner) from None
    return kind, address, True


# --- the contact list's filters ----------------------------------------------------


def segment_query(flt: SegmentFilter) -> tuple[list[ColumnElement[bool]], Callable[[Contact], bool] | None]:
    """A campaign segment filter as the contact list applies it: the conditions
    SQL asks (those of a campaign's segment, without its need of a phone
    number), and the rest asked of each row by the segment's own
    :meth:`SegmentFilter.matches` (tags in any case, attributes)."""
    conditions = segment_conditions(flt)
    in_python = flt.tags_any or flt.tags_all or flt.tags_none or flt.attributes or flt.attributes_present
    if not in_python:
        return conditions, None
    return conditions, lambda c: flt.matches(list(c.tags or []), dict(c.attributes or {}))
