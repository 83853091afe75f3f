"""Read-side queries for the API: filtered, cursor-paginated, no lazy loads."""

from __future__ import annotations

import base64
import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core import Channel, Direction, IdentityKind, QuickReply, TicketStatus

# The normalizer's own tables, so the query and the stored text are folded alike.
from hub.text import LETTER_FORMS, ZWNJ, clean_label, label_key, to_ascii_digits
from storage.models import Agent, Contact, Identity, Inbox, Message, TeamMember, Ticket, TicketEventRow, TicketLabel
from storage.views import agent_view, contact_view, iso, message_view, ticket_view


class BadCursor(ValueError):
    pass


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError) as exc:
        raise BadCursor("cursor is not one this API issued") from exc
    if not isinstance(parts, list) or len(parts) != size:
        raise BadCursor("cursor is not one this API issued")
    return parts


# Ids are 64-bit signed in the database.
MAX_ID = 2**63 - 1
_ID = re.compile(r"[0-9]{1,19}")


def parse_id(raw: str) -> int | None:
    """An id written in a URL, or None: ASCII digits only (``int`` also reads
    " 7", "+7", "7_0" and Arabic-Indic digits, and ``str.isdigit`` passes "²",
    which ``int`` refuses) within the database's range."""
    if _ID.fullmatch(raw) is None or int(raw) > MAX_ID:
        return None
    return int(raw)


def json_id(value: Any) -> int | None:
    """An id given as a JSON number, or None: an integer (not true or false)
    within the database's range, where a larger one is a server error."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        return None
    return value


def cursor_id(value: Any) -> int:
    """An id from a cursor: a cursor is client input, so a non-number or one
    out of the database's range is a bad cursor, not a server error."""
    found = json_id(value)
    if found is None:
        raise BadCursor("cursor is not one this API issued")
    return found


def _cursor_time(value: Any) -> datetime:
    """A time from a cursor, in UTC. Converted here, where a time that leaves
    the calendar on the way (``9999-12-31T23:59:59-05:00``) is a bad cursor,
    rather than where the query binds it, as a server error."""
    try:
        parsed = datetime.fromisoformat(str(value))
        # A naive time would be taken as the server's local time: refused below.
        at = None if parsed.utcoffset() is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise BadCursor("cursor is not one this API issued") from exc
    if at is None:
        raise BadCursor("cursor is not one this API issued")
    return at


@dataclass
class TicketFilter:
    status: list[str] = field(default_factory=list)
    assignee_id: int | None = None
    unassigned: bool = False
    team_id: int | None = None
    channel: list[str] = field(default_factory=list)
    label: str | None = None
    contact_id: int | None = None
    text: str | None = None
    # Any of these teams (the inbox's "my teams" view), and any of these priorities.
    team_ids: list[int] | None = None
    priority: list[str] = field(default_factory=list)


async def list_agents(session: AsyncSession) -> list[dict[str, Any]]:
    """Every agent as the API shows them (with the ids of their teams), by id."""
    agents = (await session.scalars(select(Agent).order_by(Agent.id))).all()
    teams: dict[int, list[int]] = defaultdict(list)
    for agent_id, team_id in (await session.execute(select(TeamMember.agent_id, TeamMember.team_id))).all():
        teams[agent_id].append(team_id)
    return [agent_view(a, teams.get(a.id)) for a in agents]


async def labels_for(session: AsyncSession, ticket_ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    if ticket_ids:
        rows = await session.execute(
            select(TicketLabel.ticket_id, TicketLabel.label).where(TicketLabel.ticket_id.in_(ticket_ids))
        )
        for tid, label in rows.all():
            out[tid].append(label)
    return out


async def list_tickets(
    session: AsyncSession, f: TicketFilter, *, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Most recent activity first."""
    stmt = select(Ticket)
    if f.status:
        stmt = stmt.where(Ticket.status.in_(f.status))
    if f.unassigned:
        stmt = stmt.where(Ticket.assignee_id.is_(None))
    elif f.assignee_id is not None:
        stmt = stmt.where(Ticket.assignee_id == f.assignee_id)
    if f.team_id is not None:
        stmt = stmt.where(Ticket.team_id == f.team_id)
    if f.team_ids is not None:
        stmt = stmt.where(Ticket.team_id.in_(f.team_ids))
    if f.priority:
        stmt = stmt.where(Ticket.priority.in_(f.priority))
    if f.channel:
        stmt = stmt.where(Ticket.channel.in_(f.channel))
    if f.contact_id is not None:
        stmt = stmt.where(Ticket.contact_id == f.contact_id)
    if f.label:
        key = label_key(f.label)
        same: Any
        if session.get_bind().dialect.name == "postgresql":
            # lower() knows every script there, and needs no scan of the labels.
            same = func.lower(TicketLabel.label) == func.lower(literal(clean_label(f.label)))
        else:
            # SQLite's lower() folds ASCII only: the spellings in use are
            # matched here (the embedded hub's labels are few).
            same = TicketLabel.label.in_(
                [
                    label
                    for label in (await session.scalars(select(TicketLabel.label).distinct())).all()
                    if label_key(label) == key
                ]
            )
        stmt = stmt.where(select(TicketLabel.ticket_id).where(TicketLabel.ticket_id == Ticket.id, same).exists())
    if f.text:
        search = _Search.of(f.text)
        stmt = stmt.where(
            or_(
                search.matches(Ticket.subject),
                select(Contact.id).where(Contact.id == Ticket.contact_id, search.matches(Contact.name)).exists(),
                # The customer's email address or phone number, as the contacts search finds them.
                select(Identity.id)
                .where(Identity.contact_id == Ticket.contact_id, _address_matches(search, f.text))
                .exists(),
                select(Message.id).where(Message.ticket_id == Ticket.id, search.matches(Message.body)).exists(),
            )
        )
    if cursor:
        at_raw, tid = decode_cursor(cursor, 2)
        at = _cursor_time(at_raw)
        stmt = stmt.where(
            or_(Ticket.last_message_at < at, and_(Ticket.last_message_at == at, Ticket.id < cursor_id(tid)))
        )
    stmt = stmt.order_by(Ticket.last_message_at.desc(), Ticket.id.desc()).limit(limit + 1)
    tickets = list((await session.scalars(stmt)).all())
    more = len(tickets) > limit
    tickets = tickets[:limit]
    ids = [t.id for t in tickets]
    labels = await labels_for(session, ids)
    names = {
        cid: name
        for cid, name in (
            await session.execute(
                select(Contact.id, Contact.name).where(Contact.id.in_({t.contact_id for t in tickets}))
            )
        ).all()
    }
    last = await _last_messages(session, ids)
    items = []
    for t in tickets:
        view = ticket_view(t, labels.get(t.id))
        view["contact_name"] = names.get(t.contact_id)
        view["last_message"] = last.get(t.id)
        items.append(view)
    next_cursor = encode_cursor(iso(tickets[-1].last_message_at), tickets[-1].id) if more else None
    return items, next_cursor


async def _last_messages(session: AsyncSession, ticket_ids: list[int]) -> dict[int, dict[str, Any]]:
    if not ticket_ids:
        return {}
    # One row per ticket, whatever its history: a LIMIT 1 per ticket walks
    # ix_messages_ticket (ticket_id, id) backwards from the newest message and
    # stops at the first public one, on both engines. Reading every message id
    # of the page's tickets took seconds with long conversations.
    newest = (
        select(Message.id)
        .where(Message.ticket_id == Ticket.id, Message.private.is_(False))
        .order_by(Message.id.desc())
        .limit(1)
        .correlate(Ticket)
        .scalar_subquery()
    )
    latest = [
        mid
        for mid in (await session.scalars(select(newest).select_from(Ticket).where(Ticket.id.in_(ticket_ids)))).all()
        if mid is not None
    ]
    if not latest:
        return {}
    rows = await session.scalars(select(Message).where(Message.id.in_(latest)))
    return {
        m.ticket_id: {
            "id": m.id,
            "body": m.body[:200],
            "direction": m.direction,
            "author": m.author,
            "created_at": iso(m.created_at),
        }
        for m in rows.all()
    }


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# Characters folded on both sides of a search: Arabic letter forms as the
# Persian ones, the half-space (ZWNJ) as a space ("محمد‌رضا" is also typed
# "محمد رضا"). Digits are not here: see _Search.
_SEARCH_FOLD: dict[str, str] = {
    **{chr(code): (replacement or "") for code, replacement in LETTER_FORMS.items()},
    ZWNJ: " ",
}
_SEARCH_FOLD_TABLE = str.maketrans(_SEARCH_FOLD)
_ARABIC_SCRIPT = re.compile("[\u0600-\u06ff]")
_PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
_ARABIC_INDIC_DIGITS = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


@dataclass(frozen=True, slots=True)
class _Search:
    """A text search, folded alike on the query and the stored side:
    customers type either letter form (a search for «علی» must find «علي»),
    a half-space, a space or neither between Persian words, and Persian, Arabic-Indic or ASCII digits («سفارش
    ۴۵۶۷۸» is found by 45678). Computed per row (no migration); search scans
    anyway.

    The column is folded with nested replace() (SQLite has no translate()),
    and SQLite before 3.46 refuses a statement nested more than about 25
    calls deep ("parser stack overflow"). So the column is folded only for
    the characters whose folded form the query contains (which cannot change
    what matches, and spares the work on every row), and digits, twenty of
    them, are matched by a pattern per script instead of being folded: a
    number is written in one script."""

    patterns: tuple[str, ...]
    folds: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, text: str) -> _Search:
        folded = to_ascii_digits(text.translate(_SEARCH_FOLD_TABLE))
        if _ARABIC_SCRIPT.search(folded):
            # Persian compounds are written with a half-space, a space or
            # neither («محمدرضا», «محمد رضا»): such a query matches with the
            # spaces left out on both sides (the half-space folds to one).
            return cls(
                patterns=tuple(p.replace(" ", "") for p in cls._patterns(folded)),
                folds=(*cls._folds(folded + " "), (" ", "")),
            )
        return cls(patterns=cls._patterns(folded), folds=cls._folds(folded))

    @staticmethod
    def _patterns(folded: str) -> tuple[str, ...]:
        scripts = dict.fromkeys([folded, folded.translate(_PERSIAN_DIGITS), folded.translate(_ARABIC_INDIC_DIGITS)])
        return tuple(f"%{_escape_like(t)}%" for t in scripts)

    @staticmethod
    def _folds(folded: str) -> tuple[tuple[str, str], ...]:
        # A deletion (tatweel) can join any two characters of the query.
        return tuple((c, r) for c, r in sorted(_SEARCH_FOLD.items()) if r in folded)

    def matches(self, column: Any) -> Any:
        for char, replacement in self.folds:
            column = func.replace(column, char, replacement)
        return or_(*(column.ilike(pattern, escape="\\") for pattern in self.patterns))


# A query an agent typed as a phone number: digits with the separators people
# write in them ("+98 912 123 4567", "(0912) 123-4567").
_PHONE_QUERY = re.compile(r"\+?[\s()\-]*[0-9][0-9\s()\-]*")


def _phone_digits(text: str) -> str | None:
    """The digits to look for in stored E.164 numbers when ``text`` is typed
    like a phone number, else None. Leading zeros go: an international (00)
    or trunk (0) prefix is not in the E.164 form, and what follows is."""
    text = to_ascii_digits(text).strip()
    if _PHONE_QUERY.fullmatch(text) is None:
        return None
    return re.sub(r"[^0-9]", "", text).lstrip("0") or None


def _address_matches(search: _Search, text: str) -> Any:
    """An identity whose address (email, phone, handle) contains the query;
    a query typed as a phone number also finds the number in its E.164 form."""
    address = search.matches(Identity.address)
    digits = _phone_digits(text)
    if digits is not None:
        address = or_(address, and_(Identity.channel == IdentityKind.PHONE, Identity.address.like(f"%{digits}%")))
    return address


# How many of a ticket's messages its detail shows: a whole conversation but
# for the longest ones, which page back with ticket_messages.
NEWEST_MESSAGES = 500


async def get_ticket(
    session: AsyncSession, ticket_id: int, *, message_limit: int = NEWEST_MESSAGES
) -> dict[str, Any] | None:
    """The ticket with its newest ``message_limit`` messages, oldest first;
    ``messages_before`` is the oldest of them while older ones exist (the
    ``before`` of :func:`ticket_messages`), so a long history is never cut
    off silently."""
    ticket = await session.get(Ticket, ticket_id)
    if ticket is None:
        return None
    labels = await labels_for(session, [ticket.id])
    inbox_key = await session.scalar(select(Inbox.key).where(Inbox.id == ticket.inbox_id))
    messages: list[dict[str, Any]] = []
    older = None
    if message_limit > 0:
        messages, older = await _message_page(session, ticket.id, before=None, limit=message_limit)
    view = ticket_view(ticket, labels.get(ticket.id))
    view["inbox"] = inbox_key
    view["messages"] = messages
    view["messages_before"] = older
    contact = await session.get(Contact, ticket.contact_id)
    view["contact_name"] = contact.name if contact else None
    return view


async def _message_page(
    session: AsyncSession, ticket_id: int, *, before: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` of the ticket's messages older than message ``before``
    (the newest without it), oldest first, private notes included; and the id
    of the oldest of them when there are older still. Keyed on the id (the
    (ticket_id, id) index), so pages neither skip nor repeat a message while
    new ones arrive. Each message names its own inbox, as its live event and
    the timeline do: a reply sent on another channel (an email on a web chat
    ticket) is not the ticket's inbox."""
    stmt = select(Message).where(Message.ticket_id == ticket_id)
    if before is not None:
        stmt = stmt.where(Message.id < before)
    rows = list((await session.scalars(stmt.order_by(Message.id.desc()).limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    inboxes = {m.inbox_id for m in rows}
    keys = {i: k for i, k in (await session.execute(select(Inbox.id, Inbox.key).where(Inbox.id.in_(inboxes)))).all()}
    return [message_view(m, keys.get(m.inbox_id)) for m in reversed(rows)], rows[-1].id if more and rows else None


async def ticket_messages(
    session: AsyncSession, ticket: Ticket, *, before: int | None, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the ticket's history: the messages just older than message
    ``before`` (or than the page ``cursor`` ended at; the newest without
    either), oldest first, as :func:`get_ticket` shows them."""
    if cursor:
        (raw_id,) = decode_cursor(cursor, 1)
        before = cursor_id(raw_id)
    items, older = await _message_page(session, ticket.id, before=before, limit=limit)
    return items, encode_cursor(older) if older is not None else None


# Contacts read per round while a filter evaluated in Python (tags, attributes)
# fills a page: a page of a rare tag reads on until it is full or none are left.
_CONTACT_SCAN = 500


async def list_contacts(
    session: AsyncSession,
    *,
    text: str | None,
    cursor: str | None,
    limit: int,
    where: Sequence[ColumnElement[bool]] = (),
    keep: Callable[[Contact], bool] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Live contacts, newest first: ``where`` conditions on :class:`Contact`
    and ``keep``, a test of each row for what SQL cannot ask alike on both
    engines (tags in any case, JSON attributes)."""
    stmt = select(Contact).where(Contact.merged_into_id.is_(None), *where)
    if text:
        search = _Search.of(text)
        stmt = stmt.where(
            or_(
                search.matches(Contact.name),
                select(Identity.id).where(Identity.contact_id == Contact.id, _address_matches(search, text)).exists(),
            )
        )
    before: int | None = None
    if cursor:
        (cid,) = decode_cursor(cursor, 1)
        before = cursor_id(cid)
    contacts: list[Contact] = []
    while len(contacts) <= limit:
        page = stmt if before is None else stmt.where(Contact.id < before)
        size = limit + 1 if keep is None else max(limit + 1, _CONTACT_SCAN)
        rows = list((await session.scalars(page.order_by(Contact.id.desc()).limit(size))).all())
        contacts += rows if keep is None else [c for c in rows if keep(c)]
        if len(rows) < size:
            break
        before = rows[-1].id
    more = len(contacts) > limit
    contacts = contacts[:limit]
    idents = await identities_for(session, [c.id for c in contacts])
    seen = await last_seen(session, [c.id for c in contacts])
    items = [contact_view(c, idents.get(c.id, []), seen.get(c.id)) for c in contacts]
    return items, encode_cursor(contacts[-1].id) if more else None


async def last_seen(session: AsyncSession, contact_ids: list[int]) -> dict[int, datetime]:
    if not contact_ids:
        return {}
    rows = await session.execute(
        select(Message.contact_id, func.max(Message.created_at))
        .where(Message.contact_id.in_(contact_ids), Message.direction == "in")
        .group_by(Message.contact_id)
    )
    return {cid: at for cid, at in rows.all() if at is not None}


async def identities_for(session: AsyncSession, contact_ids: list[int]) -> dict[int, list[Identity]]:
    out: dict[int, list[Identity]] = defaultdict(list)
    if contact_ids:
        for ident in (
            await session.scalars(select(Identity).where(Identity.contact_id.in_(contact_ids)).order_by(Identity.id))
        ).all():
            out[ident.contact_id].append(ident)
    return out


# How many of a contact's tickets its detail holds; the rest page with
# GET /tickets?contact= from the detail's tickets_next_cursor.
CONTACT_TICKETS = 50
# A merge chain longer than this is a loop (which no merge makes), not a contact.
MAX_MERGE_HOPS = 100


async def live_contact_id(session: AsyncSession, contact_id: int) -> int | None:
    """The contact that ``contact_id`` lives on in: itself, or for a contact
    merged away the end of its merged_into_id chain; None when it does not exist."""
    current = contact_id
    for _ in range(MAX_MERGE_HOPS):
        merged_into = (await session.execute(select(Contact.merged_into_id).where(Contact.id == current))).one_or_none()
        if merged_into is None:
            return None
        if merged_into[0] is None:
            return current
        current = merged_into[0]
    return None


async def get_contact(session: AsyncSession, contact_id: int) -> dict[str, Any] | None:
    """The contact, or the one a merged-away contact lives on in (with
    ``resolved_from_id``), with its newest ``CONTACT_TICKETS`` tickets and
    how to page the rest, so a long history is never cut off silently."""
    live_id = await live_contact_id(session, contact_id)
    contact = None if live_id is None else await session.get(Contact, live_id)
    if contact is None:
        return None
    idents = await identities_for(session, [contact.id])
    seen = await last_seen(session, [contact.id])
    view = contact_view(contact, idents.get(contact.id, []), seen.get(contact.id))
    # Ordered as GET /tickets orders them, so its cursor carries on from here.
    tickets = list(
        (
            await session.scalars(
                select(Ticket)
                .where(Ticket.contact_id == contact.id)
                .order_by(Ticket.last_message_at.desc(), Ticket.id.desc())
                .limit(CONTACT_TICKETS + 1)
            )
        ).all()
    )
    more = len(tickets) > CONTACT_TICKETS
    tickets = tickets[:CONTACT_TICKETS]
    labels = await labels_for(session, [t.id for t in tickets])
    view["tickets"] = [ticket_view(t, labels.get(t.id)) for t in tickets]
    view["tickets_total"] = (
        await session.scalar(select(func.count()).select_from(Ticket).where(Ticket.contact_id == contact.id))
        if more
        else len(tickets)
    )
    view["tickets_next_cursor"] = encode_cursor(iso(tickets[-1].last_message_at), tickets[-1].id) if more else None
    view["resolved_from_id"] = contact_id if contact.id != contact_id else None
    return view


async def timeline(
    session: AsyncSession, contact_id: int, *, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Messages and ticket events of one contact across all tickets and channels,
    newest first. Sorted by (time, kind, id) so the cursor is stable when a
    message and an event share a timestamp."""
    msgs = select(literal("message").label("kind"), Message.id.label("id"), Message.created_at.label("at")).where(
        Message.contact_id == contact_id
    )
    events = select(
        literal("event").label("kind"), TicketEventRow.id.label("id"), TicketEventRow.created_at.label("at")
    ).where(TicketEventRow.contact_id == contact_id)
    merged = union_all(msgs, events).subquery()
    stmt = select(merged.c.kind, merged.c.id, merged.c.at)
    if cursor:
        at_raw, kind, raw_id = decode_cursor(cursor, 3)
        at = _cursor_time(at_raw)
        item_id = cursor_id(raw_id)
        if kind not in ("message", "event"):
            raise BadCursor("cursor is not one this API issued")
        stmt = stmt.where(
            or_(
                merged.c.at < at,
                and_(merged.c.at == at, merged.c.kind < kind),
                and_(merged.c.at == at, merged.c.kind == kind, merged.c.id < item_id),
            )
        )
    stmt = stmt.order_by(merged.c.at.desc(), merged.c.kind.desc(), merged.c.id.desc()).limit(limit + 1)
    keys = (await session.execute(stmt)).all()
    more = len(keys) > limit
    keys = keys[:limit]
    msg_ids = [k.id for k in keys if k.kind == "message"]
    ev_ids = [k.id for k in keys if k.kind == "event"]
    inbox_keys = {i: k for i, k in (await session.execute(select(Inbox.id, Inbox.key))).all()}
    messages = {m.id: m for m in (await session.scalars(select(Message).where(Message.id.in_(msg_ids)))).all()}
    evs = {e.id: e for e in (await session.scalars(select(TicketEventRow).where(TicketEventRow.id.in_(ev_ids)))).all()}
    items: list[dict[str, Any]] = []
    for k in keys:
        if k.kind == "message":
            m = messages[k.id]
            items.append(
                {
                    "type": "message",
                    "at": iso(m.created_at),
                    "message": message_view(m, inbox_keys.get(m.inbox_id)),
                }
            )
        else:
            e = evs[k.id]
            items.append(
                {
                    "type": "event",
                    "at": iso(e.created_at),
                    "event": {
                        "id": e.id,
                        "ticket_id": e.ticket_id,
                        "kind": e.kind,
                        "actor": e.actor,
                        "data": e.data,
                        "created_at": iso(e.created_at),
                    },
                }
            )
    next_cursor = None
    if more and keys:
        last = keys[-1]
        last_at = messages[last.id].created_at if last.kind == "message" else evs[last.id].created_at
        next_cursor = encode_cursor(iso(last_at), last.kind, last.id)
    return items, next_cursor


async def visitor_conversation(
    session: AsyncSession, identity_kind: str, address: str, *, limit: int
) -> tuple[int | None, int | None, list[dict[str, Any]]]:
    """What a returning web chat visitor sees: their contact, their current
    ticket, and the latest messages of their own conversation (no private
    notes): what they wrote and what was sent to them, never what another
    visitor of the same (merged) contact wrote or was told. Agents see the
    merged history through the API."""
    contact_id = await session.scalar(
        select(Identity.contact_id).where(Identity.channel == identity_kind, Identity.address == address)
    )
    if contact_id is None:
        return None, None, []
    # A merged contact's identities moved, so contact_id is the surviving one.
    # The ticket is where the visitor's next message goes (one open chat
    # ticket per contact), so typing is shown there; it carries no content.
    ticket_id = await session.scalar(
        select(Ticket.id)
        .where(Ticket.contact_id == contact_id, Ticket.channel == identity_kind)
        .order_by(Ticket.last_message_at.desc())
        .limit(1)
    )
    # A merge puts two browsers' chats on one contact, and even in one ticket
    # (the kept ticket takes the other's later messages), so the contact or
    # the ticket would replay a stranger's chat: each message says whose it is
    # (ingest keeps the sender, a reply its recipient).
    own = or_(
        and_(Message.direction == Direction.IN.value, Message.extras["from"].as_string() == address),
        and_(Message.direction == Direction.OUT.value, Message.extras["recipient"].as_string() == address),
    )
    identities = await session.scalar(
        select(func.count())
        .select_from(Identity)
        .where(Identity.contact_id == contact_id, Identity.channel == identity_kind)
    )
    if identities == 1:
        # Rows stored before ingest kept the sender have no "from"; while no
        # other visitor is merged into the contact, they can only be this one's.
        own = or_(own, and_(Message.direction == Direction.IN.value, Message.extras["from"].as_string().is_(None)))
    rows = await session.scalars(
        select(Message)
        .where(
            Message.contact_id == contact_id,
            Message.channel == identity_kind,
            Message.private.is_(False),
            own,
        )
        .order_by(Message.id.desc())
        .limit(limit)
    )
    return contact_id, ticket_id, [message_view(m) | {"extras": m.extras} for m in reversed(rows.all())]


async def offered_quick_replies(
    session: AsyncSession,
    *,
    inbox: str,
    kind: IdentityKind,
    address: str,
    channel: Channel | None = None,
    messages: int = 1,
    open_only: bool = False,
) -> list[QuickReply]:
    """The buttons the hub's last ``messages`` public messages to ``address``
    (an identity of ``kind``) in ``inbox`` offered, newest first: what a
    customer's "2" (SMS) or pressed button (Telegram) may be choosing from."""
    stmt = (
        select(Message.extras)
        .join(Ticket, Ticket.id == Message.ticket_id)
        .join(Inbox, Inbox.id == Ticket.inbox_id)
        .join(Identity, Identity.contact_id == Ticket.contact_id)
        .where(
            Inbox.key == inbox,
            Identity.channel == kind.value,
            Identity.address == address,
            Message.direction == Direction.OUT.value,
            Message.private.is_(False),
        )
        .order_by(Message.id.desc())
        .limit(messages)
    )
    if channel is not None:
        stmt = stmt.where(Message.channel == channel.value)
    if open_only:
        stmt = stmt.where(Ticket.status != TicketStatus.RESOLVED.value)
    rows = (await session.scalars(stmt)).all()
    return [QuickReply.model_validate(q) for extras in rows for q in (extras or {}).get("quick_replies") or []]
