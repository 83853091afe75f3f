"""The bot's policy, pure: which rule wins for one message, in English and
Persian (whole conversations are in tests/hub/test_bot_step.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bots.brain import Brain, Contact, Inbound, Outcome, feedback_buttons, lang_of, say
from bots.kb import KbEntry
from bots.matcher import Matcher
from hub.bot_step import memory_for_ticket
from hub.config import BotConfig
from hub.core import utcnow
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
        ("why is my order still not here!!!", "frustration"),
        ("چرا هنوز سفارشم نرسیده!!!", "frustration"),
        # Just a word for a person, or one in a few words of asking.
        ("agent", "requested"),
        ("human", "requested"),
        ("اپراتور", "requested"),
        ("کارشناس", "requested"),
        ("پشتیبان", "requested"),
        ("I want a human", "requested"),
        ("Human please!", "requested"),
        ("agent please, my parcel is lost", "requested"),
        ("I'd like to speak to a human about my refund", "requested"),
        ("talk to a person", "requested"),
        ("با پشتیبانی صحبت کنم", "requested"),
        ("می خواهم با پشتیبان صحبت کنم", "requested"),
        ("لطفا به پشتیبانی وصل کنید", "requested"),
        # Asking for sales is asking for a person, not a question the knowledge base missed.
        ("I want to speak with a sales person", "requested"),
        ("can I talk to sales?", "requested"),
        ("می خواهم با واحد فروش صحبت کنم", "requested"),
    ],
)
def test_a_person_on_request_and_on_frustration(text: str, reason: str) -> None:
    out = respond(text)
    assert (out.action, out.reason) == ("handoff", reason)
    assert out.handoff is not None and out.handoff.summary.startswith("Bot handoff: ")


@pytest.mark.parametrize(
    "text",
    [
        # «پشتیبانی» is also "support" as in "do you support PDF invoices?".
        "آیا از فاکتور PDF پشتیبانی می‌کنید؟",
        "Is the price per person?",
        "I need a human resources integration",
        "Thank you so much!!!",
        "ممنون!!!",
        "where is my order!!!",
        # Operators of phone networks: «اپراتور‌ها», the plural.
        "آیا پیامک به همه اپراتور‌ها ارسال می‌شود؟",
        "آیا پیامک به همه اپراتور ها ارسال می‌شود؟",
    ],
)
def test_ordinary_questions_and_delight_are_no_request_for_a_person(text: str) -> None:
    out = respond(text)
    assert out.action != "handoff", out.reason
    assert out.handoff is None


def test_vip_contacts_go_to_a_person_and_an_entrys_team_is_used() -> None:
    vip = respond("how long does shipping take", contact=Contact(tags=("VIP",)))
    assert (vip.action, vip.reason) == ("handoff", "vip")
    by_attribute = respond("hello", contact=Contact(attributes={"vip": True}))
    assert by_attribute.reason == "vip"
    # As routing reads it: a CSV's "yes", and the configured tag in any case.
    assert respond("hello", contact=Contact(attributes={"vip": "yes"})).reason == "vip"
    assert respond("hello", contact=Contact(tags=("gold",)), vip_tag="Gold").reason == "vip"
    # The pricing entry belongs to Sales: a "No" to its answer goes there.
    answered = respond("what are your prices", qualification={"enabled": False})
    assert answered.entry_id == "pricing"
    # (The hub stores which turn the Yes / No buttons belong to.)
    state = {**answered.state, "feedback_for": 7}
    unhelpful = Brain(BotConfig(), MATCHER).respond(Inbound("No", quick_reply="fb:no"), Contact(), state)
    assert unhelpful.feedback == (7, "no")
    assert (unhelpful.reason, unhelpful.handoff and unhelpful.handoff.team) == ("unhelpful_answer", "Sales")


HELLO_EN = "Hello! How can I help you today?"
HELLO_FA = "سلام! چطور می‌توانم کمکتان کنم؟"


@pytest.mark.parametrize(
    ("text", "language", "reply"),
    [
        ("hi", "en", HELLO_EN),
        ("سلام", "fa", HELLO_FA),
        ("ممنون", "fa", "خواهش می‌کنم! کار دیگری هست؟"),
        ("Thanks!", "en", "You're welcome! Anything else I can help with?"),
        ("سلام خسته نباشید", "fa", HELLO_FA),
        ("سلام وقتتون بخیر", "fa", HELLO_FA),
        ("سلام، وقت‌تون بخیر", "fa", HELLO_FA),
        ("سلام عرض ادب", "fa", HELLO_FA),
        ("درود بر شما", "fa", HELLO_FA),
        ("hello there", "en", HELLO_EN),
        ("Hi, good afternoon", "en", HELLO_EN),
        ("Thank you so much!!!", "en", "You're welcome! Anything else I can help with?"),
        ("ممنون!!!", "fa", "خواهش می‌کنم! کار دیگری هست؟"),
    ],
)
def test_small_talk(text: str, language: str, reply: str) -> None:
    # After a turn the bot did not understand: a greeting is not a second one.
    out = respond(text, state={"misses": 1})
    assert (out.action, out.language, [r.text for r in out.replies]) == ("smalltalk", language, [reply])
    assert (out.state["misses"], out.state["offered"], out.handoff) == (1, [], None)


def answered(text: str) -> dict[str, Any]:
    """The bot's memory after it answered ``text`` and asked whether that
    helped (the hub stores which turn the Yes / No buttons belong to)."""
    out = respond(text, qualification={"enabled": False})
    assert out.action == "answer" and out.replies[-1].asks_feedback
    return {**out.state, "feedback_for": 7}


@pytest.mark.parametrize(
    ("question", "typed", "said", "reply"),
    [
        ("how long does shipping take", "yes", "yes", "Glad I could help!"),
        ("how long does shipping take", "Yes!", "yes", "Glad I could help!"),
        ("how long does shipping take", "ok", "yes", "Glad I could help!"),
        ("سفارش من کی می‌رسد", "بله", "yes", "خوشحالم که کمک کردم!"),
        ("سفارش من کی می‌رسد", "آره", "yes", "خوشحالم که کمک کردم!"),
        ("سفارش من کی می‌رسد", "ok", "yes", "خوشحالم که کمک کردم!"),
        ("سفارش من کی می‌رسد", "بله ممنون", "yes", "خوشحالم که کمک کردم!"),
        ("how long does shipping take", "no", "no", "I'm connecting you"),
        ("how long does shipping take", "Nope.", "no", "I'm connecting you"),
        ("سفارش من کی می‌رسد", "نه", "no", "شما را به یکی از همکارانمان"),
        ("سفارش من کی می‌رسد", "خیر", "no", "شما را به یکی از همکارانمان"),
    ],
)
def test_did_this_answer_your_question_answered_in_words(question: str, typed: str, said: str, reply: str) -> None:
    """As the Yes / No buttons: SMS shows none, so people reply with words."""
    out = respond(typed, state=answered(question))
    assert out.feedback == (7, said)
    assert out.match is None  # not taken for a question
    assert out.replies[0].text.startswith(reply)
    if said == "yes":
        assert (out.action, out.handoff, out.state["misses"]) == ("feedback", None, 0)
    else:
        assert (out.action, out.reason) == ("handoff", "unhelpful_answer")


def test_no_to_buttons_that_did_not_fit_is_none_of_these() -> None:
    offer = respond("delivery of my refund", answer_threshold=0.99, clarify_threshold=0.0)
    assert offer.action == "clarify"
    out = respond("no", state={**offer.state, "feedback_for": 8})
    assert (out.action, out.reason, out.feedback) == ("handoff", "none_of_these", (8, "no"))


def test_the_language_of_the_conversation_survives_answers_without_language() -> None:
    """An email, a phone number, a number or one Latin word says nothing about
    the customer's language: the conversation stays in Persian."""
    asked = respond("قیمت اشتراک چقدر است")
    assert asked.language == "fa"
    assert asked.replies[-1].text == "لطفاً نام خود را بفرمایید."
    state = asked.state
    expected = {
        "سارا احمدی": "نشانی ایمیل شما چیست؟",
        "ali@example.com": "شماره تلفنی که بتوانیم با شما تماس بگیریم؟",
        "+98 912 123 4567": "از طرف کدام شرکت هستید؟",
        "Acme": "چند نفر از آن استفاده خواهند کرد؟",
        "۲۵": "بودجه ماهانه شما چقدر است (دلار)؟",
    }
    for text, prompt in expected.items():
        out = respond(text, state=state)
        assert (out.language, [r.text for r in out.replies]) == ("fa", [prompt]), text
        state = out.state
    # Words in English are evidence: the conversation follows the customer.
    assert respond("I'd rather not say", state=state).language == "en"


@pytest.mark.parametrize(
    ("text", "before", "language"),
    [
        ("ali@example.com", "fa", "fa"),
        ("5k", "fa", "fa"),
        ("Yes!", "fa", "fa"),
        ("https://example.com/orders/12", "ar", "ar"),
        # Persian words around an email are Persian, however long the email.
        ("ایمیلم ali.rezaei@example.com است", "en", "fa"),
    ],
)
def test_lang_of_keeps_the_conversations_language_without_evidence(text: str, before: str, language: str) -> None:
    assert lang_of(text, before) == language


def test_a_lead_that_becomes_sales_qualified_goes_to_sales_at_once() -> None:
    """name, email, phone, company, team size 25, budget 5k: a score of 70 is
    sales-qualified (60) before the last question, which the salesperson can ask."""
    brain = Brain(BotConfig(), MATCHER)
    contact = Contact()
    out = brain.respond(Inbound("How much does it cost?"), contact, {})
    assert [r.text for r in out.replies] == ["Plans start at $29 a month.", "May I have your name?"]
    state = out.state
    for text in ["Sara Ahmadi", "sara@acme.example", "+98 912 123 4567", "Acme Ltd", "25"]:
        out = brain.respond(Inbound(text), contact, state)
        assert out.action == "qualify", (text, out.reason)
        state = out.state
        # As the hub stores them between messages.
        score, stage = out.lead or (contact.lead_score, contact.lifecycle_stage)
        contact = Contact(attributes={**contact.attributes, **out.attributes}, lifecycle_stage=stage, lead_score=score)
    assert contact.lifecycle_stage == "marketing_qualified"
    out = brain.respond(Inbound("5k"), contact, state)
    assert (out.action, out.reason, out.lead) == ("handoff", "sales_qualified", (70, "sales_qualified"))
    assert [r.text for r in out.replies] == ["Thank you! I'm passing you to our sales team now."]
    assert out.replies[0].quick_replies == []
    assert out.handoff is not None and out.handoff.team == "Sales"
    assert "budget=5000" in out.handoff.summary and "Lead score 70, stage sales-qualified." in out.handoff.summary
    assert (out.state["dialog"], out.state["qualified"], out.state["offered"]) == (None, "sales_qualified", [])
    # Only when the stage is first reached: a lead who was sales-qualified
    # before the dialog is asked everything, then handed over.
    already = Contact(lifecycle_stage="sales_qualified", lead_score=80)
    out = brain.respond(Inbound("Sara Ahmadi"), already, brain.respond(Inbound("demo"), already, {}).state)
    assert (out.action, [r.text for r in out.replies]) == ("qualify", ["What is your email address?"])


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


def test_a_persian_speaker_gets_choice_buttons_in_persian() -> None:
    """The button answers with the stored value; its title is the choice's Persian alias."""
    brain = Brain(BotConfig(), MATCHER)
    contact = Contact()
    out = brain.respond(Inbound("قیمت چقدر است؟"), contact, {})
    for text in ["سارا احمدی", "sara@acme.example", "+98 912 123 4567", "شرکت آکمه", "۲", "۱۰۰"]:
        out = brain.respond(Inbound(text), contact, out.state)
        assert out.action == "qualify", (text, out.reason)
    assert [r.text for r in out.replies] == ["چه زمانی می\u200cخواهید شروع کنید؟"]
    assert [(q.id, q.title) for q in out.replies[-1].quick_replies] == [
        ("qual:this month", "این ماه"),
        ("qual:this quarter", "سه ماه آینده"),
        ("qual:later", "بعدا"),
    ]


@pytest.mark.parametrize(
    ("answers", "text", "slot", "value"),
    [
        (["Sara"], "SARA.AHMADI@EXAMPLE.COM", "email", "sara.ahmadi@example.com"),
        ([], "MOHAMMAD REZAEI", "name", "MOHAMMAD REZAEI"),
    ],
)
def test_an_answer_in_capitals_is_no_shouting(answers: list[str], text: str, slot: str, value: str) -> None:
    state = respond("I want to buy").state
    for answer in answers:
        state = respond(answer, state).state
    out = respond(text, state)
    assert (out.action, out.attributes) == ("qualify", {slot: value})


def test_capitals_outside_an_answer_still_shout() -> None:
    assert respond("WHERE IS MY ORDER, SEE HTTPS://EXAMPLE.COM/ORDERS/12").reason == "frustration"
    assert respond("re SARA.AHMADI@EXAMPLE.COM, ORDER AB1234CD").reason != "frustration"


def test_the_lead_score_never_drops_below_the_stored_one_mid_dialog() -> None:
    contact = Contact(lead_score=45, lifecycle_stage="marketing_qualified")
    out = respond("Sara", respond("I want to buy", contact=contact).state, contact)
    assert out.lead == (45, "marketing_qualified")


def test_what_was_collected_is_told_in_one_handoff_note_only() -> None:
    brain = Brain(BotConfig(), MATCHER)
    state = brain.respond(Inbound("I want to buy"), Contact(), {}).state
    state = brain.respond(Inbound("Sara"), Contact(), state).state
    first = brain.respond(Inbound("agent"), Contact(), state)
    assert first.handoff is not None and "Collected: name=Sara" in first.handoff.summary
    later = brain.respond(Inbound("agent"), Contact(), first.state)
    assert later.handoff is not None and "Collected" not in later.handoff.summary


def _resumed_at_company() -> dict[str, Any]:
    """A dialog left at the company question, resumed on a new ticket."""
    now = utcnow()
    state: dict[str, Any] = {}
    for text in ["I want to buy", "Sara", "sara@example.com", "skip"]:
        state = respond(text, state).state
    assert state["dialog"]["slot"] == "company"
    return memory_for_ticket({**state, "ticket_id": 1}, now - timedelta(days=3), 2, now)


@pytest.mark.parametrize("text", ["Hi there, my invoice is wrong", "how long does shipping take?"])
def test_a_new_tickets_first_message_is_no_answer_to_the_old_question(text: str) -> None:
    out = respond(text, _resumed_at_company())
    assert "company" not in out.attributes and out.action != "qualify"


def test_a_resumed_dialog_takes_a_clear_answer_and_greets_back() -> None:
    out = respond("my company is Acme", _resumed_at_company())
    assert (out.action, out.attributes) == ("qualify", {"company": "Acme"})
    out = respond("hello", _resumed_at_company())
    assert [r.text for r in out.replies] == ["Hello! How can I help you today?", "Which company are you with?"]
    assert respond("Acme", out.state).attributes == {"company": "Acme"}


def test_feedback_buttons_name_the_turn_they_rate() -> None:
    answered = Brain(BotConfig(), MATCHER).respond(Inbound("how long does shipping take"), Contact(), {})
    (reply,) = answered.replies
    assert [q.id for q in feedback_buttons(reply.quick_replies, 7)] == ["fb:yes:7", "fb:no:7"]
    state = {**answered.state, "feedback_for": 7}
    rated = Brain(BotConfig(), MATCHER).respond(Inbound("No", quick_reply="fb:no:7"), Contact(), state)
    assert (rated.action, rated.feedback, rated.reason) == ("handoff", (7, "no"), "unhelpful_answer")


@pytest.mark.parametrize(
    ("pressed", "feedback_for"),
    [("fb:no:3", 7), ("fb:yes:3", 7), ("fb:no:3", None), ("fb:no", None)],
    ids=["no under an older answer", "yes under an older answer", "after thanks", "old-style id after thanks"],
)
def test_a_feedback_button_under_an_answer_no_longer_asked_about_is_ignored(
    pressed: str, feedback_for: int | None
) -> None:
    brain = Brain(BotConfig(), MATCHER)
    answered = brain.respond(Inbound("how do I return an item"), Contact(), {})
    state = {**answered.state, "feedback_for": feedback_for}
    if feedback_for is None:
        state = brain.respond(Inbound("thanks"), Contact(), state).state
    late = brain.respond(Inbound("No", quick_reply=pressed), Contact(), state)
    # Not a rating of the latest answer, nor a question "No" that misses.
    assert (late.action, late.reason) == ("ignored", "stale_button")
    assert (late.feedback, late.handoff, late.replies) == (None, None, [])
    assert late.state["misses"] == 0
    # The question still open stays open: its own No still counts.
    assert (late.state["feedback_for"], late.state["offered"]) == (state["feedback_for"], state["offered"])


def test_telegrams_start_is_greeted_and_words_after_it_are_a_question() -> None:
    brain = Brain(BotConfig(), MATCHER)
    opened = brain.respond(Inbound("", start=True), Contact(), {})
    assert (opened.action, opened.handoff, opened.replies[0].text) == ("smalltalk", None, say("greeting", "en"))
    assert opened.state.get("misses", 0) == 0
    asked = brain.respond(Inbound("when will my order arrive", start=True), Contact(), {})
    assert asked.entry_id == "shipping-time"
