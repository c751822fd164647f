"""``python -m mmdit_jax.generate``: PNGs with prompt and seed in their metadata, each image reproducible from its
prompt and seed alone (whatever the batch), from a training workdir and from an SD3 pipeline folder; bad input is
one line naming the flag."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmdit_jax import generate as gen_cli
from mmdit_jax.checks import ConfigError
from mmdit_jax.pipelines.sampling import SamplingPipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tiny_base_run):
    return tiny_base_run[1]


def test_workdir_images_carry_prompt_and_seed_and_are_reproducible(workdir, tmp_path):
    prompts = ["a red circle", "a large blue square in the top left"]
    paths = gen_cli.generate(workdir, prompts, str(tmp_path / "out"), per_prompt=2, seed=5, steps=3)
    assert len(paths) == 4
    meta = [Image.open(p).text for p in paths]
    assert [m["prompt"] for m in meta] == [prompts[0]] * 2 + [prompts[1]] * 2
    assert [m["seed"] for m in meta] == ["5", "6", "7", "8"]
    assert meta[0]["steps"] == "3" and meta[0]["source"] == os.path.abspath(workdir)
    assert (meta[0]["height"], meta[0]["width"], meta[0]["guidance_scale"]) == ("32", "32", "3.0")
    assert meta[0]["checkpoint_step"] == "6"     # the workdir's newest checkpoint
    # the same request again would replace the images: refused unless overwrite=True
    with pytest.raises(ConfigError, match="--overwrite"):
        gen_cli.generate(workdir, prompts, str(tmp_path / "out"), per_prompt=2, seed=5, steps=3)

    # the image of (prompt, seed) is what the sampling pipeline draws for that prompt and seed
    config = gen_cli_config(workdir)
    config.sample.sampler.n_steps = 3
    pipe = SamplingPipeline.from_workdir(config, workdir)
    for path, m in zip(paths, meta):
        expected = pipe([m["prompt"]], int(m["seed"]))[0]
        np.testing.assert_array_equal(np.asarray(Image.open(path)), expected)
    images = [np.asarray(Image.open(p)) for p in paths]
    assert not np.array_equal(images[0], images[1])       # different seeds, different images


def gen_cli_config(workdir):
    from mmdit_jax.config_schema import workdir_config

    return workdir_config(workdir)


def test_prompt_file_and_bad_input(workdir, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# scenes\na red circle\n\n  a blue square  \n")
    assert gen_cli.read_prompts(["a green ring"], str(f)) == ["a green ring", "a red circle", "a blue square"]
    with pytest.raises(ConfigError, match="no prompts"):
        gen_cli.read_prompts([], None)
    with pytest.raises(ConfigError, match="prompt_file"):
        gen_cli.read_prompts([], str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="height=64: a workdir's model samples at its training size 32x32"):
        gen_cli.generate(workdir, ["a red circle"], str(tmp_path / "o"), height=64)
    with pytest.raises(ConfigError, match="neither a diffusers pipeline folder"):
        gen_cli.generate(str(tmp_path), ["a red circle"], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="num_images_per_prompt"):
        gen_cli.generate(workdir, ["a red circle"], str(tmp_path / "o"), per_prompt=0)


def test_command_line_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmdit_jax.generate", f"--source={tmp_path / 'nowhere'}",
                           "--prompt=a red circle"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --source") and "Traceback" not in proc.stderr


def test_pipeline_folder_images_equal_sd3pipeline_per_prompt_and_seed_whatever_the_batch(tiny_sd3_folder, tmp_path):
    from mmdit_jax.pipelines.images import to_uint8
    from mmdit_jax.pipelines.pipeline import Pipeline

    folder = tiny_sd3_folder
    prompts = ["a red circle", "a blue square", "a green ring"]
    batched = gen_cli.generate(str(folder), prompts, str(tmp_path / "b"), seed=3, batch_size=2, steps=2,
                               guidance_scale=4.0, height=32, width=48)
    single = gen_cli.generate(str(folder), prompts, str(tmp_path / "s"), seed=3, batch_size=1, steps=2,
                              guidance_scale=4.0, height=32, width=48)
    ours = Pipeline.from_folder(folder)
    for b, s, prompt, seed in zip(batched, single, prompts, (3, 4, 5)):
        image = np.asarray(Image.open(b))
        assert image.shape == (32, 48, 3) and Image.open(b).text["prompt"] == prompt
        np.testing.assert_array_equal(image, np.asarray(Image.open(s)))
        expected = to_uint8(ours.generate([prompt], height=32, width=48, num_inference_steps=2, guidance_scale=4.0,
                                          seed=seed))[0]
        # one compiled batch of 2 vs batch 1: XLA may round differently; at most one grey level
        assert np.max(np.abs(image.astype(int) - expected.astype(int))) <= 1

    # --bf16: the transformer and the VAE compute in bfloat16; the image stays close to the float32 one
    (bf16,) = gen_cli.generate(str(folder), prompts[:1], str(tmp_path / "h"), seed=3, steps=2, guidance_scale=4.0,
                               height=32, width=48, dtype="bfloat16")
    assert Image.open(bf16).text["dtype"] == "bfloat16"
    diff = np.abs(np.asarray(Image.open(bf16)).astype(int) - np.asarray(Image.open(single[0])).astype(int))
    assert 0 < diff.mean() <= 2.0   # measured 0.55 (max 4 of 255)


def test_flux_folder_images_equal_fluxpipeline_per_prompt_and_seed(tiny_flux_folder, tmp_path):
    from mmdit_jax.pipelines.images import to_uint8
    from mmdit_jax.pipelines.pipeline import Pipeline

    folder = tiny_flux_folder
    prompts = ["a red circle", "a blue square"]
    paths = gen_cli.generate(str(folder), prompts, str(tmp_path / "o"), seed=7, batch_size=2, steps=2,
                             guidance_scale=2.0)
    ours = Pipeline.from_folder(folder)
    for path, prompt, seed in zip(paths, prompts, (7, 8)):
        expected = to_uint8(ours.generate([prompt], num_inference_steps=2, guidance_scale=2.0, seed=seed))[0]
        image = np.asarray(Image.open(path))
        assert image.shape == expected.shape and Image.open(path).text["seed"] == str(seed)
        assert np.max(np.abs(image.astype(int) - expected.astype(int))) <= 1
