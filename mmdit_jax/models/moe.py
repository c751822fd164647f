"""SwiGLU feed-forwards and HiDream's (DeepSeek-V3 style) mixture of experts, computed densely.

    SwiGLU(u) = W_2 (silu(W_1 u) * W_3 u)                              no biases; hidden width F
    F(h)      = 256 ceil(floor(2 h / 3) / 256)                          (h = 4 D: the nominal MLP width)

Mixture over ``E`` routed experts and one shared expert (hidden ``F(2 D)``), per token ``u``:

    s = softmax(W_g u)                           (E,)  gate without bias
    (w, i) = top_k(s)                            k of E, weights not renormalised
    MoE(u) = sum_{j<k} w_j SwiGLU_{i_j}(u) + SwiGLU_shared(u)

Computed densely: every expert runs on every token and ``c_e = sum_j w_j [i_j = e]`` (zero for unselected
experts) weights the expert outputs, ``sum_e c_e SwiGLU_e(u)``. The same sum as the routed scatter/gather of
diffusers' ``moe_infer`` (zeros add nothing), at ``E / k`` times the expert FLOPs, with static shapes (no
sorting or per-expert token counts) so it jits, scans and shards like a dense layer. Since ``W_2`` is linear, the
weights ``c_e`` are applied to the hidden activations and one ``(E F) -> D`` contraction sums the experts.

Parity note: torch and JAX pick the same experts in float32; in bfloat16 near-tied gate scores may flip a choice.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.models.layers import Dense

Array = jax.Array
Dtype = Any


def swiglu_hidden(hidden: int, multiple_of: int = 256) -> int:
    """``F(h) = multiple_of * ceil(floor(2 h / 3) / multiple_of)`` (diffusers' ``HiDreamImageFeedForwardSwiGLU``)."""
    f = int(2 * hidden / 3)
    return multiple_of * ((f + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """``W_2 (silu(W_1 u) * W_3 u)`` with hidden width ``hidden`` (already ``F(h)``); ``(..., D) -> (..., D)``."""

    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, u: Array) -> Array:
        dense = lambda n, name: Dense(n, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                      name=name)
        return dense(u.shape[-1], "w2")(nn.silu(dense(self.hidden, "w1")(u)) * dense(self.hidden, "w3")(u))


def router(logits: Array, top_k: int) -> tuple[Array, Array, Array]:
    """``(scores (.., E), combine (.., E), top_indices (.., k))`` from gate logits ``(.., E)``: softmax scores,
    the top-k scores scattered back to their experts (``c_e`` of the module docstring), and the chosen experts."""
    scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top_w, top_i = jax.lax.top_k(scores, top_k)
    combine = jnp.einsum("...k,...ke->...e", top_w, jax.nn.one_hot(top_i, logits.shape[-1], dtype=scores.dtype))
    return scores, combine, top_i


def load_balancing_loss(scores: Array, top_indices: Array, alpha: float = 0.01) -> Array:
    """DeepSeek's expert-level balance loss (diffusers' ``MoEGate`` in training, ``seq_aux=False``):
    ``alpha sum_e P_e f_e``, ``P_e`` the mean score of expert ``e`` over all tokens, ``f_e = E * (fraction of the
    top-k choices that picked e)``. ``scores (.., E)``, ``top_indices (.., k)`` as ``router`` returns them."""
    e = scores.shape[-1]
    frac = jnp.mean(jax.nn.one_hot(top_indices.reshape(-1), e, dtype=jnp.float32), axis=0)
    return alpha * jnp.sum(jnp.mean(scores.reshape(-1, e), axis=0) * frac * e)


class MoEFeedForward(nn.Module):
    """Dense top-k mixture (module docstring): ``u (B, N, D) -> (B, N, D)``.

    Parameters (diffusers' names): ``gate/kernel (D, E)``; ``experts/w1, w3 (E, D, F)``, ``experts/w2 (E, F, D)``
    (the routed experts stacked); ``shared_experts/w{1,2,3}`` a ``SwiGLU``. When the ``router`` collection is
    mutable the gate's ``scores`` and ``top_indices`` are sown there (for ``load_balancing_loss``)."""

    num_experts: int
    top_k: int
    hidden: int                  # F of a routed expert
    shared_hidden: int           # F of the shared expert
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, u: Array) -> Array:
        d, e, f = u.shape[-1], self.num_experts, self.hidden
        logits = Dense(e, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name="gate")(u)
        scores, combine, top_i = router(logits, self.top_k)
        if self.is_mutable_collection("router"):
            self.sow("router", "scores", scores)
            self.sow("router", "top_indices", top_i)
        w1, w2, w3 = _Experts(e, d, f, self.param_dtype, name="experts")()
        x = u.astype(self.dtype)
        h = nn.silu(jnp.einsum("bnd,edf->bnef", x, w1.astype(self.dtype))) \
            * jnp.einsum("bnd,edf->bnef", x, w3.astype(self.dtype))
        h = h * combine.astype(self.dtype)[..., None]
        routed = jnp.einsum("bnef,efd->bnd", h, w2.astype(self.dtype))
        return routed + SwiGLU(self.shared_hidden, self.dtype, self.param_dtype, name="shared_experts")(u)


class _Experts(nn.Module):
    """The stacked routed-expert kernels ``w1, w3 (E, D, F)``, ``w2 (E, F, D)``."""

    num_experts: int
    dim: int
    hidden: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> tuple[Array, Array, Array]:
        init = nn.initializers.lecun_normal(batch_axis=(0,))
        e, d, f = self.num_experts, self.dim, self.hidden
        shapes = {"w1": (e, d, f), "w2": (e, f, d), "w3": (e, d, f)}
        return tuple(self.param(n, init, shape, self.param_dtype) for n, shape in shapes.items())
