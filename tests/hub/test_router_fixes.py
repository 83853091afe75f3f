"""The router's failure modes (SQLite and PostgreSQL): a rule document no
worker could load, an automation action the hub refuses, SLA escalation to a
team lead who joined or left while the hub runs, an idle rule's own reply,
round robin with several workers; SLA clocks of tickets queued before their
first routing, reopened by a roundabout way or timed by a rule's policy;
automation on resolved tickets; idle rules past tickets that do not match; a
sticky assignment and round robin's turns; agent settings and team names an
admin sends that could not be kept."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import delete, func, select, update

import hub.actions
import hub.router
from hub.actions import do_ensure_inbox, do_handoff, do_set_status, record_ticket_event
from hub.core import Channel, TicketEventKind, TicketStatus, utcnow
from hub.errors import ValidationFailed
from hub.router import AUTOMATION_DOC, RULES_DOC, Router, do_set_agent_active
from hub.stream.base import Event
from routing.settings import AutomationRule, RoutingRule
from storage.db import Database
from storage.migrate import upgrade_async
from storage.models import (
    Agent,
    AuditLog,
    AutomationRun,
    Contact,
    Identity,
    Message,
    RoutingDocument,
    Team,
    Ticket,
    TicketCycle,
    TicketEventRow,
    TicketLabel,
)
from tests.hub.helpers import Agent as ApiAgent
from tests.hub.helpers import make_config, running_hub
from tests.hub.routing_world import Live, add_agent, pump, routing_config, worker, write
from tests.hub.web.test_routing import add_agent_to_db, ana_id


async def ticket(db: Database, tid: int) -> Ticket:
    async with db.read() as s:
        t = await s.get(Ticket, tid)
        assert t is not None
        return t


async def labels(db: Database, tid: int) -> list[str]:
    async with db.read() as s:
        return sorted((await s.scalars(select(TicketLabel.label).where(TicketLabel.ticket_id == tid))).all())


async def skipped_actions(db: Database, tid: int) -> list[dict[str, Any]]:
    async with db.read() as s:
        rows = (
            await s.scalars(
                select(AuditLog)
                .where(AuditLog.action == "automation.action", AuditLog.entity_id == tid)
                .order_by(AuditLog.id)
            )
        ).all()
    return [r.data["action"] for r in rows if "skipped" in r.data["action"]]


# --- rule documents -----------------------------------------------------------


async def test_a_rule_document_stored_differently_than_written_is_refused_and_nothing_is_saved(
    db: Database,
) -> None:
    w = worker(db, routing_config(default_team="Support"))
    await w.router.setup()
    before = await w.router.documents()
    good = AutomationRule.model_validate(
        {"name": "nudge", "on": "idle", "idle_minutes": 120, "actions": [{"add_labels": ["a"]}]}
    )
    # What a model that let infinity through would hand over: the JSON
    # encoder stores it as null, and idle_minutes null is no idle rule.
    bad = good.model_copy(update={"idle_minutes": float("inf")})
    with pytest.raises(ValueError, match="idle_minutes"):
        await w.router.save_rules(automation=[bad], actor="agent:1")
    assert await w.router.documents() == before
    async with db.read() as s:
        assert await s.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action.like("routing.%"))) == 0
    # Every worker, this one and one started now, still routes and sweeps.
    await add_agent(db, "ana@example.com")
    r = await write(db, "hello")
    fresh = worker(db, routing_config(default_team="Support"))
    await pump([fresh])
    await fresh.router.sweep()
    await w.router.sweep()
    assert (await ticket(db, r.ticket_id)).assignee_id is not None
    # A valid document is still saved.
    await w.router.save_rules(automation=[good], actor="agent:1")
    saved = (await w.router.documents())[AUTOMATION_DOC]["items"]
    assert saved == [good.model_dump(mode="json", exclude_defaults=True)]


async def test_a_rule_json_cannot_hold_is_refused_as_invalid(db: Database) -> None:
    w = worker(db, routing_config())
    await w.router.setup()
    rule = RoutingRule.model_validate({"name": "big", "when": {"attributes": {"n": 2**70}}, "team": "Sales"})
    with pytest.raises(ValueError, match="cannot be stored as JSON"):  # the API's 422, not a 500
        await w.router.save_rules(rules=[rule], actor="agent:1")
    assert (await w.router.documents())[RULES_DOC]["version"] == 1


async def test_a_stored_document_that_cannot_be_loaded_keeps_the_last_good_rules(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = routing_config(
        default_team="Support",
        teams=[{"name": "Support"}, {"name": "Sales"}],
        rules=[{"name": "from-config", "when": {"keywords": ["invoice"]}, "team": "Sales"}],
    )
    w = worker(db, cfg)
    await w.router.setup()
    api_rule = RoutingRule.model_validate({"name": "from-api", "when": {"keywords": ["refund"]}, "team": "Sales"})
    await w.router.save_rules(rules=[api_rule], actor="agent:1")
    assert [c.rule.name for c in (await w.router.state()).rules] == ["from-api"]
    # As a hub that checked less could have saved it, or a hand edit.
    async with db.write() as s:
        await s.execute(
            update(RoutingDocument)
            .where(RoutingDocument.key == RULES_DOC)
            .values(body=[{"name": "broken", "team": "Sales", "when": {"keywords": "not a list"}}], version=99)
        )
    caplog.set_level(logging.ERROR, logger="hub.router")
    state = await w.router.state(fresh=True)
    assert [c.rule.name for c in state.rules] == ["from-api"]
    assert state.versions[0] == 99  # tried once, not again at every reload
    assert any("rules version 99 cannot be loaded" in r.getMessage() for r in caplog.records)
    await add_agent(db, "ana@example.com", teams=["Sales"])
    r = await write(db, "I want a refund")
    await pump([w])
    async with db.read() as s:
        sales = await s.scalar(select(Team.id).where(Team.name == "Sales"))
    assert (await ticket(db, r.ticket_id)).team_id == sales
    await w.router.sweep()

    # Restarted: nothing good loaded yet, so config.yaml's rules, loudly.
    caplog.clear()
    restarted = worker(db, cfg)
    await restarted.router.setup()
    assert [c.rule.name for c in (await restarted.router.state()).rules] == ["from-config"]
    assert any(r.levelno == logging.CRITICAL and "config.yaml" in r.getMessage() for r in caplog.records)
    await restarted.router.sweep()


# --- automation actions ---------------------------------------------------------


async def test_an_automation_assigning_a_deactivated_agent_skips_only_that_action(db: Database) -> None:
    live = Live()
    cfg = routing_config(
        default_team="Support",
        teams=[{"name": "Support"}],
        automation=[
            {
                "name": "urgent-to-bob",
                "on": "message.received",
                "when": {"keywords": ["urgent"]},
                "actions": [{"add_labels": ["urgent"]}, {"assign_agent": "bob@example.com"}, {"priority": "high"}],
            }
        ],
    )
    w = worker(db, cfg, live)
    await w.router.setup()
    await add_agent(db, "admin@example.com")
    bob = await add_agent(db, "bob@example.com")
    async with db.write() as s:
        agent = await s.get(Agent, bob)
        assert agent is not None
        await do_set_agent_active(s, agent, False, actor="admin")
    r = await write(db, "this is urgent")
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.assignee_id != bob and t.priority == "high"
    assert await labels(db, r.ticket_id) == ["urgent"]
    assert [a["skipped"] for a in await skipped_actions(db, r.ticket_id)] == [
        "no active agent has the email bob@example.com"
    ]
    assert [m["ticket"]["id"] for m in live.of("message.received")] == [r.ticket_id]


async def test_an_action_the_hub_refuses_is_undone_alone_and_the_event_goes_on(db: Database) -> None:
    live = Live()
    cfg = routing_config(
        default_team="Support",
        automation=[
            {
                "name": "ack",
                "on": "message.received",
                "actions": [{"add_labels": ["seen"]}, {"reply": "Thanks, we got it."}, {"priority": "high"}],
            }
        ],
    )
    w = worker(db, cfg, live)
    await w.router.setup()
    r = await write(db, "hello")
    async with db.write() as s:
        # A contact with nowhere to reply to (their identity merged away).
        await s.execute(delete(Identity).where(Identity.contact_id == r.contact_id))
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.priority == "high" and await labels(db, r.ticket_id) == ["seen"]
    (skip,) = await skipped_actions(db, r.ticket_id)
    assert skip["reply"] == "Thanks, we got it." and "no webchat address" in skip["skipped"]
    async with db.read() as s:
        assert not (await s.scalars(select(Message).where(Message.direction == "out"))).all()
    assert live.of("message.received")


async def test_a_refused_action_leaves_no_event_for_the_relay(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = routing_config(
        automation=[
            {"name": "tag", "on": "message.received", "actions": [{"add_labels": ["x"]}, {"priority": "high"}]}
        ],
    )
    real = hub.actions.do_set_labels

    async def set_then_refuse(session: Any, ticket: Ticket, labels: list[str], *, actor: str) -> None:
        # An action refused after it wrote (and announced) part of its work.
        await real(session, ticket, labels, actor=actor)
        await record_ticket_event(session, ticket, TicketEventKind.ROUTED, actor, {"labels": labels})
        raise ValidationFailed("refused")

    monkeypatch.setattr(hub.router, "do_set_labels", set_then_refuse)
    w = worker(db, cfg)
    await w.router.setup()
    r = await write(db, "hello")
    handed: list[tuple[int, str, dict[str, Any]]] = []
    db.outbox_lease_seconds = 30
    db.on_commit = handed.extend
    await pump([w])
    assert (await ticket(db, r.ticket_id)).priority == "high"
    assert await labels(db, r.ticket_id) == []
    assert [a["skipped"] for a in await skipped_actions(db, r.ticket_id)] == ["refused"]
    async with db.read() as s:
        events = (await s.scalars(select(TicketEventRow.actor).where(TicketEventRow.ticket_id == r.ticket_id))).all()
    assert "automation:tag" in events  # the priority's
    # Only events that were committed reach the relay: the undone one's id
    # would name a row that does not exist.
    assert not [p for _, _, p in handed if (p.get("data") or {}).get("labels") == ["x"]]


# --- SLA escalation to the lead --------------------------------------------------


LEAD_CONFIG: dict[str, Any] = {
    "default_team": "Support",
    "teams": [{"name": "Support", "lead": "lead@example.com", "sla": "fast"}],
    "sla_policies": {"fast": {"first_response_minutes": 1, "on_breach": {"to_lead": True, "notify": ["lead"]}}},
}


async def test_a_lead_added_while_the_hub_runs_gets_the_breach(db: Database) -> None:
    live = Live()
    w = worker(db, routing_config(**LEAD_CONFIG), live)
    await w.router.setup()
    await add_agent(db, "sue@example.com", capacity={"webchat": 0})  # Support is full: the ticket waits
    r = await write(db, "help")
    await pump([w])  # the routing state is loaded, without a lead
    lead = await add_agent(db, "lead@example.com", teams=[], capacity={"webchat": 0})  # crm-hub agent add
    assert await w.router.sweep_sla(utcnow() + timedelta(minutes=2)) == 1
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert (t.assignee_id, t.queued_at) == (lead, None)
    (breach,) = live.of("sla.breach")
    assert breach["data"]["notify"] == [lead]


async def test_a_deactivated_lead_gets_nothing_and_the_team_hears_instead(db: Database) -> None:
    live = Live()
    await add_agent(db, "admin@example.com", teams=[])
    lead = await add_agent(db, "lead@example.com", teams=[], online=False)
    sue = await add_agent(db, "sue@example.com", capacity={"webchat": 0})
    async with db.write() as s:
        agent = await s.get(Agent, lead)
        assert agent is not None
        await do_set_agent_active(s, agent, False, actor="admin")
    w = worker(db, routing_config(**LEAD_CONFIG), live)
    await w.router.setup()
    r = await write(db, "help")
    await pump([w])
    assert await w.router.sweep_sla(utcnow() + timedelta(minutes=2)) == 1
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.assignee_id is None and t.queued_at is not None  # waits in Support's queue
    (breach,) = live.of("sla.breach")
    assert breach["data"]["notify"] == [sue]


async def test_without_a_lead_an_assigned_ticket_goes_back_to_the_team_queue(db: Database) -> None:
    live = Live()
    cfg = {**LEAD_CONFIG, "teams": [{"name": "Support", "lead": "nobody@example.com", "sla": "fast"}]}
    w = worker(db, routing_config(**cfg), live)
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com")
    r = await write(db, "help")
    await pump([w])
    assert (await ticket(db, r.ticket_id)).assignee_id == ana
    async with db.write() as s:
        # Ana fills up, so the queue cannot hand it straight back to her.
        await s.execute(update(Agent).where(Agent.id == ana).values(capacity={"webchat": 0}))
    assert await w.router.sweep_sla(utcnow() + timedelta(minutes=2)) == 1
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.assignee_id is None and t.queued_at is not None
    (breach,) = live.of("sla.breach")
    assert breach["data"]["changes"]["assignee"]["from"] == ana
    assert breach["data"]["notify"] == [ana]  # the team, in the lead's stead


# --- idle rules ------------------------------------------------------------------


async def test_an_idle_nudge_fires_once_per_quiet_spell_and_the_customer_still_waits(db: Database) -> None:
    cfg = routing_config(
        default_team="Support",
        automation=[
            {
                "name": "nudge",
                "on": "idle",
                "idle_minutes": 120,
                "when": {"status": ["open"], "assigned": False},
                "actions": [{"reply": "Thanks for waiting"}],
            }
        ],
    )
    w = worker(db, cfg)
    await w.router.setup()
    r = await write(db, "hello?", sender="visitor-idle")
    await pump([w])
    waiting = (await ticket(db, r.ticket_id)).waiting_since
    assert waiting is not None
    now = utcnow()

    async def replies() -> int:
        async with db.read() as s:
            n = await s.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.ticket_id == r.ticket_id, Message.direction == "out")
            )
        return int(n or 0)

    for k in range(1, 5):
        await w.router.sweep_idle(now + timedelta(minutes=121 * k))
        await pump([w])
    assert await replies() == 1
    assert (await ticket(db, r.ticket_id)).waiting_since == waiting
    # The customer writes again: a new quiet spell, one more nudge.
    again = await write(db, "anyone?", sender="visitor-idle")
    assert again.ticket_id == r.ticket_id
    await pump([w])
    for k in range(5, 8):
        await w.router.sweep_idle(now + timedelta(minutes=121 * k))
        await pump([w])
    assert await replies() == 2


# --- round robin -------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.timeout(600)
async def test_round_robin_takes_turns_across_four_workers(postgres_url: str) -> None:
    await upgrade_async(postgres_url)
    setup = Database(postgres_url)
    async with setup.write() as s:
        await do_ensure_inbox(s, key="webchat", channel=Channel.WEBCHAT, name="Website")
    cfg = routing_config(
        default_team="Sales", teams=[{"name": "Sales", "strategy": "round_robin"}], sticky_window_hours=0
    )
    # Every worker has its own engine: real concurrent transactions.
    dbs = [Database(postgres_url, pool_size=4) for _ in range(4)]
    workers = [worker(d, cfg) for d in dbs]
    try:
        await workers[0].router.setup()
        agents = [
            await add_agent(setup, f"a{i}@example.com", teams=["Sales"], capacity={"webchat": 100}) for i in range(4)
        ]
        for i in range(80):
            await write(setup, f"hello {i}")
        await pump(workers)
        async with setup.read() as s:
            rows = (
                await s.scalars(select(AuditLog).where(AuditLog.action == "ticket.routed").order_by(AuditLog.id))
            ).all()
        turns = [r.data["assignee_id"] for r in rows]
        assert Counter(turns) == {a: 20 for a in agents}
        # In the order they were made, each agent after the one before.
        assert turns == [sorted(agents)[i % 4] for i in range(80)]
    finally:
        for d in [*dbs, setup]:
            await d.dispose()


# --- SLA clocks: when they start -------------------------------------------------


async def cycles(db: Database, tid: int) -> list[TicketCycle]:
    async with db.read() as s:
        return list(
            (
                await s.scalars(select(TicketCycle).where(TicketCycle.ticket_id == tid).order_by(TicketCycle.number))
            ).all()
        )


async def routed_events(db: Database, tid: int) -> int:
    async with db.read() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(TicketEventRow)
            .where(TicketEventRow.ticket_id == tid, TicketEventRow.kind == TicketEventKind.ROUTED.value)
        )
    return int(n or 0)


async def test_a_ticket_an_automation_queues_before_it_is_routed_gets_its_sla_clock(db: Database) -> None:
    cfg = routing_config(
        teams=[{"name": "Billing", "sla": "std"}],
        sla_policies={"std": {"first_response_minutes": 10}},
        automation=[
            {
                "name": "refunds",
                "on": "message.received",
                "when": {"keywords": ["refund"]},
                "actions": [{"assign_team": "Billing"}],
            }
        ],
    )
    w = worker(db, cfg)
    await w.router.setup()
    await add_agent(db, "ana@example.com", teams=["Billing"], online=False)
    r = await write(db, "I want a refund")
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.queued_at is not None and t.assignee_id is None
    # The clock starts when the ticket reaches its team, from the customer's message.
    assert (t.sla_policy, t.cycle_started_at) == ("std", t.waiting_since)
    assert t.first_response_due_at == t.waiting_since + timedelta(minutes=10)  # type: ignore[operator]
    assert await routed_events(db, r.ticket_id) == 1  # the agents' inbox hears it is queued
    assert await w.router.sweep_sla(utcnow() + timedelta(minutes=11)) == 1
    # Handled again (a redelivery, another message), it stays quiet.
    await w.router.route(r.ticket_id, enqueue=True)
    assert await routed_events(db, r.ticket_id) == 1


async def test_a_ticket_queued_while_the_bot_holds_it_starts_its_clock_at_the_handoff(db: Database) -> None:
    cfg = routing_config(
        teams=[{"name": "Sales", "sla": "std"}],
        sla_policies={"std": {"first_response_minutes": 10}},
        automation=[
            {
                "name": "sms-to-sales",
                "on": "ticket.created",
                "when": {"channel": ["sms"]},
                "actions": [{"assign_team": "Sales"}],
            }
        ],
    )
    async with db.write() as s:
        await do_ensure_inbox(s, key="sms:+15550002222", channel=Channel.SMS, name="SMS bot", bot_enabled=True)
    w = worker(db, cfg)
    await w.router.setup()
    await add_agent(db, "ana@example.com", teams=["Sales"], online=False)
    r = await write(db, "hi", channel=Channel.SMS, inbox="sms:+15550002222", sender="+15551230000")
    await pump([w])
    t = await ticket(db, r.ticket_id)
    # The bot's: in no queue and on no clock yet.
    assert (t.status, t.queued_at, t.cycle_started_at) == ("pending", None, None)
    async with db.write() as s:
        tk = await s.get(Ticket, r.ticket_id)
        assert tk is not None
        await do_handoff(s, tk, reason="wants a human")
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.status == "open" and t.queued_at is not None and t.waiting_since is not None
    assert t.cycle_started_at == t.waiting_since  # the handoff
    assert t.first_response_due_at == t.waiting_since + timedelta(minutes=10)
    assert await w.router.sweep_sla(utcnow() + timedelta(minutes=11)) == 1


SLA_TEAM: dict[str, Any] = {
    "default_team": "Support",
    "teams": [{"name": "Support", "sla": "std"}],
    "sla_policies": {"std": {"first_response_minutes": 30, "resolution_minutes": 600}},
}


async def set_status(db: Database, tid: int, status: TicketStatus, until: datetime | None = None) -> None:
    async with db.write() as s:
        t = await s.get(Ticket, tid)
        assert t is not None
        await do_set_status(s, t, status=status, actor="agent:1", snoozed_until=until)


@pytest.mark.parametrize(
    "reopening",
    ["snooze ends", "customer wakes the snooze", "pending, then open", "straight"],
)
async def test_a_resolved_ticket_reopened_any_way_starts_a_new_cycle(db: Database, reopening: str) -> None:
    w = worker(db, routing_config(**SLA_TEAM))
    await w.router.setup()
    await add_agent(db, "ana@example.com")
    r = await write(db, "hello", sender="visitor-reopen")
    await pump([w])
    await set_status(db, r.ticket_id, TicketStatus.RESOLVED)
    await pump([w])
    assert (await ticket(db, r.ticket_id)).resolution_due_at is None
    if reopening == "straight":
        await set_status(db, r.ticket_id, TicketStatus.OPEN)
    elif reopening == "pending, then open":
        await set_status(db, r.ticket_id, TicketStatus.PENDING)
        await pump([w])
        await set_status(db, r.ticket_id, TicketStatus.OPEN)
    else:
        await set_status(db, r.ticket_id, TicketStatus.SNOOZED, utcnow() + timedelta(minutes=5))
        await pump([w])
        assert [c.number for c in await cycles(db, r.ticket_id)] == [1]  # asleep: no clock yet
        if reopening == "snooze ends":
            assert await w.router.sweep_snoozed(utcnow() + timedelta(minutes=6)) == 1
        else:
            assert (await write(db, "me again", sender="visitor-reopen")).ticket_id == r.ticket_id
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.status == "open" and t.sla_cycle == 2
    assert t.first_response_due_at is not None and t.resolution_due_at is not None
    first, second = await cycles(db, r.ticket_id)
    assert first.resolved_at is not None and second.resolved_at is None
    assert second.started_at >= first.resolved_at and second.first_response_due_at == t.first_response_due_at
    # Handled again, nothing starts another.
    await w.router.on_status_changed(
        Event(
            key=f"ticket:{t.id}",
            payload={"ticket": {"id": t.id}, "data": {"from": "snoozed", "to": "open"}, "actor": "system"},
        )
    )
    assert [c.number for c in await cycles(db, r.ticket_id)] == [1, 2]


async def test_a_rule_sla_applies_in_the_shared_inbox(db: Database) -> None:
    cfg = routing_config(
        rules=[
            {"name": "outage", "when": {"keywords": ["outage"]}, "sla": "fast"},
            {"name": "billing", "when": {"keywords": ["invoice"]}, "skills": ["billing"]},
        ],
        sla_policies={"fast": {"first_response_minutes": 5}, "standard": {"first_response_minutes": 240}},
        default_sla="standard",
    )
    w = worker(db, cfg)
    await w.router.setup()
    outage = await write(db, "total outage, nothing works", sender="visitor-outage")
    invoice = await write(db, "my invoice is wrong")
    plain = await write(db, "hello")
    await pump([w])
    t = await ticket(db, outage.ticket_id)
    assert (t.team_id, t.sla_policy) == (None, "fast")
    assert t.first_response_due_at == t.cycle_started_at + timedelta(minutes=5)  # type: ignore[operator]
    # Kept for the team it goes to later; the default policy times it meanwhile.
    t = await ticket(db, invoice.ticket_id)
    assert (t.skills, t.sla_policy) == (["billing"], "standard")
    assert (await ticket(db, plain.ticket_id)).sla_policy == "standard"
    # The customer's next message changes nothing, and says nothing more.
    assert await routed_events(db, outage.ticket_id) == 1
    await write(db, "still an outage", sender="visitor-outage")
    await pump([w])
    assert await routed_events(db, outage.ticket_id) == 1
    assert (await ticket(db, outage.ticket_id)).sla_policy == "fast"


async def test_a_rule_sla_starts_a_clock_even_without_a_default_policy(db: Database) -> None:
    cfg = routing_config(
        rules=[{"name": "outage", "when": {"keywords": ["outage"]}, "sla": "fast"}],
        sla_policies={"fast": {"first_response_minutes": 5}},
    )
    w = worker(db, cfg)
    await w.router.setup()
    r = await write(db, "outage!")
    other = await write(db, "hello")
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.sla_policy == "fast" and t.first_response_due_at is not None
    assert await w.router.sweep_sla(utcnow() + timedelta(minutes=6)) == 1
    assert (await ticket(db, other.ticket_id)).cycle_started_at is None  # no policy: no clock


# --- automation on resolved tickets -------------------------------------------------


async def test_a_rule_on_a_resolved_ticket_acts_and_it_stays_resolved(db: Database) -> None:
    cfg = routing_config(
        default_team="Support",
        automation=[
            {
                "name": "csat",
                "on": "ticket.status_changed",
                "when": {"status": ["resolved"]},
                "actions": [
                    {"resolve": True},
                    {"add_labels": ["surveyed"]},
                    {"reply": "How did we do? Rate us 1-5."},
                    {"snooze_minutes": 60},
                ],
            }
        ],
    )
    w = worker(db, cfg)
    await w.router.setup()
    await add_agent(db, "ana@example.com")
    r = await write(db, "hello")
    await pump([w])
    await set_status(db, r.ticket_id, TicketStatus.RESOLVED)
    resolved_at = (await ticket(db, r.ticket_id)).resolved_at
    await pump([w])
    t = await ticket(db, r.ticket_id)
    # As an agent's reply would, the survey leaves it resolved (and when it was).
    assert (t.status, t.resolved_at) == ("resolved", resolved_at)
    assert await labels(db, r.ticket_id) == ["surveyed"]
    async with db.read() as s:
        out = (
            await s.scalars(select(Message).where(Message.ticket_id == r.ticket_id, Message.direction == "out"))
        ).all()
    assert [(m.body, m.author) for m in out] == [("How did we do? Rate us 1-5.", "system")]
    assert [a["skipped"] for a in await skipped_actions(db, r.ticket_id)] == [
        "the ticket is resolved already",
        "the ticket is resolved: snoozing it would reopen it",
    ]
    # Nothing it did is an occasion for it again.
    assert await pump([w]) == 0


async def test_a_rule_that_resolves_stops_there_but_for_its_notes(db: Database) -> None:
    cfg = routing_config(
        automation=[
            {
                "name": "spam",
                "on": "message.received",
                "when": {"keywords": ["casino"]},
                "actions": [{"resolve": True}, {"note": "closed as spam"}, {"add_labels": ["late"]}],
            }
        ],
    )
    w = worker(db, cfg)
    await w.router.setup()
    r = await write(db, "best casino bonus")
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.status == "resolved" and await labels(db, r.ticket_id) == []
    async with db.read() as s:
        notes = (await s.scalars(select(Message.body).where(Message.private.is_(True)))).all()
    assert notes == ["closed as spam"]


# --- idle rules: nothing starves ------------------------------------------------------


async def quiet(db: Database, tid: int, minutes_ago: int) -> None:
    async with db.write() as s:
        await s.execute(
            update(Ticket).where(Ticket.id == tid).values(last_message_at=utcnow() - timedelta(minutes=minutes_ago))
        )


async def test_an_idle_rule_reaches_the_tickets_behind_older_ones_that_do_not_match(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = routing_config(
        automation=[
            {
                "name": "vip-nudge",
                "on": "idle",
                "idle_minutes": 60,
                "when": {"tags": ["vip"], "assigned": False},
                "actions": [{"add_labels": ["nudged"]}],
            }
        ],
    )
    w = worker(db, cfg)
    await w.router.setup()
    # Older than the VIP's: tickets of other customers, which only the contact
    # tells apart, and assigned ones, which SQL leaves out.
    others = [await write(db, f"hello {i}") for i in range(7)]
    assigned = [await write(db, f"assigned {i}") for i in range(3)]
    vip = await write(db, "hello from a vip")
    ana = await add_agent(db, "ana@example.com", teams=[])
    async with db.write() as s:
        await s.execute(update(Contact).where(Contact.id == vip.contact_id).values(tags=["vip"]))
        await s.execute(update(Ticket).where(Ticket.id.in_([r.ticket_id for r in assigned])).values(assignee_id=ana))
    for age, r in enumerate(reversed([*others, *assigned, vip]), start=61):
        await quiet(db, r.ticket_id, age)
    # Two at a time: one sweep pages past them all.
    assert await w.router.sweep_idle(limit=2) == 1
    assert await labels(db, vip.ticket_id) == ["nudged"]
    assert await w.router.sweep_idle(limit=2) == 0  # once per quiet spell
    # At most four a sweep: the first stops short of the VIP, the next goes on
    # from there, and the one after that starts from the oldest again.
    async with db.write() as s:
        await s.execute(delete(TicketLabel))
        await s.execute(delete(AutomationRun))
    monkeypatch.setattr(hub.router, "_IDLE_SCAN", 4)
    bounded = Router(db, cfg)
    assert [await bounded.sweep_idle(limit=2) for _ in range(4)] == [0, 1, 0, 0]
    assert await labels(db, vip.ticket_id) == ["nudged"]


async def test_an_idle_rule_finds_in_sql_what_its_conditions_match(db: Database) -> None:
    when = {
        "status": ["open"],
        "channel": ["webchat"],
        "inbox": ["webchat"],
        "team": ["Support", "Nobody"],
        "labels": ["VIP", "gold"],  # the ticket has "vip": labels ignore case
        "priority": ["normal", "low"],
        "assigned": False,
    }
    cfg = routing_config(
        default_team="Support",
        automation=[
            {"name": "tag-vips", "on": "message.received", "actions": [{"add_labels": ["vip"]}]},
            {"name": "nudge", "on": "idle", "idle_minutes": 60, "when": when, "actions": [{"note": "nudge"}]},
        ],
    )
    w = worker(db, cfg)
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com", teams=[])
    match = await write(db, "hello")
    # Each of these fails one condition or two (the SMS: channel and inbox).
    no_team, urgent, mine, snoozed, unlabelled = [await write(db, f"hello {i}") for i in range(5)]
    by_sms = await write(db, "hello", channel=Channel.SMS, inbox="sms:+15550001111", sender="+15551230000")
    await pump([w])
    async with db.write() as s:
        await s.execute(delete(TicketLabel).where(TicketLabel.ticket_id == unlabelled.ticket_id))
        await s.execute(update(Ticket).where(Ticket.id == no_team.ticket_id).values(team_id=None))
        await s.execute(update(Ticket).where(Ticket.id == urgent.ticket_id).values(priority="urgent"))
        await s.execute(update(Ticket).where(Ticket.id == mine.ticket_id).values(assignee_id=ana))
        await s.execute(update(Ticket).where(Ticket.id == snoozed.ticket_id).values(status="snoozed"))
    for r in (match, no_team, urgent, mine, snoozed, by_sms, unlabelled):
        await quiet(db, r.ticket_id, 61)
    assert await w.router.sweep_idle() == 1
    async with db.read() as s:
        noted = (await s.scalars(select(Message.ticket_id).where(Message.body == "nudge"))).all()
    assert noted == [match.ticket_id]


# --- round robin and the sticky owner --------------------------------------------------


async def test_a_sticky_assignment_takes_nobody_s_turn(db: Database) -> None:
    cfg = routing_config(
        default_team="Sales", teams=[{"name": "Sales", "strategy": "round_robin"}], default_capacity={"webchat": 50}
    )
    w = worker(db, cfg)
    await w.router.setup()
    agents = [await add_agent(db, f"a{i}@example.com", teams=["Sales"]) for i in range(1, 4)]
    x1 = await write(db, "hi", sender="cust-x")
    await pump([w])
    y = await write(db, "hi", sender="cust-y")
    await pump([w])
    await set_status(db, x1.ticket_id, TicketStatus.RESOLVED)
    await pump([w])
    x2 = await write(db, "me again", sender="cust-x")  # back to a1, who had them before
    await pump([w])
    z = await write(db, "hi", sender="cust-z")
    await pump([w])
    got = [(await ticket(db, r.ticket_id)).assignee_id for r in (x1, y, x2, z)]
    assert got == [agents[0], agents[1], agents[0], agents[2]]
    async with db.read() as s:
        data = (
            await s.scalars(select(AuditLog.data).where(AuditLog.action == "ticket.routed").order_by(AuditLog.id))
        ).all()
    assert [d["sticky"] for d in data] == [False, False, True, False]


# --- what an admin sends over the API ---------------------------------------------------


async def test_agent_settings_and_team_names_that_cannot_be_kept_are_refused_naming_the_field(
    tmp_path: Path, db_url: str
) -> None:
    cfg = make_config(
        tmp_path,
        **{"database.url": db_url, "routing.default_team": "Support", "routing.teams": [{"name": "Support"}]},
    )
    await add_agent_to_db(cfg)
    async with running_hub(cfg) as server, aiohttp.ClientSession() as http:
        admin = await ApiAgent.login(http, str(server.make_url("")).rstrip("/"), "admin@example.com")
        ana = await ApiAgent.login(http, admin.base, "ana@example.com")
        url = f"/api/v1/agents/{ana_id(await ana.get('/api/v1/me'))}"
        before = await admin.patch(url, {"capacity": {"webchat": 3}, "skills": ["billing"], "languages": ["fa"]})
        refused = [
            ({"capacity": {"webchat": 10**20}}, "capacity.webchat: Input should be less than or equal to 10000"),
            ({"capacity": {"webchat": True}}, "capacity.webchat: Input should be a valid integer"),
            ({"capacity": {"email": 2.5}}, "capacity.email: Input should be a valid integer"),
            ({"capacity": {"sms": -1}}, "capacity.sms: Input should be greater than or equal to 0"),
            ({"skills": ["\ud800"]}, "skills.0: Input should be a valid string"),
            ({"skills": ["ok", " "]}, "skills.1: String should have at least 1 character"),
            ({"skills": ["x" * 101]}, "skills.0: String should have at most 100 characters"),
            ({"languages": ["\ud800"]}, "languages.0: Input should be a valid string"),
            ({"languages": ["x" * 36]}, "languages.0: String should have at most 35 characters"),
            (
                {"teams": ["Billing", "billing"], "create_teams": True},
                "teams: team 'billing' differs from 'Billing' (teams) only in case",
            ),
        ]
        for body, message in refused:
            answer = await admin.patch(url, body, 422)
            assert message in answer["error"]["message"], (body, answer)
        agents = {a["id"]: a for a in (await admin.get("/api/v1/agents"))["items"]}
        assert agents[before["id"]] == before  # nothing saved
        # Stray spaces go, as they do from a rule's skills.
        assert (await admin.patch(url, {"skills": [" billing ", "vat"]}))["skills"] == ["billing", "vat"]
        # A phone is stored as POST /agents stores it (E.164), or refused by name.
        answer = await admin.patch(url, {"phone": "not a phone"}, 422)
        assert answer["error"]["message"].startswith("phone: "), answer
        assert (await admin.patch(url, {"phone": "+1 (415) 555-0123"}))["phone"] == "+14155550123"
        # A rule document: two spellings of one new team are refused too.
        version = (await admin.get("/api/v1/routing/rules"))["version"]
        items = [{"name": "a", "team": "Wholesale"}, {"name": "b", "team": "wholesale"}]
        answer = await admin.put("/api/v1/routing/rules", {"items": items, "create_teams": True}, 422)
        assert (
            "rule 'b': team 'wholesale' differs from 'Wholesale' (rule 'a') only in case" in answer["error"]["message"]
        )
        one = await admin.put("/api/v1/routing/rules", {"items": items[:1], "create_teams": True})
        assert one["version"] == version + 1
        assert {t["name"] for t in (await admin.get("/api/v1/teams"))["items"]} == {"Support", "Wholesale"}
