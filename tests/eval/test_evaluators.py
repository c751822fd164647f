"""Evaluators of the pooled-CLIP study: attribute classifier, caption parsing, Fréchet distance, deviation."""

import itertools

import numpy as np
import pytest

from mmdit_jax.data.captions import COLOURS, POSITIONS, SHAPES, SIZES, TEMPLATES, ShapeObject, describe
from mmdit_jax.eval.adherence import prompt_adherence
from mmdit_jax.eval.attributes import ATTRIBUTES, labelled_images, parse_caption
from mmdit_jax.eval.classifier import ShapesClassifier, train_classifier
from mmdit_jax.eval.deviation import feature_deviation, make_deviation
from mmdit_jax.eval.frechet import frechet_distance, gaussian_frechet_distance
from mmdit_jax.checks import ConfigError

HELD_OUT_SEED = 1  # the shapes builder's test stream (2 * data.seed + 1); the classifier trains on seed 1234


@pytest.fixture(scope="module")
def classifier():
    return train_classifier(num_train=6000, steps=400)


@pytest.fixture(scope="module")
def held_out():
    return labelled_images(1000, HELD_OUT_SEED)


def test_classifier_is_accurate_on_held_out_real_images(classifier, held_out, tmp_path):
    acc = classifier.accuracy(*held_out)
    assert min(acc.values()) >= 0.99, acc
    classifier.save(str(tmp_path / "clf.msgpack"))
    again = ShapesClassifier.load(str(tmp_path / "clf.msgpack"))
    np.testing.assert_array_equal(again.embed(held_out[0][:8]), classifier.embed(held_out[0][:8]))
    with pytest.raises(ConfigError, match="does not exist"):
        ShapesClassifier.load(str(tmp_path / "missing.msgpack"))


def test_parse_caption_reads_back_exactly_the_mentioned_attributes():
    fields = {"shape": "{s}", "colour": "{c}", "size": "{z}", "position": "{p}"}
    for obj in itertools.islice(itertools.product(SHAPES, COLOURS, SIZES, POSITIONS), 0, None, 37):
        o = ShapeObject(*obj)
        for t, template in enumerate(TEMPLATES):
            want = {a: ATTRIBUTES[a].index(v) for a, v in zip(ATTRIBUTES, obj) if fields[a] in template}
            assert parse_caption(describe(o, t)) == want, describe(o, t)


def test_prompt_adherence_is_high_for_true_captions_and_low_for_shuffled(classifier, held_out):
    from mmdit_jax.data.shapes import example

    rows = [example(i, HELD_OUT_SEED) for i in range(300)]
    images = np.stack([r["image"] for r in rows])
    captions = [r["caption"] for r in rows]
    assert prompt_adherence(classifier, images, captions)["all"] >= 0.99
    shuffled = list(np.random.default_rng(0).permutation(captions))
    assert prompt_adherence(classifier, images, shuffled)["all"] < 0.3


def test_gaussian_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))          # a rotation: FD is invariant under it
    s_a, s_b = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    want = np.sum((mu_a - mu_b) ** 2) + np.sum((s_a - s_b) ** 2)   # diagonal covariances diag(s^2)
    got = gaussian_frechet_distance(q @ mu_a, q @ np.diag(s_a**2) @ q.T, q @ mu_b, q @ np.diag(s_b**2) @ q.T)
    assert got == pytest.approx(want, rel=1e-8)
    # From samples: converges to the population value; identical sets give 0.
    xa = rng.normal(size=(200_000, d)) * s_a + mu_a
    xb = rng.normal(size=(200_000, d)) * s_b + mu_b
    assert frechet_distance(xa, xb) == pytest.approx(want, rel=0.02)
    assert abs(frechet_distance(xa, xa)) < 1e-6
    with pytest.raises(ConfigError, match="widths differ"):
        frechet_distance(xa, xb[:, :3])


def test_deviation_is_zero_for_identical_images_and_grows_with_perturbation(classifier, held_out):
    images = held_out[0][:200]
    x = images.astype(np.float32) / 127.5 - 1.0
    assert np.all(feature_deviation(classifier, images, images) == 0.0)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=x.shape).astype(np.float32)
    by_noise = [feature_deviation(classifier, x, np.clip(x + s * noise, -1, 1)).mean() for s in (0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(by_noise, by_noise[1:])), by_noise
    by_shift = [feature_deviation(classifier, x, np.roll(x, k, axis=2)).mean() for k in (1, 2, 4)]
    assert all(a < b for a, b in zip(by_shift, by_shift[1:])), by_shift
    dev = make_deviation("features", classifier)
    np.testing.assert_allclose(dev(images, images), 0.0)


def test_dreamsim_hook_needs_local_weights(tmp_path):
    with pytest.raises(ConfigError, match="dreamsim_dir"):
        make_deviation("dreamsim", dreamsim_dir=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="choose one of"):
        make_deviation("lpips")
    with pytest.raises(ConfigError, match="classifier"):
        make_deviation("features")


def test_dreamsim_path_loads_from_the_folder_refuses_downloads_and_scores_uint8_pairs(tmp_path, monkeypatch):
    """The real package fetches backbone weights at import of a model, so a stand-in module with its interface
    (``dreamsim(pretrained, device, cache_dir) -> (model, preprocess)``) checks our side of the wiring."""
    import sys
    import types

    import torch

    from mmdit_jax.eval.deviation import DREAMSIM_LAYOUTS

    calls = []

    def dreamsim(pretrained, device, cache_dir):
        calls.append((pretrained, device, cache_dir))
        if cache_dir.endswith("fetching"):                          # a package version that wants more files
            torch.hub.download_url_to_file("https://example.invalid/weights.zip", cache_dir)
        preprocess = lambda im: torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)[None]  # noqa
        return (lambda a, b: ((a - b) ** 2).flatten(1).mean(1)), preprocess

    monkeypatch.setitem(sys.modules, "dreamsim", types.SimpleNamespace(dreamsim=dreamsim))
    for name in ("complete", "fetching"):
        (tmp_path / name).mkdir()
        for f in DREAMSIM_LAYOUTS[0]:
            (tmp_path / name / f).touch()
    with pytest.raises(ConfigError, match="DreamSim tried to download https://example.invalid/weights.zip"):
        make_deviation("dreamsim", dreamsim_dir=str(tmp_path / "fetching"))
    assert torch.hub.download_url_to_file.__name__ == "download_url_to_file"     # restored after the refusal
    dev = make_deviation("dreamsim", dreamsim_dir=str(tmp_path / "complete"))
    assert calls[-1] == (True, "cpu", str(tmp_path / "complete"))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    b = a.copy()
    b[1] = 255 - b[1]
    d = dev(a, b)
    assert d.shape == (3,) and d[0] == d[2] == 0.0 and d[1] > 0.1
    signed = a.astype(np.float32) / 127.5 - 1.0                   # [-1, 1] input reads as the same images
    np.testing.assert_array_equal(dev(signed, b), d)
