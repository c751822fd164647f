"""Command line of the pooled_steering experiment; the logic is in ``experiment.py`` (toy models) and
``mmdit_jax.study.folder_study`` (a diffusers pipeline folder).

    python -m experiments.pooled_steering.run --config=configs/pooled_study.py --workdir=runs/pooled_study \
        --outdir=experiments/pooled_steering
    python -m experiments.pooled_steering.run --pipeline=/path/to/FLUX.1-dev --prompts=prompts.txt \
        --steer=pairs.txt --weights=0,1,2,4 [--steps=28 --size=1024 --dreamsim_dir=/path/to/dreamsim_weights]

``pairs.txt``: one ``p+ | p-`` pair a line, e.g. ``a person with long hair | a person with short hair``.
"""

from experiments.pooled_steering.experiment import run
from mmdit_jax.study.cli import run_experiment
from mmdit_jax.study.folder_study import steering

if __name__ == "__main__":
    run_experiment(run, "experiments/pooled_steering", steering, steering=True)
