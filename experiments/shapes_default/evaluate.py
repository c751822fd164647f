"""Score a trained shapes MMDiT with the study's attribute classifier: prompt adherence per attribute.

    python -m experiments.shapes_default.evaluate --config=configs/default.py --workdir=runs/default \
        [--classifier=runs/pooled_study/classifier.msgpack] [--guidance=1,2,3,5]

Prompts: ``per_shape`` random single-object scenes for each of the six shapes, short template (``a {c} {s}``)
and long (template 7), so every shape is scored equally. The classifier (trained on generated ground truth,
100% on held-out real images) is trained here if the file does not exist.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from mmdit_jax.data.captions import SHAPES
from mmdit_jax.eval.adherence import prompt_adherence
from mmdit_jax.eval.classifier import ShapesClassifier, train_classifier
from mmdit_jax.runtime import configure_runtime
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.study.scenes import prompts, scenes
from mmdit_jax.reporting import quiet_library_logs

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "The run's config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "The trained run.")
_CLASSIFIER = flags.DEFINE_string("classifier", "runs/classifier.msgpack", "Classifier file (trained if absent).")
_GUIDANCE = flags.DEFINE_list("guidance", None, "CFG scales to score (default: the config's).")
_PER_SHAPE = flags.DEFINE_integer("per_shape", 48, "Scenes per shape.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(_):
    configure_runtime()  # before the first JAX computation
    quiet_library_logs()
    cfg = _CONFIG.value
    if os.path.exists(_CLASSIFIER.value):
        classifier = ShapesClassifier.load(_CLASSIFIER.value)
    else:
        classifier = train_classifier()
        classifier.save(_CLASSIFIER.value)
    objs = [o for i, s in enumerate(SHAPES) for o in scenes(_PER_SHAPE.value, 777 + i, shape=s)]
    for scale in _GUIDANCE.value or [cfg.sample.guidance_scale]:
        c = cfg.copy_and_resolve_references()
        c.sample.guidance_scale = float(scale)
        gen = SamplingPipeline.from_workdir(c, _WORKDIR.value)
        for t in (1, 7):
            texts = prompts(objs, t)
            images = gen(texts, _SEED.value)
            adh = prompt_adherence(classifier, images, texts)
            pred = classifier.predict(images)
            per_shape = {s: float((pred["shape"][i * _PER_SHAPE.value:(i + 1) * _PER_SHAPE.value] == i).mean())
                         for i, s in enumerate(SHAPES)}
            print(f"CFG {float(scale):g}, template {t}: " + ", ".join(f"{k} {v:.3f}" for k, v in adh.items())
                  + " | shape accuracy by shape: " + ", ".join(f"{k} {v:.2f}" for k, v in per_shape.items()))


if __name__ == "__main__":
    app.run(main)
