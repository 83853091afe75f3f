"""The FAQ matcher: Persian and English spelled every way customers write them
match the same entry; the batch (calibration) and one-question paths agree;
confidence and the three bands."""

from __future__ import annotations

import numpy as np
import pytest

from bots.kb import KbEntry
from bots.matcher import LexicalBackend, Matcher, Thresholds, letters, words
from tests.bots.conversation import KB


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher([KbEntry.model_validate(e) for e in KB])


def test_words_and_letters_normalize_before_matching() -> None:
    assert words("Refunds? REFUNDED!") == "refund refund"
    assert words("كي ميرسد") == words("کی میرسد")
    assert words("می‌رسد") == "می رسد"  # ZWNJ as a space for words...
    assert letters("می‌رسد") == letters("میرسد") == "میرسد"  # ...dropped for character n-grams
    assert words("پلن ۲۹ دلاری") == words("پلن ٢٩ دلاری") == words("پلن 29 دلاری") == "پلن 29 دلاری"
    assert words("سَفارِش") == words("سفارش")


# Every variant is one customers really type: Arabic keyboards (ي ك), no ZWNJ
# or a space instead, diacritics, Arabic-Indic or Persian digits, shouting,
# punctuation.
VARIANTS = [
    ("سفارش من کی می‌رسد", "shipping-time"),
    ("سفارش من كي ميرسد", "shipping-time"),
    ("سفارش من کی می رسد؟", "shipping-time"),
    ("سَفارِشِ من کِی می‌رسد", "shipping-time"),
    ("رمز عبورم را فراموش کردم", "password-reset"),
    ("رمز عبورم را فراموش كردم!!", "password-reset"),
    ("قیمت اشتراک چقدر است", "pricing"),
    ("قيمت اشتراك چقدر است؟", "pricing"),
    ("روش‌های پرداخت", "payment-methods"),
    ("روشهای پرداخت", "payment-methods"),
    ("روش های پرداخت", "payment-methods"),
    ("HOW DO I RESET MY PASSWORD?", "password-reset"),
    ("how do i reset my password", "password-reset"),
    ("When will my orders arrive...", "shipping-time"),
]


@pytest.mark.parametrize(("question", "entry"), VARIANTS)
def test_spelling_variants_find_the_same_entry(matcher: Matcher, question: str, entry: str) -> None:
    match = matcher.match(question, Thresholds(answer=0.5, clarify=0.2))
    assert match.entry_id == entry
    assert match.action == "answer", match


def test_letter_and_digit_variants_score_exactly_alike(matcher: Matcher) -> None:
    canonical = matcher.rank(["سفارش من کی می‌رسد"])[0]
    for variant in ("سفارش من كي مي‌رسد", "سَفارش من کی می‌رسد", "سفارش مـــن کی می‌رسد"):
        assert matcher.rank([variant])[0] == canonical
    assert matcher.rank(["پلن ۲۹ دلاری"]) == matcher.rank(["پلن 29 دلاری"]) == matcher.rank(["پلن ٢٩ دلاری"])


def test_an_unrelated_question_is_not_answered(matcher: Matcher) -> None:
    unrelated = matcher.match("what is the capital of mongolia")
    known = matcher.match("how long does shipping take")
    assert matcher.calibrator.learnt
    assert unrelated.confidence < 0.5 < known.confidence
    assert (unrelated.action, known.action) != ("answer", "answer")


def test_bands_follow_the_thresholds(matcher: Matcher) -> None:
    question = "how many days is delivery"
    confidence = matcher.match(question).confidence
    assert matcher.match(question, Thresholds(confidence, confidence)).action == "answer"
    clarify = matcher.match(question, Thresholds(min(1.0, confidence + 0.01), confidence, choices=2))
    assert clarify.action == "clarify"
    assert len(clarify.candidates) == 2
    assert clarify.candidates[0].entry_id == "shipping-time"
    assert clarify.candidates[0].confidence >= clarify.candidates[1].confidence
    assert matcher.match(question, Thresholds(1.0, min(1.0, confidence + 0.01))).action == "handoff"
    assert clarify.to_json() == {
        "action": "clarify",
        "entry_id": "shipping-time",
        "confidence": round(confidence, 4),
        "candidates": [{"entry_id": c.entry_id, "confidence": round(c.confidence, 4)} for c in clarify.candidates],
    }
    with pytest.raises(ValueError, match="0 <= clarify <= answer <= 1"):
        Thresholds(answer=0.3, clarify=0.5)


def test_one_question_and_many_at_once_score_the_same() -> None:
    """Calibration scores held-out questions in one sparse product; customers'
    questions go through the one-at-a-time path. Both must be the same model."""
    entries = [KbEntry.model_validate(e) for e in KB]
    texts = [q for e in entries for q in e.questions]
    labels = np.array([i for i, e in enumerate(entries) for _ in e.questions])
    backend = LexicalBackend()
    prepared = backend.prepare(texts)
    held = np.arange(len(texts))[::3]
    kept = np.setdiff1d(np.arange(len(texts)), held)
    model = backend.fit(prepared, kept, labels[kept], len(entries))
    batch = model.scores_prepared(prepared, held)
    single = model.scores([texts[i] for i in held])
    np.testing.assert_allclose(batch[0], single[0], atol=1e-9)
    np.testing.assert_allclose(batch[1], single[1], atol=1e-9)
    # A question with no known term at all: no similarity, the SVM's intercepts.
    empty_cls, empty_near = model.scores(["zzzz qqqq"])
    assert not empty_near.any()
    assert empty_cls.shape == (1, len(entries))


def test_tiny_and_empty_knowledge_bases() -> None:
    assert Matcher([]).match("anything").action == "handoff"
    assert Matcher([]).match("anything").candidates == ()
    one = Matcher([KbEntry(id="hours", questions=("when are you open",), answer="9 to 5")])
    assert not one.calibrator.learnt  # too small to calibrate on itself: a fixed mapping
    assert one.match("when are you open").entry_id == "hours"
    assert one.match("when are you open").confidence > one.match("refund my card").confidence
    # Questions of punctuation only have no terms; the matcher still builds.
    odd = Matcher([KbEntry(id="q", questions=("?",), answer="x"), KbEntry(id="r", questions=("!!",), answer="y")])
    assert odd.match("?").action == "handoff"
