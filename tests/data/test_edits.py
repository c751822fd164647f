"""Edit data on the shapes scenes: records consistent with their edits, phrasings split, builder, registry, render."""

import hashlib

import numpy as np
import pytest

from mmdit_jax.checks import ConfigError
from mmdit_jax.data.captions import POSITIONS, ShapeObject
from mmdit_jax.data.edits import (BACKGROUNDS, EDIT_TYPES, HELD_OUT, PHRASINGS, Edit, Scene, apply_edit, edit_chain,
                                  edit_example, instruction, object_ids, record_scenes, render_scene, sample_edit,
                                  sample_scene, scene_caption)
from mmdit_jax.data.pipeline import build_sources, example_transform
from mmdit_jax.data.registry import data_config, dataset_spec, validate_data_config
from mmdit_jax.data.shapes import example, render

FIELDS = {"recolour": "colour", "reshape": "shape", "resize": "size", "move": "position"}


def _edit_type(source: Scene, target: Scene) -> str:
    """The one edit turning ``source`` into ``target``, inferred from the scenes alone (fails on anything else)."""
    s, t = source.objects, target.objects
    if source.background != target.background:
        assert s == t
        return "background"
    if len(t) == len(s) + 1:
        assert t[:-1] == s and t[-1].position not in {o.position for o in s}
        return "add"
    if len(t) == len(s) - 1:
        assert any(s[:i] + s[i + 1:] == t for i in range(len(s)))
        return "remove"
    changed = [(i, f) for i, (a, b) in enumerate(zip(s, t)) for f in FIELDS.values() if getattr(a, f) != getattr(b, f)]
    assert len(changed) == 1, changed
    return {v: k for k, v in FIELDS.items()}[changed[0][1]]


def _valid(scene: Scene) -> None:
    assert 1 <= len(scene.objects) <= 3 and scene.background in BACKGROUNDS
    assert len({o.position for o in scene.objects}) == len(scene.objects)
    assert len({(o.colour, o.shape) for o in scene.objects}) == len(scene.objects)


def _records(n, stream=0, held_out=False):
    return [edit_example(i, stream, held_out=held_out) for i in range(n)]


def test_records_are_their_source_scene_with_one_valid_edit_applied():
    counts = dict.fromkeys(EDIT_TYPES, 0)
    for i, rec in enumerate(_records(400)):
        rng = np.random.default_rng([0, i])                   # the generator's own draws, repeated
        source = sample_scene(rng, 3)
        edit = sample_edit(rng, source)
        target = apply_edit(source, edit)
        np.testing.assert_array_equal(rec["source_objects"], object_ids(source))
        np.testing.assert_array_equal(rec["target_objects"], object_ids(target))
        assert record_scenes(rec) == (source, edit, target)
        assert EDIT_TYPES[rec["edit_type"]] == edit.type == _edit_type(source, target)
        _valid(source), _valid(target)
        np.testing.assert_array_equal(rec["source"], render_scene(source))
        np.testing.assert_array_equal(rec["image"], render_scene(target))
        assert rec["caption"] == instruction(source, edit, int(rec["phrasing"]))
        assert rec["source_caption"] == scene_caption(source) and rec["target_caption"] == scene_caption(target)
        cell = rec["edit_cell"]
        if edit.type == "background":
            assert cell == -1 and rec["edit_index"] == -1
        elif edit.type == "add":
            assert POSITIONS[cell] == target.objects[-1].position and rec["edit_index"] == -1
        else:
            assert POSITIONS[cell] == source.objects[rec["edit_index"]].position
        counts[edit.type] += 1
    assert min(counts.values()) >= 20, counts                  # every edit type occurs, none is rare


def test_examples_are_deterministic_and_splits_differ_only_in_phrasing():
    a, b = edit_example(7, 3), edit_example(7, 3)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(edit_example(8, 3)["source"], a["source"])
    held = edit_example(7, 3, held_out=True)
    np.testing.assert_array_equal(held["image"], a["image"])
    assert held["phrasing"] == HELD_OUT[EDIT_TYPES[a["edit_type"]]] != a["phrasing"]


def test_held_out_phrasings_are_disjoint_from_training_ones():
    train_templates = {t for kind, ps in PHRASINGS.items() for j, t in enumerate(ps) if j != HELD_OUT[kind]}
    assert all(len(ps) >= 4 for ps in PHRASINGS.values())
    assert not {PHRASINGS[k][HELD_OUT[k]] for k in PHRASINGS} & train_templates
    train = _records(200)
    test = _records(200, stream=1, held_out=True)
    assert all(r["phrasing"] != HELD_OUT[EDIT_TYPES[r["edit_type"]]] for r in train)
    assert all(r["phrasing"] == HELD_OUT[EDIT_TYPES[r["edit_type"]]] for r in test)
    assert not {r["caption"] for r in train} & {r["caption"] for r in test}
    assert {int(r["phrasing"]) for r in train} == set(range(4))
    for r in test:                                           # no training phrasing says the same thing
        source, edit, _ = record_scenes(r)
        texts = {instruction(source, edit, j) for j in range(HELD_OUT[edit.type])}
        assert r["caption"] not in texts


def test_instructions_and_captions_name_the_edit():
    scene = Scene((ShapeObject("circle", "red", "small", "top left"),
                   ShapeObject("square", "blue", "large", "center")), "navy")
    assert scene_caption(scene) == ("a small red circle in the top left and a large blue square in the center "
                                    "on a navy background")
    assert scene_caption(Scene(scene.objects[:1], "olive")).endswith("on an olive background")
    assert scene_caption(Scene(scene.objects[:1])) == "a small red circle in the top left"
    assert instruction(scene, Edit("recolour", 0, "green"), 2) == "change the colour of the red circle to green"
    assert instruction(scene, Edit("move", 1, "top right"), 0) == "move the blue square to the top right"
    assert instruction(scene, Edit("add", -1, ShapeObject("ring", "green", "small", "bottom left")), 0) == \
        "add a small green ring in the bottom left"
    assert instruction(scene, Edit("remove", 0), 0) == "remove the red circle"
    assert instruction(scene, Edit("background", -1, "grey"), 0) == "make the background grey"
    with pytest.raises(ConfigError, match="phrasing=9"):
        instruction(scene, Edit("remove", 0), 9)
    with pytest.raises(ConfigError, match="max_objects"):
        edit_example(0, 0, max_objects=4)
    with pytest.raises(ConfigError, match="edit.index=2"):
        instruction(scene, Edit("resize", 2, "large"), 0)
    with pytest.raises(ConfigError, match="edit.type='rotate'"):
        apply_edit(scene, Edit("rotate", 0, None))


def test_scenes_with_one_object_never_lose_it_and_full_scenes_never_grow():
    for i in range(200):
        rec = edit_example(i, 5, max_objects=1)
        assert EDIT_TYPES[rec["edit_type"]] not in ("remove", "add")
        assert (rec["target_objects"][:, 0] >= 0).sum() == 1


def test_edit_chains_apply_one_valid_edit_per_turn_and_extend_shorter_chains():
    start, turns = edit_chain(4, 12)
    scenes = [start["scene"]] + [s for _, s in turns]
    np.testing.assert_array_equal(start["image"], render_scene(start["scene"]))
    for before, (text, after) in zip(scenes, turns):
        _valid(after)
        kind = _edit_type(before, after)
        assert any(text == instruction(before, Edit(kind, i, v), HELD_OUT[kind])
                   for i in ([-1] if kind in ("add", "background") else range(len(before.objects)))
                   for v in _values(before, after, kind))
    assert edit_chain(4, 5)[1] == turns[:5]
    assert edit_chain(5, 5)[1] != turns[:5]


def _values(before: Scene, after: Scene, kind: str) -> list:
    if kind == "background":
        return [after.background]
    if kind == "add":
        return [after.objects[-1]]
    if kind == "remove":
        return [None]
    return [getattr(o, FIELDS[kind]) for o in after.objects]


def test_render_defaults_keep_the_shapes_data_bytes_and_crowded_keeps_other_objects_fixed():
    h = hashlib.sha256()
    for max_objects in (1, 3):
        for size in (16, 32):
            for i in range(200):
                h.update(example(i, 0, size, max_objects)["image"].tobytes())
    # The hash of these images as rendered before ``render`` took a background and a scale.
    assert h.hexdigest() == "670d739d0e096df76c29eef9b68d3b312d57d8196db55acc741563c2f7390663"
    a, b = ShapeObject("circle", "red", "large", "top left"), ShapeObject("cross", "white", "small", "bottom")
    alone, both = render((a,), crowded=True), render((a, b), crowded=True)
    np.testing.assert_array_equal(render((a, b)), both)                # several objects: crowded by default
    np.testing.assert_array_equal(alone[:16], both[:16])               # removing b leaves a's pixels as they were
    assert not np.array_equal(alone[16:], both[16:])
    assert not np.array_equal(render((a,)), alone)                     # one object: full scale by default
    np.testing.assert_array_equal(render((a, b), crowded=False)[:16, :16], render((a,))[:16, :16])
    navy = render((a,), background=BACKGROUNDS["navy"])
    assert tuple(navy[0, 0]) == BACKGROUNDS["navy"]


def test_builder_records_equal_the_generator_and_both_registered_views(tmp_path):
    cfg = data_config("shape_edits", num_train=64, num_test=16)
    validate_data_config(cfg)
    src = build_sources(cfg, str(tmp_path))
    assert len(src["train"]) == 64 and len(src["test"]) == 16
    for split, stream, held in (("train", 0, False), ("test", 1, True)):
        expected = {bytes(r["source"]) + r["caption"].encode(): r for r in _records(len(src[split]), stream, held)}
        for i in range(len(src[split])):
            rec = src[split][i]
            gen = expected.pop(bytes(rec["source"]) + rec["caption"])
            for k in gen:
                value = rec[k].decode() if isinstance(rec[k], bytes) else rec[k]
                np.testing.assert_array_equal(value, gen[k], err_msg=k)
        assert not expected
    scenes = build_sources(data_config("edit_scenes", num_train=64, num_test=16), str(tmp_path))
    assert len(scenes["train"]) == 64 and len(scenes["test"]) == 16
    rec, raw = scenes["train"][3], src["train"][3]
    assert set(rec) == {"image", "caption", "objects", "background"}
    assert rec["caption"] == raw["target_caption"]
    np.testing.assert_array_equal(rec["image"], raw["image"])
    np.testing.assert_array_equal(rec["objects"], raw["target_objects"])

    edits = example_transform(dataset_spec("shape_edits"), {raw["caption"].decode(): 0})(raw)
    assert set(edits) == {"x", "text_index", "cond/source"}
    np.testing.assert_allclose(edits["cond/source"], raw["source"] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(edits["x"], raw["image"] / 127.5 - 1.0, atol=1e-6)
    shapes = example_transform(dataset_spec("shapes"), None)({"image": raw["image"], "caption": b"x"})
    assert set(shapes) == {"x"}


def test_edit_data_sets_validate_their_options():
    for name in ("shape_edits", "edit_scenes"):
        validate_data_config(data_config(name))
        with pytest.raises(ConfigError, match=r"data.max_objects=4 .* choose 1..3"):
            validate_data_config(data_config(name, max_objects=4))
        with pytest.raises(ConfigError, match="data.num_train"):
            validate_data_config(data_config(name, num_train=0))
