"""Pooled-embedding steering at toy scale: ŷ(p, p+, p-, t) = y(p, t) + w (y(p+, t) - y(p-, t)).

    python -m experiments.pooled_steering.run --config=configs/pooled_study.py --workdir=runs/pooled_study \
        --outdir=experiments/pooled_steering

For each attribute pair (e.g. p+ = "a blue circle", p- = "a red circle" on red objects) and each w, from the
same noise as the original generation: flip rate (the classifier reads the target value), preservation (the
other three attributes read the same as in the original) and deviation from the original. The baseline edits
the prompt text instead (same noise). Mean ± std over sampling seeds.
"""

from __future__ import annotations

import os
import time

import numpy as np

from experiments.pooled_steering import unspecified
from mmdit_jax import reporting
from mmdit_jax.data.captions import TEMPLATES
from mmdit_jax.eval.attributes import ATTRIBUTES
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.study import figures, report, stages
from mmdit_jax.study.scenes import edited, prompts, scenes

TEMPLATE_FIELD = {"shape": "{s}", "colour": "{c}", "size": "{z}", "position": "{p}"}


def _scores(classifier, deviation, original, images, attribute: str, target: int) -> dict[str, float]:
    pred, pred0 = classifier.predict(images), classifier.predict(original)
    others = [a for a in ATTRIBUTES if a != attribute]
    return {"flip": float(np.mean(pred[attribute] == target)),
            "preserved": float(np.mean([np.mean(pred[a] == pred0[a]) for a in others])),
            "deviation": float(deviation(original, images).mean())}


def run_pair(cfg, gen, classifier, deviation, index: int, pair, outdir: str) -> dict:
    attribute, source, target, positive, negative = pair
    s = cfg.steering
    objs = scenes(s.num_scenes, s.scene_seed + index, **{attribute: source})
    target_id = ATTRIBUTES[attribute].index(target)
    out = {}
    for t in s.templates:
        texts = prompts(objs, t)
        editable = TEMPLATE_FIELD[attribute] in TEMPLATES[t]
        per_w = {w: [] for w in s.weights}
        edit, zero_weight_diff, grid = [], 0, None
        for seed in s.seeds:
            original = gen(texts, seed)
            steered = {}
            for w in s.weights:
                steered[w] = gen(texts, seed, steering=([positive] * len(texts), [negative] * len(texts), w))
                per_w[w].append(_scores(classifier, deviation, original, steered[w], attribute, target_id))
            zero_weight_diff = max(zero_weight_diff, int(np.abs(steered[0.0].astype(int) - original).max())
                                   if 0.0 in steered else 0)
            if editable:
                edited_images = gen(prompts(edited(objs, attribute, target), t), seed)
                edit.append(_scores(classifier, deviation, original, edited_images, attribute, target_id))
            if grid is None:
                n = s.grid_scenes
                grid = {"original": original[:n], **{f"w = {w:g}": steered[w][:n] for w in s.weights if w > 0}}
                if editable:
                    grid["prompt edit"] = edited_images[:n]
        figures.panel_grid(grid, os.path.join(outdir, f"steer_{attribute}_t{t}.png"), prompts(objs[:s.grid_scenes], 1))
        agg = lambda rows: {k: stages.mean_std([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
        out[f"template_{t}"] = {"weights": {f"{w:g}": agg(per_w[w]) for w in s.weights},
                                "prompt_edit": agg(edit) if edit else None,
                                "max_abs_diff_w0_vs_original": zero_weight_diff}
    return out


def markdown(cfg, results: dict, seconds: float) -> str:
    s = cfg.steering
    parts = ["## Steering a named attribute (the contrast: the prompt's own tokens disagree)\n"]
    for (attribute, source, target, positive, negative), res in zip(s.pairs, results["pairs"]):
        parts.append(f"### {attribute}: {source} → {target}   (p+ = \"{positive}\", p− = \"{negative}\")\n")
        for t in s.templates:
            r = res[f"template_{t}"]
            rows = [f"| w = {w} | {report.fmt(v['flip'])} | {report.fmt(v['preserved'])} | {report.fmt(v['deviation'], 4)} |"
                    for w, v in r["weights"].items()]
            e = r["prompt_edit"]
            rows.append(f"| prompt edit | {report.fmt(e['flip'])} | {report.fmt(e['preserved'])} | "
                        f"{report.fmt(e['deviation'], 4)} |" if e else "| prompt edit | n/a (template does not "
                        "mention it) | | |")
            parts.append(f"Template {t} (`{TEMPLATES[t]}`); w = 0 vs the unsteered sample: max |Δ| = "
                         f"{r['max_abs_diff_w0_vs_original']} (uint8).\n\n| | flip rate | preserved (other 3) | "
                         f"deviation |\n|---|---|---|---|\n" + "\n".join(rows) +
                         f"\n\n![{attribute} t{t}](steer_{attribute}_t{t}.png)\n")
    return f"""Command (shares the cached stages with experiments/clip_removal):

    python -m experiments.pooled_steering.run --config=configs/pooled_study.py --workdir=runs/pooled_study --outdir=experiments/pooled_steering

Machine: {reporting.machine()}. Wall time: {seconds / 60:.1f} min (cached stages excluded). Model: the study's
y = e_t + h_y MMDiT (configs/default.py + frozen toy CLIP); sampler {cfg.mmdit.sample.sampler.name}
{cfg.mmdit.sample.sampler.n_steps} steps, CFG {cfg.mmdit.sample.guidance_scale}, steering applied at every model
call (both CFG branches). {s.num_scenes} scenes per pair with the source attribute, sampling seeds
{list(s.seeds)}: mean ± std over seeds. Flip rate = the classifier reads the target value; preserved = the other
three attributes read as in the original generation; deviation = classifier-feature distance to the original
(the offline stand-in for DreamSim). The w = 0 row is the original itself (0 flips unless the original already
has the target value).

## Steering what the prompt leaves free

{unspecified.__doc__.split(chr(10) + chr(10), 1)[1].strip()}

![target rate](free_target_vs_w.png)

{unspecified.markdown(results["unspecified"])}

![flip rate](flip_vs_w.png)
![deviation](deviation_vs_w.png)

{chr(10).join(parts)}"""


def run(cfg, workdir: str, outdir: str) -> dict:
    """Every pair, template and weight; writes results.json, figures and RESULTS.md into ``outdir``."""
    os.makedirs(outdir, exist_ok=True)
    start = time.time()
    ev = stages.evaluators(cfg, workdir)
    toy, classifier, accuracy, deviation = ev.toy_clip, ev.classifier, ev.classifier_accuracy, ev.deviation
    gen = SamplingPipeline.from_workdir(*stages.mmdit(cfg, workdir, toy["paths"], True))
    weights = [float(w) for w in cfg.steering.weights]
    if 0.0 not in weights:
        raise ValueError("steering.weights must include 0.0 (the original generation)")
    pairs = [run_pair(cfg, gen, classifier, deviation, i, p, outdir) for i, p in enumerate(cfg.steering.pairs)]
    free = [unspecified.run_setting(cfg, gen, classifier, deviation, i, e, outdir)
            for i, e in enumerate(cfg.steering.unspecified)]
    results = {"pairs": pairs, "unspecified": free, "classifier_accuracy": accuracy}
    figures.line_plot(weights, {f"{r['attribute']} → {r['target']} (t{r['template']})": tuple(
        zip(*[v["target_rate"] for v in r["weights"].values()])) for r in free}, "steering weight w",
        "target rate (attribute left free by the prompt)", os.path.join(outdir, "free_target_vs_w.png"))
    for key, path, label in (("flip", "flip_vs_w.png", "flip rate"), ("deviation", "deviation_vs_w.png", "deviation")):
        series = {}
        for p, r in zip(cfg.steering.pairs, pairs):
            for t in cfg.steering.templates:
                rows = r[f"template_{t}"]["weights"].values()
                series[f"{p[0]} {p[1]}→{p[2]}, t{t}"] = ([v[key][0] for v in rows], [v[key][1] for v in rows])
        figures.line_plot(weights, series, "steering weight w", label, os.path.join(outdir, path))
    report.write(outdir, "Pooled-embedding steering (toy scale)", results, markdown(cfg, results, time.time() - start))
    return results
