"""Pooled steering across model families (experiments/pooled_families): the SD3-style and FLUX-style models of
experiments/latent_shapes (same 16x16x4 latents of 64x64 ``shapes``, text towers, schedule, optimiser and budget)
and the SD3-style model without a pooled path (y = e_t), the control where steering is impossible by construction.

    python -m experiments.pooled_families.run --workdir=runs/latent_shapes --outdir=experiments/pooled_families

The steering settings are the pooled study's (``configs/pooled_study.py``): named-attribute pairs and attributes
the prompt leaves free. ``:tiny`` is the smoke-test size. ``:study`` runs the same sweeps on the bigger, longer
trained SD3-style model ``sd3_study``, whose captions at times leave the colour or the shape unnamed, and adds
those two free attributes:

    python -m experiments.pooled_families.run --config=configs/pooled_families.py:study \
        --workdir=runs/latent_shapes --outdir=experiments/pooled_families/study
"""

import ml_collections

from configs.pooled_study import get_config as study_config

FAMILIES = ("sd3", "flux", "sd3_no_pooled")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    if arg not in ("", "tiny", "study"):
        raise ValueError(f"configs/pooled_families.py: unknown argument {arg!r}; valid: '', 'tiny' or 'study'")
    c = ml_collections.ConfigDict()
    c.families = ("sd3_study",) if arg == "study" else FAMILIES
    c.steering = study_config("tiny" if arg == "tiny" else "").steering
    c.table_weight = 2.0                 # the middle w of the comparison table (every w is in the per-setting tables)
    # Base quality of each family, read by the 64x64 attribute classifier: short ("a red circle") and long prompts.
    c.quality = ml_collections.ConfigDict(dict(num_scenes=96, scene_seed=5151, seeds=(0, 1), short_template=1,
                                               long_template=7))
    if arg == "tiny":
        c.quality.update(num_scenes=2, seeds=(0,))
    elif arg == "study":
        # colour left free by "a {z} {s} in the {p}" (template 9), shape by "a {z} {c} shape in the {p}" (10)
        c.steering.unspecified += (("colour", "blue", "red", 9, 4), ("shape", "square", "circle", 10, 4))
        # this model's pooled path moves samples more per unit w: at w = 2 most samples have already collapsed
        c.steering.weights = (0.0, 0.5, 1.0, 1.5, 2.0)
        c.table_weight = 1.0
    else:
        c.steering.weights = (0.0, 1.0, 2.0, 4.0, 6.0)
    return c
