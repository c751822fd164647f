"""Fine-tuning a trained run of ``configs/default.py``: LoRA on the joint-attention projections (``:lora``, the
default) or every weight (``:full``), here teaching the one-object model two-object scenes.

    python -m mmdit_jax --config=configs/finetune.py:lora --workdir=runs/lora \
        --config.finetune.init_from=runs/default

``finetune.init_from`` (required) is the base run's workdir; the model, text and latent sections must be the
base's (checked at start-up). Append ``,tiny`` (``:lora,tiny``) to fine-tune a ``configs/default.py:tiny`` run.
"""

import ml_collections

from configs.default import get_config as default_config
from mmdit_jax.adapters.finetune import finetune_config


def get_config(arg: str = "lora") -> ml_collections.ConfigDict:
    mode, _, size = arg.partition(",")
    if mode not in ("lora", "full") or size not in ("", "tiny"):
        raise ValueError(f"configs/finetune.py: unknown argument {arg!r}; valid: 'lora' or 'full', optionally "
                         "followed by ',tiny'")
    c = default_config(size)
    c.data.max_objects = 2
    if mode == "lora":
        # alpha = 2 r: the adapter's update is scaled by 2, so the factors stay O(1) at a usual LoRA learning rate
        c.finetune = finetune_config(rank=8, alpha=16.0)
        c.optim.learning_rate = 1e-3
    else:
        c.finetune = finetune_config()
        c.optim.learning_rate = 2e-4
    c.optim.warmup_steps = 50
    if not size:
        c.train.update(num_steps=1000, checkpoint_every=250, sample_every=500)
    return c
