"""The layers of the KL autoencoder (``models/vae.py``; maths and weight names: docs/vae.md), NHWC.

Module and parameter names follow diffusers' ``AutoencoderKL`` (``resnets_0/conv1/kernel`` for
``resnets.0.conv1.weight``) except where diffusers wraps a single layer in a list: ``downsample``, ``upsample``,
``attention`` and ``to_out`` stand for ``downsamplers.0``, ``upsamplers.0``, ``attentions.0`` and ``to_out.0``.

Every GroupNorm has ``eps = 1e-6``, affine parameters, statistics in float32 computed in two passes (the mean
first, then the mean squared deviation, as torch does: the one-pass ``E[x^2] - E[x]^2`` loses digits when
activations have a large mean). Each pass reduces over the positions first, channel by channel, then over the
channels of a group: on a CPU that column reduction runs vectorised over the contiguous channel axis, and the
GroupNorm + SiLU of a decoder activation takes about a third of the time of ``flax.linen.GroupNorm``'s reduction
over ``(positions, channels of the group)`` at once.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

GROUP_NORM_EPS = 1e-6


class GroupNorm(nn.Module):
    """``(B, H, W, C) -> (B, H, W, C)``: ``(x - mu_g) / sqrt(var_g + eps) * scale + bias`` with ``mu_g``, ``var_g`` the
    mean and variance of group ``g`` (``C / groups`` consecutive channels) over all positions; parameters ``scale``
    and ``bias`` ``(C,)`` (the names of ``flax.linen.GroupNorm``)."""

    groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, c = x.shape[0], x.shape[-1]
        per_group = c // self.groups
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        xf = x.astype(jnp.float32).reshape(b, -1, c)                          # (B, HW, C)

        def group_mean(per_channel: Array) -> Array:                          # (B, C) -> (B, 1, C), by group
            g = jnp.mean(per_channel.reshape(b, self.groups, per_group), axis=-1)
            return jnp.repeat(g, per_group, axis=-1)[:, None, :]

        mean = group_mean(jnp.mean(xf, axis=1))
        var = group_mean(jnp.mean(jnp.square(xf - mean), axis=1))
        y = (xf - mean) * (jax.lax.rsqrt(var + GROUP_NORM_EPS) * scale.astype(jnp.float32)) + bias.astype(jnp.float32)
        return y.reshape(x.shape).astype(self.dtype)


def group_norm(groups: int, dtype: Dtype, param_dtype: Dtype, name: str) -> GroupNorm:
    return GroupNorm(groups, dtype=dtype, param_dtype=param_dtype, name=name)


def conv(features: int, kernel: int, dtype: Dtype, param_dtype: Dtype, name: str, stride: int = 1,
         padding: Any = None) -> nn.Conv:
    """A ``kernel x kernel`` convolution with bias; "same" zero padding for stride 1 unless ``padding`` is given."""
    pad = (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)) if padding is None else padding,
                   dtype=dtype, param_dtype=param_dtype, name=name)


class ResnetBlock(nn.Module):
    """diffusers' ``ResnetBlock2D`` without a time embedding: ``(B, H, W, C_in) -> (B, H, W, C_out)``.

        h   = conv2(silu(norm2(conv1(silu(norm1(x))))))          3x3 convolutions, GroupNorm(groups, eps 1e-6)
        out = shortcut(x) + h                                     shortcut = 1x1 conv if C_in != C_out, else x
    """

    out_channels: int
    groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(group_norm(self.groups, name="norm1", **kw)(x))
        h = conv(self.out_channels, 3, name="conv1", **kw)(h)
        h = nn.silu(group_norm(self.groups, name="norm2", **kw)(h))
        h = conv(self.out_channels, 3, name="conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, name="conv_shortcut", **kw)(x)
        return x + h


class Downsample(nn.Module):
    """``(B, H, W, C) -> (B, floor(H/2), floor(W/2), C)``: zero padding of one row at the bottom and one column at the
    right (asymmetric, as the original LDM autoencoder), then a 3x3 convolution with stride 2 and no padding."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(x.shape[-1], 3, self.dtype, self.param_dtype, "conv", stride=2, padding="VALID")(x)


def _phase_kernels(w: Array, axis: int) -> tuple[Array, Array]:
    """Along ``axis`` of a 3-tap kernel ``(w_0, w_1, w_2)``: the 2-tap kernels of the even and odd output phases of
    "repeat each input twice, then convolve": even outputs see inputs ``(i - 1, i, i)``, odd ones ``(i, i, i + 1)``."""
    t0, t1, t2 = (jnp.take(w, k, axis) for k in range(3))
    return jnp.stack([t0, t1 + t2], axis), jnp.stack([t0 + t1, t2], axis)


class UpsampleConv(nn.Module):
    """Nearest-neighbour 2x then a 3x3 convolution (zero padding 1), ``(B, H, W, C) -> (B, 2H, 2W, F)``, computed as
    four 2x2 convolutions of the input, one per output phase ``(a, b)``, interleaved (depth to space):

        y[2i + a, 2j + b] = sum_{r, s in {0, 1}} K_ab[r, s] x[i + r - 1 + a, j + s - 1 + b],
        K_ab = the 3x3 kernel's taps summed as ``_phase_kernels`` says, rows by ``a``, columns by ``b``

    the same sums as convolving the upsampled image (16 instead of 36 multiply-adds per input pixel and channel
    pair, and no 4x upsampled copy); parameters ``kernel (3, 3, C, F)`` and ``bias (F,)`` as ``nn.Conv``'s.
    """

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        # the taps are summed in the parameters' precision, then cast once, as the convolution of the upsampled
        # image would see them
        kernels = [_phase_kernels(row, 1) for row in _phase_kernels(kernel, 0)]
        x, bias, *flat = nn.dtypes.promote_dtype(x, bias, *(k for pair in kernels for k in pair), dtype=self.dtype)
        phases = []
        for a in (0, 1):
            cols = flat[2 * a:2 * a + 2]
            phases.append(jnp.stack([
                jax.lax.conv_general_dilated(x, cols[p], (1, 1), ((1 - a, a), (1 - p, p)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
                for p in (0, 1)], axis=3))                                    # (B, H, W, 2, F)
        y = jnp.stack(phases, axis=2)                                          # (B, H, 2, W, 2, F)
        return y.reshape(b, 2 * h, 2 * w, self.features) + bias


class Upsample(nn.Module):
    """``(B, H, W, C) -> (B, 2H, 2W, C)``: nearest-neighbour 2x (each pixel repeated 2x2), then a 3x3 convolution
    (``UpsampleConv``)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return UpsampleConv(x.shape[-1], self.dtype, self.param_dtype, name="conv")(x)


class SpatialAttention(nn.Module):
    """Single-head self-attention over the ``H W`` positions, with a residual: ``(B, H, W, C) -> (B, H, W, C)``.

        u   = GroupNorm(x)  viewed as (B, HW, C)
        out = x + to_out(softmax(q k^T / sqrt(C)) v),   q, k, v = to_q(u), to_k(u), to_v(u)   (dense C -> C)

    The logits and the softmax are in float32 whatever the compute dtype (diffusers' ``upcast_softmax``). They are
    ``(B, HW, HW)``: 1 GiB per image at the mid block of a 1024x1024 decode, which is what batched decoding bounds.
    """

    groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        u = group_norm(self.groups, self.dtype, self.param_dtype, "group_norm")(x).reshape(b, h * w, 1, c)
        dense = lambda name: nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731
        q, k, v = dense("to_q")(u), dense("to_k")(u), dense("to_v")(u)
        a = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        return x + dense("to_out")(a).reshape(b, h, w, c)


class MidBlock(nn.Module):
    """diffusers' ``UNetMidBlock2D`` as the autoencoder uses it: resnet, attention (optional), resnet; C -> C."""

    groups: int
    add_attention: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(groups=self.groups, dtype=self.dtype, param_dtype=self.param_dtype)
        x = ResnetBlock(x.shape[-1], name="resnets_0", **kw)(x)
        if self.add_attention:
            x = SpatialAttention(name="attention", **kw)(x)
        return ResnetBlock(x.shape[-1], name="resnets_1", **kw)(x)
