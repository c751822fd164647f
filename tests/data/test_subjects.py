"""Toy DreamBooth subjects: deterministic renders, contexts read back from the pixels, prompts, the rare token."""

import jax
import numpy as np
import pytest

from mmdit_jax.checks import ConfigError
from mmdit_jax.data.captions import COLOURS, COLOUR_RGB, POSITIONS, SIZES, ShapeObject, corpus
from mmdit_jax.data.shapes import render
from mmdit_jax.data.subjects import (RARE_TOKEN, SUBJECTS, attribute_ids, base_colours, class_prompt, instance_images,
                                     instance_prompt, recontextualisations, render_plain, render_subject,
                                     subject_class, subject_prompt)

CHROMA = np.array([np.array(COLOUR_RGB[c]) / max(COLOUR_RGB[c]) for c in COLOURS])


def _object(image: np.ndarray) -> np.ndarray:
    return image.max(-1) / 255 > 0.3


def _position(image: np.ndarray) -> str:
    """The 3 x 3 cell holding the object's centroid (cell centres lie inside the image's thirds)."""
    ys, xs = np.nonzero(_object(image))
    row, col = (int(3 * c.mean() / n) for c, n in ((ys, image.shape[0]), (xs, image.shape[1])))
    return POSITIONS[3 * row + col]


def _colour_counts(image: np.ndarray) -> dict[str, int]:
    rgb = image[_object(image)] / 255
    nearest = np.argmin(np.abs((rgb / rgb.max(-1, keepdims=True))[:, None] - CHROMA).sum(-1), -1)
    return {c: int((nearest == i).sum()) for i, c in enumerate(COLOURS)}


def test_renders_are_deterministic_in_the_seed_or_key_and_on_the_data_sets_value_grid():
    for name in SUBJECTS:
        a, attrs = render_subject(name, 3, 6)
        b, attrs_b = render_subject(name, 3, 6)
        np.testing.assert_array_equal(a, b)
        assert attrs == attrs_b
        assert not np.array_equal(a, render_subject(name, 4, 6)[0])
        assert a.shape == (6, 32, 32, 3) and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 255
        np.testing.assert_array_equal(a, np.round(a))              # the uint8 levels of the data set's records
    with_key = [render_subject("striped_circle", jax.random.PRNGKey(k), 3)[0] for k in (7, 7, 8)]
    np.testing.assert_array_equal(with_key[0], with_key[1])
    assert not np.array_equal(with_key[0], with_key[2])
    assert render_subject("checker_square", 0, 2, image_size=48)[0].shape == (2, 48, 48, 3)


def test_natural_variation_stays_in_the_subjects_range_and_differs_from_the_flat_class():
    images, attrs = render_subject("striped_circle", 0, 40)
    assert {a["size"] for a in attrs} == set(SUBJECTS["striped_circle"].sizes)
    assert len({a["position"] for a in attrs}) >= 6 and {a["colour"] for a in attrs} == {"red"}
    assert len({im.tobytes() for im in images}) == 40
    counts = [_colour_counts(im) for im in images]
    assert all(c["white"] > 0.2 * sum(c.values()) and c["red"] > 0.3 * sum(c.values()) for c in counts)
    np.testing.assert_array_equal(instance_images("striped_circle", 4, 0), images[:4])
    assert instance_images("striped_circle", 2, 0, image_size=64).shape == (2, 64, 64, 3)


def test_plain_renders_are_the_data_sets_own_objects():
    images, attrs = render_plain("triangle", 5, 10)
    for im, a in zip(images, attrs):
        want = render((ShapeObject(a["shape"], a["colour"], a["size"], a["position"]),), 32)
        np.testing.assert_array_equal(im.astype(np.uint8), want)


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_requested_contexts_are_read_back_from_the_pixels(name):
    s = SUBJECTS[name]
    for position in POSITIONS:
        images, attrs = render_subject(name, 11, 3, position=position)
        assert {_position(im) for im in images} == {position} and {a["position"] for a in attrs} == {position}
    # Size: the pixel area is nearest to the data set's own object of that size.
    plain_area = {z: _object(render_plain(s.shape, 0, 1, size=z, position="center")[0][0]).sum() for z in SIZES}
    for size in SIZES:
        images, attrs = render_subject(name, 12, 4, size=size)
        got = {min(SIZES, key=lambda z: abs(plain_area[z] - _object(im).sum())) for im in images}
        assert got == {size} and {a["size"] for a in attrs} == {size}
    for colour in base_colours(name):
        images, attrs = render_subject(name, 13, 3, colour=colour, size="large")
        for im in images:
            counts = _colour_counts(im)
            second = counts.pop(s.pattern_colour)
            assert max(counts, key=counts.get) == colour and second > 0.05 * sum(counts.values())
        ids = attribute_ids(attrs)
        assert set(ids["colour"]) == {COLOURS.index(colour)}


def test_recontextualisations_cover_every_position_size_and_visible_colour():
    ctx = recontextualisations("dotted_triangle")
    assert {v for a, v in ctx if a == "position"} == set(POSITIONS) and {v for a, v in ctx if a == "size"} == set(SIZES)
    # Yellow is the dot; orange is too close to it for the dot to show.
    assert {v for a, v in ctx if a == "colour"} == set(COLOURS) - {"yellow", "orange"}


def test_bad_arguments_raise_config_errors_naming_the_argument_and_choices():
    with pytest.raises(ConfigError, match="subject='stripy'.*striped_circle"):
        render_subject("stripy", 0, 2)
    with pytest.raises(ConfigError, match="colour='white'.*red"):
        render_subject("striped_circle", 0, 2, colour="white")             # its own stripes' colour
    with pytest.raises(ConfigError, match="position='middle'.*top left"):
        render_subject("striped_circle", 0, 2, position="middle")
    with pytest.raises(ConfigError, match="size='huge'"):
        render_subject("striped_circle", 0, 2, size=("small", "huge"))
    with pytest.raises(ConfigError, match="n must be"):
        render_subject("striped_circle", 0, 0)
    with pytest.raises(ConfigError, match="shape='oval'"):
        render_plain("oval", 0, 2)


def test_prompts():
    assert instance_prompt("v", "circle") == "a v circle" and class_prompt("circle") == "a circle"
    assert [subject_class(n) for n in SUBJECTS] == [s.shape for s in SUBJECTS.values()]
    assert subject_prompt("v", "circle", position="top left", size="small", colour="blue") == \
        "a small blue v circle in the top left"
    assert subject_prompt("v", "square", size="large") == "a large v square"


def test_rare_token_is_one_token_that_no_caption_uses():
    from mmdit_jax.models.text.tokenizer_assets import CLIP_DIR, TOY_CLIP_DIRS
    from mmdit_jax.models.text.tokenizers import PromptTokenizer

    for folder in (CLIP_DIR, TOY_CLIP_DIRS["clip_l"], TOY_CLIP_DIRS["clip_g"]):
        tok = PromptTokenizer(folder, "clip").tokenizer
        ids = tok(RARE_TOKEN, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, tok.convert_ids_to_tokens(ids)
        used = {i for row in tok(corpus(), add_special_tokens=False)["input_ids"] for i in row}
        assert ids[0] not in used
        assert ids[0] in tok(instance_prompt(RARE_TOKEN, "circle"), add_special_tokens=False)["input_ids"]
        assert RARE_TOKEN not in " ".join(corpus()).split()
