"""Pipeline.from_folder on a tiny random StableDiffusion3Pipeline saved with save_pretrained (built offline, the
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
from mmdit_jax.pipelines.images import to_uint8, to_unit  # noqa: E402
from mmdit_jax.pipelines.pipeline import Pipeline  # noqa: E402
from mmdit_jax.pipelines.tasks import slg_window  # noqa: E402
from tests.pipelines.tiny_sd3 import components as _components  # noqa: E402

T5_LEN, STEPS = 16, 3
PROMPTS = ["a red circle in the top left", "a large blue square"]


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
    return {name: Pipeline.from_folder(path, max_sequence_length=T5_LEN) for name, (_, path) in folders.items()}


def _compare(folders, ours, name, guidance, height, width, negative=None, pipes=None):
    ref_pipe, pipe = pipes or (folders[name][0], ours[name])
    assert pipe.vae_scale_factor == ref_pipe.vae_scale_factor == 2
    rng = np.random.default_rng(height * 7 + width)
    z = rng.standard_normal((len(PROMPTS), height // 2, width // 2, 4)).astype(np.float32)     # NHWC
    with torch.no_grad():
        ref = ref_pipe(PROMPTS, negative_prompt=negative, height=height, width=width, num_inference_steps=STEPS,
                       guidance_scale=guidance, latents=torch.from_numpy(z.transpose(0, 3, 1, 2).copy()),
                       max_sequence_length=T5_LEN, output_type="np").images
    x = pipe.generate(PROMPTS, negative_prompts=negative, height=height, width=width, num_inference_steps=STEPS,
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
    pipe = Pipeline.from_folder(path, max_sequence_length=T5_LEN)
    static = flow_match_schedule(STEPS, {"shift": 3.0})[0]
    assert not np.allclose(pipe.grid(STEPS, 16, 24)[0], static, atol=1e-3)     # mu, not the static shift, is used
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


def test_any_sampler_of_the_core(ours):
    """``flow_euler`` on the transformer's schedule is the FlowMatchEuler loop on the same grid (SD3's shift) from the
    sampler's prior draw; Heun's ODE differs from it; a bad sampler field is named."""
    import jax

    pipe = ours["no_t5"]
    kw = dict(height=16, width=24, guidance_scale=4.0, seed=3)
    euler = pipe.generate(PROMPTS, sampler={"name": "flow_euler", "n_steps": STEPS}, **kw)
    # the sampler's prior: N(0, I) from the first half of split(PRNGKey(seed)) (sigma(t_0) = 1 on this path)
    z = jax.random.normal(jax.random.split(jax.random.PRNGKey(3))[0], (len(PROMPTS), 8, 12, 4))
    loop = pipe.generate(PROMPTS, num_inference_steps=STEPS, latents=z, **kw)
    assert float(np.max(np.abs(np.asarray(euler) - np.asarray(loop)))) <= 1e-5
    heun = pipe.generate(PROMPTS, sampler={"name": "ode", "n_steps": STEPS, "method": "heun"}, **kw)
    assert float(np.max(np.abs(np.asarray(heun) - np.asarray(loop)))) > 1e-3
    with pytest.raises(ConfigError, match="sampler.method"):
        pipe.generate(PROMPTS, sampler={"name": "ode", "method": "rk4"}, **kw)
    with pytest.raises(ConfigError, match="latents"):
        pipe.generate(PROMPTS, sampler={"name": "flow_euler"}, latents=z, **kw)


def test_missing_vae_folder_is_named(folders, tmp_path):
    path = tmp_path / "pipe"
    shutil.copytree(folders["t5"][1], path)
    shutil.rmtree(path / "vae")
    with pytest.raises(ConfigError, match="vae/"):
        Pipeline.from_folder(path)


def test_broken_model_index_and_non_finite_guidance_are_named(folders, ours, tmp_path):
    path = tmp_path / "pipe"
    shutil.copytree(folders["no_t5"][1], path)
    (path / "model_index.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="model_index.json is not valid JSON"):
        Pipeline.from_folder(path)
    with pytest.raises(ConfigError, match="guidance_scale=nan"):
        ours["no_t5"](PROMPTS[:1], height=16, width=16, guidance_scale=float("nan"))
    with pytest.raises(ConfigError, match="true_cfg_scale"):     # SD3 guides with guidance_scale
        ours["no_t5"](PROMPTS[:1], height=16, width=16, true_cfg_scale=2.0)
    with pytest.raises(ConfigError, match="not an in-context editor"):
        ours["no_t5"](PROMPTS[:1], reference_image=np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ConfigError, match="cannot be combined"):
        ours["no_t5"](PROMPTS[:1], image=np.zeros((16, 16, 3), np.uint8), reference_image=np.zeros((16, 16, 3)))


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
        Pipeline.from_folder(path)


def test_skip_layer_guidance_window_is_diffusers():
    for n in (1, 3, 5, 10, 28, 50):
        for start, stop in ((0.01, 0.2), (0.2, 0.7), (0.0, 1.0), (0.5, 0.5)):
            expected = [bool(i > n * start and i < n * stop) for i in range(n)]     # diffusers' condition
            assert slg_window(n, start, stop).tolist() == expected


def test_skip_layer_guidance_equals_diffusers(folders, ours):
    """5 steps, window (0.2, 0.7): the skip-layer call runs at steps 2 and 3 only."""
    ref_pipe, pipe = folders["no_t5"][0], ours["no_t5"]
    rng = np.random.default_rng(5)
    z = rng.standard_normal((len(PROMPTS), 16, 16, 4)).astype(np.float32)
    slg = dict(skip_guidance_layers=[0], skip_layer_guidance_scale=2.8, skip_layer_guidance_start=0.2,
               skip_layer_guidance_stop=0.7)
    with torch.no_grad():
        ref = ref_pipe(PROMPTS, height=32, width=32, num_inference_steps=5, guidance_scale=5.0,
                       latents=torch.from_numpy(z.transpose(0, 3, 1, 2).copy()), max_sequence_length=T5_LEN,
                       output_type="np", **slg).images
    x = pipe.generate(PROMPTS, height=32, width=32, num_inference_steps=5, guidance_scale=5.0, latents=z, **slg)
    plain = pipe.generate(PROMPTS, height=32, width=32, num_inference_steps=5, guidance_scale=5.0, latents=z)
    err = float(np.max(np.abs(to_unit(x) - ref)))
    print(f"skip-layer guidance: max |diff| = {err:.2e}")
    assert float(np.max(np.abs(to_unit(plain) - ref))) > 1e-3      # the guidance changes the images
    assert err <= 1e-4


def test_skip_layer_guidance_errors_are_named(ours):
    pipe = ours["no_t5"]
    with pytest.raises(ConfigError, match="skip_guidance_layers"):
        pipe(PROMPTS, height=16, width=16, guidance_scale=5.0, skip_guidance_layers=[1])
    with pytest.raises(ConfigError, match="guidance_scale > 1"):
        pipe(PROMPTS, height=16, width=16, guidance_scale=1.0, skip_guidance_layers=[0])
