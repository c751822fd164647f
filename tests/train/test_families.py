"""The command line is model-agnostic: a family registered outside the package trains, checkpoints, resumes and
samples through the unchanged CLI; an unconditional 2D score model (toy2d + mlp) trains and samples by annealed
Langevin; bad input gets one line naming the field and no traceback; sampling an empty workdir fails naming it."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmdit_jax.checks import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmdit_jax", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_a_family_registered_outside_the_package_trains_resumes_and_samples_through_the_cli(tmp_path):
    work = str(tmp_path / "run")
    config = "--config=tests/train/pixel_mlp_config.py"
    first = cli(config, f"--workdir={work}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["2", "4"]
    resumed = cli(config, f"--workdir={work}", "--config.train.num_steps=6")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint step 4" in resumed.stdout
    assert "6" in os.listdir(os.path.join(work, "checkpoints"))
    trained_grid = np.asarray(Image.open(os.path.join(work, "samples", "step_0000006.png")))
    sampled = cli(config, f"--workdir={work}", "--mode=sample")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    # the sample command draws exactly the grid the training loop drew from the same EMA weights and seed
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(work, "samples", "sample_step_0000006.png"))),
                                  trained_grid)
    assert trained_grid.std() > 0


def test_toy2d_mlp_score_model_trains_and_samples_by_annealed_langevin(tmp_path):
    from configs.toy2d import get_config
    from mmdit_jax import commands
    from mmdit_jax.config_schema import validate_config
    from mmdit_jax.data.toy2d import NCSN_MIXTURE
    from mmdit_jax.pipelines.sampling import SamplingPipeline

    cfg = get_config("tiny")
    cfg.train.sample_every = 0
    validate_config(cfg)
    assert commands.train(cfg, str(tmp_path))["last_step"] == cfg.train.num_steps
    pipe = SamplingPipeline.from_workdir(cfg, str(tmp_path))
    assert not pipe.conditional and pipe.model.step == cfg.train.num_steps
    import jax

    x = np.asarray(pipe.sample(None, jax.random.PRNGKey(0), n=512))
    assert x.shape == (512, 2)
    # samples land on the modes: most within 3 of (5, 5) or (-5, -5), and both modes are visited
    dist = np.min(np.linalg.norm(x[:, None] - np.asarray(NCSN_MIXTURE.means)[None], axis=-1), axis=-1)
    assert np.mean(dist < 3.0) > 0.8, np.mean(dist < 3.0)
    comp = np.asarray(NCSN_MIXTURE.component(x))
    assert 0.05 < np.mean(comp == 1) < 0.4      # the data's weight is 0.2
    picture = np.asarray(Image.open(commands.sample(cfg, str(tmp_path))))
    assert picture.ndim == 3 and picture.std() > 0
    losses = commands.evaluate(cfg, str(tmp_path))
    assert len(losses) == cfg.train.loss_buckets and all(np.isfinite(v) for v in losses.values())


def test_text_families_are_rejected_on_uncaptioned_data():
    from configs.toy2d import get_config
    from mmdit_jax.config_schema import validate_config
    from mmdit_jax.families import family_config

    cfg = get_config("tiny")
    cfg.model = family_config("sd3")
    with pytest.raises(ConfigError, match="model.name='sd3' is conditioned on text"):
        validate_config(cfg)
    cfg.model = family_config("mlp")
    cfg.model.depht = 3
    with pytest.raises(ConfigError, match=r"unknown keys \['depht'\]"):
        validate_config(cfg)


def test_a_malformed_override_prints_one_line_naming_the_field_and_no_traceback(tmp_path):
    out = cli("--config=configs/default.py:tiny", f"--workdir={tmp_path / 'w'}", "--config.model.num_heads=0")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: model.num_heads must be an integer >= 1"), out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()


def test_sampling_a_workdir_without_a_checkpoint_fails_naming_it_and_creates_nothing(tmp_path):
    empty = tmp_path / "typo"
    out = cli("--config=configs/default.py:tiny", f"--workdir={empty}", "--mode=sample")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"no checkpoint in {empty}/checkpoints" in out.stderr, out.stderr[-2000:]
    assert not empty.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    from configs.default import get_config
    from mmdit_jax import commands
    from mmdit_jax.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match=str(existing)):
        commands.evaluate(get_config("tiny"), str(existing))
    assert list(existing.iterdir()) == []


def test_text_widths_that_do_not_fit_the_model_are_named(tmp_path):
    from configs.default import get_config
    from mmdit_jax.pipelines.trained_model import load_trained

    cfg = get_config("tiny")
    cfg.model.joint_attention_dim = 64
    with pytest.raises(ConfigError, match="context width 96, but model.joint_attention_dim=64"):
        load_trained(cfg, str(tmp_path), allow_untrained=True)
