"""Built-in data: determinism, attributes, TFDS builders in ArrayRecord, grain pipeline state and sharding."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmdit_jax.data.captions import COLOURS, COLOUR_RGB, SHAPES, SIZES, TEMPLATES, corpus
from mmdit_jax.data.pipeline import build_sources, captions_of, example_transform, train_iterator
from mmdit_jax.data.registry import data_config, dataset_spec, validate_data_config
from mmdit_jax.data.shapes import example
from mmdit_jax.checks import ConfigError


def data_cfg(name="shapes", **kw):
    base = dict(image_size=32, num_train=64, num_test=16, max_objects=1, seed=0) if name == "shapes" else {}
    return data_config(name, **{**base, **kw})


def image_transform(index):
    return example_transform(dataset_spec("shapes"), index)


def test_shapes_examples_are_deterministic_and_match_their_attributes():
    a, b = example(5, seed=3), example(5, seed=3)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["caption"] == b["caption"]
    assert not np.array_equal(example(6, seed=3)["image"], a["image"])
    for i in range(30):
        e = example(i, seed=0)
        assert SHAPES[e["shape"]] in e["caption"] and COLOURS[e["colour"]] in e["caption"]
        if "{z}" in TEMPLATES[e["template"]]:
            assert SIZES[e["size"]] in e["caption"]
        # the brightest pixel has the object's colour
        pixels = e["image"].reshape(-1, 3).astype(int)
        top = pixels[np.argmax(pixels.sum(-1))]
        assert np.abs(top - np.asarray(COLOUR_RGB[COLOURS[e["colour"]]])).max() <= 1


def test_partial_captions_leave_colour_or_shape_unnamed_and_the_default_data_is_unchanged():
    from mmdit_jax.data.builders.shapes import shapes_config
    from mmdit_jax.data.captions import ALL_TEMPLATES
    from mmdit_jax.eval.attributes import parse_caption

    for i in range(20):                        # the default caption set draws exactly what it always drew
        full = example(i, seed=2, captions="full")
        assert full["caption"] == example(i, seed=2)["caption"] and full["template"] < len(TEMPLATES)
    seen = set()
    for i in range(300):
        e = example(i, seed=2, captions="partial")
        np.testing.assert_array_equal(e["image"], example(i, seed=2)["image"])    # same scenes, other words
        named = parse_caption(e["caption"])
        assert all(named[a] == e[a] for a in named), e["caption"]                  # every word true to the image
        t = ALL_TEMPLATES[e["template"]]
        assert set(named) == {a for a, f in (("shape", "{s}"), ("colour", "{c}"), ("size", "{z}"),
                                              ("position", "{p}")) if f in t}, e["caption"]
        seen.add(e["template"])
    assert {len(TEMPLATES), len(TEMPLATES) + 1} <= seen                           # both partial templates drawn
    assert shapes_config(captions="full").name == shapes_config().name == "s32_n20000_1000_o1_seed0"
    assert shapes_config(captions="partial").name.endswith("_partial")
    with pytest.raises(ConfigError, match=r"data.captions='some' is not valid; choose one of \['full', 'partial'\]"):
        validate_data_config(data_cfg(captions="some"))


def test_larger_size_attribute_covers_more_pixels():
    areas = {z: [] for z in SIZES}
    for i in range(300):
        e = example(i, seed=1)
        areas[SIZES[e["size"]]].append((e["image"].sum(-1) > 0).mean())
    assert np.mean(areas["small"]) < np.mean(areas["medium"]) < np.mean(areas["large"])


def test_shapes_builder_writes_array_record_and_reads_back(tmp_path):
    src = build_sources(data_cfg(), str(tmp_path))
    assert len(src["train"]) == 64 and len(src["test"]) == 16
    assert list(tmp_path.rglob("*.array_record*"))
    rec = src["train"][0]
    assert rec["image"].shape == (32, 32, 3) and rec["image"].dtype == np.uint8
    # the records are exactly the generator's examples (in some order)
    gen = {example(i, 0)["caption"] for i in range(64)}
    assert set(captions_of(src["train"])) == gen


def test_built_in_sources_are_held_decoded_in_memory_with_the_same_records(tmp_path):
    from mmdit_jax.data.pipeline import InMemorySource, in_memory

    src = build_sources(data_cfg(), str(tmp_path))["train"]
    assert isinstance(src, InMemorySource)
    disk = dataset_spec("shapes").builder(data_cfg(), str(tmp_path)).as_data_source()["train"]     # decodes every read
    assert len(src) == len(disk)
    for i in range(len(disk)):
        a, b = src[i], disk[i]
        assert a.keys() == b.keys()
        for k in a:
            assert type(a[k]) is type(b[k]), k
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    src[0]["image"][:] = 0                                  # a caller's edit must not reach the next read
    np.testing.assert_array_equal(src[0]["image"], disk[0]["image"])
    assert in_memory(disk, limit_bytes=1000) is disk        # too large for the limit: read from disk


def test_digits_and_toy2d_builders(tmp_path):
    digits = build_sources(data_cfg(name="digits", image_size=16), str(tmp_path))
    assert len(digits["train"]) + len(digits["test"]) == 1797
    rec = digits["train"][0]
    assert rec["image"].shape == (16, 16, 3) and b"handwritten digit" in rec["caption"]
    toy = build_sources(data_cfg(name="toy2d", num_train=2000, num_test=10), str(tmp_path))
    x = np.stack([toy["train"][i]["x"] for i in range(2000)])
    assert abs((x.sum(-1) > 0).mean() - 0.8) < 0.04


def test_any_tfds_dataset_by_name_with_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        src = build_sources(data_cfg(name="tfds", tfds_name="mnist"), str(tmp_path))
        rec = src["train"][3]
        assert rec["image"].shape == (32, 32, 3) and rec["caption"].startswith("a photo of")
    with pytest.raises(ConfigError, match="never downloads"):
        build_sources(data_cfg(name="tfds", tfds_name="mnist"), str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="data.name='imagenet'"):
        build_sources(ml_collections.ConfigDict({"name": "imagenet"}), str(tmp_path))


def test_each_data_set_validates_its_own_options():
    validate_data_config(data_cfg(name="toy2d"))
    with pytest.raises(ConfigError, match=r"data \(toy2d\) has unknown keys \['image_size'\]"):
        validate_data_config(data_cfg(name="toy2d", image_size=32))
    with pytest.raises(ConfigError, match="data.name='tfds' needs data.tfds_name"):
        validate_data_config(data_cfg(name="tfds"))
    with pytest.raises(ConfigError, match="data.num_train"):
        validate_data_config(data_cfg(num_train=0))
    with pytest.raises(ConfigError, match="data.num_workers"):
        validate_data_config(data_cfg(num_workers=-1))


def test_iterator_state_restores_the_exact_stream_and_processes_split_each_global_batch(tmp_path):
    src = build_sources(data_cfg(), str(tmp_path))["train"]
    index = {c: i for i, c in enumerate(sorted(set(captions_of(src))))}
    it = train_iterator(src, 8, 0, image_transform(index))
    for _ in range(9):                                 # cross an epoch boundary (64 / 8 = 8 batches)
        next(it)
    state = it.get_state()
    expected = [next(it)["text_index"] for _ in range(3)]
    fresh = train_iterator(src, 8, 0, image_transform(index))
    fresh.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(next(fresh)["text_index"], e)
    whole = train_iterator(src, 8, 0, image_transform(index))
    halves = [train_iterator(src, 8, 0, image_transform(index), process_index=p, process_count=2) for p in (0, 1)]
    for _ in range(10):
        glob = next(whole)
        parts = [next(h) for h in halves]
        np.testing.assert_array_equal(np.concatenate([p["x"] for p in parts]), glob["x"])
    epoch = [next(train_iterator(src, 64, 0, image_transform(index)))["text_index"]]
    assert len(set(epoch[0].tolist())) == len(set(index[c] for c in captions_of(src)))  # an epoch sees every example


def test_iterator_reads_only_a_few_batches_ahead():
    # grain's default read-ahead is 500 elements, here 500 *batches* (hundreds of MB of float images); the
    # iterator must stay within a few batches of what was consumed.
    import time

    class CountingSource:
        reads = 0

        def __len__(self):
            return 4096

        def __getitem__(self, i):
            CountingSource.reads += 1
            return {"image": np.zeros((2, 2, 3), np.uint8)}

    it = train_iterator(CountingSource(), 8, 0, lambda r: r)
    next(it)
    time.sleep(1.0)  # let any background read-ahead run
    assert 8 <= CountingSource.reads <= 8 * 8, CountingSource.reads


def test_worker_processes_give_the_same_stream_and_restore_from_state(tmp_path):
    src = build_sources(data_cfg(), str(tmp_path))["train"]
    index = {c: i for i, c in enumerate(sorted(set(captions_of(src))))}
    serial = train_iterator(src, 8, 0, image_transform(index))
    expected = [next(serial) for _ in range(12)]
    workers = train_iterator(src, 8, 0, image_transform(index), num_workers=2)
    for e in expected[:6]:
        got = next(workers)
        np.testing.assert_array_equal(got["text_index"], e["text_index"])
        np.testing.assert_array_equal(got["x"], e["x"])
    state = workers.get_state()
    resumed = train_iterator(src, 8, 0, image_transform(index), num_workers=2)
    resumed.set_state(state)
    for e in expected[6:]:
        np.testing.assert_array_equal(next(resumed)["text_index"], e["text_index"])


def test_caption_corpus_covers_every_attribute():
    text = " ".join(corpus())
    for word in SHAPES + COLOURS + SIZES:
        assert word in text
