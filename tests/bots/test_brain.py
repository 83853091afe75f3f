"""The bot's policy, pure: which rule wins for one message, in English and
Persian (whole conversations are in tests/hub/test_bot_step.py)."""

from __future__ import annotations

from typing import Any

import pytest

from bots.brain import Brain, Contact, Inbound, Outcome
from bots.kb import KbEntry
from bots.matcher import Matcher
from hub.config import BotConfig
from tests.bots.conversation import KB

MATCHER = Matcher([KbEntry.model_validate(e) for e in KB])


def respond(text: str, state: dict[str, Any] | None = None, contact: Contact | None = None, **config: Any) -> Outcome:
    brain = Brain(BotConfig(**config), MATCHER)
    return brain.respond(Inbound(text), contact or Contact(), state or {})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("can I talk to a human please", "requested"),
        ("AGENT", "requested"),
        ("لطفا به کارشناس وصل کنید", "requested"),
        ("پشتیبانی", "requested"),
        ("this is useless", "frustration"),
        ("خیلی افتضاح است", "frustration"),
        ("WHY IS MY ORDER NOT HERE YET", "frustration"),
        ("where is my order!!!", "frustration"),
    ],
)
def test_a_person_on_request_and_on_frustration(text: str, reason: str) -> None:
    out = respond(text)
    assert (out.action, out.reason) == ("handoff", reason)
    assert out.handoff is not None and out.handoff.summary.startswith("Bot handoff: ")


def test_vip_contacts_go_to_a_person_and_an_entrys_team_is_used() -> None:
    vip = respond("how long does shipping take", contact=Contact(tags=("VIP",)))
    assert (vip.action, vip.reason) == ("handoff", "vip")
    by_attribute = respond("hello", contact=Contact(attributes={"vip": True}))
    assert by_attribute.reason == "vip"
    # The pricing entry belongs to Sales: a "No" to its answer goes there.
    answered = respond("what are your prices", qualification={"enabled": False})
    assert answered.entry_id == "pricing"
    # (The hub stores which turn the Yes / No buttons belong to.)
    state = {**answered.state, "feedback_for": 7}
    unhelpful = Brain(BotConfig(), MATCHER).respond(Inbound("No", quick_reply="fb:no"), Contact(), state)
    assert unhelpful.feedback == (7, "no")
    assert (unhelpful.reason, unhelpful.handoff and unhelpful.handoff.team) == ("unhelpful_answer", "Sales")


@pytest.mark.parametrize(
    ("text", "language", "reply"),
    [
        ("hi", "en", "Hello! How can I help you today?"),
        ("سلام", "fa", "سلام! چطور می‌توانم کمکتان کنم؟"),
        ("ممنون", "fa", "خواهش می‌کنم! کار دیگری هست؟"),
        ("Thanks!", "en", "You're welcome! Anything else I can help with?"),
    ],
)
def test_small_talk(text: str, language: str, reply: str) -> None:
    out = respond(text)
    assert (out.action, out.language, [r.text for r in out.replies]) == ("smalltalk", language, [reply])


def test_the_language_follows_the_customer_and_sticks_for_digits() -> None:
    fa = respond("سفارش من کی می‌رسد")
    assert fa.language == "fa"
    assert fa.replies[0].text.startswith("سفارش‌ها ظرف")
    # "2" says nothing about the language: the conversation's one is kept.
    assert respond("2", state=fa.state).language == "fa"


def test_a_feedback_button_without_a_question_is_just_text() -> None:
    out = respond("Yes", state={})
    assert out.action != "feedback"
    assert out.feedback is None


ARABIC_KB = Matcher(
    [
        KbEntry(
            id="shipping-time",
            questions=("متى يصل طلبي", "كم يستغرق الشحن", "how long does shipping take"),
            answer={
                "ar": "يصل الطلب خلال ٣ إلى ٥ أيام عمل.",
                "fa": "سفارش‌ها ظرف ۳ تا ۵ روز کاری می‌رسند.",
                "en": "3 to 5 days.",
            },
        ),
        KbEntry(
            id="return-policy",
            questions=("كيف أعيد المنتج", "سياسة الإرجاع", "how do I return an item"),
            answer={"fa": "تا ۳۰ روز می‌توانید کالا را مرجوع کنید.", "en": "Within 30 days."},
        ),
    ]
)


def test_an_arabic_speaker_gets_the_arabic_answer_else_the_persian_one() -> None:
    brain = Brain(BotConfig(ask_feedback=False), ARABIC_KB)
    shipping = brain.respond(Inbound("متى يصل طلبي؟"), Contact(), {})
    assert (shipping.language, shipping.entry_id) == ("ar", "shipping-time")
    assert [r.text for r in shipping.replies] == ["يصل الطلب خلال ٣ إلى ٥ أيام عمل."]
    returns = brain.respond(Inbound("كيف أعيد المنتج"), Contact(), shipping.state)
    assert (returns.language, returns.entry_id) == ("ar", "return-policy")
    assert [r.text for r in returns.replies] == ["تا ۳۰ روز می‌توانید کالا را مرجوع کنید."]
    # The bot's own words have no Arabic version: Persian.
    assert brain.respond(Inbound("أريد التحدث مع operator"), Contact(), {}).replies[0].text.startswith("شما را")
