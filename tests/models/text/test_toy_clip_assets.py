"""The shipped toy CLIP towers: intact, loadable by the normal config route, and semantic."""

import hashlib
import json
import os

import jax
import numpy as np

from configs.text import get_config
from mmdit_jax.models.text.tokenizer_assets import ASSETS, TOY_CLIP_DIRS
from mmdit_jax.components.text import sd3_text_encoders_from_config
from mmdit_jax.study.scenes import prompts, scenes


def test_weights_match_their_recorded_hashes():
    summary = json.load(open(os.path.join(ASSETS, "toy_clip", "summary.json")))
    for tower, folder in TOY_CLIP_DIRS.items():
        digest = hashlib.sha256(open(os.path.join(folder, "model.safetensors"), "rb").read()).hexdigest()
        assert digest == summary["sha256"][tower]
    assert summary["zero_shot"]["template_4"]["both"]["all"] >= 0.99


def test_captions_of_the_same_scene_are_nearest_neighbours():
    # Contrastive pretraining pulled every caption of a scene towards that scene's image, so two different
    # templates of one scene must be closer to each other than to any other scene (random towers fail this).
    enc = sd3_text_encoders_from_config(get_config("toy_clip"), jax.random.PRNGKey(0))
    objs = scenes(80, 99)
    _, a = enc.encode(prompts(objs, 4))
    _, b = enc.encode(prompts(objs, 8))
    a, b = np.array(a), np.array(b)
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    b /= np.linalg.norm(b, axis=-1, keepdims=True)
    sims = a @ b.T
    same_scene = np.array([[o == p for p in objs] for o in objs])
    hits = [same_scene[i, np.argmax(sims[i])] for i in range(len(objs))]
    assert np.mean(hits) >= 0.95, np.mean(hits)

    random_enc = sd3_text_encoders_from_config(get_config("tiny"), jax.random.PRNGKey(0))
    ra, rb = (np.asarray(random_enc.encode(prompts(objs, t))[1]) for t in (4, 8))
    rsims = (ra / np.linalg.norm(ra, axis=-1, keepdims=True)) @ (rb / np.linalg.norm(rb, axis=-1, keepdims=True)).T
    assert np.mean([same_scene[i, np.argmax(rsims[i])] for i in range(len(objs))]) < np.mean(hits)
