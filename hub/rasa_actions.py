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
from hub.core import IdentityKind, TicketStatus
from storage.db import Database
from storage.models import Contact, Identity, Message, Ticket

_HUB_SENDER = re.compile(r"^hub-contact-(\d+)$")


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

    async def _contact_id(self, session: Any, sender_id: str, email: str | None, phone: str | None) -> int | None:
        m = _HUB_SENDER.match(sender_id or "")
        if m:
            cid = int(m.group(1))
            return cid if await session.get(Contact, cid) is not None else None
        for kind, address in ((IdentityKind.EMAIL, email), (IdentityKind.PHONE, phone), (None, sender_id)):
            if not address:
                continue
            stmt = select(Identity.contact_id).where(
                Identity.address == str(address).strip().lower()
                if kind is IdentityKind.EMAIL
                else Identity.address == str(address)
            )
            if kind is not None:
                stmt = stmt.where(Identity.channel == kind.value)
            found = await session.scalar(stmt.limit(1))
            if found is not None:
                return int(found)
        return None

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
            cid = await self._contact_id(session, sender_id, clean.get("email"), clean.get("phone"))
            if cid is None:
                contact = Contact(name=clean.get("name"), attributes={}, tags=[], lead_score=0)
                session.add(contact)
                await session.flush()
            else:
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
    executor.register_action(UpdateLead(port, [s.name for s in config.bot.qualification.slots]))
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
