"""The shared command line of the study's experiments: ``--config``, ``--workdir`` (cached stages), ``--outdir``."""

from __future__ import annotations

import os
from typing import Any, Callable

from absl import app, flags
from ml_collections import config_flags

from mmdit_jax.runtime import configure_runtime
from mmdit_jax.reporting import quiet_library_logs


def run_experiment(run: Callable[[Any, str, str], dict], default_outdir: str) -> None:
    """Define the flags, then ``run(config, workdir, outdir)`` and print its RESULTS.md."""
    config = config_flags.DEFINE_config_file("config", "configs/pooled_study.py", "Study configuration.")
    workdir = flags.DEFINE_string("workdir", "runs/pooled_study", "Cache of the study's stages (shared).")
    outdir = flags.DEFINE_string("outdir", default_outdir, "Where RESULTS.md and figures go.")

    def main(_):
        configure_runtime()  # before the first JAX computation
        quiet_library_logs()
        run(config.value, workdir.value, outdir.value)
        print(open(os.path.join(outdir.value, "RESULTS.md")).read())

    app.run(main)
