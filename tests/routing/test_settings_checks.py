"""Settings and decisions the routing review found wrong (reviews/routing.md):
regional language tags, conditions that could never hold, a business-hours
condition blind to the ticket's team calendar, SLA policies a calendar cannot
count, presence timings shorter than the heartbeat, ambiguous week keys and
timezones that are no place."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from hub.core import Presence, TicketStatus
from routing.decide import AgentState, RoutingSnapshot, TeamState, TicketSnapshot, decide, is_eligible
from routing.hours import BusinessCalendar, CalendarError
from routing.match import Compiled, MatchContext, TicketFacts
from routing.settings import (
    AutomationRule,
    CalendarSettings,
    Conditions,
    Language,
    PresenceSettings,
    RoutingConfig,
    RoutingRule,
    check_rule_references,
)
from routing.sla import Deadline, resume

CAPACITY = {"webchat": 3}
# A Monday, 10:00 UTC.
MONDAY = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
CLOSED = BusinessCalendar(timezone="UTC", week={"sun": ["00:00-00:01"]})


# --- 1. language tags ----------------------------------------------------------


@pytest.mark.parametrize(
    ("speaks", "ticket", "eligible"),
    [
        ({"en-gb"}, "en", True),
        ({"fa-ir"}, "fa", True),
        ({"en"}, "en-us", True),
        ({"fa-ir"}, "en", False),
        ({"en-gb", "fa"}, "ar", False),
        (set(), "ar", True),
        ({"fa"}, None, True),
    ],
)
def test_agents_speak_a_language_by_its_primary_subtag(speaks: set[str], ticket: str | None, eligible: bool) -> None:
    agent = AgentState(1, frozenset({1}), languages=frozenset(speaks))
    assert is_eligible(agent, "webchat", frozenset(), ticket, CAPACITY) is eligible


def test_a_regional_tag_agent_gets_the_ticket_in_that_language() -> None:
    snapshot = RoutingSnapshot(
        now=MONDAY,
        teams={1: TeamState(1, "Support")},
        team_ids={"Support": 1},
        agents=[AgentState(3, frozenset({1}), languages=frozenset({"en-gb"}))],
        default_team_id=1,
        default_capacity=CAPACITY,
    )
    ticket = TicketSnapshot(
        id=1,
        status=TicketStatus.OPEN,
        channel="webchat",
        inbox="webchat",
        assignee_id=None,
        team_id=None,
        ticket_created=True,
        bot_enabled=False,
        bot_silenced=False,
        text="hello there, my order is late",
        language="en",
    )
    decision = decide(ticket, snapshot)
    assert (decision.assignee_id, decision.queued) == (3, False)


@pytest.mark.parametrize("tag", ["english", "en_US", "e", "1en", "en-", "en--gb", "fa ir", "en-toolongsubtag"])
def test_agent_languages_must_be_bcp47_shaped(tag: str) -> None:
    with pytest.raises(ValidationError) as info:
        TypeAdapter(Language).validate_python(tag)
    assert f"{tag.strip().lower()!r} is not a language tag" in str(info.value)
    assert "such as en, fa or en-GB" in str(info.value)


@pytest.mark.parametrize(("tag", "stored"), [("en-GB", "en-gb"), (" FA ", "fa"), ("zh-Hant-TW", "zh-hant-tw")])
def test_bcp47_tags_are_kept_in_lower_case(tag: str, stored: str) -> None:
    assert TypeAdapter(Language).validate_python(tag) == stored


# --- 4 and 7. conditions that could never hold ------------------------------------


def rule(**when: Any) -> RoutingRule:
    return RoutingRule.model_validate({"name": "x", "team": "Sales", "when": when})


def assigning(email: str) -> AutomationRule:
    return AutomationRule.model_validate(
        {"name": "give", "on": "message.received", "actions": [{"add_labels": ["a"]}, {"assign_agent": email}]}
    )


def references(
    rules: list[RoutingRule] = [],  # noqa: B006 - never changed
    automation: list[AutomationRule] = [],  # noqa: B006 - never changed
    *,
    fallback: bool = True,
) -> None:
    check_rule_references(
        rules,
        automation,
        calendars={"office"},
        policies=set(),
        calendar_fallback=fallback,
        inboxes={"webchat", "sms-main"},
        agents={"ana@example.com"},
    )


@pytest.mark.parametrize(
    ("rules", "automation", "fallback", "message"),
    [
        ([rule(inbox=["no-such-inbox"])], [], True, "rule 'x': when.inbox 'no-such-inbox' is no inbox"),
        ([rule(inbox=["webchta"])], [], True, "did you mean 'webchat'? (the inboxes: 'sms-main', 'webchat')"),
        ([rule(language=["english"])], [], True, "rule 'x': when.language 'english' is not a language the hub"),
        ([rule(language=["en-GB"])], [], True, "when.language 'en-gb' is not a language the hub detects"),
        ([rule(calendar="office")], [], True, "rule 'x': when.calendar 'office' is only read with business_hours"),
        ([rule(business_hours=False)], [], False, "rule 'x': when.business_hours has no calendar to consult"),
        ([], [assigning("ghost@x.io")], True, "automation 'give': actions.1.assign_agent 'ghost@x.io' is not"),
    ],
)
def test_conditions_and_actions_that_could_never_work_are_refused(
    rules: list[RoutingRule], automation: list[AutomationRule], fallback: bool, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        references(rules, automation, fallback=fallback)


def test_conditions_and_actions_that_can_work_are_accepted() -> None:
    references(
        [
            rule(inbox=["webchat"], language=["FA", "en"]),
            rule(business_hours=True, calendar="office"),
            rule(business_hours=False),
        ],
        [assigning(" Ana@Example.com ")],
    )
    # Without a calendar anywhere, one the condition names still counts.
    references([rule(business_hours=True, calendar="office")], fallback=False)


def test_a_business_hours_condition_with_no_calendar_anywhere_is_refused_at_start_up() -> None:
    after_hours = {"name": "after-hours", "on": "message.received", "when": {"business_hours": False}}
    automation = [{**after_hours, "actions": [{"reply": "We are closed"}]}]
    office = {"office": {"timezone": "UTC", "week": {"mon": ["09:00-17:00"]}}}
    with pytest.raises(
        ValidationError, match=re.escape("automation 'after-hours': when.business_hours has no calendar")
    ):
        RoutingConfig.model_validate({"teams": [{"name": "Support"}], "automation": automation})
    # A team's calendar, or the default one, is a calendar to consult.
    RoutingConfig.model_validate(
        {"teams": [{"name": "Support", "calendar": "office"}], "calendars": office, "automation": automation}
    )
    RoutingConfig.model_validate({"default_calendar": "office", "calendars": office, "automation": automation})
    with pytest.raises(ValidationError, match=re.escape("when.language 'english' is not a language the hub detects")):
        RoutingConfig.model_validate({"rules": [{"name": "en", "team": "S", "when": {"language": ["english"]}}]})


def facts(team_id: int | None) -> MatchContext:
    return MatchContext(
        TicketFacts(channel="webchat", inbox="webchat", team_id=team_id),
        now=MONDAY,
        calendars={"closed": CLOSED, "open": BusinessCalendar.twenty_four_seven()},
        default_calendar=None,
        team_names={1: "Support", 2: "Sales"},
        team_calendars={1: "closed"},
    )


def test_business_hours_without_a_calendar_reads_the_ticket_team_calendar() -> None:
    after_hours = Compiled.of(Conditions(business_hours=False))
    assert after_hours.matches(facts(1))  # Support is closed
    assert not after_hours.matches(facts(2))  # Sales has no calendar, nor is there a default: open
    assert not after_hours.matches(facts(None))
    # A calendar the condition names still wins.
    assert not Compiled.of(Conditions(business_hours=False, calendar="open")).matches(facts(1))


def test_the_default_calendar_applies_when_the_team_has_none() -> None:
    ctx = MatchContext(
        TicketFacts(channel="webchat", inbox="webchat", team_id=2),
        now=MONDAY,
        calendars={"closed": CLOSED},
        default_calendar="closed",
        team_names={2: "Sales"},
        team_calendars={},
    )
    assert Compiled.of(Conditions(business_hours=False)).matches(ctx)


# --- 6. SLA policies a calendar cannot count ------------------------------------------


SPARSE = {"timezone": "UTC", "week": {"sun": ["10:00-12:00"]}}
WEEKDAYS_9_TO_5 = {"timezone": "UTC", "week": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {
                "teams": [{"name": "Support", "calendar": "office", "sla": "long"}],
                "calendars": {"office": WEEKDAYS_9_TO_5},
                "sla_policies": {"long": {"resolution_minutes": 525600, "business_hours": True}},
            },
            "team 'Support': sla_policies.long.resolution_minutes (525600) is counted in business hours "
            "(business_hours: true), but calendars.office does not open that long",
        ),
        (
            {
                "teams": [{"name": "Support", "sla": "weekly"}],
                "default_calendar": "sparse",
                "calendars": {"sparse": SPARSE},
                "sla_policies": {"weekly": {"first_response_minutes": 60 * 24 * 14, "business_hours": True}},
            },
            "team 'Support': sla_policies.weekly.first_response_minutes (20160)",
        ),
        (
            {
                "default_sla": "weekly",
                "default_calendar": "sparse",
                "calendars": {"sparse": SPARSE},
                "sla_policies": {"weekly": {"next_response_minutes": 60 * 24 * 14, "business_hours": True}},
            },
            "default_sla: sla_policies.weekly.next_response_minutes",
        ),
        (
            {
                "teams": [{"name": "Sales", "calendar": "sparse"}],
                "rules": [{"name": "big", "team": "Sales", "sla": "weekly"}],
                "calendars": {"sparse": SPARSE},
                "sla_policies": {"weekly": {"resolution_minutes": 60 * 24 * 14, "business_hours": True}},
            },
            "rule 'big': sla_policies.weekly.resolution_minutes",
        ),
    ],
)
def test_a_business_hours_policy_its_calendar_cannot_count_is_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        RoutingConfig.model_validate(raw)
    assert message in str(info.value)


def test_policies_their_calendars_can_count_are_accepted() -> None:
    RoutingConfig.model_validate(
        {
            "teams": [{"name": "Support", "calendar": "office", "sla": "std"}, {"name": "Sales", "sla": "long"}],
            "calendars": {"office": WEEKDAYS_9_TO_5},
            "sla_policies": {
                "std": {"first_response_minutes": 60, "resolution_minutes": 60 * 24 * 30, "business_hours": True},
                # No calendar: counted in calendar time, a year is fine.
                "long": {"resolution_minutes": 525600, "business_hours": True},
            },
        }
    )
    # The same long policy in calendar time on a sparse calendar: fine too.
    RoutingConfig.model_validate(
        {
            "teams": [{"name": "Support", "calendar": "sparse", "sla": "long"}],
            "calendars": {"sparse": SPARSE},
            "sla_policies": {"long": {"resolution_minutes": 525600}},
        }
    )


def test_a_deadline_whose_time_left_cannot_be_counted_after_a_snooze_is_dropped() -> None:
    # Open every day, then closed for three and a half years from the day it wakes.
    start = date(2025, 6, 10)
    holidays = [f"{start + timedelta(days=366 * i)}..{start + timedelta(days=366 * i + 365)}" for i in range(4)]
    calendar = CalendarSettings.model_validate({"timezone": "UTC", "always_open": True, "holidays": holidays}).build()
    paused = datetime(2025, 6, 2, 10, tzinfo=UTC)
    due = Deadline("resolution", paused + timedelta(days=2))
    breached = Deadline("first_response", paused - timedelta(hours=1))
    after, _ = resume(
        {"resolution": due, "first_response": breached}, [], paused, datetime(2025, 6, 10, tzinfo=UTC), calendar
    )
    assert after == {"first_response": breached}


# --- 8. presence timings ----------------------------------------------------------------


@pytest.mark.parametrize(("heartbeat", "away"), [(20, 5), (20, 20), (20, 40), (0.5, 1)])
def test_away_after_must_leave_room_for_two_heartbeats(heartbeat: float, away: float) -> None:
    with pytest.raises(ValidationError) as info:
        PresenceSettings.model_validate({"heartbeat_seconds": heartbeat, "away_after_seconds": away})
    assert f"away_after_seconds ({away:g}) must be more than twice heartbeat_seconds ({heartbeat:g})" in str(info.value)


def test_away_after_more_than_two_heartbeats_is_accepted() -> None:
    PresenceSettings.model_validate({"heartbeat_seconds": 20, "away_after_seconds": 41, "requeue_after_seconds": 0})
    PresenceSettings()  # the defaults: 20 and 90


# --- 9. week keys and timezones ---------------------------------------------------------


def test_two_spellings_of_one_day_are_refused() -> None:
    with pytest.raises(ValidationError, match="week days 'mon' and 'Monday' are both monday: give its windows once"):
        CalendarSettings.model_validate(
            {"timezone": "UTC", "week": {"mon": ["08:00-12:00"], "Monday": ["13:00-17:00"]}}
        )


@pytest.mark.parametrize("key", ["month", "mo", "sunny", "tues", "satur", "wednes-day"])
def test_week_keys_must_name_a_day(key: str) -> None:
    with pytest.raises(ValidationError, match=f"week day '{key}' is not one of mon, tue"):
        CalendarSettings.model_validate({"timezone": "UTC", "week": {key: ["08:00-12:00"]}})


def test_short_and_full_day_names_in_any_case_are_days() -> None:
    calendar = CalendarSettings.model_validate(
        {"timezone": "UTC", "week": {"MON": ["08:00-12:00"], "Tuesday": ["09:00-10:00"], "sunday": ["10:00-11:00"]}}
    ).build()
    assert sorted(calendar.windows) == [0, 1, 6]
    assert calendar.is_open(MONDAY)


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "Factory", "posix/Asia/Tehran", "right/UTC", "Mars/Base"])
def test_timezones_that_name_no_place_are_refused(zone: str) -> None:
    with pytest.raises(ValidationError, match=f"timezone '{zone}' is not an IANA timezone of a place"):
        CalendarSettings.model_validate({"timezone": zone, "always_open": True})
    with pytest.raises(CalendarError):
        BusinessCalendar(timezone=zone, always_open=True)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tehran", "America/New_York", "Etc/GMT-3"])
def test_timezones_of_places_are_accepted(zone: str) -> None:
    CalendarSettings.model_validate({"timezone": zone, "always_open": True})


def test_an_away_agent_is_not_eligible() -> None:
    # Unchanged by the language rule: presence still comes first.
    agent = AgentState(1, frozenset({1}), presence=Presence.AWAY, languages=frozenset({"en-gb"}))
    assert not is_eligible(agent, "webchat", frozenset(), "en", CAPACITY)
