"""Conditions of routing rules and automation rules, compiled once and matched
against what is known about a ticket. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hub.core import Priority, TicketStatus
from hub.text import is_vip, keyword, label_key
from routing.hours import BusinessCalendar
from routing.settings import Conditions


@dataclass(frozen=True, slots=True)
class ContactFacts:
    """The contact attributes rules may look at."""

    attributes: Mapping[str, Any] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    lifecycle_stage: str | None = None
    segment: str | None = None

    # The bot's ``vip_tag``: one VIP for routing and the bot.
    vip_tag: str = "vip"

    @property
    def vip(self) -> bool:
        return is_vip(self.attributes, self.tags, self.vip_tag)


@dataclass(frozen=True, slots=True)
class TicketFacts:
    """What rules match on: the ticket, its latest message and its contact."""

    channel: str
    inbox: str
    status: TicketStatus = TicketStatus.OPEN
    priority: Priority = Priority.NORMAL
    labels: frozenset[str] = frozenset()
    team_id: int | None = None
    assignee_id: int | None = None
    text: str = ""
    language: str | None = None
    topic: str | None = None
    contact: ContactFacts = field(default_factory=ContactFacts)


class MatchContext:
    """One ticket at one instant, with its text normalized once for all rules."""

    __slots__ = ("calendars", "default_calendar", "facts", "now", "team_calendars", "team_names", "text")

    def __init__(
        self,
        facts: TicketFacts,
        *,
        now: datetime,
        calendars: Mapping[str, BusinessCalendar],
        default_calendar: str | None,
        team_names: Mapping[int, str],
        team_calendars: Mapping[int, str] | None = None,
    ) -> None:
        self.facts = facts
        self.now = now
        self.calendars = calendars
        self.default_calendar = default_calendar
        self.team_names = team_names
        # Team id -> its calendar's name, for teams that have one.
        self.team_calendars = team_calendars or {}
        self.text = f" {keyword(facts.text)} " if facts.text else " "

    def calendar_for(self, named: str | None) -> BusinessCalendar | None:
        """The calendar a ``business_hours`` condition consults: the one it
        names, else the ticket's team's, else ``routing.default_calendar``, as
        ``/queues``, the IVR and the SLA clocks decide whether the team is open
        (None: no calendar, always open)."""
        team = self.facts.team_id
        name = named or (self.team_calendars.get(team) if team is not None else None) or self.default_calendar
        return self.calendars.get(name) if name else None


@dataclass(frozen=True, slots=True)
class Compiled:
    """Conditions with their words normalized the way messages are."""

    source: Conditions
    keywords: tuple[str, ...]
    topics: frozenset[str]
    tags: frozenset[str]

    @classmethod
    def of(cls, conditions: Conditions) -> Compiled:
        words = tuple(f" {k} " for k in (keyword(w) for w in conditions.keywords) if k)
        return cls(
            source=conditions,
            keywords=words,
            topics=frozenset(t.strip().lower() for t in conditions.topic),
            tags=frozenset(t.strip().lower() for t in conditions.tags),
        )

    def matches(self, ctx: MatchContext) -> bool:
        c, f = self.source, ctx.facts
        if c.channel and f.channel not in c.channel:
            return False
        if c.inbox and f.inbox not in c.inbox:
            return False
        if c.language and (f.language or "") not in c.language:
            return False
        # c.keywords, not self.keywords: keywords that normalize to nothing
        # (the models refuse them; a stored document may predate that) must not
        # turn the condition off and match every message.
        if c.keywords and not any(k in ctx.text for k in self.keywords):
            return False
        if self.topics and (f.topic or "").strip().lower() not in self.topics:
            return False
        if c.vip is not None and f.contact.vip != c.vip:
            return False
        if c.lifecycle_stage and f.contact.lifecycle_stage not in c.lifecycle_stage:
            return False
        if c.segment and f.contact.segment not in c.segment:
            return False
        if self.tags and not self.tags & {t.lower() for t in f.contact.tags}:
            return False
        for key, value in c.attributes.items():
            if f.contact.attributes.get(key) != value:
                return False
        if c.status and f.status not in c.status:
            return False
        if c.priority and f.priority not in c.priority:
            return False
        if c.labels and not {label_key(x) for x in c.labels} & {label_key(x) for x in f.labels}:
            return False
        if c.team and (f.team_id is None or ctx.team_names.get(f.team_id) not in c.team):
            return False
        if c.assigned is not None and (f.assignee_id is not None) != c.assigned:
            return False
        if c.business_hours is not None:
            calendar = ctx.calendar_for(c.calendar)
            is_open = True if calendar is None else calendar.is_open(ctx.now)
            if is_open != c.business_hours:
                return False
        return True
