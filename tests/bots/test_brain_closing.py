"""How a conversation ends, and what a buying question the knowledge base
cannot answer is recorded as: pure, through :class:`bots.brain.Brain`."""

from __future__ import annotations

from typing import Any

import pytest

from bots.brain import Brain, Contact, Inbound, Outcome, say
from bots.kb import KbEntry
from bots.matcher import Matcher
from hub.config import BotConfig
from tests.bots.conversation import KB

MATCHER = Matcher([KbEntry.model_validate(e) for e in KB])
# README's example knowledge base: nothing about prices.
README_KB = Matcher(
    [
        KbEntry.model_validate(
            {
                "id": "shipping-time",
                "questions": ["how long does shipping take", "when will my order arrive", "سفارش من کی می‌رسد"],
                "answer": {"en": "Orders arrive in 3 to 5 working days.", "fa": "سفارش‌ها ظرف ۳ تا ۵ روز کاری می‌رسند."},
                "tags": ["shipping"],
            }
        ),
        KbEntry.model_validate(
            {
                "id": "opening-hours",
                "questions": ["what are your opening hours", "ساعت کاری شما چیست"],
                "answer": "Saturday to Wednesday, 9 to 17.",
            }
        ),
    ]
)
FAREWELL_EN = say("farewell", "en")
FAREWELL_FA = say("farewell", "fa")
ACK_EN = say("ack", "en")
ACK_FA = say("ack", "fa")


def respond(text: str, state: dict[str, Any] | None = None, matcher: Matcher = MATCHER) -> Outcome:
    return Brain(BotConfig(), matcher).respond(Inbound(text), Contact(), state or {})


def after_glad(question: str) -> dict[str, Any]:
    """The bot's memory after it answered ``question`` and the customer said
    it helped ("Glad I could help!"): no question is open any more."""
    answered = respond(question)
    assert answered.action == "answer"
    glad = respond("yes", {**answered.state, "feedback_for": 7})
    assert (glad.action, glad.feedback) == ("feedback", (7, "yes"))
    return glad.state


@pytest.mark.parametrize(
    ("question", "closing", "reply"),
    [
        ("when will my order arrive?", "ok, bye", FAREWELL_EN),
        ("when will my order arrive?", "thanks, bye", FAREWELL_EN),
        ("when will my order arrive?", "ok", ACK_EN),
        ("when will my order arrive?", "yes", ACK_EN),
        ("when will my order arrive?", "no", FAREWELL_EN),
        ("when will my order arrive?", "Okay, thank you so much, bye!", FAREWELL_EN),
        ("ساعت کاری شما چیست", "باشه خداحافظ", FAREWELL_FA),
        ("ساعت کاری شما چیست", "باشه", ACK_FA),
        ("ساعت کاری شما چیست", "خداحافظ", FAREWELL_FA),
        ("ساعت کاری شما چیست", "فعلا", FAREWELL_FA),
        ("ساعت کاری شما چیست", "مرسی، خداحافظ", FAREWELL_FA),
        # One Latin word from a Persian speaker keeps the conversation Persian.
        ("ساعت کاری شما چیست", "ok", ACK_FA),
    ],
)
def test_closing_words_after_a_helpful_answer_are_small_talk(question: str, closing: str, reply: str) -> None:
    state = {**after_glad(question), "misses": 1}
    out = respond(closing, state)
    assert (out.action, out.handoff, [r.text for r in out.replies]) == ("smalltalk", None, [reply])
    # Not a miss: a second one would have handed off.
    assert out.state["misses"] == 1


@pytest.mark.parametrize("text", ["thanks, bye", "ok", "yes", "no", "bye", "باشه", "خداحافظ", "فعلا", "ok, bye"])
def test_closing_words_as_a_first_message_are_not_a_knowledge_base_miss(text: str) -> None:
    out = respond(text)
    assert (out.action, out.reason, out.handoff) == ("smalltalk", None, None)
    view = Brain(BotConfig(), MATCHER).ask(text)
    assert (view["action"], view["reason"]) == ("answer", "smalltalk")


@pytest.mark.parametrize(
    ("text", "entry"),
    [("ok, but when will my order arrive?", "shipping-time"), ("thanks, bye. when are you open?", "opening-hours")],
)
def test_a_question_after_an_ok_is_still_a_question(text: str, entry: str) -> None:
    out = respond(text, after_glad("how do I return an item"))
    assert (out.action, out.entry_id) == ("answer", entry)


def test_a_typed_ok_bye_still_rates_the_answer_while_the_question_is_open() -> None:
    answered = respond("when will my order arrive?")
    out = respond("ok, bye", {**answered.state, "feedback_for": 7})
    assert (out.action, out.feedback) == ("feedback", (7, "yes"))


def test_a_goodbye_mid_dialog_is_no_name_and_keeps_the_question_open() -> None:
    asked = respond("I want to buy")
    assert asked.state["dialog"]["slot"] == "name"
    out = respond("ok, bye", asked.state)
    assert (out.action, out.attributes, [r.text for r in out.replies]) == ("smalltalk", {}, [FAREWELL_EN])
    assert out.state["dialog"]["slot"] == "name"
    assert respond("Sara", out.state).attributes == {"name": "Sara"}


@pytest.mark.parametrize("text", ["how much is a quote for my team?", "I want to buy 10 licenses", "قیمت چنده؟"])
def test_a_buying_question_without_an_answer_is_recorded_as_starting_qualification(text: str) -> None:
    out = respond(text, matcher=README_KB)
    assert (out.action, out.reason, out.entry_id) == ("qualify", "qualify", None)
    assert out.state["transcript"][-1]["a"] == "started qualification"
    assert out.replies[0].text in (say("qualify_intro", "en"), say("qualify_intro", "fa"))
    view = Brain(BotConfig(), README_KB).ask(text)
    assert (view["action"], view["reason"]) == ("answer", "qualify")
    assert view["replies"] == [r.text for r in out.replies]


def test_the_sales_note_says_the_bot_started_qualification() -> None:
    brain = Brain(BotConfig(), README_KB)
    out = brain.respond(Inbound("how much is a quote for my team?"), Contact(), {})
    contact = Contact()
    for text in ["I'm Ali", "ali@example.com", "+989121234567", "Acme", "50", "5-10k"]:
        out = brain.respond(Inbound(text), contact, out.state)
        score, stage = out.lead or (contact.lead_score, contact.lifecycle_stage)
        contact = Contact(attributes={**contact.attributes, **out.attributes}, lifecycle_stage=stage, lead_score=score)
    assert out.handoff is not None and out.handoff.reason == "sales_qualified"
    lines = out.handoff.summary.splitlines()
    assert lines[2:4] == ["- Customer: how much is a quote for my team?", "  Bot: started qualification"]
    assert "answered" not in out.handoff.summary


def test_a_buying_question_the_knowledge_base_answers_is_still_an_answer() -> None:
    out = respond("how much does it cost")
    assert (out.action, out.reason, out.entry_id) == ("answer", None, "pricing")
