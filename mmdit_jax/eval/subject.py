"""Subject evaluation for toy DreamBooth (``data/subjects.py``): fidelity, "is it the subject", diversity.

No learnt network: the attribute classifier has only seen flat objects, so nothing makes its features respond to
a pattern. The descriptor is hand-designed from what defines a toy subject (a silhouette, a pattern inside it,
two colours), each part measured in the object's own frame, so position and size (which contexts change) drop out:

  x: (B, H, W, 3), uint8 or float in [0, 255] (renders) or [-1, 1] (generations), told apart per batch by the
  maximum (an object in [0, 255] is far above 1); v = max over channels in [0, 1]; q = clip((v - 0.15) / 0.6, 0, 1)
  (1 on any palette colour, 0 on background noise); object mask m = [v > 0.5]
  frame: centroid c and scale s = sqrt(sum q) of q; a K x K grid (K = GRID) spans c +- s, pixels splat bilinearly
  shape   S: (8, K, K) HOG of q: gradient magnitude in 8 signed orientation bins (the silhouette: q is flat inside)
  pattern P: (2, K, K) chroma steps inside the object, per axis: k = rgb / v is constant on a flat object, its
             anti-aliased rim included (black background), so max(|k_p - k_q|_1 - EDGE_FLOOR, 0) over 4-neighbours
             both in m, / s (edge length grows with size); plus one entry FLAT: "no pattern" is a state of its own
  colour  C: (8,) pixels of m by nearest palette chroma
  each block L2-normalised; appearance a = (S, P, C) / sqrt(3) (unit norm); layout L = (c_y / H, c_x / W, s / H)

  fidelity(G, I) = mean over g in G, i in I of <a(g), a(i)>, in [0, 1] (DreamBooth's mean pairwise cosine)
  is_subject(g)  = mean_i <S_g, S_i> > t_shape  and  mean_i <P_g, P_i> > t_pattern: its silhouette and its
                   pattern, whatever the base colour ("a blue v circle" is still the subject); t_pattern calibrated
                   on rendered subject vs plain-class images, t_shape on subject vs plain other shapes
  diversity(G)   = mean over pairs g != g' of ||(a, L)(g) - (a, L)(g')||: where and how big varies too
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mmdit_jax.checks import ConfigError, check_positive_int
from mmdit_jax.data.captions import COLOURS, COLOUR_RGB, SHAPES, SIZES
from mmdit_jax.data.subjects import base_colours, render_plain, render_subject, subject

GRID, BINS = 8, 8
EDGE_FLOOR = 0.2   # chroma steps below this are noise (6/255 pixel noise rarely reaches it; subject pairs: >= 0.5)
FLAT = 0.1         # "no pattern" entry of P, below the faintest subject pattern's edge mass (chroma steps / s)
_PALETTE = np.array([np.array(COLOUR_RGB[c]) / max(COLOUR_RGB[c]) for c in COLOURS], np.float32)   # chroma


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _splat(values: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``values (B, H, W, C)`` -> ``(B, C * GRID * GRID)``, each pixel added bilinearly at its place in the frame."""
    b, h, w, ch = values.shape
    half, side = (GRID - 1) / 2, GRID + 2           # pixels beyond the grid land in a margin cell, then dropped
    g = [(np.arange(n)[None, :] + 0.5 - centre[:, i, None]) / scale[:, None] * half + half + 1
         for i, n in enumerate((h, w))]
    out = np.zeros(b * ch * side * side)
    for dy in (0, 1):
        for dx in (0, 1):
            iy, ix = np.floor(g[0]) + dy, np.floor(g[1]) + dx                        # (B, H), (B, W)
            wgt = (1 - np.abs(g[0] - iy))[:, :, None, None] * (1 - np.abs(g[1] - ix))[:, None, :, None] * values
            cell = np.clip(iy, 0, side - 1)[:, :, None] * side + np.clip(ix, 0, side - 1)[:, None, :]
            idx = (np.arange(b)[:, None, None, None] * ch + np.arange(ch)) * side * side + cell[..., None]
            out += np.bincount(idx.ravel().astype(np.int64), wgt.ravel(), out.size)
    return out.reshape(b, ch, side, side)[:, :, 1:-1, 1:-1].reshape(b, -1)


def features(images: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(B, H, W, 3)`` -> ``(appearance (B, 10 K^2 + 9), layout (B, 3))`` as in the module docstring."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ConfigError(f"images must have shape (B, H, W, 3), got {x.shape}")
    wide = x.dtype == np.uint8 or float(x.max(initial=0)) > 1.5
    rgb = np.clip(x.astype(np.float32) / 255.0 if wide else (x.astype(np.float32) + 1) / 2, 0, 1)
    b, h, w, _ = rgb.shape
    v = rgb.max(-1)
    q, m = np.clip((v - 0.15) / 0.6, 0.0, 1.0), v > 0.5      # the floor keeps background noise out of the frame
    mass = np.maximum(q.sum((1, 2)), 1e-6)
    centre = np.stack([q.sum(2) @ (np.arange(h) + 0.5), q.sum(1) @ (np.arange(w) + 0.5)], -1) / mass[:, None]
    scale = np.maximum(np.sqrt(mass), 1.0)
    gy, gx = np.gradient(q, axis=(1, 2))
    pos = (np.arctan2(gy, gx) % (2 * np.pi)) / (2 * np.pi) * BINS
    lo, frac, bins = np.floor(pos)[..., None] % BINS, (pos - np.floor(pos))[..., None], np.arange(BINS)
    hog = np.hypot(gy, gx)[..., None] * ((lo == bins) * (1 - frac) + ((lo + 1) % BINS == bins) * frac)
    chroma = np.where(m[..., None], rgb / np.maximum(v, 1e-6)[..., None], 0.0)
    edges = np.zeros((b, h, w, 2), np.float32)
    for j, axis in enumerate((1, 2)):
        hi = tuple(slice(1, None) if d == axis else slice(None) for d in range(3))
        lo_ = tuple(slice(None, -1) if d == axis else slice(None) for d in range(3))
        step = np.maximum(np.abs(chroma[hi] - chroma[lo_]).sum(-1) - EDGE_FLOOR, 0) * m[hi] * m[lo_]
        edges[..., j][hi] += step                 # a step belongs to both its pixels: no half-pixel shift
        edges[..., j][lo_] += step
    pattern = np.concatenate([_splat(edges, centre, scale) / scale[:, None], np.full((b, 1), FLAT)], -1)
    nearest = np.argmin(np.abs(chroma[..., None, :] - _PALETTE).sum(-1), -1)
    colour = ((nearest[..., None] == np.arange(len(COLOURS))) & m[..., None]).sum((1, 2)).astype(np.float64)
    appearance = np.concatenate([_unit(_splat(hog, centre, scale)), _unit(pattern), _unit(colour)], -1)
    layout = np.stack([centre[:, 0] / h, centre[:, 1] / w, scale / h], -1)
    return (appearance / np.sqrt(3)).astype(np.float32), layout.astype(np.float32)


def diversity(images: Any) -> float:
    """Mean pairwise distance of ``(appearance, layout)`` over ``(B, H, W, 3)`` images, B >= 2."""
    f = np.concatenate(features(images), -1).astype(np.float64)
    if len(f) < 2:
        raise ConfigError(f"diversity needs at least 2 images, got {len(f)}")
    # Row by row, not the Gram identity: identical images then give exactly 0, not rounding noise.
    total = sum(np.linalg.norm(f[i + 1:] - f[i], axis=-1).sum() for i in range(len(f) - 1))
    return float(2 * total / (len(f) * (len(f) - 1)))


def _cut(pos: np.ndarray, neg: np.ndarray) -> float:
    """The middle of the thresholds that best separate ``pos > t`` from ``neg <= t`` (balanced accuracy)."""
    x = np.sort(np.concatenate([pos, neg]))
    cuts = np.concatenate([[x[0] - 1e-3], (x[1:] + x[:-1]) / 2, [x[-1] + 1e-3]])
    acc = (pos[:, None] > cuts).mean(0) + (neg[:, None] <= cuts).mean(0)
    best = np.flatnonzero(acc == acc.max())
    return float((cuts[best[0]] + cuts[best[-1]]) / 2)


@dataclasses.dataclass
class SubjectEvaluator:
    """Fidelity and is-subject against fixed instance images; thresholds from ``calibrate``."""

    instances: np.ndarray          # (N, D) appearance features of the instance images
    t_shape: float = 0.5
    t_pattern: float = 0.5

    @classmethod
    def from_images(cls, instance_images: Any) -> "SubjectEvaluator":
        """From ``(N, H, W, 3)`` instance images (uncalibrated thresholds)."""
        return cls(features(instance_images)[0])

    def fidelity(self, images: Any) -> float:
        """Mean cosine similarity of ``(B, H, W, 3)`` generations to the instance images, in [0, 1]."""
        return float((features(images)[0] @ self.instances.T).mean())

    def similarities(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(shape (B,), pattern (B,))`` block similarities, mean over the instance images."""
        k, kp = BINS * GRID * GRID, 2 * GRID * GRID + 1          # shape and pattern block sizes
        a, ref = features(images)[0] * 3, self.instances           # * sqrt(3)^2: unit blocks again
        return (a[:, :k] @ ref[:, :k].T).mean(-1), (a[:, k:k + kp] @ ref[:, k:k + kp].T).mean(-1)

    def is_subject(self, images: Any) -> np.ndarray:
        """``(B,)`` bool: the subject's silhouette and its pattern."""
        shape, pattern = self.similarities(images)
        return (shape > self.t_shape) & (pattern > self.t_pattern)

    def calibrate(self, subject_images: Any, plain_class: Any, other_shapes: Any) -> tuple[float, float]:
        """``t_pattern`` from subject vs plain-class images, ``t_shape`` from subject vs other shapes."""
        shape, pattern = self.similarities(subject_images)
        self.t_pattern = _cut(pattern, self.similarities(plain_class)[1])
        self.t_shape = _cut(shape, self.similarities(other_shapes)[0])
        return self.t_shape, self.t_pattern


def subject_evaluator(name: str, num_instances: int = 4, seed: int = 0, num_calibration: int = 120,
                      calibration_seed: int = 10_000) -> SubjectEvaluator:
    """Evaluator of subject ``name`` against ``instance_images(name, num_instances, seed)``, calibrated on
    ``num_calibration`` renders each: the subject in every size and allowed base colour, its plain class, and
    plain objects of the other shapes (seeds from ``calibration_seed``; evaluate on others)."""
    check_positive_int("num_calibration", num_calibration)
    s = subject(name)
    ev = SubjectEvaluator.from_images(render_subject(name, seed, num_instances)[0])
    pos = render_subject(name, calibration_seed, num_calibration, size=SIZES, colour=base_colours(name))[0]
    plain = render_plain(s.shape, calibration_seed, num_calibration)[0]
    others = np.concatenate([render_plain(o, calibration_seed, -(-num_calibration // (len(SHAPES) - 1)))[0]
                             for o in SHAPES if o != s.shape])
    ev.calibrate(pos, plain, others)
    return ev
