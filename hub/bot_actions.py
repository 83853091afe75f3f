"""The bot's writes, as actions (``check_*`` validates, ``do_*`` mutates in the
caller's unit of work with its audit entry): knowledge-base entries with their
version history, what the qualification dialog learnt about a contact, and
the customers' feedback on answers."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bots.kb import KbEntry
from hub.actions import audit, do_get_or_create_team
from hub.config import HubConfig
from hub.core import IDENTITY_OF_CHANNEL, IdentityKind, utcnow
from hub.errors import Conflict, NotFound, ValidationFailed
from hub.text import label_key
from storage.models import AuditLog, BotTurn, Contact, FaqEntry, FaqVersion, Identity, Message, Team

log = logging.getLogger(__name__)


def entry_of(row: FaqEntry) -> KbEntry:
    values: dict[str, Any] = {
        "id": row.key,
        "questions": tuple(row.questions),
        "answer": row.answer,
        "tags": tuple(row.tags),
        "team": row.team,
    }
    try:
        return KbEntry.model_validate(values)
    except ValidationError as exc:
        # Saved under an older version's looser rules (a tag past today's 64
        # characters, say): it was valid then, and refusing it now would stop
        # the bot from building its matcher at all. Shown and matched as stored.
        log.warning("knowledge-base entry %r breaks a rule added since it was saved: %s", row.key, exc)
        return KbEntry.model_construct(**values)


def faq_view(row: FaqEntry) -> dict[str, Any]:
    return {
        **entry_of(row).document(),
        "tags": list(row.tags),
        "team": row.team,
        "version": row.version,
        "updated_at": row.updated_at.isoformat(),
        "updated_by": row.updated_by,
    }


async def kb_revision(session: AsyncSession) -> int:
    """Grows with every change to the knowledge base (a cache key)."""
    return int(await session.scalar(select(func.coalesce(func.max(FaqVersion.id), 0))) or 0)


async def load_kb(session: AsyncSession) -> list[KbEntry]:
    rows = await session.scalars(select(FaqEntry).where(FaqEntry.deleted.is_(False)).order_by(FaqEntry.key))
    return [entry_of(r) for r in rows.all()]


async def check_faq(session: AsyncSession, key: str) -> FaqEntry:
    row = await session.scalar(select(FaqEntry).where(FaqEntry.key == key, FaqEntry.deleted.is_(False)))
    if row is None:
        raise NotFound(f"knowledge-base entry {key!r} does not exist")
    return row


async def _version(session: AsyncSession, row: FaqEntry, change: str, actor: str) -> None:
    document = entry_of(row).document() if change != "deleted" else {}
    session.add(FaqVersion(entry_key=row.key, version=row.version, change=change, document=document, actor=actor))
    await audit(session, actor, f"faq.{change}", "faq_entry", row.id, {"key": row.key, "version": row.version})


def _check_version(row: FaqEntry | None, key: str, expected: int) -> None:
    """Refuse a write based on a version of the entry that is no longer the
    stored one (another admin's edit would be silently lost)."""
    if row is None:
        raise Conflict(
            f"knowledge-base entry {key!r} does not exist, so it is not at version {expected}; "
            "leave version out to create it"
        )
    if row.deleted:
        raise Conflict(
            f"knowledge-base entry {key!r} was deleted at version {row.version} after you read version {expected}; "
            "leave version out to create it again"
        )
    if row.version != expected:
        raise Conflict(
            f"knowledge-base entry {key!r} is at version {row.version}, not version {expected} that you read: "
            f"someone changed it since; GET /api/v1/faq/{key} again and make your change to what is there"
        )


async def do_save_faq(
    session: AsyncSession,
    entry: KbEntry,
    *,
    actor: str,
    create_only: bool = False,
    expected_version: int | None = None,
) -> tuple[FaqEntry, str]:
    """Create or update an entry; returns it and what happened (created,
    updated, unchanged). An unchanged entry makes no new version. With
    ``expected_version`` (the version the caller read), an entry no longer at
    that version is a Conflict and nothing changes; without it the last write
    wins."""
    # The lock keeps the version compared below the stored one until this
    # transaction ends (SQLite's single writer does the same), so of two writes
    # based on one version exactly one succeeds. populate_existing: an entry
    # this session loaded before must not be compared with stale attributes.
    row = await session.scalar(
        select(FaqEntry).where(FaqEntry.key == entry.id).with_for_update().execution_options(populate_existing=True)
    )
    if expected_version is not None:
        _check_version(row, entry.id, expected_version)
    values = {
        "questions": list(entry.questions),
        "answer": dict(entry.answer),
        "tags": list(entry.tags),
        "team": entry.team,
    }
    now = utcnow()
    if row is None:
        row = FaqEntry(key=entry.id, version=1, deleted=False, updated_at=now, updated_by=actor, **values)
        session.add(row)
        await session.flush()
        await _version(session, row, "created", actor)
        return row, "created"
    if create_only and not row.deleted:
        raise Conflict(f"knowledge-base entry {entry.id!r} already exists; PUT /api/v1/faq/{entry.id} changes it")
    current = {"questions": row.questions, "answer": row.answer, "tags": row.tags, "team": row.team}
    if current == values and not row.deleted:
        return row, "unchanged"
    change = "created" if row.deleted else "updated"
    for k, v in values.items():
        setattr(row, k, v)
    row.deleted = False
    row.version += 1
    row.updated_at = now
    row.updated_by = actor
    await session.flush()
    await _version(session, row, change, actor)
    return row, change


def configured_teams(config: HubConfig) -> list[str]:
    """The teams the hub's config names that a ticket may be handed to: they
    exist once the hub has started, perhaps not yet when an admin imports."""
    names = [t.name for t in config.routing.teams]
    names += [n for n in (config.routing.default_team, config.bot.handoff_team) if n]
    names.append(config.bot.qualification.sales_team)
    return names


async def check_faq_teams(
    session: AsyncSession, entries: Sequence[KbEntry], configured: Sequence[str]
) -> list[KbEntry]:
    """``entries`` with each team spelled as the hub's team of that name
    ("support" is "Support"), or a ValidationFailed naming the teams that are
    neither a team nor in the config: at handoff such a team would be created
    without members, and the customers handed to it would wait for ever."""
    known: dict[str, str] = {}
    for name in [*(await session.scalars(select(Team.name).order_by(Team.id))).all(), *configured]:
        known.setdefault(label_key(name), name)
    unknown: dict[str, list[str]] = {}
    out = []
    for entry in entries:
        if entry.team is None:
            out.append(entry)
        elif (spelled := known.get(label_key(entry.team))) is not None:
            out.append(entry if spelled == entry.team else entry.model_copy(update={"team": spelled}))
        else:
            unknown.setdefault(entry.team, []).append(entry.id)
    if unknown:
        problems = "; ".join(
            f"team {team!r} (entry {', '.join(map(repr, ids[:5]))}{', ...' if len(ids) > 5 else ''}) does not exist"
            + (
                f"; did you mean {close[0]!r}?"
                if (close := difflib.get_close_matches(team, list(known.values()), 1, 0.6))
                else ""
            )
            for team, ids in sorted(unknown.items())
        )
        teams = ", ".join(repr(n) for n in sorted(known.values())[:50]) or "none yet"
        raise ValidationFailed(
            f"{problems} (the teams: {teams}); create the team, or name it in the config's routing.teams"
        )
    return out


async def do_handoff_team(session: AsyncSession, name: str) -> Team:
    """The team a handoff names: the one spelled so, else the one that differs
    only in case and spacing (an entry saved before teams were checked says
    "support" for "Support"), else a new one, as routing creates them."""
    teams = (await session.scalars(select(Team).order_by(Team.id))).all()
    for team in teams:
        if team.name == name.strip():
            return team
    for team in teams:
        if label_key(team.name) == label_key(name):
            return team
    return await do_get_or_create_team(session, name, actor="bot")


async def do_delete_faq(
    session: AsyncSession, key: str, *, actor: str, expected_version: int | None = None
) -> FaqEntry:
    """Delete an entry; with ``expected_version`` (the version the caller
    read), one no longer at that version is a Conflict, as for a save.
    Without it the last write wins, and an entry deleted meanwhile is a 404."""
    # Locked whether or not a version is given: two writes that both read
    # version N would each insert version N + 1 of its history, and the one
    # that commits second would fail on the history's unique index (a 500).
    # Waiting here, it sees the other's write and builds on it instead.
    row = await session.scalar(
        select(FaqEntry).where(FaqEntry.key == key).with_for_update().execution_options(populate_existing=True)
    )
    if expected_version is not None and row is not None and not row.deleted:
        _check_version(row, key, expected_version)
    if row is None or row.deleted:
        raise NotFound(f"knowledge-base entry {key!r} does not exist")
    row.deleted = True
    row.version += 1
    row.updated_at = utcnow()
    row.updated_by = actor
    await session.flush()
    await _version(session, row, "deleted", actor)
    return row


async def do_import_faq(
    session: AsyncSession, entries: Sequence[KbEntry], *, actor: str, replace: bool = False
) -> dict[str, list[str]]:
    """Save every entry; with ``replace``, delete the entries the file no longer has."""
    if replace and not entries:
        # The parsers refuse a file without entries; this is the last guard
        # before the whole knowledge base is deleted.
        raise ValidationFailed("nothing to import: with replace, an empty import would delete every entry")
    result: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": [], "deleted": []}
    for entry in entries:
        _, change = await do_save_faq(session, entry, actor=actor)
        result[change].append(entry.id)
    if replace:
        keep = {e.id for e in entries}
        stale = await session.scalars(select(FaqEntry.key).where(FaqEntry.deleted.is_(False)))
        for key in stale.all():
            if key not in keep:
                await do_delete_faq(session, key, actor=actor)
                result["deleted"].append(key)
    return result


# --- leads ---------------------------------------------------------------------------


async def do_update_lead(
    session: AsyncSession,
    contact: Contact,
    *,
    attributes: dict[str, Any],
    score: int | None,
    stage: str | None,
    actor: str = "bot",
) -> None:
    """Answers become contact attributes; the email and phone become identities
    of the contact (so a message from that number or address finds them),
    unless another contact already owns them. A corrected email or phone
    takes away the identity the old value became here, unless it has been
    used since (see :func:`_drop_corrected_identity`)."""
    before = {"lead_score": contact.lead_score, "lifecycle_stage": contact.lifecycle_stage}
    previous = dict(contact.attributes or {})
    if attributes:
        collected = (contact.attributes or {}).get("name")
        contact.attributes = {**(contact.attributes or {}), **attributes}
        # The contact's name is filled from the dialog, and corrected by it
        # ("my name is Ali") only while it is still the name the dialog gave:
        # a name an agent or the channel set is never overwritten.
        if attributes.get("name") and (not contact.name or (collected and contact.name == str(collected)[:512])):
            contact.name = str(attributes["name"])[:512]
    if score is not None:
        contact.lead_score = score
    if stage is not None:
        contact.lifecycle_stage = stage
    for kind, key in ((IdentityKind.EMAIL, "email"), (IdentityKind.PHONE, "phone")):
        address = attributes.get(key)
        if not address:
            continue
        owner = await session.scalar(
            select(Identity.contact_id).where(Identity.channel == kind.value, Identity.address == str(address))
        )
        if owner is None:
            session.add(Identity(contact_id=contact.id, channel=kind.value, address=str(address)))
            # Which identities the dialog gave, so a correction may take back
            # only those (not one the customer writes from, nor an agent's).
            await audit(
                session, actor, "contact.identity_added", "contact", contact.id,
                {"channel": kind.value, "address": str(address)},
            )  # fmt: skip
        old = previous.get(key)
        if old and str(old) != str(address):
            await _drop_corrected_identity(session, contact, kind, str(old), actor=actor)
    await session.flush()
    after = {"lead_score": contact.lead_score, "lifecycle_stage": contact.lifecycle_stage}
    await audit(
        session, actor, "contact.lead", "contact", contact.id, {"attributes": attributes, "from": before, "to": after}
    )


async def _drop_corrected_identity(
    session: AsyncSession, contact: Contact, kind: IdentityKind, address: str, *, actor: str
) -> None:
    """The customer said ``address`` was wrong: whoever really owns it would
    otherwise be filed under this contact from their first message (and carry
    on this customer's dialog). Only an identity this actor's answers added,
    and that no message has come from or gone to since: one in use is
    evidence the address is theirs after all, and an agent can remove it."""
    identity = await session.scalar(
        select(Identity).where(
            Identity.contact_id == contact.id, Identity.channel == kind.value, Identity.address == address
        )
    )
    if identity is None:
        return
    added = await session.scalars(
        select(AuditLog.data).where(
            AuditLog.entity == "contact",
            AuditLog.entity_id == contact.id,
            AuditLog.action == "contact.identity_added",
            AuditLog.actor == actor,
        )
    )
    if not any(d.get("channel") == kind.value and d.get("address") == address for d in added.all()):
        return
    channels = [c.value for c, k in IDENTITY_OF_CHANNEL.items() if k is kind]
    used = await session.scalar(
        select(Message.id)
        .where(
            Message.contact_id == contact.id,
            Message.channel.in_(channels),
            (Message.extras["from"].as_string() == address) | (Message.extras["recipient"].as_string() == address),
        )
        .limit(1)
    )
    if used is not None:
        return
    await session.delete(identity)
    await audit(
        session, actor, "contact.identity_removed", "contact", contact.id,
        {"channel": kind.value, "address": address, "why": "corrected in the bot's dialog"},
    )  # fmt: skip


async def do_record_feedback(session: AsyncSession, turn_id: int, value: str, *, contact_id: int) -> bool:
    """The customer's "did this answer your question?"; only for their own turn."""
    result = await session.execute(
        update(BotTurn)
        .where(BotTurn.id == turn_id, BotTurn.contact_id == contact_id)
        .values(feedback=value)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
