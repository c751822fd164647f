"""The SD3 / SD3.5 multimodal diffusion transformer (maths: docs/mmdit.md §1), as Flax Linen modules.

    tokens  = PatchEmbed(x) + crop(pos_table)                         x: (B, H, W, C) -> (B, N, D)
    y       = e_t + h_y  (e_t = MLP(timestep features), h_y = MLP(pooled));  y = e_t without the pooled path
    c       = context_embedder(context)                               (B, T, d_ctx) -> (B, T, D)
    (x, c)  = JointBlock_i(x, c, y), i = 0 .. L-1 (the last block is context-pre-only)
    out     = unpatchify(proj_out(modulate(LN(x), shift, scale)))   -> (B, H, W, C_out)

Variables: ``params`` (trainable) and ``buffers`` (the position table, loaded from checkpoints, never trained).
The image stream may carry extra token groups after the N patch tokens; the output is always read from the first
N tokens. In-context editing passes a clean ``reference (B, H', W', C)`` image, embedded like ``x`` and marked as
frame 1 (``embeddings.frame_offset_embedding``): ``ref_tokens = PatchEmbed(ref) + crop(pos_table) + e(1) - e(0)``.

Video: ``x: (B, T, H, W, C)`` is patched over ``(p_t, p, p)`` (``temporal_patch_size`` frames; with ``p_t = 1``
the image patch embedding applied per frame) into ``tau = T / p_t`` frames of ``h w`` tokens, one sequence with
the text; positions are factorised, ``pos(f, r, c) = pos_2d(r, c) + e(f) - e(0)`` (``embeddings.frame_offsets``),
so frame 0 is the image model's and a one-frame clip is an image. ``context_frames (B, T_c, H, W, C)``, clean
previous frames, join the stream at frames ``0 .. T_c/p_t - 1``; the noisy clip then starts at frame ``T_c/p_t``
(frame-by-frame generation); the output is the noisy clip's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.models.embeddings import (
    MLPEmbedder, crop_position_table, frame_offset_embedding, frame_offsets, sincos_2d_table, timestep_features,
    unpatchify, unpatchify_clip,
)
from mmdit_jax.models.custom_gradients import custom_gradients_on
from mmdit_jax.models.layers import ATTENTION_IMPLS, Dense, Attention, FeedForward, layer_norm, modulate
from mmdit_jax.models.numerics import DTYPES, REMAT_POLICIES
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
        check_choice("model.dtype", self.dtype, DTYPES)
        check_choice("model.param_dtype", self.param_dtype, DTYPES)
        check_choice("model.remat_policy", self.remat_policy, REMAT_POLICIES)
        if self.attention_impl is not None and self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"model.attention_impl={self.attention_impl!r} is not valid; choose None (picked per "
                              f"platform) or one of {list(ATTENTION_IMPLS)}")
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

    ``timestep`` is in the model's own units (SD3: ``1000 t``). ``skip_layers`` (static) bypasses those blocks.
    ``extra_tokens: (B, M, D)`` are appended to the image stream after the N patch tokens (already embedded,
    e.g. a clean reference image through the same patch embedding); the output is read from the first N.
    ``reference: (B, H', W', C)`` is such a group made here: the clean image of in-context editing as frame 1.

    The conditioning vector (the pooled-CLIP study, docs/pooled_clip_study.md):

        y = e_t + h_y(pooled)                                        (default)
        y = e_t                                                      (``remove_pooled=True``; pooled may be None)
        y = e_t + h_y(pooled) + w (h_y(pooled_plus) - h_y(pooled_minus))   (``pooled_steering``)

    ``pooled_steering = (pooled_plus (B, d_pool), pooled_minus (B, d_pool), w (B,) or scalar)`` is
    ŷ(p, p+, p-, t) = y(p, t) + w (y(p+, t) - y(p-, t)): e_t cancels in the difference. No new parameters,
    so it applies to any MMDiT with the pooled path, converted checkpoints included. w = 0 is the original y.
    """

    config: MMDiTConfig

    def _check_inputs(self, x: Array, context: Array, pooled: Array | None, remove_pooled: bool = False,
                      pooled_steering: Any = None) -> None:
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
        if context.ndim != 3 or context.shape[-1] != cfg.joint_attention_dim:
            raise ConfigError(f"context must be (B, T, {cfg.joint_attention_dim}) for model.joint_attention_dim="
                              f"{cfg.joint_attention_dim}, got shape {context.shape}")
        if remove_pooled and not cfg.use_pooled:
            # Removing a path the model does not have would silently sample the unchanged model.
            raise ConfigError("remove_pooled=True on a model without a pooled path (model.use_pooled=False: y = e_t "
                              "already); remove_pooled applies to models with model.use_pooled=True")
        uses_pooled = cfg.use_pooled and not remove_pooled
        if uses_pooled and (pooled is None or pooled.shape != (x.shape[0], cfg.pooled_projection_dim)):
            raise ConfigError(f"pooled must be (B, {cfg.pooled_projection_dim}) for model.pooled_projection_dim="
                              f"{cfg.pooled_projection_dim}, got {None if pooled is None else pooled.shape}")
        if pooled_steering is not None:
            if not uses_pooled:
                raise ConfigError("pooled_steering needs the pooled path: model.use_pooled=True and remove_pooled=False")
            if len(pooled_steering) != 3:
                raise ConfigError("pooled_steering must be (pooled_plus, pooled_minus, w)")
            for name, v in zip(("pooled_plus", "pooled_minus"), pooled_steering[:2]):
                if v.shape != (x.shape[0], cfg.pooled_projection_dim):
                    raise ConfigError(f"pooled_steering {name} must be (B, {cfg.pooled_projection_dim}), got {v.shape}")

    @nn.compact
    def __call__(self, x: Array, timestep: Array, context: Array, pooled: Array | None = None,
                 skip_layers: Sequence[int] = (), extra_tokens: Array | None = None, remove_pooled: bool = False,
                 pooled_steering: tuple[Array, Array, Array] | None = None, reference: Array | None = None,
                 context_frames: Array | None = None) -> Array:
        cfg = self.config
        self._check_inputs(x, context, pooled, remove_pooled, pooled_steering)
        if reference is not None:
            self._check_inputs(reference, context, pooled, remove_pooled, pooled_steering)
        video = x.ndim == 5
        if context_frames is not None:
            if not video or context_frames.ndim != 5 or context_frames.shape[0] != x.shape[0] or \
                    context_frames.shape[2:] != x.shape[2:]:
                raise ConfigError(f"context_frames must be clean frames (B, T_c, H, W, C) of the clip x {x.shape}, "
                                  f"got {context_frames.shape}")
            if reference is not None:
                raise ConfigError("context_frames (frame-by-frame video) and reference (editing) cannot be combined")
            self._check_inputs(context_frames, context, pooled, remove_pooled, pooled_steering)
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

        def embed_clip(clip: Array, first_frame: int) -> Array:
            """``(B, T, H, W, C)`` -> ``(B, T/p_t h w, D)`` tokens at frames ``first_frame ..``."""
            frames = clip.shape[1] // pt
            patches = patch_embed(clip.astype(dtype)) if pt > 1 else \
                patch_embed(clip.reshape(-1, *clip.shape[2:]).astype(dtype))
            pos = crop_position_table(table, h, w)[:, None] + jnp.asarray(frame_offsets(d, frames, first_frame))[:, None]
            return (patches.reshape(b, frames, h * w, d) + pos.astype(dtype)).reshape(b, frames * h * w, d)

        num_context = 0 if context_frames is None else context_frames.shape[1] // pt
        if video:
            tokens = embed_clip(x, num_context)
            n_out = tokens.shape[1]
            if context_frames is not None:
                tokens = jnp.concatenate([tokens, embed_clip(context_frames, 0)], axis=1)
        else:
            tokens = patch_embed(x.astype(dtype)).reshape(b, h * w, d) + crop_position_table(table, h, w).astype(dtype)
            n_out = h * w
        if reference is not None:    # the clean image to edit, as frame 1 (its own positions, never noised)
            _, ref_h, ref_w, _ = reference.shape
            ref = patch_embed(reference.astype(dtype)).reshape(b, (ref_h // p) * (ref_w // p), d)
            ref = ref + crop_position_table(table, ref_h // p, ref_w // p).astype(dtype) \
                + jnp.asarray(frame_offset_embedding(d, 1), dtype)
            tokens = jnp.concatenate([tokens, ref], axis=1)
        if extra_tokens is not None:  # any further token group: (B, M, D)
            if extra_tokens.ndim != 3 or extra_tokens.shape[0] != b or extra_tokens.shape[-1] != d:
                raise ConfigError(f"extra_tokens must be (B={b}, M, D={d}), got {extra_tokens.shape}")
            tokens = jnp.concatenate([tokens, extra_tokens.astype(dtype)], axis=1)

        # Conditioning vector y = e_t + h_y (or e_t alone in the CLIP-removal ablation), optionally steered.
        t_feat = timestep_features(jnp.broadcast_to(jnp.asarray(timestep), (b,))).astype(dtype)
        y = MLPEmbedder(d, dtype, pdtype, name="timestep_embedder")(t_feat)
        if cfg.use_pooled and (not remove_pooled or self.is_initializing()):
            h_y = MLPEmbedder(d, dtype, pdtype, name="text_embedder")
            y = y + h_y(pooled.astype(dtype))
            if pooled_steering is not None:
                plus, minus, weight = pooled_steering
                weight = jnp.broadcast_to(jnp.asarray(weight, dtype), (b,))
                y = y + weight[:, None] * (h_y(plus.astype(dtype)) - h_y(minus.astype(dtype)))
        c = dense(d, "context_embedder")(context.astype(dtype))

        skip = frozenset(int(i) for i in skip_layers)
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
        if video:
            return unpatchify_clip(out, n_out // (h * w), h, w, pt, p, cfg.out_channels)
        return unpatchify(out, h, w, p, cfg.out_channels)
