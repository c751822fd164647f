"""A 2D score model from the command line: the NCSN mixture 0.8 N((5,5), I) + 0.2 N((-5,-5), I) (``data.name="toy2d"``),
a noise-conditional MLP (``model.name="mlp"``) trained by denoising score matching on the NCSN ladder
(sigma 20 -> 1, 10 levels) and sampled by annealed Langevin dynamics; ``--mode=sample`` draws a scatter plot.

    python -m mmdit_jax --config=configs/toy2d.py --workdir=runs/toy2d

Unconditional: no text section. ``get_config("tiny")`` is the smoke-test size.
"""

import ml_collections

from mmdit_jax.data.registry import data_config
from mmdit_jax.families import family_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = data_config("toy2d", num_train=50_000, num_test=5_000, seed=0, batch_size=128)
    c.model = family_config("mlp", hidden=128, depth=3, sigma_data=4.0)
    c.schedule = ml_collections.ConfigDict(dict(name="ncsn", sigma_min=1.0, sigma_max=20.0, num_levels=10))
    c.model_parameterization = "eps"
    c.timestep_scale = 1.0                 # unused by the MLP family, which conditions on log sigma
    c.loss = ml_collections.ConfigDict(dict(name="dsm"))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_steps=100, schedule="cosine", final_lr_fraction=0.0, b1=0.9, b2=0.999,
        eps=1e-8, weight_decay=0.0, grad_clip=0.0))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=5000, log_every=500, checkpoint_every=2500, sample_every=5000, keep_checkpoints=2,
        async_checkpointing=True, ema_decay=0.99, loss_buckets=4))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    # The NCSN paper's setting: 100 steps per level, step 0.05 (convention B), no final denoising step.
    c.sample = ml_collections.ConfigDict(dict(
        sampler=ml_collections.ConfigDict(dict(name="annealed_langevin", n_steps_each=100, step_size=0.05,
                                               denoise=False)),
        guidance_scale=1.0, negative="null", prompts=(), per_prompt=1280, seed=0, remove_pooled=False,
        steering=ml_collections.ConfigDict(dict(positive="", negative="", weight=0.0))))
    c.eval = ml_collections.ConfigDict(dict(num_examples=1000))
    if arg == "tiny":
        c.data.update(num_train=2048, num_test=256)
        c.train.update(num_steps=2000, log_every=500, checkpoint_every=1000, sample_every=2000)
        c.sample.per_prompt = 512
        c.eval.num_examples = 256
    elif arg:
        raise ValueError(f"configs/toy2d.py: unknown argument {arg!r}; valid: '' or 'tiny'")
    return c
