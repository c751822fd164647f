"""Moving-shapes clips: determinism, centres as drawn, no bounce within a clip, wall reflection, captions, builder;
the ``bounce`` option (clips of any length that bounce after their first half, captioned as bouncing)."""

import itertools

import numpy as np
import pytest

from mmdit_jax.checks import ConfigError
from mmdit_jax.data.builders.moving_shapes import moving_shapes_config
from mmdit_jax.data.captions import COLOURS, SHAPES, SIZES
from mmdit_jax.data.motion import (BOUNCE_TEMPLATES, DIRECTION_PHRASES, DIRECTION_VECTORS, DIRECTIONS,
                                   MOTION_TEMPLATES, SPEEDS, Motion, check_fits, clip_strip, first_half_steps,
                                   motion_caption, motion_example, motion_radius, parse_motion, render_clip,
                                   speed_pixels, track)
from mmdit_jax.data.pipeline import build_sources, example_transform
from mmdit_jax.data.registry import data_config, validate_data_config
from mmdit_jax.eval.motion import motion_accuracy


def _records(n, stream=0, image_size=32, num_frames=8, bounce=False):
    return [motion_example(i, stream, image_size, num_frames, bounce) for i in range(n)]


def _step(record, image_size):
    """The record's ``(dy, dx)`` step per frame before any bounce."""
    return np.asarray(DIRECTION_VECTORS[DIRECTIONS[record["direction"]]]) * speed_pixels(SPEEDS[record["speed"]],
                                                                                           image_size)


def _centroid_offset(record):
    # The triangle (apex up at -r, base at +0.8 r, half-width r at the base) has its centroid 0.2 r below the
    # centre; every other shape is symmetric about it.
    return np.array([0.2 * record["radius"], 0.0]) if SHAPES[record["shape"]] == "triangle" else 0.0


def _centroids(video):
    """``(T, 2)`` intensity centroids of clips on black, pixel i covering [i, i + 1)."""
    w = video.astype(np.float64).sum(-1)
    coords = np.arange(w.shape[1]) + 0.5
    mass = w.sum((1, 2))
    return np.stack([(w.sum(2) * coords).sum(1) / mass, (w.sum(1) * coords).sum(1) / mass], -1)


def test_examples_are_deterministic_and_differ_by_index_and_stream():
    a, b = motion_example(7, 3), motion_example(7, 3)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["video"].shape == (8, 32, 32, 3) and a["video"].dtype == np.uint8
    assert a["centres"].shape == (8, 2) and a["centres"].dtype == np.float32
    assert not np.array_equal(motion_example(8, 3)["video"], a["video"])
    assert not np.array_equal(motion_example(7, 4)["video"], a["video"])


def test_frames_are_drawn_at_the_stored_centres():
    for r in _records(100):
        np.testing.assert_allclose(_centroids(r["video"]), r["centres"] + _centroid_offset(r), atol=0.1)
        np.testing.assert_allclose(r["radius"], motion_radius(SIZES[r["size"]], 32), rtol=1e-6)


@pytest.mark.parametrize("image_size, num_frames", [(32, 8), (32, 9), (16, 8), (48, 6)])
def test_no_clip_of_the_data_bounces(image_size, num_frames):
    records = _records(120, 1, image_size, num_frames)
    for r in records:
        step = _step(r, image_size)
        steps = np.diff(r["centres"].astype(np.float64), axis=0)
        np.testing.assert_allclose(steps, np.broadcast_to(step, steps.shape), atol=1e-4)
        assert r["centres"].min() >= r["radius"] - 1e-4 and r["centres"].max() <= image_size - r["radius"] + 1e-4
    assert {int(r["direction"]) for r in records} == set(range(len(DIRECTIONS)))
    assert {int(r["speed"]) for r in records} == set(range(len(SPEEDS)))


def test_track_reflects_off_the_walls():
    # small at 32 px: radius 0.11 * 32 + 0.5 = 4.02, walls at 4.02 and 27.98; quickly = 2 px / frame
    right = Motion("circle", "red", "small", "right", "quickly", (16.0, 24.0))
    np.testing.assert_allclose(track(right, 5, 32), [[16, 24], [16, 26], [16, 27.96], [16, 25.96], [16, 23.96]])
    # large: radius 7.54, walls at 7.54 and 24.46; slowly = 1 px / frame
    left = Motion("square", "blue", "large", "left", "slowly", (10.0, 20.0))
    np.testing.assert_allclose(track(left, 6, 32), [[10, x] for x in (20, 19, 18, 17, 16, 15)])
    np.testing.assert_allclose(track(left, 16, 32)[10:, 1], [10, 9, 8, 8.08, 9.08, 10.08])
    long = track(Motion("ring", "green", "medium", "down", "quickly", (6.0, 6.0)), 200, 32)
    r = motion_radius("medium", 32)
    assert long.min() >= r - 1e-9 and long.max() <= 32 - r + 1e-9
    assert np.isclose(long[:, 0].min(), r, atol=2.0) and np.isclose(long[:, 0].max(), 32 - r, atol=2.0)
    np.testing.assert_array_equal(track(right, 3, 32), track(right, 5, 32)[:3])     # longer clips extend shorter
    clip = render_clip(right, 5, 32)
    np.testing.assert_allclose(_centroids(clip), track(right, 5, 32), atol=0.1)
    assert clip[:, :, -1].max() > 0                                             # reaches the wall, stays inside


def test_captions_name_the_object_and_its_motion():
    seen = set()
    for r in _records(300):
        text, template = r["caption"], MOTION_TEMPLATES[r["template"]]
        words = text.split()
        assert SHAPES[r["shape"]] in words and COLOURS[r["colour"]] in words
        assert DIRECTIONS[r["direction"]] in words and SPEEDS[r["speed"]] in words
        assert (SIZES[r["size"]] in words) == ("{z}" in template)
        assert parse_motion(text) == {"direction": r["direction"], "speed": r["speed"]}
        seen.add(int(r["template"]))
    assert seen == set(range(len(MOTION_TEMPLATES)))
    m = Motion("ring", "green", "small", "left", "slowly", (16.0, 16.0))
    assert motion_caption(m, 2) == "a green ring drifting slowly to the left"
    assert motion_caption(Motion("square", "blue", "small", "up", "quickly", (0, 0)), 3) == \
        "a small blue square moving up quickly"
    with pytest.raises(ConfigError, match="template=9"):
        motion_caption(m, 9)


def test_builder_records_equal_the_generator_and_the_registry_entry(tmp_path):
    cfg = data_config("moving_shapes", num_train=12, num_test=4, seed=2)
    spec = validate_data_config(cfg)
    assert spec.example_shape(cfg) == (8, 32, 32, 3)
    src = build_sources(cfg, str(tmp_path))
    assert len(src["train"]) == 12 and len(src["test"]) == 4
    for split, stream in (("train", 4), ("test", 5)):
        expected = {r["caption"] + str(r["centres"][0]): r for r in _records(len(src[split]), stream)}
        for i in range(len(src[split])):
            rec = src[split][i]
            gen = expected.pop(rec["caption"].decode() + str(rec["centres"][0]))
            assert rec.keys() == gen.keys()
            for k in gen:
                value = rec[k].decode() if isinstance(rec[k], bytes) else rec[k]
                np.testing.assert_array_equal(value, gen[k], err_msg=k)
        assert not expected
    rec = src["train"][0]
    x = example_transform(spec, {rec["caption"].decode(): 0})(rec)
    assert x["x"].shape == (8, 32, 32, 3) and x["x"].dtype == np.float32
    np.testing.assert_allclose(x["x"], rec["video"] / 127.5 - 1.0, atol=1e-6)
    picture = spec.render(np.stack([x["x"]] * 3), 3)
    assert picture.shape == (3 * 33 + 1, 8 * 33 + 1, 3) and picture.dtype == np.uint8
    panel = picture[1 + 33:1 + 33 + 32, 1 + 2 * 33:1 + 2 * 33 + 32].astype(int)   # clip 1, frame 2
    np.testing.assert_allclose(panel, rec["video"][2], atol=1)                     # to_grid truncates
    with pytest.raises(ConfigError, match="N, T, S, S, 3"):
        clip_strip(np.zeros((2, 32, 32, 3)))


def test_bad_configs_name_the_field():
    with pytest.raises(ConfigError, match=r"data.num_frames=10 does not fit data.image_size=32.*num_frames <= 9"):
        validate_data_config(data_config("moving_shapes", num_frames=10))
    with pytest.raises(ConfigError, match=r"data.num_frames=8 does not fit data.image_size=8"):
        validate_data_config(data_config("moving_shapes", image_size=8))
    for field in ("image_size", "num_frames", "num_train", "num_test"):
        with pytest.raises(ConfigError, match=f"data.{field} must be an integer >= 1"):
            validate_data_config(data_config("moving_shapes", **{field: 0}))
    with pytest.raises(ConfigError, match="num_frames=12 does not fit image_size=32"):
        motion_example(0, 0, 32, 12)
    check_fits(32, 9)
    with pytest.raises(ConfigError, match="direction='sideways'"):
        track(Motion("circle", "red", "small", "sideways", "slowly", (16.0, 16.0)), 4, 32)


def test_records_without_bounce_are_those_made_before_the_option():
    # values of records generated before the bounce option existed: the default data did not change
    expected = [("orange ring moving slowly to the left", (5.963113784790039, 23.810598373413086), 229448),
                ("a video of a large cyan diamond that moves slowly up", (24.02861785888672, 8.531768798828125),
                 426480),
                ("a small red ring sliding slowly to the left across a black background",
                 (7.496601581573486, 12.975805282592773), 87664)]
    for i, (caption, start, mass) in enumerate(expected):
        r = motion_example(i, 0)
        assert r["caption"] == caption
        np.testing.assert_array_equal(r["centres"][0], np.float32(start))
        assert abs(int(r["video"].astype(np.int64).sum()) - mass) <= 8     # a few rounding flips at most
        explicit = motion_example(i, 0, 32, 8, bounce=False)
        for k in r:
            np.testing.assert_array_equal(explicit[k], r[k], err_msg=k)


@pytest.mark.parametrize("image_size", [32, 64])
def test_bounce_clips_are_valid_bounce_after_their_first_half_and_read_right(image_size):
    records = _records(120 if image_size == 32 else 48, 1, image_size, 16, bounce=True)
    half = first_half_steps(16)
    bounced = 0
    for r in records:
        assert r["video"].shape == (16, image_size, image_size, 3) and r["centres"].shape == (16, 2)
        c = r["centres"].astype(np.float64)
        assert c.min() >= r["radius"] - 1e-4 and c.max() <= image_size - r["radius"] + 1e-4
        np.testing.assert_allclose(_centroids(r["video"]), c + _centroid_offset(r), atol=0.1)
        motion = Motion(SHAPES[r["shape"]], COLOURS[r["colour"]], SIZES[r["size"]], DIRECTIONS[r["direction"]],
                        SPEEDS[r["speed"]], (c[0, 0], c[0, 1]))
        np.testing.assert_allclose(c, track(motion, 16, image_size), atol=1e-4)       # the walls' billiard path
        steps, step = np.diff(c, axis=0), _step(r, image_size)
        np.testing.assert_allclose(steps[:half], np.broadcast_to(step, (half, 2)), atol=1e-4)   # no early bounce
        bounced += not np.allclose(steps, step, atol=1e-4)
    assert bounced >= 0.6 * len(records)                      # about 0.8 of 16-frame clips bounce
    assert {int(r["direction"]) for r in records} == set(range(len(DIRECTIONS)))
    assert {int(r["speed"]) for r in records} == set(range(len(SPEEDS)))
    videos = np.stack([r["video"] for r in records])
    accuracy = motion_accuracy(videos, [r["direction"] for r in records], [r["speed"] for r in records])
    assert accuracy == {"direction": 1.0, "speed": 1.0, "both": 1.0}


def test_bounce_draws_the_same_object_and_motion_as_without():
    for i in range(30):
        a, b = motion_example(i, 3, 32, 8), motion_example(i, 3, 32, 8, bounce=True)
        for k in ("shape", "colour", "size", "direction", "speed", "template", "radius"):
            assert a[k] == b[k], k


def test_long_bounce_clips_stay_inside_and_start_at_the_back_wall():
    # 40 frames at 32 px: the first half's 20 quick steps (40 px) exceed every size's room between the walls
    for r in _records(40, 2, 32, 40, bounce=True):
        c, radius = r["centres"].astype(np.float64), float(r["radius"])
        assert c.min() >= radius - 1e-4 and c.max() <= 32 - radius + 1e-4
        if SPEEDS[r["speed"]] == "quickly":
            dy, dx = DIRECTION_VECTORS[DIRECTIONS[r["direction"]]]
            axis, sign = (0, dy) if dy else (1, dx)
            np.testing.assert_allclose(c[0, axis], radius if sign > 0 else 32 - radius, atol=1e-4)


def test_bounce_captions_say_bouncing_and_name_the_initial_motion():
    assert len(BOUNCE_TEMPLATES) == len(MOTION_TEMPLATES)
    seen = set()
    for r in _records(200, 0, 32, 16, bounce=True):
        text, template = r["caption"], BOUNCE_TEMPLATES[r["template"]]
        words = text.split()
        assert "bouncing" in words
        assert SHAPES[r["shape"]] in words and COLOURS[r["colour"]] in words
        assert (SIZES[r["size"]] in words) == ("{z}" in template)
        assert parse_motion(text) == {"direction": r["direction"], "speed": r["speed"]}
        seen.add(int(r["template"]))
    assert seen == set(range(len(BOUNCE_TEMPLATES)))
    right = Motion("circle", "red", "small", "right", "quickly", (16.0, 16.0))
    assert motion_caption(right, 1, bounce=True) == "a red circle bouncing quickly to the right"
    assert motion_caption(right, 1) == "a red circle moving quickly to the right"
    with pytest.raises(ConfigError, match="template=7"):
        motion_caption(right, 7, bounce=True)


def test_bounce_captions_fit_the_video_configs_clip_context():
    from configs.video import get_config
    from mmdit_jax.models.text.tokenizer_assets import TOY_CLIP_DIRS
    from mmdit_jax.models.text.tokenizers import PromptTokenizer

    limit = get_config("joint").text.clip_l.max_length
    tok = PromptTokenizer(TOY_CLIP_DIRS["clip_l"], "clip", limit)
    longest = max(tok.count_tokens(t.format(c=c, s=s, z=z, v=v, d=d))
                  for t in BOUNCE_TEMPLATES[-3:]
                  for c, s, z, v, d in itertools.product(COLOURS, SHAPES, SIZES, SPEEDS, DIRECTION_PHRASES.values()))
    assert longest + 2 <= limit                              # + the start and end tokens


def test_bounce_config_validates_names_its_folder_and_builds(tmp_path):
    with pytest.raises(ConfigError, match="data.num_frames=16 does not fit.*or data.bounce=True"):
        validate_data_config(data_config("moving_shapes", num_frames=16))
    cfg = data_config("moving_shapes", num_frames=16, image_size=64, bounce=True)
    assert validate_data_config(cfg).example_shape(cfg) == (16, 64, 64, 3)
    with pytest.raises(ConfigError, match="data.bounce must be True or False"):
        validate_data_config(data_config("moving_shapes", bounce=1))
    assert moving_shapes_config().name == "s32_t8_n10000_1000_seed0"
    assert moving_shapes_config(bounce=True).name == "s32_t8_n10000_1000_seed0_bounce"
    cfg = data_config("moving_shapes", num_frames=12, num_train=3, num_test=2, seed=1, bounce=True)
    src = build_sources(cfg, str(tmp_path))
    for split, stream in (("train", 2), ("test", 3)):
        expected = {r["caption"] + str(r["centres"][0]): r for r in _records(len(src[split]), stream, 32, 12, True)}
        for i in range(len(src[split])):
            rec = src[split][i]
            gen = expected.pop(rec["caption"].decode() + str(rec["centres"][0]))
            np.testing.assert_array_equal(rec["video"], gen["video"])
            np.testing.assert_array_equal(rec["centres"], gen["centres"])
        assert not expected
