"""What the qualification dialog stores from real answers: values taken out of
"my name is ..." sentences in English and Persian, corrections that must not
fire on ordinary words, questions that are not answers, amounts written with
Persian separators, misspellings and ranges, and choices shown in the
customer's language."""

from __future__ import annotations

from typing import Any

import pytest

from bots import dialog
from bots.brain import Brain, Contact, Inbound
from bots.kb import KbEntry
from bots.matcher import Matcher
from hub.config import BotConfig, QualificationConfig
from tests.bots.conversation import KB

CONFIG = QualificationConfig()
SLOTS = {s.name: s for s in CONFIG.slots}
# Answers that reach each slot of the default dialog, in order.
TO_EMAIL = ["علی"]
TO_COMPANY = [*TO_EMAIL, "ali@acme.example", "+98 912 123 4567"]
TO_BUDGET = [*TO_COMPANY, "Acme", "12"]


def run(messages: list[str], config: QualificationConfig = CONFIG, **kwargs: Any) -> tuple[dict[str, Any], dialog.Step]:
    state = dialog.start(config, {})
    step = dialog.ask_next(config, state, dialog.Step())
    for text in messages:
        step = dialog.answer(config, state, text, **kwargs)
    return state, step


# --- corrections -------------------------------------------------------------------


def test_not_decided_is_not_a_name_correction() -> None:
    # «نامشخص» starts with the name alias «نام»; it is a "not decided yet" for the budget.
    state, _ = run([*TO_BUDGET, "نامشخص"])
    assert state["values"]["name"] == "علی"
    assert "budget" in state["skipped"]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("اسمم فاطمه", "فاطمه"),
        ("نام من زهره", "زهره"),
        ("actually my name is Ali", "Ali"),
    ],
)
def test_a_name_correction_keeps_the_name_as_written(text: str, name: str) -> None:
    state, step = run([*TO_EMAIL, text])
    assert step.set_values == {"name": name}
    assert state["values"]["name"] == name
    assert state["slot"] == "email"


def test_a_word_that_begins_with_an_alias_is_not_a_correction() -> None:
    state, _ = run([*TO_COMPANY, "Namecheap"])
    assert state["values"]["name"] == "علی"
    assert state["values"]["company"] == "Namecheap"


def test_a_number_after_an_alias_and_other_words_is_not_a_correction() -> None:
    state, _ = run([*TO_COMPANY, "team plan, 500"])
    assert "team_size" not in state["values"]
    assert state["values"]["company"] == "team plan, 500"
    # Said as the slot's value, it still corrects.
    state, step = run([*TO_BUDGET, "actually my team size is 15"])
    assert step.set_values == {"team_size": 15}


# --- free-text answers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("My name is John Smith", "John Smith"),
        ("Hi, I'm Sara", "Sara"),
        ("اسمم فاطمه", "فاطمه"),
        ("نام من زهره", "زهره"),
        ("اسم من زهره است", "زهره"),
        ("من علی هستم", "علی"),
    ],
)
def test_the_name_is_taken_out_of_an_introduction(text: str, name: str) -> None:
    assert dialog.validate(SLOTS["name"], text) == name


@pytest.mark.parametrize(
    "text",
    [
        "Do you offer a free trial?",
        "do you offer a free trial",
        "What's the price for 10 users",
        "دوره آزمایشی رایگان دارید؟",
        "آیا دوره آزمایشی رایگان دارید",
    ],
)
def test_a_question_is_not_taken_for_an_answer(text: str) -> None:
    with pytest.raises(dialog.Invalid):
        dialog.validate(SLOTS["name"], text)
    state, step = run([text])
    assert "name" not in state["values"]
    assert not step.consumed  # the bot then tries the knowledge base with it
    assert state["slot"] == "name"
    # Names that begin like a question are still names.
    assert dialog.validate(SLOTS["name"], "Will Smith") == "Will Smith"
    assert dialog.validate(SLOTS["name"], "May Lee") == "May Lee"


def test_a_question_asked_for_the_name_is_answered_from_the_knowledge_base() -> None:
    brain = Brain(BotConfig(), Matcher([KbEntry.model_validate(e) for e in KB]))
    started = brain.respond(Inbound("what are your prices"), Contact(), {})
    assert started.state["dialog"]["slot"] == "name"
    out = brain.respond(Inbound("how long does shipping take?"), Contact(), started.state)
    assert out.entry_id == "shipping-time"
    assert [r.text for r in out.replies] == ["Orders arrive in 3 to 5 working days.", "May I have your name?"]
    assert "name" not in out.attributes
    assert out.state["dialog"]["slot"] == "name"


# --- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("۱،۵۰۰،۰۰۰ تومان", 1_500_000),  # Arabic comma (U+060C) grouping thousands
        ("5 ملیون", 5_000_000),  # a common spelling of میلیون
        ("about 5-10k", 7500),  # a range: the unit covers both ends, the midpoint is kept
        ("۵ تا ۱۰ میلیون", 7_500_000),
        ("500-1k", 750),
        ("1,200.50", 1200.5),
        ("1.200,50", 1200.5),
        ("1.500.000", 1_500_000),
        ("1 500 000", 1_500_000),
        ("۱ میلیون و ۵۰۰ هزار تومان", 1_500_000),
    ],
)
def test_amounts_with_persian_separators_spellings_and_ranges(text: str, value: float) -> None:
    assert dialog.validate(SLOTS["budget"], text) == value


# --- choices and phone numbers in the customer's terms ---------------------------------------


def test_choice_buttons_and_the_choice_error_in_persian() -> None:
    state, step = run([*TO_BUDGET, "2k"])
    assert state["slot"] == "timeline"
    assert step.quick_choices == ["this month", "this quarter", "later"]  # what a button answers
    assert [t["fa"] for t in step.choice_titles] == ["این ماه", "سه ماه آینده", "بعدا"]
    assert [t["en"] for t in step.choice_titles] == ["this month", "this quarter", "later"]
    _, wrong = run([*TO_BUDGET, "2k", "someday"])
    assert wrong.say[0]["fa"] == "لطفاً یکی از این‌ها را انتخاب کنید: این ماه، سه ماه آینده، بعدا."
    assert wrong.say[0]["en"] == "Please choose one of: this month, this quarter, later."
    assert [t["fa"] for t in wrong.choice_titles] == ["این ماه", "سه ماه آینده", "بعدا"]  # offered again
    state, fixed = run([*TO_BUDGET, "my timeline is this quarter"])
    assert fixed.set_values == {"timeline": "this quarter"}
    assert fixed.say[0]["fa"] == "ممنون، سه ماه آینده ثبت شد."


def test_phone_numbers_fall_back_to_the_hubs_default_region() -> None:
    state, _ = run([*TO_EMAIL, "ali@acme.example", "0912 123 4567"], default_region="IR")
    assert state["values"]["phone"] == "+989121234567"
    state, _ = run([*TO_COMPANY, "actually my phone number is 0912 765 4321"], default_region="IR")
    assert state["values"]["phone"] == "+989127654321"
    # The dialog's own region comes first.
    own = QualificationConfig(phone_region="GB")
    state, _ = run([*TO_EMAIL, "ali@acme.example", "020 7946 0958"], own, default_region="IR")
    assert state["values"]["phone"] == "+442079460958"


# --- leaving the dialog ---------------------------------------------------------------


@pytest.mark.parametrize("text", ["cancel", "Stop!", "no, cancel please", "never mind", "لغو", "نمی‌خوام", "نمیخوام"])
def test_an_exit_word_ends_the_dialog_instead_of_being_the_name(text: str) -> None:
    state, step = run([text])
    assert step.cancelled and step.set_values == {} and state["values"] == {}
    assert "stop the questions" in step.say[0]["en"] and "سؤال" in step.say[0]["fa"]


@pytest.mark.parametrize("text", ["no thanks", "Stopford", "Sara Cancellieri"])
def test_no_exit_word_in_a_skip_or_a_name(text: str) -> None:
    _, step = run([text])
    assert not step.cancelled


def test_cancelling_stops_the_questions_for_the_conversation() -> None:
    brain = Brain(BotConfig(), Matcher([KbEntry.model_validate(e) for e in KB]))
    state = brain.respond(Inbound("I want to buy, what is the price?"), Contact(), {}).state
    out = brain.respond(Inbound("cancel"), Contact(), state)
    assert (out.action, out.attributes, out.lead, out.state["dialog"]) == ("qualify", {}, None, None)
    assert [r.text for r in out.replies] == [
        "No problem, I'll stop the questions here. Ask me anything else whenever you like."
    ]
    # A trigger phrase later in the conversation does not start it over.
    again = brain.respond(Inbound("what is the price?"), Contact(), out.state)
    assert again.state["dialog"] is None and again.action == "answer"


@pytest.mark.parametrize("text", ["hello", "thanks", "yes", "ok", "no", "سلام", "مرسی", "بله"])
def test_a_courtesy_yes_or_no_is_not_a_name(text: str) -> None:
    brain = Brain(BotConfig(), Matcher([KbEntry.model_validate(e) for e in KB]))
    state = brain.respond(Inbound("I want to buy, what is the price?"), Contact(), {}).state
    out = brain.respond(Inbound(text), Contact(), state)
    assert "name" not in out.attributes
    assert out.state["dialog"] is not None and out.state["dialog"]["slot"] == "name"
