"""How good is a study model on short prompts? Prompt adherence of the y = e_t + h_y model for each template length.

    python -m experiments.clip_removal.base_quality --config=configs/pooled_study.py:large \
        --workdir=runs/pooled_study_large --outdir=experiments/clip_removal/base_quality

The study compares images against "with CLIP, short prompt" samples, so that reference must itself be one
coherent object of the right shape and colour. This trains (or reuses) only the study's pooled model of the given
config and reads ``num_scenes`` random scenes per template back with the study's classifier: per-attribute
adherence for the attributes each template names, mean ± std over sampling seeds.
"""

from __future__ import annotations

import os
import time

from absl import app, flags
from ml_collections import config_flags

from mmdit_jax.data.captions import TEMPLATES
from mmdit_jax.eval.adherence import prompt_adherence
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.reporting import machine, quiet_library_logs
from mmdit_jax.runtime import configure_runtime
from mmdit_jax.study import report, stages
from mmdit_jax.study.scenes import prompts, scenes


def base_quality(cfg, workdir: str, templates: list[int], num_scenes: int, seeds: list[int]) -> dict:
    """``{template: {attribute or 'all': (mean, std)}}`` for the study's pooled model of ``cfg``."""
    ev = stages.evaluators(cfg, workdir)
    mcfg, run_dir = stages.mmdit(cfg, workdir, ev.toy_clip["paths"], True)
    gen = SamplingPipeline.from_workdir(mcfg, run_dir)
    objs = scenes(num_scenes, cfg.quality.scene_seed)
    out = {}
    for t in templates:
        texts = prompts(objs, t)
        rows = [prompt_adherence(ev.classifier, gen(texts, seed), texts) for seed in seeds]
        out[t] = {k: stages.mean_std([r[k] for r in rows]) for k in rows[0]}
    return out


def markdown(cfg, results: dict, command: str, seconds: float, num_scenes: int, seeds: list[int]) -> str:
    m = cfg.mmdit
    rows = []
    for t, r in results.items():
        cells = [r.get(a) for a in ("shape", "colour", "size", "position")]
        rows.append(f"| {t} | `{TEMPLATES[t]}` | " + " | ".join(report.fmt(c) if c else "–" for c in cells)
                    + f" | **{report.fmt(r['all'])}** |")
    return f"""Command:

    {command}

Machine: {machine()}. Model: the study's y = e_t + h_y MMDiT, {m.model.num_layers} layers, D =
{m.model.num_heads * m.model.head_dim}, patch {m.model.patch_size}, {m.train.num_steps} steps of batch
{m.data.batch_size}; sampler {m.sample.sampler.name} {m.sample.sampler.n_steps} steps, CFG {m.sample.guidance_scale}.
{num_scenes} random scenes per template, sampling seeds {seeds}, mean ± std over seeds. Sampling and
scoring time: {seconds / 60:.1f} min (training excluded).

| template | text | shape | colour | size | position | all named |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


def main() -> None:
    # Flags are defined here, not at import, so the scoring function can be imported without a command line.
    config = config_flags.DEFINE_config_file("config", "configs/pooled_study.py", "Study configuration.")
    workdir = flags.DEFINE_string("workdir", "runs/pooled_study", "Cache of the study's stages (shared).")
    outdir = flags.DEFINE_string("outdir", "experiments/clip_removal/base_quality", "Where RESULTS.md goes.")
    templates = flags.DEFINE_list("templates", ["1", "2", "7"], "Prompt templates to score (0 = shortest).")
    num_scenes = flags.DEFINE_integer("num_scenes", 256, "Random scenes per template.")
    seeds = flags.DEFINE_list("seeds", ["0", "1"], "Sampling seeds.")

    def run(_):
        configure_runtime()  # before the first JAX computation
        quiet_library_logs()
        start = time.time()
        seed_list = [int(x) for x in seeds.value]
        results = base_quality(config.value, workdir.value, [int(t) for t in templates.value], num_scenes.value,
                               seed_list)
        command = (f"python -m experiments.clip_removal.base_quality "
                   f"--config={config_flags.get_config_filename(flags.FLAGS['config'])} "
                   f"--workdir={workdir.value} --outdir={outdir.value}")
        report.write(outdir.value, "Study model quality by prompt length", {"templates": results},
                     markdown(config.value, results, command, time.time() - start, num_scenes.value, seed_list))
        print(open(os.path.join(outdir.value, "RESULTS.md")).read())

    app.run(run)


if __name__ == "__main__":
    main()
