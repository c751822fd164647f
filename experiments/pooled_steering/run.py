"""Command line of the pooled_steering experiment; the logic is in ``experiment.py``.

    python -m experiments.pooled_steering.run --config=configs/pooled_study.py --workdir=runs/pooled_study \
        --outdir=experiments/pooled_steering
"""

import os

from absl import app, flags
from ml_collections import config_flags

from experiments.pooled_steering.experiment import run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pooled_study.py", "Study configuration.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/pooled_study", "Cache of the study's stages (shared).")
_OUTDIR = flags.DEFINE_string("outdir", "experiments/pooled_steering", "Where RESULTS.md and figures go.")


def main(_):
    run(_CONFIG.value, _WORKDIR.value, _OUTDIR.value)
    print(open(os.path.join(_OUTDIR.value, "RESULTS.md")).read())


if __name__ == "__main__":
    app.run(main)
