"""FLUX.1 presets (``model.name="flux"``). ``get_config(name)`` with name in tiny | dev | schnell; each lists only
the fields that differ from ``FluxConfig``'s defaults (FLUX.1-dev: 19 double + 38 single blocks, D = 3072 = 24 x 128,
RoPE dims (16, 56, 56), guidance embedding).

``schnell`` is dev without the guidance embedding (11,891,178,560 parameters against dev's 11,901,408,320);
``tiny`` is a CPU test size (D = 32 = 2 heads x 16, 2 + 2 blocks, 4 latent channels, text width 32, pooled 24).
"""

import ml_collections

from mmdit_jax.families import family_config

PRESETS = {
    "tiny": dict(in_channels=16, out_channels=16, num_layers=2, num_single_layers=2, num_heads=2, head_dim=16,
                 axes_dims_rope=(4, 6, 6), joint_attention_dim=32, pooled_projection_dim=24),
    "dev": dict(),
    "schnell": dict(guidance_embeds=False),
}


def get_config(name: str = "tiny") -> ml_collections.ConfigDict:
    if name not in PRESETS:
        raise ValueError(f"configs/flux.py: unknown preset {name!r}; valid: {sorted(PRESETS)}")
    return family_config("flux", **PRESETS[name])
