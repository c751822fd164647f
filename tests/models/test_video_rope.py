"""Our 3-axis RoPE on the ``(t, row, col)`` ids of a packed clip equals diffusers' video rotary embeddings.

Both references order a clip's tokens ``(t, h, w)`` row-major, time outermost, and put the axes in the order
``(t, h, w)``, as ``latent_clip_ids`` does: no mapping between the two is needed. Their grids are over *patches*
(``num_frames // patch_size_t``, ``height // patch_size``, ..), so a latent clip ``(F, H, W)`` with our 2x2 packing
and ``p_t`` frames per token is their ``(F, H, W)`` hidden state with ``patch_size=2``, ``patch_size_t=p_t``.

* ``HunyuanVideoRotaryPosEmbed`` takes the axes dims (``rope_dim``) and ``theta`` (256 in HunyuanVideo) and computes
  in float32; ours (numpy ids) in float64, rounded to float32: equal to ~|angle| 2^-24.
* ``WanRotaryPosEmbed`` computes in float64 with axes dims ``(d - 4 (d // 6), 2 (d // 6), 2 (d // 6))`` for head
  dim ``d``: equal to float32 rounding.
* ``apply_rotary_emb`` (diffusers' rotation of adjacent pairs, HunyuanVideo's ``sequence_dim=1`` layout
  ``(B, L, H, d)``) with the same tables equals ``apply_rope``.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from diffusers.models.embeddings import apply_rotary_emb  # noqa: E402
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed  # noqa: E402
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed  # noqa: E402

from mmdit_jax.models.flux import latent_clip_ids  # noqa: E402
from mmdit_jax.models.rope import apply_rope, grid_ids, rope_tables  # noqa: E402


def _max_diff(ours, ref):
    return max(float(np.max(np.abs(np.asarray(a) - r.reshape(np.shape(a))))) for a, r in zip(ours, ref))


def _hunyuan(frames, height, width, pt, axes, theta):
    embed = HunyuanVideoRotaryPosEmbed(patch_size=2, patch_size_t=pt, rope_dim=list(axes), theta=theta)
    return [a.numpy() for a in embed(torch.zeros(1, 1, frames, height, width))]


@pytest.mark.parametrize("frames,height,width,pt,axes", [
    (5, 6, 10, 1, (4, 6, 6)),          # the tiny FLUX split; non-square latents
    (8, 8, 4, 2, (8, 4, 4)),           # two frames per token
    (3, 16, 16, 1, (16, 56, 56)),      # FLUX.1's split (head dim 128)
])
def test_clip_tables_equal_hunyuan_video(frames, height, width, pt, axes):
    ref = _hunyuan(frames, height, width, pt, axes, 256.0)
    ids = latent_clip_ids(frames, height, width, pt)
    assert _max_diff(rope_tables(ids, axes, 256.0), ref) <= 1e-6                          # host, float64
    assert _max_diff(jax.jit(lambda i: rope_tables(i, axes, 256.0))(jnp.asarray(ids)), ref) <= 1e-6   # traced


def test_a_clip_after_context_frames_has_the_tables_of_the_continued_clip():
    """The noisy clip's ids start at ``T_c / p_t``: its tables are the last rows of the whole clip's, so the model
    sees context frames and clip as one clip (and RoPE extends to any length)."""
    axes, pt, (height, width), n = (4, 6, 6), 2, (6, 4), 3 * 2
    ref = _hunyuan(10, height, width, pt, axes, 10000.0)
    ours = rope_tables(latent_clip_ids(6, height, width, pt, first=2), axes)
    assert _max_diff(ours, [r[2 * n:] for r in ref]) <= 1e-6
    context = rope_tables(latent_clip_ids(4, height, width, pt), axes)
    assert _max_diff(context, [r[:2 * n] for r in ref]) <= 1e-6


@pytest.mark.parametrize("head_dim,frames,height,width,pt", [(16, 4, 6, 10, 1), (24, 6, 4, 8, 2), (128, 3, 8, 8, 1)])
def test_clip_tables_equal_wan(head_dim, frames, height, width, pt):
    embed = WanRotaryPosEmbed(head_dim, (pt, 2, 2), max_seq_len=64)
    axes = (embed.t_dim, embed.h_dim, embed.w_dim)
    assert axes == (head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6))
    ref = [a.numpy() for a in embed(torch.zeros(1, 1, frames, height, width))]          # (1, L, 1, d) each
    assert _max_diff(rope_tables(latent_clip_ids(frames, height, width, pt), axes), ref) <= 6e-8


def test_rotation_equals_diffusers_apply_rotary_emb():
    axes = (4, 6, 6)
    cos, sin = rope_tables(grid_ids((3, 4, 5), (2, 0, 0)), axes)                      # 60 tokens, t from 2
    u = np.random.default_rng(0).standard_normal((2, 60, 3, 16), np.float32)         # (B, L, H, d)
    ref = apply_rotary_emb(torch.from_numpy(u), (torch.from_numpy(np.array(cos)), torch.from_numpy(np.array(sin))),
                           sequence_dim=1).numpy()
    np.testing.assert_allclose(np.asarray(apply_rope(jnp.asarray(u), cos, sin)), ref, rtol=0, atol=1e-6)


def test_grid_ids_are_row_major_with_offsets():
    ids = grid_ids((2, 3, 4), (5, 0, 1))
    assert ids.shape == (24, 3) and ids.dtype == np.float32
    np.testing.assert_array_equal(ids[:5], [[5, 0, 1], [5, 0, 2], [5, 0, 3], [5, 0, 4], [5, 1, 1]])
    np.testing.assert_array_equal(ids[12], [6, 0, 1])
