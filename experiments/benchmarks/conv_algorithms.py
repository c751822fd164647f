"""Do fewer-multiply 3x3 convolutions (Winograd) speed up the VAE decoder's convolutions under XLA on this host?

The autoencoder's decode is dominated by 3x3 convolutions that XLA already runs near the host's fp32 matmul peak
(``sd3_pipeline.py``), so a faster decode needs fewer multiplies per output. Winograd's minimal filtering
F(m, 3) computes m outputs of a 3-tap filter with m + 2 multiplies instead of 3m:

    Y = A^T [ (G g) * (B^T d) ]        d: m + 2 inputs, g: 3 taps, *: elementwise

(2-D: F(m x m, 3 x 3) = the same transform along both axes, (m + 2)^2 products per m^2 outputs). The input
and output transforms are additions over copies of the activation, so they trade multiplies for memory traffic.
Measured here, on the decoder's convolution shapes, against ``lax.conv_general_dilated``:

- ``f2x2``: F(2x2, 3x3), 2.25x fewer multiplies, transformed input 4x the activation;
- ``f4x4``: F(4x4, 3x3), 4x fewer multiplies, transformed input 2.25x the activation (points 0, +-1, +-2);
- ``f4_w``: 1-D F(4, 3) along the width only, the three rows as one 3x1 XLA convolution per transformed plane:
  2x fewer multiplies, transformed input 1.5x the activation.

The Winograd-domain products are written as 1x1 (or 3x1) convolutions, XLA:CPU's fast path: the same products
as one batched ``dot_general`` ran at a third of the convolution's rate here. Also measured: the host's
streaming bandwidth (``y = 2x + 1`` over 64 MB, bytes read + written per second), what the transforms are
bound by. Each variant's largest |difference| from XLA's convolution, relative to max |XLA|, is reported too.

Run: ``python experiments/benchmarks/conv_algorithms.py [--repeats 9]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmarks.common import append_results, matmul_peak, parse_args  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")
# (B^T, G, A^T) of F(2, 3) and F(4, 3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks").
WINOGRAD = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])),
}
# The decoder's 3x3 convolutions of the benchmark VAE (block_out_channels (64, 128, 128, 128), 256 x 256 out):
# (H = W, C_in, C_out, how many per decode).
SHAPES = ((256, 128, 64, 1), (256, 64, 64, 5), (128, 128, 128, 6), (64, 128, 128, 6))


def combine(terms: list[jax.Array], coeffs: np.ndarray) -> jax.Array:
    """``sum_j coeffs[j] terms[j]``, skipping zeros (the transforms are sparse small-integer matrices)."""
    out = None
    for c, t in zip(coeffs, terms):
        if c != 0:
            t = t if c == 1 else -t if c == -1 else t * np.float32(c)
            out = t if out is None else out + t
    return out


def xla_conv(x: jax.Array, k: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


def winograd_2d(x: jax.Array, k: jax.Array, m: int) -> jax.Array:
    """F(m x m, 3 x 3) over ``(B, H, W, C)`` (H, W divisible by m), kernel ``(3, 3, C, F)``, zero padding 1."""
    bt, g, at = WINOGRAD[m]
    a = m + 2
    b, h, w, _ = x.shape
    th, tw = h // m, w // m
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = [xp[:, j:j + m * th:m] for j in range(a)]                   # tile row j of every tile: (B, th, W+2, C)
    u = jnp.einsum("ki,ijcf,lj->klcf", jnp.asarray(g, jnp.float32), k, jnp.asarray(g, jnp.float32))
    prod = []
    for p in range(a):
        vr = combine(rows, bt[p])
        cols = [vr[:, :, j:j + m * tw:m] for j in range(a)]             # (B, th, tw, C)
        prod.append([jax.lax.conv_general_dilated(combine(cols, bt[q]), u[p, q][None, None], (1, 1), "VALID",
                                                  dimension_numbers=DN) for q in range(a)])
    out = []
    for r in range(m):
        mr = [combine([prod[p][q] for p in range(a)], at[r]) for q in range(a)]
        out.append(jnp.stack([combine(mr, at[s]) for s in range(m)], axis=3))    # (B, th, tw, m, F)
    return jnp.stack(out, axis=2).reshape(b, h, w, k.shape[-1])


def winograd_w(x: jax.Array, k: jax.Array, m: int = 4) -> jax.Array:
    """1-D F(m, 3) along the width; the three kernel rows are a 3x1 convolution of each transformed plane."""
    bt, g, at = WINOGRAD[m]
    a = m + 2
    b, h, w, _ = x.shape
    tw = w // m
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = [xp[:, :, j:j + m * tw:m] for j in range(a)]                 # (B, H+2, tw, C)
    u = jnp.einsum("kj,rjcf->rkcf", jnp.asarray(g, jnp.float32), k)     # (3, a, C, F)
    prod = [jax.lax.conv_general_dilated(combine(cols, bt[p]), u[:, p][:, None], (1, 1), "VALID",
                                         dimension_numbers=DN) for p in range(a)]
    y = jnp.stack([combine(prod, at[s]) for s in range(m)], axis=3)     # (B, H, tw, m, F)
    return y.reshape(b, h, w, k.shape[-1])


VARIANTS = {"xla": xla_conv, "f2x2": lambda x, k: winograd_2d(x, k, 2), "f4x4": lambda x, k: winograd_2d(x, k, 4),
            "f4_w": winograd_w}
MULTIPLIES = {"xla": 1.0, "f2x2": 16 / 36, "f4x4": 36 / 144, "f4_w": 6 / 12}


def stream_bandwidth(repeats: int) -> float:
    """Bytes read + written per second by ``y = 2x + 1`` over 64 MB of float32."""
    x = jnp.ones((16 << 20,), jnp.float32)
    f = jax.jit(lambda x: x * 2 + 1)
    f(x).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * x.nbytes / float(np.median(times))


def main(repeats: int) -> None:
    peak = matmul_peak(jnp.float32)
    bandwidth = stream_bandwidth(repeats)
    rows, totals = [], {n: 0.0 for n in VARIANTS}
    for size, c_in, c_out, count in SHAPES:
        kx, kk = jax.random.split(jax.random.PRNGKey(size + c_in))
        x = jax.random.normal(kx, (1, size, size, c_in), jnp.float32)
        k = jax.random.normal(kk, (3, 3, c_in, c_out), jnp.float32) / np.sqrt(9 * c_in)
        fns = {n: jax.jit(f) for n, f in VARIANTS.items()}
        ref = fns["xla"](x, k)
        err = {n: float(jnp.max(jnp.abs(f(x, k) - ref)) / jnp.max(jnp.abs(ref))) for n, f in fns.items()}
        times = {n: [] for n in fns}
        for _ in range(repeats):                                        # interleaved, so drift hits all alike
            for n, f in fns.items():
                start = time.perf_counter()
                f(x, k).block_until_ready()
                times[n].append(time.perf_counter() - start)
        med = {n: float(np.median(t)) for n, t in times.items()}
        flops = 2 * size * size * 9 * c_in * c_out
        for n in fns:
            totals[n] += count * med[n]
        cells = " | ".join(f"{med[n] * 1e3:.1f} ms ({med['xla'] / med[n]:.2f}x; err {err[n]:.0e})"
                           for n in fns if n != "xla")
        rows.append(f"| {size}² {c_in}→{c_out} (x{count}) | {med['xla'] * 1e3:.1f} ms "
                    f"({flops / med['xla'] / 1e9:.0f} GFLOP/s) | {cells} |")
    names = [n for n in VARIANTS if n != "xla"]
    header = ("| 3x3 convolution, batch 1 | XLA conv | " + " | ".join(
        f"{n} ({MULTIPLIES[n]:.2f} of the multiplies)" for n in names) + " |\n|---|---|" + "---|" * len(names))
    total = (f"| all of the decoder's | {totals['xla'] * 1e3:.0f} ms | "
             + " | ".join(f"{totals[n] * 1e3:.0f} ms ({totals['xla'] / totals[n]:.2f}x)" for n in names) + " |")
    table = (f"XLA fp32 matmul peak {peak / 1e9:.0f} GFLOP/s; streaming bandwidth {bandwidth / 1e9:.1f} GB/s "
             f"(read + write). Medians of {repeats} interleaved calls, float32; err = max |variant − XLA| / max "
             f"|XLA|.\n\n{header}\n" + "\n".join(rows) + f"\n{total}\n")
    print(table)
    append_results("3x3 convolution algorithms (Winograd) vs XLA's convolution on the VAE decoder's shapes", table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    main(parse_args(ap).repeats)
