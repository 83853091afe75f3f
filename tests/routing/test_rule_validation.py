"""Rules and routing settings that could only fail later (when a worker loads
them, on every matching ticket, in the database) are refused when they are
given, naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from hub.core import Channel
from routing.settings import AutomationRule, RoutingConfig, RoutingRule, check_rule_names

IDLE: dict[str, Any] = {"name": "nudge", "on": "idle", "actions": [{"add_labels": ["a"]}]}
RECEIVED: dict[str, Any] = {"name": "tag", "on": "message.received"}


def refused(model: type[BaseModel], raw: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(raw)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("model", "raw", "field"),
    [
        # The API's JSON parser reads 1e999 and Infinity as inf.
        (
            AutomationRule,
            json.loads('{"name": "n", "on": "idle", "idle_minutes": 1e999, "actions": [{"resolve": true}]}'),
            "idle_minutes",
        ),
        (
            AutomationRule,
            json.loads('{"name": "n", "on": "idle", "idle_minutes": Infinity, "actions": [{"resolve": true}]}'),
            "idle_minutes",
        ),
        (AutomationRule, {**IDLE, "idle_minutes": 1e10}, "idle_minutes"),
        (AutomationRule, {**RECEIVED, "actions": [{"snooze_minutes": float("inf")}]}, "actions.0.snooze_minutes"),
        (AutomationRule, {**RECEIVED, "actions": [{"snooze_minutes": 1e10}]}, "actions.0.snooze_minutes"),
        (RoutingConfig, {"auto_resolve": {"pending_after_minutes": 1e10}}, "auto_resolve.pending_after_minutes"),
        (
            RoutingConfig,
            {"sla_policies": {"s": {"first_response_minutes": 1e10}}},
            "sla_policies.s.first_response_minutes",
        ),
        (
            RoutingConfig,
            {"sla_policies": {"s": {"resolution_minutes": float("inf")}}},
            "sla_policies.s.resolution_minutes",
        ),
        (RoutingConfig, {"sla_policies": {"s": {"warn_before_minutes": 1e10}}}, "sla_policies.s.warn_before_minutes"),
        (RoutingConfig, {"sticky_window_hours": 1e10}, "sticky_window_hours"),
        (RoutingConfig, {"sweep_interval_seconds": float("inf")}, "sweep_interval_seconds"),
        (RoutingConfig, {"presence": {"away_after_seconds": 1e15}}, "presence.away_after_seconds"),
        (RoutingConfig, {"presence": {"requeue_after_seconds": float("inf")}}, "presence.requeue_after_seconds"),
    ],
)
def test_durations_are_finite_and_at_most_a_year(model: type[BaseModel], raw: Any, field: str) -> None:
    assert field in [loc for loc, _ in refused(model, raw)]


def test_a_year_is_the_longest_idle_and_snooze() -> None:
    assert AutomationRule.model_validate({**IDLE, "idle_minutes": 525_600}).idle_minutes == 525_600
    snooze = AutomationRule.model_validate({**RECEIVED, "actions": [{"snooze_minutes": 525_600}]})
    assert snooze.actions[0].snooze_minutes == 525_600
    assert refused(AutomationRule, {**IDLE, "idle_minutes": 525_601}) == [
        ("idle_minutes", "Input should be less than or equal to 525600")
    ]


def test_contact_attribute_values_must_be_storable_json() -> None:
    raw = {"name": "r", "team": "Sales", "when": {"attributes": {"score": [1, float("inf")]}}}
    [(loc, msg)] = refused(RoutingRule, raw)
    assert loc == "when.attributes" and "attribute 'score'" in msg


@pytest.mark.parametrize(
    ("model", "raw", "field"),
    [
        (RoutingRule, {"name": "r", "labels": ["x" * 101]}, "labels.0"),
        (RoutingRule, {"name": "r", "labels": ["ok", "   "]}, "labels.1"),
        (AutomationRule, {**RECEIVED, "actions": [{"add_labels": ["x" * 101]}]}, "actions.0.add_labels.0"),
        (RoutingRule, {"name": "r", "team": "T", "when": {"labels": ["x" * 101]}}, "when.labels.0"),
        (RoutingRule, {"name": "r", "team": "T" * 201}, "team"),
        (RoutingRule, {"name": "r", "team": " "}, "team"),
        (AutomationRule, {**RECEIVED, "actions": [{"assign_team": "T" * 201}]}, "actions.0.assign_team"),
        (RoutingRule, {"name": "r", "priority": "high", "when": {"team": ["T" * 201]}}, "when.team.0"),
        (RoutingConfig, {"teams": [{"name": "  "}]}, "teams.0.name"),
        (RoutingConfig, {"default_team": "T" * 201}, "default_team"),
        (
            RoutingConfig,
            {"sla_policies": {"P" * 101: {"first_response_minutes": 5}}},
            f"sla_policies.{'P' * 101}.[key]",
        ),
        (RoutingConfig, {"sla_policies": {"s": {"on_breach": {"team": " "}}}}, "sla_policies.s.on_breach.team"),
        # Its escalations are audited as sla:<name>, in 64 characters.
        (
            RoutingConfig,
            {"sla_policies": {"P" * 61: {"first_response_minutes": 5}}},
            f"sla_policies.{'P' * 61}.[key]",
        ),
        (RoutingRule, {"name": "r", "skills": [""]}, "skills.0"),
        (RoutingRule, {"name": "r", "skills": ["billing", "  "]}, "skills.1"),
        (RoutingRule, {"name": "r", "skills": ["x" * 101]}, "skills.0"),
        (RoutingConfig, {"default_capacity": {"webchat": 10**20}}, "default_capacity.webchat"),
        (RoutingConfig, {"default_capacity": {"webchat": True}}, "default_capacity.webchat"),
    ],
)
def test_labels_and_team_names_fit_their_columns(model: type[BaseModel], raw: Any, field: str) -> None:
    assert field in [loc for loc, _ in refused(model, raw)]


def test_team_names_and_labels_are_stripped_as_they_are_stored() -> None:
    rule = RoutingRule.model_validate(
        {"name": "r", "team": " Sales ", "labels": [" refund "], "when": {"team": ["Support "], "labels": [" vip"]}}
    )
    assert (rule.team, rule.labels, rule.when.team, rule.when.labels) == ("Sales", ["refund"], ["Support"], ["vip"])
    auto = AutomationRule.model_validate({**RECEIVED, "actions": [{"assign_team": "Sales "}, {"add_labels": [" a"]}]})
    assert (auto.actions[0].assign_team, auto.actions[1].add_labels) == ("Sales", ["a"])
    cfg = RoutingConfig.model_validate({"default_team": "Support ", "teams": [{"name": " Support"}]})
    assert (cfg.default_team, cfg.teams[0].name) == ("Support", "Support")
    assert RoutingRule.model_validate({"name": "r", "skills": [" billing", "vat "]}).skills == ["billing", "vat"]
    assert RoutingConfig.model_validate({"sla_policies": {"P" * 60: {}}}).sla_policies


@pytest.mark.parametrize("field", ["reply", "note"])
@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_a_blank_reply_or_note_is_refused_naming_the_action(field: str, text: str) -> None:
    [(loc, msg)] = refused(AutomationRule, {**RECEIVED, "actions": [{"add_labels": ["a"]}, {field: text}]})
    assert loc == f"actions.1.{field}" and "must have some text" in msg


def test_an_automation_name_fits_its_audit_actor() -> None:
    # "automation:" + 53 characters is the audit log's 64.
    fits = AutomationRule.model_validate({**RECEIVED, "name": "n" * 53, "actions": [{"resolve": True}]})
    check_rule_names([], [fits])
    long = fits.model_copy(update={"name": "n" * 54})
    with pytest.raises(ValueError, match="longer than 53 characters"):
        check_rule_names([], [long])
    [(_, msg)] = refused(RoutingConfig, {"automation": [long.model_dump(mode="json")]})
    assert f"automation rule name {'n' * 54!r} is longer than 53 characters" in msg


@pytest.mark.parametrize(
    ("words", "bad"), [(["🔥", "!!!"], "🔥"), (["?"], "?"), (["refund", "!!!"], "!!!"), (["c++", " "], " ")]
)
def test_a_keyword_with_no_letter_or_digit_is_refused_naming_the_rule(words: list[str], bad: str) -> None:
    [(_, msg)] = refused(RoutingRule, {"name": "hot", "team": "Sales", "when": {"keywords": words}})
    assert f"rule 'hot': keyword {bad!r} has no letter or digit" in msg
    [(_, msg)] = refused(AutomationRule, {**RECEIVED, "when": {"keywords": words}, "actions": [{"resolve": True}]})
    assert f"automation 'tag': keyword {bad!r} has no letter or digit" in msg
    # Punctuation around a word, other scripts and digits are fine.
    fine = ["refund!", "فاکتور", "404", "c++"]
    assert RoutingRule.model_validate({"name": "r", "team": "T", "when": {"keywords": fine}}).when.keywords == fine


def test_a_partial_default_capacity_keeps_the_other_channels_defaults() -> None:
    cfg = RoutingConfig.model_validate({"default_capacity": {"webchat": 5, "voice": 0}})
    assert cfg.default_capacity == {
        Channel.WEBCHAT: 5,
        Channel.TELEGRAM: 3,
        Channel.SMS: 5,
        Channel.VOICE: 0,
        Channel.EMAIL: 10,
    }


@pytest.mark.parametrize("model", [RoutingRule, AutomationRule])
def test_a_blank_rule_name_is_refused_and_spaces_around_one_are_dropped(model: type[BaseModel]) -> None:
    base: dict[str, Any] = {"team": "Support"} if model is RoutingRule else {**RECEIVED, "actions": [{"resolve": True}]}
    assert [f for f, _ in refused(model, {**base, "name": "   "})] == ["name"]
    assert model.model_validate({**base, "name": "  r \t"}).name == "r"  # type: ignore[attr-defined]


def test_rule_names_differing_only_by_spaces_are_the_same_name() -> None:
    rules = [RoutingRule.model_validate({"name": n, "team": "Support"}) for n in ("a", "a ")]
    with pytest.raises(ValueError, match="two rules are named 'a'"):
        check_rule_names(rules, [])
    automation = [
        AutomationRule.model_validate({**RECEIVED, "name": n, "actions": [{"resolve": True}]}) for n in ("r", " r ")
    ]
    with pytest.raises(ValueError, match="two automation rules are named 'r'"):
        check_rule_names([], automation)
