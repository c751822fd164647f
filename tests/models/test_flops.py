"""The analytic FLOP counter against XLA's cost analysis of the compiled forward pass."""

import jax
import jax.numpy as jnp
import pytest

from configs.mmdit import get_config
from mmdit_jax.families import model_config
from mmdit_jax.models.flops import (
    clip_forward_flops,
    mmdit_forward_flops,
    t5_forward_flops,
)
from mmdit_jax.models.mmdit import MMDiT
from mmdit_jax.models.text.clip import CLIP_TINY, CLIPTextModel
from mmdit_jax.models.text.t5 import T5_TINY, T5Encoder


def xla_flops(fn, *args):
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])


@pytest.mark.parametrize("preset, hw, tokens, floor", [("small", (32, 32), 64, 0.9), ("tiny", (16, 24), 20, 0.8)])
def test_mmdit_flops_match_xla_cost_analysis(preset, hw, tokens, floor):
    cfg = model_config(get_config(preset))
    model = MMDiT(cfg)
    x = jnp.ones((2, *hw, cfg.in_channels))
    c = jnp.ones((2, tokens, cfg.joint_attention_dim))
    y = jnp.ones((2, cfg.pooled_projection_dim))
    t = jnp.ones((2,))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, c, y)
    variables = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
    ours = mmdit_forward_flops(cfg, 2, *hw, tokens)
    xla = xla_flops(lambda v: model.apply(v, x, t, c, y), variables)
    # matmuls are most of the FLOPs (less so at width 32, where norms and activations weigh more), never more
    assert floor * xla <= ours <= xla, (ours, xla, ours / xla)


@pytest.mark.parametrize("module, cfg, count", [(CLIPTextModel, CLIP_TINY, clip_forward_flops),
                                                (T5Encoder, T5_TINY, t5_forward_flops)])
def test_text_encoder_flops_match_xla_cost_analysis(module, cfg, count):
    ids = jnp.ones((3, 64), jnp.int32)
    m = module(cfg)
    variables = m.init(jax.random.PRNGKey(0), ids)
    ours = count(cfg, 3, 64)
    xla = xla_flops(lambda v: m.apply(v, ids)["last_hidden_state"], variables)
    assert 0.75 * xla <= ours <= 1.02 * xla, (ours, xla)
