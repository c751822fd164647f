"""The KL autoencoder of Stable Diffusion (SD3, FLUX, SDXL latents) as Flax Linen modules, NHWC (docs/vae.md).

    moments      = quant_conv(Encoder(x))                    x: (B, H, W, C_img) in [-1, 1] -> (B, H/f, W/f, 2 L)
    mean, logvar = split(moments);  logvar <- clip(logvar, -30, 20)
    x_hat        = Decoder(post_quant_conv(z))               z: (B, h, w, L) -> (B, f h, f w, C_out)

with ``f = 2^(len(block_out_channels) - 1)`` (8 for every released model) and ``L = latent_channels``; the quant
convolutions are 1x1 and optional (SDXL has them, SD3 and FLUX do not). A diffusion model sees the normalised
latent ``z_model = (z - shift) * scaling`` (``normalize_latents``); ``denormalize_latents`` inverts it before
decoding. Numerically equal to diffusers' ``AutoencoderKL`` (tests/models/test_vae.py); weights load with
``mmdit_jax.interop.vae.load_vae``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError, check_choice, check_keys, check_positive, check_positive_int
from mmdit_jax.models.flops import num_parameters
from mmdit_jax.models.numerics import DTYPES
from mmdit_jax.models.vae_blocks import Downsample, MidBlock, ResnetBlock, Upsample, conv, group_norm

Array = jax.Array

LOGVAR_RANGE = (-30.0, 20.0)   # diffusers' DiagonalGaussianDistribution clamps log-variances to this range


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture, latent normalisation and numerics. Defaults: the SD3 VAE (``configs/vae.py`` has presets)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)   # encoder widths; the decoder uses them reversed
    layers_per_block: int = 2                  # resnets per encoder block (the decoder has one more per block)
    norm_num_groups: int = 32
    use_quant_conv: bool = False               # 1x1 conv 2L -> 2L after the encoder
    use_post_quant_conv: bool = False          # 1x1 conv L -> L before the decoder
    mid_block_add_attention: bool = True
    scaling_factor: float = 1.5305             # z_model = (z - shift_factor) * scaling_factor
    shift_factor: float | None = 0.0609        # None: no shift
    dtype: str = "float32"                     # compute dtype
    param_dtype: str = "float32"

    @property
    def downscale(self) -> int:
        """Spatial factor between images and latents."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: Any) -> "VAEConfig":
        d = dict(d)
        check_keys("vae", d, {f.name for f in dataclasses.fields(cls)})
        if "block_out_channels" in d:
            d["block_out_channels"] = tuple(d["block_out_channels"])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
            check_positive_int(f"vae.{f}", getattr(self, f))
        if not isinstance(self.block_out_channels, tuple) or not self.block_out_channels:
            raise ConfigError(f"vae.block_out_channels must be a non-empty tuple of channel counts, "
                              f"got {self.block_out_channels!r}")
        for i, c in enumerate(self.block_out_channels):
            check_positive_int(f"vae.block_out_channels[{i}]", c)
            if c % self.norm_num_groups:
                raise ConfigError(f"vae.block_out_channels[{i}]={c} is not divisible by vae.norm_num_groups="
                                  f"{self.norm_num_groups} (every GroupNorm splits its channels into equal groups)")
        for f in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
            if not isinstance(getattr(self, f), bool):
                raise ConfigError(f"vae.{f} must be True or False, got {getattr(self, f)!r}")
        check_positive("vae.scaling_factor", self.scaling_factor)
        if self.shift_factor is not None and not isinstance(self.shift_factor, (int, float)):
            raise ConfigError(f"vae.shift_factor must be None or a number, got {self.shift_factor!r}")
        check_choice("vae.dtype", self.dtype, DTYPES)
        check_choice("vae.param_dtype", self.param_dtype, DTYPES)


def _kw(cfg: VAEConfig) -> dict[str, Any]:
    return dict(dtype=DTYPES[cfg.dtype], param_dtype=DTYPES[cfg.param_dtype])


class Encoder(nn.Module):
    """``(B, H, W, C_img) -> (B, floor(H/f), floor(W/f), 2 L)``: the moments before ``quant_conv``.

        conv_in (3x3) -> down_blocks_i: layers_per_block resnets to block_out_channels[i], then a stride-2
        downsample except after the last block -> mid_block -> GroupNorm -> SiLU -> conv_out (3x3, 2 L)
    """

    config: VAEConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, kw = self.config, _kw(self.config)
        groups = cfg.norm_num_groups
        h = conv(cfg.block_out_channels[0], 3, name="conv_in", **kw)(x.astype(kw["dtype"]))
        for i, width in enumerate(cfg.block_out_channels):
            block = _Stage(width, cfg.layers_per_block, groups, resample=i < len(cfg.block_out_channels) - 1,
                           up=False, name=f"down_blocks_{i}", **kw)
            h = block(h)
        h = MidBlock(groups, cfg.mid_block_add_attention, name="mid_block", **kw)(h)
        h = nn.silu(group_norm(groups, name="conv_norm_out", **kw)(h))
        return conv(2 * cfg.latent_channels, 3, name="conv_out", **kw)(h)


class Decoder(nn.Module):
    """``(B, h, w, L) -> (B, f h, f w, C_out)`` (the latent after ``post_quant_conv``).

        conv_in (3x3, to block_out_channels[-1]) -> mid_block -> up_blocks_i over the reversed widths:
        layers_per_block + 1 resnets, then nearest 2x + conv except after the last -> GroupNorm -> SiLU -> conv_out
    """

    config: VAEConfig

    @nn.compact
    def __call__(self, z: Array) -> Array:
        cfg, kw = self.config, _kw(self.config)
        groups, widths = cfg.norm_num_groups, cfg.block_out_channels[::-1]
        h = conv(widths[0], 3, name="conv_in", **kw)(z.astype(kw["dtype"]))
        h = MidBlock(groups, cfg.mid_block_add_attention, name="mid_block", **kw)(h)
        for i, width in enumerate(widths):
            block = _Stage(width, cfg.layers_per_block + 1, groups, resample=i < len(widths) - 1, up=True,
                           name=f"up_blocks_{i}", **kw)
            h = block(h)
        h = nn.silu(group_norm(groups, name="conv_norm_out", **kw)(h))
        return conv(cfg.out_channels, 3, name="conv_out", **kw)(h)


class _Stage(nn.Module):
    """``DownEncoderBlock2D`` (``up=False``) or ``UpDecoderBlock2D`` (``up=True``): resnets, then the resampler."""

    width: int
    num_resnets: int
    groups: int
    resample: bool
    up: bool
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for j in range(self.num_resnets):
            h = ResnetBlock(self.width, self.groups, name=f"resnets_{j}", **kw)(h)
        if self.resample:
            h = (Upsample(name="upsample", **kw) if self.up else Downsample(name="downsample", **kw))(h)
        return h


class AutoencoderKL(nn.Module):
    """Images ``(B, H, W, C_img)`` in [-1, 1] <-> latents ``(B, H/f, W/f, L)``; outputs are float32.

    ``encode(x) -> (mean, logvar)`` (the posterior; its mode ``mean`` is the usual latent, ``sample_latents``
    draws from it); ``decode(z) -> x``; ``__call__(x) -> (decode(mean), mean, logvar)`` (used by ``init``).
    ``chunk_size`` (static) runs the batch through the network that many images at a time (``nn.scan`` over
    chunks, the last one zero-padded), so a large batch costs the activation memory of one chunk.
    """

    config: VAEConfig

    def setup(self) -> None:
        cfg, kw = self.config, _kw(self.config)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.use_quant_conv:
            self.quant_conv = conv(2 * cfg.latent_channels, 1, name=None, **kw)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = conv(cfg.latent_channels, 1, name=None, **kw)

    def _encode(self, x: Array) -> tuple[Array, Array]:
        moments = self.encoder(x)
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def _decode(self, z: Array) -> Array:
        z = z.astype(DTYPES[self.config.dtype])
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def _in_chunks(self, fn: Callable[[nn.Module, Array], Any], x: Array, chunk_size: int | None) -> Any:
        b = x.shape[0]
        if chunk_size is not None:
            check_positive_int("chunk_size", chunk_size)
        if chunk_size is None or chunk_size >= b or self.is_initializing():
            return fn(self, x)
        n = -(-b // chunk_size)
        padded = jnp.pad(x, ((0, n * chunk_size - b),) + ((0, 0),) * (x.ndim - 1))
        body = lambda module, carry, xi: (carry, fn(module, xi))  # noqa: E731
        scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, length=n)
        _, out = scan(self, None, padded.reshape(n, chunk_size, *x.shape[1:]))
        return jax.tree_util.tree_map(lambda y: y.reshape(n * chunk_size, *y.shape[2:])[:b], out)

    def encode(self, x: Array, chunk_size: int | None = None) -> tuple[Array, Array]:
        """``x: (B, H, W, C_img)`` -> ``(mean, logvar)``, each ``(B, floor(H/f), floor(W/f), L)``."""
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ConfigError(f"images must be NHWC (B, H, W, {cfg.in_channels}) for vae.in_channels="
                              f"{cfg.in_channels}, got shape {x.shape}")
        return self._in_chunks(AutoencoderKL._encode, x, chunk_size)

    def decode(self, z: Array, chunk_size: int | None = None) -> Array:
        """``z: (B, h, w, L)`` (the unnormalised latent) -> images ``(B, f h, f w, C_out)``."""
        cfg = self.config
        if z.ndim != 4 or z.shape[-1] != cfg.latent_channels:
            raise ConfigError(f"latents must be NHWC (B, h, w, {cfg.latent_channels}) for vae.latent_channels="
                              f"{cfg.latent_channels}, got shape {z.shape}")
        return self._in_chunks(AutoencoderKL._decode, z, chunk_size)

    def __call__(self, x: Array) -> tuple[Array, Array, Array]:
        mean, logvar = self.encode(x)
        return self.decode(mean), mean, logvar


# ------------------------------------------------------------------------------------------------
# Latents: pure functions of arrays and the config


def normalize_latents(z: Array, cfg: VAEConfig) -> Array:
    """What the diffusion model sees: ``(z - shift_factor) * scaling_factor`` (no shift when it is None)."""
    return (z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor


def denormalize_latents(z_model: Array, cfg: VAEConfig) -> Array:
    """The inverse of ``normalize_latents``: ``z_model / scaling_factor + shift_factor``, the decoder's input."""
    return z_model / cfg.scaling_factor + (cfg.shift_factor or 0.0)


def sample_latents(mean: Array, logvar: Array, key: Array) -> Array:
    """A draw from the posterior ``N(mean, exp(logvar))``: ``mean + exp(logvar / 2) * eps``."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


# ------------------------------------------------------------------------------------------------
# Shapes without memory


def abstract_variables(cfg: VAEConfig) -> Any:
    """Shapes and dtypes of ``AutoencoderKL(cfg).init`` via ``jax.eval_shape`` (nothing allocated)."""
    x = jax.ShapeDtypeStruct((1, cfg.downscale, cfg.downscale, cfg.in_channels), jnp.float32)
    return jax.eval_shape(AutoencoderKL(cfg).init, jax.random.PRNGKey(0), x)


def count_params(cfg: VAEConfig) -> int:
    """Number of parameters of the autoencoder for ``cfg``, counted from abstract shapes."""
    return num_parameters(abstract_variables(cfg)["params"])
