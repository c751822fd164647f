"""DreamBooth at toy scale, measured as the DreamBooth paper measures it, in one command.

    python -m experiments.personalization.run --workdir=runs/personalization [--base=runs/default]

Stages (each skipped when its output exists, so a rerun only redoes what is missing):

1. ``base/``: the text-to-image model, ``configs/default.py`` trained on ``shapes`` (skipped with ``--base``, the
   workdir of such a run). It has never seen a patterned object.
2. ``classifier.msgpack``: the attribute classifier (shape, colour, size, position) trained on generated labels.
3. ``<subject>/<variant>_s<seed>/``: a DreamBooth fine-tune of the base (``configs/dreambooth.py``) on the subject's
   four instance images, for every variant: LoRA or full fine-tuning, each with and without class-prior
   preservation (without it the batch is halved: the same instance examples per step).
4. ``results.json`` and ``grid_<subject>.png`` in ``--out``.

Measures (``mmdit_jax.eval.subject`` for the subject, the attribute classifier for the prompt), ``--n`` images each:

* subject fidelity: feature similarity of "a v <class>" generations to the instance images (DINO / CLIP-I's
  analogue), and the subject rate (the fraction the evaluator takes for the subject);
* prompt fidelity: "a v <class> in the top left", "a small v <class>", "a blue v <class>" ...: the classifier's
  accuracy on the requested attribute (CLIP-T's analogue), and the subject rate under those prompts;
* language drift (PRES): the subject rate of bare class prompts "a <class>" (lower is better);
* diversity: mean pairwise feature distance of the "a v <class>" generations.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags
from PIL import Image

from configs.default import get_config as default_config
from configs.dreambooth import get_config as dreambooth_config
from mmdit_jax.data import subjects
from mmdit_jax.eval.attributes import ATTRIBUTES, parse_caption
from mmdit_jax.eval.classifier import ShapesClassifier, train_classifier
from mmdit_jax.eval.subject import diversity, subject_evaluator
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.reporting import machine, quiet_library_logs, report
from mmdit_jax.runtime import configure_runtime

_WORKDIR = flags.DEFINE_string("workdir", "runs/personalization", "Where the stages are cached.")
_BASE = flags.DEFINE_string("base", None, "A trained configs/default.py workdir (default: train one in <workdir>/base).")
_SUBJECTS = flags.DEFINE_list("subjects", ["striped_circle", "checker_square", "dotted_triangle"], "Toy subjects.")
_VARIANTS = flags.DEFINE_list("variants", ["lora", "lora,noprior", "full", "full,noprior"],
                              "configs/dreambooth.py arguments (';'-free).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Fine-tuning seeds (adapter initialisation and data order).")
_STEPS = flags.DEFINE_integer("steps", 800, "Fine-tuning steps.")
_N = flags.DEFINE_integer("n", 32, "Images per measured prompt (contexts: n / 4 each).")
_OUT = flags.DEFINE_string("out", "experiments/personalization", "Where results.json and the grids go.")

CONTEXTS = (("position", "top left"), ("position", "bottom right"), ("size", "small"), ("size", "large"),
            ("colour", "blue"), ("colour", "green"))


def base_run(workdir: str) -> str:
    from mmdit_jax.train.loop import train

    if _BASE.value:
        return _BASE.value
    folder = os.path.join(workdir, "base")
    train(default_config(), folder)         # resumes; returns at once when the run is complete
    return folder


def classifier(workdir: str) -> ShapesClassifier:
    path = os.path.join(workdir, "classifier.msgpack")
    if os.path.exists(path):
        return ShapesClassifier.load(path)
    model = train_classifier()
    model.save(path)
    return model


def fine_tune(workdir: str, base: str, subject: str, variant: str, seed: int) -> tuple[object, str]:
    from mmdit_jax.train.loop import train

    cfg = dreambooth_config(variant)
    cfg.seed = seed
    cfg.finetune.init_from = os.path.abspath(base)
    cfg.dreambooth.subject = subject
    cfg.sample.prompts = dreambooth_prompts(subject)
    cfg.train.update(num_steps=_STEPS.value, checkpoint_every=_STEPS.value, sample_every=_STEPS.value)
    folder = os.path.join(workdir, subject, f"{variant.replace(',', '_')}_s{seed}")
    train(cfg, folder)
    return cfg, folder


def dreambooth_prompts(subject: str) -> tuple[str, ...]:
    from configs.dreambooth import sample_prompts

    return sample_prompts(subjects.RARE_TOKEN, subjects.subject_class(subject))


def contexts(subject: str) -> list[tuple[str, str]]:
    allowed = set(subjects.recontextualisations(subject))
    return [c for c in CONTEXTS if c in allowed]


def measure(pipe: SamplingPipeline, subject: str, evaluator, clf: ShapesClassifier, n: int) -> tuple[dict, dict]:
    """The measures of one model, and the images they were computed on."""
    token, cls = subjects.RARE_TOKEN, subjects.subject_class(subject)
    out, images = {}, {}
    own = pipe([subjects.instance_prompt(token, cls)] * n, 0)
    images["subject"] = own
    out["subject_fidelity"] = evaluator.fidelity(own)
    out["subject_rate"] = float(evaluator.is_subject(own).mean())
    out["diversity"] = diversity(own)
    per = max(1, n // 4)
    hits, kept = [], []
    for k, (attribute, value) in enumerate(contexts(subject)):
        prompt = subjects.subject_prompt(token, cls, **{attribute: value})
        x = pipe([prompt] * per, 100 + k)
        images[f"{attribute}={value}"] = x
        want = parse_caption(prompt)[attribute]
        hit = float(np.mean(clf.predict(x)[attribute] == want))
        out[f"prompt_fidelity/{attribute}={value}"] = hit
        hits.append(hit)
        kept.append(float(evaluator.is_subject(x).mean()))
    out["prompt_fidelity"] = float(np.mean(hits))
    out["context_subject_rate"] = float(np.mean(kept))
    bare = pipe([subjects.class_prompt(cls)] * n, 200)
    images["class"] = bare
    out["pres"] = float(evaluator.is_subject(bare).mean())
    out["class_shape_accuracy"] = float(np.mean(clf.predict(bare)["shape"] == parse_caption(cls)["shape"]))
    return out, images


def tile(rows: list[np.ndarray], scale: int = 3, gap: int = 2) -> np.ndarray:
    """Rows of ``(k, H, W, 3)`` uint8 images -> one picture, rows left-aligned, black gaps, nearest upscaling."""
    h, w = rows[0].shape[1:3]
    width = max(len(r) for r in rows) * (w + gap)
    canvas = np.zeros((len(rows) * (h + gap), width, 3), np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = im
    return np.kron(canvas, np.ones((scale, scale, 1), np.uint8))


def main(_):
    configure_runtime()
    quiet_library_logs()
    workdir = _WORKDIR.value
    start = time.time()
    base = base_run(workdir)
    clf = classifier(workdir)
    base_cfg = json.load(open(os.path.join(base, "config.json")))
    results: dict[str, object] = {"machine": machine(), "base": os.path.abspath(base),
                                  "base_steps": base_cfg["train"]["num_steps"], "steps": _STEPS.value, "n": _N.value,
                                  "runs": {}}
    os.makedirs(_OUT.value, exist_ok=True)
    for subject in _SUBJECTS.value:
        evaluator = subject_evaluator(subject)
        instances = subjects.instance_images(subject).astype(np.uint8)
        rows = [instances]
        for variant in ["base"] + _VARIANTS.value:
            for seed in ([0] if variant == "base" else [int(s) for s in _SEEDS.value]):
                t0 = time.time()
                if variant == "base":
                    from mmdit_jax.config_schema import workdir_config

                    pipe = SamplingPipeline.from_workdir(workdir_config(base), base)
                else:
                    cfg, folder = fine_tune(workdir, base, subject, variant, seed)
                    pipe = SamplingPipeline.from_workdir(cfg, folder)
                scores, images = measure(pipe, subject, evaluator, clf, _N.value)
                scores["seconds"] = round(time.time() - t0, 1)
                results["runs"][f"{subject}/{variant}/s{seed}"] = scores
                report(f"{subject} {variant} s{seed}: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in scores.items() if "/" not in k))
                if seed == 0:
                    rows.append(np.concatenate([images["subject"][:2]] + [images[k][:1] for k in images
                                                                            if "=" in k] + [images["class"][:2]]))
        Image.fromarray(tile(rows)).save(os.path.join(_OUT.value, f"grid_{subject}.png"))
    results["seconds"] = round(time.time() - start, 1)
    with open(os.path.join(_OUT.value, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report(f"done in {results['seconds']} s")


if __name__ == "__main__":
    app.run(main)
