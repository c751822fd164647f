"""Attention in memory linear in the sequence length: ``softmax(q k^T / sqrt(d)) v`` over chunks of queries and keys.

The algorithm of Rabe & Staats, "Self-attention does not need O(n^2) memory" (2021), which is also the
forward pass of flash attention: a loop over query chunks, inside it a loop over key chunks that keeps, per query,
a running maximum ``m``, a running sum ``l`` of ``exp(s - m)`` and a running ``sum exp(s - m) v``, all in float32,
rescaled whenever a new chunk raises the maximum. The largest intermediate is one ``(B H, query_chunk, key_chunk)``
tile of scores, so memory grows with ``L`` (inputs, outputs, gradients), never ``L^2``; it is meant for video
models whose thousands of tokens make the dense ``(B, H, L, L)`` probabilities too big to keep.

Two gradients, the same maths (both tested against autodiff of ``jax.nn.dot_product_attention``):

* ``custom_gradient=False`` (default): autodiff through the two ``lax.scan`` loops, each loop body wrapped in
  ``jax.checkpoint`` as in the paper, so the backward pass stores no score tile, only the per-chunk loop carries.
  Forward-mode autodiff (``jax.jvp``) works.
* ``custom_gradient=True``: a ``jax.custom_vjp`` with flash attention's backward pass: the forward keeps only the
  output and each query's score maximum and exponential sum; the backward recomputes each score tile once and
  forms ``dq, dk, dv`` from it. Fewer products than the rematerialised autodiff (which recomputes the forward
  loop, then each tile again) and the CPU default in the MMDiT; no forward-mode autodiff.

Layout: ``q: (B, L_q, H, d)``, ``k, v: (B, L_k, H, d)`` (that of ``jax.nn.dot_product_attention``); inside, the heads
are moved in front once (``(B H, L, d)``) so every tile product is a plain batched matrix product.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Default chunk sizes (upper bounds: ``_chunking`` balances the chunks so padding stays below one row per chunk).
# A score tile is B*H x 256 x 512 float32, 512 KiB per head and batch element. Forward + backward with the
# custom_vjp at L = 4096, B = 1, H = 2, d = 64 on a 2-core AMD EPYC: 128 x 256 223 ms, 256 x 256 191 ms,
# 256 x 512 121 ms, 512 x 512 108 ms, 1024 x 1024 102 ms: smaller tiles pay per loop iteration, larger ones gain
# little more while their memory (the constant part of the total) grows 2-8x. More:
# experiments/benchmarks/RESULTS.md, "Linear-memory attention on CPU".
QUERY_CHUNK = 256
KEY_CHUNK = 512

# The score given to a key that ``key_mask`` excludes: finite, so a chunk whose keys are all excluded gives
# exp(s - m) = 1, not exp(-inf + inf) = NaN; the next chunk with an attended key raises m and the rescaling
# exp(m_old - m_new) = 0 clears those terms exactly. A query whose keys are all excluded thus averages v over the
# L_k keys, with zero gradient wrt q and k, as jax.nn.dot_product_attention does. Padding keys get -inf: they never
# count, not even then, so the result does not depend on the chunking (the first key chunk always holds real
# keys, so the running maximum is finite from the first chunk on).
_MASKED = float(np.finfo(np.float32).min)

_barrier = jax.lax.optimization_barrier  # XLA does not fold a transpose across it


def _chunking(length: int, chunk: int) -> tuple[int, int]:
    """``(count, size)`` of the chunks covering ``length``: ``count = ceil(length / chunk)`` chunks of equal size
    ``ceil(length / count) <= chunk``, so ``count * size - length < count`` rows are padding (SD3's 1357 tokens at
    256: 6 chunks of 227, 5 rows of padding, not 179)."""
    count = max(1, math.ceil(length / max(1, chunk)))
    return count, math.ceil(length / count)


def _to_chunks(x: Array, count: int, size: int) -> Array:
    """``(B, L, H, d)`` -> ``(count, B H, size, d)`` float32, zero-padded at the end of the sequence."""
    b, length, h, d = x.shape
    x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, count * size - length), (0, 0), (0, 0)))
    return jnp.moveaxis(jnp.swapaxes(x, 1, 2).reshape(b * h, count, size, d), 1, 0)


def _from_chunks(o: Array, b: int, length: int, h: int) -> Array:
    """``(count, B H, size, d)`` -> ``(B, L, H, d)``: the padded query rows sliced off."""
    count, _, size, d = o.shape
    o = jnp.moveaxis(o, 0, 1).reshape(b, h, count * size, d)[:, :, :length]
    return jnp.swapaxes(o, 1, 2)


def _scores(q: Array, k: Array, fill: Array | None) -> Array:
    """One tile of scores: ``q: (G, cq, d)`` (already scaled), ``k: (G, ck, d)``, ``fill: (G, ck) | None`` ->
    ``(G, cq, ck)`` float32. ``fill`` is 0 where the key is attended, else the score the key gets instead
    (``_MASKED`` or -inf; a select, not an addition, so no gradient reaches an excluded key's score)."""
    s = jnp.einsum("gqd,gkd->gqk", q, k)
    return s if fill is None else jnp.where(fill[:, None, :] == 0, s, fill[:, None, :])


def _key_step(q: Array, carry: tuple[Array, Array, Array],
              chunk: tuple[Array, Array, Array | None]) -> tuple[tuple[Array, Array, Array], None]:
    """Fold one key chunk into the running ``(m (G, cq), l (G, cq), acc (G, cq, d))`` of the query chunk ``q``."""
    m, l, acc = carry
    k, v, fill = chunk
    s = _scores(q, k, fill)
    # The result does not depend on m (it cancels between numerator and denominator), so no gradient flows
    # through it: autodiff then never differentiates the max, nor exp(m_old - m_new), whose m_old is -inf at the
    # first chunk.
    m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(s, axis=-1)))
    correction = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[..., None])
    l = l * correction + jnp.sum(p, axis=-1)
    acc = acc * correction[..., None] + jnp.einsum("gqk,gkd->gqd", p, v)
    return (m_new, l, acc), None


def _query_chunk(q: Array, k: Array, v: Array, fill: Array | None, remat: bool) -> tuple[Array, Array, Array]:
    """Attention of one query chunk ``q: (G, cq, d)`` (scaled) over all key chunks ``k, v: (nk, G, ck, d)``,
    ``fill: (nk, G, ck) | None`` -> ``(o (G, cq, d), m (G, cq), l (G, cq))``: the output, the scores' maximum and
    ``sum exp(s - m)``."""
    g, cq, d = q.shape
    step = functools.partial(_key_step, q)
    if remat:  # the backward pass recomputes each tile instead of keeping the (G, cq, L) probabilities
        step = jax.checkpoint(step, prevent_cse=False)
    init = (jnp.full((g, cq), -jnp.inf, jnp.float32), jnp.zeros((g, cq), jnp.float32),
            jnp.zeros((g, cq, d), jnp.float32))
    (m, l, acc), _ = jax.lax.scan(step, init, (k, v, fill))
    return acc / l[..., None], m, l


def _forward(q: Array, k: Array, v: Array, fill: Array | None, remat: bool) -> tuple[Array, Array, Array]:
    """All query chunks: ``q: (nq, G, cq, d)`` -> ``(o (nq, G, cq, d), m (nq, G, cq), l (nq, G, cq))``."""
    body = functools.partial(_query_chunk, k=k, v=v, fill=fill, remat=remat)
    if remat:  # the backward pass keeps only each query chunk's input, not its key loop's carries
        body = jax.checkpoint(body, prevent_cse=False)
    return jax.lax.map(body, q)


# ------------------------------------------------------------------------------- hand-written (flash) gradient
def _transposed_product(a: Array, b: Array) -> Array:
    """``a^T b`` per batch entry: ``a: (G, N, M)``, ``b: (G, N, d)`` -> ``(G, M, d)``, as ``(b^T a)^T``. Why: XLA:CPU
    sends a product contracting the first non-batch axis of both operands to its slow generic dot; a library product
    of the materialised, d-wide ``b^T`` is faster (models/custom_gradients.py)."""
    return jnp.swapaxes(_barrier(jnp.einsum("gdn,gnm->gdm", _barrier(jnp.swapaxes(b, 1, 2)), a)), 1, 2)


@jax.custom_vjp
def _flash(q: Array, k: Array, v: Array, fill: Array | None) -> Array:
    """``o (nq, G, cq, d)`` of scaled chunked ``q: (nq, G, cq, d)``, ``k, v: (nk, G, ck, d)``."""
    return _forward(q, k, v, fill, remat=False)[0]


def _flash_fwd(q: Array, k: Array, v: Array, fill: Array | None) -> tuple[Array, tuple[Array, ...]]:
    o, m, l = _forward(q, k, v, fill, remat=False)
    # m and 1/l, not the log-sum-exp m + log(l): where every key of a query is excluded, m = _MASKED absorbs log(l).
    return o, (q, k, v, fill, o, m, 1.0 / l)


def _flash_bwd(res: tuple[Array, ...], do: Array) -> tuple[Array, Array, Array, None]:
    # Per tile, with p = exp(s - m) / l the probabilities and D = rowsum(do * o) = rowsum(p * dp):
    #   dv += p^T do,   dp = do v^T,   ds = p (dp - D),   dq += ds k,   dk += ds^T q
    # (q is already scaled, so dq here is the gradient wrt the scaled q; the caller's chain rule applies 1/sqrt(d)).
    # Queries outside, keys inside: dq of a query chunk is the inner loop's carry, dk and dv come out per key chunk
    # and are summed over query chunks in the outer carry; every buffer is O(L).
    q, k, v, fill, o, m, r = res
    delta = jnp.sum(do * o, axis=-1)  # (nq, G, cq)

    def key_step(qc, doc, mc, rc, deltac, dq, chunk):
        kc, vc, fillc = chunk
        p = jnp.exp(_scores(qc, kc, fillc) - mc[..., None]) * rc[..., None]
        dv = _transposed_product(p, doc)
        ds = p * (jnp.einsum("gqd,gkd->gqk", doc, vc) - deltac[..., None])
        if fillc is not None:  # excluded keys' scores are constants (p > 0 there only if a query excludes all keys)
            ds = jnp.where(fillc[:, None, :] == 0, ds, 0.0)
        return dq + jnp.einsum("gqk,gkd->gqd", ds, kc), (_transposed_product(ds, qc), dv)

    def query_step(dkv, chunk):
        qc, doc, mc, rc, deltac = chunk
        dq, (dk, dv) = jax.lax.scan(functools.partial(key_step, qc, doc, mc, rc, deltac), jnp.zeros_like(qc),
                                    (k, v, fill))
        return (dkv[0] + dk, dkv[1] + dv), dq

    (dk, dv), dq = jax.lax.scan(query_step, (jnp.zeros_like(k), jnp.zeros_like(v)), (q, do, m, r, delta))
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ------------------------------------------------------------------------------------------------- public API
def chunked_attention(q: Array, k: Array, v: Array, key_mask: Array | None = None, *,
                      query_chunk: int = QUERY_CHUNK, key_chunk: int = KEY_CHUNK,
                      custom_gradient: bool = False) -> Array:
    """``softmax(q k^T / sqrt(d)) v`` with memory linear in the sequence length.

    ``q: (B, L_q, H, d)``, ``k, v: (B, L_k, H, d)``, ``key_mask: (B, L_k) bool | None`` (False: the key is padding,
    attended by no query; a query left with no key averages v, as ``jax.nn.dot_product_attention`` does) ->
    ``(B, L_q, H, d)`` in ``q``'s dtype. Computed in float32 whatever the input dtype.

    ``query_chunk``, ``key_chunk``: upper bounds on the chunk sizes (``_chunking`` makes the chunks equal and the
    padding minimal; padded keys are masked, padded queries sliced off); the largest intermediate is one
    ``(B H, query_chunk, key_chunk)`` float32 score tile, in the forward and in the backward pass.
    ``custom_gradient``: the flash-attention backward as a ``jax.custom_vjp`` (fewer products; no ``jax.jvp``)
    instead of autodiff through rematerialised loops (module docstring). Values and gradients equal
    ``jax.nn.dot_product_attention``'s to float32 rounding (tested).
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    if key_mask is not None and key_mask.shape != (b, lk):
        raise ValueError(f"key_mask must have shape (B, L_k) = {(b, lk)}, got {key_mask.shape}")
    nq, cq = _chunking(lq, query_chunk)
    nk, ck = _chunking(lk, key_chunk)
    # The scale goes on q (B L d values), not on the scores (B L L).
    qs = _to_chunks(q, nq, cq) * np.float32(1.0 / math.sqrt(d))
    ks, vs = _to_chunks(k, nk, ck), _to_chunks(v, nk, ck)
    fill = None  # per key: 0 attended, _MASKED excluded by key_mask, -inf padding (see _MASKED)
    if key_mask is not None or nk * ck != lk:
        fill = jnp.zeros((b, lk), jnp.float32)
        if key_mask is not None:
            fill = jnp.where(key_mask.astype(bool), fill, _MASKED)
        fill = jnp.pad(fill, ((0, 0), (0, nk * ck - lk)), constant_values=-jnp.inf)
        fill = jnp.moveaxis(jnp.repeat(fill, h, axis=0).reshape(b * h, nk, ck), 1, 0)  # (nk, B H, ck), g = b H + h
    if custom_gradient:
        o = _flash(qs, ks, vs, fill)
    else:
        o = _forward(qs, ks, vs, fill, remat=True)[0]
    return _from_chunks(o, b, lq, h).astype(q.dtype)
