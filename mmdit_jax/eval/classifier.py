"""Attribute classifiers for ``shapes``: one conv tower, four softmax heads (shape, colour, size, position).

Trained on freshly generated ground truth (``attributes.labelled_images``), tested on held-out images of the
data set's own test stream. Its embedding ``z`` is the feature space of the Fréchet distance, and its feature
maps are the layers of the perceptual deviation (``deviation.py``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from mmdit_jax.eval.attributes import ATTRIBUTES, labelled_images
from mmdit_jax.models.convnet import ConvEncoder, to_unit_range
from mmdit_jax.checks import ConfigError

Array = jax.Array


class AttributeClassifier(nn.Module):
    """``x: (B, H, W, 3) in [-1, 1] -> ({attribute: logits (B, K_a)}, z (B, D), feature maps)``."""

    widths: tuple[int, ...] = (16, 32, 64)
    embed_dim: int = 128

    @nn.compact
    def __call__(self, x: Array) -> tuple[dict[str, Array], Array, list[Array]]:
        maps, z = ConvEncoder(self.widths, self.embed_dim, name="encoder")(x)
        logits = {a: nn.Dense(len(v), name=f"head_{a}")(z) for a, v in ATTRIBUTES.items()}
        return logits, z, maps


@dataclasses.dataclass
class ShapesClassifier:
    """A trained classifier: ``predict``, ``embed`` and ``feature_maps`` on uint8 or [-1, 1] images."""

    module: AttributeClassifier
    variables: Any

    def __post_init__(self):
        self._apply = jax.jit(lambda v, x: self.module.apply(v, to_unit_range(x)))

    def _run(self, images: Any, batch: int = 512):
        outs = [self._apply(self.variables, jnp.asarray(images[i:i + batch])) for i in range(0, len(images), batch)]
        return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outs)

    def predict(self, images: Any) -> dict[str, np.ndarray]:
        """``{attribute: predicted ids (B,)}``."""
        logits, _, _ = self._run(images)
        return {a: np.argmax(v, -1) for a, v in logits.items()}

    def embed(self, images: Any) -> np.ndarray:
        """``(B, D)`` features for the Fréchet distance."""
        return self._run(images)[1]

    def feature_maps(self, images: Any) -> list[np.ndarray]:
        return self._run(images)[2]

    def accuracy(self, images: Any, labels: dict[str, np.ndarray]) -> dict[str, float]:
        pred = self.predict(images)
        return {a: float(np.mean(pred[a] == labels[a])) for a in ATTRIBUTES}

    def save(self, path: str) -> None:
        """Atomic write (tmp + rename): an interrupted save never leaves a truncated file."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(serialization.to_bytes(self.variables))
        os.replace(path + ".tmp", path)

    @classmethod
    def load(cls, path: str, module: AttributeClassifier | None = None) -> "ShapesClassifier":
        if not os.path.exists(path):
            raise ConfigError(f"classifier file {path!r} does not exist; train one with train_classifier")
        module = module or AttributeClassifier()
        template = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
        with open(path, "rb") as f:
            return cls(module, serialization.from_bytes(template, f.read()))


def train_classifier(num_train: int = 10_000, steps: int = 800, batch_size: int = 64, learning_rate: float = 2e-3,
                     seed: int = 1234, image_size: int = 32, module: AttributeClassifier | None = None,
                     labelled: Callable[[int, int, int], tuple[np.ndarray, dict[str, np.ndarray]]] = labelled_images,
                     ) -> ShapesClassifier:
    """Cross-entropy on all four heads, AdamW + cosine decay, on ``num_train`` generated images of stream ``seed``,
    ``labelled(n, seed, image_size) -> (images, {attribute: ids})`` (default: still ``shapes`` scenes; video
    frames: ``eval.motion.labelled_frames``)."""
    module = module or AttributeClassifier()
    images, labels = labelled(num_train, seed, image_size)
    key = jax.random.PRNGKey(seed)
    variables = module.init(key, jnp.zeros((1, image_size, image_size, 3)))
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 10), max(steps, 2),
                                                         learning_rate * 0.01))
    opt_state = opt.init(variables["params"])

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits, _, _ = module.apply({"params": p}, to_unit_range(x))
            return sum(optax.softmax_cross_entropy_with_integer_labels(logits[a], y[a]).mean() for a in ATTRIBUTES)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, rng = variables["params"], np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, num_train, batch_size)
        params, opt_state, _ = step(params, opt_state, images[idx], {a: v[idx] for a, v in labels.items()})
    return ShapesClassifier(module, {"params": params})
