"""The router applied on a real database (SQLite and PostgreSQL): rules to a
team, agents by capacity, the queue draining, presence, SLAs per cycle,
automation, handoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from hub.actions import do_ensure_inbox, do_handoff, do_post_message, do_set_status
from hub.core import Author, Channel, InboundMessage, TicketStatus, utcnow
from hub.router import do_heartbeat, do_update_agent_routing
from routing import sla
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Agent, AuditLog, Message, Team, Ticket, TicketCycle, TicketEventRow, TicketLabel
from tests.hub.routing_world import Live, add_agent, pump, routing_config, worker, write

CONFIG: dict[str, Any] = {
    "default_team": "Support",
    "teams": [
        {"name": "Support", "sla": "standard"},
        {"name": "Sales", "strategy": "round_robin"},
        {"name": "Escalations", "lead": "lead@example.com"},
    ],
    "rules": [
        {"name": "billing", "when": {"keywords": ["invoice", "فاکتور"]}, "team": "Sales", "labels": ["billing"]},
        {"name": "vip", "when": {"vip": True}, "priority": "high"},
    ],
    "sla_policies": {
        "standard": {
            "first_response_minutes": 10,
            "next_response_minutes": 30,
            "resolution_minutes": 600,
            "warn_before_minutes": 5,
            "on_breach": {"priority": "urgent", "team": "Escalations", "to_lead": True, "notify": ["team", "lead"]},
        }
    },
}


async def ticket(db: Database, tid: int) -> Ticket:
    async with db.read() as s:
        t = await s.get(Ticket, tid)
        assert t is not None
        return t


async def test_rules_pick_the_team_and_the_agent_with_the_fewest_tickets(db: Database) -> None:
    w = worker(db, routing_config(**CONFIG))
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com", teams=["Sales"])
    bob = await add_agent(db, "bob@example.com", teams=["Sales"])
    await add_agent(db, "sue@example.com", teams=["Support"])
    first = await write(db, "Where is my INVOICE?")
    second = await write(db, "فاكتور من كجاست؟")  # Arabic letters, Persian keyword
    await pump([w])
    t1, t2 = await ticket(db, first.ticket_id), await ticket(db, second.ticket_id)
    async with db.read() as s:
        sales = await s.scalar(select(Team.id).where(Team.name == "Sales"))
    assert (t1.team_id, t2.team_id) == (sales, sales)
    assert {t1.assignee_id, t2.assignee_id} == {ana, bob}  # round robin
    async with db.read() as s:
        routed = (await s.scalars(select(AuditLog).where(AuditLog.action == "ticket.routed"))).all()
        assert {r.data["rule"] for r in routed} == {"billing"}
        assert all(r.actor == "router" for r in routed)


async def test_the_queue_drains_when_capacity_frees(db: Database) -> None:
    live = Live()
    w = worker(db, routing_config(**CONFIG), live)
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com", capacity={"webchat": 1})
    results = [await write(db, f"hello {i}") for i in range(4)]
    await pump([w])
    tickets = [await ticket(db, r.ticket_id) for r in results]
    assert [t.assignee_id for t in tickets] == [ana, None, None, None]
    assert all(t.queued_at is not None for t in tickets[1:])
    queues = {q["team"]: q for q in await w.router.queues()}
    assert queues["Support"]["queued"] == 3 and queues["Support"]["oldest_wait_seconds"] >= 0
    # Resolving frees a place: the longest-waiting ticket is next.
    async with db.write() as s:
        t0 = await s.get(Ticket, results[0].ticket_id)
        assert t0 is not None
        await do_set_status(s, t0, status=TicketStatus.RESOLVED, actor=f"agent:{ana}")
    await pump([w])
    assert (await ticket(db, results[1].ticket_id)).assignee_id == ana
    # More capacity: the rest drain at once.
    async with db.write() as s:
        agent = await s.get(Agent, ana)
        assert agent is not None
        await do_update_agent_routing(s, agent, actor="agent:1", capacity={"webchat": 5})
    await pump([w])
    assert {(await ticket(db, r.ticket_id)).assignee_id for r in results[1:]} == {ana}
    assert (await w.router.queues())[-1]["queued"] == 0


async def test_an_agent_coming_online_takes_the_queue_and_priority_goes_first(db: Database) -> None:
    w = worker(db, routing_config(**CONFIG))
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com", capacity={"webchat": 1}, online=False)
    normal = await write(db, "hello")
    urgent = await write(db, "I am important")
    async with db.write() as s:
        t = await s.get(Ticket, urgent.ticket_id)
        assert t is not None
        t.priority = "urgent"
    await pump([w])
    async with db.write() as s:
        await do_heartbeat(s, ana)  # the inbox connects
    await pump([w])
    assert (await ticket(db, urgent.ticket_id)).assignee_id == ana
    assert (await ticket(db, normal.ticket_id)).assignee_id is None


async def test_sticky_owner_and_language(db: Database) -> None:
    w = worker(db, routing_config(**CONFIG))
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com", languages=["en"])
    sara = await add_agent(db, "sara@example.com", languages=["fa", "en"])
    fa = await write(db, "سلام، سفارش من کی می‌رسد؟", sender="returning")
    await pump([w])
    assert (await ticket(db, fa.ticket_id)).assignee_id == sara
    async with db.write() as s:
        t = await s.get(Ticket, fa.ticket_id)
        assert t is not None
        await do_set_status(s, t, status=TicketStatus.RESOLVED, actor="agent:1")
    await pump([w])
    # Sara now has fewer tickets than nobody, but the customer comes back to her in English too.
    await add_agent(db, "zed@example.com")
    back = await write(db, "hello again", sender="returning")
    await pump([w])
    assert (await ticket(db, back.ticket_id)).assignee_id == sara
    assert ana != sara


async def test_silent_disconnect_goes_away_and_live_chats_return_to_the_queue(db: Database) -> None:
    async with db.write() as s:
        await do_ensure_inbox(s, key="mail", channel=Channel.EMAIL, name="Mail")
    cfg = routing_config(**CONFIG, presence={"away_after_seconds": 60, "requeue_after_seconds": 120})
    w = worker(db, cfg)
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com")
    chat = await write(db, "hi")
    mail = await write(db, "hello by mail", channel=Channel.EMAIL, inbox="mail", sender="c@example.com")
    await pump([w])
    assert (await ticket(db, chat.ticket_id)).assignee_id == ana
    assert (await ticket(db, mail.ticket_id)).assignee_id == ana
    now = utcnow()
    assert await w.router.sweep_presence(now) == (0, 0)
    assert await w.router.sweep_presence(now + timedelta(seconds=61)) == (1, 0)
    async with db.read() as s:
        assert (await s.get(Agent, ana)).presence == "away"  # type: ignore[union-attr]
    assert (await w.router.sweep_presence(now + timedelta(seconds=61 + 121)))[1] == 1
    await pump([w])
    assert (await ticket(db, chat.ticket_id)).assignee_id is None
    assert (await ticket(db, chat.ticket_id)).queued_at is not None
    assert (await ticket(db, mail.ticket_id)).assignee_id == ana
    # The inbox reconnects: online again, and the chat comes back.
    async with db.write() as s:
        await do_heartbeat(s, ana)
    await pump([w])
    assert (await ticket(db, chat.ticket_id)).assignee_id == ana


async def test_reopened_ticket_starts_a_new_first_response_cycle(db: Database) -> None:
    w = worker(db, routing_config(**CONFIG))
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com")
    first = await write(db, "hi")
    await pump([w])
    t = await ticket(db, first.ticket_id)
    assert t.first_response_due_at is not None and t.sla_policy == "standard"

    async def reply() -> None:
        async with db.write() as s:
            tk = await s.get(Ticket, first.ticket_id)
            agent = await s.get(Agent, ana)
            assert tk is not None and agent is not None
            await do_post_message(s, tk, body="on it", author=Author.AGENT, agent=agent)
        await pump([w])

    async def status(to: TicketStatus) -> None:
        async with db.write() as s:
            tk = await s.get(Ticket, first.ticket_id)
            assert tk is not None
            await do_set_status(s, tk, status=to, actor=f"agent:{ana}")
        await pump([w])

    await reply()
    t = await ticket(db, first.ticket_id)
    assert t.first_response_due_at is None and t.resolution_due_at is not None
    await status(TicketStatus.RESOLVED)
    assert (await ticket(db, first.ticket_id)).resolution_due_at is None
    await status(TicketStatus.OPEN)
    t = await ticket(db, first.ticket_id)
    assert t.sla_cycle == 2 and t.first_response_at is None and t.first_response_due_at is not None
    await reply()
    async with db.read() as s:
        cycles = (await s.scalars(select(TicketCycle).order_by(TicketCycle.number))).all()
    assert [c.number for c in cycles] == [1, 2]
    assert all(c.first_response_at is not None for c in cycles)
    # Each cycle's first response is measured from its own start.
    assert cycles[1].first_response_at > cycles[1].started_at > cycles[0].resolved_at  # type: ignore[operator]
    assert (cycles[1].first_response_at - cycles[1].started_at) < (  # type: ignore[operator]
        cycles[1].first_response_at - cycles[0].started_at  # type: ignore[operator]
    )


async def test_sla_warning_then_breach_escalates_once(db: Database) -> None:
    live = Live()
    w = worker(db, routing_config(**CONFIG), live)
    await w.router.setup()
    await add_agent(db, "sue@example.com", capacity={"webchat": 0})  # Support is full: the ticket waits
    lead = await add_agent(db, "lead@example.com", teams=["Escalations"], capacity={"webchat": 0})
    r = await write(db, "help")
    await pump([w])
    await w.router.state(fresh=True)
    t = await ticket(db, r.ticket_id)
    assert t.queued_at is not None and t.first_response_due_at is not None
    now = utcnow()
    assert await w.router.sweep_sla(now) == 0
    assert await w.router.sweep_sla(now + timedelta(minutes=6)) == 1  # the warning
    assert await w.router.sweep_sla(now + timedelta(minutes=7)) == 0
    assert await w.router.sweep_sla(now + timedelta(minutes=11)) == 1  # the breach
    assert await w.router.sweep_sla(now + timedelta(minutes=12)) == 0  # once
    await pump([w])
    t = await ticket(db, r.ticket_id)
    async with db.read() as s:
        escalations = await s.scalar(select(Team.id).where(Team.name == "Escalations"))
    assert (t.priority, t.team_id, t.assignee_id) == ("urgent", escalations, lead)
    breach = live.of("sla.breach")
    assert len(breach) == 1 and breach[0]["data"]["target"] == "first_response"
    assert lead in breach[0]["data"]["notify"]
    assert len(live.of("sla.warning")) == 1
    async with db.read() as s:
        cycle = (await s.scalars(select(TicketCycle))).one()
        assert cycle.breaches and cycle.breaches[0]["target"] == "first_response"


async def test_handoff_routes_to_the_named_team_and_notifies_it(db: Database) -> None:
    async with db.write() as s:
        await do_ensure_inbox(s, key="webchat", channel=Channel.WEBCHAT, name="Website", bot_enabled=True)
    live = Live()
    w = worker(db, routing_config(**CONFIG), live)
    await w.router.setup()
    bob = await add_agent(db, "bob@example.com", teams=["Sales"])
    r = await write(db, "do you sell gift cards?")
    await pump([w])
    assert (await ticket(db, r.ticket_id)).status == "pending"  # the bot answers first
    async with db.write() as s:
        t = await s.get(Ticket, r.ticket_id)
        sales = await s.scalar(select(Team.id).where(Team.name == "Sales"))
        assert t is not None
        await do_handoff(s, t, reason="asked for a person", summary="wants gift cards", team_id=sales)
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert (t.status, t.team_id, t.assignee_id) == ("open", sales, bob)
    assert t.first_response_due_at is None  # Sales has no SLA policy
    assert live.of("ticket.handoff") and live.of("ticket.routed")[-1]["ticket"]["assignee_id"] == bob


async def test_automation_rules_act_and_are_audited_with_their_name(db: Database) -> None:
    cfg = routing_config(
        **CONFIG,
        automation=[
            {
                "name": "refund-words",
                "on": "message.received",
                "when": {"keywords": ["refund"]},
                "actions": [{"add_labels": ["refund"]}, {"priority": "high"}],
            },
        ],
        auto_resolve={"pending_after_minutes": 30, "message": "Closing for now."},
    )
    async with db.write() as s:
        await do_ensure_inbox(s, key="sms:+15550001111", channel=Channel.SMS, name="SMS", bot_enabled=True)
    w = worker(db, cfg)
    await w.router.setup()
    await add_agent(db, "ana@example.com")
    r = await write(db, "I want a refund")
    pending = await write(db, "hello bot", channel=Channel.SMS, inbox="sms:+15550001111", sender="+15551234567")
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.priority == "high"
    async with db.read() as s:
        labels = (await s.scalars(select(TicketLabel.label).where(TicketLabel.ticket_id == r.ticket_id))).all()
    assert "refund" in labels
    assert (await ticket(db, pending.ticket_id)).status == "pending"
    later = utcnow() + timedelta(minutes=31)
    assert await w.router.sweep_idle(later) == 1
    assert await w.router.sweep_idle(later) == 0  # once per quiet spell
    await pump([w])
    assert (await ticket(db, pending.ticket_id)).status == "resolved"
    async with db.read() as s:
        reply = (
            await s.scalars(select(Message).where(Message.ticket_id == pending.ticket_id, Message.direction == "out"))
        ).one()
        assert reply.body == "Closing for now."
        actions = (await s.scalars(select(AuditLog).where(AuditLog.action == "automation.action"))).all()
        assert {a.data["rule"] for a in actions} == {"refund-words", "auto-resolve-idle-pending"}
        assert all(a.actor.startswith("automation:") for a in actions)
        events = (await s.scalars(select(TicketEventRow).where(TicketEventRow.ticket_id == pending.ticket_id))).all()
        assert any(e.actor == "automation:auto-resolve-idle-pending" for e in events)


async def test_automation_never_replies_to_an_automatic_message(db: Database) -> None:
    cfg = routing_config(
        **CONFIG,
        automation=[
            {
                "name": "ack",
                "on": "message.received",
                "when": {},
                "actions": [{"add_labels": ["acknowledged"]}, {"reply": "Thanks, we got your message."}],
            },
        ],
    )
    w = worker(db, cfg)
    await w.router.setup()
    person = await write(db, "Where is my order?")
    async with db.write() as s:
        (machine,) = await ingest_batch(
            s,
            [
                InboundMessage(
                    channel=Channel.WEBCHAT,
                    inbox="webchat",
                    external_id="ooo-1",
                    sender="visitor-ooo",
                    body="I am out of the office until Monday.",
                    extras={"auto_reply": "Auto-Submitted: auto-replied"},
                )
            ],
        )
    assert isinstance(machine, IngestResult)
    await pump([w])

    async def replies(ticket_id: int) -> list[str]:
        async with db.read() as s:
            rows = await s.scalars(
                select(Message.body).where(Message.ticket_id == ticket_id, Message.direction == "out")
            )
            return list(rows.all())

    async def labels(ticket_id: int) -> list[str]:
        async with db.read() as s:
            return list((await s.scalars(select(TicketLabel.label).where(TicketLabel.ticket_id == ticket_id))).all())

    assert await replies(person.ticket_id) == ["Thanks, we got your message."]
    # The out-of-office is labelled like any message, but gets no reply to loop on.
    assert await replies(machine.ticket_id) == []
    assert await labels(machine.ticket_id) == ["acknowledged"]
    async with db.read() as s:
        skipped = [
            a.data["action"]
            for a in (await s.scalars(select(AuditLog).where(AuditLog.entity_id == machine.ticket_id))).all()
            if a.action == "automation.action" and "skipped" in a.data["action"]
        ]
    assert len(skipped) == 1 and "sent automatically" in skipped[0]["skipped"]


async def test_snoozed_tickets_wake_up(db: Database) -> None:
    w = worker(db, routing_config(**CONFIG))
    await w.router.setup()
    r = await write(db, "remind me")
    await pump([w])
    async with db.write() as s:
        t = await s.get(Ticket, r.ticket_id)
        assert t is not None
        await do_set_status(
            s, t, status=TicketStatus.SNOOZED, actor="agent:1", snoozed_until=utcnow() + timedelta(minutes=5)
        )
    assert await w.router.sweep_snoozed() == 0
    assert await w.router.sweep_snoozed(utcnow() + timedelta(minutes=6)) == 1
    assert (await ticket(db, r.ticket_id)).status == "open"


async def test_default_sla_runs_in_the_shared_inbox_without_teams(db: Database) -> None:
    cfg = routing_config(sla_policies={"basic": {"first_response_minutes": 30}}, default_sla="basic")
    w = worker(db, cfg)
    await w.router.setup()
    r = await write(db, "anyone there?")
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert (t.team_id, t.assignee_id, t.sla_policy) == (None, None, "basic")
    assert t.first_response_due_at is not None and t.cycle_started_at is not None


async def test_what_the_phone_ivr_asks(db: Database) -> None:
    cfg = routing_config(
        teams=[{"name": "Support", "calendar": "tehran"}, {"name": "Sales"}],
        calendars={"tehran": {"timezone": "Asia/Tehran", "week": {"sat": ["08:00-16:00"], "sun": ["08:00-16:00"]}}},
        default_capacity={"voice": 1, "webchat": 3},
    )
    w = worker(db, cfg)
    await w.router.setup()
    ana = await add_agent(db, "ana@example.com")
    bob = await add_agent(db, "bob@example.com")
    await add_agent(db, "sue@example.com", online=False)
    async with db.write() as s:
        for agent_id, phone in ((ana, "+15550000001"), (bob, None)):
            agent = await s.get(Agent, agent_id)
            assert agent is not None
            agent.phone = phone
    saturday_noon_tehran = datetime(2025, 6, 7, 8, 30, tzinfo=UTC)
    assert await w.router.is_team_open("Support", saturday_noon_tehran)
    assert not await w.router.is_team_open("Support", saturday_noon_tehran + timedelta(days=5))  # Thursday
    assert await w.router.is_team_open("Sales", saturday_noon_tehran + timedelta(days=5))  # no calendar
    assert await w.router.is_team_open(None, saturday_noon_tehran)
    support = await w.router.team_id("Support")
    assert support is not None
    assert [a.id for a in await w.router.available_agents(support, "voice")] == [ana, bob]
    assert await w.router.phone_agents(support) == [(ana, "+15550000001")]
    assert await w.router.phone_agents(None) == [(ana, "+15550000001")]
    with pytest.raises(LookupError, match="Nowhere"):
        await w.router.is_team_open("Nowhere")


# --- SLA clocks stop while a ticket is snoozed -------------------------------

SLEEPY: dict[str, Any] = {
    "default_team": "Support",
    "teams": [{"name": "Support", "sla": "calm"}],
    "sla_policies": {"calm": {"first_response_minutes": 120, "resolution_minutes": 600}},
}


class Clock:
    """The router's clock, moved by hand (it pauses and resumes at its now)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr("hub.router.utcnow", c)
    return c


async def set_status(db: Database, tid: int, to: TicketStatus, until: datetime | None = None) -> None:
    async with db.write() as s:
        t = await s.get(Ticket, tid)
        assert t is not None
        await do_set_status(s, t, status=to, actor="agent:1", snoozed_until=until)


async def cycle_due(db: Database, tid: int) -> datetime | None:
    async with db.read() as s:
        return await s.scalar(select(TicketCycle.first_response_due_at).where(TicketCycle.ticket_id == tid))


@pytest.mark.parametrize("wake", ["sweep", "message", "agent"])
async def test_sla_clocks_stop_while_snoozed_and_resume_later_by_the_time_slept(
    db: Database, clock: Clock, wake: str
) -> None:
    w = worker(db, routing_config(**SLEEPY))
    await w.router.setup()
    r = await write(db, "call me on monday", sender="visitor-sleepy")
    await pump([w])
    t = await ticket(db, r.ticket_id)
    start = t.cycle_started_at
    assert start is not None and t.first_response_due_at == start + timedelta(hours=2)
    first_due, resolution_due = t.first_response_due_at, t.resolution_due_at
    assert resolution_due is not None

    clock.now = start + timedelta(hours=1)  # an hour left on the first response
    await set_status(db, r.ticket_id, TicketStatus.SNOOZED, start + timedelta(hours=3))
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.sla_deadlines[sla.PAUSED_AT] == clock.now.isoformat() and t.sla_next_check_at is None
    # Past the old due time, still asleep: nothing fires.
    assert await w.router.sweep_sla(start + timedelta(hours=2, minutes=30)) == 0

    # Woken two hours later, by a worker that started since (the pause is in the database).
    w = worker(db, routing_config(**SLEEPY))
    clock.now = start + timedelta(hours=3)
    if wake == "sweep":
        assert await w.router.sweep_snoozed(clock.now) == 1
    elif wake == "message":
        await write(db, "it is monday", sender="visitor-sleepy")
    else:
        await set_status(db, r.ticket_id, TicketStatus.OPEN)
    # Open again before the router has seen it: the old, passed deadline must not fire.
    assert await w.router.sweep_sla(clock.now) == 0
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.status == "open"
    assert t.first_response_due_at == first_due + timedelta(hours=2)
    assert t.resolution_due_at == resolution_due + timedelta(hours=2)
    assert sla.PAUSED_AT not in t.sla_deadlines and t.sla_next_check_at == t.first_response_due_at
    assert await cycle_due(db, r.ticket_id) == t.first_response_due_at
    assert await w.router.sweep_sla(t.first_response_due_at - timedelta(seconds=1)) == 0
    assert await w.router.sweep_sla(t.first_response_due_at) == 1  # the breach, an hour after waking


async def test_a_breach_before_the_snooze_stays_and_fires_once(db: Database, clock: Clock) -> None:
    live = Live()
    cfg = routing_config(
        **{**SLEEPY, "sla_policies": {"calm": {"first_response_minutes": 10, "resolution_minutes": 600}}}
    )
    w = worker(db, cfg, live)
    await w.router.setup()
    r = await write(db, "hello?")
    await pump([w])
    t = await ticket(db, r.ticket_id)
    start = t.cycle_started_at
    assert start is not None and t.resolution_due_at is not None
    first_due, resolution_due = t.first_response_due_at, t.resolution_due_at
    assert await w.router.sweep_sla(start + timedelta(minutes=11)) == 1  # first response breached

    clock.now = start + timedelta(minutes=20)
    await set_status(db, r.ticket_id, TicketStatus.SNOOZED, start + timedelta(hours=2, minutes=20))
    await pump([w])
    clock.now = start + timedelta(hours=2, minutes=20)
    assert await w.router.sweep_snoozed(clock.now) == 1
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.first_response_due_at == first_due  # breached is breached
    assert t.resolution_due_at == resolution_due + timedelta(hours=2)
    assert await w.router.sweep_sla(clock.now + timedelta(minutes=1)) == 0  # not breached twice
    assert await w.router.sweep_sla(t.resolution_due_at) == 1
    await pump([w])
    assert [e["data"]["target"] for e in live.of("sla.breach")] == ["first_response", "resolution"]
    assert await cycle_due(db, r.ticket_id) == first_due


async def test_an_automation_snooze_pauses_at_once(db: Database, clock: Clock) -> None:
    cfg = routing_config(
        **SLEEPY,
        automation=[
            {
                "name": "weekend",
                "on": "message.received",
                "when": {"keywords": ["monday"]},
                "actions": [{"snooze_minutes": 90}],
            }
        ],
    )
    w = worker(db, cfg)
    await w.router.setup()
    r = await write(db, "write back on monday")
    await pump([w])
    t = await ticket(db, r.ticket_id)
    assert t.status == "snoozed" and t.first_response_due_at is not None
    assert t.sla_deadlines[sla.PAUSED_AT] == clock.now.isoformat()
    first_due = t.first_response_due_at
    clock.now += timedelta(minutes=90)
    assert await w.router.sweep_snoozed(clock.now) == 1
    assert (await ticket(db, r.ticket_id)).first_response_due_at == first_due + timedelta(minutes=90)
