"""Corrections as customers type them (the Persian comma, "my name is
actually Reza") and what a customer reads about a phone number the dialog
could not read."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bots import dialog
from bots.brain import Brain, Contact, Inbound
from hub.config import BotConfig, QualificationConfig

CONFIG = QualificationConfig()
SLOTS = {s.name: s for s in CONFIG.slots}
# Answers that reach the phone question of the default dialog.
TO_PHONE = ["Sara", "sara2@example.com"]


def run(messages: list[str], config: QualificationConfig = CONFIG, **kwargs: Any) -> tuple[dict[str, Any], dialog.Step]:
    state = dialog.start(config, {})
    step = dialog.ask_next(config, state, dialog.Step())
    for text in messages:
        step = dialog.answer(config, state, text, **kwargs)
    return state, step


@pytest.mark.parametrize(
    ("text", "slot", "value"),
    [
        ("نه، اسمم رضا است", "name", "رضا"),
        ("نه؛ اسمم رضا است", "name", "رضا"),
        ("ببخشید، اسمم رضا است", "name", "رضا"),
        ("نه، ایمیلم a@b.com است", "email", "a@b.com"),
        ("my name is actually Reza", "name", "Reza"),
        ("my name is really Reza", "name", "Reza"),
        ("no, my name is actually Reza", "name", "Reza"),
        ("my name is Reza, actually", "name", "Reza"),
        ("اسمم در واقع رضا است", "name", "رضا"),
        ("اسمم رضا است در واقع", "name", "رضا"),
        ("در واقع اسمم رضا است", "name", "رضا"),
        ("my email is actually a@b.com", "email", "a@b.com"),
    ],
)
def test_corrections_with_persian_punctuation_and_adverbs(text: str, slot: str, value: str) -> None:
    found = dialog.find_correction(CONFIG.slots, text, "IR")
    assert found is not None and (found[0].name, found[1]) == (slot, value)


def test_a_persian_correction_at_the_phone_question_is_no_bad_phone_number() -> None:
    state, step = run([*TO_PHONE, "نه، اسمم رضا است"])
    assert step.set_values == {"name": "رضا"}
    assert state["values"]["name"] == "رضا" and state["slot"] == "phone"
    assert step.say[0]["fa"] == "ممنون، رضا ثبت شد."


@pytest.mark.parametrize(
    ("text", "name"),
    [("my name is actually Reza", "Reza"), ("I'm actually Reza", "Reza"), ("Really", "Really")],
)
def test_an_adverb_is_not_part_of_the_name(text: str, name: str) -> None:
    assert dialog.validate(SLOTS["name"], text) == name


def test_the_bot_renames_to_reza_not_actually_reza() -> None:
    brain = Brain(BotConfig(), None)
    out = brain.respond(Inbound("I want a demo"), Contact(), {})
    for text in TO_PHONE:
        out = brain.respond(Inbound(text), Contact(), out.state)
    out = brain.respond(Inbound("my name is actually Reza"), Contact(), out.state)
    assert out.attributes == {"name": "Reza"}
    assert out.replies[0].text == "Thanks, I've updated your name to Reza."


@pytest.mark.parametrize("text", ["0912 123 4567", "۰۹۱۲ ۱۲۳ ۴۵۶۷"])
def test_an_unread_phone_number_gets_a_fixed_sentence_and_a_neutral_example(
    text: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="bots.dialog"), pytest.raises(dialog.Invalid) as raised:
        dialog.validate(SLOTS["phone"], text)
    en, fa = raised.value.text["en"], raised.value.text["fa"]
    assert en == (
        "I couldn't read that phone number. Please write it starting with + and the country code "
        "(+1 for the US, +44 for the UK, +98 for Iran ...)."
    )
    assert fa.startswith("شماره تلفن را نتوانستم بخوانم؛")
    # libphonenumber's words and the customer's input are for the log only.
    for said in (en, fa):
        assert "region" not in said and text not in said and "not a phone number" not in said
    assert any("Missing or invalid default region" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("region", "example"), [("IR", "+98 912 345 6789"), ("GB", "+44 7400 123456")])
def test_the_example_follows_the_hubs_region(region: str, example: str) -> None:
    with pytest.raises(dialog.Invalid) as raised:
        dialog.validate(SLOTS["phone"], "12", region)
    assert raised.value.text["en"] == (
        f"I couldn't read that phone number. Please check it, or write it with the country code, like {example}."
    )
    assert f"\u200e{example}" in raised.value.text["fa"]
    assert "+44" not in raised.value.text["en"] or region == "GB"


def test_the_dialog_asks_again_with_the_fixed_sentence() -> None:
    _, step = run([*TO_PHONE, "۰۹۱۲ ۱۲۳ ۴۵۶۷"])
    assert step.say[0]["en"].startswith("I couldn't read that phone number. Please write it starting with +")
    assert step.say[1] == SLOTS["phone"].prompt
