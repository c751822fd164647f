"""Shared builders of the PyTorch references the parity and pipeline tests compare against: seeded random weights
for a torch module, its state dict as numpy arrays, and the tiny CLIP / T5 configs and VAE of the random models.

torch, transformers and diffusers are imported where they are used: a test module skips on the ones it needs
(``pytest.importorskip``) before it calls these."""

import numpy as np


def diffusers_norm_scale(name: str) -> bool:
    """Whether a diffusers transformer parameter is a norm scale (``norm_q.weight``, ``norm_out...``)."""
    return "norm_" in name


def randomize(module, seed: int | None = None, *, norm_scale=diffusers_norm_scale, vectors_only: bool = False):
    """Fill ``module``'s parameters with random values in place, in ``named_parameters`` order; the module in eval mode.

    By default every parameter is random: matrices and kernels N(0, 1/fan_in), so activations stay O(1) through the
    blocks, vectors 0.2 N(0, 1), plus 1 where ``norm_scale(name)``: gates and modulations are far from zero, so every
    path reaches the output. ``vectors_only``: matrices keep the module's own initialisation; every parameter whose
    name holds "norm" becomes 1 + 0.2 N(0, 1), every other 1-D bias 0.1 N(0, 1).

    ``seed``: ``torch.manual_seed(seed)`` first; None draws on from the torch generator as it stands (a caller that
    seeded before building the module, whose initialisation drew from it too).
    """
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if vectors_only:
                if "norm" in name:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif "bias" in name and p.ndim == 1:
                    p.copy_(0.1 * torch.randn_like(p))
            elif p.ndim > 1:
                p.copy_(torch.randn_like(p) / np.sqrt(np.prod(p.shape[1:])))
            else:
                p.copy_(0.2 * torch.randn_like(p) + (1.0 if norm_scale(name) else 0.0))
    return module.eval()


def numpy_state(module) -> dict:
    """``module.state_dict()`` as numpy arrays (copies)."""
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def tiny_clip_config(**overrides):
    """A tiny ``transformers.CLIPTextConfig``: vocabulary 1000, width 32, MLP 37, 2 layers of 4 heads, 77 positions,
    quick_gelu, token ids BOS 0 / PAD 1 / EOS 2; ``overrides`` replace or add fields."""
    import transformers

    fields = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2, bos_token_id=0, pad_token_id=1)
    return transformers.CLIPTextConfig(**{**fields, **overrides})


def tiny_t5_config(**overrides):
    """A tiny encoder-only ``transformers.T5Config``: vocabulary 128, width 32 (heads 4 of 8), gated-GELU MLP 37,
    1 layer; ``overrides`` replace or add fields."""
    import transformers

    fields = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                  feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    return transformers.T5Config(**{**fields, **overrides})


def tiny_pipeline_vae(latent_channels: int, shift_factor: float, scaling_factor: float):
    """The tiny pipelines' diffusers ``AutoencoderKL`` (eval mode): two stages of 4 and 8 channels, so a downscale of
    2 that size checks and latent shapes see, no quant convs; weights from the torch generator as it stands."""
    import diffusers

    return diffusers.AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=shift_factor, scaling_factor=scaling_factor).eval()
