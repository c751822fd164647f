"""Building blocks shared by the MMDiT and the text encoders: norms, modulation, MLPs, attention.

Norm statistics are computed in float32 whatever the compute dtype (as torch does for LayerNorm and as
diffusers' RMSNorm does), then cast back.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError
from mmdit_jax.models.chunked_attention import chunked_attention
from mmdit_jax.models.custom_gradients import attention, attention_core, bias_gelu_tanh, linear

Array = jax.Array
Dtype = Any

# The values of ``model.attention_impl`` besides None (attention_backend).
ATTENTION_IMPLS = ("xla", "cudnn", "einsum", "einsum_vjp", "chunked")


def _product(x: Array, kernel: Array, custom_gradient: bool) -> Array:
    return linear(x, kernel) if custom_gradient else jnp.dot(x, kernel)


class Dense(nn.Module):
    """``y = x W + b`` over the last axis, computed on a 2-D ``(prod(leading), d_in)`` view.

    Same parameters (``kernel (d_in, d_out)``, ``bias``) and initialisers as ``flax.linen.Dense``. Why not that:
    XLA:CPU differentiates a ``(B, N, D)`` contraction much more slowly than the same product on ``(B*N, D)``
    (measurements: experiments/benchmarks/RESULTS.md), and the train step is dominated by these products.
    ``custom_gradient``: the product is ``custom_gradients.linear`` (no forward-mode autodiff).
    """

    features: int
    use_bias: bool = True
    custom_gradient: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        y = _product(x.reshape(-1, x.shape[-1]).astype(self.dtype), kernel.astype(self.dtype), self.custom_gradient)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(self.dtype)
        return y.reshape(x.shape[:-1] + (self.features,))


class DenseParams(nn.Module):
    """The parameters of a ``Dense`` (``kernel (d_in, d_out)``, ``bias``) without the product, for fused products."""

    features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, d_in: int) -> tuple[Array, Array]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (d_in, self.features), self.param_dtype)
        return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)


def einsum_attention(streams: Sequence[tuple[Array, Array, Array]], custom_gradient: bool = False,
                     groups: int = 1) -> list[Array]:
    """Joint attention ``softmax(q k^T / sqrt(d)) v`` over streams concatenated along the sequence, as batched
    products over the flattened ``(B*H)`` heads. ``streams``: ``[(q_s, k_s, v_s)]``, each ``(B, L_s, H, d)``
    (SD3: image tokens, then context tokens) -> ``[o_s (B, L_s, H, d)]``.

    Numerically the same as ``jax.nn.dot_product_attention`` on the concatenation (tested); its autodiff gradient
    is faster on XLA:CPU. ``custom_gradient=True`` uses ``custom_gradients.attention_core`` (faster still on CPU,
    and the CPU default; gradients tested against autodiff of ``jax.nn.dot_product_attention``). Which path runs:
    ``attention_backend``. The streams are joined inside each group's heads-first copy and split again from its
    output, so no concatenated ``(B, L, H, d)`` buffer exists (nor, in the backward, its gradient).

    ``groups``: the ``B*H`` heads are split into this many independent computations. Why: XLA:CPU runs a batched
    product on one core (YNNPACK threads within a matrix, not over the batch, and for attention-sized matrices
    a second core adds little), so one group leaves the other cores idle through the attention core;
    independent groups run concurrently. Where ``groups <= B`` a group is whole batch elements (its heads-first copy
    reads its own part of q, k, v: no slice pass per group), else a contiguous run of heads; sizes differ by at most
    one batch element (head) (experiments/benchmarks/RESULTS.md). The result does not depend on ``groups``.
    Splits use ``lax.split``: its gradient is one concatenation, indexing's a zero-padded sum per part.
    """
    b, _, h, d = streams[0][0].shape
    lengths = [s[0].shape[1] for s in streams]
    core = attention_core if custom_gradient else attention

    def heads_first(parts: Sequence[Array]) -> Array:  # [(b', L_s, H, d)] -> (b' H, L, d)
        a = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        return jnp.swapaxes(a, 1, 2).reshape(-1, a.shape[1], d)

    def heads_last(o: Array) -> list[Array]:  # (b' H, L, d) -> [(b', L_s, H, d)]
        o = jnp.swapaxes(o.reshape(-1, h, o.shape[1], d), 1, 2)
        return jax.lax.split(o, lengths, axis=1)

    parts = min(groups, b * h)
    if parts <= b:
        sizes = [b * (i + 1) // parts - b * i // parts for i in range(parts)]
        split = [[jax.lax.split(a, sizes) for a in s] for s in streams]  # [stream][q, k, v][group]
        outs = [heads_last(core(*(heads_first([part[t][g] for part in split]) for t in range(3))))
                for g in range(parts)]
    else:
        q, k, v = (heads_first([s[t] for s in streams]) for t in range(3))
        bounds = [b * h * i // parts for i in range(parts + 1)]
        outs = [heads_last(jnp.concatenate([core(q[i:j], k[i:j], v[i:j]) for i, j in zip(bounds[:-1], bounds[1:])]))]
    return [jnp.concatenate([o[s] for o in outs]) if len(outs) > 1 else outs[0][s] for s in range(len(streams))]


def padded_dot_product_attention(q: Array, k: Array, v: Array, implementation: str | None,
                                 multiple: int = 64) -> Array:
    """``jax.nn.dot_product_attention`` over a sequence zero-padded to a multiple of ``multiple``, the padding
    masked out by sequence lengths and sliced off again: exactly the unpadded result. ``q, k, v: (B, N, H, d)``.

    Why: cuDNN's flash kernel refuses to train on odd lengths, and SD3's joint sequence is 1024 + 333 = 1357;
    the XLA fallback stores the (B, H, N, N) probabilities of every layer (tens of GiB at SD3-medium size).
    """
    b, n = q.shape[:2]
    pad = -n % multiple
    if pad == 0:
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    q, k, v = (jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))) for a in (q, k, v))
    lengths = jnp.full((b,), n, jnp.int32)
    o = jax.nn.dot_product_attention(q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                                     implementation=implementation)
    return o[:, :n]


def attention_backend(impl: str | None, dtype: Any, head_dim: int, custom_gradient: bool = True) -> str:
    """The attention path ``model.attention_impl`` names; None picks per platform: einsum on a CPU, with the
    hand-written gradient unless ``custom_gradient`` is False (the fastest train step there; measurements in
    experiments/benchmarks/RESULTS.md), cuDNN flash attention on an NVIDIA GPU in bf16/fp16 with a head dim it
    supports (JAX's own None still means the O(N^2)-memory XLA path), XLA elsewhere.

    "chunked" (``chunked_attention``: memory linear in the sequence length, for sequences whose ``(B, H, L, L)``
    probabilities do not fit) is never picked by None, whose choices are the train-step paths measured fastest at
    image lengths.
    Raises ConfigError for a name not in ``ATTENTION_IMPLS``."""
    if impl is not None:
        if impl not in ATTENTION_IMPLS:
            raise ConfigError(f"model.attention_impl={impl!r} is not valid; choose None (picked per platform) or "
                              f"one of {list(ATTENTION_IMPLS)}")
        return impl
    platform = jax.default_backend()
    if platform == "cpu":
        return "einsum_vjp" if custom_gradient else "einsum"
    if platform in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 \
            and head_dim <= 128:
        return "cudnn"
    return "xla"


def backend_attention(q: Array, k: Array, v: Array, backend: str, custom_gradient: bool = False,
                      groups: int = 1) -> Array:
    """``softmax(q k^T / sqrt(d)) v`` on the path ``backend`` names (one of ``ATTENTION_IMPLS``; ``attention_backend``
    resolves None): ``q: (B, L_q, H, d)``, ``k, v: (B, L_k, H, d)`` -> ``(B, L_q, H, d)``. The one dispatch every
    model's attention can route through. ``custom_gradient``: 'chunked' with its flash-attention ``custom_vjp``
    (no ``jax.jvp``) instead of autodiff; ``groups``: the einsum paths' head groups (``einsum_attention``)."""
    if backend == "cudnn":
        return padded_dot_product_attention(q, k, v, "cudnn")
    if backend == "chunked":
        return chunked_attention(q, k, v, custom_gradient=custom_gradient)
    if backend in ("einsum", "einsum_vjp"):
        return einsum_attention([(q, k, v)], custom_gradient=backend == "einsum_vjp", groups=groups)[0]
    return jax.nn.dot_product_attention(q, k, v, implementation=backend)


def layer_norm(x: Array, eps: float = 1e-6) -> Array:
    """Affine-free LayerNorm over the last axis: two-pass biased variance, eps inside the sqrt."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """adaLN modulation ``x (1 + scale) + shift``; ``x: (B, N, D)``, ``shift, scale: (B, D)``."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * scale`` over the last axis (learned ``scale``; diffusers' ``weight``)."""

    eps: float = 1e-6
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(x.dtype)


class FeedForward(nn.Module):
    """``W2 gelu_tanh(W1 u + b1) + b2`` with hidden width ``mult * D`` (diffusers ``gelu-approximate``).
    ``custom_gradient``: products and GELU from ``custom_gradients`` (no forward-mode autodiff)."""

    mult: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    custom_gradient: bool = False

    @nn.compact
    def __call__(self, u: Array) -> Array:
        dense = lambda n, name: Dense(n, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                      custom_gradient=self.custom_gradient, name=name)
        if self.custom_gradient:  # bias and GELU in one pass (custom_gradients.bias_gelu_tanh)
            kernel, bias = DenseParams(self.mult * u.shape[-1], self.param_dtype, name="proj_in")(u.shape[-1])
            z = linear(u.reshape(-1, u.shape[-1]).astype(self.dtype), kernel.astype(self.dtype))
            h = bias_gelu_tanh(z, bias.astype(self.dtype)).reshape(u.shape[:-1] + (-1,))
        else:
            h = jax.nn.gelu(dense(self.mult * u.shape[-1], "proj_in")(u), approximate=True)
        return dense(u.shape[-1], "proj_out")(h)


class Attention(nn.Module):
    """Multi-head attention of the image stream, optionally joint with a context stream.

    Joint (SD3): ``Q = [q(x); q'(c)]`` etc. concatenated along the sequence, image tokens first; one softmax
    over all ``N + T`` keys; outputs split back and projected per stream. Optional per-head RMS QK-norm.
    ``x: (B, N, D)``, ``c: (B, T, D)`` -> ``(B, N, D), (B, T, D) | None``.
    """

    num_heads: int
    head_dim: int
    qk_norm: bool = False
    joint: bool = False
    context_out: bool = True
    attention_impl: str | None = None
    head_groups: int = 1                  # einsum paths only: see einsum_attention
    custom_gradient: bool = False         # projections: custom_gradients.linear; attention=None: einsum_vjp on CPU;
                                          # attention 'chunked': its flash-attention custom_vjp
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _qkv(self, names: tuple[str, str, str], norms: tuple[str, str], u: Array) -> tuple[Array, Array, Array]:
        """The three projections as one ``(B*N, D) x (D, 3 H d)`` product (parameters stay per projection), then
        the QK-norms ``norms`` on q and k."""
        width = self.num_heads * self.head_dim
        params = [DenseParams(width, self.param_dtype, name=n)(u.shape[-1]) for n in names]
        kernel = jnp.concatenate([p[0] for p in params], axis=1).astype(self.dtype)
        bias = jnp.concatenate([p[1] for p in params]).astype(self.dtype)
        out = _product(u.reshape(-1, u.shape[-1]).astype(self.dtype), kernel, self.custom_gradient) + bias
        out = out.reshape(u.shape[:2] + (3, self.num_heads, self.head_dim))  # contiguous head blocks
        # lax.split, not indexing: its gradient is one concatenation (indexing's is three zero-padded sums,
        # which XLA:CPU runs as three passes over the (B*N, 3 H d) gradient).
        q, k, v = jax.lax.split(out, (1, 1, 1), axis=2)
        return self._norm(norms[0], q[:, :, 0]), self._norm(norms[1], k[:, :, 0]), v[:, :, 0]

    def _norm(self, name: str, u: Array) -> Array:
        return RMSNorm(param_dtype=self.param_dtype, name=name)(u) if self.qk_norm else u

    @nn.compact
    def __call__(self, x: Array, c: Array | None = None) -> tuple[Array, Array | None]:
        streams = [self._qkv(("to_q", "to_k", "to_v"), ("norm_q", "norm_k"), x)]
        if self.joint:
            streams.append(self._qkv(("add_q_proj", "add_k_proj", "add_v_proj"), ("norm_added_q", "norm_added_k"), c))
        lengths = [s[0].shape[1] for s in streams]
        joined = lambda t: jnp.concatenate([s[t] for s in streams], axis=1)  # noqa: E731  (q, k, v: t = 0, 1, 2)
        if self.is_mutable_collection("attention"):  # inspection only (models/introspection.py); free otherwise
            q, k = joined(0), joined(1)
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(self.head_dim)
            self.sow("attention", "weights", jax.nn.softmax(logits, axis=-1))
        backend = attention_backend(self.attention_impl, self.dtype, self.head_dim, self.custom_gradient)
        if backend in ("einsum", "einsum_vjp"):  # per stream: no concatenated (B, N + T, H, d) copies
            outs = einsum_attention(streams, custom_gradient=backend == "einsum_vjp", groups=self.head_groups)
        else:
            q, k, v = joined(0), joined(1), joined(2)
            if backend == "cudnn":
                q, k, v = (a.astype(self.dtype) for a in (q, k, v))
            # 'chunked': the flash backward where hand-written gradients are on (no jax.jvp), else autodiff.
            o = backend_attention(q, k, v, backend, custom_gradient=self.custom_gradient)
            outs = jax.lax.split(o, lengths, axis=1)
        dense = lambda name: Dense(x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                   custom_gradient=self.custom_gradient, name=name)
        flat = [o.reshape(o.shape[:2] + (self.num_heads * self.head_dim,)) for o in outs]
        out_x = dense("to_out")(flat[0])
        out_c = dense("to_add_out")(flat[1]) if self.joint and self.context_out else None
        return out_x, out_c
