"""KL-autoencoder presets: ``get_config(name)`` with name in sd3 | flux | sdxl | tiny; build the model config with
``VAEConfig.from_dict(get_config(name))``. ``PRESETS`` lists only the fields that differ from ``VAEConfig``'s
defaults (the SD3 VAE: 16 latent channels, widths (128, 256, 512, 512), 2 resnets per block, no quant convolutions).

``sd3`` has 83,819,683 parameters (``mmdit_jax.models.vae.count_params``). FLUX.1 uses the same architecture with
its own latent normalisation; SDXL's VAE has 4 latent channels and the 1x1 quant convolutions. ``tiny`` is the
test size (widths (32, 64), one resnet per block, downscale 2).
"""

import dataclasses

import ml_collections

from mmdit_jax.models.vae import VAEConfig

PRESETS = {
    "sd3": dict(),
    "flux": dict(scaling_factor=0.3611, shift_factor=0.1159),
    "sdxl": dict(latent_channels=4, use_quant_conv=True, use_post_quant_conv=True, scaling_factor=0.13025,
                 shift_factor=None),
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8),
}


def get_config(name: str = "sd3") -> ml_collections.ConfigDict:
    if name not in PRESETS:
        raise ValueError(f"configs/vae.py: unknown preset {name!r}; valid: {sorted(PRESETS)}")
    fields = {**dataclasses.asdict(VAEConfig()), **PRESETS[name]}
    if fields["shift_factor"] is None:  # a typed placeholder, so --config.shift_factor=0.1 can still set it
        fields["shift_factor"] = ml_collections.config_dict.placeholder(float)
    return ml_collections.ConfigDict(fields)
