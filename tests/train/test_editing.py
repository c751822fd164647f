"""Editing runs: fine-tuning a text-to-image run into an in-context or a channel-concatenating editor, the
condition dropout, sampling edits (single, multi-turn, SDEdit) and the edit command."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.editing import get_config as editing_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.config_schema import validate_config, workdir_config
from mmdit_jax.data.edits import edit_example
from mmdit_jax.setup.editing import image_dropout
from mmdit_jax.pipelines.editing import EditingPipeline
from mmdit_jax.pipelines.trained_model import load_trained
from mmdit_jax.train import loop
from mmdit_jax.train.experiment import build


@pytest.fixture(scope="module")
def edit_data(tmp_path_factory):
    """One prepared copy of the tiny edit data for every run here."""
    return str(tmp_path_factory.mktemp("edit_data"))


def _config(mode, base_workdir, data_dir, sample=False):
    cfg = editing_config(f"{mode},tiny")
    cfg.finetune.init_from = base_workdir
    cfg.data.data_dir = data_dir
    if not sample:
        cfg.train.sample_every = 0
    validate_config(cfg)
    return cfg


@pytest.fixture(scope="module")
def in_context_run(tiny_base_run, edit_data, tmp_path_factory):
    """An in-context editor fine-tuned from the text-to-image tiny run (sample grid on: the editing grid path)."""
    workdir = str(tmp_path_factory.mktemp("edit_ic"))
    loop.train(_config("in_context", tiny_base_run[1], edit_data, sample=True), workdir)
    return workdir


def _sources(n=4):   # the editing sample grid's batch: the compiled program is shared
    records = [edit_example(i, 1, 32, held_out=True) for i in range(n)]
    return np.stack([r["source"] for r in records]), [r["caption"] for r in records], records


def test_in_context_run_edits_by_instruction_and_reads_its_source(in_context_run):
    from mmdit_jax import commands

    assert os.listdir(os.path.join(in_context_run, "samples"))     # the editing sample grid was written
    grid = np.asarray(Image.open(commands.sample(workdir_config(in_context_run), in_context_run)))
    assert grid.shape[0] >= 4 * 33   # --mode=sample: a row per test source (upscaled)
    pipe = EditingPipeline(load_trained(workdir_config(in_context_run), in_context_run))
    sources, instructions, _ = _sources()
    a = pipe.edit(sources, instructions, seed=0)
    assert a.shape == sources.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, pipe.edit(sources, instructions, seed=0))             # seeded
    assert np.abs(a.astype(int) - pipe.edit(sources[::-1], instructions, seed=0).astype(int)).max() > 0   # reads it
    turns = pipe.multi_turn(sources, [instructions, instructions[::-1]], seed=0)
    assert turns.shape == (2, *sources.shape)
    np.testing.assert_array_equal(turns[0], a)                                               # turn 1 = one edit
    np.testing.assert_array_equal(turns[1], pipe.edit(a, instructions[::-1], seed=1))        # turn 2 edits turn 1
    with pytest.raises(ConfigError, match="one text per image"):
        pipe.edit(sources, instructions * 2, seed=0)


def test_channel_concat_starts_as_its_parent_trains_and_edits_with_two_scale_guidance(tiny_base_run, edit_data,
                                                                                        tmp_path):
    workdir = str(tmp_path)
    cfg = _config("channel_concat", tiny_base_run[1], edit_data)
    loop.train(cfg, workdir)
    exp, start, _ = build(cfg, workdir)
    assert start == 6
    # the initialisation: the parent's weights, the input projection widened with zero rows
    init = exp.finetune.base
    kernel = np.asarray(init["patch_embed"]["kernel"])                              # (p, p, 2C, D)
    parent = load_trained(tiny_base_run[0], tiny_base_run[1])
    np.testing.assert_array_equal(kernel[:, :, :3], np.asarray(parent.variables["params"]["patch_embed"]["kernel"]))
    assert np.all(kernel[:, :, 3:] == 0)
    # ... so the editor's prediction at step 0 is the parent's, whatever the source
    sources, instructions, _ = _sources()
    cond = parent.text.encode(instructions)
    x = jax.random.normal(jax.random.PRNGKey(0), sources.shape, jnp.float32)
    t = jnp.array([0.2, 0.9, 0.5, 0.7])
    want = jax.jit(lambda v, c: parent.family.net(v, c)(x, t))(parent.variables, cond)
    got = jax.jit(lambda v, c: exp.family.net(v, c)(x, t))({"params": init, **exp.non_trainable},
                                                            {**cond, "concat": jnp.asarray(sources / 127.5 - 1.0)})
    assert float(jnp.abs(got - want).max()) <= 1e-5 * float(jnp.abs(want).max())
    # its batches carry the source as cond["concat"]; the trained model edits with both guidance scales
    batch = exp.device_batch(next(exp.train_iterator()))
    assert batch["cond"]["concat"].shape == batch["x"].shape
    model = load_trained(workdir_config(workdir), workdir)
    edited = EditingPipeline(model).edit(sources, instructions, 0)      # two-scale guidance (formula: tests/diffusion)
    assert edited.shape == sources.shape and np.abs(edited.astype(int) - sources.astype(int)).max() > 0
    with pytest.raises(ConfigError, match="text-to-image"):
        EditingPipeline(model).sdedit(sources, instructions, 0.5, 0)


def test_sdedit_and_the_edit_command_on_workdirs(tiny_base_run, in_context_run, tmp_path):
    from mmdit_jax.edit import edit_file

    cfg, base = tiny_base_run
    pipe = EditingPipeline(load_trained(cfg, base))
    sources, _, records = _sources()
    captions = [r["target_caption"] for r in records]
    light = pipe.sdedit(sources, captions, 0.1, seed=0)
    heavy = pipe.sdedit(sources, captions, 1.0, seed=0)
    # a low strength keeps the image close to the source; strength 1 redraws it from noise
    d_light = np.abs(light.astype(int) - sources.astype(int)).mean()
    d_heavy = np.abs(heavy.astype(int) - sources.astype(int)).mean()
    assert d_light < d_heavy
    with pytest.raises(ConfigError, match="not trained to follow instructions"):
        pipe.edit(sources, captions, 0)
    with pytest.raises(ConfigError, match="strength"):
        pipe.sdedit(sources, captions, 1.5, 0)

    path = str(tmp_path / "in.png")
    Image.fromarray(sources[0]).save(path)
    out = edit_file(in_context_run, path, ["make the background navy", "remove the red circle"], str(tmp_path / "o"),
                    seed=3)
    assert [os.path.basename(p) for p in out] == ["turn_1.png", "turn_2.png"]
    with Image.open(out[1]) as im:
        assert im.text["instruction"] == "remove the red circle" and im.text["seed"] == "4"
        assert np.asarray(im).shape == (32, 32, 3)
    with pytest.raises(ConfigError, match="no instructions"):
        edit_file(in_context_run, path, [], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="does not exist"):
        edit_file(in_context_run, str(tmp_path / "missing.png"), ["x"], str(tmp_path / "o"))


def test_image_dropout_drops_the_image_alone_or_with_the_text():
    b = 20000
    cond = {"concat": jnp.ones((b, 2, 2, 3)), "context": jnp.ones((b, 4, 5)), "pooled": jnp.ones((b, 6))}
    out = image_dropout(0.1)(jax.random.PRNGKey(0), cond)
    image = np.asarray(out["concat"][:, 0, 0, 0]) == 0
    text = np.asarray(out["context"][:, 0, 0]) == 0
    np.testing.assert_array_equal(text, np.asarray(out["pooled"][:, 0]) == 0)
    assert abs(image.mean() - 0.2) < 0.01 and abs(text.mean() - 0.1) < 0.01
    assert not np.any(text & ~image)          # the text is only dropped together with the image here
    assert abs((image & text).mean() - 0.1) < 0.01


@pytest.mark.parametrize("change, match", [
    (lambda c: c.edit.update(mode="inpaint"), "edit.mode"),
    (lambda c: c.model.update(in_channels=3), "in_channels"),
    (lambda c: c.edit.update(image_drop_prob=0.7), "image_drop_prob"),
    (lambda c: c.finetune.lora.update(rank=4), "LoRA"),
    (lambda c: c.data.update(name="edit_scenes"), "source image"),
])
def test_bad_edit_settings_are_named(change, match):
    cfg = editing_config("channel_concat,tiny")
    change(cfg)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)
    ic = editing_config("in_context,tiny")
    ic.edit.image_drop_prob = 0.1
    with pytest.raises(ConfigError, match="image_drop_prob"):
        validate_config(ic)
