"""Routing, applied: the worker steps that route tickets, drain team queues,
keep SLA clocks and run automation rules, and the sweeper that fires what is
due by time (SLA warnings and breaches, presence timeouts, idle rules,
snoozes that end).

Decisions come from the pure functions in ``routing/``; this module loads
their snapshot and applies them in one transaction. Capacity is exact across
worker processes on PostgreSQL: the ticket row is locked (a ticket is never
assigned twice), then the chosen agent's row (every assignment to one agent
is serialized, and their open tickets are counted after the lock, so nobody
ends up over capacity); queue heads are claimed with ``FOR UPDATE SKIP
LOCKED`` so several workers drain one queue without waiting on each other.
Locks are always taken in the order ticket -> team cursor -> agent. On SQLite
the single writer serializes the same transactions.

Everything here is idempotent, because the stream delivers at least once and
several sweepers run at once: decisions re-read the ticket under its lock,
SLA firings are keyed by their deadline, automation runs by (rule, ticket,
occasion).

SLA clocks stop while a ticket is snoozed: however it goes to sleep or wakes
(an agent, an automation, the snooze sweep, a customer's message in ingest),
the step that sees it next under the ticket's lock pauses or resumes them
(:meth:`Router._settle_pause_of`), from the ticket's current status, so a late or
repeated event cannot pause an awake ticket.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub import codec
from hub.actions import (
    audit,
    clean_agent_name,
    do_assign,
    do_get_or_create_team,
    do_post_message,
    do_set_labels,
    do_set_status,
    record_ticket_event,
    ticket_labels,
)
from hub.core import PRIORITY_RANK, Author, Presence, Priority, Role, TicketEventKind, TicketStatus, utcnow
from hub.errors import Conflict, HubError, ValidationFailed
from hub.stream.base import Event
from hub.text import detect_language
from routing import sla
from routing.automation import CompiledAutomation, compile_automation, matching
from routing.decide import (
    CompiledRule,
    Decision,
    RoutingSnapshot,
    TeamState,
    TicketSnapshot,
    choose_team,
    decide,
    eligible_agents,
    team_calendars,
)
from routing.hours import BusinessCalendar, CalendarError
from routing.match import ContactFacts, MatchContext
from routing.settings import (
    MAX_CAPACITY,
    AutomationAction,
    AutomationRule,
    AutoResolve,
    Escalation,
    RoutingConfig,
    RoutingRule,
    SlaPolicy,
    check_rule_names,
    check_rule_references,
)
from routing.store import (
    after_key,
    agent_states,
    last_inbound_text,
    last_owner,
    lock_agent,
    lock_cursor,
    open_count,
    queue_query,
    queue_stats,
    ticket_conditions,
)
from storage.db import OUTBOX_WRITTEN_KEY, Database
from storage.ingest import TOPIC_EVENTS, add_outbox, dialect_insert
from storage.models import (
    Agent,
    ApiToken,
    AutomationRun,
    BotTurn,
    Contact,
    Inbox,
    RoutingCursor,
    RoutingDocument,
    Team,
    TeamMember,
    Ticket,
    TicketCycle,
    TicketEventRow,
)
from storage.views import agent_view, iso, ticket_view

log = logging.getLogger(__name__)

ROUTER = "router"
RULES_DOC = "rules"
AUTOMATION_DOC = "automation"
# Agent events on the stream (not ticket events): presence and routing settings.
AGENT_PRESENCE = "agent.presence"
AGENT_UPDATED = "agent.updated"
# How often a worker checks whether an admin changed the rules in another process.
_STATE_TTL = 2.0
# Queue tickets one drain pass tries (the rest wait for the next trigger or sweep).
_DRAIN_SCAN = 500
# Tickets one idle rule looks at per sweep (the next sweep goes on from there).
_IDLE_SCAN = 2_000

_Compiled = TypeVar("_Compiled")


@dataclass(frozen=True, slots=True)
class InboxInfo:
    id: int
    bot_enabled: bool
    default_team_id: int | None


@dataclass(frozen=True, slots=True)
class AvailableAgent:
    """An agent who could take a ticket of a channel now (for the phone IVR)."""

    id: int
    name: str
    email: str
    phone: str | None
    open_tickets: int
    free: int


@dataclass
class RoutingState:
    """Everything that is the same for every decision until settings change."""

    rules: tuple[CompiledRule, ...]
    automation: tuple[CompiledAutomation, ...]
    teams: dict[int, TeamState]
    team_ids: dict[str, int]
    calendars: dict[str, BusinessCalendar]
    policies: dict[str, SlaPolicy]
    default_team_id: int | None
    versions: tuple[int, ...]
    loaded_at: float = field(default_factory=time.monotonic)

    def calendar_of(self, team_id: int | None, default: str | None) -> BusinessCalendar | None:
        team = self.teams.get(team_id) if team_id is not None else None
        name = team.calendar if team is not None and team.calendar else default
        return self.calendars.get(name) if name else None


def _digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _json_body(items: Sequence[RoutingRule] | Sequence[AutomationRule]) -> list[Any]:
    body = [i.model_dump(mode="json", exclude_defaults=True) for i in items]
    try:
        codec.dumps(body)
    except TypeError as exc:  # orjson's: an integer beyond 64 bits, a lone surrogate
        raise ValueError(f"the rules cannot be stored as JSON: {exc}") from exc
    return body


def _compile_rules(body: list[Any]) -> tuple[CompiledRule, ...]:
    return tuple(CompiledRule.of(RoutingRule.model_validate(r)) for r in body)


def _compile_automation(body: list[Any], auto_resolve: AutoResolve) -> tuple[CompiledAutomation, ...]:
    return compile_automation([AutomationRule.model_validate(r) for r in body], auto_resolve)


class Router:
    def __init__(self, db: Database, config: RoutingConfig | None = None, *, vip_tag: str = "vip") -> None:
        self.db = db
        self.config = config or RoutingConfig()
        self.vip_tag = vip_tag
        self.calendars = {name: c.build() for name, c in self.config.calendars.items()}
        self.default_capacity = {str(k): v for k, v in self.config.default_capacity.items()}
        self._inboxes: dict[str, InboxInfo] = {}
        # Team name -> its lead's email (agents are stored with lower-case emails).
        self._leads = {t.name: t.lead.strip().lower() for t in self.config.teams if t.lead}
        self._state: RoutingState | None = None
        self._state_lock = asyncio.Lock()
        # Idle rule name -> the (last_message_at, id) its sweep stopped after.
        self._idle_resume: dict[str, tuple[datetime, int]] = {}

    # --- settings -----------------------------------------------------------

    async def setup(self) -> None:
        """Teams named in the config exist; the rule documents exist, seeded
        from config.yaml (re-seeded when the file changed, unless an admin
        edited them through the API since)."""
        names = {t.name for t in self.config.teams}
        if self.config.default_team:
            names.add(self.config.default_team)
        names |= _teams_named(self.config.rules, self.config.automation)
        names |= {e.team for p in self.config.sla_policies.values() for e in (p.on_warning, p.on_breach) if e.team}
        async with self.db.write() as session:
            for name in sorted(names):
                # Processes starting together all do this: the unique name decides.
                created = await session.scalar(
                    dialect_insert(session, Team)
                    .values(name=name, created_at=utcnow())
                    .on_conflict_do_nothing(index_elements=["name"])
                    .returning(Team.id)
                )
                if created is not None:
                    await audit(session, "system", "team.created", "team", created, {"name": name})
            for key, body in self._config_bodies().items():
                digest = _digest(body)
                doc = await session.get(RoutingDocument, key, with_for_update=True)
                if doc is None:
                    await session.execute(
                        dialect_insert(session, RoutingDocument)
                        .values(key=key, version=1, source="config", digest=digest, body=body, updated_at=utcnow())
                        .on_conflict_do_nothing(index_elements=["key"])
                    )
                elif doc.source == "config" and doc.digest != digest:
                    doc.body, doc.digest, doc.version, doc.updated_at = body, digest, doc.version + 1, utcnow()
                    await audit(session, "system", "routing.reseeded", "routing", None, {"document": key})
                elif doc.source == "api" and doc.digest != digest:
                    log.warning(
                        "routing %s in config.yaml differ from the ones an admin saved through the API; "
                        "the API's are used (PUT them again, or DELETE /api/v1/routing/%s to use config.yaml's)",
                        key,
                        key,
                    )
        self._state = None

    def _config_bodies(self) -> dict[str, list[Any]]:
        """config.yaml's rule documents, as they are stored."""
        return {
            RULES_DOC: [r.model_dump(mode="json", exclude_defaults=True) for r in self.config.rules],
            AUTOMATION_DOC: [a.model_dump(mode="json", exclude_defaults=True) for a in self.config.automation],
        }

    async def reset_rules(self, key: str, *, actor: str) -> None:
        """Drop what an admin saved through the API for ``key`` (rules or
        automation): config.yaml's apply again, now and at every start-up
        until an admin saves others. Without it, once saved through the API a
        document would ignore config.yaml for ever."""
        body = self._config_bodies()[key]
        async with self.db.write() as session:
            doc = await session.get(RoutingDocument, key, with_for_update=True)
            if doc is None:
                doc = RoutingDocument(key=key, version=0, source="config", digest="", body=[])
                session.add(doc)
            was = doc.source
            # A new version even when nothing changes: workers reload on the version.
            doc.body, doc.version, doc.source = body, doc.version + 1, "config"
            doc.digest, doc.updated_at, doc.updated_by = _digest(body), utcnow(), actor
            await audit(
                session,
                actor,
                f"routing.{key}.reset",
                "routing",
                None,
                {"version": doc.version, "from": was, "items": body},
            )
        await self.state(fresh=True)

    async def state(self, *, fresh: bool = False) -> RoutingState:
        current = self._state
        if current is not None and not fresh and time.monotonic() - current.loaded_at < _STATE_TTL:
            return current
        async with self._state_lock:
            # Whoever waited for the lock while another caller reloaded uses that.
            latest = self._state
            if latest is not None and not fresh and time.monotonic() - latest.loaded_at < _STATE_TTL:
                return latest
            async with self.db.read() as session:
                docs = {d.key: d for d in (await session.scalars(select(RoutingDocument))).all()}
                teams = (await session.scalars(select(Team))).all()
            versions = tuple(docs[k].version if k in docs else 0 for k in (RULES_DOC, AUTOMATION_DOC))
            if latest is not None and latest.versions == versions and len(latest.teams) == len(teams):
                latest.loaded_at = time.monotonic()
                return latest
            settings = {t.name: t for t in self.config.teams}
            team_states: dict[int, TeamState] = {}
            for t in teams:
                s = settings.get(t.name)
                # The team's lead is looked up when an escalation needs them
                # (:meth:`_active_lead`), so agents added or deactivated since count.
                team_states[t.id] = TeamState(
                    id=t.id,
                    name=t.name,
                    strategy=s.strategy if s else "balanced",
                    auto_assign=s.auto_assign if s else True,
                    calendar=s.calendar if s else None,
                    sla=s.sla if s else None,
                )
            rules = self._loaded(
                docs.get(RULES_DOC),
                _compile_rules,
                latest.rules if latest is not None else None,
                lambda: tuple(CompiledRule.of(r) for r in self.config.rules),
            )
            autos = self._loaded(
                docs.get(AUTOMATION_DOC),
                lambda body: _compile_automation(body, self.config.auto_resolve),
                latest.automation if latest is not None else None,
                lambda: compile_automation(self.config.automation, self.config.auto_resolve),
            )
            team_ids = {t.name: t.id for t in teams}
            self._state = RoutingState(
                rules=rules,
                automation=autos,
                teams=team_states,
                team_ids=team_ids,
                calendars=self.calendars,
                policies=dict(self.config.sla_policies),
                default_team_id=team_ids.get(self.config.default_team) if self.config.default_team else None,
                # The stored versions even when one could not be loaded: it is
                # not tried (and logged) again until an admin saves another.
                versions=versions,
            )
            return self._state

    @staticmethod
    def _loaded(
        doc: RoutingDocument | None,
        load: Callable[[list[Any]], _Compiled],
        last_good: _Compiled | None,
        from_config: Callable[[], _Compiled],
    ) -> _Compiled:
        """A stored rule document, compiled. One that cannot be loaded (saved by
        an older hub that checked less, or edited by hand) must not stop every
        worker's routing, automation and sweeps: the rules loaded before stay in
        use, or at start-up config.yaml's, and the error is logged."""
        if doc is None:
            return load([])
        try:
            return load(list(doc.body))
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the workers keep running
            if last_good is not None:
                log.error(
                    "routing %s version %s cannot be loaded, so the rules loaded before stay in use; "
                    "save valid ones through the API to replace it: %s",
                    doc.key,
                    doc.version,
                    exc,
                )
                return last_good
            log.critical(
                "routing %s version %s cannot be loaded, so config.yaml's are used instead until an admin "
                "saves valid ones through the API (or DELETEs these with it): %s",
                doc.key,
                doc.version,
                exc,
            )
            return from_config()

    async def documents(self) -> dict[str, dict[str, Any]]:
        async with self.db.read() as session:
            docs = {d.key: d for d in (await session.scalars(select(RoutingDocument))).all()}
        return {
            key: {
                "version": docs[key].version if key in docs else 0,
                "source": docs[key].source if key in docs else "config",
                "updated_at": iso(docs[key].updated_at) if key in docs else None,
                "updated_by": docs[key].updated_by if key in docs else None,
                "items": list(docs[key].body) if key in docs else [],
            }
            for key in (RULES_DOC, AUTOMATION_DOC)
        }

    async def save_rules(
        self,
        *,
        rules: list[RoutingRule] | None = None,
        automation: list[AutomationRule] | None = None,
        actor: str,
    ) -> None:
        """Replace the routing rules or the automation rules (validated by the
        caller's models); teams they name are created; every worker picks them
        up within seconds (the document's version changes)."""
        # As config.yaml's rules are checked; the API's models see one rule at a time.
        check_rule_names(rules or [], automation or [])
        check_rule_references(
            rules or [],
            automation or [],
            calendars=set(self.config.calendars),
            policies=set(self.config.sla_policies),
            calendar_fallback=self.config.has_fallback_calendar,
        )
        bodies = {
            key: _json_body(items)
            for key, items in ((RULES_DOC, rules), (AUTOMATION_DOC, automation))
            if items is not None
        }
        async with self.db.write() as session:
            for name in sorted(_teams_named(rules or [], automation or [])):
                await do_get_or_create_team(session, name, actor=actor)
            for key, body in bodies.items():
                doc = await session.get(RoutingDocument, key, with_for_update=True)
                if doc is None:
                    doc = RoutingDocument(key=key, version=0, source="api", digest="", body=[])
                    session.add(doc)
                doc.body, doc.version, doc.source = body, doc.version + 1, "api"
                doc.digest, doc.updated_at, doc.updated_by = _digest(body), utcnow(), actor
                await audit(
                    session, actor, f"routing.{key}.saved", "routing", None, {"version": doc.version, "items": body}
                )
            await session.flush()
            # Workers load what the database gives back, which is not always
            # what was written (the JSON encoder writes infinity as null): that
            # is what is checked, before the commit, so a document no worker
            # could load is refused (a ValueError: the API answers 422) and
            # nothing is saved.
            rows = await session.execute(
                select(RoutingDocument.key, RoutingDocument.body).where(RoutingDocument.key.in_(list(bodies)))
            )
            stored: dict[str, list[Any]] = {key: list(body) for key, body in rows.all()}
            try:
                if RULES_DOC in stored:
                    _compile_rules(stored[RULES_DOC])
                if AUTOMATION_DOC in stored:
                    _compile_automation(stored[AUTOMATION_DOC], self.config.auto_resolve)
            except ValueError as exc:
                raise ValueError(f"the rules would not load again as the database stores them: {exc}") from exc
        await self.state(fresh=True)

    async def _inbox(self, session: AsyncSession, inbox_id: int) -> InboxInfo:
        for info in self._inboxes.values():
            if info.id == inbox_id:
                return info
        row = await session.get(Inbox, inbox_id)
        assert row is not None
        info = InboxInfo(row.id, row.bot_enabled, row.default_team_id)
        self._inboxes[row.key] = info
        return info

    # --- worker steps ------------------------------------------------------

    async def on_received(self, event: Event) -> None:
        """A customer wrote: route the ticket (the bot first where enabled),
        restart the next-response clock, run automation."""
        ticket: dict[str, Any] = event.payload["ticket"]
        message: dict[str, Any] = event.payload["message"]
        created = bool(event.payload.get("ticket_created"))
        if ticket.get("sla_policy") and not created:
            # Ingest wakes a snoozed ticket without a status event of its own;
            # its clocks must run again (or, resolved before its snooze, start
            # a new cycle) before anything below adds a deadline.
            await self._settle_clocks(int(ticket["id"]))
        if await self._worth_routing(ticket, message.get("inbox") or "", created):
            view = await self.route(
                ticket["id"],
                text=message.get("body") or "",
                ticket_created=created,
                # Out-of-office and bulk mail go to people, never to the bot: two
                # automatic responders would answer each other forever.
                automatic=bool(message.get("auto_reply")),
            )
            if view is not None:
                event.payload["ticket"] = view
        if ticket.get("first_response_at") and ticket.get("status") == TicketStatus.OPEN.value:
            await self._customer_waiting(ticket["id"])
        marker = f"message:{message.get('id')}"
        text, automatic = message.get("body") or "", bool(message.get("auto_reply"))
        if created:
            await self.automate("ticket.created", ticket["id"], marker, text=text, automatic=automatic)
        await self.automate("message.received", ticket["id"], marker, text=text, automatic=automatic)

    async def _worth_routing(self, ticket: dict[str, Any], inbox_key: str, created: bool) -> bool:
        """Whether a customer's message can change who owns the ticket, decided
        from the event and cached settings, so the hot path of a conversation
        already owned (or with nothing configured to route it) costs no query."""
        if ticket.get("assignee_id") is not None or ticket.get("status") != TicketStatus.OPEN.value:
            return False
        if ticket.get("team_id") is not None:
            # In a queue already: the queue drains it; only a brand-new ticket
            # on a team's inbox still needs its first routing.
            return created or ticket.get("queued_at") is None
        inbox = self._inboxes.get(inbox_key)
        if inbox is None:
            async with self.db.read() as session:
                row = await session.scalar(select(Inbox).where(Inbox.key == inbox_key))
            if row is None:
                return True
            inbox = self._inboxes[inbox_key] = InboxInfo(row.id, row.bot_enabled, row.default_team_id)
        if created and (inbox.bot_enabled or self.config.default_sla is not None):
            return True
        state = await self.state()
        return bool(state.rules) or state.default_team_id is not None or inbox.default_team_id is not None

    async def on_handoff(self, event: Event) -> None:
        """The bot gave the ticket to humans: route it now, to the team it named
        if any (rules still set priority and labels), and start the SLA clock."""
        data = event.payload.get("data") or {}
        tid = int(event.payload["ticket"]["id"])
        topic = data.get("topic") or await self._bot_topic(tid)
        # A ticket resolved, then given back to the bot, opens here without a
        # status event: its new cycle starts as a reopening's would.
        await self._new_cycle(tid, reopened=False)
        view = await self.route(
            tid,
            text=str(data.get("text") or ""),
            topic=str(topic) if topic else None,
            team_id=data.get("team_id"),
        )
        if view is not None:
            event.payload["ticket"] = view

    async def _bot_topic(self, ticket_id: int) -> str | None:
        """What the customer was talking to the bot about: the id of the
        knowledge-base entry the bot matched last on this ticket (rules'
        ``when: {topic: [...]}``)."""
        async with self.db.read() as session:
            return await session.scalar(
                select(BotTurn.entry_key)
                .where(BotTurn.ticket_id == ticket_id, BotTurn.entry_key.is_not(None))
                .order_by(BotTurn.id.desc())
                .limit(1)
            )

    async def on_status_changed(self, event: Event) -> None:
        ticket = event.payload["ticket"]
        data = event.payload.get("data") or {}
        before, after = data.get("from"), data.get("to")
        tid = int(ticket["id"])
        if TicketStatus.SNOOZED.value in (before, after):
            await self._settle_pause(tid)
        if after == TicketStatus.RESOLVED.value:
            await self._close_cycle(tid)
        elif after == TicketStatus.OPEN.value:
            # Reopened straight, or through a snooze or the bot (resolved ->
            # snoozed -> open): either way its last cycle closed and a new one starts.
            await self._new_cycle(tid, reopened=before == TicketStatus.RESOLVED.value)
        if after == TicketStatus.OPEN.value and ticket.get("assignee_id") is None:
            await self.route(tid)
        if before == TicketStatus.OPEN.value and after != TicketStatus.OPEN.value and ticket.get("assignee_id"):
            # The agent holds one open ticket fewer: their teams' queues may move.
            await self.drain_for_agent(int(ticket["assignee_id"]))
        if not str(event.payload.get("actor", "")).startswith("automation:") and event.outbox_id:
            await self.automate("ticket.status_changed", tid, f"event:{event.outbox_id}")

    async def on_assigned(self, event: Event) -> None:
        data = event.payload.get("data") or {}
        before, after = data.get("from") or {}, data.get("to") or {}
        if before.get("assignee_id") and before.get("assignee_id") != after.get("assignee_id"):
            await self.drain_for_agent(int(before["assignee_id"]))
        if after.get("assignee_id") is None and after.get("team_id") is not None:
            # Given to a team without an agent: it joins that team's queue.
            released = before.get("assignee_id") is not None or before.get("team_id") != after.get("team_id")
            await self.route(int(event.payload["ticket"]["id"]), enqueue=True, released=released)

    async def on_message_created(self, event: Event) -> None:
        message = event.payload["message"]
        if (
            message.get("direction") == "out"
            and message.get("author") == Author.AGENT.value
            and not message.get("private")
        ):
            await self._agent_replied(int(message["ticket_id"]), datetime.fromisoformat(message["created_at"]))

    async def on_sla(self, event: Event) -> None:
        level = "sla.breach" if event.kind == TicketEventKind.SLA_BREACH.value else "sla.warning"
        data = event.payload.get("data") or {}
        await self.automate(level, int(event.payload["ticket"]["id"]), f"{data.get('target')}:{data.get('due_at')}")

    async def on_agent_event(self, event: Event) -> None:
        agent = event.payload.get("agent") or {}
        if agent.get("id") and agent.get("presence") == Presence.ONLINE.value:
            await self.drain_for_agent(int(agent["id"]))

    def subscribe(self, processor: Any) -> None:
        """Register the steps on an :class:`hub.workers.EventProcessor` (routing
        of new messages is its first step already)."""
        processor.subscribe(TicketEventKind.HANDOFF, self.on_handoff)
        processor.subscribe(TicketEventKind.STATUS_CHANGED, self.on_status_changed)
        processor.subscribe(TicketEventKind.ASSIGNED, self.on_assigned)
        processor.subscribe(TicketEventKind.MESSAGE_CREATED, self.on_message_created)
        processor.subscribe(TicketEventKind.SLA_WARNING, self.on_sla)
        processor.subscribe(TicketEventKind.SLA_BREACH, self.on_sla)
        processor.subscribe(AGENT_PRESENCE, self.on_agent_event)
        processor.subscribe(AGENT_UPDATED, self.on_agent_event)

    # --- routing one ticket -------------------------------------------------

    async def route(
        self,
        ticket_id: int,
        *,
        text: str = "",
        topic: str | None = None,
        ticket_created: bool = False,
        team_id: int | None = None,
        enqueue: bool = False,
        released: bool = False,
        automatic: bool = False,
    ) -> dict[str, Any] | None:
        """Decide and apply for one ticket; returns its new view when anything
        changed. ``team_id``: a team asked for (handoff). ``enqueue``: the
        ticket was given to a team without an agent, and is served in its
        queue's order; ``released``: it has just come from an agent or another
        team, which is news even when it was marked queued already."""
        state = await self.state()
        drain_team: int | None = None
        async with self.db.write() as session:
            ticket = await _locked_ticket(session, ticket_id)
            if ticket is None:
                return None
            # Changes are written once, at the end: not before every read.
            session.autoflush = False
            if team_id is not None and ticket.team_id is None and ticket.assignee_id is None:
                ticket.team_id = int(team_id)
            snap = await self._snapshot_of(session, ticket, text=text, topic=topic, created=ticket_created)
            if automatic:
                snap = replace(snap, bot_enabled=False)
            decision = await self._decide(session, snap, ticket, state)
            # Not a ticket resolved or asleep (it joins the queue when it opens),
            # nor one an agent holds (a late event after the drain gave it away).
            joins = (
                enqueue
                and ticket.assignee_id is None
                and ticket.team_id is not None
                and ticket.status == TicketStatus.OPEN.value
            )
            if joins and decision.assignee_id is not None and await self._waits_behind(session, ticket):
                # Tickets released together (an agent deactivated) each run this
                # at once, in any order: the drain, not the first to run, decides
                # who gets the free place.
                decision = replace(
                    decision,
                    assignee_id=None,
                    alternatives=(),
                    sticky=False,
                    reason=f"{decision.reason}; tickets waiting before it are served first",
                )
            if joins and decision.assignee_id is None:
                decision = replace(decision, queued=True)
                drain_team = ticket.team_id
            if not decision.changes_anything:
                if self._clock_due(ticket):
                    # Nobody to route to, but the default SLA still runs for the shared inbox.
                    await self._start_cycle(session, ticket, state, start=ticket.waiting_since or ticket.created_at)
                return None
            if (
                decision.queued
                and ticket.queued_at is not None
                # Queued before it reached humans (an automation's assign_team,
                # perhaps while the bot held it): this is its first routing, and
                # its SLA clock starts now.
                and ticket.cycle_started_at is not None
                and decision.team_id in (None, ticket.team_id)
                and decision.priority is None
                and not decision.labels
                and not decision.skills
                and not released
            ):
                view = None  # still waiting in the same queue: nothing new to tell
            else:
                view = await self._apply(session, ticket, snap, decision, state)
            if decision.assignee_id is not None and ticket.assignee_id is None:
                # The chosen agent filled up meanwhile: someone else may have room.
                drain_team = ticket.team_id
        if drain_team is not None:
            await self.drain(drain_team)
        return view

    @staticmethod
    async def _waits_behind(session: AsyncSession, ticket: Ticket) -> bool:
        """Whether another ticket of the same channel heads the ticket's team
        queue (by priority, then the longest wait)."""
        assert ticket.team_id is not None
        head = await session.scalar(
            queue_query(ticket.team_id, limit=1, skip_locked=False)
            .where(Ticket.channel == ticket.channel)
            .with_only_columns(Ticket.id)
        )
        return head is not None and head != ticket.id

    async def _snapshot_of(
        self, session: AsyncSession, ticket: Ticket, *, text: str, topic: str | None, created: bool
    ) -> TicketSnapshot:
        inbox = await self._inbox(session, ticket.inbox_id)
        contact = await session.get(Contact, ticket.contact_id)
        labels = await ticket_labels(session, ticket.id)
        first = ticket.cycle_started_at is None
        if not text and first:
            # Routed later than its message (a handoff): rules read the customer's words.
            text = await last_inbound_text(session, ticket.id)
        language = detect_language(text) if text else None
        if language is not None and ticket.language != language and ticket.assignee_id is None:
            ticket.language = language
        inbox_key = next((k for k, v in self._inboxes.items() if v.id == ticket.inbox_id), "")
        return TicketSnapshot(
            id=ticket.id,
            status=TicketStatus(ticket.status),
            channel=ticket.channel,
            inbox=inbox_key,
            assignee_id=ticket.assignee_id,
            team_id=ticket.team_id,
            ticket_created=created,
            bot_enabled=inbox.bot_enabled,
            bot_silenced=ticket.bot_silenced,
            priority=Priority(ticket.priority),
            labels=frozenset(labels),
            text=text,
            language=language or ticket.language,
            topic=topic,
            contact_id=ticket.contact_id,
            contact=ContactFacts(
                attributes=dict(contact.attributes or {}) if contact else {},
                tags=frozenset(str(t) for t in (contact.tags or [])) if contact else frozenset(),
                lifecycle_stage=contact.lifecycle_stage if contact else None,
                segment=contact.segment if contact else None,
                vip_tag=self.vip_tag,
            ),
            skills=frozenset(str(s) for s in ticket.skills or []),
            inbox_default_team_id=inbox.default_team_id,
            first_routing=first,
        )

    def _base(self, state: RoutingState, now: datetime) -> RoutingSnapshot:
        return RoutingSnapshot(
            now=now,
            rules=state.rules,
            teams=state.teams,
            team_ids=state.team_ids,
            sticky_window=timedelta(hours=self.config.sticky_window_hours),
            default_team_id=state.default_team_id,
            default_capacity=self.default_capacity,
            calendars=state.calendars,
            default_calendar=self.config.default_calendar,
            default_sla=self.config.default_sla,
        )

    async def _decide(
        self, session: AsyncSession, snap: TicketSnapshot, ticket: Ticket, state: RoutingState
    ) -> Decision:
        now = utcnow()
        base = self._base(state, now)
        if snap.assignee_id is not None or snap.status is not TicketStatus.OPEN:
            return decide(snap, base)
        team_id = choose_team(snap, base).team_id
        if team_id is None:
            return decide(snap, base)
        sticky = await last_owner(session, ticket.contact_id, ticket.id, base.sticky_window, now)
        # Before the agents: their load is then read after any routing that
        # moved the cursor has committed.
        cursor = await self._cursors(session, state, team_id)
        agents = await agent_states(session, team_ids=[team_id], agent_ids=[sticky.agent_id] if sticky else [])
        return decide(snap, replace(base, agents=agents, cursors=cursor, sticky=sticky))

    def _clock_due(self, ticket: Ticket) -> bool:
        """An open ticket with humans to answer it and no SLA cycle yet, under
        a policy: the default, or the one a rule gave it (in the shared inbox too)."""
        return (
            (self.config.default_sla is not None or ticket.sla_policy is not None)
            and ticket.status == TicketStatus.OPEN.value
            and ticket.cycle_started_at is None
        )

    @staticmethod
    async def _cursors(session: AsyncSession, state: RoutingState, team_id: int) -> dict[int, int]:
        """The team's round-robin cursor, locked until the transaction ends:
        whose turn it is is decided on the value the last routing committed.
        Read without the lock, concurrent routings in several workers all saw
        the same cursor and gave the same agent a ticket each."""
        team = state.teams.get(team_id)
        if team is None or team.strategy != "round_robin":
            return {}  # only round robin has a cursor
        after = await lock_cursor(session, team_id)
        return {team_id: after} if after is not None else {}

    async def _apply(
        self,
        session: AsyncSession,
        ticket: Ticket,
        snap: TicketSnapshot,
        decision: Decision,
        state: RoutingState,
    ) -> dict[str, Any] | None:
        now = utcnow()
        if decision.status is not None:
            ticket.status = decision.status.value
        if decision.team_id is not None:
            ticket.team_id = decision.team_id
        if decision.priority is not None:
            ticket.priority = decision.priority.value
        if decision.skills:
            ticket.skills = list(decision.skills)
        if decision.labels:
            await do_set_labels(session, ticket, sorted(set(snap.labels) | set(decision.labels)), actor=ROUTER)
        if decision.sla and ticket.sla_policy is None:
            ticket.sla_policy = decision.sla
        agent_id = await self._reserve(session, ticket, decision, state)
        if agent_id is not None:
            ticket.assignee_id = agent_id
            ticket.queued_at = None
            await session.execute(update(Agent).where(Agent.id == agent_id).values(last_assigned_at=now))
            team = state.teams.get(ticket.team_id) if ticket.team_id is not None else None
            # A returning customer's agent took no turn: the cursor stays, or
            # the agent after them would lose theirs.
            sticky = decision.sticky and agent_id == decision.assignee_id
            if team is not None and team.strategy == "round_robin" and not sticky:
                await session.execute(
                    update(RoutingCursor)
                    .where(RoutingCursor.team_id == team.id)
                    .values(agent_id=agent_id, updated_at=now)
                )
        elif (
            ticket.team_id is not None
            and ticket.assignee_id is None
            and ticket.status == TicketStatus.OPEN.value
            and ticket.queued_at is None
        ):
            ticket.queued_at = ticket.waiting_since or now
        if self._clock_due(ticket) or (
            ticket.status == TicketStatus.OPEN.value and ticket.team_id is not None and ticket.cycle_started_at is None
        ):
            await self._start_cycle(session, ticket, state, start=ticket.waiting_since or ticket.created_at)
        await session.flush()
        data: dict[str, Any] = {
            "reason": decision.reason
            if agent_id is not None or decision.assignee_id is None
            else f"{decision.reason}, but the chosen agents were busy or full: queued",
            "rule": decision.rule,
            "status": ticket.status,
            "team_id": ticket.team_id,
            "assignee_id": ticket.assignee_id,
            "priority": ticket.priority,
            "labels": list(decision.labels),
            "queued": ticket.queued_at is not None,
            "sticky": decision.sticky and agent_id == decision.assignee_id,
        }
        await record_ticket_event(session, ticket, TicketEventKind.ROUTED, ROUTER, data)
        await audit(session, ROUTER, "ticket.routed", "ticket", ticket.id, data)
        return ticket_view(ticket, sorted(set(snap.labels) | set(decision.labels)))

    async def _reserve(
        self, session: AsyncSession, ticket: Ticket, decision: Decision, state: RoutingState
    ) -> int | None:
        """Lock an agent and check, under the lock, that they still have room.
        The chosen agent first, then the next best, each with SKIP LOCKED: an
        agent another worker is assigning to right now is passed over instead
        of waited for (never waiting while holding a lock cannot deadlock).
        When every candidate was busy, wait for the first, holding nothing.
        None: the ticket goes to the queue, and the caller drains it."""
        if decision.assignee_id is None:
            return None
        team = state.teams.get(ticket.team_id) if ticket.team_id is not None else None
        if team is not None and team.strategy == "round_robin":
            # Held already when the decision read it (_cursors); taken here too
            # so that no assignment moves the cursor without holding it.
            await lock_cursor(session, team.id)
        candidates = (decision.assignee_id, *decision.alternatives)
        skip = not self.db.is_sqlite
        held = False
        for agent_id in candidates:
            agent = await lock_agent(session, agent_id, skip_locked=skip)
            if agent is None:
                continue
            held = True
            if self._available(agent) and await open_count(session, agent.id, ticket.channel) < self._limit(
                agent, ticket.channel
            ):
                return agent.id
        if not held:
            agent = await lock_agent(session, candidates[0])
            if (
                agent is not None
                and self._available(agent)
                and await open_count(session, agent.id, ticket.channel) < self._limit(agent, ticket.channel)
            ):
                return agent.id
        return None

    def _limit(self, agent: Agent, channel: str) -> int:
        return int((agent.capacity or {}).get(channel, self.default_capacity.get(channel, 0)))

    @staticmethod
    def _available(agent: Agent) -> bool:
        return agent.active and agent.presence == Presence.ONLINE.value

    # --- the queue ----------------------------------------------------------

    async def drain_for_agent(self, agent_id: int) -> int:
        async with self.db.read() as session:
            teams = list(
                (await session.scalars(select(TeamMember.team_id).where(TeamMember.agent_id == agent_id))).all()
            )
        total = 0
        for team_id in teams:
            total += await self.drain(team_id)
        return total

    async def drain(self, team_id: int) -> int:
        """Assign queued tickets of a team while its agents have room: highest
        priority first, then longest waiting; a ticket nobody can take now
        (skills, language) does not hold up the ones behind it. Queue heads are
        claimed with SKIP LOCKED, so drains in several workers share the queue."""
        state = await self.state()
        team = state.teams.get(team_id)
        if team is None or not team.auto_assign:
            return 0
        assigned = 0
        skipped: set[int] = set()
        scanned = 0
        while scanned < _DRAIN_SCAN:
            scanned += 1
            # One ticket per transaction; agents locked as _reserve explains.
            async with self.db.write() as session:
                session.autoflush = False
                agents = await agent_states(session, team_ids=[team_id])
                base = replace(self._base(state, utcnow()), agents=agents)
                room = self._room(team, base)
                if not room:
                    return assigned
                stmt = queue_query(team_id, limit=1, skip_locked=not self.db.is_sqlite).where(
                    Ticket.channel.in_(sorted(room))
                )
                if skipped:
                    stmt = stmt.where(Ticket.id.not_in(sorted(skipped)))
                ticket = await session.scalar(stmt)
                if ticket is None:
                    return assigned
                snap = _queued_snapshot(ticket)
                # The cursor after the queue head, in the lock order (ticket -> cursor -> agent).
                decision = decide(snap, replace(base, cursors=await self._cursors(session, state, team_id)))
                if decision.assignee_id is None:
                    skipped.add(ticket.id)  # needs skills or a language nobody free has
                    continue
                await self._apply(session, ticket, snap, decision, state)
                if ticket.assignee_id is not None:
                    assigned += 1
        return assigned

    def _room(self, team: TeamState, snapshot: RoutingSnapshot) -> set[str]:
        """Channels some agent of the team could take one more ticket of now."""
        room: set[str] = set()
        for a in snapshot.agents:
            if team.id in a.teams and a.active and a.presence is Presence.ONLINE:
                for channel in {*a.capacity, *snapshot.default_capacity}:
                    if a.load.get(channel, 0) < a.limit(channel, snapshot.default_capacity):
                        room.add(channel)
        return room

    async def drain_all(self) -> int:
        async with self.db.read() as session:
            waiting = await queue_stats(session)
        total = 0
        for team_id in waiting:
            total += await self.drain(team_id)
        return total

    # --- SLA ---------------------------------------------------------------

    def _policy(self, ticket: Ticket, state: RoutingState) -> tuple[str | None, SlaPolicy | None]:
        team = state.teams.get(ticket.team_id) if ticket.team_id is not None else None
        name = ticket.sla_policy or (team.sla if team is not None else None) or self.config.default_sla
        return name, state.policies.get(name) if name else None

    def _set_deadlines(
        self,
        ticket: Ticket,
        deadlines: dict[sla.Target, sla.Deadline],
        fired: Iterable[str],
        *,
        keep_pause: bool = True,
    ) -> None:
        """Store the deadlines; ``keep_pause``: a paused ticket stays paused (an
        agent's reply to a snoozed ticket still ends its response clocks)."""
        kept = sla.prune(fired, deadlines)
        paused = sla.paused_at(ticket.sla_deadlines) if keep_pause else None
        raw: dict[str, Any] = {t: d.to_json() for t, d in deadlines.items()}
        if paused is not None:
            raw[sla.PAUSED_AT] = paused.isoformat()
        ticket.sla_deadlines = raw
        ticket.sla_fired = kept
        ticket.first_response_due_at = deadlines["first_response"].due_at if "first_response" in deadlines else None
        ticket.next_response_due_at = deadlines["next_response"].due_at if "next_response" in deadlines else None
        ticket.resolution_due_at = deadlines["resolution"].due_at if "resolution" in deadlines else None
        # No check time while paused: the sweeper's query then never sees the
        # ticket, even once it is open again and not yet resumed.
        ticket.sla_next_check_at = None if paused is not None else sla.next_check(deadlines, kept)

    @staticmethod
    def _deadlines(ticket: Ticket) -> dict[sla.Target, sla.Deadline]:
        raw = ticket.sla_deadlines or {}
        return {t: sla.Deadline.from_json(t, raw[t]) for t in sla.TARGETS if t in raw}

    async def _start_cycle(
        self, session: AsyncSession, ticket: Ticket, state: RoutingState, *, start: datetime
    ) -> None:
        """A ticket reached humans (routed, handed off, reopened): its first
        response and resolution clocks start now, in a new cycle."""
        name, policy = self._policy(ticket, state)
        ticket.sla_policy = name
        ticket.cycle_started_at = start
        deadlines: dict[sla.Target, sla.Deadline] = {}
        if policy is not None:
            cal = state.calendar_of(ticket.team_id, self.config.default_calendar)
            targets: list[sla.Target] = ["resolution"]
            if ticket.first_response_at is None:
                targets.insert(0, "first_response")
            deadlines = _plan(ticket, name, policy, targets, start, cal)
        self._set_deadlines(ticket, deadlines, [], keep_pause=False)
        await session.execute(
            dialect_insert(session, TicketCycle)
            .values(
                ticket_id=ticket.id,
                number=ticket.sla_cycle,
                sla_policy=name,
                started_at=start,
                first_response_due_at=deadlines["first_response"].due_at if "first_response" in deadlines else None,
                first_response_at=ticket.first_response_at,
                breaches=[],
            )
            .on_conflict_do_nothing(index_elements=["ticket_id", "number"])
        )

    async def _new_cycle(self, ticket_id: int, *, reopened: bool) -> None:
        """An open ticket whose last cycle was closed by its resolution starts
        a new one. ``reopened``: it came straight from resolved, so even a
        ticket that never had a cycle (resolved while the bot held it) starts
        one; otherwise one with no cycle yet gets its first from routing."""
        state = await self.state()
        async with self.db.write() as session:
            ticket = await _locked_ticket(session, ticket_id)
            # Open only: a ticket snoozed again since starts it when it wakes
            # (an event handled late must not start clocks that should be paused).
            if ticket is None or ticket.status != TicketStatus.OPEN.value:
                return
            cycle = await session.scalar(
                select(TicketCycle).where(TicketCycle.ticket_id == ticket_id, TicketCycle.number == ticket.sla_cycle)
            )
            if cycle is None and not reopened:
                return
            if cycle is not None and cycle.resolved_at is None:
                return  # this reopening was handled already, or the cycle never ended
            started = utcnow()
            ticket.sla_cycle += 1
            # An agent reply after the resolution (the reopening agent's own,
            # written before this step ran) is this cycle's first response; an
            # older one belongs to the last cycle.
            ended = cycle.resolved_at if cycle is not None else None
            if ticket.first_response_at is not None and (ended is None or ticket.first_response_at <= ended):
                ticket.first_response_at = None
            await self._start_cycle(session, ticket, state, start=started)

    async def _close_cycle(self, ticket_id: int) -> None:
        async with self.db.write() as session:
            ticket = await _locked_ticket(session, ticket_id)
            if ticket is None or ticket.status != TicketStatus.RESOLVED.value:
                return
            self._set_deadlines(ticket, {}, [], keep_pause=False)
            ticket.queued_at = None
            await session.execute(
                update(TicketCycle)
                .where(
                    TicketCycle.ticket_id == ticket_id,
                    TicketCycle.number == ticket.sla_cycle,
                    TicketCycle.resolved_at.is_(None),
                )
                .values(resolved_at=ticket.resolved_at or utcnow())
            )

    async def _agent_replied(self, ticket_id: int, at: datetime) -> None:
        async with self.db.write() as session:
            ticket = await _locked_ticket(session, ticket_id)
            if ticket is None:
                return
            deadlines = self._deadlines(ticket)
            changed = deadlines.pop("first_response", None) is not None
            changed |= deadlines.pop("next_response", None) is not None
            if changed:
                self._set_deadlines(ticket, deadlines, ticket.sla_fired or [])
            await session.execute(
                update(TicketCycle)
                .where(
                    TicketCycle.ticket_id == ticket_id,
                    TicketCycle.number == ticket.sla_cycle,
                    TicketCycle.first_response_at.is_(None),
                    TicketCycle.started_at <= at,
                )
                .values(first_response_at=at)
            )

    async def _customer_waiting(self, ticket_id: int) -> None:
        """After our first response, a customer's new message starts the next
        response clock (kept from their first unanswered message)."""
        state = await self.state()
        async with self.db.write() as session:
            ticket = await _locked_ticket(session, ticket_id)
            if (
                ticket is None
                or ticket.status != TicketStatus.OPEN.value
                or ticket.first_response_at is None
                or ticket.waiting_since is None
                or ticket.cycle_started_at is None
            ):
                return
            deadlines = self._deadlines(ticket)
            if "next_response" in deadlines:
                return
            name, policy = self._policy(ticket, state)
            if policy is None:
                return
            planned = _plan(
                ticket,
                name,
                policy,
                ["next_response"],
                ticket.waiting_since,
                state.calendar_of(ticket.team_id, self.config.default_calendar),
            )
            if "next_response" in planned:
                deadlines["next_response"] = planned["next_response"]
                self._set_deadlines(ticket, deadlines, ticket.sla_fired or [])

    async def _settle_pause(self, ticket_id: int) -> None:
        state = await self.state()
        async with self.db.write() as session:
            ticket = await _locked_ticket(session, ticket_id)
            if ticket is not None:
                await self._settle_pause_of(session, ticket, state, utcnow())

    async def _settle_clocks(self, ticket_id: int) -> None:
        """Resume the clocks of a ticket a message woke, or start a new cycle
        for one whose cycle its resolution closed (resolved, snoozed, then
        woken by the customer: ingest writes no status event)."""
        # Most messages reach tickets that were never paused nor closed: a read, not a lock.
        async with self.db.read() as session:
            row = (
                await session.execute(
                    select(Ticket.status, Ticket.sla_deadlines, TicketCycle.resolved_at)
                    .outerjoin(
                        TicketCycle, (TicketCycle.ticket_id == Ticket.id) & (TicketCycle.number == Ticket.sla_cycle)
                    )
                    .where(Ticket.id == ticket_id)
                )
            ).first()
        if row is None:
            return
        if sla.paused_at(row.sla_deadlines) is not None:
            await self._settle_pause(ticket_id)
        if row.status == TicketStatus.OPEN.value and row.resolved_at is not None:
            await self._new_cycle(ticket_id, reopened=False)

    async def _settle_pause_of(self, session: AsyncSession, ticket: Ticket, state: RoutingState, now: datetime) -> None:
        """Pause the SLA clocks of a snoozed ticket, or resume those of a ticket
        no longer snoozed, each at ``now``. Decided on the ticket's status, so it
        is idempotent and safe for events handled late or twice."""
        paused = sla.paused_at(ticket.sla_deadlines)
        if ticket.status == TicketStatus.SNOOZED.value:
            if paused is None and self._deadlines(ticket):
                ticket.sla_deadlines = {**(ticket.sla_deadlines or {}), sla.PAUSED_AT: now.isoformat()}
                ticket.sla_next_check_at = None
            return
        if paused is None:
            return
        _, policy = self._policy(ticket, state)
        calendar = sla.counting_calendar(policy, state.calendar_of(ticket.team_id, self.config.default_calendar))
        before = self._deadlines(ticket)
        after, fired = sla.resume(before, ticket.sla_fired or [], paused, now, calendar)
        for target in sorted(set(before) - set(after)):
            log.warning(
                "ticket %s: its %s deadline is dropped on waking: the time it had left cannot be counted on its "
                "team's calendar (it does not open often enough)",
                ticket.id,
                target,
            )
        self._set_deadlines(ticket, after, fired, keep_pause=False)
        if "first_response" in after and after["first_response"] != before["first_response"]:
            # The cycle report shows the due time the agent is now judged on.
            await session.execute(
                update(TicketCycle)
                .where(TicketCycle.ticket_id == ticket.id, TicketCycle.number == ticket.sla_cycle)
                .values(first_response_due_at=after["first_response"].due_at)
            )

    async def sweep_sla(self, now: datetime | None = None, limit: int = 100) -> int:
        """Fire the SLA warnings and breaches that are due. Tickets are claimed
        with SKIP LOCKED, so sweepers in several workers share them."""
        state = await self.state()
        now = now or utcnow()
        fired_total = 0
        drain: set[int] = set()
        freed: set[int] = set()  # agents an escalation took a ticket from
        async with self.db.write() as session:
            stmt = (
                select(Ticket)
                .where(Ticket.sla_next_check_at <= now, Ticket.status == TicketStatus.OPEN.value)
                .order_by(Ticket.sla_next_check_at)
                .limit(limit)
            )
            if not self.db.is_sqlite:
                stmt = stmt.with_for_update(skip_locked=True)
            for ticket in (await session.scalars(stmt)).all():
                if sla.paused_at(ticket.sla_deadlines) is not None:
                    # Woken but not resumed yet: its resume sets the next check.
                    ticket.sla_next_check_at = None
                    continue
                deadlines = self._deadlines(ticket)
                due = sla.due_now(deadlines, ticket.sla_fired or [], now)
                _, policy = self._policy(ticket, state)
                for deadline, level in due:
                    if policy is not None:
                        before = ticket.assignee_id
                        team = await self._escalate(session, ticket, deadline, level, policy, state)
                        if team is not None:
                            drain.add(team)
                        if before is not None and ticket.assignee_id != before:
                            freed.add(before)
                    fired_total += 1
                fired = set(ticket.sla_fired or []) | sla.fired_keys(due)
                self._set_deadlines(ticket, deadlines, fired)
        for team_id in drain:
            await self.drain(team_id)
        for agent_id in freed:
            await self.drain_for_agent(agent_id)
        return fired_total

    async def _escalate(
        self,
        session: AsyncSession,
        ticket: Ticket,
        deadline: sla.Deadline,
        level: sla.Level,
        policy: SlaPolicy,
        state: RoutingState,
    ) -> int | None:
        """Apply the policy's escalation; returns a team whose queue got the ticket."""
        step: Escalation = policy.on_breach if level == "breach" else policy.on_warning
        actor = f"sla:{ticket.sla_policy or 'default'}"
        changes: dict[str, Any] = {}
        requeue_team: int | None = None
        if step.priority is not None and PRIORITY_RANK[step.priority] > PRIORITY_RANK[Priority(ticket.priority)]:
            changes["priority"] = {"from": ticket.priority, "to": step.priority.value}
            ticket.priority = step.priority.value
        team = state.teams.get(ticket.team_id) if ticket.team_id is not None else None
        if step.team is not None and state.team_ids.get(step.team) not in (None, ticket.team_id):
            new_team = state.team_ids[step.team]
            changes["team"] = {"from": ticket.team_id, "to": new_team}
            ticket.team_id, ticket.assignee_id, ticket.queued_at = new_team, None, utcnow()
            requeue_team = new_team
            team = state.teams.get(new_team)
        lead_id = await self._active_lead(session, team) if step.to_lead or "lead" in step.notify else None
        who = set(step.notify)
        if step.to_lead and team is not None:
            if lead_id is not None:
                if ticket.assignee_id != lead_id:
                    # Like an admin's assignment, this may exceed the lead's capacity.
                    changes["assignee"] = {"from": ticket.assignee_id, "to": lead_id}
                    ticket.assignee_id, ticket.queued_at = lead_id, None
            else:
                # Nobody to escalate to (no lead named, not an agent yet, or
                # deactivated): the team's queue takes the ticket from whoever
                # let it breach, as the lead would have.
                if ticket.assignee_id is not None:
                    changes["assignee"] = {"from": ticket.assignee_id, "to": None, "reason": "no active team lead"}
                    ticket.assignee_id = None
                if ticket.queued_at is None:
                    ticket.queued_at = ticket.waiting_since or utcnow()
                requeue_team = team.id
                who.add("lead")  # others are told in the lead's stead: see _recipients
        notify = sorted(await self._recipients(session, ticket, team, who, lead_id))
        if level == "breach":
            cycle = await session.scalar(
                select(TicketCycle).where(TicketCycle.ticket_id == ticket.id, TicketCycle.number == ticket.sla_cycle)
            )
            if cycle is not None:
                cycle.breaches = [*(cycle.breaches or []), {"target": deadline.target, "due_at": iso(deadline.due_at)}]
        await session.flush()
        data = {
            "target": deadline.target,
            "level": level,
            "due_at": iso(deadline.due_at),
            "policy": ticket.sla_policy,
            "cycle": ticket.sla_cycle,
            "notify": notify,
            "changes": changes,
        }
        kind = TicketEventKind.SLA_BREACH if level == "breach" else TicketEventKind.SLA_WARNING
        await record_ticket_event(session, ticket, kind, actor, data)
        await audit(session, actor, kind.value, "ticket", ticket.id, data)
        return requeue_team

    async def _active_lead(self, session: AsyncSession, team: TeamState | None) -> int | None:
        """The team's lead (config.yaml names them by email), looked up when an
        escalation fires: a lead added with ``crm-hub agent add`` while the hub
        runs is found, and a deactivated one is not."""
        email = self._leads.get(team.name) if team is not None else None
        if email is None:
            return None
        return await session.scalar(select(Agent.id).where(Agent.email == email, Agent.active.is_(True)))

    async def _recipients(
        self, session: AsyncSession, ticket: Ticket, team: TeamState | None, who: Iterable[str], lead_id: int | None
    ) -> set[int]:
        who = set(who)
        # A team whose lead is missing (none named, not an agent yet,
        # deactivated) still has somebody hear of it: its members, or the
        # admins when it has no active member either.
        stand_in = "lead" in who and lead_id is None and team is not None
        out: set[int] = set()
        if "assignee" in who and ticket.assignee_id is not None:
            out.add(ticket.assignee_id)
        members: set[int] = set()
        if ("team" in who or stand_in) and team is not None:
            members = set(
                (
                    await session.scalars(
                        select(TeamMember.agent_id)
                        .join(Agent, Agent.id == TeamMember.agent_id)
                        .where(TeamMember.team_id == team.id, Agent.active.is_(True))
                    )
                ).all()
            )
            out |= members
        if "lead" in who and lead_id is not None:
            out.add(lead_id)
        if "admins" in who or (stand_in and not members):
            out |= set(
                (
                    await session.scalars(
                        select(Agent.id).where(Agent.role == Role.ADMIN.value, Agent.active.is_(True))
                    )
                ).all()
            )
        return out

    # --- automation ---------------------------------------------------------

    async def automate(
        self, event: str, ticket_id: int, marker: str, *, text: str = "", automatic: bool = False
    ) -> int:
        """Run every automation rule for ``event`` whose conditions hold on the
        ticket, once per (rule, ticket, marker). ``automatic``: the message that
        set it off was sent by a machine (out-of-office, bulk); rules still
        label, assign and so on, but send it no reply."""
        state = await self.state()
        if not any(c.rule.on == event for c in state.automation):
            return 0
        ran = 0
        requeue: set[int] = set()
        async with self.db.write() as session:
            ticket = await _locked_ticket(session, ticket_id)
            if ticket is None:
                return 0
            snap = await self._snapshot_of(session, ticket, text=text, topic=None, created=False)
            ctx = MatchContext(
                snap.facts(),
                now=utcnow(),
                calendars=state.calendars,
                default_calendar=self.config.default_calendar,
                team_names={t.id: t.name for t in state.teams.values()},
                team_calendars=team_calendars(state.teams),
            )
            for rule in matching(state.automation, event, ctx):
                if not await self._claim_run(session, rule.name, ticket.id, marker):
                    continue
                ran += 1
                team = await self._perform(session, ticket, rule, event, state, automatic=automatic)
                if team is not None:
                    requeue.add(team)
        for team_id in requeue:
            await self.drain(team_id)
        return ran

    async def _claim_run(
        self, session: AsyncSession, rule: str, ticket_id: int, marker: str, occasion_at: datetime | None = None
    ) -> bool:
        inserted = await session.scalar(
            dialect_insert(session, AutomationRun)
            .values(rule=rule, ticket_id=ticket_id, marker=marker[:100], occasion_at=occasion_at, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["rule", "ticket_id", "marker"])
            .returning(AutomationRun.id)
        )
        return inserted is not None

    async def _perform(
        self,
        session: AsyncSession,
        ticket: Ticket,
        rule: AutomationRule,
        event: str,
        state: RoutingState,
        *,
        automatic: bool = False,
    ) -> int | None:
        # Names are checked to fit when saved; one stored before that is cut short.
        actor = f"automation:{rule.name}"[:64]
        requeue: int | None = None
        resolved = False
        for action in rule.actions:
            if resolved and not action.note:
                # This rule's own resolve ends its work (its notes still go on
                # the record). A rule that fires on a ticket resolved already
                # (a satisfaction survey on ticket.status_changed) still acts.
                break
            done: dict[str, Any] = action.model_dump(mode="json", exclude_defaults=True)
            if action.reply is not None and automatic:
                # Two automatic responders would answer each other forever.
                skipped: str | None = "the message was sent automatically (out-of-office, bulk): no reply to it"
            else:
                skipped = await self._attempt(session, ticket, action, actor, state)
            if skipped:
                done["skipped"] = skipped
            elif action.resolve:
                resolved = True
            if action.assign_team is not None and ticket.assignee_id is None:
                requeue = ticket.team_id
            await audit(
                session,
                actor,
                "automation.action",
                "ticket",
                ticket.id,
                {"rule": rule.name, "event": event, "action": done},
            )
        return requeue

    async def _attempt(
        self, session: AsyncSession, ticket: Ticket, action: AutomationAction, actor: str, state: RoutingState
    ) -> str | None:
        """Perform one action in a savepoint; returns why it was skipped, if it
        was. An action the hub refuses (a reply to a contact with no address,
        a status change that conflicts) is undone alone and audited as
        skipped: the rule's other actions, and the event's other steps (the
        bot, the live fan-out), still happen, instead of the whole event
        failing and being retried into the dead letters."""
        written = session.info.get(OUTBOX_WRITTEN_KEY)
        mark = len(written) if written is not None else 0
        try:
            async with session.begin_nested():
                return await self._do(session, ticket, action, actor, state)
        except HubError as exc:
            # The undone action's events must not reach the relay after the commit.
            written = session.info.get(OUTBOX_WRITTEN_KEY)
            if written is not None:
                del written[mark:]
            # The rollback expired what the action changed; reading it back
            # here beats a lazy load, which asyncio cannot do.
            await session.refresh(ticket)
            log.warning("automation %s on ticket %s: action skipped: %s", actor, ticket.id, exc.message)
            return exc.message

    async def _do(
        self, session: AsyncSession, ticket: Ticket, action: AutomationAction, actor: str, state: RoutingState
    ) -> str | None:
        """Perform one action; returns why it was skipped, if it was. On a
        resolved ticket, labels, priority, notes, assignments and replies are
        made as an agent's would be, and it stays resolved: a reply reopens
        nothing (as an agent's does not) and, like everything an automation
        does, sets off no automation, so a rule cannot loop. A snooze, which
        would reopen it, and a second resolve are skipped."""
        now = utcnow()
        resolved = ticket.status == TicketStatus.RESOLVED.value
        if action.assign_team is not None:
            team_id = state.team_ids.get(action.assign_team)
            if team_id is None:
                team_id = (await do_get_or_create_team(session, action.assign_team, actor=actor)).id
            await do_assign(session, ticket, agent_id=None, team_id=team_id, actor=actor)
            if ticket.status == TicketStatus.OPEN.value:
                # Waiting for the team from now; a ticket the bot holds (or a
                # resolved one) joins the queue when it opens, and is routed then.
                ticket.queued_at = ticket.queued_at or now
        elif action.assign_agent is not None:
            agent_id = await session.scalar(
                select(Agent.id).where(Agent.email == action.assign_agent.strip().lower(), Agent.active.is_(True))
            )
            if agent_id is None:
                log.warning("automation %s: no active agent %s", actor, action.assign_agent)
                return f"no active agent has the email {action.assign_agent}"
            await do_assign(session, ticket, agent_id=agent_id, team_id=ticket.team_id, actor=actor)
            ticket.queued_at = None
        elif action.add_labels:
            labels = set(await ticket_labels(session, ticket.id)) | set(action.add_labels)
            await do_set_labels(session, ticket, sorted(labels), actor=actor)
        elif action.priority is not None:
            before = ticket.priority
            ticket.priority = action.priority.value
            await session.flush()
            await record_ticket_event(
                session, ticket, TicketEventKind.ROUTED, actor, {"priority": ticket.priority, "from_priority": before}
            )
        elif action.reply is not None:
            await do_post_message(session, ticket, body=action.reply, author=Author.SYSTEM, automatic=True)
        elif action.note is not None:
            await do_post_message(session, ticket, body=action.note, author=Author.SYSTEM, private=True)
        elif action.snooze_minutes is not None:
            if resolved:
                return "the ticket is resolved: snoozing it would reopen it"
            await do_set_status(
                session,
                ticket,
                status=TicketStatus.SNOOZED,
                actor=actor,
                snoozed_until=now + timedelta(minutes=action.snooze_minutes),
            )
            await self._settle_pause_of(session, ticket, state, now)
        elif action.resolve:
            if resolved:
                return "the ticket is resolved already"
            await do_set_status(session, ticket, status=TicketStatus.RESOLVED, actor=actor)
        return None

    async def sweep_idle(self, now: datetime | None = None, limit: int = 100) -> int:
        """Idle rules: tickets without a message from the customer or an agent
        for ``idle_minutes``, once per quiet spell (a new message starts a new
        one; an automation's reply does not, see ``do_post_message``).

        The ticket's own columns are filtered in SQL; what only the ticket's
        contact or the calendar can tell is matched on each ticket found, and
        those that do not match get no run. So the sweep pages on, ``limit``
        tickets at a time, oldest quiet spell first: the oldest tickets failing
        a condition must not hold up every ticket behind them for ever. At most
        ``_IDLE_SCAN`` tickets a rule per sweep; the next sweep goes on from
        there, and from the start once it has reached the end."""
        state = await self.state()
        now = now or utcnow()
        ran = 0
        for compiled in state.automation:
            rule = compiled.rule
            if rule.on != "idle" or rule.idle_minutes is None:
                continue
            wanted = ticket_conditions(rule.when, state.team_ids)
            if not rule.when.status:
                wanted.append(Ticket.status != TicketStatus.RESOLVED.value)
            done = select(AutomationRun.id).where(
                AutomationRun.rule == rule.name,
                AutomationRun.ticket_id == Ticket.id,
                AutomationRun.occasion_at == Ticket.last_message_at,
            )
            stmt = (
                select(Ticket.id, Ticket.last_message_at)
                .where(*wanted, Ticket.last_message_at <= now - timedelta(minutes=rule.idle_minutes), ~done.exists())
                .order_by(Ticket.last_message_at, Ticket.id)
                .limit(limit)
            )
            after = self._idle_resume.pop(rule.name, None)
            scanned = 0
            while True:
                async with self.db.read() as session:
                    page = (await session.execute(stmt.where(after_key(*after)) if after else stmt)).all()
                for tid, last in page:
                    ran += await self._automate_one(rule, tid, last, state, now)
                scanned += len(page)
                if len(page) < limit:
                    break
                after = (page[-1].last_message_at, page[-1].id)
                if scanned >= _IDLE_SCAN:
                    self._idle_resume[rule.name] = after
                    break
        return ran

    async def _automate_one(
        self, rule: AutomationRule, ticket_id: int, quiet_since: datetime, state: RoutingState, now: datetime
    ) -> int:
        compiled = next(c for c in state.automation if c.rule.name == rule.name)
        async with self.db.write() as session:
            ticket = await _locked_ticket(session, ticket_id)
            if ticket is None:
                return 0
            snap = await self._snapshot_of(session, ticket, text="", topic=None, created=False)
            ctx = MatchContext(
                snap.facts(),
                now=now,
                calendars=state.calendars,
                default_calendar=self.config.default_calendar,
                team_names={t.id: t.name for t in state.teams.values()},
                team_calendars=team_calendars(state.teams),
            )
            if ticket.last_message_at != quiet_since or not compiled.when.matches(ctx):
                return 0  # someone wrote meanwhile, or it no longer qualifies
            if not await self._claim_run(session, rule.name, ticket.id, f"idle:{iso(quiet_since)}", quiet_since):
                return 0
            await self._perform(session, ticket, rule, "idle", state)
            return 1

    # --- presence ----------------------------------------------------------

    async def sweep_presence(self, now: datetime | None = None) -> tuple[int, int]:
        """Online agents without a heartbeat for ``away_after_seconds`` go away;
        the live chats of agents away or offline for ``requeue_after_seconds``
        return to their team's queue (email and other slow channels stay)."""
        cfg = self.config.presence
        now = now or utcnow()
        gone: list[Agent] = []
        async with self.db.write() as session:
            stale = (
                await session.scalars(
                    select(Agent)
                    .where(
                        Agent.presence == Presence.ONLINE.value,
                        Agent.last_seen_at.is_not(None),
                        Agent.last_seen_at < now - timedelta(seconds=cfg.away_after_seconds),
                    )
                    # In id order, so sweepers in two workers never lock agents crosswise.
                    .order_by(Agent.id)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for agent in stale:
                agent.presence, agent.presence_changed_at = Presence.AWAY.value, now
                await audit(
                    session, ROUTER, "agent.presence", "agent", agent.id, {"to": "away", "reason": "no heartbeat"}
                )
                gone.append(agent)
            await session.flush()
            await add_agent_events(session, AGENT_PRESENCE, gone, ROUTER)
        requeued = 0
        teams: set[int] = set()
        channels = [c.value for c in cfg.requeue_channels]
        if channels:
            since = now - timedelta(seconds=cfg.requeue_after_seconds)
            async with self.db.write() as session:
                absent = select(Agent.id).where(
                    Agent.presence != Presence.ONLINE.value,
                    # Never set a presence (created offline, never logged in):
                    # absent all along, like any other offline agent.
                    or_(Agent.presence_changed_at.is_(None), Agent.presence_changed_at <= since),
                )
                # The grace period runs from the later of the agent leaving and
                # the chat reaching them: an admin who gives a chat to an agent
                # away now gets requeue_after_seconds for them to pick it up,
                # rather than seeing it taken back at the next sweep.
                given_lately = select(TicketEventRow.id).where(
                    TicketEventRow.ticket_id == Ticket.id,
                    or_(
                        TicketEventRow.kind == TicketEventKind.ASSIGNED.value,
                        and_(TicketEventRow.kind == TicketEventKind.ROUTED.value, TicketEventRow.actor == ROUTER),
                    ),
                    TicketEventRow.created_at > since,
                )
                stmt = select(Ticket).where(
                    Ticket.assignee_id.in_(absent),
                    Ticket.status == TicketStatus.OPEN.value,
                    Ticket.channel.in_(channels),
                    ~given_lately.exists(),
                )
                if not self.db.is_sqlite:
                    stmt = stmt.with_for_update(skip_locked=True)
                for ticket in (await session.scalars(stmt.limit(200))).all():
                    before = {"assignee_id": ticket.assignee_id, "team_id": ticket.team_id}
                    ticket.assignee_id = None
                    ticket.queued_at = ticket.waiting_since or now
                    await session.flush()
                    data = {
                        "from": before,
                        "to": {"assignee_id": None, "team_id": ticket.team_id},
                        "reason": "agent away",
                    }
                    await record_ticket_event(session, ticket, TicketEventKind.ASSIGNED, ROUTER, data)
                    await audit(session, ROUTER, "ticket.requeued", "ticket", ticket.id, data)
                    if ticket.team_id is not None:
                        teams.add(ticket.team_id)
                    requeued += 1
        for team_id in teams:
            await self.drain(team_id)
        return len(gone), requeued

    async def sweep_snoozed(self, now: datetime | None = None) -> int:
        """Snoozed tickets whose time is up open again (and are routed), their
        SLA clocks resumed in the same transaction (the SLA sweep that follows
        must see the moved deadlines)."""
        state = await self.state()
        now = now or utcnow()
        woke = 0
        async with self.db.write() as session:
            stmt = (
                select(Ticket)
                .where(Ticket.status == TicketStatus.SNOOZED.value, Ticket.snoozed_until <= now)
                .limit(200)
            )
            if not self.db.is_sqlite:
                stmt = stmt.with_for_update(skip_locked=True)
            for ticket in (await session.scalars(stmt)).all():
                await do_set_status(session, ticket, status=TicketStatus.OPEN, actor="system")
                await self._settle_pause_of(session, ticket, state, now)
                woke += 1
        return woke

    async def sweep(self) -> None:
        await self.sweep_presence()
        await self.sweep_snoozed()
        await self.sweep_sla()
        await self.sweep_idle()
        # A safety net for triggers lost with a crashed worker.
        await self.drain_all()

    async def run_sweeper(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("routing sweep failed; trying again next interval")
            await asyncio.sleep(self.config.sweep_interval_seconds)

    # --- for the phone IVR and the API -------------------------------------

    async def team_id(self, team: int | str) -> int | None:
        """The id of a team given by id or name; a team created since the state
        was cached (by an admin, or by a channel's config) is looked up afresh."""

        def find(state: RoutingState) -> int | None:
            if isinstance(team, int):
                return team if team in state.teams else None
            return state.team_ids.get(team)

        found = find(await self.state())
        if found is None:
            found = find(await self.state(fresh=True))
        return found

    async def is_team_open(self, team: int | str | None, at: datetime | None = None) -> bool:
        """Whether ``team`` (id or name; None: no team, the default calendar) is
        within its business hours at ``at`` (default now). A team without a
        calendar, with no default calendar, is always open. Raises
        ``LookupError`` for an unknown team. Fits the phone IVR's ``is_open``."""
        state = await self.state()
        team_id = None
        if team is not None:
            team_id = await self.team_id(team)
            if team_id is None:
                raise LookupError(f"team {team!r} does not exist")
        cal = state.calendar_of(team_id, self.config.default_calendar)
        return True if cal is None else cal.is_open(at or utcnow())

    async def available_agents(
        self, team: int | str, channel: str = "voice", language: str | None = None
    ) -> list[AvailableAgent]:
        """Agents of ``team`` who could take a ``channel`` ticket right now
        (online, active, under capacity for that channel, and speaking
        ``language`` as routing decides it, when given), least busy first.
        Raises ``LookupError`` for an unknown team."""
        team_id = await self.team_id(team)
        if team_id is None:
            raise LookupError(f"team {team!r} does not exist")
        state = await self.state()
        defaults = self.default_capacity
        async with self.db.read() as session:
            states = await agent_states(session, team_ids=[team_id])
            rows = {
                a.id: a
                for a in (await session.scalars(select(Agent).where(Agent.id.in_([s.id for s in states])))).all()
            }
        ok = eligible_agents(state.teams[team_id], channel, frozenset(), language, states, defaults)
        ok.sort(key=lambda a: (a.open_total, a.id))
        return [
            AvailableAgent(
                id=a.id,
                name=rows[a.id].name,
                email=rows[a.id].email,
                phone=rows[a.id].phone,
                open_tickets=a.open_total,
                free=a.limit(channel, defaults) - a.load.get(channel, 0),
            )
            for a in ok
        ]

    async def phone_agents(self, team: int | str | None) -> list[tuple[int, str]]:
        """(agent id, phone) of the agents a call for ``team`` can ring now:
        active, online, in the team and with a phone number, least busy first;
        None: every team's. Fits the phone IVR's ``available_agents``.

        Not limited by voice capacity, which counts open voice tickets: an
        answered call's ticket stays open, and call-back tickets are routed to
        agents, so one of either would silence an idle agent's phone. Whether
        they are talking now is what matters, and the voice desk checks that."""
        if team is not None:
            team_id = await self.team_id(team)
            if team_id is None:
                raise LookupError(f"team {team!r} does not exist")
            team_ids = {team_id}
        else:
            team_ids = set((await self.state()).teams)
        async with self.db.read() as session:
            states = await agent_states(session, team_ids=team_ids)
            phones: dict[int, str | None] = {
                row.id: row.phone
                for row in await session.execute(
                    select(Agent.id, Agent.phone).where(Agent.id.in_([a.id for a in states]))
                )
            }
        ringable = [
            a for a in states if a.active and a.presence is Presence.ONLINE and a.teams & team_ids and phones.get(a.id)
        ]
        ringable.sort(key=lambda a: (a.open_total, a.id))
        return [(a.id, str(phones[a.id])) for a in ringable]

    async def queues(self) -> list[dict[str, Any]]:
        """Per team: tickets waiting, the oldest wait, agents online, open now."""
        state = await self.state(fresh=True)
        now = utcnow()
        async with self.db.read() as session:
            waiting = await queue_stats(session)
            agents = await agent_states(session, team_ids=list(state.teams))
        out = []
        for team in sorted(state.teams.values(), key=lambda t: t.name):
            n, oldest = waiting.get(team.id, (0, None))
            members = [a for a in agents if team.id in a.teams]
            cal = state.calendar_of(team.id, self.config.default_calendar)
            out.append(
                {
                    "team_id": team.id,
                    "team": team.name,
                    "strategy": team.strategy,
                    "queued": n,
                    "oldest_queued_at": iso(oldest),
                    "oldest_wait_seconds": round((now - oldest).total_seconds(), 1) if oldest else 0.0,
                    "agents_online": sum(1 for a in members if a.active and a.presence is Presence.ONLINE),
                    "agents": len(members),
                    "open": True if cal is None else cal.is_open(now),
                }
            )
        return out


async def _locked_ticket(session: AsyncSession, ticket_id: int) -> Ticket | None:
    """The ticket, locked until the transaction ends and read fresh (the state a
    decision is made on is the state it is applied to)."""
    return await session.scalar(
        select(Ticket).where(Ticket.id == ticket_id).with_for_update().execution_options(populate_existing=True)
    )


def _plan(
    ticket: Ticket,
    name: str | None,
    policy: SlaPolicy,
    targets: Iterable[sla.Target],
    start: datetime,
    calendar: BusinessCalendar | None,
) -> dict[sla.Target, sla.Deadline]:
    """The deadlines of ``targets``; one the team's calendar cannot count (it
    does not open often enough within the years BusinessCalendar looks ahead)
    is left out and logged: the ticket is routed without that deadline rather
    than not routed at all, its event retried into the dead letters."""
    out: dict[sla.Target, sla.Deadline] = {}
    for target in targets:
        try:
            d = sla.deadline(policy, target, start, calendar)
        except CalendarError as exc:
            log.warning(
                "ticket %s: no %s deadline: SLA policy %s cannot be counted on its team's calendar: %s",
                ticket.id,
                target,
                name,
                exc,
            )
            continue
        if d is not None:
            out[target] = d
    return out


def _queued_snapshot(ticket: Ticket) -> TicketSnapshot:
    """A queued ticket as the drain sees it: its team is chosen, rules applied."""
    return TicketSnapshot(
        id=ticket.id,
        status=TicketStatus(ticket.status),
        channel=ticket.channel,
        inbox="",
        assignee_id=ticket.assignee_id,
        team_id=ticket.team_id,
        ticket_created=False,
        bot_enabled=False,
        bot_silenced=ticket.bot_silenced,
        priority=Priority(ticket.priority),
        language=ticket.language,
        contact_id=ticket.contact_id,
        skills=frozenset(str(x) for x in ticket.skills or []),
        first_routing=False,
    )


def _teams_named(rules: Iterable[RoutingRule], automation: Iterable[AutomationRule]) -> set[str]:
    names = {r.team for r in rules if r.team}
    names |= {a.assign_team for rule in automation for a in rule.actions if a.assign_team}
    return names


async def add_agent_events(session: AsyncSession, kind: str, agents: Sequence[Agent], actor: str) -> None:
    """Presence and settings changes on the stream (workers drain queues) and
    to the agents' inbox (who is online)."""
    if not agents:
        return
    # The agent as GET /agents shows them: an event without their teams would
    # tell the inbox they had left every team.
    teams: dict[int, list[int]] = {}
    members = await session.execute(
        select(TeamMember.agent_id, TeamMember.team_id).where(TeamMember.agent_id.in_([a.id for a in agents]))
    )
    for agent_id, team_id in members.all():
        teams.setdefault(agent_id, []).append(team_id)
    await add_outbox(
        session,
        [
            {
                "topic": TOPIC_EVENTS,
                "key": f"agent:{a.id}",
                # agent_id and presence on top, as the inbox reads them.
                "payload": {
                    "kind": kind,
                    "actor": actor,
                    "agent_id": a.id,
                    "presence": a.presence,
                    "agent": agent_view(a, teams.get(a.id)),
                },
            }
            for a in agents
        ],
    )


# --- agent actions (presence, routing settings) ------------------------------


async def do_set_presence(session: AsyncSession, agent: Agent, presence: Presence, *, actor: str) -> Agent:
    """The agent says online / away / offline. It is what they get until they
    say otherwise (a lost heartbeat only turns ``online`` into ``away`` for a
    while; their inbox reconnecting turns it back)."""
    now = utcnow()
    before = agent.presence
    agent.presence_choice = presence.value
    agent.last_seen_at = now
    if before != presence.value:
        agent.presence, agent.presence_changed_at = presence.value, now
    await session.flush()
    await audit(session, actor, "agent.presence", "agent", agent.id, {"from": before, "to": presence.value})
    if before != presence.value:
        await add_agent_events(session, AGENT_PRESENCE, [agent], actor)
    return agent


async def do_heartbeat(session: AsyncSession, agent_id: int) -> Agent | None:
    """The agent's inbox is connected: they are seen now, and back online if
    a lost heartbeat had made them away."""
    now = utcnow()
    agent = await session.get(Agent, agent_id, with_for_update=True)
    if agent is None:
        return None
    agent.last_seen_at = now
    if agent.presence_choice == Presence.ONLINE.value and agent.presence != Presence.ONLINE.value:
        agent.presence, agent.presence_changed_at = Presence.ONLINE.value, now
        await session.flush()
        await audit(
            session, f"agent:{agent.id}", "agent.presence", "agent", agent.id, {"to": "online", "reason": "connected"}
        )
        await add_agent_events(session, AGENT_PRESENCE, [agent], f"agent:{agent.id}")
    return agent


async def do_update_agent_routing(
    session: AsyncSession,
    agent: Agent,
    *,
    actor: str,
    skills: list[str] | None = None,
    languages: list[str] | None = None,
    capacity: dict[str, int] | None = None,
    teams: list[str] | None = None,
    phone: str | None = None,
) -> Agent:
    """An admin changes what an agent can take; more room drains the queues."""
    changes: dict[str, Any] = {}
    if skills is not None:
        agent.skills = changes["skills"] = sorted({s.strip() for s in skills if s.strip()})
    if languages is not None:
        agent.languages = changes["languages"] = sorted({s.strip().lower() for s in languages if s.strip()})
    if capacity is not None:
        for channel, n in capacity.items():
            # A bool is an int to Python, and one beyond 64 bits would not store as JSON.
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_CAPACITY:
                raise ValidationFailed(f"capacity.{channel} must be a whole number from 0 to {MAX_CAPACITY}")
        agent.capacity = changes["capacity"] = dict(capacity)
    if phone is not None:
        agent.phone = changes["phone"] = phone or None
    if teams is not None:
        wanted = {(await do_get_or_create_team(session, name, actor=actor)).id for name in teams}
        current = set((await session.scalars(select(TeamMember.team_id).where(TeamMember.agent_id == agent.id))).all())
        for team_id in current - wanted:
            member = await session.get(TeamMember, (team_id, agent.id))
            if member is not None:
                await session.delete(member)
        for team_id in wanted - current:
            session.add(TeamMember(team_id=team_id, agent_id=agent.id))
        changes["teams"] = sorted(teams)
    await session.flush()
    await audit(session, actor, "agent.updated", "agent", agent.id, changes)
    await add_agent_events(session, AGENT_UPDATED, [agent], actor)
    return agent


async def _not_the_last_admin(session: AsyncSession, agent: Agent) -> None:
    """Refuse to take away the last active admin (deactivated or made an
    agent): nobody could manage the hub any more."""
    if agent.role != Role.ADMIN.value or not agent.active:
        return
    others = await session.scalar(
        select(func.count())
        .select_from(Agent)
        .where(Agent.role == Role.ADMIN.value, Agent.active.is_(True), Agent.id != agent.id)
    )
    if not others:
        raise Conflict(f"agent {agent.id} is the last active admin; make another agent admin first")


async def do_set_agent_active(session: AsyncSession, agent: Agent, active: bool, *, actor: str) -> list[int]:
    """An admin deactivates an agent who left, or lets them back. Deactivated:
    they can no longer log in, every token of theirs is revoked (their open
    inbox is closed at its next heartbeat), they are offline, and their
    unresolved tickets go back to their team's queue (or to Unassigned).
    Returns the ids of those tickets. The last active admin stays active."""
    if agent.active == active:
        return []
    if not active:
        await _not_the_last_admin(session, agent)
    now = utcnow()
    agent.active = active
    released: list[int] = []
    if not active:
        before = agent.presence
        agent.presence = agent.presence_choice = Presence.OFFLINE.value
        if before != Presence.OFFLINE.value:
            agent.presence_changed_at = now
        await session.execute(delete(ApiToken).where(ApiToken.agent_id == agent.id))
        tickets = (
            await session.scalars(
                select(Ticket)
                .where(Ticket.assignee_id == agent.id, Ticket.status != TicketStatus.RESOLVED.value)
                .order_by(Ticket.id)
                .with_for_update()
            )
        ).all()
        for ticket in tickets:
            # A team's ticket joins its queue (the router's step on ``ticket.assigned``).
            await do_assign(session, ticket, agent_id=None, team_id=ticket.team_id, actor=actor)
            if ticket.team_id is not None and ticket.status == TicketStatus.OPEN.value and ticket.queued_at is None:
                # Queued in the same commit, so that whichever of their events
                # runs first already sees all of them in the queue's order.
                ticket.queued_at = ticket.waiting_since or now
            released.append(ticket.id)
    await session.flush()
    await audit(
        session,
        actor,
        "agent.activated" if active else "agent.deactivated",
        "agent",
        agent.id,
        {"released_tickets": released} if released else {},
    )
    await add_agent_events(session, AGENT_UPDATED, [agent], actor)
    return released


async def do_update_agent_account(
    session: AsyncSession,
    agent: Agent,
    *,
    actor: str,
    name: str | None = None,
    role: Role | None = None,
    password_hash: str | None = None,
    keep_token_hash: str | None = None,
) -> Agent:
    """An agent's name, role or password changes (an admin's doing, or the
    agent's own for name and password). A new password signs out every
    session of theirs but ``keep_token_hash`` (the one that changed it), as a
    leaked password's sessions must end with it. The last active admin stays
    admin. ``password_hash``: already hashed (Argon2 is slow on purpose, and
    must not run inside the write transaction)."""
    changes: dict[str, Any] = {}
    if name is not None:
        cleaned = clean_agent_name(name)
        if cleaned != agent.name:
            changes["name"] = cleaned
            agent.name = cleaned
    if role is not None and role.value != agent.role:
        await _not_the_last_admin(session, agent)
        changes["role"] = role.value
        agent.role = role.value
    if password_hash is not None:
        agent.password_hash = password_hash
        signed_out = delete(ApiToken).where(ApiToken.agent_id == agent.id)
        if keep_token_hash is not None:
            signed_out = signed_out.where(ApiToken.token_hash != keep_token_hash)
        await session.execute(signed_out)
        changes["password_changed"] = True
    if not changes:
        return agent
    await session.flush()
    await audit(session, actor, "agent.account_changed", "agent", agent.id, changes)
    await add_agent_events(session, AGENT_UPDATED, [agent], actor)
    return agent


async def rule_targets(session: AsyncSession) -> tuple[set[str], set[str]]:
    """The inbox keys and the active agents' emails (lower case) rules may
    name, for :func:`routing.settings.check_rule_references`."""
    inboxes = set((await session.scalars(select(Inbox.key))).all())
    agents = {e.lower() for e in (await session.scalars(select(Agent.email).where(Agent.active.is_(True)))).all()}
    return inboxes, agents


async def check_team_names(session: AsyncSession, named: Mapping[str, tuple[str, bool]], *, create: bool) -> list[str]:
    """Refuse a team name that matches no team, as a help desk refuses a
    group nobody set up: "sales" for "Sales" would otherwise make a second,
    empty team whose tickets wait for ever. ``named``: name -> (where it is
    used, whether tickets or agents go there). With ``create`` such names are
    fine (the save creates them) unless they differ from a team's, or from
    another name in ``named``, only in case; a name only a condition tests
    never is. Returns warnings: the teams tickets go to that have no active
    member."""
    rows = await session.execute(
        select(Team.name, func.count(Agent.id))
        .outerjoin(TeamMember, TeamMember.team_id == Team.id)
        .outerjoin(Agent, (Agent.id == TeamMember.agent_id) & Agent.active.is_(True))
        .group_by(Team.id, Team.name)
    )
    members: dict[str, int] = {name: count for name, count in rows}
    folded = {name.casefold(): name for name in members}
    # New names of one request that differ only in case would be two teams,
    # as "sales" next to an existing "Sales" would: one spelling is let through.
    spelled: dict[str, str] = {}
    for name in sorted(named):
        spelled.setdefault(name.casefold(), name)
    problems: list[str] = []
    creatable = False
    for name, (where, target) in sorted(named.items()):
        twin = spelled[name.casefold()]
        if twin != name and name.casefold() not in folded:
            problems.append(
                f"{where}: team {name!r} differs from {twin!r} ({named[twin][0]}) only in case; "
                "they would be two teams: write it one way"
            )
            continue
        if name in members or (target and create and name.casefold() not in folded):
            continue
        problem = f"{where}: team {name!r} does not exist"
        if not target:
            # Only teams tickets are sent to are created; a condition on a team
            # nobody has would hold for no ticket.
            problem += ", so the condition on it holds for no ticket"
        close = [folded[name.casefold()]] if name.casefold() in folded else []
        close = close or difflib.get_close_matches(name, list(members), n=1, cutoff=0.75)
        if close:
            problem += f"; did you mean {close[0]!r}?"
        creatable = creatable or (target and name.casefold() not in folded)
        problems.append(problem)
    if problems:
        known = ", ".join(repr(n) for n in sorted(members)[:50]) or "none yet"
        hint = '; to create new teams, send "create_teams": true' if creatable else ""
        raise ValidationFailed(f"{'; '.join(problems)} (the teams: {known}){hint}")
    return [
        f"team {name!r} ({where}) has no active member: its tickets wait in its queue until an agent joins it"
        for name, (where, target) in sorted(named.items())
        if target and members.get(name, 0) == 0
    ]
