"""The pooled-CLIP study on a diffusers pipeline folder (``mmdit_jax.study.folder_study``): removal on a tiny SD3
folder, steering on a tiny FLUX folder (w = 0 bit-identical to the unsteered image), the offline deviation metric
named in RESULTS.md, and bad input as one error naming the flag."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmdit_jax.checks import ConfigError
from mmdit_jax.eval.deviation import make_deviation, pixel_deviation
from mmdit_jax.study import folder_study as fs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHORT, LONG = "a red circle", "a large blue square with a thin yellow border in the top left corner of the picture"


@pytest.fixture(scope="module")
def sd3_folder(tiny_sd3_folder):
    return str(tiny_sd3_folder)


@pytest.fixture(scope="module")
def flux_folder(tiny_flux_folder):
    return str(tiny_flux_folder)


def test_removal_on_sd3_folder_orders_by_tokens_and_names_the_metric(sd3_folder, tmp_path):
    settings = fs.FolderSettings(sd3_folder, prompts=(LONG, SHORT), seeds=(0,), steps=2, size=32)
    results = fs.removal(settings, str(tmp_path), log=lambda _: None)

    rows = results["per_prompt"]
    assert [r["prompt"] for r in rows] == [SHORT, LONG]                  # ordered by token count
    assert rows[0]["tokens"] == 3 and rows[1]["tokens"] > rows[0]["tokens"]
    for r in rows:
        assert r["max_abs_diff"] > 0 and r["deviation"][0] > 0, r       # removing the pooled vector changes the image
    for name in ("removal_grid.png", "deviation_vs_tokens.png", "results.json", "RESULTS.md"):
        assert os.path.getsize(tmp_path / name) > 0, name
    assert json.loads((tmp_path / "results.json").read_text())["deviation_metric"]["kind"] == "pixel"
    text = (tmp_path / "RESULTS.md").read_text()
    assert "**Deviation metric: `pixel`" in text and "no --dreamsim_dir given" in text
    assert "StableDiffusion3Pipeline" in text and SHORT in text


def test_steering_on_flux_folder_w0_is_exact(flux_folder, tmp_path):
    settings = fs.FolderSettings(flux_folder, prompts=(SHORT,), pairs=(("a blue circle", "a red circle"),),
                                 weights=(3.0,), seeds=(1,), steps=2, size=32)
    results = fs.steering(settings, str(tmp_path), log=lambda _: None)

    assert results["weights"] == [0.0, 3.0]                              # w = 0 is added for the exactness check
    (pair,) = results["pairs"]
    assert pair["max_abs_diff_w0_vs_original"] == 0
    assert pair["deviation"]["0"] == (0.0, 0.0)
    assert pair["deviation"]["3"][0] > 0                                 # w = 3 moves the image
    for name in ("steer_pair0.png", "deviation_vs_w.png", "RESULTS.md"):
        assert os.path.getsize(tmp_path / name) > 0, name
    assert "max |Δ| = 0 (uint8; 0 = exact)" in (tmp_path / "RESULTS.md").read_text()

    # the same check by hand: steering at w = 0 is the unsteered image, bit for bit
    model = fs.open_model(settings)
    original = model.image(SHORT, 1)
    np.testing.assert_array_equal(model.image(SHORT, 1, steering=(["a blue circle"], ["a red circle"], 0.0)), original)
    assert not np.array_equal(model.image(SHORT, 1, remove_pooled=True), original)


def test_pixel_deviation():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(pixel_deviation(a, a), [0.0, 0.0])
    np.testing.assert_allclose(pixel_deviation(a, b), pixel_deviation(b, a))
    assert np.all(pixel_deviation(a, 255 - a) > pixel_deviation(a, b)) and np.all(pixel_deviation(a, b) > 0)
    # uint8 and [-1, 1] inputs agree; a flat black vs white pair is 1
    np.testing.assert_allclose(pixel_deviation(a, b), pixel_deviation(a / 127.5 - 1, b / 127.5 - 1), atol=1e-12)
    np.testing.assert_allclose(pixel_deviation(np.zeros_like(a), np.full_like(a, 255)), [1.0, 1.0])
    assert make_deviation("pixel") is pixel_deviation                     # no classifier needed


def test_metric_falls_back_offline(tmp_path):
    metric = fs.choose_metric(str(tmp_path))                             # an empty folder: no weights
    assert metric.kind == "pixel" and ("not installed" in metric.why or "lacks DreamSim's weights" in metric.why)
    assert "`pixel`" in metric.describe()
    with pytest.raises(ConfigError, match="--dreamsim_dir='/nowhere/dreamsim' is not a folder"):
        fs.choose_metric("/nowhere/dreamsim")


def test_input_files(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# scenes\na cat\n\n  a red bicycle  \n")
    assert fs.read_prompts(str(prompts)) == ("a cat", "a red bicycle")
    assert fs.read_prompts(None) == fs.DEFAULT_PROMPTS
    steer = tmp_path / "steer.txt"
    steer.write_text("long hair | short hair\n# comment\nwinter|summer\n")
    assert fs.read_pairs(str(steer)) == (("long hair", "short hair"), ("winter", "summer"))
    assert fs.with_zero((2.0, 1.0, 2.0)) == (0.0, 2.0, 1.0)
    assert fs.parse_numbers("seeds", ["0", "3"], int, (0,)) == (0, 3)


def test_bad_input_names_the_flag(tmp_path, sd3_folder):
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match=r"--prompts=.*holds no prompt"):
        fs.read_prompts(str(tmp_path / "empty.txt"))
    with pytest.raises(ConfigError, match=r"--prompts=.*does not exist"):
        fs.read_prompts(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.txt").write_text("long hair | short hair\nwinter summer\n")
    with pytest.raises(ConfigError, match=r"--steer=.* line 2: 'winter summer' is not 'p\+ \| p-'"):
        fs.read_pairs(str(tmp_path / "bad.txt"))
    with pytest.raises(ConfigError, match="--weights=1,x: give comma-separated floats"):
        fs.parse_numbers("weights", ["1", "x"], float, fs.DEFAULT_WEIGHTS)
    with pytest.raises(ConfigError, match="--pipeline=.* is not a folder"):
        fs.pipeline_class(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="--pipeline=.* has no model_index.json"):
        fs.pipeline_class(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ConfigError, match=r"_class_name='StableDiffusionXLPipeline' is not supported; valid: \["):
        fs.pipeline_class(str(tmp_path))
    with pytest.raises(ConfigError, match="--size=33: height=33 must be divisible by 2"):
        fs.open_model(fs.FolderSettings(sd3_folder, size=33, steps=1))


def test_command_line_error_is_one_line(tmp_path):
    steer = tmp_path / "steer.txt"
    steer.write_text("no bar here\n")
    proc = subprocess.run([sys.executable, "-m", "experiments.pooled_steering.run", f"--pipeline={tmp_path}",
                           f"--steer={steer}"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --steer=") and "line 1" in last and "Traceback" not in proc.stderr
