"""A toy CLIP with meaning: the tiny CLIP-L / CLIP-G text towers pretrained contrastively on ``shapes``.

Real CLIPs are contrastively pretrained, so their pooled vectors are semantic; random tiny towers are not.
Both text towers are trained against one small image tower with a projection head per tower:

    u_i = normalize(P_k z(x_i)),  v_j = normalize(text_embeds_k(caption_j)),  s_ij = exp(tau) u_i . v_j
    L_k = 1/2 [ CE(s, Y) + CE(s^T, Y^T) ],   Y_ij = [scene_i == scene_j] / sum_j [scene_i == scene_j]

(InfoNCE; Y counts two captions of the same scene as positives.) L = L_l + L_g. The towers are then exported
as transformers ``CLIPTextModelWithProjection`` folders and loaded, frozen, by the study's MMDiT configs.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmdit_jax.data.captions import COLOURS, POSITIONS, SHAPES, SIZES, TEMPLATES, ShapeObject, describe
from mmdit_jax.data.shapes import example
from mmdit_jax.eval.attributes import ATTRIBUTES
from mmdit_jax.models.convnet import ConvEncoder, to_unit_range
from mmdit_jax.models.text.clip import CLIPTextConfig, CLIPTextModel
from mmdit_jax.models.text.conditioning import text_presets
from mmdit_jax.models.text.tokenizer_assets import CLIP_DIR
from mmdit_jax.models.text.tokenizers import PromptTokenizer

Array = jax.Array
TOWERS = ("clip_l", "clip_g")


class ToyCLIP(nn.Module):
    """Two text towers (SD3's CLIP-L and CLIP-G roles) and one image tower with a projection per text tower."""

    clip_l: CLIPTextConfig
    clip_g: CLIPTextConfig
    image_widths: tuple[int, ...] = (16, 32, 64)
    image_embed_dim: int = 128

    def setup(self):
        self.towers = {"clip_l": CLIPTextModel(self.clip_l), "clip_g": CLIPTextModel(self.clip_g)}
        self.image_tower = ConvEncoder(self.image_widths, self.image_embed_dim)
        self.image_projection = {k: nn.Dense(c.projection_dim, use_bias=False)
                                 for k, c in (("clip_l", self.clip_l), ("clip_g", self.clip_g))}
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())

    def encode_text(self, ids: dict[str, Array]) -> dict[str, Array]:
        """``{tower: ids (B, T)} -> {tower: unit text embeddings (B, d_k)}``."""
        return {k: _normalize(self.towers[k](ids[k])["text_embeds"]) for k in TOWERS}

    def encode_image(self, images: Array) -> dict[str, Array]:
        """``(B, H, W, 3) -> {tower: unit image embeddings (B, d_k)}``."""
        _, z = self.image_tower(to_unit_range(images))
        return {k: _normalize(self.image_projection[k](z)) for k in TOWERS}

    def __call__(self, images: Array, ids: dict[str, Array]) -> tuple[dict, dict, Array]:
        return self.encode_image(images), self.encode_text(ids), jnp.exp(self.logit_scale)


def _normalize(v: Array) -> Array:
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True)


def contrastive_loss(u: Array, v: Array, scale: Array, same: Array) -> Array:
    """Symmetric multi-positive InfoNCE; ``u, v: (B, d)`` unit vectors, ``same: (B, B)`` bool (same scene)."""
    logits = scale * u @ v.T
    target = same / same.sum(-1, keepdims=True)
    return 0.5 * (optax.softmax_cross_entropy(logits, target).mean() + optax.softmax_cross_entropy(logits.T, target.T).mean())


def toy_clip_model(image_widths: tuple[int, ...] = (16, 32, 64)) -> ToyCLIP:
    presets = text_presets()
    return ToyCLIP(presets["clip_tiny"], presets["clip_tiny_g"], tuple(image_widths))


def _data(n: int, seed: int, image_size: int, tokenizer: PromptTokenizer) -> dict[str, np.ndarray]:
    rows = [example(i, seed, image_size, max_objects=1) for i in range(n)]
    scene = np.array([np.ravel_multi_index([r[a] for a in ATTRIBUTES], [len(v) for v in ATTRIBUTES.values()])
                      for r in rows])
    return {"image": np.stack([r["image"] for r in rows]), "ids": tokenizer([r["caption"] for r in rows]),
            "scene": scene, **{a: np.array([r[a] for r in rows]) for a in ATTRIBUTES}}


def pretrain(model: ToyCLIP, steps: int, batch_size: int, learning_rate: float, num_train: int, seed: int,
             image_size: int = 32, max_length: int = 32, log=print) -> dict[str, Any]:
    """AdamW + cosine on generated image–caption pairs of stream ``seed``; returns the params."""
    tokenizer = PromptTokenizer(CLIP_DIR, "clip", max_length)
    data = _data(num_train, seed, image_size, tokenizer)
    key = jax.random.PRNGKey(seed)
    ids0 = {k: jnp.zeros((1, max_length), jnp.int32) for k in TOWERS}
    params = model.init(key, jnp.zeros((1, image_size, image_size, 3), jnp.uint8), ids0)["params"]
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(200, steps // 10), max(steps, 2),
                                                         learning_rate * 0.05), weight_decay=1e-4)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, images, ids, scene):
        def loss_fn(p):
            u, v, scale = model.apply({"params": p}, images, {k: ids for k in TOWERS})
            same = scene[:, None] == scene[None, :]
            return sum(contrastive_loss(u[k], v[k], scale, same) for k in TOWERS)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    for i in range(steps):
        idx = rng.integers(0, num_train, batch_size)
        params, opt_state, loss = step(params, opt_state, data["image"][idx], data["ids"][idx], data["scene"][idx])
        if (i + 1) % max(1, steps // 10) == 0:
            log(f"toy CLIP step {i + 1}/{steps}: contrastive loss {float(loss):.4f}")
    return params


def candidate_captions(template: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """Every scene the template can describe, and the attribute ids of each candidate."""
    keys = [a for a, f in (("shape", "s"), ("colour", "c"), ("size", "z"), ("position", "p"))
            if "{" + f + "}" in TEMPLATES[template]]
    combos = list(itertools.product(*[range(len(ATTRIBUTES[a])) for a in keys]))
    default = {"shape": 0, "colour": 0, "size": 0, "position": 0}
    texts, ids = [], {a: [] for a in keys}
    for combo in combos:
        values = dict(default, **dict(zip(keys, combo)))
        obj = ShapeObject(SHAPES[values["shape"]], COLOURS[values["colour"]], SIZES[values["size"]],
                          POSITIONS[values["position"]])
        texts.append(describe(obj, template))
        for a, v in zip(keys, combo):
            ids[a].append(v)
    return texts, {a: np.array(v) for a, v in ids.items()}


def zero_shot_accuracy(model: ToyCLIP, params: Any, images: np.ndarray, labels: dict[str, np.ndarray],
                       template: int, max_length: int = 32) -> dict[str, dict[str, float]]:
    """Zero-shot attribute retrieval: each image picks the nearest of every caption the template can write.

    Returns ``{tower: {attribute: accuracy}}`` for each tower alone and for ``both`` (summed similarities).
    """
    texts, cand = candidate_captions(template)
    tokens = jnp.asarray(PromptTokenizer(CLIP_DIR, "clip", max_length)(texts))
    v = model.apply({"params": params}, {k: tokens for k in TOWERS}, method=ToyCLIP.encode_text)
    u = jax.jit(lambda x: model.apply({"params": params}, x, method=ToyCLIP.encode_image))(jnp.asarray(images))
    sims = {k: np.asarray(u[k] @ v[k].T) for k in TOWERS}
    sims["both"] = sims["clip_l"] + sims["clip_g"]
    out = {}
    for k, s in sims.items():
        best = np.argmax(s, -1)
        out[k] = {a: float(np.mean(cand[a][best] == labels[a])) for a in cand}
        out[k]["all"] = float(np.mean(np.all([cand[a][best] == labels[a] for a in cand], axis=0)))
    return out


def export_towers(model: ToyCLIP, params: Any, folder: str) -> dict[str, str]:
    """Write each text tower as a transformers folder with the built-in tokenizer; returns ``{tower: folder}``."""
    from mmdit_jax.interop.hf_text import save_clip

    paths = {}
    for k, cfg in (("clip_l", model.clip_l), ("clip_g", model.clip_g)):
        paths[k] = os.path.join(folder, k)
        save_clip(paths[k], cfg, {"params": params["towers_" + k]}, tokenizer_folder=CLIP_DIR)
    return paths
