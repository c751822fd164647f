"""GPU-only checks of the fused attention paths (skipped on a CPU-only machine, as in CI).

cuDNN's flash attention exists only on NVIDIA GPUs and only for bf16/fp16, so the CPU suite cannot reach it.
Run on a GPU with ``JAX_PLATFORMS=cuda python -m pytest tests/models/test_attention_gpu.py``. Oracle: the same
model in float32 with ``precision=highest`` einsum attention; bf16 paths must land within bf16 rounding
(relative error in 1e-3..1e-2 per METHOD-style checks: far above is a wrong kernel, not rounding).
"""

import jax
import jax.numpy as jnp
import pytest

from configs.mmdit import get_config
from mmdit_jax.families import model_config
from mmdit_jax.models.mmdit import MMDiT, MMDiTConfig

pytestmark = pytest.mark.skipif(jax.devices()[0].platform != "gpu", reason="needs an NVIDIA GPU")


def _cfg(**overrides) -> MMDiTConfig:
    # head_dim 64 and bf16: the shapes cuDNN's fused kernel accepts; two layers keep it quick.
    return model_config({**get_config("small"), "num_layers": 2, **overrides})


def _inputs(cfg: MMDiTConfig, batch: int = 2, size: int = 16, tokens: int = 23):  # 64 + 23: odd, as SD3
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(k[0], (batch, size, size, cfg.in_channels))
    c = jax.random.normal(k[1], (batch, tokens, cfg.joint_attention_dim))
    y = jax.random.normal(k[2], (batch, cfg.pooled_projection_dim))
    t = jnp.linspace(50.0, 950.0, batch)
    return MMDiT(cfg).init(k[3], x, t, c, y), (x, t, c, y)


def _rel(a, b) -> float:
    return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


@pytest.mark.parametrize("impl", [None, "xla", "cudnn", "einsum"])
def test_bf16_attention_paths_match_fp32_reference_forward_and_gradient(impl):
    ref_cfg = _cfg(attention_impl="einsum")
    variables, args = _inputs(ref_cfg)

    def loss(params, cfg):
        out = MMDiT(cfg).apply({**variables, "params": params}, *args)
        return jnp.mean(out.astype(jnp.float32) ** 2), out

    with jax.default_matmul_precision("highest"):
        (l_ref, o_ref), g_ref = jax.jit(jax.value_and_grad(lambda p: loss(p, ref_cfg), has_aux=True))(
            variables["params"])
    cfg = _cfg(attention_impl=impl, dtype="bfloat16")
    (l_out, o_out), g_out = jax.jit(jax.value_and_grad(lambda p: loss(p, cfg), has_aux=True))(variables["params"])
    assert bool(jnp.all(jnp.isfinite(o_out)))
    assert _rel(o_out.astype(jnp.float32), o_ref) < 2e-2
    flat_ref, flat_out = jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_out)
    worst = max(_rel(a.astype(jnp.float32), b) for a, b in zip(flat_out, flat_ref) if float(jnp.abs(b).max()) > 0)
    assert worst < 5e-2, worst
