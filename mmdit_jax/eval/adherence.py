"""Prompt adherence of generated ``shapes`` images: does the classifier read back what the prompt asked for?

For each image only the attributes its prompt mentions are scored ("red circle" is scored on colour and
shape). ``all`` = every mentioned attribute right at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mmdit_jax.eval.attributes import ATTRIBUTES, parse_caption
from mmdit_jax.eval.classifier import ShapesClassifier


def prompt_adherence(classifier: ShapesClassifier, images: np.ndarray, prompts: Sequence[str]) -> dict[str, float]:
    """``{attribute: accuracy over images whose prompt mentions it, 'all': all mentioned right}``."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    pred = classifier.predict(images)
    wanted = [parse_caption(p) for p in prompts]
    out = {}
    for a in ATTRIBUTES:
        hits = [pred[a][i] == w[a] for i, w in enumerate(wanted) if a in w]
        if hits:
            out[a] = float(np.mean(hits))
    out["all"] = float(np.mean([all(pred[a][i] == v for a, v in w.items()) for i, w in enumerate(wanted)]))
    return out
