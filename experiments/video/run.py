"""Text-to-video at toy scale: joint clips vs frame-by-frame rollouts vs an image model per frame.

    python -m experiments.video.run --workdir=runs/video

Stages (each skipped when its output exists, so a rerun only redoes what is missing):

1. ``joint/``, ``next_chunk/``, ``per_frame/``: ``configs/video.py:<mode>`` trained on ``moving_shapes`` (8 frames
   of 32x32; ``per_frame`` on single frames of the same clips, the lower bound without temporal modelling);
2. ``frame_classifier.msgpack``: the attribute classifier trained on clip frames (``eval.motion.labelled_frames``);
3. ``results.json`` and the sample strips / GIFs in ``--out``, per sampling seed, on the captions of ``--n`` test
   clips (their start positions are the data's, their captions never seen in training):

* 8-frame clips: motion accuracy (direction, speed, both: the tracked centre vs the caption), per-frame adherence
  (shape, colour, size), subject consistency, background flicker and the Fréchet distance of clip features to
  ``--n_real`` real test clips; the real clips themselves as the ceiling;
* 16-frame clips (twice the training length): the next-chunk rollout, and the joint model asked for 16 frames;
* image-to-video: the next-chunk model from each test clip's real first frame.

The per-frame baseline draws every frame of a clip as an independent sample of the caption (seed per frame).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from configs.video import get_config as video_config
from mmdit_jax.data.motion import motion_example
from mmdit_jax.eval import motion as metrics
from mmdit_jax.reporting import machine, quiet_library_logs, report
from mmdit_jax.runtime import configure_runtime

_WORKDIR = flags.DEFINE_string("workdir", "runs/video", "Where the stages are cached.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Sampling seeds.")
_N = flags.DEFINE_integer("n", 128, "Test captions per seed.")
_N_REAL = flags.DEFINE_integer("n_real", 512, "Real test clips for the Fréchet distance.")
_OUT = flags.DEFINE_string("out", "experiments/video", "Where results.json and the samples go.")
_TINY = flags.DEFINE_bool("tiny", False, "Smoke-test size: the configs' ,tiny variants and a tiny classifier.")

METHODS = ("joint", "next_chunk", "per_frame")
TEST_STREAM = 1          # the test split's stream of the builder with data seed 0
LONG = 16


def config(mode: str, tiny: bool):
    return video_config(f"{mode},tiny" if tiny else mode)


def train_stages(workdir: str, tiny: bool = False) -> dict[str, str]:
    from mmdit_jax.train.loop import train

    runs = {}
    for mode in METHODS:
        runs[mode] = os.path.join(workdir, mode)
        train(config(mode, tiny), runs[mode])
    return runs


def frame_classifier(workdir: str, tiny: bool = False):
    from mmdit_jax.eval.classifier import ShapesClassifier, train_classifier

    path = os.path.join(workdir, "frame_classifier.msgpack")
    if os.path.exists(path):
        return ShapesClassifier.load(path)
    clf = train_classifier(num_train=512 if tiny else 20_000, steps=20 if tiny else 1500,
                           labelled=metrics.labelled_frames)
    clf.save(path)
    return clf


def score(clf, clips: np.ndarray, records: list[dict], real_features: np.ndarray) -> dict[str, float]:
    """Every metric of ``(N, T, S, S, 3)`` uint8 clips drawn for ``records``' captions."""
    ids = {k: np.array([r[k] for r in records]) for k in ("shape", "colour", "size", "direction", "speed")}
    n, t = clips.shape[:2]
    out = {f"motion_{k}": v for k, v in metrics.motion_accuracy(clips, ids["direction"], ids["speed"]).items()}
    out.update({f"adherence_{k}": v for k, v in
                metrics.frame_adherence(clf, clips, ids["shape"], ids["colour"], ids["size"]).items()})
    features = clf.embed(clips.reshape(n * t, *clips.shape[2:])).reshape(n, t, -1)
    out["subject_consistency"] = metrics.subject_consistency(features)[1]
    radius = np.array([r["radius"] for r in records])
    out["flicker"] = metrics.flicker(clips, metrics.centre_track(clips), radius)[1]
    if real_features is not None:
        from mmdit_jax.eval.frechet import frechet_distance

        out["frechet"] = frechet_distance(metrics.clip_features(clf, clips), real_features)
    return out


def samples(pipes: dict, name: str, captions: list[str], seed: int, frames: int = 8,
            first: np.ndarray | None = None) -> np.ndarray:
    if name == "per_frame":      # every frame an independent sample of the caption
        stills = pipes[name].clips([c for c in captions for _ in range(frames)], seed, num_frames=1)
        return stills.reshape(len(captions), frames, *stills.shape[2:])
    return pipes[name].clips(captions, seed, num_frames=frames, first_frames=first)


def save_samples(clips: np.ndarray, out: str, name: str) -> None:
    from PIL import Image

    from mmdit_jax.data.motion import clip_strip
    from mmdit_jax.pipelines.video import clip_grid, write_gif

    strip = clip_strip(clips.astype(np.float32) / 127.5 - 1.0)
    Image.fromarray(strip).resize((strip.shape[1] * 3, strip.shape[0] * 3), Image.NEAREST).save(
        os.path.join(out, f"{name}.png"))
    write_gif(os.path.join(out, f"{name}.gif"), clip_grid(clips), scale=3)


def main(argv) -> None:
    del argv
    configure_runtime()
    quiet_library_logs()
    start = time.time()
    tiny = _TINY.value
    runs = train_stages(_WORKDIR.value, tiny)
    trained = time.time()
    from mmdit_jax.config_schema import workdir_config
    from mmdit_jax.pipelines.video import VideoPipeline

    pipes = {m: VideoPipeline.from_workdir(workdir_config(p), p) for m, p in runs.items()}
    clf = frame_classifier(_WORKDIR.value, tiny)
    seeds = [int(s) for s in _SEEDS.value]
    os.makedirs(_OUT.value, exist_ok=True)
    records = [motion_example(i, TEST_STREAM, 32, 8) for i in range(_N.value)]
    long_records = [motion_example(i, TEST_STREAM, 32, LONG // 2) for i in range(_N.value)]  # ids only
    captions = [r["caption"] for r in records]
    real = np.stack([motion_example(i, TEST_STREAM, 32, 8)["video"] for i in range(_N_REAL.value)])
    real_features = metrics.clip_features(clf, real)
    results = {"machine": machine(), "settings": {
        "seeds": seeds, "n": _N.value, "n_real": _N_REAL.value, "long_frames": LONG,
        "train_steps": {m: int(config(m, tiny).train.num_steps) for m in METHODS}}}
    results["real"] = score(clf, np.stack([r["video"] for r in records]), records, None)
    report(f"real clips: {results['real']}")
    table: dict[str, dict[str, list[float]]] = {}

    def add(name: str, clips: np.ndarray, recs: list[dict], seed: int, fd: bool = True) -> None:
        s = score(clf, clips, recs, real_features if fd else None)
        row = table.setdefault(name, {})
        for k, v in s.items():
            row.setdefault(k, []).append(float(v))
        report(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))
        if seed == seeds[0]:
            save_samples(clips[:6], _OUT.value, name)

    first = np.stack([r["video"][0] for r in records])
    for seed in seeds:
        for name in METHODS:
            add(name, samples(pipes, name, captions, seed), records, seed)
        add(f"next_chunk_{LONG}", samples(pipes, "next_chunk", captions, seed, LONG), long_records, seed, fd=False)
        add(f"joint_{LONG}", samples(pipes, "joint", captions, seed, LONG), long_records, seed, fd=False)
        add("image_to_video", samples(pipes, "next_chunk", captions, seed, 8, first), records, seed)
    results["methods"] = table
    results["seconds"] = {"train_stages": trained - start, "evaluation": time.time() - trained}
    with open(os.path.join(_OUT.value, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report(f"wrote {_OUT.value}/results.json in {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
