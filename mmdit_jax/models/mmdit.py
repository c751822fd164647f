"""The SD3 / SD3.5 multimodal diffusion transformer (maths: docs/mmdit.md §1), as Flax Linen modules.

    tokens  = PatchEmbed(x) + crop(pos_table)                         x: (B, H, W, C) -> (B, N, D)
    y       = e_t + h_y  (e_t = MLP(timestep features), h_y = MLP(pooled));  y = e_t without the pooled path
    c       = context_embedder(context)                               (B, T, d_ctx) -> (B, T, D)
    (x, c)  = JointBlock_i(x, c, y), i = 0 .. L-1 (the last block is context-pre-only)
    out     = unpatchify(proj_out(modulate(LN(x), shift, scale)))   -> (B, H, W, C_out)

Variables: ``params`` (trainable) and ``buffers`` (the position table, loaded from checkpoints, never trained).
``y`` and its interventions (pooled removal, steering, skipped blocks) are ``models/conditioning.py``'s.

The image stream (``models/image_stream.py``) may carry clean token groups after the target's N tokens; the output
is always read from the first N. In-context editing passes a clean ``reference (B, H', W', C)`` image, embedded like
``x`` as frame 1: ``ref_tokens = PatchEmbed(ref) + crop(pos_table) + e(1) - e(0)`` (``embeddings.frame_offsets``).

Video: ``x: (B, T, H, W, C)`` is patched over ``(p_t, p, p)`` (``temporal_patch_size`` frames; with ``p_t = 1``
the image patch embedding applied per frame) into ``tau = T / p_t`` frames of ``h w`` tokens, one sequence with
the text; positions are factorised, ``pos(f, r, c) = pos_2d(r, c) + e(f) - e(0)`` (``embeddings.frame_offsets``),
so frame 0 is the image model's and a one-frame clip is an image. ``context_frames (B, T_c, H, W, C)``, clean
previous frames, join the stream at frames ``0 .. T_c/p_t - 1``; the noisy clip then starts at frame ``T_c/p_t``
(frame-by-frame generation); the output is the noisy clip's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.models.conditioning import Interventions, check_conditioning, conditioning_vector
from mmdit_jax.models.custom_gradients import custom_gradients_on
from mmdit_jax.models.embeddings import (
    crop_position_table, frame_offset_embedding, frame_offsets, sincos_2d_table, unpatchify, unpatchify_clip,
)
from mmdit_jax.models.image_stream import TokenGroup, image_stream
from mmdit_jax.models.layers import ATTENTION_IMPLS, Dense, Attention, FeedForward, layer_norm, modulate
from mmdit_jax.models.numerics import DTYPES, REMAT_POLICIES, check_numerics
from mmdit_jax.checks import ConfigError, check_choice, check_keys, check_positive_int

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MMDiTConfig:
    """Architecture and numerics. ``hidden = num_heads * head_dim``; the context projection width is ``hidden``."""

    patch_size: int = 2
    temporal_patch_size: int = 1             # video: frames per patch (1: the image patch embedding per frame)
    in_channels: int = 16
    out_channels: int = 16
    num_layers: int = 24
    num_heads: int = 24
    head_dim: int = 64
    joint_attention_dim: int = 4096          # width of the text tokens c
    pooled_projection_dim: int = 2048        # width of the pooled text vector
    use_pooled: bool = True                  # False: y = e_t, no h_y parameters (the CLIP-removal ablation)
    pos_embed_max_size: int = 192
    sample_size: int = 128                   # latent size the position table's frequencies are based on
    qk_norm: str | None = None               # None | "rms_norm"
    dual_attention_layers: tuple[int, ...] = ()
    mlp_ratio: int = 4
    dtype: str = "float32"                   # compute dtype
    param_dtype: str = "float32"
    remat: bool = False                      # rematerialise each block in the backward pass
    remat_policy: str = "full"               # with remat: what each block keeps (numerics.REMAT_POLICIES)
    scan_blocks: bool = False                # nn.scan over runs of identical blocks (stacked params)
    scan_unroll: int = 1                     # blocks per scan iteration (lets XLA schedule across blocks)
    attention_impl: str | None = None        # None (per platform: layers.attention_backend) | one of ATTENTION_IMPLS
                                             # ("chunked": linear memory in the sequence length, for long clips)
    attention_head_groups: int = 4           # einsum attention: the B*H heads as this many concurrent groups
    custom_gradients: bool | None = None     # hand-written gradients (models/custom_gradients.py); None: on a CPU

    @property
    def hidden(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def from_dict(cls, d: Any) -> "MMDiTConfig":
        d = dict(d)
        check_keys("model", d, {f.name for f in dataclasses.fields(cls)})
        if "dual_attention_layers" in d:
            d["dual_attention_layers"] = tuple(int(i) for i in d["dual_attention_layers"])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in ("patch_size", "temporal_patch_size", "in_channels", "out_channels", "num_layers", "num_heads", "head_dim",
                  "joint_attention_dim", "pos_embed_max_size", "sample_size", "mlp_ratio", "scan_unroll",
                  "attention_head_groups"):
            check_positive_int(f"model.{f}", getattr(self, f))
        if self.use_pooled:
            check_positive_int("model.pooled_projection_dim", self.pooled_projection_dim)
        check_choice("model.qk_norm", str(self.qk_norm), ("None", "rms_norm"))
        check_numerics(self, ATTENTION_IMPLS)
        if not (self.custom_gradients is None or isinstance(self.custom_gradients, bool)):
            raise ConfigError(f"model.custom_gradients={self.custom_gradients!r} is not valid; choose None (on a CPU "
                              "only), True or False")
        if self.custom_gradients is False and self.attention_impl == "einsum_vjp":
            raise ConfigError("model.attention_impl='einsum_vjp' is the hand-written attention gradient, which "
                              "model.custom_gradients=False rules out; choose None or 'einsum'")
        bad = [i for i in self.dual_attention_layers if not 0 <= i < self.num_layers - 1]
        if bad:
            raise ConfigError(f"model.dual_attention_layers {bad} must lie in [0, num_layers - 1 = {self.num_layers - 1})")

    def block_module(self) -> type[nn.Module]:
        """``JointBlock``, rematerialised under ``remat_policy`` when ``remat`` is on."""
        return nn.remat(JointBlock, policy=REMAT_POLICIES[self.remat_policy]) if self.remat else JointBlock

    def block_groups(self) -> list[tuple[int, int, bool]]:
        """Runs ``(start, stop, dual)`` of identical blocks among layers ``0 .. L-2`` (scanned together)."""
        groups: list[tuple[int, int, bool]] = []
        for i in range(self.num_layers - 1):
            dual = i in self.dual_attention_layers
            if groups and groups[-1][2] == dual:
                groups[-1] = (groups[-1][0], i + 1, dual)
            else:
                groups.append((i, i + 1, dual))
        return groups


class JointBlock(nn.Module):
    """One MMDiT block (docs/mmdit.md §1.4): adaLN-Zero on both streams, joint attention, gated residuals, MLPs.

    ``x: (B, N, D)``, ``c: (B, T, D)``, ``y: (B, D)`` -> ``(x, c)`` (``c`` unchanged if context-pre-only).
    """

    config: MMDiTConfig
    context_pre_only: bool = False
    dual: bool = False

    @nn.compact
    def __call__(self, x: Array, c: Array, y: Array) -> tuple[Array, Array]:
        cfg = self.config
        dtype, pdtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        d = cfg.hidden
        dense = lambda n, name: Dense(n, dtype=dtype, param_dtype=pdtype, name=name)  # noqa: E731
        act = nn.silu(y)
        mods = jnp.split(dense((9 if self.dual else 6) * d, "norm1")(act), 9 if self.dual else 6, axis=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:6]
        u = layer_norm(x)
        n1 = modulate(u, shift_msa, scale_msa)
        if self.context_pre_only:
            scale_c, shift_c = jnp.split(dense(2 * d, "norm1_context")(act), 2, axis=-1)  # diffusers: scale first
            m1 = modulate(layer_norm(c), shift_c, scale_c)
        else:
            c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = jnp.split(
                dense(6 * d, "norm1_context")(act), 6, axis=-1)
            m1 = modulate(layer_norm(c), c_shift_msa, c_scale_msa)
        custom = custom_gradients_on(cfg.custom_gradients)
        attn = dict(num_heads=cfg.num_heads, head_dim=cfg.head_dim, qk_norm=cfg.qk_norm == "rms_norm",
                    attention_impl=cfg.attention_impl, head_groups=cfg.attention_head_groups,
                    custom_gradient=custom, dtype=dtype, param_dtype=pdtype)
        attn_x, attn_c = Attention(joint=True, context_out=not self.context_pre_only, name="attn", **attn)(n1, m1)
        x = x + gate_msa[:, None] * attn_x
        if self.dual:  # SD3.5 MMDiT-X: image-only attention on the same LN output, second modulation
            shift_msa2, scale_msa2, gate_msa2 = mods[6:]
            x = x + gate_msa2[:, None] * Attention(name="attn2", **attn)(modulate(u, shift_msa2, scale_msa2))[0]
        ff = dict(mult=cfg.mlp_ratio, custom_gradient=custom, dtype=dtype, param_dtype=pdtype)
        x = x + gate_mlp[:, None] * FeedForward(name="ff", **ff)(modulate(layer_norm(x), shift_mlp, scale_mlp))
        if not self.context_pre_only:
            c = c + c_gate_msa[:, None] * attn_c
            c = c + c_gate_mlp[:, None] * FeedForward(name="ff_context", **ff)(
                modulate(layer_norm(c), c_shift_mlp, c_scale_mlp))
        return x, c


class _ScanBody(nn.Module):
    """``nn.scan`` body: one block, bypassed where ``skip`` is true (skip-layer guidance inside a scan)."""

    config: MMDiTConfig
    dual: bool

    @nn.compact
    def __call__(self, carry: tuple[Array, Array], y: Array, skip: Array) -> tuple[tuple[Array, Array], None]:
        block = self.config.block_module()
        x, c = carry
        nx, nc = block(self.config, dual=self.dual, name="block")(x, c, y)
        return (jnp.where(skip, x, nx), jnp.where(skip, c, nc)), None


class MMDiT(nn.Module):
    """``(x: (B, H, W, C), timestep: (B,), context: (B, T, d_ctx), pooled: (B, d_pool) | None) -> (B, H, W, C_out)``;
    a clip ``x: (B, F, H, W, C)`` gives ``(B, F, H, W, C_out)`` (``context_frames``: see the module docstring).

    ``timestep`` is in the model's own units (SD3: ``1000 t``). ``reference: (B, H', W', C)``: the clean image of
    in-context editing, joining the image stream as frame 1 (``models/image_stream.py``).

    ``y = e_t + h_y(pooled)`` (``models/conditioning.py``). ``interventions`` (``Interventions``): ``remove_pooled``
    (``y = e_t``; pooled may be None), ``pooled_steering = (p+, p-, w)`` (``y += w (h_y(p+) - h_y(p-))``),
    ``skip_layers`` (static: those blocks are bypassed). The same switches as keywords
    (``remove_pooled=True`` ...) build the same ``Interventions``.
    """

    config: MMDiTConfig

    def _check_latents(self, x: Array) -> None:
        """``x``: an image or clip of ``in_channels`` whose patch grid fits the position table."""
        cfg, p, pt = self.config, self.config.patch_size, self.config.temporal_patch_size
        if x.ndim not in (4, 5) or x.shape[-1] != cfg.in_channels:
            raise ConfigError(f"x must be an image (B, H, W, {cfg.in_channels}) or a clip (B, T, H, W, "
                              f"{cfg.in_channels}) for model.in_channels={cfg.in_channels}, got shape {x.shape}")
        if x.ndim == 4 and pt != 1:
            raise ConfigError(f"model.temporal_patch_size={pt} patches clips (B, T, H, W, C); images need 1")
        if x.ndim == 5 and x.shape[1] % pt:
            raise ConfigError(f"a clip of {x.shape[1]} frames is not divisible by model.temporal_patch_size={pt}")
        height, width = x.shape[-3:-1]
        if height % p or width % p:
            raise ConfigError(f"x spatial size {height}x{width} is not divisible by model.patch_size={p}")
        m = cfg.pos_embed_max_size
        if height // p > m or width // p > m:
            raise ConfigError(f"x spatial size {height}x{width} gives a {height // p}x{width // p} patch grid, larger "
                              f"than the position table (model.pos_embed_max_size={m} patches per side)")

    def _check_inputs(self, x: Array, context: Array, pooled: Array | None, interventions: Interventions) -> None:
        cfg = self.config
        self._check_latents(x)
        if context.ndim != 3 or context.shape[-1] != cfg.joint_attention_dim:
            raise ConfigError(f"context must be (B, T, {cfg.joint_attention_dim}) for model.joint_attention_dim="
                              f"{cfg.joint_attention_dim}, got shape {context.shape}")
        check_conditioning(interventions, pooled, None, x.shape[0], cfg.pooled_projection_dim,
                           has_pooled=cfg.use_pooled, pooled_switch="model.use_pooled")

    @nn.compact
    def __call__(self, x: Array, timestep: Array, context: Array, pooled: Array | None = None,
                 interventions: Interventions | None = None, *, reference: Array | None = None,
                 context_frames: Array | None = None, **switches: Any) -> Array:
        cfg = self.config
        interventions = Interventions.merge(interventions, **switches)
        self._check_inputs(x, context, pooled, interventions)
        groups = image_stream(x, reference, context_frames, cfg.temporal_patch_size)
        for group in groups[1:]:
            self._check_latents(group.latents)
        dtype, pdtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        d, p, pt = cfg.hidden, cfg.patch_size, cfg.temporal_patch_size
        b = x.shape[0]
        height, width = x.shape[-3:-1]
        h, w = height // p, width // p
        dense = lambda n, name: Dense(n, dtype=dtype, param_dtype=pdtype, name=name)  # noqa: E731

        # Patch embedding + the centre-cropped sin-cos position table (a buffer: loaded, never trained).
        kernel = (pt, p, p) if pt > 1 else (p, p)
        patch_embed = nn.Conv(d, kernel, strides=kernel, padding="VALID", dtype=dtype, param_dtype=pdtype,
                              name="patch_embed")
        m = cfg.pos_embed_max_size
        # A host callback: abstract initialisation (eval_shape) skips it and a jitted init does not embed the table
        # (0.9 GB at SD3.5-medium size) as a constant.
        table = self.variable("buffers", "pos_embed", lambda: jax.pure_callback(
            lambda: sincos_2d_table(d, m, cfg.sample_size // p)[None],
            jax.ShapeDtypeStruct((1, m * m, d), jnp.float32))).value

        def embed(group: TokenGroup) -> Array:
            """``(B, [T,] H, W, C)`` -> ``(B, [T/p_t] h w, D)`` tokens at frames ``group.frame ..``. A clip's frame
            offsets are folded into its positions before they are added, an image's are added after them (frame 0
            adds nothing): the orders of summation the models were trained with."""
            latents, frame = group
            if latents.ndim == 5:
                frames = latents.shape[1] // pt
                patches = patch_embed(latents.astype(dtype)) if pt > 1 else \
                    patch_embed(latents.reshape(-1, *latents.shape[2:]).astype(dtype))
                pos = crop_position_table(table, h, w)[:, None] + jnp.asarray(frame_offsets(d, frames, frame))[:, None]
                return (patches.reshape(b, frames, h * w, d) + pos.astype(dtype)).reshape(b, frames * h * w, d)
            gh, gw = latents.shape[1] // p, latents.shape[2] // p
            tokens = patch_embed(latents.astype(dtype)).reshape(b, gh * gw, d) + \
                crop_position_table(table, gh, gw).astype(dtype)
            return tokens + jnp.asarray(frame_offset_embedding(d, frame), dtype) if frame else tokens

        streams = [embed(g) for g in groups]
        n_out = streams[0].shape[1]
        tokens = jnp.concatenate(streams, axis=1) if len(streams) > 1 else streams[0]

        y = conditioning_vector(jnp.broadcast_to(jnp.asarray(timestep), (b,)), pooled, hidden=d, dtype=dtype,
                                param_dtype=pdtype, has_pooled=cfg.use_pooled, pooled_dim=cfg.pooled_projection_dim,
                                interventions=interventions, initializing=self.is_initializing())
        c = dense(d, "context_embedder")(context.astype(dtype))

        skip = frozenset(interventions.skip_layers)
        if cfg.scan_blocks:
            for start, stop, dual in cfg.block_groups():
                scan = nn.scan(_ScanBody, variable_axes={"params": 0}, split_rngs={"params": True},
                               in_axes=(nn.broadcast, 0), length=stop - start,
                               unroll=min(cfg.scan_unroll, stop - start))
                mask = jnp.asarray([i in skip for i in range(start, stop)])
                (tokens, c), _ = scan(cfg, dual, name=f"scan_{start}_{stop}")((tokens, c), y, mask)
        else:
            block = cfg.block_module()
            for i in range(cfg.num_layers - 1):
                module = block(cfg, dual=i in cfg.dual_attention_layers, name=f"transformer_blocks_{i}")
                if i not in skip or self.is_initializing():
                    tokens, c = module(tokens, c, y)
        last = cfg.num_layers - 1
        last_block = cfg.block_module()(
            cfg, context_pre_only=True, name=f"transformer_blocks_{last}")
        if last not in skip or self.is_initializing():
            tokens, _ = last_block(tokens, c, y)

        scale, shift = jnp.split(dense(2 * d, "norm_out")(nn.silu(y)), 2, axis=-1)  # diffusers: scale first
        out = dense(pt * p * p * cfg.out_channels, "proj_out")(modulate(layer_norm(tokens[:, :n_out]), shift, scale))
        if x.ndim == 5:
            return unpatchify_clip(out, n_out // (h * w), h, w, pt, p, cfg.out_channels)
        return unpatchify(out, h, w, p, cfg.out_channels)
