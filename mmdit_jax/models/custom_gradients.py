"""Functions with hand-written reverse-mode gradients: the same maths as autodiff, in the forms XLA:CPU runs fastest.

Each is a ``jax.custom_vjp``: values and gradients equal autodiff of the plain function (tested), but forward-mode
autodiff (``jax.jvp``, which the sliced score matching loss needs) is not defined for them. Models choose them with
``model.custom_gradients`` (``custom_gradients_on``: None means on a CPU only).

Why they are faster on XLA:CPU (measurements: experiments/benchmarks/RESULTS.md): XLA sends a product that
contracts the first non-batch axis of *both* operands (``x^T dy``, ``p^T do``) to its generic dot runtime, which
is slower than the YNNPACK library product of a materialised transpose (or of the transposed problem); XLA folds
a plain transpose back into the product, so an ``optimization_barrier`` separates them; a weight gradient
transposes the narrower of its two operands. The tanh-GELU takes the product's bias with it
(``bias_gelu_tanh``: one pass over the ``(M, 4D)`` hidden layer instead of a bias-add pass and a GELU pass) and keeps
only its input for the backward pass instead of XLA's several intermediates.

Shapes: ``x: (M, d_in)``, ``kernel: (d_in, d_out)``; attention over a flat batch of heads ``q: (G, N, d)``,
``k, v: (G, M, d)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def custom_gradients_on(flag: bool | None) -> bool:
    """``model.custom_gradients``: True / False as given; None picks them on a CPU (where they are faster)."""
    return flag if flag is not None else jax.default_backend() == "cpu"


_barrier = jax.lax.optimization_barrier  # XLA does not fold a transpose across it


# ----------------------------------------------------------------------------------------------------- x W
@jax.custom_vjp
def linear(x: Array, kernel: Array) -> Array:
    """``y = x W``: ``(M, d_in) x (d_in, d_out) -> (M, d_out)``; gradients ``dx = dy W^T``, ``dW = (x^T) dy``
    (computed as ``((dy^T) x)^T`` where ``d_in > d_out``)."""
    return jnp.dot(x, kernel)


def _linear_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return jnp.dot(x, kernel), (x, kernel)


def _linear_bwd(res: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    x, kernel = res
    if x.shape[1] > dy.shape[1]:  # transpose the narrower operand: (dy^T x)^T, two small transposes, not x^T
        dkernel = _barrier(jnp.dot(_barrier(dy.T), x)).T
    else:
        dkernel = jnp.dot(_barrier(x.T), dy)
    if dkernel.dtype != jnp.float32:
        # Rounded to the kernel's dtype in every program: XLA would fold a following upcast (where the kernel
        # was cast from float32) into the product in some programs and not in others.
        dkernel = _barrier(dkernel)
    return jnp.dot(dy, kernel.T), dkernel


linear.defvjp(_linear_fwd, _linear_bwd)


# ------------------------------------------------------------------------------------------------ tanh-GELU
_C = np.float32(np.sqrt(2.0 / np.pi))
_A = np.float32(0.044715)


def _gelu_tanh(h: Array) -> Array:
    """``gelu_tanh(h) = 0.5 h (1 + t)``, ``t = tanh(c (h + a h^3))``, ``c = sqrt(2/pi)``, ``a = 0.044715``: the value of
    ``jax.nn.gelu(approximate=True)`` (to float32 rounding) with its constants folded: fewer operations per
    element, which matters on a CPU core, where this pass is compute-bound."""
    c, ca = (np.float32(k).astype(h.dtype) for k in (_C, _C * _A))
    return h * (0.5 + 0.5 * jnp.tanh(h * (c + ca * (h * h))))


def _gelu_tanh_derivative(h: Array) -> Array:
    """Derivative of ``gelu_tanh``: ``0.5 (1 + t) + 0.5 c h (1 - t^2) (1 + 3 a h^2)``, t recomputed from h."""
    c, ca, half_c, three_a = (np.float32(k).astype(h.dtype) for k in (_C, _C * _A, 0.5 * _C, 3 * _A))
    h2 = h * h
    t = jnp.tanh(h * (c + ca * h2))
    return 0.5 + 0.5 * t + half_c * h * (1 - t * t) * (1 + three_a * h2)


@jax.custom_vjp
def bias_gelu_tanh(z: Array, bias: Array) -> Array:
    """``gelu_tanh(z + b)`` for a product's output ``z: (M, F)`` and its bias ``b: (F,)``, in one pass. The only
    residual is the product's output itself (no stored ``z + b`` or tanh); the backward recomputes them."""
    return _gelu_tanh(z + bias)


def _bias_gelu_tanh_fwd(z: Array, bias: Array) -> tuple[Array, tuple[Array, Array]]:
    return _gelu_tanh(z + bias), (z, bias)


def _bias_gelu_tanh_bwd(res: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    z, bias = res
    dh = dy * _gelu_tanh_derivative(_barrier(z) + bias)  # the barrier: XLA would share z + b with the forward
    return dh, jnp.sum(dh, axis=0)


bias_gelu_tanh.defvjp(_bias_gelu_tanh_fwd, _bias_gelu_tanh_bwd)


# ------------------------------------------------------------------------------------------------ attention
def probabilities(q: Array, k: Array) -> Array:
    """``softmax(q k^T / sqrt(d))`` over keys, in float32; ``q: (G, N, d)``, ``k: (G, M, d)`` -> ``(G, N, M)``."""
    logits = jnp.einsum("gqd,gkd->gqk", q, k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)


def attention(q: Array, k: Array, v: Array) -> Array:
    """``softmax(q k^T / sqrt(d)) v`` over a flat batch: ``q: (G, N, d)``, ``k, v: (G, M, d)`` -> ``(G, N, d)``."""
    return jnp.einsum("gqk,gkd->gqd", probabilities(q, k), v)


def _transposed_product(a: Array, b: Array) -> Array:
    """``a^T b`` per batch entry: ``a: (G, N, M)``, ``b: (G, N, d)`` -> ``(G, M, d)``, as ``(b^T a)^T``: a library
    product of the materialised ``b^T: (G, d, N)``, its ``(G, d, M)`` result transposed after the barrier (both
    transposes are of the small, d-wide operands)."""
    return jnp.swapaxes(_barrier(jnp.einsum("gdn,gnm->gdm", _barrier(jnp.swapaxes(b, 1, 2)), a)), 1, 2)


attention_core = jax.custom_vjp(attention)


def _attention_core_fwd(q: Array, k: Array, v: Array) -> tuple[Array, tuple[Array, ...]]:
    # o = (e v) / l with e = exp(s - rowmax s) unnormalised and l = rowsum(e): the 1/l goes on the (G, N, d) output,
    # not the (G, N, M) probabilities (one pass over them fewer); e and 1/l are the residuals.
    qs = q / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))  # the scale on the (G, N, d) q, not the (G, N, M) logits
    s = jnp.einsum("gqd,gkd->gqk", qs, k).astype(jnp.float32)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    r = (1.0 / jnp.sum(e, axis=-1, keepdims=True)).astype(q.dtype)
    e = e.astype(q.dtype)
    return jnp.einsum("gqk,gkd->gqd", e, v) * r, (qs, k, v, e, r)


def _attention_core_bwd(res: tuple[Array, ...], do: Array) -> tuple[Array, Array, Array]:
    # The textbook gradient as four (G, ., .) products, with q_s = q / sqrt(d) and p = e r (r = 1 / l):
    # dv = p^T do = e^T (do r), dp = do v^T, ds = p (dp - rowsum(dp p)) = e r (dp - r rowsum(dp e)),
    # dq = ds k / sqrt(d), dk = ds^T q_s. XLA's own derivative of the einsums transposes operands and runs slower.
    qs, k, v, e, r = res
    dv = _transposed_product(e, do * r)
    dp = jnp.einsum("gqd,gkd->gqk", do, v)
    ds = (e * r) * (dp - r * jnp.sum(dp * e, axis=-1, keepdims=True))
    dq = jnp.einsum("gqk,gkd->gqd", ds, k) / jnp.sqrt(jnp.asarray(qs.shape[-1], qs.dtype))
    return dq, _transposed_product(ds, qs), dv


attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)
