"""The layers of the Wan 2.1 causal video VAE (``models/wan_vae.py``; maths and weight names: docs/wan_vae.md).

Video is channels-last ``(B, T, H, W, C)``. Every time-mixing layer is causal and runs on one chunk of frames at a
time, carrying a cache of the frames it has already seen; a layer is a pure function

    (x_chunk, cache) -> (y_chunk, cache')          cache = None: the first chunk (no history)

so the chunk loop of the autoencoder is a ``scan`` with the caches as its carry.

Causal convolution, kernel ``(k_t, k_h, k_w)`` with ``k_t = 3``: the time axis is padded with ``2`` frames in the
past and none in the future. Chunk by chunk that is a valid convolution of ``[c ; x]``, ``c`` the last ``2`` frames of
the zero-padded history (zeros before the first chunk): ``c' = last_2([c ; x])``. With one frame and no history the
two past taps meet zeros, so only the last time slice ``K[-1]`` acts: a 2D convolution.

RMS norm over channels (``WanRMS_norm``): ``y = x / max(||x||_2, 1e-12) * sqrt(C) * gamma``.

Module and parameter names follow diffusers' ``AutoencoderKLWan`` with ``name_i`` for ``name.i``
(``down_blocks_3/resample_1/kernel`` is ``down_blocks.3.resample.1.weight``); RMS scales are ``gamma``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.models.vae_blocks import UpsampleConv, conv

Array = jax.Array
Dtype = Any
Cache = Any                       # a pytree of arrays, None for the first chunk

CACHE_T = 2                       # past frames a k_t = 3 causal convolution sees
RMS_EPS = 1e-12                   # torch.nn.functional.normalize's floor on the norm


def child_cache(cache: Cache, name: str) -> Cache:
    """The cache of the child layer ``name``; None (no history) for all children of the first chunk."""
    return None if cache is None else cache[name]


def _per_frame(fn: Any, x: Array) -> Array:
    """Apply a 2D layer ``(N, H, W, C) -> (N, H', W', C')`` to every frame of ``(B, T, H, W, C)``."""
    b, t = x.shape[:2]
    y = fn(x.reshape(b * t, *x.shape[2:]))
    return y.reshape(b, t, *y.shape[1:])


class RMSNorm(nn.Module):
    """``(..., C) -> (..., C)``: ``x / max(||x||_2, eps) * sqrt(C) * gamma`` over the channel axis; ``gamma (C,)``.

    The norm is taken in float32 whatever the compute dtype (diffusers upcasts half precision here)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones, (c,), self.param_dtype)
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
        y = (xf / jnp.maximum(norm, RMS_EPS)).astype(self.dtype)
        return y * math.sqrt(c) * gamma.astype(self.dtype)


class CausalConv3d(nn.Module):
    """``(B, T, H, W, C) -> (B, T', H, W, F)``: a 3D convolution, zero "same" padding in space, causal in time.

    ``past`` frames of history are prepended from the cache (``past = k_t - 1`` for the k_t = 3 convolutions, 0 for
    the 1x1x1 shortcuts and quant convs and for a time convolution whose caller supplies its own history); the
    convolution is then valid in time with stride ``stride_t``: ``T' = (past + T - k_t) // stride_t + 1``.
    Parameters ``kernel (k_t, k_h, k_w, C, F)`` and ``bias (F,)``.
    """

    features: int
    kernel_size: tuple[int, int, int] = (3, 3, 3)
    past: int = CACHE_T
    stride_t: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        kt, kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kt, kh, kw, x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        new_cache = None
        if self.past:
            history = jnp.zeros((x.shape[0], self.past, *x.shape[2:]), x.dtype) if cache is None else cache
            x = jnp.concatenate([history.astype(x.dtype), x], axis=1)
            new_cache = x[:, -self.past:]
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jax.lax.conv_general_dilated(
            x, kernel, (self.stride_t, 1, 1), ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)),
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        return y + bias, new_cache


class ResidualBlock(nn.Module):
    """``WanResidualBlock``, ``(B, T, H, W, C_in) -> (B, T, H, W, C_out)``:

        h   = conv2(silu(RMS2(conv1(silu(RMS1(x))))))      causal 3x3x3 convolutions, each with its own cache
        out = shortcut(x) + h                              shortcut = 1x1x1 convolution if C_in != C_out, else x
    """

    out_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        shortcut = x
        if x.shape[-1] != self.out_dim:
            shortcut, _ = CausalConv3d(self.out_dim, (1, 1, 1), past=0, name="conv_shortcut", **kw)(x)
        h = nn.silu(RMSNorm(name="norm1", **kw)(x))
        h, c1 = CausalConv3d(self.out_dim, name="conv1", **kw)(h, child_cache(cache, "conv1"))
        h = nn.silu(RMSNorm(name="norm2", **kw)(h))
        h, c2 = CausalConv3d(self.out_dim, name="conv2", **kw)(h, child_cache(cache, "conv2"))
        return h + shortcut, {"conv1": c1, "conv2": c2}


class AttentionBlock(nn.Module):
    """``WanAttentionBlock``: single-head self-attention over the ``H W`` positions of each frame, with a residual.

        u       = RMS(x)                      per frame, (B T, H W, C)
        q, k, v = split_C(to_qkv(u))          1x1 convolution C -> 3 C
        out     = x + proj(softmax(q k^T / sqrt(C)) v)
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, t, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        u = RMSNorm(name="norm", **kw)(x).reshape(b * t, h, w, c)
        qkv = conv(3 * c, 1, name="to_qkv", **kw)(u).reshape(b * t, h * w, 1, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        a = jax.nn.dot_product_attention(q, k, v, implementation="xla").reshape(b * t, h, w, c)
        return x + conv(c, 1, name="proj", **kw)(a).reshape(b, t, h, w, c)


class MidBlock(nn.Module):
    """``WanMidBlock``: residual block, per-frame attention, residual block; C -> C."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c = x.shape[-1]
        x, c0 = ResidualBlock(c, name="resnets_0", **kw)(x, child_cache(cache, "resnets_0"))
        x = AttentionBlock(name="attentions_0", **kw)(x)
        x, c1 = ResidualBlock(c, name="resnets_1", **kw)(x, child_cache(cache, "resnets_1"))
        return x, {"resnets_0": c0, "resnets_1": c1}


class Downsample(nn.Module):
    """``WanResample`` down: per frame, zero padding of one row (bottom) and one column (right), then a 3x3
    convolution with stride 2 (``resample_1``): ``(B, T, H, W, C) -> (B, T, floor(H/2), floor(W/2), C)``.

    ``temporal``: then halve time with ``time_conv`` (k_t = 3, stride 2, kernel 1x1 in space) over
    ``[c ; y]``, ``c`` the last frame of the previous chunk: ``T -> T / 2`` for even ``T``. The first chunk
    (no cache) passes through unchanged in time: the first frame of a video keeps its own latent frame.
    """

    temporal: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        spatial = conv(x.shape[-1], 3, name="resample_1", stride=2, padding="VALID", **kw)
        y = _per_frame(lambda f: spatial(jnp.pad(f, ((0, 0), (0, 1), (0, 1), (0, 0)))), x)
        if not self.temporal:
            return y, None
        time_conv = CausalConv3d(y.shape[-1], (3, 1, 1), past=0, stride_t=2, name="time_conv", **kw)
        if cache is None:
            if self.is_initializing():               # create time_conv's parameters; the first chunk skips it
                time_conv(jnp.concatenate([y[:, :1]] * 3, axis=1))
            return y, y[:, -1:]
        out, _ = time_conv(jnp.concatenate([cache.astype(y.dtype), y], axis=1))
        return out, y[:, -1:]


class Upsample(nn.Module):
    """``WanResample`` up: ``(B, T, H, W, C) -> (B, T', 2H, 2W, C / 2)``.

    ``temporal`` (after the first chunk): ``time_conv`` (causal, k_t = 3, 1x1 in space) maps C to 2 C channels and
    the two halves become two frames, ``y[2i + s] = time_conv(x)[i, s C : (s + 1) C]``, so ``T' = 2 T``; the first
    chunk skips it (``T' = T``: one latent frame decodes to the video's first frame alone), and its cache starts
    from zeros. Then per frame: nearest-neighbour 2x and a 3x3 convolution to ``C / 2`` channels (``resample_1``).
    """

    temporal: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, t, h, w, c = x.shape
        new_cache = None
        if self.temporal:
            time_conv = CausalConv3d(2 * c, (3, 1, 1), name="time_conv", **kw)
            if cache is None:
                if self.is_initializing():           # create time_conv's parameters; the first chunk skips it
                    time_conv(x)
                new_cache = jnp.zeros((b, CACHE_T, h, w, c), x.dtype)
            else:
                y, new_cache = time_conv(x, cache)
                x = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c)
        x = _per_frame(UpsampleConv(c // 2, name="resample_1", **kw), x)
        return x, new_cache


class UpBlock(nn.Module):
    """``WanUpBlock``: ``num_resnets`` residual blocks to ``out_dim``, then ``upsamplers_0`` unless last."""

    out_dim: int
    num_resnets: int
    upsample: str | None                          # None, "2d" or "3d"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        new: dict[str, Cache] = {}
        for j in range(self.num_resnets):
            x, new[f"resnets_{j}"] = ResidualBlock(self.out_dim, name=f"resnets_{j}", **kw)(
                x, child_cache(cache, f"resnets_{j}"))
        if self.upsample is not None:
            x, new["upsamplers_0"] = Upsample(self.upsample == "3d", name="upsamplers_0", **kw)(
                x, child_cache(cache, "upsamplers_0"))
        return x, new
