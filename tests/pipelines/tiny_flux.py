"""Tiny random diffusers FLUX components (the transformer sized like diffusers' own FLUX fast tests), built offline,
shared by the FLUX pipeline tests: a dev-like transformer (``guidance_embeds=True``, dynamic shifting) and a
schnell-like one (no guidance embedding, static shift 1)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from mmdit_jax.models.text.tokenizer_assets import CLIP_DIR, T5_DIR  # noqa: E402
from tests.torch_reference import tiny_clip_config, tiny_pipeline_vae, tiny_t5_config  # noqa: E402

LATENT_CHANNELS = 4
# the released FLUX.1 scheduler configs (flow_match.SCHEDULER_CONFIGS)
SCHEDULERS = {
    "dev": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                max_image_seq_len=4096),
    "schnell": dict(shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                    max_image_seq_len=4096),
}


def components(variant: str) -> dict:
    """Tiny random ``FluxPipeline`` components; ``variant`` "dev" (guidance embedding, dynamic shifting) or
    "schnell". The VAE has two stages (downscale 2), so sizes are multiples of 4."""
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=variant == "dev", axes_dims_rope=(4, 4, 8)).eval()
    torch.manual_seed(1)
    vae = tiny_pipeline_vae(LATENT_CHANNELS, shift_factor=0.1159, scaling_factor=0.3611)
    torch.manual_seed(2)
    clip = transformers.CLIPTextModel(tiny_clip_config()).eval()
    torch.manual_seed(3)
    t5 = transformers.T5EncoderModel(tiny_t5_config()).eval()
    return dict(transformer=transformer, vae=vae,
                scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**SCHEDULERS[variant]),
                text_encoder=clip, tokenizer=transformers.CLIPTokenizer.from_pretrained(CLIP_DIR),
                text_encoder_2=t5, tokenizer_2=transformers.T5Tokenizer.from_pretrained(T5_DIR))


def pack(z: np.ndarray) -> "torch.Tensor":
    """NHWC latents ``(B, h, w, C)`` -> diffusers' packed ``(B, h/2 * w/2, 4C)`` torch tensor."""
    b, h, w, c = z.shape
    return diffusers.FluxPipeline._pack_latents(torch.from_numpy(z.transpose(0, 3, 1, 2).copy()), b, c, h, w)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image ``(height, width, 3)`` uint8."""
    yy, xx = np.mgrid[0:height, 0:width]
    a = np.random.default_rng(seed).uniform(0.5, 1.5, (1, 1, 3))
    img = 0.5 + 0.4 * np.sin(a * xx[..., None] / 5 + 2 * a * yy[..., None] / 7 + 3 * a)
    return (255 * img).round().astype(np.uint8)
