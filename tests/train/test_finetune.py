"""Fine-tuning a trained run: LoRA trains and checkpoints only the adapter on a frozen, recorded base and resumes
exactly; sampling the workdir merges the adapter; full fine-tuning starts at the base; bad set-ups are named."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from configs.finetune import get_config as finetune_config
from mmdit_jax import commands
from mmdit_jax.adapters.lora import merge
from mmdit_jax.generate import generate
from mmdit_jax.interop.lora import load_lora
from mmdit_jax.models.flops import num_parameters
from mmdit_jax.pipelines.generator import with_lora
from mmdit_jax.checkpoints import CheckpointError, restore_params
from mmdit_jax.checks import ConfigError
from mmdit_jax.config_schema import validate_config
from mmdit_jax.pipelines.trained_model import load_trained
from mmdit_jax.train import loop
from mmdit_jax.train.experiment import build


# read_state restores without a target tree: Orbax warns that it takes the shardings from the files.
pytestmark = pytest.mark.filterwarnings("ignore:Sharding info not provided when restoring")


def tree_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def read_state(workdir, step):
    return ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


@pytest.fixture(scope="module")
def runs(tiny_base_run, tmp_path_factory):
    cfg, base = tiny_base_run
    lora_dir = str(tmp_path_factory.mktemp("lora"))
    lcfg = finetune_config("lora,tiny")
    lcfg.finetune.init_from = base
    lcfg.train.update(num_steps=4, checkpoint_every=2, sample_every=4, log_every=1)
    lcfg.optim.update(learning_rate=1e-2, warmup_steps=0)     # 4 steps that move the (EMA) adapter visibly
    lcfg.train.ema_decay = 0.5
    loop.train(lcfg, lora_dir)
    return base, cfg, lora_dir, lcfg


def test_lora_checkpoints_hold_only_the_adapter_and_its_optimizer_state(runs):
    base, cfg, lora_dir, lcfg = runs
    state = read_state(lora_dir, 4)
    leaves = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    assert leaves and {p[-1].key for p, _ in leaves} == {"lora_A", "lora_B"}
    base_params = read_state(base, 6)["ema_params"]
    n_adapter, n_model = num_parameters(state["params"]), num_parameters(base_params)
    # 2 blocks x 8 projections (7 in the last) of 32x32 at rank 8: r (d_in + d_out) = 512 each
    assert n_adapter == 15 * 512 and n_adapter < n_model / 10
    assert num_parameters(state["opt_state"]) <= 2 * n_adapter + 10    # Adam's two moments of the adapter, counters
    # the base trained at rank 8 changed: B moved off zero
    assert np.abs(state["params"]["transformer_blocks_0"]["attn"]["to_q"]["lora_B"]).max() > 0
    with open(os.path.join(lora_dir, "init_from.json")) as f:
        assert json.load(f) == {"workdir": os.path.abspath(base), "step": 6}
    assert os.path.exists(os.path.join(lora_dir, "samples", "step_0000004.png"))


def test_sampling_the_workdir_merges_the_adapter_into_the_recorded_base(runs):
    base, cfg, lora_dir, lcfg = runs
    model = load_trained(lcfg, lora_dir)
    state = read_state(lora_dir, 4)
    expected = merge(read_state(base, 6)["ema_params"], state["ema_params"], lcfg.finetune.lora.alpha / 8)
    assert model.step == 4
    for a, b in zip(jax.tree_util.tree_leaves(model.variables["params"]), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    plain = load_trained(cfg, base)
    assert not tree_equal(model.variables["params"], plain.variables["params"])


def test_a_resumed_lora_run_ends_exactly_where_the_uninterrupted_one_did(runs, tmp_path):
    base, cfg, lora_dir, lcfg = runs
    resumed = str(tmp_path / "resumed")
    shutil.copytree(lora_dir, resumed, ignore=shutil.ignore_patterns("4", "samples", "events*"))
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["2"]
    lcfg = lcfg.copy_and_resolve_references()
    lcfg.train.sample_every = 0
    summary = loop.train(lcfg, resumed)
    assert summary["start_step"] == 2
    assert tree_equal(read_state(resumed, 4)["params"], read_state(lora_dir, 4)["params"])
    assert tree_equal(read_state(resumed, 4)["opt_state"], read_state(lora_dir, 4)["opt_state"])


def test_full_fine_tuning_starts_from_the_base_ema_weights(runs, tmp_path):
    base, cfg, _, _ = runs
    fcfg = finetune_config("full,tiny")
    fcfg.finetune.init_from = base
    exp, start, _ = build(fcfg, str(tmp_path / "full"))
    assert start == 0 and exp.frozen is None
    _, base_ema = restore_params(os.path.join(base, "checkpoints"), exp.state.params)
    assert tree_equal(exp.state.params, base_ema) and tree_equal(exp.state.ema_params, base_ema)


def test_bad_fine_tuning_setups_are_named(runs, tmp_path):
    base, cfg, lora_dir, lcfg = runs
    bad = finetune_config("lora,tiny")
    with pytest.raises(ConfigError, match="finetune.lora.rank > 0 needs finetune.init_from"):
        validate_config(bad)
    bad.finetune.init_from = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="finetune.init_from=.*nowhere.*not a folder"):
        validate_config(bad)
    bad.finetune.init_from = base
    bad.model.num_layers = 3
    with pytest.raises(ConfigError, match=r"sections \['model'\] differ"):
        validate_config(bad)
    text_tuned = tmp_path / "text_tuned"
    (text_tuned / "checkpoints").mkdir(parents=True)
    saved = json.load(open(os.path.join(base, "config.json")))
    saved["finetune"] = {"init_from": base, "lora": {"rank": 0, "alpha": 0.0, "targets": []}, "text_encoder": True}
    (text_tuned / "config.json").write_text(json.dumps(saved))
    bad.model.num_layers = cfg.model.num_layers
    bad.finetune.init_from = str(text_tuned)
    with pytest.raises(ConfigError, match="trained its text encoders too"):
        validate_config(bad)
    bad = finetune_config("lora,tiny")
    bad.finetune.init_from = base
    bad.finetune.lora.rank = -1
    with pytest.raises(ConfigError, match="finetune.lora.rank=-1"):
        validate_config(bad)
    bad.finetune.lora.rank, bad.finetune.lora.targets = 2, ("to_query",)
    with pytest.raises(ConfigError, match="match no module"):
        build(bad, str(tmp_path / "typo"))
    # the recorded base step is gone: the run stops naming it instead of adapting another base
    moved = str(tmp_path / "lora_moved")
    shutil.copytree(lora_dir, moved)
    with open(os.path.join(moved, "init_from.json"), "w") as f:
        json.dump({"workdir": os.path.abspath(base), "step": 5}, f)
    with pytest.raises(CheckpointError, match="no checkpoint of step 5"):
        load_trained(lcfg, moved)


def test_an_exported_lora_file_reproduces_the_fine_tune_on_its_base(runs, tmp_path):
    base, cfg, lora_dir, lcfg = runs
    path = commands.export_lora(lcfg, lora_dir, str(tmp_path / "export"))
    assert os.path.basename(path) == "pytorch_lora_weights.safetensors"
    state_dict, _ = load_lora(path)
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in state_dict and len(state_dict) == 2 * 15
    # the file merged into the base model (generate --lora) is the fine-tune's own model
    family = load_trained(cfg, base).family
    merged = with_lora(family, load_trained(cfg, base).variables, path)
    own = load_trained(lcfg, lora_dir).variables
    for a, b in zip(jax.tree_util.tree_leaves(merged["params"]), jax.tree_util.tree_leaves(own["params"])):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    prompts = ["a red circle"]
    via_file = generate(base, prompts, str(tmp_path / "a"), lora=path, steps=4)
    via_workdir = generate(lora_dir, prompts, str(tmp_path / "b"), steps=4)
    plain = generate(base, prompts, str(tmp_path / "c"), steps=4)
    img = lambda p: np.asarray(Image.open(p[0]), np.int32)  # noqa: E731
    assert np.abs(img(via_file) - img(via_workdir)).max() <= 1
    assert np.abs(img(via_file) - img(plain)).max() > 1
    assert Image.open(via_file[0]).text["lora"] == os.path.abspath(path)
    with pytest.raises(ConfigError, match="not a LoRA fine-tune"):
        commands.export_lora(cfg, base)
