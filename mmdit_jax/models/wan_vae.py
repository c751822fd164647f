"""The Wan 2.1 causal video VAE as Flax Linen modules, channels-last (docs/wan_vae.md).

    video x: (B, T, H, W, C_img) in [-1, 1],  T = 1 + 4 k
    moments      = quant_conv(E(x))           (B, 1 + k * 4 / f_t, H / f_s, W / f_s, 2 z)
    mean, logvar = split(moments);  logvar <- clip(logvar, -30, 20)
    x_hat        = clip(D(post_quant_conv(z)), -1, 1)

with ``f_s = 2^(len(dim_mult) - 1)`` (8) and ``f_t = 2^(number of temporal downsamplings)`` (4): the first frame
has a latent frame of its own and every later group of ``f_t`` frames one more. ``E`` and ``D`` are causal in time
and run chunk by chunk with the caches of their causal layers as a scan carry (``wan_vae_blocks``):

    E: the first frame alone, then chunks of 4 frames        D: one latent frame at a time

so the chunking is part of the function (not an approximation of a whole-video pass). With one frame every causal
convolution reduces to its last time slice and no time convolution runs: a 2D VAE. A diffusion model sees
``z_model = (z - latents_mean) / latents_std`` per channel (``normalize_latents``). Numerically equal to diffusers'
``AutoencoderKLWan`` (tests/models/test_wan_vae.py); weights load with ``mmdit_jax.interop.wan_vae.load_wan_vae``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError, check_choice, check_keys, check_positive_int
from mmdit_jax.models.flops import num_parameters
from mmdit_jax.models.numerics import DTYPES
from mmdit_jax.models.vae import LOGVAR_RANGE, sample_latents  # noqa: F401  (sample_latents: the shared API)
from mmdit_jax.models.wan_vae_blocks import (
    CausalConv3d,
    Downsample,
    MidBlock,
    ResidualBlock,
    RMSNorm,
    UpBlock,
    child_cache,
)

Array = jax.Array
Cache = Any

ENCODE_CHUNK = 4                 # frames per encoder step after the first frame

# The released Wan 2.1 latent statistics (diffusers' AutoencoderKLWan defaults), per latent channel.
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Architecture, latent statistics and numerics. Defaults: the released Wan 2.1 VAE (126.9 M parameters)."""

    base_dim: int = 96
    decoder_base_dim: int | None = None            # None: base_dim
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)       # stage widths base_dim * dim_mult[i]
    num_res_blocks: int = 2                        # per encoder stage (the decoder has one more)
    attn_scales: tuple[float, ...] = ()            # must be empty: diffusers cannot run encoder attention blocks
    temporal_downsample: tuple[bool, ...] = (False, True, True)   # per downsampling, encoder order
    dropout: float = 0.0                           # read and ignored: every pass here is deterministic
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    in_channels: int = 3
    out_channels: int = 3
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def spatial_downscale(self) -> int:
        """Pixels per latent side ``f_s``."""
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_downscale(self) -> int:
        """Frames per latent frame after the first, ``f_t``."""
        return 2 ** sum(self.temporal_downsample)

    def latent_frames(self, frames: int) -> int:
        """``1 + (T - 1) / f_t`` latent frames for ``T = 1 + 4 k`` frames."""
        return 1 + (frames - 1) // self.temporal_downscale

    @classmethod
    def from_dict(cls, d: Any) -> "WanVAEConfig":
        d = dict(d)
        check_keys("wan_vae", d, {f.name for f in dataclasses.fields(cls)})
        for f in ("dim_mult", "attn_scales", "temporal_downsample", "latents_mean", "latents_std"):
            if f in d and isinstance(d[f], list):
                d[f] = tuple(d[f])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in ("base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels"):
            check_positive_int(f"wan_vae.{f}", getattr(self, f))
        if self.decoder_base_dim is not None:
            check_positive_int("wan_vae.decoder_base_dim", self.decoder_base_dim)
        if not isinstance(self.dim_mult, tuple) or not self.dim_mult:
            raise ConfigError(f"wan_vae.dim_mult must be a non-empty tuple of width multipliers, got {self.dim_mult!r}")
        for i, m in enumerate(self.dim_mult):
            check_positive_int(f"wan_vae.dim_mult[{i}]", m)
        if self.attn_scales:
            raise ConfigError(f"wan_vae.attn_scales={self.attn_scales!r} is not supported: it must be empty "
                              "(diffusers' encoder calls its attention blocks with cache arguments they do not take)")
        td = self.temporal_downsample
        if not isinstance(td, tuple) or len(td) != len(self.dim_mult) - 1 or \
                not all(isinstance(v, bool) for v in td):
            raise ConfigError(f"wan_vae.temporal_downsample must be {len(self.dim_mult) - 1} booleans (one per "
                              f"downsampling of dim_mult={self.dim_mult}), got {td!r}")
        if sum(td) > 2:
            raise ConfigError(f"wan_vae.temporal_downsample={td!r} halves time {sum(td)} times; at most 2 fit the "
                              f"encoder's chunks of {ENCODE_CHUNK} frames")
        dec = self.decoder_base_dim or self.base_dim
        for i, m in enumerate(self.dim_mult[1:]):
            if dec * m < 2:
                raise ConfigError(f"wan_vae.dim_mult[{i + 1}]={m} with decoder width {dec}: every upsampling halves "
                                  "the channels, so each decoder stage needs at least 2")
        for f in ("latents_mean", "latents_std"):
            v = getattr(self, f)
            if not isinstance(v, tuple) or len(v) != self.z_dim:
                raise ConfigError(f"wan_vae.{f} must hold z_dim={self.z_dim} numbers, got {v!r}")
        if any(not s > 0 for s in self.latents_std):
            raise ConfigError(f"wan_vae.latents_std must be positive, got {self.latents_std!r}")
        check_choice("wan_vae.dtype", self.dtype, DTYPES)
        check_choice("wan_vae.param_dtype", self.param_dtype, DTYPES)


def _kw(cfg: WanVAEConfig) -> dict[str, Any]:
    return dict(dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype])


class WanEncoder(nn.Module):
    """One chunk ``(B, T_c, H, W, C_img) -> (B, T_c', H / f_s, W / f_s, 2 z)`` and the caches after it.

        conv_in (3x3x3) -> per stage i: num_res_blocks residual blocks to base_dim * dim_mult[i], then (except after
        the last) a spatial 2x downsample, temporal too where temporal_downsample[i] -> mid block -> RMS -> SiLU ->
        conv_out (3x3x3, 2 z)

    ``down_blocks_n`` numbers the residual blocks and downsamplers in one sequence, as diffusers does.
    """

    config: WanVAEConfig

    @nn.compact
    def __call__(self, x: Array, cache: Cache = None) -> tuple[Array, Cache]:
        cfg, kw = self.config, _kw(self.config)
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        new: dict[str, Cache] = {}
        h, new["conv_in"] = CausalConv3d(dims[0], name="conv_in", **kw)(x.astype(kw["dtype"]),
                                                                        child_cache(cache, "conv_in"))
        n = 0
        for i, width in enumerate(dims[1:]):
            for _ in range(cfg.num_res_blocks):
                name = f"down_blocks_{n}"
                h, new[name] = ResidualBlock(width, name=name, **kw)(h, child_cache(cache, name))
                n += 1
            if i < len(cfg.dim_mult) - 1:
                name = f"down_blocks_{n}"
                h, new[name] = Downsample(cfg.temporal_downsample[i], name=name, **kw)(h, child_cache(cache, name))
                n += 1
        h, new["mid_block"] = MidBlock(name="mid_block", **kw)(h, child_cache(cache, "mid_block"))
        h = nn.silu(RMSNorm(name="norm_out", **kw)(h))
        h, new["conv_out"] = CausalConv3d(2 * cfg.z_dim, name="conv_out", **kw)(h, child_cache(cache, "conv_out"))
        return h, new


class WanDecoder(nn.Module):
    """One latent chunk ``(B, t_c, h, w, z) -> (B, T_c, f_s h, f_s w, C_out)`` and the caches after it.

        conv_in (3x3x3, to d * dim_mult[-1]) -> mid block -> up_blocks_i over the reversed widths:
        num_res_blocks + 1 residual blocks, then (except the last) a 2x upsample to half the channels, temporal too
        where the reversed temporal_downsample says -> RMS -> SiLU -> conv_out (3x3x3, C_out)

    Stage i > 0 starts from half the width of stage i - 1 (the upsampler's output).
    """

    config: WanVAEConfig

    @nn.compact
    def __call__(self, z: Array, cache: Cache = None) -> tuple[Array, Cache]:
        cfg, kw = self.config, _kw(self.config)
        d = cfg.decoder_base_dim or cfg.base_dim
        widths = [d * m for m in cfg.dim_mult[::-1]]
        temporal_up = cfg.temporal_downsample[::-1]
        new: dict[str, Cache] = {}
        h, new["conv_in"] = CausalConv3d(widths[0], name="conv_in", **kw)(z.astype(kw["dtype"]),
                                                                          child_cache(cache, "conv_in"))
        h, new["mid_block"] = MidBlock(name="mid_block", **kw)(h, child_cache(cache, "mid_block"))
        for i, width in enumerate(widths):
            up = None if i == len(widths) - 1 else ("3d" if temporal_up[i] else "2d")
            name = f"up_blocks_{i}"
            h, new[name] = UpBlock(width, cfg.num_res_blocks + 1, up, name=name, **kw)(h, child_cache(cache, name))
        h = nn.silu(RMSNorm(name="norm_out", **kw)(h))
        h, new["conv_out"] = CausalConv3d(cfg.out_channels, name="conv_out", **kw)(h, child_cache(cache, "conv_out"))
        return h, new


class AutoencoderKLWan(nn.Module):
    """Videos ``(B, T, H, W, C_img)`` in [-1, 1], ``T = 1 + 4 k`` <-> latents ``(B, 1 + 4 k / f_t, H / f_s, W / f_s,
    z)``; outputs are float32.

    ``encode(x) -> (mean, logvar)``; ``decode(z) -> x`` (clipped to [-1, 1] as diffusers does; ``clip=False`` for
    training); ``__call__(x) -> (decode(mean), mean, logvar)`` (used by ``init``, which builds every parameter from
    any number of frames). The chunk loops are ``nn.scan`` (``jax.lax.scan`` over the module with its parameters
    broadcast) whose carry is the pytree of caches the first chunk returns.
    """

    config: WanVAEConfig

    def setup(self) -> None:
        cfg, kw = self.config, _kw(self.config)
        self.encoder = WanEncoder(cfg)
        self.decoder = WanDecoder(cfg)
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, (1, 1, 1), past=0, **kw)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, (1, 1, 1), past=0, **kw)

    def _encode_chunk(self, x: Array, cache: Cache) -> tuple[Cache, Array]:
        h, cache = self.encoder(x, cache)
        return cache, self.quant_conv(h)[0]

    def _decode_chunk(self, z: Array, cache: Cache) -> tuple[Cache, Array]:
        x, cache = self.decoder(z, cache)
        return cache, x

    def _chunked(self, step: Callable[..., tuple[Cache, Array]], x: Array, first: int, size: int) -> Array:
        """``step`` on ``x[:, :first]`` with no history, then on each following chunk of ``size`` frames under a scan
        carrying the caches; the outputs concatenated in time."""
        cache, out = step(self, x[:, :first], None)
        n = (x.shape[1] - first) // size
        if n == 0 or self.is_initializing():       # the first chunk has created every parameter
            return out
        chunks = x[:, first:].reshape(x.shape[0], n, size, *x.shape[2:])
        scan = nn.scan(lambda module, c, xi: step(module, xi, c), variable_broadcast="params",
                       split_rngs={"params": False}, in_axes=1, out_axes=1, length=n)
        _, rest = scan(self, cache, chunks)                       # (B, n, T_chunk, ...)
        rest = rest.reshape(rest.shape[0], -1, *rest.shape[3:])
        return jnp.concatenate([out, rest], axis=1)

    def encode(self, x: Array) -> tuple[Array, Array]:
        """``x: (B, T, H, W, C_img)``, ``T = 1 + 4 k`` -> ``(mean, logvar)``, each ``(B, 1 + 4 k / f_t, H / f_s,
        W / f_s, z)``."""
        cfg = self.config
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels or (x.shape[1] - 1) % ENCODE_CHUNK:
            raise ConfigError(f"videos must be (B, T, H, W, {cfg.in_channels}) with T = 1 + {ENCODE_CHUNK} k frames "
                              f"for wan_vae.in_channels={cfg.in_channels}, got shape {x.shape}")
        moments = self._chunked(AutoencoderKLWan._encode_chunk, x, 1, ENCODE_CHUNK)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: Array, clip: bool = True) -> Array:
        """``z: (B, t, h, w, z)`` (the unnormalised latent) -> ``(B, 1 + f_t (t - 1), f_s h, f_s w, C_out)``."""
        cfg = self.config
        if z.ndim != 5 or z.shape[-1] != cfg.z_dim:
            raise ConfigError(f"latents must be (B, t, h, w, {cfg.z_dim}) for wan_vae.z_dim={cfg.z_dim}, "
                              f"got shape {z.shape}")
        z, _ = self.post_quant_conv(z.astype(DTYPES[cfg.dtype]))
        x = self._chunked(AutoencoderKLWan._decode_chunk, z, 1, 1).astype(jnp.float32)
        return jnp.clip(x, -1.0, 1.0) if clip else x

    def __call__(self, x: Array) -> tuple[Array, Array, Array]:
        mean, logvar = self.encode(x)
        return self.decode(mean), mean, logvar


# ------------------------------------------------------------------------------------------------
# Latents: pure functions of arrays and the config


def _stats(cfg: WanVAEConfig) -> tuple[Array, Array]:
    return jnp.asarray(cfg.latents_mean, jnp.float32), jnp.asarray(cfg.latents_std, jnp.float32)


def normalize_latents(z: Array, cfg: WanVAEConfig) -> Array:
    """What the diffusion model sees, per channel (last axis): ``(z - latents_mean) / latents_std``."""
    mean, std = _stats(cfg)
    return (z - mean) / std


def denormalize_latents(z_model: Array, cfg: WanVAEConfig) -> Array:
    """The inverse of ``normalize_latents``: ``z_model * latents_std + latents_mean``, the decoder's input."""
    mean, std = _stats(cfg)
    return z_model * std + mean


# ------------------------------------------------------------------------------------------------
# Shapes without memory


def abstract_variables(cfg: WanVAEConfig) -> Any:
    """Shapes and dtypes of ``AutoencoderKLWan(cfg).init`` via ``jax.eval_shape`` (nothing allocated)."""
    f = cfg.spatial_downscale
    x = jax.ShapeDtypeStruct((1, 1, f, f, cfg.in_channels), jnp.float32)
    return jax.eval_shape(AutoencoderKLWan(cfg).init, jax.random.PRNGKey(0), x)


def count_params(cfg: WanVAEConfig) -> int:
    """Number of parameters of the autoencoder for ``cfg``, counted from abstract shapes."""
    return num_parameters(abstract_variables(cfg)["params"])
