"""Latent-space models on ``shapes`` at 64x64, scored next to the pixel-space default, in one command.

    python -m experiments.latent_shapes.run --workdir=runs/latent_shapes [--model=NAME]

NAME: sd3 (default), flux, sd3_no_pooled, sd3_large or sd3_study. Stages (each skipped when its output exists,
so a rerun only redoes what is missing):

1. ``vae/``: a KL autoencoder trained on the 64x64 training images (``configs/vae_shapes.py``), exported to
   ``vae/vae/`` with its measured latent shift and scale.
2. ``sd3/`` (``--model=sd3``): the default MMDiT trained by rectified flow on the cached, normalised latents
   (``configs/latent_shapes.py``; the same transformer and 8x8 token grid as the pixel default), or ``flux/``
   (``--model=flux``): a FLUX-style model of about the same size on the same latents (``configs/flux_shapes.py``);
   ``sd3_no_pooled`` the SD3-style model with y = e_t; ``sd3_large`` a bigger SD3-style model (D = 192,
   6 layers, 5,000 steps); ``sd3_study`` the same trained 12,000 steps on captions that at times leave the colour
   or the shape unnamed (``data.captions="partial"``).
3. ``results_<model>.json`` + ``samples_<model>.png``: prompt adherence with a 64x64 attribute classifier (trained
   here on generated ground truth) for short prompts (``a {colour} {shape}``; ``short_sized``:
   ``a {size} {colour} {shape}``) and long ones (template 7) over six shapes, with the share of samples that show
   exactly one object (``eval/objects.py``: one connected piece, not fragments), the classifier's accuracy on real
   test images and on their VAE reconstructions (what the autoencoder alone loses: the ceiling of any latent
   model), and the VAE's reconstruction error.
"""

from __future__ import annotations

import json
import os
import time

import jax.numpy as jnp
import numpy as np
from absl import app, flags
from PIL import Image

from experiments.latent_shapes.stages import MODELS, classifier_64, train_model, train_vae
from mmdit_jax.data.captions import SHAPES
from mmdit_jax.data.pipeline import build_sources
from mmdit_jax.eval.adherence import prompt_adherence
from mmdit_jax.eval.classifier import ShapesClassifier
from mmdit_jax.eval.objects import one_object_rate
from mmdit_jax.components.codec import LatentSpace
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.reporting import machine, quiet_library_logs, read_metrics, report
from mmdit_jax.runtime import configure_runtime
from mmdit_jax.study.scenes import prompts, scenes

_WORKDIR = flags.DEFINE_string("workdir", "runs/latent_shapes", "Where the stages are cached.")
_MODEL = flags.DEFINE_enum("model", "sd3", list(MODELS), "The family trained on the latents.")
_PER_SHAPE = flags.DEFINE_integer("per_shape", 24, "Scenes per shape and prompt template.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUT = flags.DEFINE_string("out", "experiments/latent_shapes", "Where results.json and samples.png go.")


def training_throughput(folder: str) -> float | None:
    """The median examples/s the training loop logged in ``folder/metrics.jsonl``: the run's own record, so a
    command that finds the model already trained reports the same number as the one that trained it."""
    rates = [r["examples_per_second"] for r in read_metrics(folder) if "examples_per_second" in r]
    return round(float(np.median(rates)), 1) if rates else None


def real_image_scores(cfg, workdir: str, classifier: ShapesClassifier, n: int = 512) -> dict[str, float]:
    """Classifier accuracy on real test images and on their VAE reconstructions; reconstruction L1 in [0, 1]."""
    from mmdit_jax.eval.attributes import ATTRIBUTES

    test = build_sources(cfg.data, os.path.join(workdir, _MODEL.value, "tfds"))["test"]
    records = [test[i] for i in range(min(n, len(test)))]
    images = np.stack([r["image"] for r in records])
    space = LatentSpace.from_config(cfg)
    x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
    recon = np.concatenate([np.asarray(space.decode(space.encode(x[i:i + 64]))) for i in range(0, len(x), 64)])
    recon_u8 = np.clip(np.round((recon + 1.0) * 127.5), 0, 255).astype(np.uint8)
    labels = {a: np.array([r[a] for r in records]) for a in ATTRIBUTES}
    real = classifier.accuracy(images, labels)
    rec = classifier.accuracy(recon_u8, labels)
    out = {f"real/{a}": float(v) for a, v in real.items()}
    out.update({f"reconstructed/{a}": float(v) for a, v in rec.items()})
    out["reconstruction_l1"] = float(np.mean(np.abs(recon_u8.astype(np.float32) - images) / 255.0))
    return out


def main(_):
    configure_runtime()
    quiet_library_logs()
    workdir = _WORKDIR.value
    vae = train_vae(workdir)
    model = _MODEL.value
    start = time.time()
    cfg, folder = train_model(workdir, vae, model)
    classifier = classifier_64(workdir)
    results: dict[str, object] = {"machine": machine(), "model": model, "per_shape": _PER_SHAPE.value,
                                  "seed": _SEED.value, "train_steps": cfg.train.num_steps,
                                  "train_examples_per_second": training_throughput(folder),
                                  "train_stage_seconds_this_command": round(time.time() - start, 1)}
    results.update(real_image_scores(cfg, workdir, classifier))

    pipe = SamplingPipeline.from_workdir(cfg, folder)
    objs = [o for i, s in enumerate(SHAPES) for o in scenes(_PER_SHAPE.value, 777 + i, shape=s)]
    for t, name in ((1, "short"), (2, "short_sized"), (7, "long")):
        texts = prompts(objs, t)
        images = pipe(texts, _SEED.value)
        adh = prompt_adherence(classifier, images, texts)
        adh["one_object"] = one_object_rate(images)
        results.update({f"{name}/{k}": v for k, v in adh.items()})
        report(f"{name} prompts: " + ", ".join(f"{k} {v:.3f}" for k, v in adh.items()))
    grid = pipe.grid(list(cfg.sample.prompts), cfg.sample.per_prompt, cfg.sample.seed)
    os.makedirs(_OUT.value, exist_ok=True)
    Image.fromarray(grid).save(os.path.join(_OUT.value, f"samples_{model}.png"))
    with open(os.path.join(_OUT.value, f"results_{model}.json"), "w") as f:
        json.dump(results, f, indent=1)
    report(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
