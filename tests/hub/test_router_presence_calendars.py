"""The router on a real database (SQLite and PostgreSQL), for what the routing
review found (reviews/routing.md): agents with regional language tags, the
requeue of chats held by absent agents, SLA policies a calendar cannot count,
business-hours conditions on the ticket's team calendar, and going back to
config.yaml's rules after an admin saved some through the API."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import select

from hub.actions import do_assign
from hub.core import Presence, utcnow
from hub.router import AUTOMATION_DOC, RULES_DOC, Router
from routing.settings import AutomationRule, RoutingRule
from storage.db import Database
from storage.models import AuditLog, Ticket, TicketLabel
from tests.hub.routing_world import add_agent, pump, routing_config, set_presence, worker, write

SUPPORT = {"default_team": "Support", "teams": [{"name": "Support"}]}


async def ticket(db: Database, tid: int) -> Ticket:
    async with db.read() as s:
        t = await s.get(Ticket, tid)
        assert t is not None
        return t


async def test_an_agent_with_a_regional_language_tag_gets_tickets_and_shows_as_available(db: Database) -> None:
    w = worker(db, routing_config(**SUPPORT))
    await w.router.setup()
    british = await add_agent(db, "a2@example.com", languages=["en-GB"])
    persian = await add_agent(db, "fa@example.com", languages=["fa-IR"])
    written = await write(db, "hello there, my order is late")
    await pump([w])
    t = await ticket(db, written.ticket_id)
    assert (t.language, t.assignee_id, t.queued_at) == ("en", british, None)
    # Availability applies the rule routing applies.
    ids = [a.id for a in await w.router.available_agents("Support", "webchat", "en")]
    assert ids == [british]
    assert [a.id for a in await w.router.available_agents("Support", "webchat", "fa")] == [persian]
    assert sorted(a.id for a in await w.router.available_agents("Support", "webchat")) == sorted([british, persian])


async def give(db: Database, tid: int, agent_id: int) -> None:
    """An admin's manual assignment."""
    async with db.write() as s:
        t = await s.get(Ticket, tid)
        assert t is not None
        await do_assign(s, t, agent_id=agent_id, team_id=t.team_id, actor="agent:1")


async def test_chats_of_absent_agents_requeue_after_the_grace_from_their_assignment(db: Database) -> None:
    cfg = routing_config(**SUPPORT, presence={"away_after_seconds": 60, "requeue_after_seconds": 120})
    w = worker(db, cfg)
    await w.router.setup()
    # Created with `crm-hub agent add` and never logged in: no presence change on record.
    never = await add_agent(db, "never@example.com", online=False)
    away = await add_agent(db, "away@example.com")
    await set_presence(db, away, Presence.AWAY, ago=timedelta(hours=1))
    first, second = await write(db, "hi"), await write(db, "hello")
    await pump([w])
    await give(db, first.ticket_id, never)
    await give(db, second.ticket_id, away)
    await pump([w])
    now = utcnow()
    # The admin's deliberate assignment is not undone at the next sweep...
    assert await w.router.sweep_presence(now + timedelta(seconds=1)) == (0, 0)
    assert (await ticket(db, second.ticket_id)).assignee_id == away
    # ...but once the grace has passed, neither agent keeps a chat they do not answer.
    assert await w.router.sweep_presence(now + timedelta(seconds=121)) == (0, 2)
    for written in (first, second):
        t = await ticket(db, written.ticket_id)
        assert t.assignee_id is None and t.queued_at is not None


async def test_a_policy_its_calendar_cannot_count_still_routes_the_ticket_without_that_deadline(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = routing_config(
        default_team="Support",
        teams=[{"name": "Support", "calendar": "office", "sla": "long"}],
        calendars={"office": {"timezone": "UTC", "week": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed")}}},
        sla_policies={"long": {"first_response_minutes": 60, "resolution_minutes": 600, "business_hours": True}},
    )
    # Refused at start-up now; a calendar whose holidays grew could still get
    # here, and so could a hub started before that check.
    cfg.sla_policies["long"].resolution_minutes = 525_600
    w = worker(db, cfg)
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com")
    caplog.set_level(logging.WARNING, logger="hub.router")
    written = await write(db, "hello")
    await pump([w])
    t = await ticket(db, written.ticket_id)
    assert (t.team_id, t.assignee_id, t.sla_policy) == (1, ana, "long")
    assert t.first_response_due_at is not None and t.resolution_due_at is None
    assert any("no resolution deadline: SLA policy long" in r.getMessage() for r in caplog.records)


async def test_an_after_hours_automation_reads_the_ticket_team_calendar(db: Database) -> None:
    cfg = routing_config(
        default_team="Support",
        teams=[{"name": "Support", "calendar": "closed"}],
        # Open one minute a week: closed whenever the test runs, but for that minute.
        calendars={"closed": {"timezone": "Asia/Tehran", "week": {"sun": ["00:00-00:01"]}}},
        automation=[
            {
                "name": "after-hours",
                "on": "message.received",
                "when": {"business_hours": False},
                "actions": [{"add_labels": ["after-hours"]}],
            }
        ],
    )
    w = worker(db, cfg)
    await w.router.setup()
    written = await write(db, "hi, anyone there?")
    await pump([w])
    async with db.read() as s:
        labels = (await s.scalars(select(TicketLabel.label).where(TicketLabel.ticket_id == written.ticket_id))).all()
    assert list(labels) == ["after-hours"]
    assert not await w.router.is_team_open("Support")  # what /queues and the IVR say too


async def test_deleting_saved_rules_brings_back_config_yaml_rules(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    vip = {"name": "vip", "when": {"vip": True}, "priority": "high"}
    router = Router(db, routing_config(**SUPPORT, rules=[vip]))
    await router.setup()
    await router.save_rules(rules=[RoutingRule(name="low", team="Support", priority="low")], actor="agent:1")
    await router.save_rules(
        automation=[
            AutomationRule.model_validate(
                {"name": "t", "on": "idle", "idle_minutes": 5, "actions": [{"priority": "high"}]}
            )
        ],
        actor="agent:1",
    )
    # config.yaml changes; the admin's rules stay, and the warning says how to go back.
    urgent = {"name": "urgent", "when": {"keywords": ["urgent"]}, "priority": "urgent"}
    restarted = Router(db, routing_config(**SUPPORT, rules=[urgent]))
    caplog.set_level(logging.WARNING, logger="hub.router")
    await restarted.setup()
    assert any("DELETE /api/v1/routing/rules" in r.getMessage() for r in caplog.records)
    assert [c.rule.name for c in (await restarted.state(fresh=True)).rules] == ["low"]
    before = (await restarted.documents())[RULES_DOC]["version"]
    await restarted.reset_rules(RULES_DOC, actor="agent:1")
    docs = await restarted.documents()
    assert docs[RULES_DOC]["source"] == "config" and docs[RULES_DOC]["version"] == before + 1
    assert docs[RULES_DOC]["items"] == [urgent]
    assert [c.rule.name for c in (await restarted.state()).rules] == ["urgent"]
    # The automation document is still the admin's until it is reset too.
    assert docs[AUTOMATION_DOC]["source"] == "api"
    await restarted.reset_rules(AUTOMATION_DOC, actor="agent:1")
    assert (await restarted.documents())[AUTOMATION_DOC]["items"] == []
    async with db.read() as s:
        actions = (await s.scalars(select(AuditLog.action).where(AuditLog.actor == "agent:1"))).all()
    assert "routing.rules.reset" in actions and "routing.automation.reset" in actions
    # From now on config.yaml's changes re-seed them again.
    later = {"name": "later", "when": {"keywords": ["later"]}, "priority": "low"}
    again = Router(db, routing_config(**SUPPORT, rules=[later]))
    await again.setup()
    assert (await again.documents())[RULES_DOC]["items"] == [later]
