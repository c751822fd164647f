"""MMDiT presets (``model.name="sd3"``). ``get_config(name)`` with name in tiny | small | sd3_medium | sd35_medium |
sd35_large; each lists only the fields that differ from ``MMDiTConfig``'s defaults (the SD3-medium layout).

The released models follow ``hidden = 64 * depth, heads = depth`` (docs/mmdit.md); ``tiny`` is the diffusers
test configuration (SD3.5 flavour: dual attention in layer 0, RMS QK-norm); ``small`` is the CPU experiment size
(D = 384, 6 layers, 6 heads, patch 2, 4 latent channels, text width 512, pooled 256).
"""

import ml_collections

from mmdit_jax.families import family_config

PRESETS = {
    "tiny": dict(patch_size=1, in_channels=4, out_channels=4, num_layers=4, num_heads=4, head_dim=8,
                 joint_attention_dim=32, pooled_projection_dim=64, pos_embed_max_size=96, sample_size=32,
                 qk_norm="rms_norm", dual_attention_layers=(0,)),
    "small": dict(in_channels=4, out_channels=4, num_layers=6, num_heads=6, joint_attention_dim=512,
                  pooled_projection_dim=256, pos_embed_max_size=32, sample_size=32),
    "sd3_medium": dict(num_layers=24, num_heads=24, pos_embed_max_size=192),
    "sd35_medium": dict(num_layers=24, num_heads=24, pos_embed_max_size=384, qk_norm="rms_norm",
                        dual_attention_layers=tuple(range(13))),
    "sd35_large": dict(num_layers=38, num_heads=38, pos_embed_max_size=192, qk_norm="rms_norm"),
}


def get_config(name: str = "small") -> ml_collections.ConfigDict:
    if name not in PRESETS:
        raise ValueError(f"configs/mmdit.py: unknown preset {name!r}; valid: {sorted(PRESETS)}")
    return family_config("sd3", **PRESETS[name])
