"""A small convolutional image tower, shared by the ``shapes`` attribute classifier and the toy CLIP.

    x: (B, H, W, 3) in [-1, 1]
    stage l = 1..L:  h <- gelu(conv3x3(h)); h <- gelu(conv3x3 stride 2(h))     -> f_l: (B, H/2^l, W/2^l, C_l)
    z = gelu(W_z flatten(f_L))                                                 -> (B, D)

Flatten (not global pooling) keeps where things are: position is one of the attributes we read out.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class ConvEncoder(nn.Module):
    """``x: (B, H, W, 3) -> (feature maps [(B, h_l, w_l, C_l)], embedding (B, D))``."""

    widths: Sequence[int] = (32, 64, 128)
    embed_dim: int = 128

    @nn.compact
    def __call__(self, x: Array) -> tuple[list[Array], Array]:
        h, maps = x, []
        for i, width in enumerate(self.widths):
            h = nn.gelu(nn.Conv(width, (3, 3), name=f"conv_{i}_a")(h))
            h = nn.gelu(nn.Conv(width, (3, 3), strides=(2, 2), name=f"conv_{i}_b")(h))
            maps.append(h)
        z = nn.gelu(nn.Dense(self.embed_dim, name="embed")(h.reshape(h.shape[0], -1)))
        return maps, z


def to_unit_range(images: Array) -> Array:
    """uint8 ``[0, 255]`` images -> float ``[-1, 1]``; float images are clipped to ``[-1, 1]``."""
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 127.5 - 1.0
    return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)
