"""FAQ matching: which knowledge-base entry a customer's question is about,
and how sure the bot is.

Retrieval runs over every example question of every entry. A pluggable
:class:`Backend` turns questions into two score matrices (one column per
entry): a classifier score and the similarity to the entry's nearest example.
The :class:`Matcher` turns those into a *calibrated* confidence, the
probability that the top entry is right, learnt from the knowledge base itself
when it is built:

* held-out example questions of each entry (scored by a model fitted without
  them) are in-scope questions, labelled by whether the top entry was right;
* the questions of whole entries left out of the model are out-of-scope
  questions: customers asking about something the knowledge base lacks look
  just like that.

A small logistic regression over (top score, margin to the second, nearest
example of the top entry, nearest example overall) fitted on those is the
confidence. So thresholds mean the same on a ten-entry and a thousand-entry
knowledge base, and need no labelled traffic to start with.

:class:`LexicalBackend` needs nothing but scikit-learn: word uni/bigrams
(English words stemmed) and character 2-5-grams (which carry Persian morphology
and typos), a linear SVM, and nearest neighbours. It runs in well under a
millisecond per question on one CPU core. The product's default
(``bots.static``) adds static English word vectors to it.
"""

from __future__ import annotations

import abc
import functools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import snowballstemmer
from numpy.typing import NDArray
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from bots.kb import KbEntry
from hub.text import normalize, strip_punctuation

Action = Literal["answer", "clarify", "handoff"]
Matrix = NDArray[np.float64]


# --- text preparation ------------------------------------------------------------

# Snowball stemmers keep their state on the object: one per thread (the
# knowledge base is built in a worker thread while questions are answered).
_STEMMERS = threading.local()
# Single-character words count too ("5", "ب").
_WORD = r"(?u)\b\w+\b"


@functools.lru_cache(maxsize=65536)
def _stem(token: str) -> str:
    if not (token.isascii() and token.isalpha()):
        return token
    stemmer = getattr(_STEMMERS, "english", None)
    if stemmer is None:
        stemmer = _STEMMERS.english = snowballstemmer.stemmer("english")
    return str(stemmer.stemWord(token))


def words(text: str) -> str:
    """Normalized words (Persian/Arabic letters and digits unified, ZWNJ as a
    space, punctuation dropped), English words stemmed ("refunds" -> "refund")."""
    return " ".join(_stem(t) for t in strip_punctuation(normalize(text)).split())


def letters(text: str) -> str:
    """The text for character n-grams: ZWNJ dropped, so "می‌خواهم" and
    "میخواهم" share their n-grams (a space would cut the word in two)."""
    return strip_punctuation(normalize(text, zwnj="drop"))


# --- backends -------------------------------------------------------------------


@dataclass
class Prepared:
    """A knowledge base's example questions, analysed once: every calibration
    fold and the final model are fitted from it without analysing again."""

    texts: list[str]


class FittedModel(abc.ABC):
    @abc.abstractmethod
    def scores(self, texts: Sequence[str]) -> tuple[Matrix, Matrix]:
        """``(classifier, nearest)``, each of shape (len(texts), entries):
        a classifier score per entry (higher is better, any scale) and the
        cosine similarity to the entry's closest example question."""

    def scores_prepared(self, prepared: Prepared, rows: NDArray[np.int64]) -> tuple[Matrix, Matrix]:
        """:meth:`scores` of some of the prepared questions (held out of this model)."""
        return self.scores([prepared.texts[i] for i in rows])


class Backend(abc.ABC):
    """How questions become scores. Implementations: :class:`LexicalBackend`
    (n-grams, no model), ``bots.static.StaticBackend`` (the product's default:
    n-grams plus shipped static word vectors), ``bots.embedding.EmbeddingBackend``
    (a sentence embedding model, when installed)."""

    name: ClassVar[str]

    def prepare(self, texts: Sequence[str]) -> Prepared:
        """Whatever ``fit`` needs of the questions, computed once."""
        return Prepared(list(texts))

    @abc.abstractmethod
    def fit(
        self, prepared: Prepared, rows: NDArray[np.int64], labels: NDArray[np.int64], n_classes: int
    ) -> FittedModel:
        """Fit on the prepared questions ``rows`` of entries ``labels`` (0..n_classes-1)."""

    def fit_texts(self, texts: Sequence[str], labels: NDArray[np.int64], n_classes: int) -> FittedModel:
        return self.fit(self.prepare(texts), np.arange(len(texts), dtype=np.int64), labels, n_classes)

    def covers(self, text: str) -> bool:
        """Whether this backend can judge ``text`` (a model of English words
        cannot judge a Persian question); the others go to :meth:`fallback`."""
        return True

    def fallback(self) -> Backend | None:
        """The backend for the questions this one does not cover."""
        return None

    def fallback_part(self, prepared: Prepared, model: FittedModel) -> tuple[Prepared, FittedModel] | None:
        """The :meth:`fallback`'s own prepared questions and model, when this
        backend's contain them (fitted on the same rows, as the fallback would
        fit them itself): the matcher then builds and calibrates the fallback
        from the same fits instead of fitting everything twice. None: the
        fallback is built on its own."""
        return None


def max_per_class(sims: Matrix, labels: NDArray[np.int64], n_classes: int) -> Matrix:
    """Per row, the largest similarity among the examples of each class."""
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(n_classes))
    return np.asarray(np.maximum.reduceat(sims[:, order], starts, axis=1), dtype=np.float64)


@dataclass
class _Counts(Prepared):
    # Per block (words, characters): term counts (questions x terms) and the terms.
    counts: list[sparse.csr_matrix] = field(default_factory=list)
    vocab: list[dict[str, int]] = field(default_factory=list)


class _LexicalModel(FittedModel):
    def __init__(
        self,
        analyzers: list[Callable[[str], list[str]]],
        prepared: _Counts,
        rows: NDArray[np.int64],
        labels: NDArray[np.int64],
        n_classes: int,
        c: float,
    ) -> None:
        self.labels = labels
        self.n_classes = n_classes
        self._analyzers = analyzers
        self._prepared = prepared
        # Per block, as a TfidfVectorizer fitted on ``rows`` would have it:
        # the terms those questions use, smooth idf, sublinear tf, L2 norm.
        self._keep: list[NDArray[np.int64]] = []
        self._idf: list[NDArray[np.float64]] = []
        self._offsets: list[int] = []
        offset = 0
        for counts in prepared.counts:
            df = np.bincount(counts[rows].indices, minlength=counts.shape[1])
            keep = np.flatnonzero(df)
            self._keep.append(keep)
            self._idf.append(np.log((1.0 + len(rows)) / (1.0 + df[keep])) + 1.0)
            self._offsets.append(offset)
            offset += len(keep)
        self.n_features = offset
        examples = self._weigh(rows)
        self.n_examples = examples.shape[0]
        self._examples_t = sparse.csr_matrix(examples.T)
        self._vocab: list[dict[str, int]] | None = None
        # Scoring one question at a time is the hot path: scikit-learn's
        # transform and sparse products cost milliseconds of overhead per call,
        # so a question is scored against an inverted index (the examples'
        # columns) and the SVM's weights directly.
        postings = examples.tocsc()
        self._indptr = postings.indptr.astype(np.int64)
        self._rows = postings.indices
        self._weights = postings.data
        self._class_order = np.argsort(labels, kind="stable")
        self._class_starts = np.searchsorted(labels[self._class_order], np.arange(n_classes))
        self._coef_t: NDArray[np.float64] | None = None
        self._intercept = np.zeros(n_classes)
        if n_classes > 1 and examples.nnz:
            svm = LinearSVC(C=c, random_state=0).fit(examples, labels)
            coef = np.asarray(svm.coef_, dtype=np.float64)
            intercept = np.asarray(svm.intercept_, dtype=np.float64)
            if n_classes == 2:  # sklearn keeps one row for two classes
                coef = np.vstack([-coef[0], coef[0]])
                intercept = np.array([-intercept[0], intercept[0]])
            self._coef_t = np.ascontiguousarray(coef.T)
            self._intercept = intercept

    def _weigh(self, rows: NDArray[np.int64]) -> sparse.csr_matrix:
        """TF-IDF vectors of prepared questions, in this model's terms."""
        blocks = []
        for counts, keep, idf in zip(self._prepared.counts, self._keep, self._idf, strict=True):
            block = sparse.csr_matrix(counts[rows][:, keep], dtype=np.float64)
            block.data = 1.0 + np.log(block.data)
            block = sparse.csr_matrix(block.multiply(idf[np.newaxis, :]))
            norms = np.sqrt(np.asarray(block.multiply(block).sum(axis=1), dtype=np.float64).ravel())
            norms[norms == 0] = 1.0
            blocks.append(sparse.csr_matrix(sparse.diags(1.0 / norms) @ block))
        return sparse.csr_matrix(sparse.hstack(blocks, format="csr"))

    def _vocabulary(self) -> list[dict[str, int]]:
        if self._vocab is None:
            vocab = []
            for terms, counts, keep, offset in zip(
                self._prepared.vocab, self._prepared.counts, self._keep, self._offsets, strict=True
            ):
                local = np.full(counts.shape[1], -1, dtype=np.int64)
                local[keep] = np.arange(len(keep)) + offset
                vocab.append({t: int(local[g]) for t, g in terms.items() if local[g] >= 0})
            self._vocab = vocab
        return self._vocab

    def _vector(self, text: str) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The question's TF-IDF vector as (feature ids, weights), exactly as
        :meth:`_weigh` makes it for the examples."""
        ids: list[int] = []
        vals: list[float] = []
        for analyzer, vocab, idf, offset in zip(
            self._analyzers, self._vocabulary(), self._idf, self._offsets, strict=True
        ):
            counts: dict[int, int] = {}
            for term in analyzer(text):
                j = vocab.get(term)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            if not counts:
                continue
            block_ids = np.fromiter(counts, dtype=np.int64, count=len(counts))
            tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
            w = tf * idf[block_ids - offset]
            w /= np.linalg.norm(w)
            ids.extend(block_ids.tolist())
            vals.extend(w.tolist())
        return np.asarray(ids, dtype=np.int64), np.asarray(vals, dtype=np.float64)

    def _score_one(self, text: str) -> tuple[Matrix, Matrix]:
        ids, vals = self._vector(text)
        if len(ids):
            # The postings of every term of the question, gathered in one go.
            starts, ends = self._indptr[ids], self._indptr[ids + 1]
            lengths = ends - starts
            at = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
            contrib = self._weights[at] * np.repeat(vals, lengths)
            # Two L2-normalized blocks: the dot product is twice the mean cosine.
            sims = np.bincount(self._rows[at], weights=contrib, minlength=self.n_examples) / 2.0
        else:
            sims = np.zeros(self.n_examples)
        nearest = np.maximum.reduceat(sims[self._class_order], self._class_starts)
        if self._coef_t is None:
            return nearest, nearest
        decision = vals @ self._coef_t[ids] + self._intercept if len(ids) else self._intercept.copy()
        return decision, nearest

    def scores(self, texts: Sequence[str]) -> tuple[Matrix, Matrix]:
        if not texts:
            return np.zeros((0, self.n_classes)), np.zeros((0, self.n_classes))
        pairs = [self._score_one(t) for t in texts]
        return np.vstack([p[0] for p in pairs]), np.vstack([p[1] for p in pairs])

    def scores_prepared(self, prepared: Prepared, rows: NDArray[np.int64]) -> tuple[Matrix, Matrix]:
        if prepared is not self._prepared:
            return super().scores_prepared(prepared, rows)
        # Many questions at once (calibration): sparse products are fastest.
        queries = self._weigh(rows)
        sims = np.asarray((queries @ self._examples_t).toarray(), dtype=np.float64) / 2.0
        nearest = max_per_class(sims, self.labels, self.n_classes)
        if self._coef_t is None:
            return nearest, nearest
        return np.asarray(queries @ self._coef_t, dtype=np.float64) + self._intercept, nearest


class LexicalBackend(Backend):
    """Word and character n-gram TF-IDF, a linear SVM and nearest neighbours."""

    name: ClassVar[str] = "lexical"

    def __init__(self, c: float = 0.5) -> None:
        self.c = c
        self.analyzers: list[Callable[[str], list[str]]] = [
            TfidfVectorizer(preprocessor=words, ngram_range=(1, 2), token_pattern=_WORD).build_analyzer(),
            TfidfVectorizer(preprocessor=letters, analyzer="char_wb", ngram_range=(2, 5)).build_analyzer(),
        ]

    def prepare(self, texts: Sequence[str]) -> _Counts:
        prepared = _Counts(list(texts))
        for analyzer in self.analyzers:
            counter = CountVectorizer(analyzer=analyzer, dtype=np.float64)
            try:
                counts = counter.fit_transform(prepared.texts)
                vocab = {str(t): int(i) for t, i in counter.vocabulary_.items()}
            except ValueError:  # no terms at all (questions of punctuation only)
                counts, vocab = sparse.csr_matrix((len(prepared.texts), 0)), {}
            prepared.counts.append(sparse.csr_matrix(counts, dtype=np.float64))
            prepared.vocab.append(vocab)
        return prepared

    def fit(
        self, prepared: Prepared, rows: NDArray[np.int64], labels: NDArray[np.int64], n_classes: int
    ) -> FittedModel:
        if not isinstance(prepared, _Counts):
            prepared = self.prepare(prepared.texts)
        return _LexicalModel(self.analyzers, prepared, rows, labels, n_classes, self.c)


# --- calibration ------------------------------------------------------------------


def _features(cls_scores: Matrix, nearest: Matrix, column: NDArray[np.int64]) -> Matrix:
    """Per row, what the confidence that ``column`` is the right entry rests on."""
    rows = np.arange(cls_scores.shape[0])
    own = cls_scores[rows, column]
    others = cls_scores.copy()
    others[rows, column] = -np.inf
    best_other = others.max(axis=1) if cls_scores.shape[1] > 1 else np.zeros_like(own)
    return np.column_stack([own, own - best_other, nearest[rows, column], nearest.max(axis=1)])


# For knowledge bases too small to calibrate on themselves (fewer than three
# entries, or too few held-out questions: see MIN_CALIBRATION_OUTCOMES) and for
# a learnt mapping that is not _coherent: a fixed mapping of the same features
# per backend, whose scores have scales of their own (the static backend's
# nearest example is 0.7 for a question on nothing the KB knows, where the
# n-grams' is 0.2). Fitted by tools/fit_fallback_calibration.py on one- and
# two-entry knowledge bases drawn from CLINC150's train split, asked its val
# questions; a backend without its own uses the general one.
_FALLBACK_WEIGHTS = np.array([2.0, 2.5, 6.0, 0.0])
_FALLBACK_BIAS = -3.5
FALLBACK_CALIBRATION: dict[str, tuple[tuple[float, float, float, float], float]] = {
    "lexical": ((0.915, 2.838, 2.215, 5.286), -4.574),
    "static": ((0.309, 1.731, 10.304, 10.372), -18.870),
}


@dataclass
class Calibrator:
    weights: NDArray[np.float64] = field(default_factory=lambda: _FALLBACK_WEIGHTS.copy())
    bias: float = _FALLBACK_BIAS
    learnt: bool = False

    @classmethod
    def fallback_for(cls, backend: Backend | None) -> Calibrator:
        """The fixed mapping for ``backend``'s scores (see FALLBACK_CALIBRATION)."""
        fitted = FALLBACK_CALIBRATION.get(backend.name) if backend is not None else None
        if fitted is None:
            return cls()
        return cls(np.array(fitted[0], dtype=np.float64), fitted[1])

    def __call__(self, feats: Matrix) -> NDArray[np.float64]:
        z = feats @ self.weights + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))), dtype=np.float64)


def self_calibrate(
    backend: Backend,
    prepared: Prepared,
    labels: NDArray[np.int64],
    n_classes: int,
    *,
    seed: int = 7,
    covered: NDArray[np.bool_] | None = None,
) -> Calibrator:
    """Learn the confidence from the knowledge base alone (see the module doc),
    from the held-out questions the backend ``covered`` (all by default): the
    others are its fallback's to judge."""
    judged = np.ones(len(labels), dtype=bool) if covered is None else covered
    view = (_whole(prepared), judged, Calibrator.fallback_for(backend))
    (calibrator,) = _calibrate(backend, prepared, labels, n_classes, [view], seed)
    return calibrator


#: Of a fitted model, the part a calibrator is for, with the prepared questions it scores.
_Part = Callable[[FittedModel], tuple[Prepared, FittedModel]]
#: What a calibrator is learnt for: the part of the fold models that scores, the
#: held-out questions it judges, and the mapping to use if it cannot be learnt.
_View = tuple[_Part, NDArray[np.bool_], "Calibrator"]


def _whole(prepared: Prepared) -> _Part:
    return lambda model: (prepared, model)


def _calibrate(
    backend: Backend,
    prepared: Prepared,
    labels: NDArray[np.int64],
    n_classes: int,
    views: Sequence[_View],
    seed: int,
) -> list[Calibrator]:
    """One calibrator per view ``(part, judged, fallback)``: each learnt from
    the held-out questions it judges, scored by its part of the same fold
    models. Each comes out exactly as if calibrated on its own; the folds are
    fitted once for all."""
    if n_classes < 3:
        return [fallback for _, _, fallback in views]
    everything = np.arange(len(labels), dtype=np.int64)
    feats: list[list[Matrix]] = [[] for _ in views]
    target: list[list[NDArray[np.float64]]] = [[] for _ in views]

    def score(model: FittedModel, held: NDArray[np.bool_], right: NDArray[np.int64] | None) -> None:
        """Each view's features of the ``held`` questions it judges;
        ``right``: their entries (in scope), None (out of scope)."""
        for v, (part, judged, _) in enumerate(views):
            scored = held & judged
            if not scored.any():
                continue
            view_prepared, view_model = part(model)
            s, n = view_model.scores_prepared(view_prepared, everything[scored])
            top = s.argmax(axis=1)
            feats[v].append(_features(s, n, top))
            target[v].append(np.zeros(len(s)) if right is None else (top == right[scored]).astype(np.float64))

    def judged_any(held: NDArray[np.bool_]) -> bool:
        return any((held & judged).any() for _, judged, _ in views)

    rng = np.random.default_rng(seed)
    classes = rng.permutation(n_classes)
    # Out of scope: whole entries left out, a fifth at a time.
    groups = min(5, n_classes)
    for g in range(groups):
        out = np.isin(labels, classes[g::groups])
        kept = np.unique(labels[~out])
        if len(kept) < 2 or not out.any() or not judged_any(out):
            continue
        remap = -np.ones(n_classes, dtype=np.int64)
        remap[kept] = np.arange(len(kept))
        score(backend.fit(prepared, everything[~out], remap[labels[~out]], len(kept)), out, None)
    # In scope: the k-th question of each entry (that has more) held out.
    position = np.zeros(len(labels), dtype=np.int64)
    counts = np.bincount(labels, minlength=n_classes)
    seen = np.zeros(n_classes, dtype=np.int64)
    for i, lab in enumerate(labels):
        position[i] = seen[lab]
        seen[lab] += 1
    for k in range(3):
        held = (position == k) & (counts[labels] > k + 1)
        if not held.any():
            break
        if judged_any(held):
            score(backend.fit(prepared, everything[~held], labels[~held], n_classes), held, labels)
    return [_learnt(f, t, view[2]) for f, t, view in zip(feats, target, views, strict=True)]


# Fewer held-out questions than this whose top entry was right (or wrong), and
# the knowledge base keeps the fixed mapping: three entries of two questions
# give three in-scope questions, from which a regression learnt a falling
# slope (a question copied from an entry got 0.50, the runners-up 0.69).
MIN_CALIBRATION_OUTCOMES = 10


def _coherent(weights: NDArray[np.float64]) -> bool:
    """Whether a learnt mapping rises with the entry's own score (which moves
    the margin too). One that falls was learnt from noise, and puts runners-up
    above the top entry. The weights one by one may have either sign: the
    score and the margin, or the two nearest examples, move together, and a
    well-fitted regression on hundreds of questions splits them as it likes."""
    return float(weights[0]) + float(weights[1]) > 0.0


def _learnt(feats: list[Matrix], target: list[NDArray[np.float64]], fallback: Calibrator) -> Calibrator:
    if not feats:
        return fallback
    x = np.vstack(feats)
    y = np.concatenate(target)
    right = int(y.sum())
    if min(right, len(y) - right) < MIN_CALIBRATION_OUTCOMES:
        return fallback
    # Balanced: the share of left-out questions depends on the KB's size, and
    # must not move the scale (0.5 means as likely right as not, on any KB).
    model = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced").fit(x, y)
    weights = np.asarray(model.coef_[0], dtype=np.float64)
    if not _coherent(weights):
        return fallback
    return Calibrator(weights, float(model.intercept_[0]), learnt=True)


# --- the matcher ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    entry_id: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Match:
    """What the bot would do with a question."""

    action: Action
    entry_id: str | None
    confidence: float
    candidates: tuple[Candidate, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "entry_id": self.entry_id,
            "confidence": round(self.confidence, 4),
            "candidates": [{"entry_id": c.entry_id, "confidence": round(c.confidence, 4)} for c in self.candidates],
        }


@dataclass(frozen=True, slots=True)
class Thresholds:
    answer: float = 0.5
    clarify: float = 0.2
    choices: int = 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.clarify <= self.answer <= 1.0:
            raise ValueError("thresholds must satisfy 0 <= clarify <= answer <= 1")


class Matcher:
    """Matches questions against a knowledge base; immutable once built."""

    def __init__(self, entries: Sequence[KbEntry], backend: Backend | None = None, *, calibrate: bool = True) -> None:
        self.backend = backend or LexicalBackend()
        # In a fixed order, so a KB file checked with `crm-hub bot eval` scores
        # exactly as the same entries stored (and loaded in another order) do.
        self.entries = sorted(entries, key=lambda e: e.id)
        self.by_id = {e.id: e for e in self.entries}
        texts: list[str] = []
        labels: list[int] = []
        for i, entry in enumerate(self.entries):
            for q in entry.questions:
                texts.append(q)
                labels.append(i)
        self.n_questions = len(texts)
        self.model: FittedModel | None = None
        self.calibrator = Calibrator.fallback_for(self.backend)
        # Questions the backend does not cover are matched, and calibrated,
        # by its fallback alone: judged by half a model, a Persian question
        # that is word for word an example scored as unsure (0.46).
        other = self.backend.fallback()
        self.fallback: Matcher | None = None
        if not self.entries:
            return
        y = np.asarray(labels, dtype=np.int64)
        prepared = self.backend.prepare(texts)
        self.model = self.backend.fit(prepared, np.arange(len(texts), dtype=np.int64), y, len(self.entries))
        backend_ = self.backend
        shared = None if other is None else backend_.fallback_part(prepared, self.model)
        if other is not None and shared is None:
            self.fallback = Matcher(entries, other, calibrate=calibrate)
        views: list[_View] = [
            (
                _whole(prepared),
                np.array([backend_.covers(t) for t in texts], dtype=bool),
                Calibrator.fallback_for(backend_),
            )
        ]
        if other is not None and shared is not None:

            def part(model: FittedModel) -> tuple[Prepared, FittedModel]:
                found = backend_.fallback_part(prepared, model)
                assert found is not None
                return found

            views.append((part, np.array([other.covers(t) for t in texts], dtype=bool), Calibrator.fallback_for(other)))
        calibrators = (
            _calibrate(backend_, prepared, y, len(self.entries), views, seed=7)
            if calibrate
            else [fallback for _, _, fallback in views]
        )
        self.calibrator = calibrators[0]
        if other is not None and shared is not None:
            self.fallback = Matcher._built(self.entries, other, shared[1], calibrators[1], self.n_questions)

    @classmethod
    def _built(
        cls, entries: list[KbEntry], backend: Backend, model: FittedModel, calibrator: Calibrator, n_questions: int
    ) -> Matcher:
        """A matcher from a model and calibrator already made (a fallback's,
        see :meth:`Backend.fallback_part`); ``entries`` already in order."""
        built = cls([], backend)
        built.entries = entries
        built.by_id = {e.id: e for e in entries}
        built.n_questions = n_questions
        built.model = model
        built.calibrator = calibrator
        return built

    def _split(self, texts: Sequence[str]) -> tuple[list[int], list[int]]:
        """Indices of the questions for this backend and for the fallback."""
        if self.fallback is None:
            return list(range(len(texts))), []
        mine: list[int] = []
        other: list[int] = []
        for i, text in enumerate(texts):
            (mine if self.backend.covers(text) else other).append(i)
        return mine, other

    def confidences(self, texts: Sequence[str]) -> Matrix:
        """The calibrated confidence of every entry for every question."""
        if self.model is None:
            return np.zeros((len(texts), 0))
        mine, other = self._split(texts)
        if other and self.fallback is not None:
            out = np.empty((len(texts), len(self.entries)))
            out[other] = self.fallback.confidences([texts[i] for i in other])
            if mine:
                out[mine] = self._confidences([texts[i] for i in mine])
            return out
        return self._confidences(texts)

    def _confidences(self, texts: Sequence[str]) -> Matrix:
        assert self.model is not None
        s, n = self.model.scores(texts)
        out = np.empty_like(s)
        for col in range(s.shape[1]):
            out[:, col] = self.calibrator(_features(s, n, np.full(s.shape[0], col, dtype=np.int64)))
        # As :meth:`_rank` gives them: never above an entry ranked higher.
        order = np.argsort(-s, axis=1)
        rows = np.arange(s.shape[0])[:, np.newaxis]
        out[rows, order] = np.minimum.accumulate(out[rows, order], axis=1)
        return out

    def rank(self, texts: Sequence[str], k: int = 3) -> list[list[Candidate]]:
        """The ``k`` best entries per question, with the top one's confidence
        calibrated against all others and the rest by the same formula."""
        if self.model is None or not texts:
            return [[] for _ in texts]
        mine, other = self._split(texts)
        if other and self.fallback is not None:
            out: list[list[Candidate]] = [[] for _ in texts]
            for i, cands in zip(other, self.fallback.rank([texts[i] for i in other], k), strict=True):
                out[i] = cands
            if mine:
                for i, cands in zip(mine, self._rank([texts[i] for i in mine], k), strict=True):
                    out[i] = cands
            return out
        return self._rank(texts, k)

    def _rank(self, texts: Sequence[str], k: int) -> list[list[Candidate]]:
        assert self.model is not None
        s, n = self.model.scores(texts)
        k = min(k, s.shape[1])
        if k < 1:
            return [[] for _ in texts]
        order = np.argsort(-s, axis=1)[:, :k]
        out: list[list[Candidate]] = []
        conf = np.column_stack([self.calibrator(_features(s, n, order[:, j])) for j in range(k)])
        # No runner-up above an entry ranked before it: the buttons would
        # contradict the order, and a runner-up can come out higher when its
        # nearest example is closer than the top entry's.
        conf = np.minimum.accumulate(conf, axis=1)
        for r in range(len(texts)):
            out.append([Candidate(self.entries[order[r, j]].id, float(conf[r, j])) for j in range(k)])
        return out

    def match(self, text: str, thresholds: Thresholds | None = None) -> Match:
        return self.match_many([text], thresholds)[0]

    def match_many(self, texts: Sequence[str], thresholds: Thresholds | None = None) -> list[Match]:
        th = thresholds or Thresholds()
        results = []
        for cands in self.rank(texts, max(th.choices, 1)):
            if not cands:
                results.append(Match("handoff", None, 0.0, ()))
                continue
            top = cands[0]
            conf = top.confidence if math.isfinite(top.confidence) else 0.0
            action: Action = "answer" if conf >= th.answer else "clarify" if conf >= th.clarify else "handoff"
            results.append(Match(action, top.entry_id, conf, tuple(cands)))
        return results
