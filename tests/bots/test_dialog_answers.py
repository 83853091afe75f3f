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


# --- several answers in one message ----------------------------------------------------

IR = QualificationConfig(phone_region="IR")


@pytest.mark.parametrize(
    ("text", "values", "asked"),
    [
        ("my name is John and my email is john@example.com", {"name": "John", "email": "john@example.com"}, "phone"),
        ("I'm Sara, sara@example.com", {"name": "Sara", "email": "sara@example.com"}, "phone"),
        ("Sara Ahmadi - sara@example.com", {"name": "Sara Ahmadi", "email": "sara@example.com"}, "phone"),
        ("اسمم سارا است و ایمیلم sara@example.com", {"name": "سارا", "email": "sara@example.com"}, "phone"),
        ("سارا هستم و شماره‌ام ۰۹۱۲۱۲۳۴۵۶۷", {"name": "سارا", "phone": "+989121234567"}, "email"),
        ("Reza, 09121234567", {"name": "Reza", "phone": "+989121234567"}, "email"),
        (
            "John, my email is j@example.com and my phone is +98 912 123 4567",
            {"name": "John", "email": "j@example.com", "phone": "+989121234567"},
            "company",
        ),
        # Only the address: kept, and the name asked again rather than the address stored as the name.
        ("sara@example.com", {"email": "sara@example.com"}, "name"),
    ],
)
def test_every_detail_a_message_gives_is_kept_and_not_asked_again(
    text: str, values: dict[str, Any], asked: str
) -> None:
    state, step = run([text], IR)
    assert step.set_values == values
    assert state["values"] == values
    assert state["slot"] == asked


@pytest.mark.parametrize("text", ["Smith and Sons", "Acme 2024-2025", "T-Mobile", "Mary-Jane Watson"])
def test_a_free_text_answer_is_cut_only_where_something_else_begins(text: str) -> None:
    assert dialog.validate(SLOTS["company"], text) == text
    assert dialog.validate(SLOTS["company"], f"{text}, email: info@example.com") == text


def test_a_name_corrected_with_the_open_email_fills_the_email_too() -> None:
    state, step = run(["Ali", "my name is John and my email is john@example.com"])
    assert step.set_values == {"name": "John", "email": "john@example.com"}
    assert state["slot"] == "phone"


def test_no_phone_number_is_read_beside_an_amount_nor_a_known_email_overwritten() -> None:
    state = dialog.start(IR, {"email": "old@example.com"})
    dialog.ask_next(IR, state, dialog.Step())
    step = dialog.answer(IR, state, "John, new@example.com")
    assert step.set_values == {"name": "John"}
    # The phone question skipped: a budget of "1 500 000" is no phone number.
    state, step = run(["علی", "ali@acme.example", "skip", "Acme", "12", "1 500 000"], IR)
    assert step.set_values == {"budget": 1_500_000}
    assert state["skipped"] == ["phone"]


# --- buying questions and the knowledge base ---------------------------------------------


@pytest.mark.parametrize("text", ["can I get a quote", "I want to buy"])
def test_a_buying_question_gets_no_unrelated_answer_it_could_not_reject(text: str) -> None:
    """ "can I get a quote" matches "can I get a refund" well enough to be
    answered, and an answer that starts the dialog comes without "Did this
    answer your question?": the dialog starts instead, its turn keeping what
    the matcher found."""
    matcher = Matcher([KbEntry.model_validate(e) for e in KB])
    assert matcher.match(text).action == "answer"
    out = Brain(BotConfig(), matcher).respond(Inbound(text), Contact(), {})
    assert (out.action, out.reason, out.entry_id) == ("qualify", "qualify", None)
    assert out.match is not None and out.match.entry_id == "return-policy"
    assert not any("refund" in r.text for r in out.replies)


@pytest.mark.parametrize(
    ("text", "entry"),
    [("what is the price?", "pricing"), ("I'd like to buy, how long does shipping take?", "shipping-time")],
)
def test_a_buying_question_the_knowledge_base_answers_surely_is_answered(text: str, entry: str) -> None:
    out = Brain(BotConfig(), Matcher([KbEntry.model_validate(e) for e in KB])).respond(Inbound(text), Contact(), {})
    assert (out.action, out.reason, out.entry_id) == ("answer", None, entry)
    assert out.state["dialog"] is not None


def test_the_name_the_contact_already_has_is_not_asked() -> None:
    """The widget's pre-chat form stores the name as the contact's and the
    email as an attribute: neither is asked again."""
    brain = Brain(BotConfig(), Matcher([KbEntry.model_validate(e) for e in KB]))
    known = Contact(name="Maryam Karimi", attributes={"email": "maryam@example.com"})
    out = brain.respond(Inbound("I want to buy, what is the price?"), known, {})
    assert out.state["dialog"]["slot"] == "phone"
    assert [r.text for r in out.replies][-1] == "And a phone number we can reach you on?"
    assert brain.respond(Inbound("I want to buy, what is the price?"), Contact(), {}).state["dialog"]["slot"] == "name"


@pytest.mark.parametrize("text", ["+1 555 0100", "+44 1234"])
def test_a_phone_number_without_its_area_code_is_asked_again(text: str) -> None:
    with pytest.raises(dialog.Invalid):
        dialog.validate(SLOTS["phone"], text)
