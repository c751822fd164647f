"""Chunked (linear-memory) attention: values and gradients against jax.nn.dot_product_attention, key masks, bf16,
forward-mode autodiff, the MMDiT with attention_impl='chunked', and the compiled memory of a long sequence.

The file is bound by XLA compiles, so every numerical comparison runs in one compiled program (the ``results``
fixture), inputs are made by NumPy (no compile per random shape), the MMDiT's variables are filled in from
abstract shapes instead of a compiled ``init``, and the numerical programs are compiled at LLVM optimisation level 0
(``_run``: the same XLA program, operations and precision, in half the compile time).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.mmdit import get_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.families import model_config
from mmdit_jax.models import layers
from mmdit_jax.models.chunked_attention import _chunking, chunked_attention
from mmdit_jax.models.mmdit import MMDiT

# name: (B, L_q, L_k, H, d, query_chunk, key_chunk). Lengths divisible by the chunks; divisible by neither (padded
# queries sliced off, padded keys masked, several uneven chunks) and cross-attention lengths.
CASES = {"divisible": (2, 64, 64, 3, 8, 16, 32), "not_divisible": (1, 50, 70, 4, 16, 16, 24)}
MASK_CASE = (3, 40, 40, 2, 32, 16, 16)      # a key padding mask: key lengths 40, 23 and 0 (v's mean) of 40
BF16_CASE = (2, 70, 70, 2, 16, 256, 512)    # the default chunk sizes: one chunk each


def _run(fn, *args):
    """``jax.jit(fn)(*args)``, compiled without LLVM's optimisations (the HLO program is unchanged)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})(*args)


def _normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _inputs(b, lq, lk, h, d, seed=0):
    return (_normal(seed, b, lq, h, d), _normal(seed + 1, b, lk, h, d), _normal(seed + 2, b, lk, h, d),
            _normal(seed + 3, b, lq, h, d))


def _value_and_grads(fn, q, k, v, w):
    """``fn(q, k, v)`` and the gradients of ``sum(fn(q, k, v) * w)`` wrt q, k, v."""
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(w.astype(out.dtype)))


@pytest.fixture(scope="module")
def results():
    """``{case: {variant: (out, dq, dk, dv)}}``, variants 'ref' (jax.nn.dot_product_attention, XLA), 'autodiff'
    and 'custom' (the two gradients of chunked_attention; bf16: 'custom' only), all from one compiled program."""
    inputs = {name: _inputs(*shape[:5], seed=i) for i, (name, shape) in enumerate(CASES.items())}
    inputs["mask"] = _inputs(*MASK_CASE[:5], seed=10)
    inputs["bf16"] = tuple(a.astype(jnp.bfloat16) for a in _inputs(*BF16_CASE[:5], seed=20))
    lengths = jnp.array([40, 23, 0])
    mask = jnp.arange(40)[None, :] < lengths[:, None]

    def run(inputs):
        out = {}
        for name, (*_, qc, kc) in [*CASES.items(), ("mask", MASK_CASE), ("bf16", BF16_CASE)]:
            key_mask, ref_kwargs = (mask, {"key_value_seq_lengths": lengths}) if name == "mask" else (None, {})
            ref_fn = functools.partial(jax.nn.dot_product_attention, **ref_kwargs)
            args = inputs[name]
            if name == "bf16":  # the reference sees the same rounded inputs, in float32
                ref_args = [a.astype(jnp.float32) for a in args]
                out[name] = {"ref": _value_and_grads(ref_fn, *ref_args)}
            else:
                out[name] = {"ref": _value_and_grads(ref_fn, *args)}
            for variant, custom in (("autodiff", False), ("custom", True))[name == "bf16":]:
                fn = functools.partial(chunked_attention, key_mask=key_mask, query_chunk=qc, key_chunk=kc,
                                       custom_gradient=custom)
                out[name][variant] = _value_and_grads(fn, *args)
        q, k, v, w = inputs["divisible"]  # forward mode: the autodiff gradient's jvp
        chunked = functools.partial(chunked_attention, k=k, v=v, query_chunk=16, key_chunk=32)
        out["jvp"] = {"ref": jax.jvp(lambda q: jax.nn.dot_product_attention(q, k, v), (q,), (w,))[1],
                      "autodiff": jax.jvp(chunked, (q,), (w,))[1]}
        q, k, v, _ = inputs["not_divisible"]  # the shared dispatch, every path a CPU runs
        out["backends"] = {b: layers.backend_attention(q, k, v, b, custom_gradient=True, groups=3)
                           for b in ("xla", "einsum", "einsum_vjp", "chunked")}
        return out

    return _run(run, inputs)


def _assert_close(a, ref, rel, what=""):
    """``|a - ref| <= rel * max |ref|`` elementwise (np.testing raises otherwise)."""
    ref = np.asarray(ref, np.float32)
    np.testing.assert_allclose(np.asarray(a, np.float32), ref, atol=rel * float(np.abs(ref).max()), err_msg=what)


@pytest.mark.parametrize("case", [*CASES, "mask"])
@pytest.mark.parametrize("variant", ["autodiff", "custom"])
def test_values_and_gradients_equal_dot_product_attention(results, case, variant):
    got_all, ref_all = results[case][variant], results[case]["ref"]
    assert len(got_all) == len(ref_all) == 4                      # the output and dq, dk, dv
    for name, got, ref in zip(("out", "dq", "dk", "dv"), got_all, ref_all):
        assert got.shape == ref.shape, name
        _assert_close(got, ref, 1e-5, name)


def test_bfloat16_inputs_give_bfloat16_results_close_to_float32(results):
    # The casts in and out are the same code for both gradients; the custom_vjp is the one the MMDiT runs on a CPU.
    for got, ref in zip(results["bf16"]["custom"], results["bf16"]["ref"]):
        assert got.dtype == jnp.bfloat16
        _assert_close(got, ref, 1e-2)  # bf16 rounding of the results (8 mantissa bits); the maths runs in float32


def test_forward_mode_autodiff_of_the_default_gradient(results):
    tangent, ref = results["jvp"]["autodiff"], results["jvp"]["ref"]
    assert tangent.shape == ref.shape and float(np.abs(ref).max()) > 0   # a non-trivial tangent is compared
    _assert_close(tangent, ref, 1e-5)


def test_backend_attention_dispatches_every_cpu_path_to_the_same_result(results):
    ref = results["not_divisible"]["ref"][0]
    assert set(results["backends"]) == {"xla", "einsum", "einsum_vjp", "chunked"}
    for backend, out in results["backends"].items():
        assert out.shape == ref.shape, backend
        _assert_close(out, ref, 1e-5, backend)


def test_chunks_are_balanced_and_never_exceed_the_bound():
    assert _chunking(1357, 256) == (6, 227) and _chunking(4096, 512) == (8, 512) and _chunking(37, 256) == (1, 37)
    for n in range(1, 300, 7):
        count, size = _chunking(n, 32)
        assert size <= 32 and 0 <= count * size - n < count


def test_unknown_attention_impl_is_rejected_with_the_valid_values():
    assert layers.attention_backend("chunked", jnp.float32, 64) == "chunked"
    with pytest.raises(ConfigError, match="'chunked'"):
        layers.attention_backend("flash", jnp.float32, 64)


def test_mmdit_with_chunked_attention_equals_xla(monkeypatch):
    # Chunks smaller than the 8 x 8 + 5 = 69 joint tokens: the model runs several uneven chunks of each.
    monkeypatch.setattr(layers, "chunked_attention", functools.partial(chunked_attention, query_chunk=16,
                                                                       key_chunk=32))
    base = model_config({**get_config("tiny"), "num_layers": 2})  # a dual-attention block, then the last block
    x, c, y = _normal(1, 2, 8, 8, base.in_channels), _normal(2, 2, 5, base.joint_attention_dim), \
        _normal(3, 2, base.pooled_projection_dim)
    t = np.array([300.0, 700.0], np.float32)
    shapes = jax.eval_shape(MMDiT(base).init, jax.random.PRNGKey(0), x, t, c, y)
    leaves, tree = jax.tree_util.tree_flatten(shapes)  # deterministic, non-degenerate values (no zero gates)
    variables = tree.unflatten([0.2 * np.cos(0.37 * np.arange(s.size) + i).reshape(s.shape).astype(s.dtype)
                                for i, s in enumerate(leaves)])
    # custom_gradients=None: on a CPU the chunked path with its custom_vjp, as model.attention_impl='chunked' runs.
    # dataclasses.replace, not model_config: it does not re-validate, so the test needs no config-level support.
    ref, out = _run(lambda v: [MMDiT(dataclasses.replace(base, attention_impl=impl)).apply(v, x, t, c, y)
                               for impl in ("xla", "chunked")], variables)
    assert float(np.abs(ref).max()) > 0.1
    _assert_close(out, ref, 1e-5)


def test_compiled_memory_of_a_long_sequence_is_linear_not_quadratic():
    # Forward + backward of one 4096-token head: the dense path holds at least one L x L float32 matrix (64 MiB);
    # chunked attention's largest intermediate is one 256 x 512 tile and its other buffers are O(L) (~5 MiB).
    length, dense_bytes = 4096, 4096 * 4096 * 4
    args = [jax.ShapeDtypeStruct((1, length, 1, 32), jnp.float32)] * 4

    def temp_bytes(attention):
        step = jax.jit(lambda q, k, v, w: _value_and_grads(attention, q, k, v, w))
        return step.lower(*args).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(jax.nn.dot_product_attention) > dense_bytes
    for custom in (False, True):
        assert temp_bytes(functools.partial(chunked_attention, custom_gradient=custom)) < dense_bytes / 8
