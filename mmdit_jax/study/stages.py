"""The study's cached stages, shared by its experiments: toy CLIP -> classifier -> the two MMDiTs.

Each stage writes into ``workdir`` and is skipped when its output is there, so both experiments (and a rerun)
use the same frozen towers, evaluator and models. A stage's output appears atomically (written, then renamed).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from typing import Any, Callable

import numpy as np

from mmdit_jax.eval.attributes import labelled_images
from mmdit_jax.eval.classifier import ShapesClassifier, train_classifier
from mmdit_jax.reporting import report

HELD_OUT_SEED = 1   # the shapes builder's test stream for data.seed = 0 (2 * seed + 1)


def _write_json(path: str, value: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def toy_clip(config: Any, workdir: str, log: Callable[[str], None] = report) -> dict[str, Any]:
    """Pretrain (or reuse) the toy CLIP; returns ``{"paths": {tower: folder}, "zero_shot": {...}}``."""
    from mmdit_jax.study import toy_clip as tc

    folder = os.path.join(workdir, "toy_clip")
    done = os.path.join(folder, "summary.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    cfg = config.toy_clip
    model = tc.toy_clip_model(tuple(cfg.image_widths))
    params = tc.pretrain(model, cfg.steps, cfg.batch_size, cfg.learning_rate, cfg.num_train, cfg.data_seed,
                         max_length=cfg.max_length, log=log)
    images, labels = labelled_images(cfg.eval_examples, HELD_OUT_SEED)
    zero_shot = {f"template_{t}": tc.zero_shot_accuracy(model, params, images, labels, t, cfg.max_length)
                 for t in (0, 4, 8)}
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    paths = tc.export_towers(model, params, tmp)
    summary = {"paths": {k: os.path.join(folder, os.path.basename(p)) for k, p in paths.items()},
               "zero_shot": zero_shot, "held_out_examples": cfg.eval_examples}
    _write_json(os.path.join(tmp, "summary.json"), summary)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log(f"toy CLIP zero-shot (template 4): {zero_shot['template_4']['both']}")
    return summary


def classifier(config: Any, workdir: str, log: Callable[[str], None] = report) -> tuple[ShapesClassifier, dict]:
    """Train (or reuse) the attribute classifier; returns it and its held-out accuracy."""
    path = os.path.join(workdir, "classifier.msgpack")
    cfg = config.classifier
    if os.path.exists(path):
        clf = ShapesClassifier.load(path)
    else:
        clf = train_classifier(cfg.num_train, cfg.steps, cfg.batch_size, seed=cfg.seed)
        clf.save(path)
    accuracy = clf.accuracy(*labelled_images(cfg.eval_examples, HELD_OUT_SEED))
    log(f"classifier held-out accuracy ({cfg.eval_examples} images): {accuracy}")
    return clf, accuracy


def mmdit_config(config: Any, clip_paths: dict[str, str], use_pooled: bool) -> Any:
    """The study's MMDiT config: ``config.mmdit`` with the toy CLIP towers, and y = e_t + h_y or y = e_t."""
    c = copy.deepcopy(config.mmdit)   # the study pretrains its own towers: they replace the shipped ones
    for tower in ("clip_l", "clip_g"):
        c.text[tower].path = clip_paths[tower]
        c.text[tower].tokenizer_path = clip_paths[tower]
    c.model.use_pooled = use_pooled
    return c


def mmdit(config: Any, workdir: str, clip_paths: dict[str, str], use_pooled: bool) -> tuple[Any, str]:
    """Train (or finish / reuse) one study MMDiT; returns its config and workdir."""
    from mmdit_jax.config_schema import validate_config
    from mmdit_jax.train.loop import train

    cfg = mmdit_config(config, clip_paths, use_pooled)
    validate_config(cfg)
    run_dir = os.path.join(workdir, "mmdit_pooled" if use_pooled else "mmdit_no_pooled")
    marker = os.path.join(run_dir, "train_summary.json")
    if not os.path.exists(marker):
        summary = train(cfg, run_dir)
        _write_json(marker, summary)
    return cfg, run_dir


@dataclasses.dataclass
class Evaluators:
    """What every study experiment starts from: the toy CLIP summary, the classifier and the deviation metric."""

    toy_clip: dict[str, Any]
    classifier: ShapesClassifier
    classifier_accuracy: dict[str, float]
    deviation: Callable[[Any, Any], np.ndarray]


def evaluators(config: Any, workdir: str) -> Evaluators:
    """Run (or reuse) the toy-CLIP and classifier stages and build the configured deviation metric."""
    from mmdit_jax.eval.deviation import make_deviation

    toy = toy_clip(config, workdir)
    clf, accuracy = classifier(config, workdir)
    return Evaluators(toy, clf, accuracy, make_deviation(config.deviation.kind, clf, config.deviation.dreamsim_dir))


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0
