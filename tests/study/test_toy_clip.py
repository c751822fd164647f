"""The toy CLIP: its InfoNCE objective, that pretraining learns, and that its towers export to transformers."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from mmdit_jax.eval.attributes import labelled_images
from mmdit_jax.interop.hf_text import load_clip
from mmdit_jax.models.text.clip import CLIPTextModel
from mmdit_jax.models.text.tokenizers import PromptTokenizer
from mmdit_jax.study import toy_clip as tc


def test_contrastive_loss_closed_forms():
    b = 4
    u = jnp.eye(b)
    distinct = jnp.eye(b, dtype=bool)
    # Perfect alignment, very sharp logits: loss -> 0. Uninformative logits (scale 0): log B.
    assert float(tc.contrastive_loss(u, u, jnp.float32(100.0), distinct)) < 1e-6
    assert float(tc.contrastive_loss(u, u, jnp.float32(0.0), distinct)) == pytest.approx(np.log(b), rel=1e-6)
    # Captions 0 and 1 show the same scene, so both are positives of images 0 and 1 (target 1/2 each). With
    # logits s * I: rows 0, 1 cost log(e^s + 3) - s/2, rows 2, 3 cost log(e^s + 3) - s (a single-positive
    # target would charge every row the latter).
    same = distinct.at[0, 1].set(True).at[1, 0].set(True)
    got = float(tc.contrastive_loss(u, u, jnp.float32(2.0), same))
    assert got == pytest.approx(np.log(np.exp(2.0) + 3) - 1.5, rel=1e-6)


def test_pretraining_learns_attributes_beyond_chance():
    model = tc.toy_clip_model()
    logs = []
    # The bounds need the steps more than a large batch: at batch 32 and 150 steps six seeds clear both with margin
    # (loss drop >= 2.25, position accuracy >= 0.99); with fewer steps some seeds do not.
    params = tc.pretrain(model, steps=150, batch_size=32, learning_rate=3e-3, num_train=2000, seed=3, log=logs.append)
    first, last = (float(s.rsplit(" ", 1)[1]) for s in (logs[0], logs[-1]))
    assert last < first - 1.0, logs
    images, labels = labelled_images(300, 1)
    acc = tc.zero_shot_accuracy(model, params, images, labels, template=4)["both"]
    assert acc["position"] > 0.5, acc          # chance: 1/9


def test_exported_towers_load_in_transformers_and_back(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = tc.toy_clip_model()
    ids0 = {k: jnp.zeros((1, 32), jnp.int32) for k in tc.TOWERS}
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.uint8), ids0)["params"]
    paths = tc.export_towers(model, params, str(tmp_path))
    prompts = ["a red circle", "a photo of a large blue square placed in the top left of the picture"]
    for tower, cfg in (("clip_l", model.clip_l), ("clip_g", model.clip_g)):
        ids = PromptTokenizer(paths[tower], "clip", 32)(prompts)            # the copied tokenizer files
        ours = CLIPTextModel(cfg).apply({"params": params["towers_" + tower]}, jnp.asarray(ids))
        ref = transformers.CLIPTextModelWithProjection.from_pretrained(paths[tower], local_files_only=True).eval()
        with torch.no_grad():
            out = ref(torch.as_tensor(np.asarray(ids), dtype=torch.long), output_hidden_states=True)
        np.testing.assert_allclose(out.text_embeds.numpy(), np.asarray(ours["text_embeds"]), atol=1e-5)
        np.testing.assert_allclose(out.hidden_states[-2].numpy(), np.asarray(ours["hidden_states"][-2]), atol=1e-5)
        cfg_back, variables = load_clip(paths[tower])
        assert cfg_back == cfg
        for a, b in zip(jax.tree_util.tree_leaves(variables["params"]),
                        jax.tree_util.tree_leaves(params["towers_" + tower])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
