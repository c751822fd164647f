"""Command line of the clip_removal experiment; the logic is in ``experiment.py`` (toy models) and
``mmdit_jax.study.folder_study`` (a diffusers pipeline folder).

    python -m experiments.clip_removal.run --config=configs/pooled_study.py --workdir=runs/pooled_study \
        --outdir=experiments/clip_removal
    python -m experiments.clip_removal.run --pipeline=/path/to/stable-diffusion-3.5-medium --prompts=prompts.txt \
        --seeds=0,1 [--steps=28 --size=1024 --dreamsim_dir=/path/to/dreamsim_weights]
"""

from experiments.clip_removal.experiment import run
from mmdit_jax.study.cli import run_experiment
from mmdit_jax.study.folder_study import removal

if __name__ == "__main__":
    run_experiment(run, "experiments/clip_removal", removal)
