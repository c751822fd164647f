"""SD3Pipeline.from_folder on a tiny random StableDiffusion3Pipeline saved with save_pretrained (built offline, the
components sized like diffusers' own SD3 fast tests) gives diffusers' images to 1e-4 from the same latents: CFG with
T5, without CFG, without T5, non-square; and folder / size / scheduler errors name what is wrong."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.diffusion.flow_match import flow_match_schedule  # noqa: E402
from mmdit_jax.models.text.tokenizer_assets import CLIP_DIR, T5_DIR  # noqa: E402
from mmdit_jax.pipelines.text_to_image import SD3Pipeline, to_uint8, to_unit  # noqa: E402

T5_LEN, STEPS = 16, 3
PROMPTS = ["a red circle in the top left", "a large blue square"]


def _clip(seed: int, act: str):
    # hidden 16 per tower: [H_L; H_G] is 32 wide, the joint width (diffusers would silently cut a wider one)
    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(vocab_size=1000, hidden_size=16, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                                      hidden_act=act, eos_token_id=2, bos_token_id=0, pad_token_id=1)
    return transformers.CLIPTextModelWithProjection(cfg).eval()


def _components(with_t5: bool, shift: float) -> dict:
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    torch.manual_seed(1)
    # two stages: a downscale of 2, so the size checks and the latent shape see a real VAE factor
    vae = diffusers.AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 8),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
        scaling_factor=1.5035).eval()
    torch.manual_seed(2)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, use_cache=False)).eval()
    clip_tok = transformers.CLIPTokenizer.from_pretrained(CLIP_DIR)
    return dict(transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=shift),
                text_encoder=_clip(3, "quick_gelu"), tokenizer=clip_tok, text_encoder_2=_clip(4, "gelu"),
                tokenizer_2=clip_tok, text_encoder_3=t5 if with_t5 else None,
                tokenizer_3=transformers.T5Tokenizer.from_pretrained(T5_DIR) if with_t5 else None)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{name: (diffusers pipeline, saved folder)}`` with and without T5."""
    out = {}
    for name, with_t5 in (("t5", True), ("no_t5", False)):
        pipe = diffusers.StableDiffusion3Pipeline(**_components(with_t5, shift=3.0))
        pipe.set_progress_bar_config(disable=True)
        path = tmp_path_factory.mktemp(name)
        pipe.save_pretrained(path)
        out[name] = (pipe, path)
    return out


@pytest.fixture(scope="module")
def ours(folders):
    return {name: SD3Pipeline.from_folder(path, max_sequence_length=T5_LEN) for name, (_, path) in folders.items()}


def _compare(folders, ours, name, guidance, height, width, negative=None, pipes=None):
    ref_pipe, pipe = pipes or (folders[name][0], ours[name])
    assert pipe.vae_scale_factor == ref_pipe.vae_scale_factor == 2
    rng = np.random.default_rng(height * 7 + width)
    z = rng.standard_normal((len(PROMPTS), height // 2, width // 2, 4)).astype(np.float32)     # NHWC
    with torch.no_grad():
        ref = ref_pipe(PROMPTS, negative_prompt=negative, height=height, width=width, num_inference_steps=STEPS,
                       guidance_scale=guidance, latents=torch.from_numpy(z.transpose(0, 3, 1, 2).copy()),
                       max_sequence_length=T5_LEN, output_type="np").images
    x = pipe.generate(PROMPTS, negative, height=height, width=width, num_inference_steps=STEPS,
                      guidance_scale=guidance, latents=z)
    assert x.shape == ref.shape == (len(PROMPTS), height, width, 3)
    err = float(np.max(np.abs(to_unit(x) - ref)))
    print(f"{name} guidance={guidance} {height}x{width}: max |diff| = {err:.2e}")
    assert float(np.std(ref)) > 1e-3   # the images are not flat: the comparison means something
    return pipe, x, z, ref, err


def test_cfg_with_t5_equals_diffusers(folders, ours):
    pipe, x, z, ref, err = _compare(folders, ours, "t5", 5.0, 32, 32)
    assert err <= 1e-4
    images = pipe(PROMPTS, height=32, width=32, num_inference_steps=STEPS, guidance_scale=5.0, latents=z)
    assert images.dtype == np.uint8 and images.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(images, to_uint8(x))
    ref_u8 = (ref * 255).round().astype(np.uint8)     # diffusers' numpy_to_pil
    assert int(np.max(np.abs(images.astype(int) - ref_u8))) <= 1


def test_no_guidance_equals_diffusers(folders, ours):
    assert _compare(folders, ours, "t5", 1.0, 32, 32)[-1] <= 1e-4


def test_without_t5_and_negative_prompt_equals_diffusers(folders, ours):
    assert _compare(folders, ours, "no_t5", 5.0, 32, 32, negative=["blurry", "a green ring"])[-1] <= 1e-4


def test_non_square_equals_diffusers(folders, ours):
    assert _compare(folders, ours, "t5", 5.0, 32, 48)[-1] <= 1e-4


def test_dynamic_shifting_equals_diffusers(folders, tmp_path):
    """A FLUX-style scheduler config (mu from the latent token count) read from scheduler_config.json."""
    ref_pipe, folder = folders["no_t5"]
    dynamic = {"use_dynamic_shifting": True, "base_image_seq_len": 64, "max_image_seq_len": 1024}
    ref = diffusers.StableDiffusion3Pipeline(**{
        **ref_pipe.components, "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, **dynamic)})
    ref.set_progress_bar_config(disable=True)
    path = tmp_path / "pipe"
    shutil.copytree(folder, path)
    cfg_file = path / "scheduler" / "scheduler_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **dynamic}))
    pipe = SD3Pipeline.from_folder(path, max_sequence_length=T5_LEN)
    static = flow_match_schedule(STEPS, {"shift": 3.0})[0]
    assert not np.allclose(pipe.grid(STEPS, 16, 24), static, atol=1e-3)     # mu, not the static shift, is used
    assert _compare(folders, None, "no_t5", 5.0, 32, 48, pipes=(ref, pipe))[-1] <= 1e-4


def test_seeded_latents_and_options_run(ours):
    pipe = ours["no_t5"]
    a = pipe(PROMPTS[:1], height=16, width=16, num_inference_steps=2, guidance_scale=1.0, seed=1)
    b = pipe(PROMPTS[:1], height=16, width=16, num_inference_steps=2, guidance_scale=1.0, seed=1)
    assert a.shape == (1, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    no_pooled = pipe(PROMPTS[:1], height=16, width=16, num_inference_steps=2, guidance_scale=1.0, seed=1,
                     remove_pooled=True)
    steered = pipe(PROMPTS[:1], height=16, width=16, num_inference_steps=2, guidance_scale=5.0, seed=1,
                   steering=(["a blue circle"], ["a red circle"], 2.0))
    assert no_pooled.shape == steered.shape == a.shape
    with pytest.raises(ConfigError, match="remove_pooled"):
        pipe(PROMPTS[:1], height=16, width=16, remove_pooled=True, steering=(["a"], ["b"], 1.0))


def test_missing_vae_folder_is_named(folders, tmp_path):
    path = tmp_path / "pipe"
    shutil.copytree(folders["t5"][1], path)
    shutil.rmtree(path / "vae")
    with pytest.raises(ConfigError, match="vae/"):
        SD3Pipeline.from_folder(path)


def test_size_not_divisible_is_named(ours):
    with pytest.raises(ConfigError, match="width=33"):
        ours["t5"](PROMPTS, height=32, width=33)
    with pytest.raises(ConfigError, match="height=31"):
        ours["t5"](PROMPTS, height=31, width=32)


def test_unknown_scheduler_class_is_named(folders, tmp_path):
    path = tmp_path / "pipe"
    shutil.copytree(folders["no_t5"][1], path)
    cfg_file = path / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["_class_name"] = "DDIMScheduler"
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="_class_name='DDIMScheduler'"):
        SD3Pipeline.from_folder(path)
