"""The routing section of config.yaml fails fast, naming what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hub.config import ConfigError, load_config
from routing.settings import parse_capacity


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("routing:\n  default_sla: fast\n", "default_sla 'fast' is not in sla_policies"),
        ("routing:\n  teams: [{name: A, calendar: office}]\n", "team 'A': calendar 'office'"),
        ("routing:\n  rules: [{name: r}]\n", "rule 'r' sets nothing"),
        ("routing:\n  rules: [{name: r, team: A}, {name: r, team: B}]\n", "two rules are named 'r'"),
        ("routing:\n  rules: [{name: r, team: A, when: {colour: red}}]\n", "routing.rules.0.when.colour: unknown key"),
        ("routing:\n  calendars: {office: {week: {mon: ['9-17']}}}\n", "HH:MM"),
        ("routing:\n  calendars: {office: {timezone: Mars/Base, always_open: true}}\n", "IANA"),
        (
            "routing:\n  automation: [{name: a, on: idle, actions: [{resolve: true}]}]\n",
            "idle_minutes goes with on: idle",
        ),
        (
            "routing:\n  automation: [{name: a, on: sla.breach, actions: [{resolve: true, priority: high}]}]\n",
            "an action does exactly one thing",
        ),
        (
            "routing:\n  automation: [{name: auto-resolve-idle-pending, on: idle, idle_minutes: 5,"
            " actions: [{resolve: true}]}]\n",
            "automation rule name 'auto-resolve-idle-pending' is reserved",
        ),
        ("routing:\n  default_capacity: {fax: 3}\n", "routing.default_capacity.fax"),
        ("routing:\n  presence: {away_after_seconds: 0}\n", "routing.presence.away_after_seconds"),
    ],
)
def test_bad_routing_config_names_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(path, env={})


def test_a_full_routing_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        """
routing:
  default_team: Support
  teams: [{name: Support, calendar: tehran, sla: standard, strategy: round_robin}]
  calendars:
    tehran:
      timezone: Asia/Tehran
      week: {sat: ["08:00-16:00"], wed: ["08:00-13:00"]}
      holidays: ["2025-03-20..2025-03-24", "2025-04-01"]
      country: IR
  sla_policies:
    standard: {first_response_minutes: 60, business_hours: true, on_breach: {priority: urgent, notify: [lead]}}
  rules: [{name: vip, when: {vip: true, business_hours: true, calendar: tehran}, priority: high}]
  automation: [{name: nudge, on: idle, idle_minutes: 60, actions: [{reply: "Still there?"}]}]
""",
        encoding="utf-8",
    )
    cfg = load_config(path, env={})
    assert cfg.routing.teams[0].strategy == "round_robin"
    tehran = cfg.routing.calendars["tehran"].build()
    assert len(tehran.holidays) == 6 and tehran.country is not None
    assert cfg.routing.automation[0].on == "idle"  # YAML's unquoted `on` key is read as a boolean


def test_capacity_on_the_command_line() -> None:
    assert parse_capacity("webchat=3, email=10") == {"webchat": 3, "email": 10}
    assert parse_capacity("") == {}
    with pytest.raises(ValueError, match="channel among"):
        parse_capacity("fax=1")
    with pytest.raises(ValueError, match="whole number"):
        parse_capacity("sms=-1")
    # As the API takes it: the agent's capacity is stored as JSON, which holds 64 bits.
    assert parse_capacity("email=10000") == {"email": 10_000}
    for text in ("email=10001", "email=100000000000000000000", f"email={'9' * 5000}"):
        with pytest.raises(ValueError, match="from 0 to 10000"):
            parse_capacity(text)


def test_the_readme_routing_example_is_valid() -> None:
    import yaml

    from routing.settings import RoutingConfig

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Routing", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = RoutingConfig.model_validate(yaml.safe_load(block)["routing"])
    assert cfg.default_team == "Support" and cfg.automation and cfg.calendars["tehran"].build()
