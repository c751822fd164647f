"""Motion metrics: perfect on ground-truth clips, zero or low on broken ones; flicker, subject consistency, features.

The attribute classifier is replaced by a stub reading fixed pixels (a trained one costs ~30 s): these tests check
what the metrics do with its outputs, frame order included, not the classifier.
"""

import numpy as np
import pytest

from mmdit_jax.checks import ConfigError
from mmdit_jax.data.captions import SHAPES
from mmdit_jax.data.motion import DIRECTIONS, SPEEDS, motion_example, render_clip, sample_motion
from mmdit_jax.eval.frechet import frechet_distance
from mmdit_jax.eval.motion import (NO_MOTION, centre_track, clip_features, flicker, frame_adherence,
                                   motion_accuracy, motion_of_track, subject_consistency)


@pytest.fixture(scope="module")
def clips():
    records = [motion_example(i, 1) for i in range(96)]
    fields = ("video", "centres", "radius", "shape", "colour", "size", "direction", "speed")
    return {k: np.stack([r[k] for r in records]) for k in fields}


def _triangle_offset(clips):
    """The triangle's centroid lies 0.2 r below its centre (``data/motion.py`` stores the centre)."""
    tri = clips["shape"] == SHAPES.index("triangle")
    return np.where(tri, 0.2 * clips["radius"], 0.0)[:, None, None] * np.array([1.0, 0.0])


def test_tracks_follow_the_stored_centres(clips):
    got = centre_track(clips["video"])
    assert got.shape == clips["centres"].shape
    np.testing.assert_allclose(got, clips["centres"] + _triangle_offset(clips), atol=0.2)
    np.testing.assert_allclose(centre_track(clips["video"] / 127.5 - 1.0), got, atol=1e-3)
    on_grey = np.clip(clips["video"].astype(int) + 40, 0, 255).astype(np.uint8)   # background from the border
    np.testing.assert_allclose(centre_track(on_grey), got, atol=0.2)
    empty = clips["video"][:2].copy()
    empty[:, 3] = 0
    assert np.isnan(centre_track(empty)[:, 3]).all() and np.isfinite(centre_track(empty)[:, 2]).all()


def test_motion_is_read_perfectly_on_ground_truth_and_fails_on_broken_clips(clips):
    v, d, s = clips["video"], clips["direction"], clips["speed"]
    assert motion_accuracy(v, d, s) == {"direction": 1.0, "speed": 1.0, "both": 1.0}
    assert motion_accuracy(v / 127.5 - 1.0, d, s) == {"direction": 1.0, "speed": 1.0, "both": 1.0}
    assert motion_accuracy(v[:, ::-1], d, s) == {"direction": 0.0, "speed": 1.0, "both": 0.0}
    static = np.repeat(v[:, :1], v.shape[1], axis=1)
    assert motion_accuracy(static, d, s) == {"direction": 0.0, "speed": 0.0, "both": 0.0}
    rng = np.random.default_rng(0)
    shuffled = np.stack([clip[rng.permutation(len(clip))] for clip in v])
    acc = motion_accuracy(shuffled, d, s)
    assert acc["direction"] < 0.7 and acc["both"] < 0.5, acc


def test_motion_read_survives_a_bounce_in_a_long_rollout_and_no_track_is_no_motion():
    motions = [sample_motion(np.random.default_rng([5, i]), 32, 8) for i in range(40)]
    long = np.stack([render_clip(m, 24, 32) for m in motions])   # 24 frames: most bounce after the 8th
    labels = ([DIRECTIONS.index(m.direction) for m in motions], [SPEEDS.index(m.speed) for m in motions])
    assert motion_accuracy(long, *labels)["both"] == 1.0
    tracks = np.zeros((3, 6, 2))
    tracks[1] = np.nan
    tracks[2, :, 1] = 1.5 * np.arange(6)           # between the classes: nearest wins (quickly = 2 px at 32)
    tracks[2, 5, 1] = -20.0                         # a late outlier after the first half is ignored
    direction, speed = motion_of_track(tracks, 32)
    np.testing.assert_array_equal(direction, [NO_MOTION, NO_MOTION, DIRECTIONS.index("right")])
    np.testing.assert_array_equal(speed, [NO_MOTION, NO_MOTION, SPEEDS.index("slowly")])
    direction, speed = motion_of_track(tracks[2:] * 2, 64)          # the same clip at twice the size
    assert (direction[0], speed[0]) == (DIRECTIONS.index("right"), SPEEDS.index("slowly"))


def test_flicker_is_zero_on_a_still_background_and_grows_with_background_noise(clips):
    v, radius = clips["video"], clips["radius"]
    per_clip, mean = flicker(v, centre_track(v), radius)
    assert per_clip.shape == (len(v),) and mean == 0.0
    assert flicker(v, clips["centres"], radius)[1] == 0.0
    rng = np.random.default_rng(0)
    noisy = np.clip(v.astype(int) + rng.integers(-20, 21, v.shape), 0, 255).astype(np.uint8)
    assert flicker(noisy, clips["centres"], radius)[1] > 0.02
    # Changes on the object itself are not flicker: recolour the object pixels of every other frame.
    recoloured = v.copy()
    recoloured[:, ::2] = np.where(v[:, ::2] > 0, 255 - v[:, ::2], 0)
    assert flicker(recoloured, clips["centres"], radius)[1] == 0.0
    assert flicker(v, np.full(clips["centres"].shape, np.nan), radius)[1] > 0.0   # nothing masked: motion counts
    with pytest.raises(ConfigError, match="centres must have shape"):
        flicker(v, clips["centres"][:, :3], radius)


def test_subject_consistency_is_vbench_s_formula():
    f = np.random.default_rng(0).normal(size=(4, 1, 16))
    per_clip, mean = subject_consistency(np.repeat(f, 5, axis=1))
    np.testing.assert_allclose(per_clip, 1.0)
    assert np.isclose(mean, 1.0)
    # frames (1, 0), (0, 1), (1, 0): t = 1 -> (0 + 0) / 2, t = 2 -> (1 + 0) / 2; mean 0.25. Negative cosines count 0.
    hand = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]]])
    np.testing.assert_allclose(subject_consistency(hand)[0], [0.25, 0.25])
    mixed = np.concatenate([np.repeat(f, 3, axis=1), np.roll(np.repeat(f, 2, axis=1), 1, axis=0)], axis=1)
    assert subject_consistency(mixed)[1] < 0.8
    with pytest.raises(ConfigError, match="T >= 2"):
        subject_consistency(f)


class PixelClassifier:
    """Reads a frame's shape / colour / size ids from its corner pixel; embeds a frame as its mean colour."""

    def predict(self, images):
        x = np.asarray(images)
        assert x.ndim == 4
        return {"shape": x[:, 0, 0, 0], "colour": x[:, 0, 0, 1], "size": x[:, 0, 0, 2], "position": x[:, 0, 0, 0]}

    def embed(self, images):
        return np.asarray(images, np.float64).mean((1, 2)) / 255.0


def test_frame_adherence_scores_every_frame_of_every_clip(clips):
    v = clips["video"][:4].copy()
    labels = {"shape": np.array([0, 1, 2, 3]), "colour": np.array([4, 5, 6, 7]), "size": np.array([0, 1, 2, 0])}
    v[:, :, 0, 0] = np.stack([labels["shape"], labels["colour"], labels["size"]], -1)[:, None]
    assert frame_adherence(PixelClassifier(), v, **labels) == {"shape": 1.0, "colour": 1.0, "size": 1.0, "all": 1.0}
    v[2, 5, 0, 0, 0] = 5                # one frame of clip 2 gets the wrong shape, one of clip 0 the wrong size
    v[0, 7, 0, 0, 2] = 2
    n = v.shape[0] * v.shape[1]
    assert frame_adherence(PixelClassifier(), v, **labels) == \
        {"shape": 1 - 1 / n, "colour": 1.0, "size": 1 - 1 / n, "all": 1 - 2 / n}


def test_clip_features_hold_the_mean_embedding_and_the_motion(clips):
    v = clips["video"]
    feats = clip_features(PixelClassifier(), v)
    assert feats.shape == (len(v), 3 + 4)
    np.testing.assert_allclose(feats[:, :3], v.astype(np.float64).mean((1, 2, 3)) / 255.0, rtol=1e-6)
    steps = np.diff(clips["centres"].astype(np.float64), axis=1)
    np.testing.assert_allclose(feats[:, 3:5], steps.mean(1), atol=0.05)
    np.testing.assert_allclose(feats[:, 5:], 0.0, atol=0.05)
    other = np.stack([motion_example(i, 3)["video"] for i in range(96)])
    static = np.repeat(other[:, :1], other.shape[1], axis=1)
    same = frechet_distance(feats, clip_features(PixelClassifier(), other))
    assert same < frechet_distance(feats, clip_features(PixelClassifier(), static)) / 3
