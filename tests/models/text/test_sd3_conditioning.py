"""The assembled (c, y_pooled) equal diffusers' StableDiffusion3Pipeline.encode_prompt on the same tiny random
encoders and tokenizers (with and without T5, with a negative prompt); encoder dropout for CFG."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from mmdit_jax.interop.hf_text import load_clip, load_t5  # noqa: E402
from mmdit_jax.models.text.conditioning import Encoder, SD3TextEncoders, drop_encoders  # noqa: E402
from mmdit_jax.models.text.tokenizer_assets import CLIP_DIR, T5_DIR  # noqa: E402
from mmdit_jax.models.text.tokenizers import PromptTokenizer  # noqa: E402
from tests.torch_reference import tiny_clip_config, tiny_t5_config  # noqa: E402

JOINT, T5_LEN = 128, 16
PROMPTS = ["a red circle in the top left", "a large blue square and a small green ring in the bottom right"]


def _clip(seed, hidden, act, path):
    torch.manual_seed(seed)
    # BOS: transformers' default id
    cfg = tiny_clip_config(vocab_size=700, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                           projection_dim=hidden, hidden_act=act, bos_token_id=49406)
    model = transformers.CLIPTextModelWithProjection(cfg).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    clip_l = _clip(0, 32, "quick_gelu", root / "clip_l")
    clip_g = _clip(1, 64, "gelu", root / "clip_g")
    torch.manual_seed(2)
    t5 = transformers.T5EncoderModel(tiny_t5_config(vocab_size=100, d_model=JOINT, d_kv=16, d_ff=96,
                                                    num_layers=2)).eval()
    t5.save_pretrained(root / "t5")
    torch.manual_seed(3)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=JOINT, caption_projection_dim=16, pooled_projection_dim=96, out_channels=4,
        pos_embed_max_size=8)
    clip_tok = transformers.CLIPTokenizer.from_pretrained(CLIP_DIR)
    t5_tok = transformers.T5Tokenizer.from_pretrained(T5_DIR)

    def pipeline(with_t5):
        return diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None,
            text_encoder=clip_l, tokenizer=clip_tok, text_encoder_2=clip_g, tokenizer_2=clip_tok,
            text_encoder_3=t5 if with_t5 else None, tokenizer_3=t5_tok if with_t5 else None)

    def ours(with_t5):
        enc = lambda loader, name, kind, n=None: Encoder(*loader(str(root / name)), PromptTokenizer.default(kind, n))  # noqa: E731
        return SD3TextEncoders(enc(load_clip, "clip_l", "clip"), enc(load_clip, "clip_g", "clip"),
                               enc(load_t5, "t5", "t5", T5_LEN) if with_t5 else None, JOINT, T5_LEN)

    return pipeline, ours


def rel(a, ref):
    return float(np.max(np.abs(np.asarray(a) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("with_t5", [True, False])
def test_encode_prompt_equals_diffusers(encoders, with_t5):
    pipeline, ours = encoders
    with torch.no_grad():
        c_ref, c_neg_ref, y_ref, y_neg_ref = pipeline(with_t5).encode_prompt(
            prompt=PROMPTS, prompt_2=None, prompt_3=None, do_classifier_free_guidance=True, negative_prompt=None,
            max_sequence_length=T5_LEN, device=torch.device("cpu"))
    c, y, c_neg, y_neg = ours(with_t5).encode_with_negative(PROMPTS)
    assert c.shape == tuple(c_ref.shape) == (2, 77 + T5_LEN, JOINT) and y.shape == tuple(y_ref.shape) == (2, 96)
    for a, b in ((c, c_ref), (y, y_ref), (c_neg, c_neg_ref), (y_neg, y_neg_ref)):
        assert rel(a, b.numpy()) <= 1e-5
    if not with_t5:
        assert float(jnp.abs(c[:, 77:]).max()) == 0.0


def test_encoder_dropout_zeroes_each_encoder_independently():
    b, d = 4000, 128
    c, y = jnp.ones((b, 77 + 8, d)), jnp.ones((b, 96))
    c_d, y_d = drop_encoders(jax.random.PRNGKey(0), c, y, (32, 64), 77, (0.2, 0.5, 0.8))
    keep_l = np.asarray(y_d[:, 0] == 1)
    keep_g = np.asarray(y_d[:, 32] == 1)
    keep_t = np.asarray(c_d[:, 77, 0] == 1)
    np.testing.assert_array_equal(np.asarray(c_d[:, :77, :32].min(axis=(1, 2))), keep_l)   # CLIP-L channels
    np.testing.assert_array_equal(np.asarray(c_d[:, :77, 32:96].min(axis=(1, 2))), keep_g)  # CLIP-G channels
    assert float(jnp.abs(c_d[:, :77, 96:]).max()) == 0.0                                   # padding stays zero
    assert abs(1 - keep_l.mean() - 0.2) < 0.03 and abs(1 - keep_g.mean() - 0.5) < 0.03
    assert abs(1 - keep_t.mean() - 0.8) < 0.03
    assert abs(np.corrcoef(keep_l, keep_g)[0, 1]) < 0.06                                    # independent draws


def test_tiny_text_config_builds_and_encodes_offline():
    from configs.text import get_config
    from mmdit_jax.checks import ConfigError
    from mmdit_jax.components.text import sd3_text_encoders_from_config

    cfg = get_config("tiny")
    enc = sd3_text_encoders_from_config(cfg, jax.random.PRNGKey(0))
    c, y = enc.encode(["a red circle", ""])
    assert c.shape == (2, 77 + 32, 128) and y.shape == (2, 96)
    cfg.t5.enabled = False
    c, _ = sd3_text_encoders_from_config(cfg, jax.random.PRNGKey(0)).encode(["a red circle"])
    assert c.shape == (1, 77 + 32, 128) and float(jnp.abs(c[:, 77:]).max()) == 0.0
    cfg.clip_l.path = "/nonexistent"
    with pytest.raises(ConfigError, match="tokenizer_path"):
        sd3_text_encoders_from_config(cfg, jax.random.PRNGKey(0))
    cfg.clip_l.path, cfg.clip_g.preset = "", "clip_huge"
    with pytest.raises(ConfigError, match="text.clip.preset='clip_huge'"):
        sd3_text_encoders_from_config(cfg, jax.random.PRNGKey(0))
