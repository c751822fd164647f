"""Subject evaluator: is-subject accuracy on fresh renders, fidelity gap to the plain class, diversity."""

import numpy as np
import pytest

from mmdit_jax.checks import ConfigError
from mmdit_jax.data.captions import SHAPES, SIZES
from mmdit_jax.data.subjects import SUBJECTS, base_colours, render_plain, render_subject
from mmdit_jax.eval.subject import SubjectEvaluator, diversity, features, subject_evaluator

FRESH = 777        # evaluation seeds, apart from the instances' (0) and the calibration's (10_000)


@pytest.fixture(scope="module")
def evaluators():
    return {name: subject_evaluator(name) for name in SUBJECTS}


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_is_subject_tells_fresh_subject_renders_from_the_plain_class(evaluators, name):
    ev, shape = evaluators[name], SUBJECTS[name].shape
    subj = render_subject(name, FRESH, 120, size=SIZES, colour=base_colours(name))[0]   # every context
    plain = render_plain(shape, FRESH, 120)[0]
    accuracy = (ev.is_subject(subj).mean() + (~ev.is_subject(plain)).mean()) / 2
    assert accuracy >= 0.95, accuracy
    # Neither the pattern on another class nor another class plain passes.
    others = [render_subject(o, FRESH, 30, size=SIZES)[0] for o in SUBJECTS if o != name]
    others += [render_plain(o, FRESH, 20)[0] for o in SHAPES if o != shape]
    assert (~ev.is_subject(np.concatenate(others))).mean() >= 0.95
    # Mild pixel noise (5/255), as a generator leaves on flat colours, changes nothing.
    noise = np.random.default_rng(0).normal(0, 5.0, subj.shape).astype(np.float32)
    assert ev.is_subject(np.clip(subj + noise, 0, 255)).mean() >= 0.95
    assert (~ev.is_subject(np.clip(plain + noise, 0, 255))).mean() >= 0.95


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_fidelity_is_higher_for_the_subject_than_for_its_plain_class(evaluators, name):
    ev, s = evaluators[name], SUBJECTS[name]
    subj = ev.fidelity(render_subject(name, FRESH, 60)[0])
    # The hardest plain images: the subject's own colour and sizes, only the pattern missing.
    plain = ev.fidelity(render_plain(s.shape, FRESH, 60, colour=s.colour, size=s.sizes)[0])
    assert subj > 0.9 and subj - plain > 0.2, (subj, plain)
    assert 0.0 <= plain <= 1.0


def test_diversity_is_zero_for_identical_images_and_grows_with_variation():
    subj = render_subject("checker_square", FRESH, 16)[0]
    assert diversity(np.repeat(subj[:1], 8, axis=0)) == 0.0
    fixed = render_subject("checker_square", FRESH, 16, position="center", size="large", colour_jitter=0.0)[0]
    assert diversity(fixed) == 0.0                                 # nothing left to vary: 16 equal images
    one_size = render_subject("checker_square", FRESH, 16, size="large")[0]
    assert 0.0 < diversity(one_size) < diversity(subj)             # position only < position and size
    with pytest.raises(ConfigError, match="at least 2"):
        diversity(subj[:1])


def test_features_are_the_same_for_uint8_0_255_and_unit_range_images_and_check_their_shape():
    images = render_subject("barred_diamond", FRESH, 8)[0]
    for other in (images.astype(np.uint8), images / 127.5 - 1):     # records; model outputs
        for got, want in zip(features(other), features(images)):
            np.testing.assert_allclose(got, want, atol=1e-5)
    appearance, layout = features(images)
    np.testing.assert_allclose(np.linalg.norm(appearance, axis=-1), 1.0, atol=1e-5)
    assert layout.shape == (8, 3)
    with pytest.raises(ConfigError, match=r"\(B, H, W, 3\)"):
        features(images[0])


def test_an_uncalibrated_evaluator_and_bad_names():
    ev = SubjectEvaluator.from_images(render_subject("striped_circle", 0, 4)[0])
    assert ev.fidelity(render_subject("striped_circle", FRESH, 4)[0]) > 0.9
    with pytest.raises(ConfigError, match="subject='nope'"):
        subject_evaluator("nope")
