"""The router's failure modes (SQLite and PostgreSQL): a rule document no
worker could load, an automation action the hub refuses, SLA escalation to a
team lead who joined or left while the hub runs, an idle rule's own reply,
round robin with several workers."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

import hub.actions
import hub.router
from hub.actions import do_ensure_inbox, record_ticket_event
from hub.core import Channel, TicketEventKind, utcnow
from hub.errors import ValidationFailed
from hub.router import AUTOMATION_DOC, RULES_DOC, do_set_agent_active
from routing.settings import AutomationRule, RoutingRule
from storage.db import Database
from storage.migrate import upgrade_async
from storage.models import (
    Agent,
    AuditLog,
    Identity,
    Message,
    RoutingDocument,
    Team,
    Ticket,
    TicketEventRow,
    TicketLabel,
)
from tests.hub.routing_world import Live, add_agent, pump, routing_config, worker, write


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
