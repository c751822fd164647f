"""Tokenizers from local files (transformers' CLIPTokenizer / T5Tokenizer), called exactly as SD3 calls them.

Prompts are padded to ``max_length`` and truncated; a truncated prompt logs a warning naming the removed part.
The built-in offline default assets live in ``mmdit_jax/models/text/assets`` (see ``tokenizer_assets``).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from absl import logging

from mmdit_jax.models.text.tokenizer_assets import CLIP_DIR, T5_DIR
from mmdit_jax.checks import ConfigError, check_choice, check_positive_int

KINDS = ("clip", "t5")


class PromptTokenizer:
    """``tokenize(prompts) -> ids (B, max_length) int32`` for one encoder."""

    def __init__(self, folder: str, kind: str, max_length: int | None = None, pad_token: str | None = None):
        check_choice("tokenizer.kind", kind, KINDS)
        if not os.path.isdir(folder):
            raise ConfigError(f"tokenizer folder {folder!r} does not exist (no downloads: point to local files)")
        import transformers

        cls = transformers.CLIPTokenizer if kind == "clip" else transformers.T5Tokenizer
        kwargs = {"pad_token": pad_token} if pad_token else {}
        self.tokenizer = cls.from_pretrained(folder, local_files_only=True, **kwargs)
        self.kind = kind
        self.max_length = max_length or (77 if kind == "clip" else 256)
        self._truncated: set[str] = set()   # prompts already warned about: a run encodes its prompts many times
        check_positive_int("tokenizer.max_length", self.max_length)

    @classmethod
    def default(cls, kind: str, max_length: int | None = None) -> "PromptTokenizer":
        """The offline default built from the ``shapes`` caption corpus."""
        return cls(CLIP_DIR if kind == "clip" else T5_DIR, kind, max_length)

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True)["input_ids"]
        full = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        for prompt, prompt_ids, kept in zip(prompts, full, ids):
            if len(prompt_ids) > len(kept) and prompt not in self._truncated:
                self._truncated.add(prompt)
                removed = self.tokenizer.decode(prompt_ids[self.max_length - 1:-1])
                logging.warning("prompt truncated to %d %s tokens; removed: %r", self.max_length, self.kind, removed)
        return np.asarray(ids, np.int32)

    def count_tokens(self, prompt: str) -> int:
        """Number of tokens of ``prompt`` without special tokens (for prompt-length studies)."""
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
