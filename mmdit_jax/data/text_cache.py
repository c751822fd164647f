"""Frozen text encoders, encoded once: a caption -> (c, y_pooled) cache on disk.

Training reads embeddings instead of running CLIP/T5 every step. Entries are keyed by a fingerprint of the
encoders (configs, weights, tokenizer files), so changing any of them can never serve stale embeddings.
Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

EncodeFn = Callable[[Sequence[str]], tuple[Any, Any]]


def fingerprint(*objects: Any) -> str:
    """A short hash of configs (by repr) and array pytrees (by bytes) and file contents (paths to folders)."""
    h = hashlib.sha256()
    for obj in objects:
        if isinstance(obj, str) and os.path.isdir(obj):
            for name in sorted(os.listdir(obj)):
                with open(os.path.join(obj, name), "rb") as f:
                    h.update(name.encode() + f.read())
            continue
        leaves, treedef = jax.tree_util.tree_flatten(obj)
        h.update(repr(treedef).encode())
        for leaf in leaves:
            arr = np.asarray(leaf) if hasattr(leaf, "shape") else None
            h.update(arr.tobytes() if arr is not None else repr(leaf).encode())
    return h.hexdigest()[:16]


class TextEmbeddingCache:
    """``cache.encode(captions, encode_fn) -> (c: (N, T, d), y: (N, d_pool))`` with each distinct caption encoded once."""

    def __init__(self, directory: str, key: str):
        self.path = os.path.join(directory, f"text_embeddings_{key}.npz")
        os.makedirs(directory, exist_ok=True)
        self._captions: list[str] = []
        self._c: np.ndarray | None = None
        self._y: np.ndarray | None = None
        if os.path.exists(self.path):
            with np.load(self.path) as data:
                self._captions = json.loads(str(data["captions"]))
                self._c, self._y = data["c"], data["y"]

    def __len__(self) -> int:
        return len(self._captions)

    def encode(self, captions: Sequence[str], encode_fn: EncodeFn, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        index = {cap: i for i, cap in enumerate(self._captions)}
        missing = sorted({c for c in captions if c not in index})
        if missing:
            parts = [tuple(np.asarray(a) for a in encode_fn(missing[i:i + batch_size]))
                     for i in range(0, len(missing), batch_size)]
            new_c = np.concatenate([p[0] for p in parts])
            new_y = np.concatenate([p[1] for p in parts])
            self._c = new_c if self._c is None else np.concatenate([self._c, new_c])
            self._y = new_y if self._y is None else np.concatenate([self._y, new_y])
            for cap in missing:
                index[cap] = len(self._captions)
                self._captions.append(cap)
            self._save()
        rows = np.asarray([index[c] for c in captions], np.int64)
        return self._c[rows], self._y[rows]

    def _save(self) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp.npz"   # unique per process: several hosts may share the folder
        np.savez(tmp, captions=json.dumps(self._captions), c=self._c, y=self._y)
        os.replace(tmp, self.path)
