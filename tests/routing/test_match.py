"""Conditions match what they say and nothing more."""

from __future__ import annotations

from datetime import UTC, datetime

from routing.match import Compiled, MatchContext, TicketFacts
from routing.settings import Conditions


def ctx(text: str) -> MatchContext:
    return MatchContext(
        TicketFacts(channel="webchat", inbox="webchat", text=text),
        now=datetime(2025, 6, 2, 10, 0, tzinfo=UTC),
        calendars={},
        default_calendar=None,
        team_names={},
    )


def test_keywords_that_normalize_to_nothing_match_no_message() -> None:
    # The models refuse such keywords; a document stored before they did must
    # not make its rule catch every message.
    only_symbols = Compiled.of(Conditions(keywords=["🔥", "!!!"]))
    for text in ("hello", "🔥 !!!", ""):
        assert not only_symbols.matches(ctx(text)), text
    some_word = Compiled.of(Conditions(keywords=["refund", "?"]))
    assert some_word.matches(ctx("A refund?")) and not some_word.matches(ctx("hello?"))
