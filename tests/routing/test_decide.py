"""``decide`` is pure: table-driven cases and properties, no database."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.core import Presence, Priority, TicketStatus
from routing import AgentState, Decision, RoutingSnapshot, StickyOwner, TeamState, TicketSnapshot, decide
from routing.decide import CompiledRule
from routing.hours import BusinessCalendar
from routing.match import ContactFacts
from routing.settings import RoutingConfig, RoutingRule

NOW = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)  # a Monday
SUPPORT, SALES, VIP, PERSIAN = 1, 2, 3, 4


def snap(**kw: Any) -> TicketSnapshot:
    base: dict[str, Any] = {
        "id": 1,
        "status": TicketStatus.OPEN,
        "channel": "webchat",
        "inbox": "webchat",
        "assignee_id": None,
        "team_id": None,
        "ticket_created": True,
        "bot_enabled": False,
        "bot_silenced": False,
    }
    base.update(kw)
    return TicketSnapshot(**base)


def rules(*specs: dict[str, Any]) -> tuple[CompiledRule, ...]:
    return tuple(CompiledRule.of(RoutingRule.model_validate(s)) for s in specs)


RULES = rules(
    {"name": "vip", "when": {"vip": True}, "team": "VIP", "priority": "high", "labels": ["vip"]},
    {"name": "billing", "when": {"keywords": ["invoice", "refund", "فاکتور"]}, "team": "Sales", "skills": ["billing"]},
    {"name": "persian", "when": {"language": ["fa"]}, "team": "Persian"},
    {"name": "email-low", "when": {"channel": ["email"]}, "priority": "low"},
    {"name": "after-hours", "when": {"business_hours": False, "calendar": "office"}, "labels": ["after-hours"]},
)

OFFICE = BusinessCalendar(
    timezone="Asia/Tehran", week={d: ["08:00-16:00"] for d in ("sat", "sun", "mon", "tue", "wed")}
)


def world(**kw: Any) -> RoutingSnapshot:
    teams = {
        SUPPORT: TeamState(SUPPORT, "Support"),
        SALES: TeamState(SALES, "Sales", strategy="round_robin"),
        VIP: TeamState(VIP, "VIP"),
        PERSIAN: TeamState(PERSIAN, "Persian", auto_assign=False),
    }
    agents = [
        AgentState(10, frozenset({SUPPORT}), languages=frozenset({"en"}), load={"webchat": 2}),
        AgentState(11, frozenset({SUPPORT}), languages=frozenset({"en", "fa"}), load={"webchat": 1}),
        AgentState(20, frozenset({SALES}), skills=frozenset({"billing"})),
        AgentState(21, frozenset({SALES}), skills=frozenset({"billing"})),
        AgentState(30, frozenset({VIP}), presence=Presence.AWAY),
    ]
    base: dict[str, Any] = {
        "now": NOW,
        "rules": RULES,
        "teams": teams,
        "team_ids": {t.name: t.id for t in teams.values()},
        "agents": agents,
        "default_team_id": SUPPORT,
        "default_capacity": {"webchat": 3, "email": 10},
        "calendars": {"office": OFFICE},
    }
    base.update(kw)
    return RoutingSnapshot(**base)


CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    # (what, ticket fields, snapshot fields, expected decision fields)
    ("assigned stays", {"assignee_id": 7}, {}, {"reason": "already assigned", "team_id": None}),
    ("snoozed stays", {"status": TicketStatus.SNOOZED}, {}, {"assignee_id": None}),
    ("bot first", {"bot_enabled": True}, {}, {"status": TicketStatus.PENDING, "team_id": None}),
    ("bot silenced: humans", {"bot_enabled": True, "bot_silenced": True}, {}, {"team_id": SUPPORT, "assignee_id": 11}),
    ("default team, balanced", {"text": "hello"}, {}, {"team_id": SUPPORT, "assignee_id": 11, "rule": None}),
    (
        "vip first match wins over keywords",
        {"text": "refund please", "contact": ContactFacts(tags=frozenset({"VIP"}))},
        {},
        {"team_id": VIP, "priority": Priority.HIGH, "labels": ("vip",), "queued": True, "assignee_id": None},
    ),
    (
        "vip by attribute",
        {"contact": ContactFacts(attributes={"vip": "yes"})},
        {},
        {"team_id": VIP, "rule": "vip"},
    ),
    (
        "vip by the bot's configured tag",
        {"contact": ContactFacts(tags=frozenset({"Gold"}), vip_tag="gold")},
        {},
        {"team_id": VIP, "rule": "vip"},
    ),
    (
        "keyword routes with skills, round robin from cursor",
        {"text": "Where is my INVOICE?"},
        {"cursors": {SALES: 20}},
        {"team_id": SALES, "assignee_id": 21, "skills": ("billing",), "rule": "billing"},
    ),
    ("persian keyword", {"text": "فاكتور من كجاست"}, {}, {"team_id": SALES, "rule": "billing"}),
    (
        "persian language to a queue-only team",
        {"text": "سلام وقت بخیر", "language": "fa"},
        {},
        {"team_id": PERSIAN, "queued": True, "assignee_id": None},
    ),
    (
        "rule without team falls back to the default team",
        {"channel": "email"},
        {},
        {"team_id": SUPPORT, "priority": Priority.LOW, "rule": "email-low"},
    ),
    (
        "after hours in Tehran (Monday 13:30 there is open)",
        {"channel": "sms"},
        {"now": datetime(2025, 6, 5, 10, 0, tzinfo=UTC), "default_capacity": {"sms": 1}},  # Thursday
        {"labels": ("after-hours",), "rule": "after-hours"},
    ),
    ("inbox team beats the default", {"inbox_default_team_id": SALES, "text": "hi"}, {}, {"team_id": SALES}),
    ("handoff team kept", {"team_id": SALES, "text": "hi"}, {}, {"team_id": SALES}),
    (
        "no default team: shared inbox",
        {"text": "hi"},
        {"default_team_id": None},
        {"team_id": None, "queued": False, "assignee_id": None},
    ),
    (
        "language filters agents",
        {"text": "hi", "language": "fa"},
        {"rules": ()},
        {"assignee_id": 11},
    ),
    (
        "full agents: queue",
        {"text": "hi"},
        {"default_capacity": {"webchat": 1}},
        {"team_id": SUPPORT, "queued": True, "assignee_id": None},
    ),
    (
        "agent capacity overrides the default",
        {"text": "hi"},
        {
            "agents": [AgentState(10, frozenset({SUPPORT}), capacity={"webchat": 5}, load={"webchat": 4})],
            "default_capacity": {"webchat": 1},
        },
        {"assignee_id": 10},
    ),
    (
        "sticky owner within the window",
        {"text": "hi"},
        {"sticky": StickyOwner(10, NOW - timedelta(hours=1))},
        {"assignee_id": 10, "sticky": True},
    ),
    (
        "sticky owner too long ago",
        {"text": "hi"},
        {"sticky": StickyOwner(10, NOW - timedelta(hours=100))},
        {"assignee_id": 11, "sticky": False},
    ),
    (
        "sticky owner of another team",
        {"text": "refund"},
        {
            "sticky": StickyOwner(10, NOW - timedelta(hours=1)),
            "agents": [
                AgentState(10, frozenset({SUPPORT}), skills=frozenset({"billing"})),
                AgentState(20, frozenset({SALES}), skills=frozenset({"billing"}), load={"webchat": 2}),
            ],
        },
        {"team_id": SALES, "assignee_id": 20, "sticky": False},
    ),
    (
        "sticky owner not online",
        {"text": "hi"},
        {"sticky": StickyOwner(30, NOW - timedelta(hours=1))},
        {"assignee_id": 11, "sticky": False},
    ),
    (
        "balanced tie: longest since last assignment",
        {"text": "hi"},
        {
            "agents": [
                AgentState(10, frozenset({SUPPORT}), last_assigned_at=NOW - timedelta(minutes=1)),
                AgentState(11, frozenset({SUPPORT}), last_assigned_at=NOW - timedelta(minutes=9)),
                AgentState(12, frozenset({SUPPORT}), load={"email": 1}),
            ]
        },
        {"assignee_id": 11},
    ),
    (
        "round robin wraps around",
        {"text": "refund"},
        {"cursors": {SALES: 21}},
        {"assignee_id": 20},
    ),
    (
        "inactive agent is never chosen",
        {"text": "hi"},
        {"agents": [AgentState(10, frozenset({SUPPORT}), active=False)]},
        {"queued": True},
    ),
]


@pytest.mark.parametrize(("ticket", "world_kw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(ticket: dict[str, Any], world_kw: dict[str, Any], expected: dict[str, Any]) -> None:
    decision = decide(snap(**ticket), world(**world_kw))
    assert isinstance(decision, Decision)
    assert decision.reason
    for key, value in expected.items():
        if key == "reason":
            assert decision.reason == value
        else:
            assert getattr(decision, key) == value, (key, decision)


def test_without_a_snapshot_only_the_first_step_runs() -> None:
    assert decide(snap(bot_enabled=True)).status is TicketStatus.PENDING
    plain = decide(snap())
    assert plain.team_id is None and not plain.changes_anything


# --- properties -------------------------------------------------------------


agents_strategy = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 3), st.booleans()), min_size=1, max_size=8
)  # (capacity, starting load, online)


@settings(max_examples=150, deadline=None)
@given(agents_strategy, st.integers(1, 40), st.sampled_from(["balanced", "round_robin"]))
def test_assignment_never_exceeds_capacity(spec: list[tuple[int, int, bool]], tickets: int, strategy: str) -> None:
    team = TeamState(1, "T", strategy=strategy)
    agents = {
        i: AgentState(
            i,
            frozenset({1}),
            presence=Presence.ONLINE if online else Presence.OFFLINE,
            capacity={"webchat": cap},
            load={"webchat": min(load, cap)},
        )
        for i, (cap, load, online) in enumerate(spec, start=1)
    }
    cursor: dict[int, int] = {}
    free = sum(a.capacity["webchat"] - a.load["webchat"] for a in agents.values() if a.presence is Presence.ONLINE)
    assigned = 0
    for n in range(tickets):
        world_now = RoutingSnapshot(
            now=NOW + timedelta(seconds=n), teams={1: team}, agents=list(agents.values()), cursors=dict(cursor)
        )
        d = decide(snap(id=n, team_id=1), world_now)
        if d.assignee_id is None:
            assert d.queued
            continue
        a = agents[d.assignee_id]
        assert a.presence is Presence.ONLINE
        agents[a.id] = a.with_one_more("webchat", world_now.now)
        cursor[1] = a.id
        assigned += 1
    for a in agents.values():
        assert a.load["webchat"] <= a.capacity["webchat"]
    assert assigned == min(tickets, free)  # and nothing queued while someone had room


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 12), st.integers(0, 200), st.integers(0, 12))
def test_round_robin_over_k_agents_differs_by_at_most_one(k: int, tickets: int, start: int) -> None:
    team = TeamState(1, "T", strategy="round_robin")
    agents = [AgentState(i, frozenset({1}), capacity={"webchat": 10_000}) for i in range(1, k + 1)]
    counts: Counter[int] = Counter()
    cursor = {1: start}
    for n in range(tickets):
        d = decide(snap(id=n, team_id=1), RoutingSnapshot(now=NOW, teams={1: team}, agents=agents, cursors=cursor))
        assert d.assignee_id is not None
        counts[d.assignee_id] += 1
        cursor = {1: d.assignee_id}
    values = [counts[a.id] for a in agents]
    assert max(values) - min(values) <= 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=2, max_size=10), st.integers(1, 30))
def test_balanced_spreads_evenly(loads: list[int], tickets: int) -> None:
    team = TeamState(1, "T")
    agents = {
        i: AgentState(i, frozenset({1}), capacity={"webchat": 100}, load={"webchat": v}) for i, v in enumerate(loads)
    }
    for n in range(tickets):
        d = decide(snap(id=n, team_id=1), RoutingSnapshot(now=NOW, teams={1: team}, agents=list(agents.values())))
        assert d.assignee_id is not None
        chosen = agents[d.assignee_id]
        assert chosen.open_total == min(a.open_total for a in agents.values())
        agents[chosen.id] = replace(chosen.with_one_more("webchat", NOW + timedelta(seconds=n)))


def test_a_rule_team_with_stray_spaces_routes_to_that_team() -> None:
    billing = rules({"name": "billing", "when": {"keywords": ["invoice"]}, "team": "Sales "})
    d = decide(snap(text="my invoice is wrong"), world(rules=billing, cursors={SALES: 20}))
    assert (d.team_id, d.rule, d.assignee_id) == (SALES, "billing", 21)


def test_a_partial_default_capacity_leaves_the_other_channels_their_default() -> None:
    cfg = RoutingConfig.model_validate({"default_capacity": {"webchat": 5}})
    capacity = {str(k): v for k, v in cfg.default_capacity.items()}  # as hub.router passes it
    team, agents = TeamState(1, "T"), [AgentState(1, frozenset({1}))]
    given = RoutingSnapshot(now=NOW, teams={1: team}, agents=agents, default_capacity=capacity)
    built_in = RoutingSnapshot(now=NOW, teams={1: team}, agents=agents)
    for channel in ("webchat", "sms", "email", "voice", "telegram"):
        for world_now in (given, built_in):
            assert decide(snap(channel=channel, team_id=1), world_now).assignee_id == 1, channel


def test_a_rule_setting_only_an_sla_or_skills_is_a_change_in_the_shared_inbox() -> None:
    only = rules(
        {"name": "outage", "when": {"keywords": ["outage"]}, "sla": "fast"},
        {"name": "billing", "when": {"keywords": ["invoice"]}, "skills": ["Billing "]},
    )
    shared = world(rules=only, default_team_id=None)
    d = decide(snap(text="total outage"), shared)
    assert (d.team_id, d.sla, d.rule) == (None, "fast", "outage") and d.changes_anything
    d = decide(snap(text="my invoice"), shared)
    assert (d.team_id, d.skills) == (None, ("billing",)) and d.changes_anything
    # Once its clock runs, the policy it started with stays; skills it has are no news.
    later = decide(snap(text="still an outage", first_routing=False), shared)
    assert later.sla is None and not later.changes_anything
    kept = decide(snap(text="another invoice", skills=frozenset({"billing"}), first_routing=False), shared)
    assert kept.skills == () and not kept.changes_anything


def test_skills_match_without_case_or_spaces() -> None:
    # Agents' skills as older versions stored them; the rule's as an admin wrote them.
    agents = [AgentState(20, frozenset({SALES}), skills=frozenset({"Billing "})), AgentState(21, frozenset({SALES}))]
    billing = rules({"name": "billing", "when": {"keywords": ["invoice"]}, "team": "Sales", "skills": ["BILLING"]})
    d = decide(snap(text="my invoice"), world(rules=billing, agents=agents))
    assert (d.assignee_id, d.alternatives, d.skills) == (20, (), ("billing",))
    # A ticket that stored them another way needs the same agent.
    d = decide(snap(team_id=SALES, skills=frozenset({"Billing"}), first_routing=False), world(agents=agents))
    assert d.assignee_id == 20
