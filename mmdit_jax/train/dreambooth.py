"""DreamBooth: teach a trained text-to-image model one subject from a few images, with class-prior preservation.

    instance examples   the subject's images, captioned "a [V] <class>" ([V]: a rare token)       weight 1
    class examples      images of "a <class>" drawn once by the frozen base model, cached          weight lambda

    loss = mean_b w_b l(x_b)        (the trainer's loss with per-example weights ``loss_weight``)

The training source alternates instance and class records (``max(n_instance, n_class)`` of each per epoch,
instances repeated), so a batch holds both in expectation, as diffusers' DreamBooth scripts pair them. With
``prior_weight = 0`` only the instances are trained on (no prior preservation): every example of a batch is an
instance, so halve ``data.batch_size`` to compare with a prior-preserving run at equal instance examples per step.

A DreamBooth run is a fine-tune (``finetune.init_from``: full or LoRA), in pixel space or in a VAE's latent space
(the instance and class images are then encoded at start-up), configured by the ``dreambooth`` section:

    subject           a built-in toy subject (``mmdit_jax.data.subjects``), or "" with ``instance_dir``
    instance_dir      a folder of PNG / JPEG images of the subject (resized to the data's image size)
    class_name        the subject's class noun ("circle"); a built-in subject knows its own
    token             the rare token [V]
    num_instance      instance images rendered for a built-in subject (a folder gives all its images)
    prior_weight      lambda; 0 switches prior preservation off
    num_class_images  class images drawn by the base model (cached in ``<workdir>/class_images``)
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from mmdit_jax.checks import ConfigError, check_keys, check_positive_int
from mmdit_jax.components.codec import LatentSpace
from mmdit_jax.data import subjects
from mmdit_jax.data.registry import dataset_spec
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.pipelines.trained_model import TrainedModel
from mmdit_jax.reporting import report
from mmdit_jax.setup.latent_cache import LatentRecords, encode_records

KEYS = {"subject", "instance_dir", "class_name", "token", "num_instance", "instance_seed", "prior_weight",
        "num_class_images", "class_seed"}


def dreambooth_config(subject: str = "", instance_dir: str = "", class_name: str = "",
                      token: str = subjects.RARE_TOKEN, num_instance: int = 4, instance_seed: int = 0,
                      prior_weight: float = 1.0, num_class_images: int = 64,
                      class_seed: int = 0) -> ml_collections.ConfigDict:
    """The ``dreambooth`` section."""
    return ml_collections.ConfigDict(dict(
        subject=subject, instance_dir=instance_dir, class_name=class_name, token=token, num_instance=num_instance,
        instance_seed=instance_seed, prior_weight=float(prior_weight), num_class_images=num_class_images,
        class_seed=class_seed))


def class_name_of(db: Any) -> str:
    return subjects.subject_class(db.subject) if db.subject else db.class_name


def validate_dreambooth_config(config: Any) -> None:
    """Raise ConfigError naming the first invalid ``dreambooth`` field (a no-op without the section)."""
    if "dreambooth" not in config:
        return
    db = config.dreambooth
    check_keys("dreambooth", db.keys(), KEYS)
    if bool(db.subject) == bool(db.instance_dir):
        raise ConfigError(f"give exactly one of dreambooth.subject (one of {sorted(subjects.SUBJECTS)}) and "
                          f"dreambooth.instance_dir (a folder of images); got subject={db.subject!r}, "
                          f"instance_dir={db.instance_dir!r}")
    if db.subject and db.subject not in subjects.SUBJECTS:
        raise ConfigError(f"dreambooth.subject={db.subject!r} is not valid; choose one of {sorted(subjects.SUBJECTS)}")
    if db.instance_dir and not db.class_name:
        raise ConfigError("dreambooth.instance_dir needs dreambooth.class_name (the subject's class noun, e.g. 'circle')")
    if db.instance_dir and not os.path.isdir(db.instance_dir):
        raise ConfigError(f"dreambooth.instance_dir={db.instance_dir!r} is not a folder")
    if not db.token or len(db.token.split()) != 1:
        raise ConfigError(f"dreambooth.token={db.token!r} is not valid; give one rare word, e.g. {subjects.RARE_TOKEN!r}")
    check_positive_int("dreambooth.num_instance", db.num_instance)
    check_positive_int("dreambooth.num_class_images", db.num_class_images)
    if not (isinstance(db.prior_weight, (int, float)) and db.prior_weight >= 0):
        raise ConfigError(f"dreambooth.prior_weight={db.prior_weight!r} is not valid; give a number >= 0 (0: no prior "
                          "preservation)")
    if "finetune" not in config or not config.finetune.init_from:
        raise ConfigError("a dreambooth section needs finetune.init_from: the trained text-to-image run to personalise")


def instance_records(config: Any) -> list[dict]:
    """The subject's images ``{"image": (S, S, 3) uint8, "caption": "a [V] <class>", "loss_weight": 1}``."""
    db, size = config.dreambooth, int(config.data.image_size)
    caption = subjects.instance_prompt(db.token, class_name_of(db))
    if db.subject:
        images = subjects.instance_images(db.subject, db.num_instance, db.instance_seed, image_size=size)
    else:
        files = sorted(f for ext in ("png", "jpg", "jpeg") for f in glob.glob(os.path.join(db.instance_dir, f"*.{ext}")))
        if not files:
            raise ConfigError(f"dreambooth.instance_dir={db.instance_dir!r} holds no .png / .jpg images")
        images = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)) for f in files]
    return [{"image": np.asarray(im, np.uint8), "caption": caption, "loss_weight": 1.0} for im in images]


def class_images(config: Any, base: TrainedModel, cache_dir: str) -> np.ndarray:
    """``(num_class_images, S, S, 3)`` uint8: "a <class>" drawn by the frozen base with the run's sampler and
    guidance, once; cached under a fingerprint of the base (workdir, step), prompt, count, seed and sampler."""
    db = config.dreambooth
    prompt = subjects.class_prompt(class_name_of(db))
    sample = config.sample
    key = json.dumps({"base": base_identity(config, base), "prompt": prompt, "n": db.num_class_images,
                      "seed": db.class_seed, "sampler": sample.sampler.to_dict(),
                      "guidance": sample.guidance_scale, "negative": sample.negative}, sort_keys=True)
    path = os.path.join(cache_dir, f"class_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy")
    if os.path.exists(path):
        return np.load(path)
    report(f"drawing {db.num_class_images} class images of {prompt!r} with the base model")
    images = SamplingPipeline(base)([prompt] * db.num_class_images, db.class_seed)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp.npy"
    np.save(tmp, images)
    os.replace(tmp, path)
    return images


def base_identity(config: Any, base: TrainedModel) -> str:
    return f"{os.path.abspath(config.finetune.init_from)}@{base.step}"


class DreamBoothSource:
    """Instance and class records alternating: record ``2k`` is instance ``k mod n_i``, ``2k+1`` class ``k mod
    n_c`` (weight ``prior_weight``); ``2 max(n_i, n_c)`` records. Without class records: the instances repeated
    to ``max(n_i, length)`` records (an epoch as long as a class pool of ``length`` would make it)."""

    def __init__(self, instances: list[dict], classes: list[dict], length: int = 0):
        self._instances, self._classes = instances, classes
        n_i = len(instances)
        self._n = 2 * max(n_i, len(classes)) if classes else max(n_i, length)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self._n:
            raise IndexError(i)
        if not self._classes:
            return dict(self._instances[i % len(self._instances)])
        k, is_class = divmod(i, 2)
        pool = self._classes if is_class else self._instances
        return dict(pool[k % len(pool)])


def dreambooth_source(config: Any, workdir: str, base: TrainedModel) -> DreamBoothSource:
    """The training source of a DreamBooth run (class images drawn by ``base`` when prior preservation is on)."""
    db = config.dreambooth
    instances = instance_records(config)
    classes = []
    if db.prior_weight > 0:
        caption = subjects.class_prompt(class_name_of(db))
        images = class_images(config, base, os.path.join(workdir, "class_images"))
        classes = [{"image": im, "caption": caption, "loss_weight": float(db.prior_weight)} for im in images]
    source = DreamBoothSource(instances, classes, length=db.num_class_images)
    if len(source) < config.data.batch_size:
        raise ConfigError(f"the DreamBooth source has {len(source)} examples, fewer than data.batch_size="
                          f"{config.data.batch_size}; lower the batch size or raise dreambooth.num_class_images")
    return source


def personalised_source(config: Any, workdir: str, base: TrainedModel, latent: LatentSpace | None) -> Any | None:
    """The training source of a DreamBooth run (``dreambooth_source``), as the base's latents in a latent run (a
    few dozen images: encoded at every start, not cached); None for a fine-tune without a ``dreambooth`` section."""
    if "dreambooth" not in config:
        return None
    source = dreambooth_source(config, workdir, base)
    if latent is None:
        return source
    return LatentRecords(source, encode_records(latent, source, dataset_spec(config.data.name),
                                                config.latent.batch_size))
