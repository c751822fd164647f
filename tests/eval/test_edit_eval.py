"""Edit evaluator: every attribute read back from renders (clean and noisy), edit scores on known outcomes."""

import dataclasses

import numpy as np
import pytest

from mmdit_jax.checks import ConfigError
from mmdit_jax.data.captions import COLOURS, POSITIONS, SHAPES, ShapeObject
from mmdit_jax.data.edits import (EDIT_TYPES, Edit, Scene, apply_edit, edit_chain, edit_example, record_scenes,
                                  render_scene, sample_scene)
from mmdit_jax.eval.edit import (attribute_accuracy, edit_region, edit_scores, edit_scores_batch, read_scene,
                                 scene_scores)


def _same(a: Scene, b: Scene) -> bool:
    def key(s: Scene) -> tuple:
        return s.background, sorted((POSITIONS.index(o.position), o) for o in s.objects)

    return key(a) == key(b)


def _noisy(images, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return [np.clip(np.round(im + rng.normal(0, sigma, im.shape)), 0, 255).astype(np.uint8) for im in images]


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(123)
    scenes = [sample_scene(rng, 3) for _ in range(400)]
    return scenes, [render_scene(s) for s in scenes]


@pytest.fixture(scope="module")
def records():
    return [edit_example(i, 9) for i in range(300)]


def test_every_attribute_of_fresh_renders_is_read(scenes):
    scenes, images = scenes
    assert all(_same(read_scene(im), s) for im, s in zip(images, scenes))
    assert attribute_accuracy(images, scenes) == 1.0


def test_reading_is_robust_to_pixel_noise(scenes):
    scenes, images = scenes
    # Measured on these 400 scenes: 1.0 at sigma 8 and 16, 0.9996 at 24 and 32, 0.986 at 48, 0.93 at 64 (of 255).
    assert attribute_accuracy(_noisy(images, 8), scenes) >= 0.998
    assert attribute_accuracy(_noisy(images, 32), scenes) >= 0.99
    assert attribute_accuracy(_noisy(images, 96), scenes) < 0.99       # the bound above is not vacuous


def test_the_true_target_scores_perfectly_and_the_unedited_source_fails(records):
    assert {EDIT_TYPES[r["edit_type"]] for r in records} == set(EDIT_TYPES)
    for r in records:
        assert edit_scores(r["image"], r) == {"success": 1.0, "preservation": 1.0, "exact": 1.0,
                                              "pixel_deviation": 0.0}
        unedited = edit_scores(r["source"], r)
        assert unedited["success"] == 0.0 and unedited["exact"] == 0.0, EDIT_TYPES[r["edit_type"]]
        assert unedited["preservation"] == 1.0 and unedited["pixel_deviation"] == 0.0


def _other_value(source: Scene, edit: Edit) -> str | None:
    """A value of the edited attribute that is neither the old nor the instructed one (pairs kept unique)."""
    obj = source.objects[edit.index]
    pairs = {(o.colour, o.shape) for i, o in enumerate(source.objects) if i != edit.index}
    field = {"recolour": "colour", "reshape": "shape", "resize": "size"}[edit.type]
    options = {"colour": COLOURS, "shape": SHAPES, "size": ("small", "medium", "large")}[field]
    for v in options:
        new = dataclasses.replace(obj, **{field: v})
        if v not in (getattr(obj, field), edit.value) and (new.colour, new.shape) not in pairs:
            return v
    return None


def test_a_wrong_value_fails_the_edit_but_preserves_the_rest(records):
    tried = 0
    for r in records:
        source, edit, _ = record_scenes(r)
        if edit.type not in ("recolour", "reshape", "resize"):
            continue
        wrong = apply_edit(source, dataclasses.replace(edit, value=_other_value(source, edit)))
        scores = edit_scores(render_scene(wrong), r)
        assert scores["success"] == 0.0 and scores["preservation"] == 1.0 and scores["exact"] == 0.0
        tried += 1
    assert tried >= 60


def test_an_extra_object_or_a_changed_bystander_lowers_preservation(records):
    for r in records[:60]:
        source, edit, target = record_scenes(r)
        free = [p for p in POSITIONS if p not in {o.position for o in source.objects + target.objects}]
        extra = Scene(target.objects + (ShapeObject("cross", "white", "large", free[0]),), target.background)
        scores = edit_scores(render_scene(extra), r)
        assert scores["success"] == 1.0 and scores["exact"] == 0.0 and scores["preservation"] < 1.0
        # a background edit's deviation is measured on the objects only, which the extra one leaves alone
        assert (scores["pixel_deviation"] > 0) == (edit.type != "background")
        bystanders = [i for i in range(len(target.objects)) if edit.type in ("add", "background") or i != edit.index]
        if edit.type != "remove" and bystanders:     # after a remove the target's indices have shifted
            i = bystanders[0]
            o = target.objects[i]
            moved = dataclasses.replace(o, size="large" if o.size != "large" else "small")
            changed = Scene(target.objects[:i] + (moved,) + target.objects[i + 1:], target.background)
            assert edit_scores(render_scene(changed), r)["preservation"] < 1.0


def test_pixel_deviation_is_measured_outside_the_edit_region_only(records):
    for r in records[:80]:
        kind = EDIT_TYPES[r["edit_type"]]
        region = edit_region(r["source"], r["image"], kind == "background")
        changed = r["image"].copy()
        changed[region] = 255 - changed[region]          # anything inside the region is not counted
        assert edit_scores(changed, r)["pixel_deviation"] == 0.0
        if kind != "background":
            # one pixel outside the region, all channels off by 255: deviation 1 / (number of pixels outside)
            ys, xs = np.nonzero(~region)
            changed[ys[0], xs[0]] = 255 - changed[ys[0], xs[0]]
            dev = edit_scores(changed, r)["pixel_deviation"]
            assert dev == pytest.approx(np.abs(255 - 2 * r["source"][ys[0], xs[0]].astype(float)).mean() / 255
                                        / (~region).sum())
        else:
            assert not region.all() or np.isnan(edit_scores(changed, r)["pixel_deviation"])


def test_batch_means_and_per_type_breakdown(records):
    out = edit_scores_batch(np.stack([r["image"] for r in records]), records)
    assert out["success"] == out["exact"] == out["preservation"] == 1.0 and out["pixel_deviation"] == 0.0
    assert sum(out[f"{k}/count"] for k in EDIT_TYPES) == len(records)
    sources = edit_scores_batch(np.stack([r["source"] for r in records]), records)
    assert all(sources[f"{k}/success"] == 0.0 for k in EDIT_TYPES)
    with pytest.raises(ConfigError, match="as many records as images"):
        edit_scores_batch(np.stack([r["image"] for r in records[:3]]), records[:2])


def test_multi_turn_drift_scores_against_the_expected_scene():
    _, turns = edit_chain(1, 6)
    for _, scene in turns:
        assert scene_scores(render_scene(scene), scene) == {"attributes": 1.0, "exact": 1.0, "pixel_deviation": 0.0}
    last = turns[-1][1]
    drifted = scene_scores(render_scene(turns[0][1]), last)
    assert drifted["attributes"] < 1.0 and drifted["exact"] == 0.0 and drifted["pixel_deviation"] > 0
    wrong_bg = scene_scores(render_scene(dataclasses.replace(last, background="grey" if last.background != "grey"
                                                              else "navy")), last)
    assert wrong_bg["exact"] == 0.0 and wrong_bg["attributes"] == pytest.approx(1 - 1 / (4 * len(last.objects) + 2))


def test_reader_rejects_images_it_cannot_read():
    with pytest.raises(ConfigError, match=r"shape \(S, S, 3\)"):
        read_scene(np.zeros((32, 32), np.uint8))
    with pytest.raises(ConfigError, match="image size 34 lets neighbouring objects share pixels"):
        read_scene(np.zeros((34, 34, 3), np.uint8))
    assert read_scene(np.zeros((48, 48, 3), np.uint8)) == Scene((), "black")
