"""``crm-hub rasa-actions``: a rasa-sdk action server (Sanic, as rasa-sdk
ships it) whose actions read and write the hub's database through the same
actions the hub uses. Point a Rasa assistant's ``endpoints.yml`` at it:
``action_endpoint: {url: "http://127.0.0.1:5055/webhook", token: "..."}``.

Which contact a conversation is (:meth:`DatabasePort._conversation_contact`):
a hub conversation (``hub-contact-<id>``) names its contact; any other is the
contact whose ``rasa`` identity its sender id is, which only update_lead
creates. Nothing else in a tracker chooses a contact to write to: Rasa's REST
and socketio channels let the customer's client pick the sender id, slots
(``hub_contact_id`` too) are whatever the assistant filled in, and anyone can
type anyone's email address. action_hub_lookup_customer alone reads a
customer by the email and phone slots (as the README says), for the
assistant's slots; that contact is never written, linked or handed off.

A browser on the host, or anyone who reaches the port, could otherwise post
action calls: no CORS, a JSON content type only, and the token of
``bot.rasa.actions_token`` (``$HUB_RASA_ACTIONS_TOKEN``), which must be set to
listen beyond loopback."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import zlib
from collections.abc import Sequence
from typing import Any

import click
from sqlalchemy import select

from bots import dialog
from bots.rasa_actions import (
    CONTACT_SLOT,
    HUB_SENDER,
    MAX_REASON,
    CheckedExecutor,
    Handoff,
    LookupCustomer,
    UpdateLead,
    action_call_problem,
)
from hub.actions import do_handoff, do_set_status
from hub.bot_actions import do_update_lead
from hub.config import RASA_TOKEN_ENV, HubConfig, QualificationConfig, QualificationSlot
from hub.core import IdentityKind, TicketStatus, utcnow
from hub.text import is_vip
from storage.db import Database
from storage.ingest import dialect_insert
from storage.models import Contact, Identity, Message, Ticket
from storage.queries import parse_id

log = logging.getLogger(__name__)

# The identity of a Rasa conversation (its sender id) whose contact these
# actions created: the only way a conversation of Rasa's own owns a contact.
RASA_IDENTITY = IdentityKind.RASA.value
# Longest address the identities table stores.
MAX_ADDRESS = 512
# Merges form chains (A into B, later B into C); a cycle would be a bug, not a reason to loop.
MAX_MERGE_HOPS = 10
# rasa-sdk's name for its POST /webhook route.
WEBHOOK_ROUTE = "rasa_sdk.webhook"
# Container health checks call it without the token; it says nothing of customers.
HEALTH_ROUTE = "rasa_sdk.health"
# A lookup's typed address is read as update_lead would have stored it.
_EMAIL_SLOT = QualificationSlot(name="email", kind="email", prompt={"en": "email"})
_PHONE_SLOT = QualificationSlot(name="phone", kind="phone", prompt={"en": "phone"})


def _as_typed(slot: QualificationSlot, text: str | None, region: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(dialog.validate(slot, text, region))
    except dialog.Invalid:
        return None


def _hub_contact_id(sender_id: str) -> tuple[bool, int | None]:
    """Whether the sender is a hub conversation, and the contact id it names
    (None when it cannot be one)."""
    m = HUB_SENDER.fullmatch(sender_id)
    return (False, None) if m is None else (True, parse_id(m.group(1)))


async def _current_contact(session: Any, contact_id: int) -> int | None:
    """The contact, or the one it was merged into: a merged contact's row is
    only a pointer."""
    for _ in range(MAX_MERGE_HOPS):
        contact = await session.get(Contact, contact_id)
        if contact is None:
            return None
        if contact.merged_into_id is None:
            return contact_id
        contact_id = contact.merged_into_id
    return None


def _later_stage(current: str | None, new: str) -> str:
    """Stages only move forward; one set outside the qualification ladder
    (by an agent, say "customer") is kept, since nothing says how it compares."""
    if current is not None and current not in dialog.STAGES:
        return current
    return dialog.later_stage(current, new)


class DatabasePort:
    """The hub as the actions see it (:class:`bots.rasa_actions.HubPort`)."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.qualification: QualificationConfig = config.bot.qualification
        self._db: Database | None = None

    @property
    def db(self) -> Database:
        # Created on first use, inside the server's event loop.
        if self._db is None:
            self._db = Database(self.config.database_url)
        return self._db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.dispose()

    async def _conversation_contact(self, session: Any, sender_id: str) -> int | None:
        """The contact this conversation is, or None: the only contact its
        calls may write to or hand off."""
        is_hub, named = _hub_contact_id(sender_id)
        if is_hub:
            # The hub chose this id for its own conversation; a contact that
            # is gone is nobody.
            return None if named is None else await _current_contact(session, named)
        if not sender_id or len(sender_id) > MAX_ADDRESS:
            return None
        # Only the rasa channel: a client that picks a customer's phone number
        # or chat id as its sender id is not that customer.
        found = await session.scalar(
            select(Identity.contact_id)
            .where(Identity.channel == RASA_IDENTITY, Identity.address == sender_id)
            .order_by(Identity.id)
            .limit(1)
        )
        return None if found is None else await _current_contact(session, int(found))

    async def _contact_by_address(self, session: Any, email: str | None, phone: str | None) -> int | None:
        """The contact whose identity is the typed email or phone, for reading only."""
        region = self.qualification.phone_region
        for channel, address in (
            (IdentityKind.EMAIL.value, _as_typed(_EMAIL_SLOT, email, region)),
            (IdentityKind.PHONE.value, _as_typed(_PHONE_SLOT, phone, region)),
        ):
            if not address or len(address) > MAX_ADDRESS:
                continue
            found = await session.scalar(
                select(Identity.contact_id)
                .where(Identity.channel == channel, Identity.address == address)
                .order_by(Identity.id)
                .limit(1)
            )
            if found is not None:
                return await _current_contact(session, int(found))
        return None

    async def _new_conversation_contact(self, session: Any, sender_id: str, name: str | None) -> int:
        """A new contact with the conversation's identity; if another call of
        the conversation created one at the same moment, that one."""
        created = Contact(name=name, attributes={}, tags=[], lead_score=0)
        session.add(created)
        await session.flush()
        won = await session.scalar(
            dialect_insert(session, Identity)
            .values(contact_id=created.id, channel=RASA_IDENTITY, address=sender_id, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["channel", "address"])
            .returning(Identity.contact_id)
        )
        if won is not None:
            return int(created.id)
        await session.delete(created)
        await session.flush()
        owner = await session.scalar(
            select(Identity.contact_id).where(Identity.channel == RASA_IDENTITY, Identity.address == sender_id)
        )
        assert owner is not None
        return int(owner)

    async def lookup(self, sender_id: str, email: str | None, phone: str | None) -> dict[str, Any] | None:
        async with self.db.read() as session:
            cid = await self._conversation_contact(session, sender_id)
            if cid is None and not _hub_contact_id(sender_id)[0]:
                # A conversation of Rasa's own may find the customer by the
                # address they typed (a documented feature). Reading only:
                # nothing links the conversation to them, and the writes
                # never follow the contact id slot this answer sets.
                cid = await self._contact_by_address(session, email, phone)
            if cid is None:
                return None
            contact = await session.get(Contact, cid)
            assert contact is not None
            idents = (await session.scalars(select(Identity).where(Identity.contact_id == cid))).all()
            recent = (
                await session.scalars(
                    select(Message)
                    .where(Message.contact_id == cid, Message.private.is_(False))
                    .order_by(Message.id.desc())
                    .limit(10)
                )
            ).all()
            open_tickets = (
                await session.scalars(
                    select(Ticket.id).where(Ticket.contact_id == cid, Ticket.status != TicketStatus.RESOLVED.value)
                )
            ).all()
        by_kind = {i.channel: i.address for i in idents}
        return {
            "hub_contact_id": cid,
            "hub_customer_name": contact.name,
            "hub_customer_email": by_kind.get(IdentityKind.EMAIL.value) or (contact.attributes or {}).get("email"),
            "hub_customer_phone": by_kind.get(IdentityKind.PHONE.value) or (contact.attributes or {}).get("phone"),
            "hub_lifecycle_stage": contact.lifecycle_stage,
            "hub_lead_score": contact.lead_score,
            "hub_vip": is_vip(contact.attributes or {}, contact.tags or [], self.config.bot.vip_tag),
            "hub_open_tickets": len(open_tickets),
            "hub_recent_history": [f"[{m.channel}] {m.author}: {m.body[:200]}" for m in reversed(recent)],
        }

    async def update_lead(self, sender_id: str, values: dict[str, Any]) -> dict[str, Any]:
        clean: dict[str, Any] = {}
        for slot in self.qualification.slots:
            if slot.name in values:
                try:
                    clean[slot.name] = dialog.validate(slot, str(values[slot.name]), self.qualification.phone_region)
                except dialog.Invalid:
                    continue
        async with self.db.write() as session:
            cid = await self._conversation_contact(session, sender_id)
            created = cid is None
            if cid is None:
                if _hub_contact_id(sender_id)[0] or not clean or not sender_id or len(sender_id) > MAX_ADDRESS:
                    # A hub conversation's contact is the hub's to create; a
                    # request with nothing valid in it creates nobody; and a
                    # conversation id the identities table cannot hold would
                    # get a new contact on every call.
                    return {CONTACT_SLOT: None}
                cid = await self._new_conversation_contact(session, sender_id, clean.get("name"))
            contact = await session.get(Contact, cid, with_for_update=True)
            assert contact is not None
            stored = contact.attributes or {}
            merged = {**stored, **clean}
            # As the hub's own dialog does: a score only goes up here (a merge
            # keeps the higher of two, whose answers this one may not have).
            points = max(dialog.score(self.qualification.rules, merged), contact.lead_score or 0)
            stage = _later_stage(contact.lifecycle_stage, dialog.stage_for(self.qualification, points))
            if created or merged != stored or (points, stage) != (contact.lead_score, contact.lifecycle_stage):
                await do_update_lead(session, contact, attributes=clean, score=points, stage=stage, actor="rasa")
            return {CONTACT_SLOT: contact.id, "hub_lead_score": points, "hub_lifecycle_stage": stage}

    async def handoff(self, sender_id: str, reason: str, transcript: Sequence[str]) -> dict[str, Any]:
        is_hub, _ = _hub_contact_id(sender_id)
        if is_hub:
            # The conversation runs through the hub's rasa backend, which hands
            # off on the action's custom payload together with Rasa's replies.
            async with self.db.read() as session:
                cid = await self._conversation_contact(session, sender_id)
            return {"handed_off": cid is not None}
        summary = "\n".join([f"Handoff from the Rasa assistant: {reason}.", *transcript])
        async with self.db.write() as session:
            # Not the contact id slot: a lookup by a typed address puts a
            # stranger's customer there, and their ticket is not this one's.
            cid = await self._conversation_contact(session, sender_id)
            if cid is None:
                return {"handed_off": False}
            ticket = await session.scalar(
                select(Ticket)
                .where(Ticket.contact_id == cid, Ticket.status != TicketStatus.RESOLVED.value)
                .order_by(Ticket.last_message_at.desc())
                .limit(1)
                .with_for_update()
            )
            if ticket is None:
                return {"handed_off": False}
            if ticket.status == TicketStatus.SNOOZED.value:
                # do_handoff opens only a pending ticket; a snoozed one would
                # stay asleep for days while the customer waits for a person.
                # Waiting for a person from now, unless one already had them waiting.
                if not ticket.bot_silenced or ticket.waiting_since is None:
                    ticket.waiting_since = utcnow()
                await do_set_status(session, ticket, status=TicketStatus.OPEN, actor="rasa")
            done = await do_handoff(session, ticket, reason=reason[:MAX_REASON], summary=summary, actor="rasa")
            # Rasa sends a call again when the answer was lost: a ticket that is
            # already with a person was handed off, by this call or that one.
            with_person = ticket.status == TicketStatus.OPEN.value and ticket.bot_silenced
            return {"handed_off": done or with_person, "ticket_id": ticket.id}


def _decoded(body: bytes, encoding: str | None) -> Any:
    # As rasa-sdk's webhook reads it (Rasa may deflate large trackers).
    return json.loads(zlib.decompress(body) if encoding == "deflate" else body)


def _action_name(call: Any) -> str | None:
    name = call.get("next_action") if isinstance(call, dict) else None
    return name if isinstance(name, str) else None


def _token_problem(request: Any, token: str) -> str | None:
    """Why the request does not carry the token, or None. Rasa sends the
    action_endpoint's ``token`` as ``?token=``; a proxy or an endpoint's
    ``headers`` may send it as a bearer token instead."""
    given = request.args.get("token")
    if given is None:
        scheme, _, credentials = (request.headers.get("Authorization") or "").partition(" ")
        given = credentials.strip() if scheme.lower() == "bearer" else None
    if given is None:
        return "this action server needs its token: set token in the action_endpoint of Rasa's endpoints.yml"
    if not hmac.compare_digest(given.encode(), token.encode()):
        return "the token is not this action server's"
    return None


def _is_json(request: Any) -> bool:
    kind = (request.headers.get("Content-Type") or "").partition(";")[0]
    return kind.strip().lower() == "application/json"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_app(config: HubConfig, port: DatabasePort | None = None) -> Any:
    from rasa_sdk.endpoint import create_app
    from sanic import response
    from sanic.exceptions import SanicException

    port = port or DatabasePort(config)
    executor = CheckedExecutor()
    executor.register_action(LookupCustomer(port))
    executor.register_action(UpdateLead(port, [s.name for s in config.bot.qualification.slots]))
    executor.register_action(Handoff(port))
    # rasa-sdk allows every origin by default: any page open in a browser on
    # this host could read customers. Rasa calls from a server, not a page.
    app = create_app(executor, cors_origins=None)
    token = config.bot.rasa.actions_token

    async def check_action_call(request: Any) -> Any:
        if token and request.name != HEALTH_ROUTE:
            problem = _token_problem(request, token)
            if problem is not None:
                return response.json(
                    {"error": problem, "action_name": None}, status=401, headers={"WWW-Authenticate": "Bearer"}
                )
        if request.name != WEBHOOK_ROUTE:
            return None
        if not _is_json(request):
            # A browser posts text/plain across origins without asking first;
            # Rasa always says application/json.
            body = {"error": "the body must be an action call as JSON (Content-Type: application/json)"}
            return response.json({**body, "action_name": None}, status=415)
        # rasa-sdk's webhook takes any JSON for an action call and answers what
        # is not one with a 500 that repeats the whole body; refused here with
        # the shape of its own 400 (an action rejecting a call).
        try:
            call = _decoded(request.body, request.headers.get("Content-Encoding"))
        except (ValueError, zlib.error, RecursionError):
            return response.json({"error": "the body is not JSON", "action_name": None}, status=400)
        problem = action_call_problem(call)
        if problem is not None:
            return response.json({"error": problem, "action_name": _action_name(call)}, status=400)
        # The webhook reads what was checked, not a second parse of the body.
        request.parsed_json = call
        return None

    def failed(request: Any, exc: Exception) -> Any:
        # Instead of rasa-sdk's handler, which answers with the request body:
        # a tracker holds the customer's messages and slots.
        if isinstance(exc, SanicException):
            return response.json({"error": str(exc)}, status=exc.status_code)
        name = _action_name(request.parsed_json)
        log.error("rasa action %s failed", name, exc_info=exc)
        body = {"error": "the action failed; the action server's log says why", "action_name": name}
        return response.json(body, status=500)

    app.register_middleware(check_action_call, "request")
    app.error_handler.add(Exception, failed, route_names=[WEBHOOK_ROUTE])

    async def _close(*_: Any) -> None:
        await port.close()

    app.after_server_stop(_close)

    return app


def serve_rasa_actions(cfg: HubConfig, host: str | None, port: int | None) -> None:
    """Run the rasa-sdk action server with the hub's actions (``crm-hub rasa-actions``)."""
    # Imported here: hub.cli is the command line that runs this, loaded already.
    from hub.cli import schema_problem

    # As serve does: a database never migrated stops the start, not every
    # action call afterwards (and connecting would create an empty file).
    host = host or cfg.bot.rasa.actions_host
    port = cfg.bot.rasa.actions_port if port is None else port
    if not cfg.bot.rasa.actions_token and not _is_loopback(host):
        # Refused, not warned about: every customer's record would be open
        # to anyone who reaches the port, and a log line is read too late.
        raise click.ClickException(
            f"rasa-actions on {host} (not loopback) needs a token: set {RASA_TOKEN_ENV} "
            "(bot.rasa.actions_token) and the same token in the action_endpoint of Rasa's endpoints.yml"
        )
    problem = asyncio.run(schema_problem(cfg.database_url))
    if problem is not None:
        raise click.ClickException(problem)
    app = build_app(cfg)
    listening = False

    async def _listening(*_: Any) -> None:
        nonlocal listening
        listening = True
        click.echo(f"rasa-sdk action server on http://{host}:{port}/webhook", err=True)

    app.after_server_start(_listening)
    try:
        app.run(host=host, port=port, single_process=True, access_log=False, motd=False)
    except OSError as exc:
        # Nothing before the socket does I/O (the database is opened on first
        # use), so an OSError before listening is the bind.
        if listening:
            raise
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc.strerror or exc)
        raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from exc
