"""Tiny random diffusers SD3 components (sized like diffusers' own SD3 fast tests), built offline, shared by the
pipeline tests."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from mmdit_jax.models.text.tokenizer_assets import CLIP_DIR, T5_DIR  # noqa: E402
from tests.torch_reference import tiny_clip_config, tiny_pipeline_vae, tiny_t5_config  # noqa: E402


def _clip(seed: int, act: str):
    # hidden 16 per tower: [H_L; H_G] is 32 wide, the joint width (diffusers would silently cut a wider one)
    torch.manual_seed(seed)
    cfg = tiny_clip_config(hidden_size=16, projection_dim=32, hidden_act=act)
    return transformers.CLIPTextModelWithProjection(cfg).eval()


def components(with_t5: bool, shift: float, channels: int = 4, num_layers: int = 1) -> dict:
    """Tiny random SD3 components; ``channels``: latent channels of the VAE and transformer (diffusers' SD3
    inpainting accepts only 16)."""
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=channels, num_layers=num_layers, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64,
        out_channels=channels)
    torch.manual_seed(1)
    vae = tiny_pipeline_vae(channels, shift_factor=0.0609, scaling_factor=1.5035)
    torch.manual_seed(2)
    t5 = transformers.T5EncoderModel(tiny_t5_config()).eval()
    clip_tok = transformers.CLIPTokenizer.from_pretrained(CLIP_DIR)
    return dict(transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=shift),
                text_encoder=_clip(3, "quick_gelu"), tokenizer=clip_tok, text_encoder_2=_clip(4, "gelu"),
                tokenizer_2=clip_tok, text_encoder_3=t5 if with_t5 else None,
                tokenizer_3=transformers.T5Tokenizer.from_pretrained(T5_DIR) if with_t5 else None)


def smooth_images(n: int, size: int) -> np.ndarray:
    """Smooth random images in [0, 1], ``(n, size, size, 3)`` float32."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = np.random.default_rng(0).uniform(0, 1, (n, 1, 1, 3))
    img = 0.5 + 0.4 * np.sin(6 * a * xx[None, ..., None] + 4 * a * yy[None, ..., None] + a)
    return img.astype(np.float32)


def generator_draws(seed: int, n_img: int, n: int, channels: int, latent_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The VAE posterior eps ``(n_img, ...)``, then the start noise ``(n, ...)``, NHWC: what diffusers' SD3
    image-to-image and inpainting pipelines draw, in that order, from ``torch.Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    post = torch.randn((n_img, channels, latent_size, latent_size), generator=g)
    noise = torch.randn((n, channels, latent_size, latent_size), generator=g)
    return post.numpy().transpose(0, 2, 3, 1), noise.numpy().transpose(0, 2, 3, 1)
