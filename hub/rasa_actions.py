"""``crm-hub rasa-actions``: a rasa-sdk action server (Sanic, as rasa-sdk
ships it) whose actions read and write the hub's database through the same
actions the hub uses. Point a Rasa assistant's ``endpoints.yml`` at it:
``action_endpoint: {url: "http://127.0.0.1:5055/webhook"}``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import click
from sqlalchemy import select

from bots import dialog
from bots.rasa_actions import Handoff, LookupCustomer, UpdateLead
from hub.actions import do_handoff
from hub.bot_actions import do_update_lead
from hub.config import HubConfig, QualificationConfig
from hub.core import IdentityKind, TicketStatus, utcnow
from storage.db import Database
from storage.ingest import dialect_insert
from storage.models import Contact, Identity, Message, Ticket

_HUB_SENDER = re.compile(r"^hub-contact-(\d+)\Z")

# The slot the actions put the hub's contact id in. action_hub_update_lead
# reads it back, so every call of one Rasa conversation updates the contact
# its first call found or created.
CONTACT_SLOT = "hub_contact_id"
# The identity of a Rasa conversation (its sender id) that reached the hub
# only through these actions, so that a later call without the contact id
# slot, or action_hub_lookup_customer, finds the same contact.
RASA_IDENTITY = IdentityKind.RASA.value
# Longest address the identities table stores.
MAX_ADDRESS = 512
# Merges form chains (A into B, later B into C); a cycle would be a bug, not a reason to loop.
MAX_MERGE_HOPS = 10


def _as_contact_id(value: Any) -> int | None:
    """A contact id from a slot (Rasa keeps what the action set: an int, or
    a float or string after a round trip through a tracker store)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value.strip())
    return None


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

    async def _contact_id(
        self, session: Any, sender_id: str, email: str | None, phone: str | None, known: Any = None
    ) -> int | None:
        m = _HUB_SENDER.match(sender_id or "")
        if m:
            return await _current_contact(session, int(m.group(1)))
        # The contact an earlier call of this conversation returned.
        cid = _as_contact_id(known)
        if cid is not None and (cid := await _current_contact(session, cid)) is not None:
            return cid
        candidates: tuple[tuple[str | None, str | None], ...] = (
            (IdentityKind.EMAIL.value, str(email).strip().lower() if email else None),
            (IdentityKind.PHONE.value, phone),
            (RASA_IDENTITY, sender_id),
            # Rasa's own channels may use an address the hub knows as the
            # conversation id (a phone number, a Telegram chat).
            (None, sender_id),
        )
        for channel, address in candidates:
            if not address:
                continue
            stmt = select(Identity.contact_id).where(Identity.address == str(address))
            if channel is not None:
                stmt = stmt.where(Identity.channel == channel)
            found = await session.scalar(stmt.limit(1))
            if found is not None:
                return await _current_contact(session, int(found))
        return None

    async def _sender_contact(self, session: Any, sender_id: str, contact_id: int | None, name: str | None) -> int:
        """``contact_id`` (a new contact if None) with the conversation's
        identity; if another call of the conversation gave it to a contact
        first, that contact."""
        created: Contact | None = None
        if contact_id is None:
            created = Contact(name=name, attributes={}, tags=[], lead_score=0)
            session.add(created)
            await session.flush()
            contact_id = int(created.id)
        if not sender_id or len(sender_id) > MAX_ADDRESS or _HUB_SENDER.match(sender_id):
            # The hub's own conversations name their contact already; an
            # overlong id cannot be stored (the contact id slot still works).
            return contact_id
        won = await session.scalar(
            dialect_insert(session, Identity)
            .values(contact_id=contact_id, channel=RASA_IDENTITY, address=sender_id, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["channel", "address"])
            .returning(Identity.contact_id)
        )
        if won is not None or created is None:
            # Ours, or the contact was found another way: it stays the one
            # this call updates (the identity keeps pointing where it did).
            return int(contact_id)
        # A call of the same conversation at the same moment created its contact first.
        await session.delete(created)
        await session.flush()
        owner = await session.scalar(
            select(Identity.contact_id).where(Identity.channel == RASA_IDENTITY, Identity.address == sender_id)
        )
        assert owner is not None
        return int(owner)

    async def lookup(self, sender_id: str, email: str | None, phone: str | None) -> dict[str, Any] | None:
        async with self.db.read() as session:
            cid = await self._contact_id(session, sender_id, email, phone)
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
            "hub_vip": self.config.bot.vip_tag in (contact.tags or []) or (contact.attributes or {}).get("vip") is True,
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
            cid = await self._contact_id(
                session, sender_id, clean.get("email"), clean.get("phone"), values.get(CONTACT_SLOT)
            )
            cid = await self._sender_contact(session, sender_id, cid, clean.get("name"))
            found = await session.get(Contact, cid, with_for_update=True)
            assert found is not None
            contact = found
            merged = {**(contact.attributes or {}), **clean}
            points = dialog.score(self.qualification.rules, merged)
            stage = dialog.later_stage(contact.lifecycle_stage, dialog.stage_for(self.qualification, points))
            await do_update_lead(session, contact, attributes=clean, score=points, stage=stage, actor="rasa")
            return {"hub_contact_id": contact.id, "hub_lead_score": points, "hub_lifecycle_stage": stage}

    async def handoff(self, sender_id: str, reason: str, transcript: Sequence[str]) -> dict[str, Any]:
        if _HUB_SENDER.match(sender_id or ""):
            # The conversation runs through the hub's rasa backend, which hands
            # off on the action's custom payload together with Rasa's replies.
            return {"handed_off": True}
        summary = "\n".join([f"Handoff from the Rasa assistant: {reason}.", *transcript])
        async with self.db.write() as session:
            cid = await self._contact_id(session, sender_id, None, None)
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
            done = await do_handoff(session, ticket, reason=reason[:64], summary=summary, actor="rasa")
            return {"handed_off": done, "ticket_id": ticket.id}


def build_app(config: HubConfig, port: DatabasePort | None = None) -> Any:
    from rasa_sdk.endpoint import create_app
    from rasa_sdk.executor import ActionExecutor

    port = port or DatabasePort(config)
    executor = ActionExecutor()
    executor.register_action(LookupCustomer(port))
    # The contact id slot is read with the qualification slots, so that the
    # action's later calls update the contact its first call created.
    executor.register_action(UpdateLead(port, [*(s.name for s in config.bot.qualification.slots), CONTACT_SLOT]))
    executor.register_action(Handoff(port))
    app = create_app(executor)

    async def _close(*_: Any) -> None:
        await port.close()

    app.after_server_stop(_close)

    return app


def serve_rasa_actions(cfg: HubConfig, host: str | None, port: int | None) -> None:
    """Run the rasa-sdk action server with the hub's actions (``crm-hub rasa-actions``)."""
    app = build_app(cfg)
    host = host or cfg.bot.rasa.actions_host
    port = cfg.bot.rasa.actions_port if port is None else port
    click.echo(f"rasa-sdk action server on http://{host}:{port}/webhook", err=True)
    app.run(host=host, port=port, single_process=True, access_log=False, motd=False)
