"""hub.text.strip_bidi_controls: the characters that reorder displayed text."""

from __future__ import annotations

import pytest

from hub.text import strip_bidi_controls


@pytest.mark.parametrize("control", [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]])
def test_every_embedding_override_and_isolate_goes(control: str) -> None:
    assert strip_bidi_controls(f"Eve {control}evil") == "Eve evil"


def test_letters_marks_and_the_zero_width_non_joiner_stay() -> None:
    text = "می\u200cروم \u200eABC-123\u200f سلام"
    assert strip_bidi_controls(text) == text
