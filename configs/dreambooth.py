"""DreamBooth on a trained ``configs/default.py`` run: a built-in toy subject (a shape with a pattern the base never
saw), four instance images captioned "a [V] <class>", class-prior preservation with images the base draws itself.

    python -m mmdit_jax --config=configs/dreambooth.py:lora --workdir=runs/db_lora \
        --config.finetune.init_from=runs/default [--config.dreambooth.subject=... | --config.dreambooth.instance_dir=...]

Arguments: ``lora`` (rank 8 on the joint-attention projections) or ``full``; append ``,noprior`` to switch prior
preservation off (and halve the batch: the same instance examples per step) and ``,tiny`` to personalise a
``configs/default.py:tiny`` run.
"""

import ml_collections

from configs.finetune import get_config as finetune_config
from mmdit_jax.data import subjects
from mmdit_jax.train.dreambooth import dreambooth_config

SUBJECT = "striped_circle"


def sample_prompts(token: str, class_name: str) -> tuple[str, ...]:
    """The subject alone, in new contexts (position, size, colour), and the bare class (language drift)."""
    return (subjects.instance_prompt(token, class_name), f"a {token} {class_name} in the top left",
            f"a small {token} {class_name}", f"a blue {token} {class_name}", subjects.class_prompt(class_name))


def get_config(arg: str = "lora") -> ml_collections.ConfigDict:
    parts = arg.split(",")
    mode, options = parts[0], set(parts[1:])
    if mode not in ("lora", "full") or not options <= {"noprior", "tiny"}:
        raise ValueError(f"configs/dreambooth.py: unknown argument {arg!r}; valid: 'lora' or 'full', optionally "
                         "followed by ',noprior' and/or ',tiny'")
    tiny = "tiny" in options
    c = finetune_config(mode + (",tiny" if tiny else ""))
    c.data.max_objects = 1
    c.dreambooth = dreambooth_config(subject=SUBJECT, prior_weight=0.0 if "noprior" in options else 1.0,
                                     num_class_images=8 if tiny else 64)
    c.data.batch_size = 4 if tiny else 16
    if "noprior" in options:
        c.data.batch_size //= 2
    c.optim.learning_rate = 2e-3 if mode == "lora" else 3e-4
    c.optim.update(warmup_steps=20, schedule="constant")
    c.sample.prompts = sample_prompts(c.dreambooth.token, subjects.subject_class(SUBJECT))
    c.sample.per_prompt = 2 if tiny else 4
    if not tiny:
        c.train.update(num_steps=800, checkpoint_every=400, sample_every=400)
    return c
