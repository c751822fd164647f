"""Steering what the prompt leaves open: ŷ = y(p) + w (y(p+) - y(p-)) where p never names the steered attribute.

The named-attribute setting (``experiment.py``) pushes "a red circle" towards blue, against its own text tokens.
Here the prompt template leaves the attribute free (template 1 "a {c} {s}" has no size, template 2 "a {z} {c}
{s}" no position), so the base model draws it, and steering should set it while keeping what the prompt pins.
Each scene gets its own pair: p+ and p- are the scene's description with the attribute set to the target and to
the opposite value (``contrast``) and nothing else changed, so y(p+) - y(p-) is that attribute's direction in the
scene's own context (the study's "+ long hair" on a person whose hair the prompt never describes).

Scores per w, over scenes and sampling seeds, classifier read-outs of the steered images:
- ``target rate``: the attribute reads the target value (at w = 0 this is the base model's own rate);
- ``flipped``: among scenes whose original does not read the target, the share that now does;
- ``kept``: the attributes the prompt names read as in the original (what steering must not touch);
- ``deviation``: distance to the original generation.
The baseline writes the attribute into the prompt (``edit_template``, the same scene with the attribute named).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np

from mmdit_jax.data.captions import ALL_TEMPLATES
from mmdit_jax.eval.attributes import ATTRIBUTES, parse_caption
from mmdit_jax.study import figures, report, stages
from mmdit_jax.study.scenes import prompts, scenes

FIELD = {"shape": "{s}", "colour": "{c}", "size": "{z}", "position": "{p}"}


def check_setting(entry: Any) -> tuple[str, str, str, int, int]:
    """``(attribute, target, contrast, template, edit_template)`` of one ``steering.unspecified`` entry, checked."""
    if len(entry) != 5:
        raise ValueError(f"steering.unspecified entries are (attribute, target, contrast, template, edit_template), "
                         f"got {entry!r}")
    attribute, target, contrast, template, edit_template = entry
    if attribute not in ATTRIBUTES:
        raise ValueError(f"steering.unspecified attribute {attribute!r}: valid {sorted(ATTRIBUTES)}")
    for name, value in (("target", target), ("contrast", contrast)):
        if value not in ATTRIBUTES[attribute]:
            raise ValueError(f"steering.unspecified {name} {value!r} is not a {attribute}: valid {ATTRIBUTES[attribute]}")
    if FIELD[attribute] in ALL_TEMPLATES[template]:
        raise ValueError(f"steering.unspecified template {template} (`{ALL_TEMPLATES[template]}`) names the {attribute}: "
                         "choose a template that leaves it free")
    if FIELD[attribute] not in ALL_TEMPLATES[edit_template]:
        raise ValueError(f"steering.unspecified edit_template {edit_template} (`{ALL_TEMPLATES[edit_template]}`) does "
                         f"not name the {attribute}")
    return attribute, target, contrast, int(template), int(edit_template)


def _scores(classifier, deviation, original: np.ndarray, images: np.ndarray, attribute: str, target: int,
            named: list[str]) -> dict[str, float]:
    pred, pred0 = classifier.predict(images), classifier.predict(original)
    hit = pred[attribute] == target
    away = pred0[attribute] != target
    return {"target_rate": float(hit.mean()),
            "flipped": float(hit[away].mean()) if away.any() else float("nan"),
            "kept": float(np.mean([np.mean(pred[a] == pred0[a]) for a in named])),
            "deviation": float(deviation(original, images).mean())}


def run_setting(cfg: Any, gen: Callable, classifier, deviation, index: int, entry: Any, outdir: str) -> dict:
    """Every w for one (attribute, target) on scenes whose prompt leaves the attribute free."""
    attribute, target, contrast, template, edit_template = check_setting(entry)
    s = cfg.steering
    objs = scenes(s.num_scenes, s.scene_seed + 100 + index)
    texts = prompts(objs, template)
    named = [a for a in parse_caption(texts[0]) if a != attribute]
    set_to = lambda value: [dataclasses.replace(o, **{attribute: value}) for o in objs]  # noqa: E731
    plus, minus = prompts(set_to(target), edit_template), prompts(set_to(contrast), edit_template)
    target_id = ATTRIBUTES[attribute].index(target)
    per_w: dict[float, list] = {w: [] for w in s.weights}
    edit, zero_diff, grid = [], 0, None
    for seed in s.seeds:
        original = gen(texts, seed)
        steered = {w: gen(texts, seed, steering=(plus, minus, w)) for w in s.weights}
        for w in s.weights:
            per_w[w].append(_scores(classifier, deviation, original, steered[w], attribute, target_id, named))
        zero_diff = max(zero_diff, int(np.abs(steered[0.0].astype(int) - original).max()))
        edited = gen(prompts(set_to(target), edit_template), seed)
        edit.append(_scores(classifier, deviation, original, edited, attribute, target_id, named))
        if grid is None:
            n = s.grid_scenes
            grid = {"original": original[:n], **{f"w = {w:g}": steered[w][:n] for w in s.weights if w > 0},
                    "prompt edit": edited[:n]}
    figures.panel_grid(grid, os.path.join(outdir, f"free_{attribute}_{target.replace(' ', '_')}.png"),
                       texts[:s.grid_scenes])
    agg = lambda rows: {k: stages.mean_std([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    return {"attribute": attribute, "target": target, "contrast": contrast, "template": template,
            "edit_template": edit_template, "named": named, "example": [texts[0], plus[0], minus[0]],
            "weights": {f"{w:g}": agg(per_w[w]) for w in s.weights}, "prompt_edit": agg(edit),
            "max_abs_diff_w0_vs_original": zero_diff}


def markdown(results: list[dict]) -> str:
    parts = []
    for r in results:
        text, plus, minus = r["example"]
        rows = [f"| w = {w} | {report.fmt(v['target_rate'])} | {report.fmt(v['flipped'])} | {report.fmt(v['kept'])} "
                f"| {report.fmt(v['deviation'], 4)} |" for w, v in r["weights"].items()]
        e = r["prompt_edit"]
        rows.append(f"| prompt edit | {report.fmt(e['target_rate'])} | {report.fmt(e['flipped'])} | "
                    f"{report.fmt(e['kept'])} | {report.fmt(e['deviation'], 4)} |")
        name = f"free_{r['attribute']}_{r['target'].replace(' ', '_')}.png"
        parts.append(
            f"### {r['attribute']} → {r['target']}, left free by template {r['template']} "
            f"(`{ALL_TEMPLATES[r['template']]}`)\n\nExample: p = \"{text}\", p+ = \"{plus}\", p− = \"{minus}\"; kept = "
            f"{', '.join(r['named'])} as in the original; w = 0 vs the unsteered sample: max |Δ| = "
            f"{r['max_abs_diff_w0_vs_original']} (uint8).\n\n| | target rate | flipped (originals not at target) | kept "
            f"| deviation |\n|---|---|---|---|---|\n" + "\n".join(rows) + f"\n\n![{name}]({name})\n")
    return "\n".join(parts)
