"""Flax T5 v1.0 (ReLU, non-gated feed-forward: ``wi``, ``wo``; Cosmos-Predict2's t5-11b) vs transformers'
``T5EncoderModel`` (PyTorch CPU, fp32) on a tiny random config, loaded through our folder loader."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.interop.hf_text import load_t5, t5_config_from_hf  # noqa: E402
from mmdit_jax.models.flops import t5_forward_flops  # noqa: E402
from mmdit_jax.models.text.t5 import T5Config, T5Encoder  # noqa: E402
from tests.torch_reference import randomize, tiny_t5_config  # noqa: E402


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def test_t5_v10_relu_matches_transformers(tmp_path):
    cfg = tiny_t5_config(vocab_size=500, d_ff=40, num_layers=2, feed_forward_proj="relu")
    torch.manual_seed(3)
    ref = randomize(transformers.T5EncoderModel(cfg), 3, vectors_only=True)
    ref.save_pretrained(tmp_path)
    ours_cfg, variables = load_t5(str(tmp_path))
    assert ours_cfg.feed_forward_proj == "relu"
    assert set(variables["params"]["block_0"]) == {"attn_norm", "q", "k", "v", "o", "ff_norm", "wi", "wo"}
    ids = np.random.default_rng(3).integers(0, 500, (2, 150))      # past max_distance: far buckets used
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), output_hidden_states=True)
    ours = T5Encoder(ours_cfg).apply(variables, ids)
    assert len(ours["hidden_states"]) == len(out.hidden_states)
    for a, b in zip(ours["hidden_states"], out.hidden_states):
        assert rel(a, b.numpy()) <= 1e-5
    assert rel(ours["last_hidden_state"], out.last_hidden_state.numpy()) <= 1e-5


def test_feed_forward_proj_is_validated_and_counted():
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        t5_config_from_hf(dict(vocab_size=8, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2,
                               feed_forward_proj="gated-silu"))
    with pytest.raises(ConfigError, match="t5.feed_forward_proj"):
        T5Config(feed_forward_proj="gelu").validate()
    relu = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, feed_forward_proj="relu")
    ids = jnp.ones((2, 16), jnp.int32)
    m = T5Encoder(relu)
    variables = m.init(jax.random.PRNGKey(0), ids)
    analysis = jax.jit(lambda v: m.apply(v, ids)["last_hidden_state"]).lower(variables).compile().cost_analysis()
    xla = float((analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["flops"])
    assert 0.6 * xla <= t5_forward_flops(relu, 2, 16) <= 1.02 * xla
