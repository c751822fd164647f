"""CLIP removal at toy scale: what the pooled embedding h_y does, by prompt length.

    python -m experiments.clip_removal.run --config=configs/pooled_study.py --workdir=runs/pooled_study \
        --outdir=experiments/clip_removal

(a) inference: the model trained with y = e_t + h_y samples every template of the same scenes with and without
    h_y (same noise); deviation of the "w/o CLIP" image from the "with CLIP" one vs the prompt's token count.
(b) training: the y = e_t + h_y model vs the y = e_t model (same budget): prompt adherence and Fréchet distance
    to real images, for short and long prompts.
Seeds: every number is a mean ± std over ``seeds`` (sampling noise, and in (b) also the scene draw).
"""

from __future__ import annotations

import os
import time

import numpy as np

from mmdit_jax import reporting
from mmdit_jax.data.captions import TEMPLATES
from mmdit_jax.eval.adherence import prompt_adherence
from mmdit_jax.eval.attributes import labelled_images
from mmdit_jax.eval.frechet import frechet_distance
from mmdit_jax.models.text.tokenizers import PromptTokenizer
from mmdit_jax.study import figures, report, stages
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.study.scenes import prompts, scenes



def inference_removal(cfg, gen: SamplingPipeline, deviation, classifier, tokenizer, outdir: str) -> dict:
    objs = scenes(cfg.removal.num_scenes, cfg.removal.scene_seed)
    per_template = []
    grid = {}
    for t in range(len(TEMPLATES)):
        texts = prompts(objs, t)
        dev, adh_with, adh_without = [], [], []
        for seed in cfg.removal.seeds:
            with_clip = gen(texts, seed)
            without = gen(texts, seed, remove_pooled=True)
            dev.append(float(deviation(with_clip, without).mean()))
            adh_with.append(prompt_adherence(classifier, with_clip, texts)["all"])
            adh_without.append(prompt_adherence(classifier, without, texts)["all"])
            if seed == cfg.removal.seeds[0] and t in (cfg.removal.short_template, cfg.removal.long_template):
                grid[t] = (with_clip[:cfg.removal.grid_scenes], without[:cfg.removal.grid_scenes])
        per_template.append({
            "template": t, "tokens": float(np.mean([tokenizer.count_tokens(p) for p in texts])),
            "deviation": stages.mean_std(dev), "adherence_with": stages.mean_std(adh_with),
            "adherence_without": stages.mean_std(adh_without)})
    short, long = cfg.removal.short_template, cfg.removal.long_template
    figures.panel_grid({"w/o CLIP, long": grid[long][1], "w/o CLIP, short": grid[short][1],
                        "with CLIP, short": grid[short][0], "with CLIP, long": grid[long][0]},
                       os.path.join(outdir, "three_panel.png"),
                       prompts(objs[:cfg.removal.grid_scenes], short))
    x = [r["tokens"] for r in per_template]
    figures.line_plot(x, {"deviation (w/o CLIP vs with CLIP)": tuple(zip(*[r["deviation"] for r in per_template]))},
                      "prompt tokens (CLIP, without BOS/EOS)", "feature deviation", os.path.join(outdir,
                      "deviation_vs_tokens.png"), "removing h_y at inference, same noise")
    figures.line_plot(x, {"with CLIP": tuple(zip(*[r["adherence_with"] for r in per_template])),
                          "w/o CLIP": tuple(zip(*[r["adherence_without"] for r in per_template]))},
                      "prompt tokens", "prompt adherence (all mentioned attributes)",
                      os.path.join(outdir, "adherence_vs_tokens.png"))
    return {"per_template": per_template}


def training_removal(cfg, gens: dict[str, SamplingPipeline], classifier) -> dict:
    q = cfg.quality
    real, _ = labelled_images(q.num_real, q.scene_seed + 1000)
    real_feats = classifier.embed(real)
    floor = [frechet_distance(classifier.embed(labelled_images(q.num_samples, q.scene_seed + 2000 + s)[0]), real_feats)
             for s in q.seeds]
    rows = {}
    for name, gen in gens.items():
        for length, t in (("short", q.short_template), ("long", q.long_template)):
            adh, fd = [], []
            for seed in q.seeds:
                texts = prompts(scenes(q.num_samples, q.scene_seed + seed), t)
                images = gen(texts, seed)
                adh.append(prompt_adherence(classifier, images, texts))
                fd.append(frechet_distance(classifier.embed(images), real_feats))
            row = {a: stages.mean_std([r[a] for r in adh]) for a in adh[0]}
            row["frechet"] = stages.mean_std(fd)
            rows[f"{name}, {length}"] = row
    return {"rows": rows, "frechet_floor_real_vs_real": stages.mean_std(floor)}


def markdown(cfg, results: dict, seconds: float) -> str:
    a = results["inference"]["per_template"]
    lines_a = "\n".join(
        f"| {r['template']} | {r['tokens']:.1f} | {report.fmt(r['deviation'], 4)} | {report.fmt(r['adherence_with'])} "
        f"| {report.fmt(r['adherence_without'])} | `{TEMPLATES[r['template']]}` |" for r in a)
    b = results["training"]["rows"]
    cols = ["all", "shape", "colour", "size", "position", "frechet"]
    lines_b = "\n".join(f"| {name} | " + " | ".join(report.fmt(row[c]) if c in row else "–" for c in cols) + " |"
                        for name, row in b.items())
    tc, clf = results["toy_clip"]["zero_shot"], results["classifier_accuracy"]
    return f"""Commands (both experiments share the cached stages in the workdir):

    python -m experiments.clip_removal.run --config=configs/pooled_study.py --workdir=runs/pooled_study --outdir=experiments/clip_removal

Machine: {reporting.machine()}. Wall time of this command: {seconds / 60:.1f} min (stages cached before it ran are
not included; see the stage notes below). Seeds: sampling seeds {list(cfg.removal.seeds)} for (a),
{list(cfg.quality.seeds)} for (b) (scene stream `scene_seed + seed`); mean ± std over those seeds.

## Stages
- Toy CLIP: the tiny CLIP-L / CLIP-G towers pretrained contrastively ({cfg.toy_clip.steps} steps, batch
  {cfg.toy_clip.batch_size}) against a small image tower. Zero-shot attribute retrieval on {results['toy_clip']['held_out_examples']}
  held-out images, both towers (all attributes right / per attribute):
  template 0 (`{TEMPLATES[0]}`): {tc['template_0']['both']};
  template 4 (`{TEMPLATES[4]}`): {tc['template_4']['both']};
  template 8: {tc['template_8']['both']}.
- Attribute classifier, held-out accuracy ({cfg.classifier.eval_examples} images): {clf}.
- Two MMDiTs = `configs/default.py` with the frozen toy-CLIP towers, one with y = e_t + h_y, one with y = e_t
  ({cfg.mmdit.train.num_steps} steps each, identical otherwise). Sampler: {cfg.mmdit.sample.sampler.name}
  {cfg.mmdit.sample.sampler.n_steps} steps, CFG {cfg.mmdit.sample.guidance_scale} against the null input.
- Deviation: `{cfg.deviation.kind}` — the classifier-feature distance (LPIPS-style, unit weights), the offline
  stand-in for DreamSim; its scale is not DreamSim's.

## (a) Removing h_y at inference, by prompt length

{cfg.removal.num_scenes} scenes × every template; "with" and "w/o CLIP" from the same noise. Adherence = all
attributes the prompt mentions read back right by the classifier.

| template | tokens | deviation w/o vs with | adherence with CLIP | adherence w/o CLIP | template text |
|---|---|---|---|---|---|
{lines_a}

![deviation](deviation_vs_tokens.png)
![adherence](adherence_vs_tokens.png)
![three panels](three_panel.png)

## (b) Removing h_y at training (same budget)

{cfg.quality.num_samples} samples per cell, scenes drawn at random; short = template {cfg.quality.short_template}
(`{TEMPLATES[cfg.quality.short_template]}`), long = template {cfg.quality.long_template}. Fréchet distance in the
classifier's 128-d feature space against {cfg.quality.num_real} real images; floor (real vs real, same sample size):
{report.fmt(results['training']['frechet_floor_real_vs_real'])}.

| model, prompts | adherence all | shape | colour | size | position | Fréchet |
|---|---|---|---|---|---|---|
{lines_b}
"""


def run(cfg, workdir: str, outdir: str) -> dict:
    """Both parts of the experiment; writes results.json, figures and RESULTS.md into ``outdir``."""
    os.makedirs(outdir, exist_ok=True)
    start = time.time()
    ev = stages.evaluators(cfg, workdir)
    toy, classifier, accuracy, deviation = ev.toy_clip, ev.classifier, ev.classifier_accuracy, ev.deviation
    gens = {}
    for name, use_pooled in (("with h_y", True), ("without h_y", False)):
        gens[name] = SamplingPipeline.from_workdir(*stages.mmdit(cfg, workdir, toy["paths"], use_pooled))
    tokenizer = PromptTokenizer(toy["paths"]["clip_l"], "clip")
    results = {"toy_clip": toy, "classifier_accuracy": accuracy}
    results["inference"] = inference_removal(cfg, gens["with h_y"], deviation, classifier, tokenizer, outdir)
    results["training"] = training_removal(cfg, gens, classifier)
    report.write(outdir, "CLIP removal (toy scale)", results, markdown(cfg, results, time.time() - start))
    return results
