"""MMDiT presets. ``get_config(name)`` with name in tiny | small | sd3_medium | sd35_medium | sd35_large.

The released models follow ``hidden = 64 * depth, heads = depth`` (mmdit_spec.md §0); ``tiny`` is the
diffusers test configuration (SD3.5 flavour: dual attention in layer 0, RMS QK-norm); ``small`` is the CPU
experiment size (D = 384, 6 layers, 6 heads, patch 2, 4 latent channels, text width 512, pooled 256).
"""

import ml_collections

_COMMON = dict(patch_size=2, in_channels=16, out_channels=16, head_dim=64, joint_attention_dim=4096,
               pooled_projection_dim=2048, use_pooled=True, sample_size=128, qk_norm=None,
               dual_attention_layers=(), mlp_ratio=4, dtype="float32", param_dtype="float32", remat=False,
               remat_policy="full", scan_blocks=False, scan_unroll=1, attention_impl=None, attention_head_groups=4,
               custom_gradients=None)

PRESETS = {
    "tiny": dict(_COMMON, patch_size=1, in_channels=4, out_channels=4, num_layers=4, num_heads=4, head_dim=8,
                 joint_attention_dim=32, pooled_projection_dim=64, pos_embed_max_size=96, sample_size=32,
                 qk_norm="rms_norm", dual_attention_layers=(0,)),
    "small": dict(_COMMON, in_channels=4, out_channels=4, num_layers=6, num_heads=6, joint_attention_dim=512,
                  pooled_projection_dim=256, pos_embed_max_size=32, sample_size=32),
    "sd3_medium": dict(_COMMON, num_layers=24, num_heads=24, pos_embed_max_size=192),
    "sd35_medium": dict(_COMMON, num_layers=24, num_heads=24, pos_embed_max_size=384, qk_norm="rms_norm",
                        dual_attention_layers=tuple(range(13))),
    "sd35_large": dict(_COMMON, num_layers=38, num_heads=38, pos_embed_max_size=192, qk_norm="rms_norm"),
}


def get_config(name: str = "small") -> ml_collections.ConfigDict:
    if name not in PRESETS:
        raise ValueError(f"configs/mmdit.py: unknown preset {name!r}; valid: {sorted(PRESETS)}")
    return ml_collections.ConfigDict(PRESETS[name])
