"""Command line of the pooled-steering family comparison; the logic is in ``experiment.py``.

    python -m experiments.pooled_families.run --workdir=runs/latent_shapes --outdir=experiments/pooled_families

Stages are experiments/latent_shapes's, cached in the same workdir (the autoencoder, the 64x64 classifier, the
SD3-style and FLUX-style models) plus the SD3-style model without a pooled path; each is trained once.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from experiments.latent_shapes.stages import DESCRIPTIONS, classifier_64, train_model, train_vae
from experiments.pooled_families.experiment import check_config, evaluate_family, write
from mmdit_jax.eval.deviation import make_deviation
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.reporting import machine, quiet_library_logs, report
from mmdit_jax.runtime import configure_runtime

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pooled_families.py", "Settings of the comparison.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/latent_shapes", "experiments/latent_shapes's stage cache.")
_OUTDIR = flags.DEFINE_string("outdir", "experiments/pooled_families", "Where RESULTS.md and figures go.")


def main(_):
    configure_runtime()  # before the first JAX computation
    quiet_library_logs()
    cfg, workdir, outdir = _CONFIG.value, _WORKDIR.value, _OUTDIR.value
    check_config(cfg)
    vae = train_vae(workdir)
    classifier = classifier_64(workdir)
    deviation = make_deviation("features", classifier)
    gens = {name: SamplingPipeline.from_workdir(*train_model(workdir, vae, name)) for name in cfg.families}
    start = time.time()
    results = {}
    for name, gen in gens.items():
        report(f"evaluating {name}")
        results[name] = evaluate_family(cfg, gen, classifier, deviation, os.path.join(outdir, name))
    models = "; ".join(f"`{name}`: {DESCRIPTIONS[name]}" for name in cfg.families)
    setup = (f"Machine: {machine()}. Models (experiments/latent_shapes), each trained on the 16x16x4 latents of 64x64 "
             f"`shapes` with the shipped toy CLIP towers: {models}. Sampler flow Euler 40 steps, CFG 3.0. Read by "
             "the 64x64 attribute classifier; deviation = its feature distance.")
    command = " ".join(["python -m experiments.pooled_families.run", *sys.argv[1:]])
    write(cfg, results, outdir, setup, time.time() - start, command)
    print(open(os.path.join(outdir, "RESULTS.md")).read())


if __name__ == "__main__":
    app.run(main)
