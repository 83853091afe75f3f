"""The qualification dialog: each slot's validation (Persian digits included),
skipping, corrections, and the lead score and stage."""

from __future__ import annotations

from typing import Any

import pytest

from bots import dialog
from hub.config import QualificationConfig, QualificationSlot, ScoreRule

CONFIG = QualificationConfig()
SLOTS = {s.name: s for s in CONFIG.slots}


def ask(name: str, text: str, region: str | None = None) -> Any:
    return dialog.validate(SLOTS[name], text, region)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Sara@Example.COM", "sara@example.com"),
        ("it's sara.ahmadi+crm@mail.example.ir thanks", "sara.ahmadi+crm@mail.example.ir"),
        ("ایمیلم sara۱۲@example.com است", "sara12@example.com"),
    ],
)
def test_emails(text: str, value: str) -> None:
    assert ask("email", text) == value


@pytest.mark.parametrize(
    "text",
    # An address with a non-ASCII letter is refused whole, never stored cut ("ric@example.com").
    [
        "sara.example.com",
        "sara@",
        "@example.com",
        "ندارم ایمیل",
        "éric@example.com",
        "josé@example.com",
        "رضا@example.com",
    ],
)
def test_bad_emails_are_explained_in_both_languages(text: str) -> None:
    with pytest.raises(dialog.Invalid) as caught:
        ask("email", text)
    assert "name@example.com" in caught.value.text["en"]
    assert "ایمیل" in caught.value.text["fa"]


@pytest.mark.parametrize(
    ("text", "region", "value"),
    [
        ("+98 912 123 4567", None, "+989121234567"),
        ("my number is +44 20 7946 0958", None, "+442079460958"),
        ("۰۹۱۲ ۱۲۳ ۴۵۶۷", "IR", "+989121234567"),
        ("٠٩١٢١٢٣٤٥٦٧", "IR", "+989121234567"),
        ("+۹۸۹۱۲۱۲۳۴۵۶۷", None, "+989121234567"),
    ],
)
def test_phone_numbers_in_any_digits(text: str, region: str | None, value: str) -> None:
    assert ask("phone", text, region) == value


def test_a_phone_number_without_country_code_needs_the_region() -> None:
    with pytest.raises(dialog.Invalid, match="country code"):
        ask("phone", "0912 123 4567")
    with pytest.raises(dialog.Invalid):
        ask("phone", "12", "IR")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("25", 25),
        ("۲۵ نفر", 25),
        ("about ٢٥ people", 25),
        ("5k", 5000),
        ("2 million", 2_000_000),
        ("۵ میلیون", 5_000_000),
        ("1,200", 1200),
        ("۱٬۲۰۰ دلار", 1200),
        ("2.5", 2.5),
        ("۲٫۵", 2.5),
        ("۲/۵ میلیون", 2_500_000),
        ("2/5 million", 2_500_000),
        ("۲٫۵ میلیون", 2_500_000),
        ("۱۲/۵", 12.5),
    ],
)
def test_numbers_in_any_digits_and_words(text: str, value: float) -> None:
    assert ask("budget", text) == value


def test_not_a_number() -> None:
    with pytest.raises(dialog.Invalid) as caught:
        ask("team_size", "quite a few")
    assert caught.value.text["fa"].startswith("لطفاً یک عدد")


@pytest.mark.parametrize(
    ("text", "value"), [("This month!", "this month"), ("این ماه", "this month"), ("2", "this quarter"), ("۳", "later")]
)
def test_choices_by_word_in_either_language_or_by_number(text: str, value: str) -> None:
    assert ask("timeline", text) == value


def test_an_unknown_choice_lists_the_options() -> None:
    with pytest.raises(dialog.Invalid, match="this month, this quarter, later"):
        ask("timeline", "someday")


def run(messages: list[str], known: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dialog.Step]]:
    state = dialog.start(CONFIG, known or {})
    steps = [dialog.ask_next(CONFIG, state, dialog.Step())]
    for text in messages:
        steps.append(dialog.answer(CONFIG, state, text))
    return state, steps


def prompts(step: dialog.Step) -> list[str]:
    return [s["en"] for s in step.say]


def test_the_slots_are_asked_in_order_and_known_ones_are_not_asked() -> None:
    state, steps = run(["Sara", "sara@acme.example"], known={"phone": "+989121234567"})
    assert prompts(steps[0]) == ["May I have your name?"]
    assert prompts(steps[1]) == ["What is your email address?"]
    assert prompts(steps[2]) == ["Which company are you with?"]  # the phone is known
    assert state["values"] == {"name": "Sara", "email": "sara@acme.example"}
    assert steps[2].set_values == {"email": "sara@acme.example"}


def test_skip_asks_a_required_slot_once_more_and_skips_an_optional_one_at_once() -> None:
    state, steps = run(["skip", "رد", "no thanks"])
    assert prompts(steps[1]) == ["It helps us a lot to have this one. May I have your name?"]
    assert prompts(steps[2]) == ["What is your email address?"]
    assert state["skipped"] == ["name"]
    state, steps = run(["Sara", "sara@acme.example", "skip"])
    assert prompts(steps[3]) == ["Which company are you with?"]
    assert state["skipped"] == ["phone"]


def test_a_wrong_answer_is_explained_then_the_dialog_moves_on() -> None:
    state, steps = run(["Sara", "not an email", "still not"])
    assert not steps[2].consumed  # may be a question: the bot can try the knowledge base
    assert prompts(steps[2]) == [
        "That does not look like an email address (name@example.com).",
        "What is your email address?",
    ]
    assert prompts(steps[3]) == ["Let's move on.", "And a phone number we can reach you on?"]
    assert state["skipped"] == ["email"]


@pytest.mark.parametrize(
    "correction",
    [
        "actually my email is sara@acme.example",
        "Sorry, my e-mail should be sara@acme.example",
        "ایمیلم sara@acme.example است",
        "اصلاح: ایمیل من sara@acme.example",
    ],
)
def test_a_correction_changes_an_earlier_answer_and_asks_the_current_slot_again(correction: str) -> None:
    state, steps = run(["Sara", "sara@old.example", correction])
    assert steps[3].set_values == {"email": "sara@acme.example"}
    assert state["values"]["email"] == "sara@acme.example"
    assert state["slot"] == "phone"
    assert prompts(steps[3])[-1] == "And a phone number we can reach you on?"


def test_a_correction_fills_a_skipped_slot() -> None:
    state, _ = run(["Sara", "sara@acme.example", "skip", "actually my phone number is +98 912 123 4567"])
    assert state["values"]["phone"] == "+989121234567"
    assert "phone" not in state["skipped"]


def test_the_last_answer_ends_the_dialog() -> None:
    answers = ["Sara", "sara@acme.example", "+98 912 123 4567", "Acme", "25", "2k", "this month"]
    state, steps = run(answers)
    assert steps[-1].done
    assert state["slot"] is None
    points = dialog.score(CONFIG.rules, state["values"])
    assert points == 90
    assert dialog.stage_for(CONFIG, points) == "sales_qualified"


def test_score_rules_and_stages() -> None:
    rules = [
        ScoreRule(slot="budget", op="gte", value=500, points=25),
        ScoreRule(slot="team_size", op="lte", value=5, points=-5),
        ScoreRule(slot="company", op="contains", value="ltd", points=5),
        ScoreRule(slot="timeline", op="eq", value="This Month", points=20),
        ScoreRule(slot="plan", op="in", value=["pro", "enterprise"], points=10),
        ScoreRule(slot="email", points=10),
    ]
    values = {"budget": 2000, "team_size": 3, "company": "Acme Ltd", "timeline": "this month", "plan": "Pro"}
    assert dialog.score(rules, values) == 25 - 5 + 5 + 20 + 10
    assert dialog.score(rules, {"budget": "lots", "email": ""}) == 0
    assert [dialog.stage_for(CONFIG, p) for p in (0, 29, 30, 59, 60)] == [
        "lead",
        "lead",
        "marketing_qualified",
        "marketing_qualified",
        "sales_qualified",
    ]
    assert dialog.later_stage("sales_qualified", "lead") == "sales_qualified"
    assert dialog.later_stage("lead", "marketing_qualified") == "marketing_qualified"
    assert dialog.later_stage(None, "lead") == "lead"


def test_a_text_slot_keeps_at_most_500_characters() -> None:
    slot = QualificationSlot(name="need", prompt={"en": "What do you need?"})
    assert dialog.validate(slot, "  a CRM  ") == "a CRM"
    assert len(dialog.validate(slot, "x" * 900)) == 500
    with pytest.raises(dialog.Invalid):
        dialog.validate(slot, "   ")
