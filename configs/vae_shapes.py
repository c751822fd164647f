"""A small KL autoencoder trained on the built-in ``shapes`` data at 64x64, for latent training of the MMDiT.

``python -m mmdit_jax.train_autoencoder --config=configs/vae_shapes.py --workdir=DIR`` trains in about 10 minutes on
2 CPU cores and exports ``DIR/vae/`` (diffusers layout, read by ``mmdit_jax.interop.vae.load_vae``);
``--config=configs/vae_shapes.py:tiny`` is the test size. 64x64x3 images <-> 16x16x4 latents (3 stages,
downscale 4). ``vae.scaling_factor`` / ``vae.shift_factor`` here are placeholders: the export measures them on
``export.num_images`` training images (SD3's convention, docs/vae.md).
"""

import dataclasses

import ml_collections

from mmdit_jax.data.registry import data_config
from mmdit_jax.models.vae import VAEConfig


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The same data the latent MMDiT trains on (shapes at 64x64, default generation options).
    c.data = data_config("shapes", image_size=64, num_train=10_000, num_test=1_000, max_objects=1, seed=0,
                         batch_size=16)
    # The decoder's 32x32 stage dominates the step on a CPU: 32 wide there instead of 64 is ~1.4x faster.
    c.vae = ml_collections.ConfigDict({**dataclasses.asdict(VAEConfig()), **dict(
        latent_channels=4, block_out_channels=(32, 32, 64), layers_per_block=1, norm_num_groups=16,
        use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
        scaling_factor=1.0, shift_factor=0.0)})
    # kl_weight as in LDM (per-image sums, see mmdit_jax/train/autoencoder.py): a near-deterministic posterior.
    c.loss = ml_collections.ConfigDict(dict(reconstruction="l1", kl_weight=1e-6))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_steps=100, schedule="cosine", final_lr_fraction=0.1, b1=0.9, b2=0.99,
        eps=1e-8, weight_decay=0.0, grad_clip=1.0))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=1100, log_every=25, checkpoint_every=275, image_every=275, keep_checkpoints=3,
        async_checkpointing=True))
    c.export = ml_collections.ConfigDict(dict(num_images=1024, batch_size=64))   # images measuring shift / scale
    c.eval = ml_collections.ConfigDict(dict(num_images=256, grid_images=16))     # held-out test images

    if arg == "tiny":
        c.data.update(image_size=16, num_train=64, num_test=16, batch_size=8)
        c.vae.update(block_out_channels=(8, 16), norm_num_groups=4)
        # Constant after a short warm-up: a run extended from N to 2N steps follows the 2N run's schedule.
        c.optim.update(learning_rate=2e-3, warmup_steps=2, schedule="constant")
        c.train.update(num_steps=6, log_every=2, checkpoint_every=3, image_every=6)
        c.export.update(num_images=32, batch_size=16)
        c.eval.update(num_images=16, grid_images=4)
    elif arg:
        raise ValueError(f"configs/vae_shapes.py: unknown argument {arg!r}; valid: '' or 'tiny'")
    return c
