"""The training loop in-process: NaN stops the run naming the step and keeps the last good checkpoint;
sample and eval modes; metrics written; config validation at start."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_config
from mmdit_jax import commands
from mmdit_jax.checks import ConfigError
from mmdit_jax.config_schema import model_config, validate_config
from mmdit_jax.reporting import read_metrics
from mmdit_jax.train import experiment as experiment_module
from mmdit_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    cfg = get_config("tiny")
    summary = loop.train(cfg, workdir)
    return cfg, workdir, summary


def test_training_writes_metrics_checkpoints_and_sample_grids(trained):
    cfg, workdir, summary = trained
    assert summary["last_step"] == cfg.train.num_steps
    rows = read_metrics(workdir)
    keys = set().union(*rows)
    assert {"loss", "grad_norm", "learning_rate", "examples_per_second"} <= keys
    assert any(k.startswith("loss_bucket/") for k in keys)
    assert os.path.exists(os.path.join(workdir, "samples", f"step_{cfg.train.num_steps:07d}.png"))
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]


def test_sample_mode_builds_no_data_set_or_optimizer_state_and_redraws_the_training_grid(trained, monkeypatch):
    from PIL import Image

    import mmdit_jax.data.pipeline
    import mmdit_jax.train.state

    cfg, workdir, _ = trained
    grid_path = os.path.join(workdir, "samples", f"step_{cfg.train.num_steps:07d}.png")
    trained_grid = np.asarray(Image.open(grid_path))
    shutil.rmtree(os.path.join(workdir, "tfds"))
    shutil.rmtree(os.path.join(workdir, "text_cache"))
    for module, name in ((mmdit_jax.data.pipeline, "build_sources"), (mmdit_jax.train.state, "init_state"),
                         (mmdit_jax.train.state, "make_optimizer")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("sampling built training state"))
    sample_path = os.path.join(workdir, "samples", f"sample_step_{cfg.train.num_steps:07d}.png")
    assert commands.sample(cfg, workdir) == sample_path
    # the training loop's own picture is kept; the sample mode's is the same grid
    np.testing.assert_array_equal(np.asarray(Image.open(grid_path)), trained_grid)
    np.testing.assert_array_equal(np.asarray(Image.open(sample_path)), trained_grid)
    assert not os.path.exists(os.path.join(workdir, "tfds"))
    assert not os.path.exists(os.path.join(workdir, "text_cache"))
    with pytest.raises(ConfigError, match="--overwrite"):      # nothing replaced without being asked
        commands.sample(cfg, workdir, ["a green ring"])
    img = np.asarray(Image.open(commands.sample(cfg, workdir, ["a green ring"], overwrite=True)))
    assert img.ndim == 3 and img.shape[-1] == 3 and img.std() > 0


def test_eval_mode_uses_the_checkpoint(trained):
    cfg, workdir, _ = trained
    results = commands.evaluate(cfg, workdir)
    assert len(results) == cfg.train.loss_buckets and all(np.isfinite(v) for v in results.values())


def test_sample_mode_steers_the_pooled_embedding_and_removes_it(trained):
    from PIL import Image

    cfg, workdir, _ = trained
    grids = {}
    for name, edit in (("plain", {}), ("w0", {"weight": 0.0}), ("steered", {"weight": 4.0}), ("removed", None)):
        c = cfg.copy_and_resolve_references()
        c.sample.steering.update(positive="a blue square", negative="a red circle", **(edit or {}))
        c.sample.remove_pooled = edit is None
        c.sample.steering.weight = 0.0 if edit is None else edit.get("weight", 0.0)
        grids[name] = np.asarray(Image.open(commands.sample(c, workdir, ["a red circle"], overwrite=True)))
    np.testing.assert_array_equal(grids["w0"], grids["plain"])
    assert np.abs(grids["steered"].astype(int) - grids["plain"]).max() > 0
    assert np.abs(grids["removed"].astype(int) - grids["plain"]).max() > 0


def test_restart_after_completion_resumes_instead_of_restarting(trained):
    cfg, workdir, _ = trained
    more = cfg.copy_and_resolve_references()
    more.train.num_steps = 8
    summary = loop.train(more, workdir)
    assert summary["start_step"] == 6 and summary["last_step"] == 8


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = get_config("tiny")
    cfg.train.num_steps, cfg.train.checkpoint_every, cfg.train.log_every, cfg.train.sample_every = 8, 2, 4, 0
    original = experiment_module.Experiment.device_batch
    calls = {"n": 0}

    def poisoned(self, host_batch):
        calls["n"] += 1
        batch = original(self, host_batch)
        if calls["n"] >= 5:                                   # step 5 onwards sees NaN data
            batch["x"] = batch["x"] * jnp.nan
        return batch

    monkeypatch.setattr(experiment_module.Experiment, "device_batch", poisoned)
    with pytest.raises(loop.NonFiniteLossError, match="at step 5"):
        loop.train(cfg, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    monkeypatch.setattr(experiment_module.Experiment, "device_batch", original)
    _, start, _ = experiment_module.build(cfg, str(tmp_path))
    assert start == 4


@pytest.mark.parametrize("field, value, match", [
    ("data.name", "imagenet", "data.name='imagenet'"),
    ("data.image_sise", 32, r"unknown keys \['image_sise'\]"),
    ("model.name", "dit", "model.name='dit'"),
    ("loss.name", "l1", "loss.name='l1'"),
    ("sample.sampler.name", "ddim", "sampler.name='ddim'"),
    ("schedule.name", "cosine", "schedule.name='cosine'"),
    ("model.num_heads", 0, "model.num_heads"),
    ("model.attention_head_groups", 0, "model.attention_head_groups"),
    ("train.ema_decay", 1.5, "train.ema_decay"),
    ("sample.steering.weight", 2.0, "sample.steering.positive"),
])
def test_bad_values_are_rejected_at_start(field, value, match):
    cfg = get_config("tiny")
    section, _, key = field.rpartition(".")
    node = cfg
    for part in section.split("."):
        node = node[part]
    node[key] = value
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_sliced_score_matching_trains_the_mmdit_through_forward_mode_autodiff(tmp_path):
    # SSM differentiates the model with jax.jvp, which the hand-written (reverse-mode) gradients do not support.
    cfg = get_config("tiny")
    cfg.loss.name = "ssm"
    cfg.train.num_steps, cfg.train.sample_every = 2, 0
    assert model_config(cfg).custom_gradients is False
    assert loop.train(cfg, str(tmp_path))["last_step"] == 2
    cfg.model.custom_gradients = True
    with pytest.raises(ConfigError, match="loss.name='ssm'.*model.custom_gradients"):
        validate_config(cfg)


def test_sliced_score_matching_never_picks_cudnn_attention(monkeypatch):
    # cuDNN's fused attention is a custom_vjp too (no jax.jvp): on a GPU in bf16, attention_impl=None (which
    # picks it) becomes 'xla' for ssm, and an explicit 'cudnn' is rejected. The GPU is simulated.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cfg = get_config("tiny")
    cfg.model.dtype = "bfloat16"
    assert model_config(cfg).attention_impl is None            # other losses keep the platform's choice
    cfg.loss.name = "ssm"
    assert model_config(cfg).attention_impl == "xla"
    cfg.model.dtype = "float32"                                 # None picks XLA there anyway: left as None
    assert model_config(cfg).attention_impl is None
    cfg.model.attention_impl = "cudnn"
    with pytest.raises(ConfigError, match="model.attention_impl.*'cudnn'"):
        model_config(cfg)


def test_config_typos_are_rejected():
    cfg = get_config("tiny")
    cfg.train.num_stepz = 3
    with pytest.raises(ConfigError, match=r"unknown keys \['num_stepz'\]"):
        validate_config(cfg)
    out = subprocess.run([sys.executable, "-m", "mmdit_jax", "--config=configs/default.py:tiny", "--workdir=/tmp/x",
                          "--config.train.num_stepz=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "num_stepz" in out.stderr


def test_every_config_file_validates_and_the_ablation_trains(tmp_path):
    import importlib

    for name in ("default", "digits", "shapes_no_pooled", "toy2d"):
        for arg in ("", "tiny"):
            validate_config(importlib.import_module(f"configs.{name}").get_config(arg))
    for arg in ("", "tiny"):
        validate_config(importlib.import_module("configs.pooled_study").get_config(arg).mmdit)
    from configs.shapes_no_pooled import get_config as ablation

    cfg = ablation("tiny")
    cfg.train.num_steps, cfg.train.sample_every = 2, 2
    summary = loop.train(cfg, str(tmp_path))
    assert summary["last_step"] == 2
    from mmdit_jax.train.experiment import build
    exp, _, _ = build(cfg, str(tmp_path))
    assert "text_embedder" not in exp.state.params
    exp.checkpointer.close()


def test_commands_keep_library_logs_at_warning_unless_verbosity_is_given(monkeypatch):
    from absl import flags, logging

    from mmdit_jax.reporting import quiet_library_logs

    before = logging.get_verbosity()
    try:
        logging.set_verbosity(logging.INFO)
        quiet_library_logs()
        assert logging.get_verbosity() == logging.WARNING
        logging.set_verbosity(logging.DEBUG)
        monkeypatch.setattr(flags.FLAGS["verbosity"], "present", 1)   # --verbosity=1 on the command line
        quiet_library_logs()
        assert logging.get_verbosity() == logging.DEBUG
    finally:
        logging.set_verbosity(before)
