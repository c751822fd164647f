"""Command line of the clip_removal experiment; the logic is in ``experiment.py``.

    python -m experiments.clip_removal.run --config=configs/pooled_study.py --workdir=runs/pooled_study \
        --outdir=experiments/clip_removal
"""

from experiments.clip_removal.experiment import run
from mmdit_jax.study.cli import run_experiment

if __name__ == "__main__":
    run_experiment(run, "experiments/clip_removal")
