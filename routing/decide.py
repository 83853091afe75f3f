"""The routing decision: a pure function of the ticket and a snapshot of what
the hub knows (rules, teams, agents with their load, round-robin cursors, the
customer's last agent, the time). No I/O: the hub loads the snapshot, calls
:func:`decide`, and applies the decision atomically, re-checking capacity
under a row lock (see ``hub/router.py``).

The steps, first match wins at each:

1. a ticket that is assigned, or not open, is left alone;
2. a new ticket on an inbox with the bot enabled goes ``pending``: the bot
   answers first, and routing to humans happens at its handoff;
3. a team: the first routing rule whose conditions hold (it may also set the
   priority, labels, skills the agent needs and an SLA policy), else the team
   the ticket already has (a handoff may name one), else the inbox's default
   team, else ``routing.default_team``; with none, the ticket stays in the
   shared inbox, open and unassigned;
4. an agent of that team: the customer's previous agent when a member of
   that team and eligible within the sticky window, else by the team's
   strategy — *balanced* (fewest open tickets, then whoever waited longest
   since their last assignment) or
   *round robin* (the next eligible agent after the team's cursor);
5. nobody eligible: the ticket waits in the team's queue.

Eligible: active, online, has the skills and speaks the language the ticket
needs, by primary subtag (en-GB speaks en; agents who list no languages are
not filtered by language), and holds
fewer open tickets of the ticket's channel than their capacity for it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from hub.core import Presence, Priority, TicketStatus
from routing.hours import BusinessCalendar
from routing.match import Compiled, ContactFacts, MatchContext, TicketFacts
from routing.settings import DEFAULT_CAPACITY, RoutingRule

Strategy = str  # "balanced" | "round_robin"


@dataclass(frozen=True, slots=True)
class TicketSnapshot:
    id: int
    status: TicketStatus
    channel: str
    inbox: str
    assignee_id: int | None
    team_id: int | None
    ticket_created: bool
    bot_enabled: bool
    bot_silenced: bool
    priority: Priority = Priority.NORMAL
    labels: frozenset[str] = frozenset()
    # The customer's latest words, their detected language, and the topic the
    # bot detected (at handoff), for rules.
    text: str = ""
    language: str | None = None
    topic: str | None = None
    contact_id: int = 0
    contact: ContactFacts = field(default_factory=ContactFacts)
    # Skills an earlier decision said the agent needs (kept on the ticket).
    skills: frozenset[str] = frozenset()
    inbox_default_team_id: int | None = None
    # Not routed to humans before: rules apply. Later (a requeue, the queue
    # draining) the team stays, a rule's priority does not undo an escalation,
    # and the SLA policy the clock started with stays.
    first_routing: bool = True

    def facts(self) -> TicketFacts:
        return TicketFacts(
            channel=self.channel,
            inbox=self.inbox,
            status=self.status,
            priority=self.priority,
            labels=self.labels,
            team_id=self.team_id,
            assignee_id=self.assignee_id,
            text=self.text,
            language=self.language,
            topic=self.topic,
            contact=self.contact,
        )


@dataclass(frozen=True, slots=True)
class AgentState:
    id: int
    teams: frozenset[int]
    presence: Presence = Presence.ONLINE
    active: bool = True
    skills: frozenset[str] = frozenset()
    languages: frozenset[str] = frozenset()
    # Open tickets an agent may hold per channel; missing: the default.
    capacity: Mapping[str, int] = field(default_factory=dict)
    # Open tickets assigned now, per channel.
    load: Mapping[str, int] = field(default_factory=dict)
    last_assigned_at: datetime | None = None

    @property
    def open_total(self) -> int:
        return sum(self.load.values())

    def limit(self, channel: str, default_capacity: Mapping[str, int]) -> int:
        if channel in self.capacity:
            return int(self.capacity[channel])
        return int(default_capacity.get(channel, 0))

    def with_one_more(self, channel: str, at: datetime) -> AgentState:
        load = dict(self.load)
        load[channel] = load.get(channel, 0) + 1
        return replace(self, load=load, last_assigned_at=at)


@dataclass(frozen=True, slots=True)
class TeamState:
    id: int
    name: str
    strategy: Strategy = "balanced"
    auto_assign: bool = True
    calendar: str | None = None
    sla: str | None = None


def team_calendars(teams: Mapping[int, TeamState]) -> dict[int, str]:
    """Team id -> the name of its calendar, for the teams that have one."""
    return {t.id: t.calendar for t in teams.values() if t.calendar}


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: RoutingRule
    when: Compiled

    @classmethod
    def of(cls, rule: RoutingRule) -> CompiledRule:
        return cls(rule, Compiled.of(rule.when))


@dataclass(frozen=True, slots=True)
class StickyOwner:
    agent_id: int
    last_at: datetime


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    rules: Sequence[CompiledRule] = ()
    teams: Mapping[int, TeamState] = field(default_factory=dict)
    team_ids: Mapping[str, int] = field(default_factory=dict)
    agents: Sequence[AgentState] = ()
    cursors: Mapping[int, int] = field(default_factory=dict)
    sticky: StickyOwner | None = None
    sticky_window: timedelta = timedelta(hours=72)
    default_team_id: int | None = None
    # Per channel, complete (routing.default_capacity merged over the built-in
    # map): a missing channel means capacity 0, so its tickets would only queue.
    default_capacity: Mapping[str, int] = field(
        default_factory=lambda: {str(k): v for k, v in DEFAULT_CAPACITY.items()}
    )
    calendars: Mapping[str, BusinessCalendar] = field(default_factory=dict)
    default_calendar: str | None = None
    default_sla: str | None = None

    @property
    def team_names(self) -> dict[int, str]:
        return {t.id: t.name for t in self.teams.values()}

    @property
    def team_calendars(self) -> dict[int, str]:
        return team_calendars(self.teams)


@dataclass(frozen=True, slots=True)
class Decision:
    reason: str
    status: TicketStatus | None = None
    team_id: int | None = None
    assignee_id: int | None = None
    priority: Priority | None = None
    labels: tuple[str, ...] = ()
    # Every skill the ticket needs from now on, when the rule adds one (empty:
    # the ticket's stay as they are).
    skills: tuple[str, ...] = ()
    rule: str | None = None
    # The rule's SLA policy, at the first routing only (the clock starts then).
    sla: str | None = None
    # No eligible agent (or the team does not auto-assign): wait in the team's queue.
    queued: bool = False
    sticky: bool = False
    # The next best agents, in order, should the chosen one be busy or full
    # by the time the hub locks their row.
    alternatives: tuple[int, ...] = ()

    @property
    def changes_anything(self) -> bool:
        return (
            self.status is not None
            or self.assignee_id is not None
            or self.team_id is not None
            or self.priority is not None
            or bool(self.labels)
            or bool(self.skills)
            or self.sla is not None
            or self.queued
        )


@dataclass(frozen=True, slots=True)
class TeamChoice:
    team_id: int | None
    reason: str
    rule: RoutingRule | None = None


EMPTY = RoutingSnapshot(now=datetime(1970, 1, 1, tzinfo=UTC))


def decide(ticket: TicketSnapshot, snapshot: RoutingSnapshot = EMPTY) -> Decision:
    if ticket.assignee_id is not None:
        return Decision(reason="already assigned")
    if ticket.status is not TicketStatus.OPEN:
        return Decision(reason=f"ticket is {ticket.status.value}")
    if ticket.bot_enabled and not ticket.bot_silenced and ticket.ticket_created:
        return Decision(reason="the bot answers first on this inbox", status=TicketStatus.PENDING)
    choice = choose_team(ticket, snapshot)
    rule = choice.rule
    priority = rule.priority if rule is not None and rule.priority is not None else None
    if priority is not None and priority == ticket.priority:
        priority = None
    labels = tuple(sorted(set(rule.labels) - ticket.labels)) if rule is not None else ()
    skills = skill_set(ticket.skills) | skill_set(rule.skills if rule is not None else ())
    base = Decision(
        reason=choice.reason,
        team_id=choice.team_id if choice.team_id != ticket.team_id else None,
        priority=priority,
        labels=labels,
        # Compared with what the ticket stores: a rule's skills in the shared
        # inbox are kept for whoever routes it to a team later.
        skills=tuple(sorted(skills)) if skills != ticket.skills else (),
        rule=rule.name if rule is not None else None,
        sla=rule.sla if rule is not None and ticket.first_routing else None,
    )
    if choice.team_id is None:
        return base
    team = snapshot.teams.get(choice.team_id)
    if team is None or not team.auto_assign:
        return replace(base, queued=True, reason=f"{choice.reason}; the team's agents pick from its queue")
    ranked, why, sticky = choose_agent(
        team, ticket.channel, skills, ticket.language, snapshot, contact_sticky=snapshot.sticky
    )
    if not ranked:
        return replace(base, team_id=choice.team_id, queued=True, reason=f"{choice.reason}; {why}")
    return replace(
        base,
        team_id=choice.team_id,
        assignee_id=ranked[0],
        alternatives=ranked[1:],
        sticky=sticky,
        reason=f"{choice.reason}; {why}",
    )


def skill_set(skills: Iterable[str]) -> frozenset[str]:
    """Skills as they are compared: stripped and without case, so an agent who
    knows "Billing" takes the tickets of a rule asking for "billing"."""
    return frozenset(k for k in (s.strip().casefold() for s in skills) if k)


def choose_team(ticket: TicketSnapshot, snapshot: RoutingSnapshot) -> TeamChoice:
    if not ticket.first_routing and ticket.team_id is not None:
        return TeamChoice(ticket.team_id, "team already chosen")
    ctx = MatchContext(
        ticket.facts(),
        now=snapshot.now,
        calendars=snapshot.calendars,
        default_calendar=snapshot.default_calendar,
        team_names=snapshot.team_names,
        team_calendars=snapshot.team_calendars,
    )
    for compiled in snapshot.rules:
        if compiled.when.matches(ctx):
            rule = compiled.rule
            if ticket.team_id is not None:
                # A team chosen before (a handoff naming one, a requeue) stays;
                # the rule still sets priority, labels and skills.
                return TeamChoice(ticket.team_id, f"rule {rule.name!r}; team kept", rule)
            if rule.team is not None:
                team_id = snapshot.team_ids.get(rule.team)
                if team_id is not None:
                    return TeamChoice(team_id, f"rule {rule.name!r}", rule)
            return _fallback_team(ticket, snapshot, f"rule {rule.name!r}", rule)
    if ticket.team_id is not None:
        return TeamChoice(ticket.team_id, "team already chosen")
    return _fallback_team(ticket, snapshot, "no rule matched", None)


def _fallback_team(ticket: TicketSnapshot, snapshot: RoutingSnapshot, why: str, rule: RoutingRule | None) -> TeamChoice:
    if ticket.inbox_default_team_id is not None:
        return TeamChoice(ticket.inbox_default_team_id, f"{why}; the inbox's team", rule)
    if snapshot.default_team_id is not None:
        return TeamChoice(snapshot.default_team_id, f"{why}; the default team", rule)
    return TeamChoice(None, f"{why}; no team: waits in the shared inbox, open and unassigned", rule)


def primary_language(tag: str) -> str:
    """A language tag's primary subtag, without case: "en-GB" -> "en"."""
    return tag.strip().lower().split("-", 1)[0]


def speaks(agent: AgentState, language: str | None) -> bool:
    """Whether the agent speaks ``language`` (no language, or an agent who lists
    none: yes). By primary subtag: detection only tells "en", "fa" or "ar", so
    an agent who lists "en-GB" would otherwise never match a ticket, and one
    who speaks British English answers an American just as well."""
    if language is None or not agent.languages:
        return True
    return primary_language(language) in {primary_language(x) for x in agent.languages}


def is_eligible(
    agent: AgentState,
    channel: str,
    skills: frozenset[str],
    language: str | None,
    default_capacity: Mapping[str, int],
) -> bool:
    return (
        agent.active
        and agent.presence is Presence.ONLINE
        and (not skills or skills <= skill_set(agent.skills))
        and speaks(agent, language)
        and agent.load.get(channel, 0) < agent.limit(channel, default_capacity)
    )


def eligible_agents(
    team: TeamState,
    channel: str,
    skills: frozenset[str],
    language: str | None,
    agents: Iterable[AgentState],
    default_capacity: Mapping[str, int],
) -> list[AgentState]:
    return [a for a in agents if team.id in a.teams and is_eligible(a, channel, skills, language, default_capacity)]


_NEVER = datetime(1, 1, 1, tzinfo=UTC)
ALTERNATIVES = 5


def choose_agent(
    team: TeamState,
    channel: str,
    skills: frozenset[str],
    language: str | None,
    snapshot: RoutingSnapshot,
    *,
    contact_sticky: StickyOwner | None = None,
) -> tuple[tuple[int, ...], str, bool]:
    """(the chosen agent and the next best ones, in order, or nothing; why;
    whether the first is the sticky owner). The applier takes the first it can
    lock with room, so concurrent workers need not queue up on one agent."""
    alternatives: list[int] = []
    sticky_id: int | None = None
    if (
        contact_sticky is not None
        and snapshot.sticky_window > timedelta(0)
        and snapshot.now - contact_sticky.last_at <= snapshot.sticky_window
    ):
        owner = next((a for a in snapshot.agents if a.id == contact_sticky.agent_id), None)
        # Only within the chosen team: the customer's last agent may work in
        # another team, which this ticket was not routed to.
        if (
            owner is not None
            and team.id in owner.teams
            and is_eligible(owner, channel, skills, language, snapshot.default_capacity)
        ):
            sticky_id = owner.id
    candidates = eligible_agents(team, channel, skills, language, snapshot.agents, snapshot.default_capacity)
    if team.strategy == "round_robin":
        ordered = sorted(candidates, key=lambda a: a.id)
        after = snapshot.cursors.get(team.id)
        start = next((i for i, a in enumerate(ordered) if after is not None and a.id > after), 0)
        alternatives = [a.id for a in (ordered[start:] + ordered[:start])[:ALTERNATIVES]]
        why = f"round robin in team {team.name!r}"
    else:
        best = heapq.nsmallest(
            ALTERNATIVES, candidates, key=lambda a: (a.open_total, a.last_assigned_at or _NEVER, a.id)
        )
        alternatives = [a.id for a in best]
        why = f"balanced in team {team.name!r}: fewest open tickets"
    if sticky_id is not None:
        rest = tuple(a for a in alternatives if a != sticky_id)
        return (sticky_id, *rest), f"back to agent {sticky_id}, who last handled this customer", True
    if not alternatives:
        return (), f"no eligible agent in team {team.name!r}: waits in its queue", False
    return tuple(alternatives), why, False
