"""Knowledge bases of a few entries (review of the CLI, finding 6): three
entries of two questions each are the smallest that calibrate on themselves,
and the few held-out questions they have taught the confidence a falling
slope. A question copied from an entry got "clarify" at 0.50 while the
runners-up showed 0.64 and 0.69."""

from __future__ import annotations

import numpy as np
import pytest

from bots.kb import KbEntry
from bots.matcher import (
    MIN_CALIBRATION_OUTCOMES,
    Backend,
    Calibrator,
    LexicalBackend,
    Matcher,
    _learnt,
)
from bots.static import StaticBackend

THREE = [
    KbEntry(
        id="shipping-time",
        questions=("how long does shipping take", "when will my order arrive"),
        answer="Orders arrive in 3 to 5 working days.",
    ),
    KbEntry(id="opening-hours", questions=("what are your opening hours", "when are you open"), answer="9 to 17."),
    KbEntry(id="refunds", questions=("how do I get a refund", "can I return my order"), answer="Within 5 days."),
]
FIVE = [
    *THREE,
    KbEntry(id="pricing", questions=("how much does it cost", "what are your prices"), answer="$29 a month."),
    KbEntry(id="password", questions=("I forgot my password", "how do I reset my password"), answer="Use the link."),
]
BACKENDS = {"static": StaticBackend, "lexical": LexicalBackend}


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]()


@pytest.mark.parametrize("kb", [THREE, FIVE[:4], FIVE], ids=["3", "4", "5"])
def test_an_example_question_is_answered_with_its_entry(backend: Backend, kb: list[KbEntry]) -> None:
    matcher = Matcher(kb, backend)
    for entry in kb:
        for question in entry.questions:
            for asked in (question, question.upper() + "?", f"{question} please"):
                match = matcher.match(asked)
                assert (match.action, match.entry_id) == ("answer", entry.id), (asked, match)


@pytest.mark.parametrize("kb", [THREE, FIVE], ids=["3", "5"])
def test_confidences_never_rise_down_the_ranking(backend: Backend, kb: list[KbEntry]) -> None:
    matcher = Matcher(kb, backend)
    questions = [q for e in kb for q in e.questions]
    questions += ["do you sell gift cards", "what is the weather today", "my order", "open refund hours"]
    for question, candidates in zip(questions, matcher.rank(questions, len(kb)), strict=True):
        confidences = [c.confidence for c in candidates]
        assert confidences == sorted(confidences, reverse=True), (question, candidates)
        by_entry = dict(zip((e.id for e in matcher.entries), matcher.confidences([question])[0], strict=True))
        assert [by_entry[c.entry_id] for c in candidates] == pytest.approx(confidences, abs=1e-9)


def test_a_question_about_nothing_in_a_small_kb_is_not_answered(backend: Backend) -> None:
    matcher = Matcher(THREE, backend)
    assert matcher.match("do you sell gift cards").action != "answer"


def test_too_few_or_incoherent_held_out_questions_keep_the_fixed_mapping() -> None:
    fallback = Calibrator.fallback_for(LexicalBackend())
    rng = np.random.default_rng(0)
    n = 4 * MIN_CALIBRATION_OUTCOMES
    right = rng.random(n) < 0.5
    own = np.where(right, 0.2, 1.0) + rng.normal(0, 0.1, n)  # the lower the score, the likelier right
    nearest = rng.uniform(0.3, 0.6, n)
    falling = np.column_stack([own, own - 0.5, nearest, nearest])
    assert _learnt([falling], [right.astype(np.float64)], fallback) is fallback
    rising = np.column_stack([-own, 0.5 - own, nearest, nearest])
    assert _learnt([rising], [right.astype(np.float64)], fallback).learnt
    few = MIN_CALIBRATION_OUTCOMES - 1
    target = np.r_[np.ones(few), np.zeros(n)]
    x = np.vstack([rising[:few] + 2.0, rising[:n]])
    assert _learnt([x], [target], fallback) is fallback
