"""Does one threshold mean the same on a small and a large knowledge base?

The matcher calibrates its confidence on the knowledge base itself, so that
``bot.answer_threshold`` and ``bot.clarify_threshold`` need no tuning per
knowledge base. This checks that claim on CLINC150: knowledge bases of 5 to
150 intents drawn at random, with 5, 10 or 50 example questions each, asked
the ``val`` questions of their intents plus ``oos_val`` (never ``test``), and
what fixed thresholds do to each.

    .venv/bin/python bench/faq_kb_sizes.py [--answer 0.5 --clarify 0.2]

For each knowledge base it prints, at the given thresholds: answered
correctly, answered wrongly, precision of the answers (right / answered),
in-scope questions handed off, out-of-scope questions handed off and
answered; and, for comparison, the thresholds that a target of 85%
out-of-scope recall and 8% wrong answers would need on that knowledge base.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.faq_clinc150 import DATA, knowledge_base, outcome  # noqa: E402
from bots.matcher import Matcher  # noqa: E402
from hub.bot_step import make_backend  # noqa: E402
from hub.config import BotConfig  # noqa: E402


def needed(conf: np.ndarray, inscope: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    """(clarify for 85% OOS recall, lowest answer with <= 8% wrong) on these questions."""
    oos = np.sort(conf[~inscope])
    clarify = float(oos[int(0.85 * len(oos))])
    for a in np.sort(conf):
        if ((conf >= a) & inscope & ~right).sum() / inscope.sum() <= 0.08:
            return clarify, float(a)
    return clarify, 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--answer", type=float, default=0.5)
    ap.add_argument("--clarify", type=float, default=0.2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 40, 80, 150])
    ap.add_argument("--per-intent", type=int, nargs="+", default=[5, 10, 50])
    ap.add_argument("--draws", type=int, default=3, help="random knowledge bases per size")
    ap.add_argument("--backend", choices=["static", "lexical"], default=BotConfig().backend)
    args = ap.parse_args()
    backend = make_backend(BotConfig(backend=args.backend))
    data = json.loads((DATA / "data_full.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng(1)
    print(f"thresholds: answer >= {args.answer}, clarify >= {args.clarify}; figures on val + oos_val")
    print(
        "examples  entries | correct  wrong  precision  false-handoff | OOS handed off  OOS answered "
        "| needed: clarify@85%  answer@8%"
    )
    for per_intent in args.per_intent:
        every = knowledge_base(data["train"], per_intent)
        for size in args.sizes:
            rows = []
            for _ in range(args.draws if size < len(every) else 1):
                kb = [every[i] for i in rng.choice(len(every), size, replace=False)]
                ids = {e.id for e in kb}
                matcher = Matcher(kb, backend)
                questions = [(t, g) for t, g in data["val"] if g in ids] + data["oos_val"]
                ranked = matcher.rank([t for t, _ in questions], 1)
                conf = np.array([r[0].confidence for r in ranked])
                top = [r[0].entry_id for r in ranked]
                gold = [g for _, g in questions]
                f = outcome(conf, top, gold, args.answer, args.clarify)
                inscope = np.array([g != "oos" for g in gold])
                right = np.array([t == g for t, g in zip(top, gold, strict=True)])
                answered = f["correct"] + f["wrong"]
                rows.append(
                    [
                        f["correct"],
                        f["wrong"],
                        f["correct"] / answered if answered else 1.0,
                        f["false_handoff"],
                        f["oos_recall"],
                        f["oos_answered"],
                        *needed(conf, inscope, right),
                    ]
                )
            m = np.mean(rows, axis=0)
            print(
                f"{per_intent:8d}  {size:7d} | {m[0]:7.1%} {m[1]:6.1%} {m[2]:10.1%} {m[3]:14.1%} | "
                f"{m[4]:14.1%} {m[5]:13.1%} | {m[6]:19.2f} {m[7]:10.2f}"
            )


if __name__ == "__main__":
    main()
