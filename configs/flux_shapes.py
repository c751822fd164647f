"""A FLUX-style toy model on the same 16x16x4 latents of ``shapes`` at 64x64 as ``configs/latent_shapes.py``.

``python -m mmdit_jax --config=configs/flux_shapes.py --config.latent.vae=DIR/vae --workdir=...`` (the VAE of
``python -m mmdit_jax.train_autoencoder --config=configs/vae_shapes.py --workdir=DIR``). Everything but the model is
the SD3-style latent run's (data, text towers, schedule, loss, optimiser, sampler), so the two compare families:
2 double-stream + 2 single-stream blocks of D = 128 (4 heads of 32, RoPE dims (8, 12, 12) over (0, row, col)) on
the 8x8 grid of 2x2-packed latent tokens, against the SD3-style model's 4 joint blocks of D = 128 on 2x2 patches:
the same token grid and width, 8% more FLOPs per step. No guidance embedding (a model trained here is not guidance-distilled); the pooled
path is FLUX's ``y = e_t + h_y(pooled)``, so ``remove_pooled`` and pooled steering apply as for SD3.
"""

import ml_collections

from configs.latent_shapes import get_config as latent_shapes_config
from mmdit_jax.families import family_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = latent_shapes_config(arg)
    c.model = family_config("flux", in_channels=16, out_channels=16, num_layers=2, num_single_layers=2, num_heads=4,
                            head_dim=32, axes_dims_rope=(8, 12, 12), joint_attention_dim=96,
                            pooled_projection_dim=96, guidance_embeds=False)
    if arg == "tiny":
        c.model.update(num_layers=1, num_single_layers=1, num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6))
    return c
