"""Command line of the pooled_steering experiment; the logic is in ``experiment.py``.

    python -m experiments.pooled_steering.run --config=configs/pooled_study.py --workdir=runs/pooled_study \
        --outdir=experiments/pooled_steering
"""

from experiments.pooled_steering.experiment import run
from mmdit_jax.study.cli import run_experiment

if __name__ == "__main__":
    run_experiment(run, "experiments/pooled_steering")
