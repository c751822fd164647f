"""Pipeline.from_folder on tiny random diffusers FluxPipeline / FluxKontextPipeline folders
(save_pretrained, built offline; a dev-like transformer with the guidance embedding and dynamic shifting, a
schnell-like one without) give diffusers' images to 1e-4 from the same latents at a square and a non-square size,
the scheduler grid and mu to 1e-6; Kontext's reference ids, latents and sizes are diffusers'; errors name what is
wrong."""

import functools
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")
PIL = pytest.importorskip("PIL.Image")

from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.models.flux import pack_latents  # noqa: E402
from mmdit_jax.families.flux import image_ids as token_ids  # noqa: E402
from mmdit_jax.pipelines.images import preprocess_images, to_uint8, to_unit  # noqa: E402
from mmdit_jax.pipelines.pipeline import Pipeline  # noqa: E402
from mmdit_jax.pipelines.tasks import (  # noqa: E402
    kontext_target_size,
    preferred_kontext_size,
)
from tests.pipelines.tiny_flux import LATENT_CHANNELS, components, pack, smooth_image  # noqa: E402

T5_LEN, STEPS = 16, 3
PROMPTS = ["a red circle in the top left", "a large blue square"]
EDITS = ["make the circle green", "add a small yellow square"]
SIZES = [(32, 32), (24, 40)]          # (height, width) pixels; the tiny VAE's downscale is 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{variant: (diffusers FluxPipeline, diffusers FluxKontextPipeline, saved folder, Kontext folder)}``: the
    Kontext folder is the same components under ``model_index.json``'s ``FluxKontextPipeline``."""
    out = {}
    for variant in ("dev", "schnell"):
        parts = components(variant)
        t2i = diffusers.FluxPipeline(**parts)
        kontext = diffusers.FluxKontextPipeline(**parts)
        for p in (t2i, kontext):
            p.set_progress_bar_config(disable=True)
        path = tmp_path_factory.mktemp(variant)
        t2i.save_pretrained(path)
        kontext_path = tmp_path_factory.mktemp(f"{variant}_kontext")
        shutil.copytree(path, kontext_path, dirs_exist_ok=True)
        index = json.loads((kontext_path / "model_index.json").read_text())
        (kontext_path / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxKontextPipeline"}))
        out[variant] = (t2i, kontext, path, kontext_path)
    return out


@pytest.fixture(scope="module")
def ours(folders):
    return {v: (Pipeline.from_folder(path, max_sequence_length=T5_LEN),
                Pipeline.from_folder(kontext_path, max_sequence_length=T5_LEN))
            for v, (_, _, path, kontext_path) in folders.items()}


def _latents(height, width, seed=0):
    rng = np.random.default_rng(seed + 7 * height + width)
    return rng.standard_normal((len(PROMPTS), height // 2, width // 2, LATENT_CHANNELS)).astype(np.float32)


def _recording(scheduler):
    """Record the ``set_timesteps`` keyword arguments (``mu``) the diffusers pipeline passes."""
    calls = []
    original = scheduler.set_timesteps

    @functools.wraps(original)      # diffusers inspects the signature for the sigmas argument
    def set_timesteps(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    scheduler.set_timesteps = set_timesteps
    return calls


@pytest.mark.parametrize("variant", ["dev", "schnell"])
@pytest.mark.parametrize("height,width", SIZES)
def test_flux_equals_diffusers_and_so_does_the_grid(folders, ours, variant, height, width):
    ref_pipe, pipe = folders[variant][0], ours[variant][0]
    z = _latents(height, width)
    calls = _recording(ref_pipe.scheduler)
    with torch.no_grad():
        ref = ref_pipe(PROMPTS, height=height, width=width, num_inference_steps=STEPS, guidance_scale=3.5,
                       latents=pack(z), max_sequence_length=T5_LEN, output_type="np").images
    x = pipe.generate(PROMPTS, height=height, width=width, num_inference_steps=STEPS, guidance_scale=3.5, latents=z)
    assert x.shape == ref.shape == (len(PROMPTS), height, width, 3)
    err = float(np.max(np.abs(to_unit(x) - ref)))
    print(f"flux {variant} {height}x{width}: max |diff| = {err:.2e}")
    assert float(np.std(ref)) > 1e-3     # not flat: the comparison means something
    assert err <= 1e-4

    sigmas, mu = pipe.grid(STEPS, height // 2, width // 2)
    assert abs(mu - calls[-1]["mu"]) <= 1e-6
    assert float(np.max(np.abs(sigmas - ref_pipe.scheduler.sigmas.numpy()))) <= 1e-6
    if variant == "dev":
        assert abs(float(sigmas[1]) - (1 - 1 / STEPS)) > 1e-3      # mu, not the identity, shifted the grid


def test_custom_sigmas_grid_equals_diffusers(folders, ours):
    """A caller's grid ``(n,)`` is shifted with the same ``mu`` as diffusers' ``set_timesteps(sigmas=, mu=)``."""
    custom = [1.0, 0.7, 0.45, 0.2]
    for variant in ("dev", "schnell"):
        sched = diffusers.FlowMatchEulerDiscreteScheduler.from_config(folders[variant][0].scheduler.config)
        sigmas, mu = ours[variant][0].grid(len(custom), 16, 24, sigmas=custom)
        c = sched.config
        expected_mu = diffusers.pipelines.flux.pipeline_flux.calculate_shift(
            8 * 12, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
        sched.set_timesteps(sigmas=custom, mu=expected_mu)
        assert abs(mu - expected_mu) <= 1e-6
        assert float(np.max(np.abs(sigmas - sched.sigmas.numpy()))) <= 1e-6


def test_flux_uint8_and_guidance_embedding(folders, ours):
    """``__call__`` is ``to_uint8(generate)``, within 1 of diffusers' uint8; the dev transformer reads the traced
    guidance scale (no recompilation), the schnell one ignores it."""
    ref_pipe, pipe = folders["dev"][0], ours["dev"][0]
    z = _latents(32, 32)
    with torch.no_grad():
        ref = ref_pipe(PROMPTS, height=32, width=32, num_inference_steps=STEPS, guidance_scale=3.5,
                       latents=pack(z), max_sequence_length=T5_LEN, output_type="np").images
    images = pipe(PROMPTS, height=32, width=32, num_inference_steps=STEPS, guidance_scale=3.5, latents=z)
    assert images.dtype == np.uint8 and images.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(images, to_uint8(pipe.generate(PROMPTS, height=32, width=32,
                                  num_inference_steps=STEPS, guidance_scale=3.5, latents=z)))
    assert int(np.max(np.abs(images.astype(int) - (ref * 255).round().astype(int)))) <= 1
    dev_1 = np.asarray(pipe.generate(PROMPTS, height=32, width=32, num_inference_steps=STEPS, guidance_scale=1.0,
                       latents=z))
    assert float(np.max(np.abs(dev_1 - 2 * ref + 1))) > 1e-3
    schnell = ours["schnell"][0]
    np.testing.assert_array_equal(np.asarray(schnell.generate(PROMPTS, height=32, width=32,
                                  num_inference_steps=STEPS, guidance_scale=1.0, latents=z)),
                                  np.asarray(schnell.generate(PROMPTS, height=32, width=32,
                                             num_inference_steps=STEPS, guidance_scale=3.5, latents=z)))


def test_true_cfg_equals_diffusers(folders, ours):
    ref_pipe, pipe = folders["schnell"][0], ours["schnell"][0]
    z, negatives = _latents(24, 40, seed=1), ["blurry", "a green ring"]
    with torch.no_grad():
        ref = ref_pipe(PROMPTS, negative_prompt=negatives, true_cfg_scale=2.5, height=24, width=40,
                       num_inference_steps=STEPS, latents=pack(z), max_sequence_length=T5_LEN,
                       output_type="np").images
    x = pipe.generate(PROMPTS, height=24, width=40, num_inference_steps=STEPS, latents=z, negative_prompts=negatives,
                      true_cfg_scale=2.5)
    plain = pipe.generate(PROMPTS, height=24, width=40, num_inference_steps=STEPS, latents=z)
    err = float(np.max(np.abs(to_unit(x) - ref)))
    print(f"true CFG: max |diff| = {err:.2e}")
    assert float(np.max(np.abs(to_unit(plain) - ref))) > 1e-3     # the guidance changes the images
    assert err <= 1e-4
    with pytest.raises(ConfigError, match="negative_prompts"):
        pipe.generate(PROMPTS, height=24, width=40, num_inference_steps=STEPS, latents=z, true_cfg_scale=2.5)


def test_seeded_latents_and_pooled_options_run(ours):
    """Seeded noise reuses the compiled program of the same shapes; ``remove_pooled`` runs; errors are named."""
    pipe = ours["dev"][0]
    a = pipe(PROMPTS, height=32, width=32, num_inference_steps=STEPS, seed=1)
    np.testing.assert_array_equal(a, pipe(PROMPTS, height=32, width=32, num_inference_steps=STEPS, seed=1))
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    no_pooled = pipe(PROMPTS[:1], height=8, width=8, num_inference_steps=1, seed=1, remove_pooled=True)
    assert no_pooled.shape == (1, 8, 8, 3)
    with pytest.raises(ConfigError, match="remove_pooled"):
        pipe(PROMPTS[:1], height=8, width=8, num_inference_steps=1, remove_pooled=True, steering=(["a"], ["b"], 1.0))
    with pytest.raises(ConfigError, match="steering needs one positive"):
        pipe(PROMPTS[:1], height=8, width=8, num_inference_steps=1, steering=(["a", "c"], ["b"], 1.0))
    with pytest.raises(ConfigError, match="latents must have shape"):
        pipe(PROMPTS[:1], height=8, width=8, num_inference_steps=1, latents=np.zeros((1, 8, 8, LATENT_CHANNELS),
             np.float32))
    with pytest.raises(ConfigError, match="cannot skip blocks"):
        pipe(PROMPTS[:1], height=8, width=8, num_inference_steps=1, skip_guidance_layers=[0], true_cfg_scale=2.0,
             negative_prompts=[""])


# ---- Kontext ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant,size,ref_size", [("dev", (32, 32), (24, 40)), ("schnell", (24, 40), (32, 32))])
def test_kontext_equals_diffusers(folders, ours, variant, size, ref_size):
    """``_auto_resize=False`` and ``max_area = H W`` keep diffusers' sizes; the reference has another size than the
    target, and another reference changes the images by far more than the error."""
    ref_pipe, kontext = folders[variant][1], ours[variant][1]
    (height, width), image = size, smooth_image(*ref_size)
    z = _latents(height, width, seed=2)
    calls = _recording(ref_pipe.scheduler)
    with torch.no_grad():
        ref = ref_pipe(image=PIL.fromarray(image), prompt=EDITS, height=height, width=width, max_area=height * width,
                       _auto_resize=False, num_inference_steps=STEPS, guidance_scale=2.5, latents=pack(z),
                       max_sequence_length=T5_LEN, output_type="np").images
    x = kontext.generate(EDITS, reference_image=image, height=height, width=width, num_inference_steps=STEPS,
                         guidance_scale=2.5, latents=z, max_area=height * width)
    err = float(np.max(np.abs(to_unit(x) - ref)))
    print(f"kontext {variant} {height}x{width} (reference {ref_size}): max |diff| = {err:.2e}")
    assert x.shape == ref.shape == (len(EDITS), height, width, 3)
    assert err <= 1e-4
    # mu from the target's tokens only
    sigmas, mu = kontext.grid(STEPS, height // 2, width // 2)
    assert abs(mu - calls[-1]["mu"]) <= 1e-6
    assert float(np.max(np.abs(sigmas - ref_pipe.scheduler.sigmas.numpy()))) <= 1e-6
    other = kontext.generate(EDITS, reference_image=255 - image, height=height, width=width,
                             num_inference_steps=STEPS, guidance_scale=2.5, latents=z, max_area=height * width)
    assert float(np.max(np.abs(to_unit(other) - ref))) > max(2e-4, 100 * err)     # the reference is used


def test_kontext_reference_ids_and_latents_are_diffusers(folders, ours):
    """Ids: the target's rows, then the reference's with first component 1 on its own grid; reference latents:
    the packed posterior mode (``sample_mode="argmax"``), tiled to the prompts."""
    ref_pipe, kontext = folders["dev"][1], ours["dev"][1]
    (height, width), (rh, rw) = (24, 40), (32, 48)
    image = smooth_image(rh, rw)
    ids = token_ids(height // 2, width // 2, (rh // 2, rw // 2))     # the tiny VAE's downscale is 2
    n_target = (height // 4) * (width // 4)
    assert ids.shape == (n_target + (rh // 4) * (rw // 4), 3)
    assert np.all(ids[:n_target, 0] == 0) and np.all(ids[n_target:, 0] == 1)
    assert ids[n_target:, 1:].max(axis=0).tolist() == [rh // 4 - 1, rw // 4 - 1]
    tensor = ref_pipe.image_processor.preprocess(PIL.fromarray(image), rh, rw)
    with torch.no_grad():
        _, image_latents, latent_ids, image_ids = ref_pipe.prepare_latents(
            tensor, 2, LATENT_CHANNELS, height, width, torch.float32, torch.device("cpu"),
            torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(ids, torch.cat([latent_ids, image_ids]).numpy())
    ours_latents = pack_latents(kontext.encode_images(kontext.model.codec.variables, preprocess_images(image)))
    assert float(np.max(np.abs(np.asarray(ours_latents)[0] - image_latents[1].numpy()))) <= 1e-5


def test_family_rejects_a_malformed_reference(ours):
    family = ours["dev"][0].family
    cond = {"context": np.zeros((1, 4, 32), np.float32), "pooled": np.zeros((1, 32), np.float32),
            "reference": np.zeros((1, 3, 4, LATENT_CHANNELS), np.float32)}
    with pytest.raises(ConfigError, match="reference"):
        family.net(ours["dev"][0].variables, cond)


def test_kontext_sizes_are_diffusers():
    for (h, w), area in (((1024, 1024), 1024 ** 2), ((512, 768), 1024 ** 2), ((24, 40), 960), ((100, 30), 5000)):
        aspect = w / h
        expected = (round((area / aspect) ** 0.5) // 16 * 16, round((area * aspect) ** 0.5) // 16 * 16)
        assert kontext_target_size(h, w, area, 16) == expected
    assert kontext_target_size(24, 40, None, 4) == (24, 40)
    assert preferred_kontext_size(1024, 1024) == (1024, 1024)
    assert preferred_kontext_size(512, 1024) == (720, 1456)        # aspect 2: (1456, 720) is nearest
    assert preferred_kontext_size(1000, 600) == (1328, 800)
    assert preferred_kontext_size(1000, 600, multiple=64) == (1280, 768)


# ---- errors ----------------------------------------------------------------------------------------------------


def _copy(folders, tmp_path, variant="schnell"):
    path = tmp_path / "pipe"
    shutil.copytree(folders[variant][2], path)
    return path


def test_missing_components_are_named(folders, tmp_path):
    path = _copy(folders, tmp_path)
    index_file = path / "model_index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({k: v for k, v in index.items() if k != "tokenizer_2"}))
    with pytest.raises(ConfigError, match="'tokenizer_2' is missing"):
        Pipeline.from_folder(path)
    index_file.write_text(json.dumps(index))
    shutil.rmtree(path / "vae")
    with pytest.raises(ConfigError, match="vae/"):
        Pipeline.from_folder(path)
    with pytest.raises(ConfigError, match="max_sequence_length"):
        Pipeline.from_folder(folders["dev"][2], max_sequence_length=513)


def test_unknown_scheduler_class_is_named(folders, tmp_path):
    path = _copy(folders, tmp_path)
    cfg_file = path / "scheduler" / "scheduler_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "_class_name": "DDIMScheduler"}))
    with pytest.raises(ConfigError, match="_class_name='DDIMScheduler'"):
        Pipeline.from_folder(path)


def test_sizes_not_divisible_are_named(folders, ours):
    pipe, kontext = ours["dev"]
    vae = json.loads((folders["dev"][2] / "vae" / "config.json").read_text())
    multiple = 2 * 2 ** (len(vae["block_out_channels"]) - 1)     # the VAE's downscale x FLUX's 2x2 packing
    assert pipe.size_multiple == multiple == 4
    with pytest.raises(ConfigError, match=f"width=34 must be divisible by {multiple}"):
        pipe(PROMPTS, height=32, width=34)
    with pytest.raises(ConfigError, match="height=30"):
        pipe(PROMPTS, height=30, width=32)
    with pytest.raises(ConfigError, match="image width=30"):
        kontext(PROMPTS, reference_image=smooth_image(32, 30), height=32, width=32, max_area=None)
    with pytest.raises(ConfigError, match="width=34"):
        kontext(PROMPTS, reference_image=smooth_image(32, 32), height=32, width=34, max_area=None)
    with pytest.raises(ConfigError, match="3 images for 2 prompts"):
        kontext(PROMPTS, reference_image=np.stack([smooth_image(32, 32)] * 3), height=32, width=32, max_area=None)


def test_edit_command_on_a_kontext_folder_chains_turns(folders, tmp_path):
    """``python -m mmdit_jax.edit --source=<Kontext folder>``: turn 1 is the pipeline's edit of the image file, turn 2
    the edit of turn 1."""
    from mmdit_jax.edit import edit_file

    path = folders["schnell"][3]
    image = smooth_image(32, 32)
    PIL.fromarray(image).save(tmp_path / "in.png")
    out = edit_file(str(path), str(tmp_path / "in.png"), EDITS[:2], str(tmp_path / "out"), seed=5, steps=2)
    turns = [np.asarray(PIL.open(p)) for p in out]
    kontext = Pipeline.from_folder(path)
    want = kontext(EDITS[:1], reference_image=image[None], height=32, width=32, num_inference_steps=2,
                   guidance_scale=2.5, seed=5,
                   max_area=None)[0]
    np.testing.assert_array_equal(turns[0], want)
    want = kontext(EDITS[1:2], reference_image=turns[0][None], height=32, width=32, num_inference_steps=2,
                   guidance_scale=2.5,
                   seed=6, max_area=None)[0]
    np.testing.assert_array_equal(turns[1], want)
    with pytest.raises(ConfigError, match="sdedit"):
        edit_file(str(path), str(tmp_path / "in.png"), EDITS[:1], str(tmp_path / "out"), method="sdedit")
    # a text-to-image FLUX.1 folder is not an in-context editor: refused, not run as if it were Kontext
    with pytest.raises(ConfigError, match="not an in-context editor"):
        edit_file(str(folders["schnell"][2]), str(tmp_path / "in.png"), EDITS[:1], str(tmp_path / "t2i"), steps=2)
