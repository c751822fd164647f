"""Motion and video metrics on generated ``moving_shapes`` clips (``data/motion.py``).

Videos are ``(N, T, S, S, 3)``, uint8 in [0, 255] or float in [-1, 1] (as the attribute classifier takes them).
Centres are ``(y, x)`` in pixels with pixel i covering [i, i + 1), the data's convention.

  centre_track        per frame, the background colour m = per-channel median of the outermost pixel ring (the
                      object never covers much of it: it stays inside the walls); d = |x - m| (L2 over channels);
                      foreground = pixels with d > FOREGROUND_THRESHOLD; centre = the d-weighted centroid of the
                      foreground, NaN where a frame has none
  motion_of_track     the per-axis median of the displacements c_{t+1} - c_t over the first half of the clip
                      (ceil((T - 1) / 2) of them): a rollout longer than the training clips bounces off a wall, after
                      which the object moves against its caption; reading the start, robustly, keeps that from
                      flipping the read. Direction = the DIRECTIONS vector with the largest dot product (dominant
                      axis and sign); speed = the SPEEDS class (scaled to S) nearest that projection. A projection
                      under half the slowest speed, or no track, is "no motion": both ids NO_MOTION (-1), which
                      never match a label
  frame_adherence     the attribute classifier on every frame: fractions of frames with the right shape, colour,
                      size (and all three); position is not scored, the object moves. The clips' objects have the
                      still images' scale, but the still images put them only at the 9 cell centres, and the
                      classifier (flattened conv features, no translation invariance) misreads objects between
                      cells: one trained on still ``shapes`` reads ground-truth clip frames at shape 0.28, colour
                      0.73, size 0.57; the same network and recipe trained on 20,000 clip frames (1,500 steps,
                      position label = the nearest cell) at 0.999 / 0.999 / 1.0. Score clips with such a classifier:
                      ``train_classifier(labelled=labelled_frames)``
  subject_consistency VBench's: per clip the mean over t >= 1 of (max(0, cos(f_0, f_t)) + max(0, cos(f_{t-1}, f_t)))
                      / 2 on per-frame features f (the classifier's embedding). That embedding also encodes where
                      the object is, so a moving object scores below 1 even when drawn perfectly (ground-truth
                      clips: ~0.9); compare models against the ground truth's score, not against 1
  flicker             per clip the mean |x_{t+1} - x_t| / 255 over channels and over the pixels farther than
                      FLICKER_MARGIN radii from the tracked centre in both frames (the static background): 0 for a
                      perfectly still background
  clip_features       per clip [mean frame embedding (D), mean displacement (dy, dx), its std over time (2)]: the
                      features of a Fréchet distance between clip sets (``frechet.frechet_distance``)
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.data.motion import DIRECTION_VECTORS, DIRECTIONS, SPEEDS, speed_pixels

NO_MOTION = -1
FOREGROUND_THRESHOLD = 32.0   # L2 distance from the background colour, 0..255 units; object colours are >= 240
FLICKER_MARGIN = 1.5          # background = farther than this many object radii from the tracked centre
_VECTORS = np.array([DIRECTION_VECTORS[d] for d in DIRECTIONS])                  # (4, 2)


def _videos(videos: Any) -> np.ndarray:
    """``(N, T, S, S, 3)`` float32 in [0, 255] from uint8, or from float in [-1, 1] (clipped)."""
    x = np.asarray(videos)
    if x.ndim != 5 or x.shape[-1] != 3 or x.shape[2] != x.shape[3]:
        raise ConfigError(f"videos must have shape (N, T, S, S, 3), got {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32)
    return (np.clip(x.astype(np.float32), -1.0, 1.0) + 1.0) * 127.5


def _frames(videos: Any) -> np.ndarray:
    """The clips' frames as one ``(N * T, S, S, 3)`` batch, dtype kept (the classifier reads both kinds)."""
    x = np.asarray(videos)
    if x.ndim != 5:
        raise ConfigError(f"videos must have shape (N, T, S, S, 3), got {x.shape}")
    return x.reshape(-1, *x.shape[2:])


def labelled_frames(n: int, seed: int, image_size: int = 32, num_frames: int = 8) -> tuple[np.ndarray, dict]:
    """``(frames (n, S, S, 3) uint8, {attribute: ids (n,)})``: the frames of ``moving_shapes`` clips of stream
    ``seed``, labelled with their clip's shape, colour and size and the 3x3 cell nearest the object's centre (the
    classifier's position head; not scored on clips). The training data of a classifier that reads clip frames."""
    from mmdit_jax.data.captions import POSITIONS
    from mmdit_jax.data.motion import motion_example
    from mmdit_jax.data.shapes import _cell_centre

    cells = np.array([_cell_centre(p, image_size) for p in POSITIONS])
    records = [motion_example(i, seed, image_size, num_frames) for i in range(-(-n // num_frames))]
    frames = np.concatenate([r["video"] for r in records])[:n]
    centres = np.concatenate([r["centres"] for r in records])[:n]
    labels = {a: np.repeat([r[a] for r in records], num_frames)[:n] for a in ("shape", "colour", "size")}
    labels["position"] = np.argmin(((centres[:, None] - cells[None]) ** 2).sum(-1), axis=1)
    return frames, labels


def centre_track(videos: Any) -> np.ndarray:
    """``(N, T, 2)`` float64 object centres per frame (NaN where a frame has no foreground)."""
    x = _videos(videos)
    ring = np.concatenate([x[:, :, 0], x[:, :, -1], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], axis=2)  # (N, T, P, 3)
    background = np.median(ring, axis=2)[:, :, None, None]
    d = np.sqrt(((x - background) ** 2).sum(-1))                                                  # (N, T, S, S)
    w = np.where(d > FOREGROUND_THRESHOLD, d, 0.0).astype(np.float64)
    coords = np.arange(x.shape[2]) + 0.5
    mass = w.sum((2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = (w.sum(3) * coords).sum(2) / mass
        cx = (w.sum(2) * coords).sum(2) / mass
    return np.where(mass[..., None] > 0, np.stack([cy, cx], -1), np.nan)


def _initial_velocity(centres: Any) -> np.ndarray:
    """``(N, 2)``: the per-axis median displacement over the first half of each track (NaN if none is known)."""
    c = np.asarray(centres, np.float64)
    if c.ndim != 3 or c.shape[-1] != 2:
        raise ConfigError(f"centres must have shape (N, T, 2), got {c.shape}")
    steps = np.diff(c, axis=1)[:, :max(1, -(-(c.shape[1] - 1) // 2))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN tracks: the median is NaN, read as no motion
        return np.nanmedian(steps, axis=1) if steps.shape[1] else np.full((len(c), 2), np.nan)


def motion_of_track(centres: Any, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(direction ids (N,), speed ids (N,))`` int64 of ``(N, T, 2)`` tracks; ``NO_MOTION`` for static or missing
    objects (module docstring)."""
    v = _initial_velocity(centres)
    along = v @ _VECTORS.T                                                                         # (N, 4)
    direction = np.argmax(np.nan_to_num(along, nan=-np.inf), axis=1)
    projection = np.take_along_axis(along, direction[:, None], 1)[:, 0]
    pixels = np.array([speed_pixels(s, image_size) for s in SPEEDS])
    speed = np.argmin(np.abs(projection[:, None] - pixels), axis=1)
    moving = np.nan_to_num(projection, nan=0.0) >= pixels.min() / 2
    return np.where(moving, direction, NO_MOTION).astype(np.int64), np.where(moving, speed, NO_MOTION).astype(np.int64)


def motion_accuracy(videos: Any, direction: Any, speed: Any) -> dict[str, float]:
    """Fractions of clips whose read direction, speed, and both, equal the labels (ids ``(N,)``)."""
    x = np.asarray(videos)
    read_dir, read_speed = motion_of_track(centre_track(x), x.shape[2])
    ok_dir, ok_speed = read_dir == np.asarray(direction), read_speed == np.asarray(speed)
    both = ok_dir & ok_speed
    return {"direction": float(ok_dir.mean()), "speed": float(ok_speed.mean()), "both": float(both.mean())}


def frame_adherence(classifier: Any, videos: Any, shape: Any, colour: Any, size: Any) -> dict[str, float]:
    """Fractions of all N * T frames whose predicted shape, colour, size (and ``all`` three) equal the clip's ids
    (each ``(N,)``); ``classifier`` is an ``eval.classifier.ShapesClassifier`` (its ``predict``)."""
    x = np.asarray(videos)
    n, t = x.shape[:2]
    pred = classifier.predict(_frames(x))
    ok = {a: np.asarray(pred[a]).reshape(n, t) == np.asarray(ids).reshape(n, 1)
          for a, ids in (("shape", shape), ("colour", colour), ("size", size))}
    every = ok["shape"] & ok["colour"] & ok["size"]
    return {**{a: float(v.mean()) for a, v in ok.items()}, "all": float(every.mean())}


def subject_consistency(features: Any) -> tuple[np.ndarray, float]:
    """VBench's subject consistency of ``(N, T, D)`` per-frame features: ``(per clip (N,), mean over clips)``."""
    f = np.asarray(features, np.float64)
    if f.ndim != 3 or f.shape[1] < 2:
        raise ConfigError(f"features must have shape (N, T >= 2, D), got {f.shape}")
    f = f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    first = np.maximum((f[:, :1] * f[:, 1:]).sum(-1), 0.0)
    previous = np.maximum((f[:, :-1] * f[:, 1:]).sum(-1), 0.0)
    per_clip = ((first + previous) / 2).mean(1)
    return per_clip, float(per_clip.mean())


def flicker(videos: Any, centres: Any, radius: Any) -> tuple[np.ndarray, float]:
    """``(per clip (N,), mean)`` background flicker of ``(N, T, S, S, 3)`` clips, the object masked out around its
    ``(N, T, 2)`` centres (NaN centres mask nothing) with ``radius`` (scalar or ``(N,)``, pixels); a clip with no
    background pixel left is NaN (the mean skips it)."""
    x = _videos(videos)
    c = np.asarray(centres, np.float64)
    if c.shape != x.shape[:2] + (2,):
        raise ConfigError(f"centres must have shape {x.shape[:2] + (2,)}, got {c.shape}")
    r = np.broadcast_to(np.asarray(radius, np.float64), (len(x),))[:, None, None, None]
    coords = np.arange(x.shape[2]) + 0.5
    dist2 = (coords[:, None] - c[..., 0, None, None]) ** 2 + (coords[None, :] - c[..., 1, None, None]) ** 2
    far = ~(dist2 <= (FLICKER_MARGIN * r) ** 2)                                # NaN centre: every pixel is far
    keep = far[:, 1:] & far[:, :-1]                                            # (N, T - 1, S, S)
    change = np.abs(x[:, 1:] - x[:, :-1]).mean(-1) / 255.0
    count = keep.sum((1, 2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_clip = np.where(count > 0, (change * keep).sum((1, 2, 3)) / count, np.nan)
    return per_clip, float(np.nanmean(per_clip)) if np.isfinite(per_clip).any() else float("nan")


def clip_features(classifier: Any, videos: Any) -> np.ndarray:
    """``(N, D + 4)`` float64: the mean over frames of ``classifier.embed``, the tracked mean displacement
    ``(dy, dx)`` in pixels per frame and its standard deviation over time (0 where the track is unknown)."""
    x = np.asarray(videos)
    n, t = x.shape[:2]
    embed = np.asarray(classifier.embed(_frames(x)), np.float64).reshape(n, t, -1).mean(1)
    steps = np.diff(centre_track(x), axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # frames without an object: NaN steps, skipped
        motion = np.concatenate([np.nanmean(steps, 1), np.nanstd(steps, 1)], axis=1)
    return np.concatenate([embed, np.nan_to_num(motion, nan=0.0)], axis=1)
