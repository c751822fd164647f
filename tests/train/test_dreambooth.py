"""DreamBooth: the source pairs instance and class records with their weights, the class images are the frozen
base's own samples drawn once, the weighted loss weighs, a LoRA DreamBooth run trains, bad settings are named."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from configs.default import get_config as default_config
from configs.dreambooth import get_config as dreambooth_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.config_schema import validate_config
from mmdit_jax.data import subjects
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.pipelines.trained_model import load_trained
from mmdit_jax.train import dreambooth as db_module
from mmdit_jax.train import loop
from mmdit_jax.train.dreambooth import DreamBoothSource, instance_records
from mmdit_jax.train.experiment import build


@pytest.fixture(scope="module")
def base(tiny_base_run):
    return tiny_base_run[1]


def tiny(base, prior_weight=0.5):
    cfg = dreambooth_config("lora,tiny")
    cfg.finetune.init_from = base
    cfg.dreambooth.prior_weight = prior_weight
    return cfg


def test_the_source_alternates_instances_and_class_images_with_their_weights():
    inst = [{"image": np.full((2, 2, 3), i, np.uint8), "caption": "a sks circle", "loss_weight": 1.0} for i in range(3)]
    cls = [{"image": np.full((2, 2, 3), 100 + i, np.uint8), "caption": "a circle", "loss_weight": 0.5}
           for i in range(5)]
    src = DreamBoothSource(inst, cls)
    assert len(src) == 10
    assert [int(src[i]["image"][0, 0, 0]) for i in range(10)] == [0, 100, 1, 101, 2, 102, 0, 103, 1, 104]
    assert [src[i]["loss_weight"] for i in range(4)] == [1.0, 0.5, 1.0, 0.5]
    alone = DreamBoothSource(inst, [], length=7)
    assert len(alone) == 7 and [int(alone[i]["image"][0, 0, 0]) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(IndexError):
        src[10]


def test_instance_images_come_from_a_subject_or_a_folder(base, tmp_path):
    cfg = tiny(base)
    recs = instance_records(cfg)
    name = cfg.dreambooth.subject
    assert len(recs) == cfg.dreambooth.num_instance
    assert all(r["caption"] == f"a {cfg.dreambooth.token} {subjects.subject_class(name)}" for r in recs)
    assert recs[0]["image"].shape == (32, 32, 3) and recs[0]["image"].dtype == np.uint8
    for i, r in enumerate(recs[:2]):
        Image.fromarray(np.kron(r["image"], np.ones((2, 2, 1), np.uint8))).save(tmp_path / f"{i}.png")   # 64x64
    cfg.dreambooth.update(subject="", instance_dir=str(tmp_path), class_name="square")
    folder = instance_records(cfg)
    assert len(folder) == 2 and folder[0]["caption"] == f"a {cfg.dreambooth.token} square"
    # a 2x nearest upscale resized back by bicubic: the subject's pixels, up to the resampling's rounding
    assert np.abs(folder[0]["image"].astype(int) - recs[0]["image"].astype(int)).mean() < 8


@pytest.mark.filterwarnings("ignore:Sharding info not provided when restoring")
def test_a_lora_dreambooth_run_trains_on_the_base_models_own_class_images_and_the_clip_towers(base, tmp_path,
                                                                                             monkeypatch):
    from mmdit_jax.components.from_config import family_from_config, text_from_config

    cfg = tiny(base, prior_weight=0.5)
    cfg.finetune.text_encoder = True
    cfg.optim.update(learning_rate=1e-2, warmup_steps=0)
    cfg.train.update(num_steps=2, checkpoint_every=2, sample_every=0, ema_decay=0.0)
    workdir = str(tmp_path / "db")
    loop.train(cfg, workdir)
    cached = os.listdir(os.path.join(workdir, "class_images"))
    assert len(cached) == 1
    images = np.load(os.path.join(workdir, "class_images", cached[0]))
    base_model = load_trained(default_config("tiny"), base)
    prompt = subjects.class_prompt(subjects.subject_class(cfg.dreambooth.subject))
    expected = SamplingPipeline(base_model)([prompt] * cfg.dreambooth.num_class_images, cfg.dreambooth.class_seed)
    np.testing.assert_array_equal(images, expected)

    # the CLIP towers trained: the in-step encoding of token ids is the text path's own encoding given the same
    # weights (up to the float32 rounding of a differently fused program), and sampling reads the trained towers
    text = text_from_config(cfg, family_from_config(cfg))
    prompts = ["a v circle", "a circle"]
    context, pooled = text.encode(prompts)["context"], text.encode(prompts)["pooled"]
    tokens = {k: jnp.asarray(v) for k, v in text.encoders.clip_tokens(prompts).items()}
    encode = jax.jit(text.encoders.encode_clip_tokens)
    c2, y2 = encode(text.encoders.clip_params(), tokens, context)
    np.testing.assert_allclose(c2, context, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y2, pooled, rtol=1e-5, atol=1e-5)
    tuned = load_trained(cfg, workdir).text.encode(prompts)
    assert np.abs(np.asarray(tuned["pooled"]) - np.asarray(pooled)).max() > 1e-4      # the towers moved
    trained = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", "2", "state"))["ema_params"]
    np.testing.assert_allclose(tuned["pooled"], encode(trained["text"], tokens, context)[1], rtol=1e-5, atol=1e-5)

    # a second build reuses the cache (drawing again would fail) and batches carry the per-example weights
    monkeypatch.setattr(db_module, "SamplingPipeline", None)
    exp, start, _ = build(cfg, workdir)
    assert start == 2
    batch = exp.device_batch(next(exp.train_iterator()))
    assert set(np.unique(np.asarray(batch["loss_weight"]))) <= {0.5, 1.0}
    # the weighted loss is mean(w l): all weights 2 doubles the loss of the same step
    step = exp.train_step()
    ones = {**batch, "loss_weight": jnp.ones_like(batch["loss_weight"])}
    twos = {**batch, "loss_weight": 2 * jnp.ones_like(batch["loss_weight"])}
    copy = lambda: jax.tree_util.tree_map(jnp.copy, exp.state)  # noqa: E731  (the step donates its state)
    loss1 = float(step(copy(), ones, jax.random.PRNGKey(0))[1]["loss"])
    loss2 = float(step(copy(), twos, jax.random.PRNGKey(0))[1]["loss"])
    assert loss1 > 0 and loss2 == pytest.approx(2 * loss1, rel=1e-6)
    exp.checkpointer.close()


def test_bad_dreambooth_settings_are_named(base, tmp_path):
    cfg = tiny(base)
    cfg.dreambooth.subject = "unicorn"
    with pytest.raises(ConfigError, match="dreambooth.subject='unicorn'.*choose one of"):
        validate_config(cfg)
    cfg = tiny(base)
    cfg.dreambooth.instance_dir = str(tmp_path)
    with pytest.raises(ConfigError, match="exactly one of dreambooth.subject"):
        validate_config(cfg)
    cfg = tiny(base)
    cfg.dreambooth.prior_weight = -1.0
    with pytest.raises(ConfigError, match="dreambooth.prior_weight"):
        validate_config(cfg)
    cfg = tiny(base)
    cfg.dreambooth.token = "two words"
    with pytest.raises(ConfigError, match="dreambooth.token"):
        validate_config(cfg)
    cfg = tiny(base)
    cfg.finetune.init_from = ""
    cfg.finetune.lora.rank = 0
    with pytest.raises(ConfigError, match="needs finetune.init_from"):
        validate_config(cfg)
