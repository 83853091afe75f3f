"""Fit the fixed confidence mapping used for knowledge bases too small to
calibrate on themselves (one or two entries, or no entry with two questions):
``bots.matcher.FALLBACK_CALIBRATION``, one per backend.

Run by a maintainer when a backend's scores change, not at install time:

    .venv/bin/python tools/fit_fallback_calibration.py [--backend static lexical] [--kbs 300]

It draws small knowledge bases from CLINC150's ``train`` split (one or two
intents, 2 to 10 example questions each, as a shop's first FAQ has) and asks
them ``val`` questions only (``test`` stays for the benchmark): the drawn
intents' own questions are in scope, questions of every other intent and
``oos_val`` are out of scope, which is what a customer's off-topic question is
to a two-entry FAQ. A logistic regression with balanced classes over the
matcher's four features, as the self-calibration fits, learns the mapping.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bots.kb import KbEntry  # noqa: E402
from bots.matcher import Calibrator, Matcher, _features  # noqa: E402
from hub.bot_step import make_backend  # noqa: E402
from hub.config import BotConfig  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "clinc150" / "data_full.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", nargs="+", default=["static", "lexical"])
    ap.add_argument("--kbs", type=int, default=300, help="knowledge bases drawn per backend")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    data = json.loads(DATA.read_text())
    train: dict[str, list[str]] = {}
    for text, intent in data["train"]:
        train.setdefault(intent, []).append(text)
    val: dict[str, list[str]] = {}
    for text, intent in data["val"]:
        val.setdefault(intent, []).append(text)
    oos = [text for text, _ in data["oos_val"]]
    intents = sorted(train)
    for name in args.backend:
        backend = make_backend(BotConfig(backend=name))
        rng = np.random.default_rng(args.seed)
        feats: list[np.ndarray] = []
        target: list[np.ndarray] = []
        for _ in range(args.kbs):
            size = int(rng.integers(1, 3))
            chosen = [intents[i] for i in rng.choice(len(intents), size, replace=False)]
            per = int(rng.integers(2, 11))
            entries = [KbEntry(id=i, questions=tuple(train[i][:per]), answer=i) for i in chosen]
            matcher = Matcher(entries, backend, calibrate=False)
            others = [i for i in intents if i not in chosen]
            inside = [(q, i) for i in chosen for q in val[i][:10]]
            outside = [val[i][int(rng.integers(0, len(val[i])))] for i in rng.choice(others, 10, replace=False)]
            outside += [oos[i] for i in rng.choice(len(oos), 10, replace=False)]
            questions = [q for q, _ in inside] + outside
            gold = [i for _, i in inside] + [None] * len(outside)
            covered = [k for k, q in enumerate(questions) if backend.covers(q)]
            assert matcher.model is not None
            s, n = matcher.model.scores([questions[k] for k in covered])
            top = s.argmax(axis=1)
            feats.append(_features(s, n, top))
            order = [e.id for e in matcher.entries]
            target.append(np.array([float(gold[k] == order[t]) for k, t in zip(covered, top, strict=True)]))
        x, y = np.vstack(feats), np.concatenate(target)
        model = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced").fit(x, y)
        fitted = Calibrator(np.asarray(model.coef_[0]), float(model.intercept_[0]))
        weights = np.round(model.coef_[0], 3).tolist()
        print(f"{name}: weights {weights}, bias {model.intercept_[0]:.3f}; {len(y)} questions")
        mappings = (("fitted", fitted), ("in use", Calibrator.fallback_for(backend)), ("general", Calibrator()))
        for label, cal in mappings:
            p = cal(x)
            right, wrong = y == 1, y == 0
            print(
                f"  {label}: at 0.5, {np.mean(p[right] >= 0.5):.1%} of right top entries answered and "
                f"{np.mean(p[wrong] >= 0.5):.1%} of wrong ones; {np.mean(p[wrong] < 0.2):.1%} of wrong ones below 0.2"
            )


if __name__ == "__main__":
    main()
