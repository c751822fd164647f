"""Tokenizers: ids equal transformers' tokenizers called as diffusers' SD3 pipeline calls them; the offline
assets rebuild identically from the caption corpus."""

import filecmp
import logging as pylogging
import os

import numpy as np
import pytest
import transformers

from mmdit_jax.checks import ConfigError
from mmdit_jax.models.text.tokenizer_assets import ASSETS, CLIP_DIR, T5_DIR, build_all
from mmdit_jax.models.text.tokenizers import PromptTokenizer

PROMPTS = ["", "a red circle", "A Large BLUE square, in the top-left corner!!!", "café déjà vu — naïve façade",
           "a green star 🌟 and a 🐱 cat", "  spaces\tand\nnewlines  ", "it's the cat's toy; isn't it?",
           " ".join(["a small purple ring in the bottom right"] * 20)]


def reference_ids(tok, prompts, max_length):
    return tok(prompts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
               return_tensors="np")["input_ids"]


@pytest.mark.parametrize("kind, folder, cls, max_length", [
    ("clip", CLIP_DIR, transformers.CLIPTokenizer, 77), ("t5", T5_DIR, transformers.T5Tokenizer, 256)])
def test_ids_equal_transformers(kind, folder, cls, max_length):
    ours = PromptTokenizer.default(kind)(PROMPTS)
    ref = reference_ids(cls.from_pretrained(folder), PROMPTS, max_length)
    np.testing.assert_array_equal(ours, ref)
    assert ours.shape == (len(PROMPTS), max_length)


def test_clip_layout_and_special_tokens():
    tok = PromptTokenizer.default("clip")
    ids = tok(["", "a red circle"])
    vocab = tok.tokenizer.get_vocab()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    assert ids[0, 0] == bos and ids[0, 1] == eos and np.all(ids[0, 2:] == eos)    # empty string: BOS EOS pad...
    assert ids[1, 0] == bos and ids[1, 1 + tok.count_tokens("a red circle")] == eos
    t5 = PromptTokenizer.default("t5")(["a red circle"])
    assert t5[0, np.argmax(t5[0] == 1)] == 1 and t5[0, -1] == 0                     # EOS then pad 0


def test_long_prompt_is_truncated_with_a_warning(caplog):
    tok = PromptTokenizer.default("clip")
    from absl import logging as absl_logging
    absl_logging.get_absl_logger().propagate = True
    with caplog.at_level(pylogging.WARNING):
        ids = tok([PROMPTS[-1]])
    assert ids.shape == (1, 77) and ids[0, -1] == tok.tokenizer.get_vocab()["<|endoftext|>"]
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(pylogging.WARNING):   # a run encodes its prompts many times: one warning per prompt
        tok([PROMPTS[-1], PROMPTS[-1]])
    assert not any("truncated" in r.getMessage() for r in caplog.records)


def test_assets_rebuild_identically(tmp_path):
    build_all(str(tmp_path))
    for sub in ("clip", "t5"):
        ref = os.path.join(ASSETS, sub)
        names = sorted(os.listdir(ref))
        assert names == sorted(os.listdir(tmp_path / sub))
        match, mismatch, errors = filecmp.cmpfiles(ref, tmp_path / sub, names, shallow=False)
        assert not mismatch and not errors


def test_missing_tokenizer_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        PromptTokenizer(str(tmp_path / "nope"), "clip")
    with pytest.raises(ConfigError, match="tokenizer.kind"):
        PromptTokenizer(CLIP_DIR, "bert")
