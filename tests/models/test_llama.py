"""Flax Llama-3 encoder equals transformers' ``LlamaModel`` on random tiny configs: every hidden state, fp32,
padded batch; the converter reads a local folder (``save_pretrained``) of a ``LlamaForCausalLM``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.interop.hf_text import llama_config_from_hf, llama_from_state_dict, load_llama  # noqa: E402
from mmdit_jax.models.text.llama import LlamaConfig, LlamaModel  # noqa: E402
from tests.torch_reference import numpy_state, randomize  # noqa: E402

LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
TOL = 1e-5


def _hf_config(rope_parameters):
    return transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_parameters=rope_parameters,
        pad_token_id=0, attn_implementation="eager")


def _randomize(model, seed):
    # embeddings and norm scales O(1), matrices N(0, 1/fan_in): hidden states O(1), so bounds are absolute too
    randomize(model, seed, norm_scale=lambda name: "norm" in name)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_()
    return model


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 128, size=(2, 11))
    mask = np.ones((2, 11), np.int64)
    mask[1, 7:] = 0                                   # right padding, as HiDream's tokenizer pads
    return ids, mask


def _compare(hf_model, cfg, variables):
    ids, mask = _inputs()
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    ours = jax.jit(lambda v, i, m: LlamaModel(cfg).apply(v, i, m))(variables, jnp.asarray(ids), jnp.asarray(mask))
    assert len(ours["hidden_states"]) == len(ref.hidden_states) == cfg.num_layers + 1
    errors, gaps = [], []
    for a, b in zip(ours["hidden_states"], ref.hidden_states):
        b = b.numpy()
        gaps.append(float(np.max(np.abs(np.asarray(a) - b))))
        errors.append(gaps[-1] / float(np.max(np.abs(b))))
    print(f"max abs {max(gaps):.2e}, relative {max(errors):.2e}")
    assert max(gaps) <= TOL, gaps
    np.testing.assert_allclose(np.asarray(ours["last_hidden_state"]), ref.last_hidden_state.numpy(), atol=TOL, rtol=0)
    return errors


@pytest.mark.parametrize("rope", [{"rope_type": "default", "rope_theta": 10000.0}, LLAMA3], ids=["plain", "llama3"])
def test_hidden_states_equal_transformers(rope):
    hf_model = _randomize(transformers.LlamaModel(_hf_config(rope)), seed=1)
    cfg = llama_config_from_hf(hf_model.config.to_dict())
    assert cfg.rope_type == rope["rope_type"] and cfg.num_kv_heads == 2
    errors = _compare(hf_model, cfg, llama_from_state_dict(numpy_state(hf_model), cfg))
    assert max(errors) <= TOL, errors


def test_llama3_scaling_changes_the_frequencies():
    # High frequencies kept, low ones divided by the factor, the band between interpolated: otherwise the llama3
    # parity case above could pass with plain RoPE.
    from mmdit_jax.models.text.llama import rope_inverse_frequencies

    plain = LlamaConfig(hidden_size=64, num_heads=4, num_kv_heads=2, rope_theta=10000.0, rope_type="default")
    scaled = LlamaConfig(hidden_size=64, num_heads=4, num_kv_heads=2, rope_theta=10000.0, rope_type="llama3",
                         rope_original_max_positions=64)
    w0, w1 = rope_inverse_frequencies(plain), rope_inverse_frequencies(scaled)
    assert w1[0] == w0[0] and w1[-1] == pytest.approx(w0[-1] / 8) and np.any((w1 < w0) & (w1 > w0 / 8))


def test_causal_lm_folder_loads(tmp_path):
    hf_model = _randomize(transformers.LlamaForCausalLM(_hf_config(LLAMA3)), seed=2)
    hf_model.save_pretrained(tmp_path)
    cfg, variables = load_llama(str(tmp_path))
    errors = _compare(hf_model.model, cfg, variables)
    assert max(errors) <= TOL, errors


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="num_kv_heads"):
        LlamaConfig(num_heads=6, num_kv_heads=4, hidden_size=96).validate()
    with pytest.raises(ConfigError, match="rope_type"):
        LlamaConfig(rope_type="yarn").validate()
