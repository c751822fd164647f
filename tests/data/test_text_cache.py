"""The text-embedding cache encodes each caption once, survives a restart, and never serves stale entries."""

import numpy as np

from mmdit_jax.data.text_cache import TextEmbeddingCache, fingerprint


def make_encoder(calls):
    def encode(captions):
        calls.append(list(captions))
        c = np.stack([np.full((3, 4), len(s), np.float32) for s in captions])
        y = np.stack([np.arange(2, dtype=np.float32) + len(s) for s in captions])
        return {"context": c, "pooled": y}
    return encode


def test_each_caption_is_encoded_once_and_reloaded_from_disk(tmp_path):
    calls = []
    caps = ["a red circle", "a blue square", "a red circle", "x"]
    cache = TextEmbeddingCache(str(tmp_path), "k1")
    out = cache.encode(caps, make_encoder(calls), batch_size=2)
    c, y = out["context"], out["pooled"]
    assert sorted(sum(calls, [])) == sorted(set(caps)) and len(calls) == 2
    np.testing.assert_array_equal(c[0], c[2])
    np.testing.assert_array_equal(c[1], np.full((3, 4), len("a blue square")))
    again = TextEmbeddingCache(str(tmp_path), "k1")      # a new process would see the file
    assert len(again) == 3
    out2 = again.encode(caps[::-1], make_encoder(calls))
    c2, y2 = out2["context"], out2["pooled"]
    assert len(calls) == 2                                # nothing re-encoded
    np.testing.assert_array_equal(c2, c[::-1])
    np.testing.assert_array_equal(y2, y[::-1])


def test_fingerprint_changes_with_weights_and_configs(tmp_path):
    a = fingerprint({"w": np.zeros(3)}, "cfg-1")
    assert a == fingerprint({"w": np.zeros(3)}, "cfg-1")
    assert a != fingerprint({"w": np.ones(3)}, "cfg-1")
    assert a != fingerprint({"w": np.zeros(3)}, "cfg-2")
    calls = []
    TextEmbeddingCache(str(tmp_path), a).encode(["q"], make_encoder(calls))
    TextEmbeddingCache(str(tmp_path), fingerprint({"w": np.ones(3)}, "cfg-1")).encode(["q"], make_encoder(calls))
    assert len(calls) == 2


def test_any_named_entries_are_cached(tmp_path):
    """A text stack with its own entries (here one ``context`` only) is cached the same way."""
    calls = []

    def encode(captions):
        calls.append(list(captions))
        return {"context": np.stack([np.full((2, 3), len(s), np.float32) for s in captions])}

    cache = TextEmbeddingCache(str(tmp_path), "t5only")
    out = cache.encode(["ab", "abc", "ab"], encode)
    assert list(out) == ["context"] and out["context"].shape == (3, 2, 3)
    np.testing.assert_array_equal(out["context"][:, 0, 0], [2, 3, 2])
    again = TextEmbeddingCache(str(tmp_path), "t5only").encode(["abc"], encode)
    assert len(calls) == 1 and again["context"][0, 0, 0] == 3
