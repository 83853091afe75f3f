"""The ``routing`` section of ``config.yaml``: teams, rules, calendars, SLA
policies, presence and automation. Validated at start-up (an invalid value
stops the hub naming the key), and by the admin API for the parts that can be
edited at run time (rules and automation), with the same models."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from hub.core import Channel, Priority, TicketStatus
from hub.text import keyword
from routing.hours import BusinessCalendar, CalendarError, parse_holidays


class _Strict(BaseModel):
    # The API's JSON parser reads 1e999, Infinity and NaN as floats, but the
    # database's encoder (orjson) writes them as null: a rule that passed here
    # would fail when a worker loads it again.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Every duration is at most a year, so ``now ± timedelta(...)`` stays within
# the years datetime can hold (1e10 minutes would overflow it on every use).
YEAR_MINUTES = 525_600
Minutes = Annotated[float, Field(gt=0, le=YEAR_MINUTES, allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, le=YEAR_MINUTES * 60, allow_inf_nan=False)]
# The storage columns: ticket_labels.label is 100 characters, teams.name 200.
# The strip matches what do_set_labels and do_get_or_create_team store, so a
# rule finds the team it created and a condition the label a ticket carries.
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
TeamName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# What an agent must know, as rules require it and agents have it: a blank one
# could never be had, and " billing" would be another skill than "billing".
# Compared without case (routing.decide), as "Billing" is no other skill.
Skill = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
# Stripped as it is stored: " r " next to "r" would be two rules the audit log
# and decisions cannot tell apart, and a blank name an actor "automation:   ".
RuleName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
# Open tickets of a channel an agent may hold. A whole number: JSON's true is no
# capacity, and one beyond 64 bits would not even store.
MAX_CAPACITY = 10_000
# A language an agent speaks: a BCP 47 tag such as "fa" or "en-GB" (they fit in
# 35), stored in lower case. Routing compares primary subtags (see
# routing.decide.primary_language), so a word such as "english" or "en_US"
# would make an agent ineligible for every ticket with letters in it.
_LANGUAGE_TAG = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{1,8})*")


def language_tag(value: str) -> str:
    """``value`` (lower case) if it is shaped as a BCP 47 tag, else ValueError naming it."""
    if not _LANGUAGE_TAG.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a language tag: give a BCP 47 tag, a 2 or 3 letter language code with optional "
            "subtags after hyphens, such as en, fa or en-GB"
        )
    return value


Language = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=35),
    AfterValidator(language_tag),
]
Capacity = Annotated[StrictInt, Field(ge=0, le=MAX_CAPACITY)]
# The audit log's actor column holds 64 characters: an automation rule acts as
# "automation:<name>" and an SLA policy escalates as "sla:<name>", so longer
# names would not store (PostgreSQL) or, cut short, two rules would look alike.
MAX_AUTOMATION_NAME = 64 - len("automation:")
MAX_POLICY_NAME = 64 - len("sla:")

# Open tickets per channel for an agent whose own capacity does not say; a
# configured routing.default_capacity changes only the channels it names.
DEFAULT_CAPACITY: Mapping[Channel, int] = {
    Channel.WEBCHAT: 3,
    Channel.TELEGRAM: 3,
    Channel.SMS: 5,
    Channel.VOICE: 1,
    Channel.EMAIL: 10,
}


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


class Conditions(_Strict):
    """What a ticket must be like for a rule to apply. Every field given must
    hold (AND); a list holds when any of its values does (OR). Empty: always."""

    channel: list[Channel] = Field(default_factory=list)
    inbox: list[str] = Field(default_factory=list)
    language: list[str] = Field(default_factory=list, description="detected language of the message: fa, ar, en")
    keywords: list[str] = Field(
        default_factory=list,
        description="any of these words or phrases in the message (normalized, Persian too); each must have a "
        "letter or digit",
    )
    topic: list[str] = Field(default_factory=list, description="the bot's detected topic at handoff")
    vip: bool | None = Field(default=None, description="contact attribute vip, or the tag vip")
    lifecycle_stage: list[str] = Field(default_factory=list)
    segment: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list, description="the contact has any of these tags")
    attributes: dict[str, Any] = Field(default_factory=dict, description="contact attributes equal to these values")
    business_hours: bool | None = Field(
        default=None, description="true: only while the calendar is open; false: only while it is closed"
    )
    calendar: str | None = Field(
        default=None,
        description="for business_hours (only with it); default: the ticket's team's calendar, else "
        "routing.default_calendar",
    )
    # Ticket state, mostly for automation.
    status: list[TicketStatus] = Field(default_factory=list)
    priority: list[Priority] = Field(default_factory=list)
    labels: list[Label] = Field(default_factory=list, description="the ticket has any of these labels")
    team: list[TeamName] = Field(default_factory=list, description="the ticket's team, by name")
    assigned: bool | None = None

    @field_validator("language")
    @classmethod
    def _lang(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value]

    @field_validator("attributes")
    @classmethod
    def _json_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, v in value.items():
            if not _finite(v):
                raise ValueError(f"attribute {key!r}: Infinity and NaN are not values JSON can store")
        return value

    def check_keywords(self, where: str) -> None:
        """Messages are compared without punctuation or symbols, so a keyword
        of nothing else (an emoji, "!!!") could never be found; dropping it
        would leave the rule matching every message instead."""
        for word in self.keywords:
            if not keyword(word):
                raise ValueError(
                    f"{where}: keyword {word!r} has no letter or digit; messages are compared without "
                    "punctuation and symbols, so it can never be found"
                )


class RoutingRule(_Strict):
    """An ordered rule: the first whose conditions hold decides team, priority
    and labels (and what the agent must know)."""

    name: RuleName
    when: Conditions = Field(default_factory=Conditions)
    team: TeamName | None = Field(default=None, description="team name; none: the inbox's or the default team")
    priority: Priority | None = None
    labels: list[Label] = Field(default_factory=list)
    skills: list[Skill] = Field(default_factory=list, description="skills the assigned agent must have")
    sla: str | None = Field(default=None, description="SLA policy name; default: the team's")

    @model_validator(mode="after")
    def _does_something(self) -> RoutingRule:
        if self.team is None and self.priority is None and not self.labels and not self.skills and self.sla is None:
            raise ValueError(f"rule {self.name!r} sets nothing: give a team, priority, labels, skills or sla")
        self.when.check_keywords(f"rule {self.name!r}")
        return self


class TeamSettings(_Strict):
    name: TeamName
    strategy: Literal["balanced", "round_robin"] = "balanced"
    auto_assign: bool = Field(default=True, description="false: tickets wait in the team's queue for agents to pick")
    calendar: str | None = None
    sla: str | None = None
    lead: str | None = Field(default=None, description="email of the agent SLA escalations go to")


class CalendarSettings(_Strict):
    timezone: str = "UTC"
    always_open: bool = False
    week: dict[str, list[str]] = Field(
        default_factory=dict, description="mon..sun (or monday..sunday) -> ['HH:MM-HH:MM', ...]"
    )
    holidays: list[str | date] = Field(default_factory=list, description="YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD")
    country: str | None = Field(default=None, description="add this country's public holidays, e.g. IR")
    subdivision: str | None = None

    def build(self) -> BusinessCalendar:
        return BusinessCalendar(
            timezone=self.timezone,
            week=self.week,
            holidays=parse_holidays(self.holidays),
            country=self.country,
            subdivision=self.subdivision,
            always_open=self.always_open,
        )

    @model_validator(mode="after")
    def _valid(self) -> CalendarSettings:
        try:
            self.build()
        except CalendarError as exc:
            raise ValueError(str(exc)) from exc
        return self


class Escalation(_Strict):
    """What happens at an SLA warning or breach; every field given applies."""

    priority: Priority | None = Field(default=None, description="raise the priority to at least this")
    team: TeamName | None = Field(default=None, description="move the ticket to this team (back to its queue)")
    to_lead: bool = Field(default=False, description="assign to the team lead")
    notify: list[Literal["assignee", "team", "lead", "admins"]] = Field(default_factory=list)


class SlaPolicy(_Strict):
    first_response_minutes: Minutes | None = None
    next_response_minutes: Minutes | None = None
    resolution_minutes: Minutes | None = None
    business_hours: bool = Field(default=False, description="count only while the team's calendar is open")
    warn_before_minutes: float = Field(
        default=0, ge=0, le=YEAR_MINUTES, allow_inf_nan=False, description="0: no warning"
    )
    on_warning: Escalation = Field(default_factory=lambda: Escalation(notify=["assignee", "team"]))
    on_breach: Escalation = Field(default_factory=lambda: Escalation(notify=["assignee", "team", "lead"]))


class PresenceSettings(_Strict):
    heartbeat_seconds: Seconds = Field(default=20.0, description="how often an open inbox websocket says alive")
    away_after_seconds: Seconds = Field(default=90.0, description="online with no heartbeat this long -> away")
    requeue_after_seconds: float = Field(
        default=300.0,
        ge=0,
        le=YEAR_MINUTES * 60,
        allow_inf_nan=False,
        description="away/offline this long -> live chats go back to the queue",
    )
    requeue_channels: list[Channel] = Field(default_factory=lambda: [Channel.WEBCHAT, Channel.TELEGRAM])

    @model_validator(mode="after")
    def _heartbeats(self) -> PresenceSettings:
        # The server records a heartbeat only every heartbeat_seconds: a shorter
        # away_after_seconds turns agents with the inbox open away (and, after
        # requeue_after_seconds, takes their chats) between two beats. Two beats
        # leave room for one late or lost. requeue_after_seconds needs no such
        # rule: its clock starts only once the agent is away.
        if self.away_after_seconds <= 2 * self.heartbeat_seconds:
            raise ValueError(
                f"away_after_seconds ({self.away_after_seconds:g}) must be more than twice heartbeat_seconds "
                f"({self.heartbeat_seconds:g}): an agent with the inbox open is only seen every heartbeat_seconds, "
                "and would turn away between two heartbeats"
            )
        return self


AutomationEvent = Literal[
    "ticket.created", "message.received", "ticket.status_changed", "sla.warning", "sla.breach", "idle"
]


class AutomationAction(_Strict):
    """One thing an automation does; exactly one field."""

    assign_team: TeamName | None = None
    assign_agent: str | None = Field(default=None, description="agent email")
    add_labels: list[Label] = Field(default_factory=list)
    priority: Priority | None = None
    reply: str | None = Field(default=None, max_length=5000, description="a canned reply on the ticket's channel")
    note: str | None = Field(default=None, max_length=5000, description="a private note")
    snooze_minutes: Minutes | None = None
    resolve: bool = False

    @field_validator("reply", "note")
    @classmethod
    def _words(cls, value: str | None) -> str | None:
        # A message is stored stripped (do_post_message) and an empty one is
        # refused there: a blank one would be skipped every time the rule fires.
        if value is not None and not value.strip():
            raise ValueError("must have some text: a blank message is never sent")
        return value

    @model_validator(mode="after")
    def _one(self) -> AutomationAction:
        given = [k for k, v in self.model_dump().items() if v not in (None, False, [])]
        if len(given) != 1:
            raise ValueError(
                "an action does exactly one thing: assign_team, assign_agent, add_labels, priority, reply, "
                f"note, snooze_minutes or resolve (got {', '.join(given) or 'nothing'})"
            )
        return self


class AutomationRule(_Strict):
    name: RuleName
    on: AutomationEvent
    idle_minutes: Minutes | None = Field(default=None, description="for on: idle")
    when: Conditions = Field(default_factory=Conditions)
    actions: list[AutomationAction] = Field(min_length=1)
    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads an unquoted ``on:`` key as the boolean true.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _idle(self) -> AutomationRule:
        if (self.on == "idle") != (self.idle_minutes is not None):
            raise ValueError(f"automation {self.name!r}: idle_minutes goes with on: idle, and only with it")
        self.when.check_keywords(f"automation {self.name!r}")
        return self


class AutoResolve(_Strict):
    """Resolve tickets the bot holds (pending) after this long without a word."""

    pending_after_minutes: Minutes | None = Field(default=None, description="null: never")
    message: str = Field(
        default="We are closing this conversation for now. Write again any time and we will pick it up.",
        max_length=5000,
    )


def _unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"two {what} are named {n!r}")
        seen.add(n)


# The built-in automation rule (routing.auto_resolve; see routing/automation.py):
# its name is its actor in the audit log, so no configured rule may take it.
AUTO_RESOLVE_RULE = "auto-resolve-idle-pending"


def check_rule_names(rules: list[RoutingRule], automation: list[AutomationRule]) -> None:
    """Rule names identify rules in decisions and the audit log: unique per
    kind, and the built-in automation rule's name is taken."""
    _unique([r.name for r in rules], "rules")
    _unique([a.name for a in automation], "automation rules")
    for a in automation:
        if len(a.name) > MAX_AUTOMATION_NAME:
            raise ValueError(
                f"automation rule name {a.name!r} is longer than {MAX_AUTOMATION_NAME} characters: the audit log "
                f"names the rule as automation:<name> in 64"
            )
    if any(a.name == AUTO_RESOLVE_RULE for a in automation):
        raise ValueError(
            f"automation rule name {AUTO_RESOLVE_RULE!r} is reserved for routing.auto_resolve; choose another name"
        )


class RoutingConfig(_Strict):
    default_team: TeamName | None = Field(default=None, description="catches what no rule and no inbox routes")
    teams: list[TeamSettings] = Field(default_factory=list)
    rules: list[RoutingRule] = Field(default_factory=list)
    calendars: dict[str, CalendarSettings] = Field(default_factory=dict)
    default_calendar: str | None = None
    # A ticket and its SLA cycles store the policy's name in 100 characters,
    # the audit log its escalations' actor (see MAX_POLICY_NAME) in 64.
    sla_policies: dict[Annotated[str, StringConstraints(min_length=1, max_length=MAX_POLICY_NAME)], SlaPolicy] = Field(
        default_factory=dict
    )
    default_sla: str | None = None
    default_capacity: dict[Channel, Capacity] = Field(
        default_factory=lambda: dict(DEFAULT_CAPACITY),
        description="open tickets per channel for agents whose own capacity does not say; channels not "
        "named keep the built-in default (webchat 3, telegram 3, sms 5, voice 1, email 10)",
    )
    sticky_window_hours: float = Field(
        default=72.0, ge=0, le=YEAR_MINUTES / 60, allow_inf_nan=False, description="0: no sticky owner"
    )
    presence: PresenceSettings = Field(default_factory=PresenceSettings)
    sweep_interval_seconds: Seconds = 5.0
    automation: list[AutomationRule] = Field(default_factory=list)
    auto_resolve: AutoResolve = Field(default_factory=AutoResolve)

    @field_validator("default_capacity")
    @classmethod
    def _over_defaults(cls, value: dict[Channel, int]) -> dict[Channel, int]:
        # {webchat: 5} means "webchat 5", not "every other channel 0": agents
        # with no capacity of their own would never get an SMS or a call.
        return {**DEFAULT_CAPACITY, **value}

    @model_validator(mode="after")
    def _references(self) -> RoutingConfig:
        _unique([t.name for t in self.teams], "teams")
        check_rule_names(self.rules, self.automation)
        cal, sla = set(self.calendars), set(self.sla_policies)
        if self.default_calendar is not None and self.default_calendar not in cal:
            raise ValueError(f"default_calendar {self.default_calendar!r} is not in calendars")
        if self.default_sla is not None and self.default_sla not in sla:
            raise ValueError(f"default_sla {self.default_sla!r} is not in sla_policies")
        for t in self.teams:
            if t.calendar is not None and t.calendar not in cal:
                raise ValueError(f"team {t.name!r}: calendar {t.calendar!r} is not in calendars")
            if t.sla is not None and t.sla not in sla:
                raise ValueError(f"team {t.name!r}: sla {t.sla!r} is not in sla_policies")
        check_rule_references(
            self.rules,
            self.automation,
            calendars=cal,
            policies=sla,
            calendar_fallback=self.has_fallback_calendar,
        )
        self._check_sla_calendars()
        return self

    @property
    def has_fallback_calendar(self) -> bool:
        """Whether a ``business_hours`` condition that names no calendar has
        one to consult for some ticket: its team's, or the default."""
        return self.default_calendar is not None or any(t.calendar for t in self.teams)

    def _check_sla_calendars(self) -> None:
        """A business-hours policy must be countable on the calendar of every
        team it times: a sparse calendar (open two hours a week) cannot reach
        a long duration within the three years BusinessCalendar looks ahead,
        and every ticket of that team would get no deadline."""
        teams = {t.name: t for t in self.teams}
        uses: list[tuple[str, str | None, str | None]] = [
            (f"team {t.name!r}", t.sla or self.default_sla, t.calendar or self.default_calendar) for t in self.teams
        ]
        # Tickets of teams config.yaml does not list, and of the shared inbox.
        uses.append(("default_sla", self.default_sla, self.default_calendar))
        for r in self.rules:
            if r.sla is not None:
                team = teams.get(r.team) if r.team is not None else None
                uses.append((f"rule {r.name!r}", r.sla, (team.calendar if team else None) or self.default_calendar))
        built: dict[str, BusinessCalendar] = {}
        now = datetime.now(UTC)
        for where, policy_name, calendar_name in uses:
            policy = self.sla_policies.get(policy_name) if policy_name else None
            if policy is None or not policy.business_hours or calendar_name is None:
                continue
            targets = {
                target: minutes
                for target in ("first_response", "next_response", "resolution")
                if (minutes := getattr(policy, f"{target}_minutes")) is not None
            }
            if not targets:
                continue
            target, minutes = max(targets.items(), key=lambda item: item[1])
            calendar = built.get(calendar_name)
            if calendar is None:
                calendar = built[calendar_name] = self.calendars[calendar_name].build()
            try:
                calendar.add(now, timedelta(minutes=minutes))
            except CalendarError as exc:
                raise ValueError(
                    f"{where}: sla_policies.{policy_name}.{target}_minutes ({minutes:g}) is counted in business "
                    f"hours (business_hours: true), but calendars.{calendar_name} does not open that long within "
                    "the three years ahead that are counted; shorten the policy, count it in calendar time "
                    "(business_hours: false) or give the team another calendar"
                ) from exc


# What hub.text.detect_language can tell: a language condition on anything
# else holds for no message.
DETECTED_LANGUAGES = ("ar", "en", "fa")


def check_rule_references(
    rules: list[RoutingRule],
    automation: list[AutomationRule],
    *,
    calendars: set[str],
    policies: set[str],
    calendar_fallback: bool,
    inboxes: Collection[str] | None = None,
    agents: Collection[str] | None = None,
) -> None:
    """Names that rules use must exist (teams are created on demand, so any
    team name is fine), and a condition must be able to hold: a rule that can
    never fire is a typo nobody would notice. ``calendar_fallback``: a
    ``business_hours`` condition naming no calendar has one to consult (a
    team's, or the default). ``inboxes`` (keys) and ``agents`` (active agents'
    emails, lower case) are checked when given: they live in the database."""
    conds = [(f"rule {r.name!r}", r.when) for r in rules] + [(f"automation {a.name!r}", a.when) for a in automation]
    for where, c in conds:
        if c.calendar is not None and c.calendar not in calendars:
            raise ValueError(f"{where}: calendar {c.calendar!r} is not in calendars")
        if c.calendar is not None and c.business_hours is None:
            raise ValueError(
                f"{where}: when.calendar {c.calendar!r} is only read with business_hours (true or false), "
                "which this condition does not have"
            )
        if c.business_hours is not None and c.calendar is None and not calendar_fallback:
            raise ValueError(
                f"{where}: when.business_hours has no calendar to consult: no team has a calendar and there is "
                "no routing.default_calendar, so the hub counts as always open; name one with when.calendar"
            )
        for language in c.language:
            if language not in DETECTED_LANGUAGES:
                raise ValueError(
                    f"{where}: when.language {language!r} is not a language the hub detects in messages "
                    f"({', '.join(DETECTED_LANGUAGES)})"
                )
        if inboxes is not None:
            for key in c.inbox:
                if key not in inboxes:
                    raise ValueError(f"{where}: when.inbox {key!r} is no inbox{_closest(key, inboxes, 'inboxes')}")
    for r in rules:
        if r.sla is not None and r.sla not in policies:
            raise ValueError(f"rule {r.name!r}: sla {r.sla!r} is not in sla_policies")
    if agents is not None:
        for a in automation:
            for i, action in enumerate(a.actions):
                email = action.assign_agent
                if email is not None and email.strip().lower() not in agents:
                    raise ValueError(
                        f"automation {a.name!r}: actions.{i}.assign_agent {email!r} is not the email of an active agent"
                    )


def _closest(name: str, known: Collection[str], what: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = ", ".join(repr(k) for k in sorted(known)[:50]) or "none yet"
    return f"{hint} (the {what}: {listed})"


def parse_capacity(text: str) -> dict[str, int]:
    """``webchat=3,email=10`` (the command line's form) as a capacity map."""
    out: dict[str, int] = {}
    known = {c.value for c in Channel}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        channel, sep, number = part.partition("=")
        channel = channel.strip().lower()
        if not sep or channel not in known:
            raise ValueError(f"{part!r} is not CHANNEL=N with a channel among {', '.join(sorted(known))}")
        digits = number.strip()
        # The length first: int() of some thousand digits is refused, and slow before that.
        if not digits.isdecimal() or len(digits) > len(str(MAX_CAPACITY)) or int(digits) > MAX_CAPACITY:
            raise ValueError(f"{part!r}: the capacity must be a whole number from 0 to {MAX_CAPACITY}")
        out[channel] = int(digits)
    return out
