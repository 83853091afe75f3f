"""The web chat frames' parsing, on its own (the socket is tested in tests/hub/web)."""

from __future__ import annotations

import pytest

from channels.base import InvalidPayload
from channels.webchat import InvalidField, frame_limit, parse_identify, parse_message


def test_a_name_is_one_line_and_keeps_its_zero_width_non_joiner() -> None:
    """A line break typed into the name field made every email reply to the
    contact fail (a header cannot hold one)."""
    details = parse_identify({"type": "identify", "name": "  Sara\nAhmadi\t\u2028x\x00 ", "email": "S@Example.com"})
    assert details.name == "Sara Ahmadi x" and details.email == "s@example.com"
    assert parse_identify({"type": "identify", "name": "محمد\u200cرضا"}).name == "محمد\u200cرضا"
    with pytest.raises(InvalidPayload, match="at least one of"):
        parse_identify({"type": "identify", "name": "\n\r\x00"})


def test_text_that_is_not_text_is_refused_by_field() -> None:
    with pytest.raises(InvalidField, match="name holds a lone surrogate") as caught:
        parse_identify({"type": "identify", "name": "Sa\ud800ra"})
    assert caught.value.field == "name"
    frame = {"type": "message", "text": "hi", "client_id": "c1"}
    for key in ("text", "client_id", "quick_reply"):
        with pytest.raises(InvalidPayload, match=f"{key} holds a lone surrogate"):
            parse_message({**frame, key: "a\udfff"}, visitor_id="v", inbox="webchat", max_chars=100)
    with pytest.raises(InvalidPayload, match="non-empty string 'text'"):
        parse_message({**frame, "text": "\x00 \x00"}, visitor_id="v", inbox="webchat", max_chars=100)
    assert parse_message({**frame, "text": "h\x00i"}, visitor_id="v", inbox="webchat", max_chars=100).body == "hi"


def test_the_frame_limit_fits_the_longest_message_written_as_escapes() -> None:
    assert frame_limit(5000) == 64 * 1024
    assert frame_limit(20_000) >= len('{"type":"message","text":"","client_id":""}') + 6 * 20_000 + 6 * 100
