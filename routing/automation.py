"""Automation rules: event -> conditions -> actions. Which rules fire for an
event is pure; the hub performs the actions (each one audited with the rule's
name)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hub.core import TicketStatus
from routing.match import Compiled, MatchContext
from routing.settings import AUTO_RESOLVE_RULE, AutomationAction, AutomationRule, AutoResolve, Conditions


@dataclass(frozen=True, slots=True)
class CompiledAutomation:
    rule: AutomationRule
    when: Compiled

    @classmethod
    def of(cls, rule: AutomationRule) -> CompiledAutomation:
        return cls(rule, Compiled.of(rule.when))


def compile_automation(rules: Iterable[AutomationRule], auto_resolve: AutoResolve) -> tuple[CompiledAutomation, ...]:
    """The configured rules, plus the built-in auto-resolve of idle pending
    tickets when ``routing.auto_resolve.pending_after_minutes`` is set."""
    out = [CompiledAutomation.of(r) for r in rules if r.enabled]
    if auto_resolve.pending_after_minutes is not None:
        out.append(
            CompiledAutomation.of(
                AutomationRule(
                    name=AUTO_RESOLVE_RULE,
                    on="idle",
                    idle_minutes=auto_resolve.pending_after_minutes,
                    when=Conditions(status=[TicketStatus.PENDING]),
                    actions=[AutomationAction(reply=auto_resolve.message), AutomationAction(resolve=True)],
                )
            )
        )
    return tuple(out)


def matching(rules: Sequence[CompiledAutomation], event: str, ctx: MatchContext) -> list[AutomationRule]:
    """Every enabled rule for ``event`` whose conditions hold, in order (unlike
    routing rules, all of them run)."""
    return [c.rule for c in rules if c.rule.on == event and c.when.matches(ctx)]
