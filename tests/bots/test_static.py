"""The default backend: n-grams plus the shipped static word vectors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from bots.embedding import _EmbeddingModel
from bots.kb import KbEntry
from bots.matcher import LexicalBackend, Matcher
from bots.static import MODEL_DIR, StaticBackend, StaticEncoder
from hub.bot_step import make_backend
from hub.config import BotConfig
from hub.text import latin_words

QUESTION_SHAPES = ("how do I change my", "where can I find my", "what happens to my", "help with my")

KB = [
    KbEntry(id="weather", questions=("what's the weather like", "is it going to rain today"), answer={"en": "Sunny"}),
    KbEntry(id="card", questions=("how do I cancel my card", "I lost my card"), answer={"en": "Call us"}),
    KbEntry(id="hours", questions=("when are you open", "what are your opening hours"), answer={"en": "9-5"}),
    KbEntry(id="refund", questions=("I want my money back", "how do refunds work"), answer={"en": "30 days"}),
    KbEntry(
        id="price",
        questions=("قیمت اشتراک چند است", "how much does it cost"),
        answer={"en": "$9", "fa": "۹ دلار"},
    ),
]


def test_it_is_the_default_and_ships_with_the_package() -> None:
    assert isinstance(make_backend(BotConfig()), StaticBackend)
    assert {p.name for p in MODEL_DIR.iterdir()} >= {"model.safetensors", "tokenizer.json", "config.json"}


def test_only_latin_script_words_are_embedded() -> None:
    assert latin_words("قیمت Pro plan چنده؟ don't ۱۲ café") == "Pro plan don't café"
    vectors = StaticEncoder().encode(["cancel my card", "block my credit card", "what's the weather", "قیمت چنده"])
    assert np.allclose(np.linalg.norm(vectors[:3], axis=1), 1.0)
    # A Persian question gets no vector: a bag of Arabic letters would only add noise.
    assert not vectors[3].any()
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.2


@pytest.mark.parametrize(
    ("question", "entry"),
    [
        # No word in common with the entry's examples: the vectors know these are close.
        ("reimburse me please", "refund"),
        ("will there be showers tomorrow", "weather"),
        ("my wallet was stolen with my visa", "card"),
        # Persian is matched by its n-grams, as before.
        ("قیمت اشتراک چنده", "price"),
    ],
)
def test_paraphrases_rank_their_entry_first(question: str, entry: str) -> None:
    (best, *_) = Matcher(KB, StaticBackend()).rank([question], 2)[0]
    assert best.entry_id == entry


@pytest.mark.parametrize("entries", [2, 5])
def test_the_classifier_scores_are_sklearns_log_probabilities(entries: int) -> None:
    """The backend applies the fitted weights itself (sklearn's checks cost a
    millisecond a question); with two entries sklearn keeps one decision
    function, which must still give both entries their log-probability."""
    model = Matcher(KB[:entries], StaticBackend()).model
    assert isinstance(model, _EmbeddingModel)
    questions = ["is it raining", "cancel the card", "قیمت"]
    combined, _ = model.scores(questions)
    lexical, _ = model.lexical.scores(questions)
    fitted = LogisticRegression(C=20.0, max_iter=2000).fit(model.examples, model.labels)
    assert np.allclose(combined - lexical, fitted.predict_log_proba(model.encode(questions)))


@pytest.mark.parametrize("question", ["کارت هدیه دارید؟", "کارت هدیه میفروشید", "ساعت کاری شما"])
def test_a_question_without_english_words_is_judged_by_the_n_grams_alone(question: str) -> None:
    """Judged by half a model (n-grams, and no vector), a Persian question
    that was word for word an example scored 0.46: unsure."""
    kb = [
        *KB[:4],
        KbEntry(id="gift", questions=("do you sell gift cards", "کارت هدیه دارید"), answer={"en": "Yes"}),
        KbEntry(id="open", questions=("when are you open", "ساعت کاری شما چیست"), answer={"en": "9-5"}),
    ]
    static, lexical = Matcher(kb, StaticBackend()), Matcher(kb, LexicalBackend())
    assert static.match(question) == lexical.match(question)
    assert np.array_equal(static.confidences([question, "gift cards"])[0], lexical.confidences([question])[0])


def test_the_fallback_is_built_from_the_same_fits_and_calibrated_as_on_its_own() -> None:
    """The n-gram model inside the default backend's is the fallback's: fitted
    once, not twice (a third of a build's time), and the fallback's
    calibration comes out exactly as a plain lexical matcher's. Some entries
    are Persian only, which the vectors never judge, and some have one question."""
    kb = [
        *KB,
        KbEntry(id="gift", questions=("کارت هدیه دارید", "کارت هدیه میفروشید", "هدیه"), answer={"en": "Yes"}),
        KbEntry(id="open", questions=("ساعت کاری شما چیست",), answer={"en": "9-5"}),
        KbEntry(id="ship", questions=("do you ship abroad",), answer={"en": "Yes"}),
        # Enough held-out questions, right and wrong, for a calibration to be learnt
        # at all (bots.matcher.MIN_CALIBRATION_OUTCOMES), as on a real knowledge base.
        *(
            KbEntry(id=f"topic{i}", questions=tuple(f"{q} {word}" for q in QUESTION_SHAPES), answer={"en": "ok"})
            for i, word in enumerate(("invoice", "password", "delivery", "warranty", "discount", "account"))
        ),
    ]
    static, lexical = Matcher(kb, StaticBackend()), Matcher(kb, LexicalBackend())
    assert static.fallback is not None and isinstance(static.model, _EmbeddingModel)
    assert static.fallback.model is static.model.lexical
    assert static.fallback.calibrator.learnt
    assert np.array_equal(static.fallback.calibrator.weights, lexical.calibrator.weights)
    assert static.fallback.calibrator.bias == lexical.calibrator.bias
    questions = ["کارت هدیه", "ساعت کاری", "قیمت اشتراک"]
    assert np.array_equal(static.confidences(questions), lexical.confidences(questions))
    assert static.fallback.rank(questions, 3) == lexical.rank(questions, 3)


def test_a_two_entry_knowledge_base_hands_off_what_it_knows_nothing_about() -> None:
    """The README's example KB, too small to calibrate on itself: the fixed
    mapping for these scores (the static backend's nearest example is about
    0.7 for any English question) hands off what neither entry is about."""
    kb = [
        KbEntry(
            id="shipping-time",
            questions=("how long does shipping take", "when will my order arrive", "سفارش من کی می‌رسد"),
            answer={"en": "Orders arrive in 3 to 5 working days."},
        ),
        KbEntry(
            id="refunds",
            questions=("can I get a refund", "how do I return an item", "چطور کالا را مرجوع کنم"),
            answer={"en": "Within 30 days."},
        ),
    ]
    matcher = Matcher(kb, make_backend(BotConfig()))
    assert not matcher.calibrator.learnt
    for question in ("do you sell gift cards", "can I pay with bitcoin", "my password does not work"):
        assert matcher.match(question).action == "handoff", question
    assert matcher.match("when does my package arrive").entry_id == "shipping-time"
    assert matcher.match("when does my package arrive").action == "answer"
    assert matcher.match("how do I return an item").action == "answer"
    # A Persian question goes to the n-grams, with their own mapping.
    assert matcher.match("سفارش من کی می‌رسد").action == "answer"
