"""Flax CLIP / T5 encoders vs transformers (PyTorch CPU, fp32) on tiny random configs, loaded by our loader
from the reference's own ``save_pretrained`` folders."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.interop.hf_text import load_clip, load_t5  # noqa: E402
from mmdit_jax.models.text.clip import CLIPTextModel  # noqa: E402
from mmdit_jax.models.text.t5 import T5Encoder  # noqa: E402
from tests.torch_reference import randomize, tiny_clip_config, tiny_t5_config  # noqa: E402


def rel(a, ref):
    return float(np.max(np.abs(np.asarray(a) - ref)) / np.max(np.abs(ref)))


def tiny_clip(tmp_path, act, eos_token_id, projection=True, seed=0):
    cfg = tiny_clip_config(num_hidden_layers=3, projection_dim=24, hidden_act=act, eos_token_id=eos_token_id)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    torch.manual_seed(seed)
    model = randomize(cls(cfg), seed, vectors_only=True)
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("act, eos", [("quick_gelu", 2), ("gelu", 999)])
def test_clip_matches_transformers(tmp_path, act, eos):
    ref = tiny_clip(tmp_path, act, eos)
    cfg, variables = load_clip(str(tmp_path))
    assert cfg.hidden_act == act and cfg.projection_dim == 24
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 990, (3, 77))
    ids[:, 0] = 0
    for b, n in enumerate((5, 40, 76)):          # an EOS at different places; pad after it
        ids[b, n] = 999 if eos == 999 else 999
        ids[b, n + 1:] = 999 if eos == 2 else 1
    with torch.no_grad():
        out = ref(torch.from_numpy(ids), output_hidden_states=True)
    ours = CLIPTextModel(cfg).apply(variables, ids)
    assert rel(ours["text_embeds"], out.text_embeds.numpy()) <= 1e-5
    assert rel(ours["last_hidden_state"], out.last_hidden_state.numpy()) <= 1e-5
    assert len(ours["hidden_states"]) == len(out.hidden_states) == 4
    for a, b in zip(ours["hidden_states"], out.hidden_states):
        assert rel(a, b.numpy()) <= 1e-5


def test_clip_without_projection_gives_the_pooler_output(tmp_path):
    ref = tiny_clip(tmp_path, "quick_gelu", 2, projection=False, seed=1)
    cfg, variables = load_clip(str(tmp_path))
    assert cfg.projection_dim is None
    ids = np.random.default_rng(1).integers(3, 990, (2, 16))
    with torch.no_grad():
        out = ref(torch.from_numpy(ids))
    assert rel(CLIPTextModel(cfg).apply(variables, ids)["pooled"], out.pooler_output.numpy()) <= 1e-5


def test_t5_matches_transformers(tmp_path):
    cfg = tiny_t5_config(vocab_size=500, d_ff=40, num_layers=3, relative_attention_num_buckets=32,
                         relative_attention_max_distance=128)
    torch.manual_seed(2)
    ref = randomize(transformers.T5EncoderModel(cfg), 2, vectors_only=True)
    ref.save_pretrained(tmp_path)
    ours_cfg, variables = load_t5(str(tmp_path))
    ids = np.random.default_rng(2).integers(0, 500, (2, 300))     # longer than max_distance: far buckets used
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), output_hidden_states=True)
    ours = T5Encoder(ours_cfg).apply(variables, ids)
    assert rel(ours["last_hidden_state"], out.last_hidden_state.numpy()) <= 1e-5
    assert len(ours["hidden_states"]) == len(out.hidden_states)
    for a, b in zip(ours["hidden_states"], out.hidden_states):
        assert rel(a, b.numpy()) <= 1e-5


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    ref = tiny_clip(tmp_path, "quick_gelu", 2)
    from safetensors.numpy import load_file, save_file
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["text_model.encoder.layers.0.extra.weight"] = np.zeros((2, 2), np.float32)
    del sd["text_model.final_layer_norm.bias"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"missing \['final_layer_norm/bias'\].*layers_0/extra/kernel"):
        load_clip(str(tmp_path))
    del ref


def test_sharded_checkpoint_folder_loads_identically(tmp_path):
    cfg = tiny_t5_config(vocab_size=500, d_ff=40, num_layers=2)
    torch.manual_seed(4)
    ref = randomize(transformers.T5EncoderModel(cfg), 4, vectors_only=True)
    ref.save_pretrained(tmp_path / "one")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert list((tmp_path / "sharded").glob("*.index.json"))
    _, one = load_t5(str(tmp_path / "one"))
    _, sharded = load_t5(str(tmp_path / "sharded"))
    import jax
    jax.tree_util.tree_map(np.testing.assert_array_equal, one, sharded)
