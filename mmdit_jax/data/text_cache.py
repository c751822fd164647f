"""Frozen text encoders, encoded once: a caption -> named embeddings cache on disk (whatever entries the run's
text stack yields, e.g. SD3's ``context (T, d)`` and ``pooled (d_pool,)``, or a T5-only stack's ``context``).

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

EncodeFn = Callable[[Sequence[str]], dict[str, Any]]


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
    """``cache.encode(captions, encode_fn) -> {entry: (N, ...)}`` with each distinct caption encoded once;
    ``encode_fn(captions) -> {entry: (n, ...)}``."""

    def __init__(self, directory: str, key: str):
        self.path = os.path.join(directory, f"text_embeddings_{key}.npz")
        os.makedirs(directory, exist_ok=True)
        self._captions: list[str] = []
        self._entries: dict[str, np.ndarray] = {}
        if os.path.exists(self.path):
            with np.load(self.path) as data:
                self._captions = json.loads(str(data["captions"]))
                if "entries" in data:
                    names = json.loads(str(data["entries"]))
                    self._entries = {name: data[f"entry_{i}"] for i, name in enumerate(names)}
                else:     # the SD3 stack's two entries, as caches written before named entries hold them
                    self._entries = {"context": data["c"], "pooled": data["y"]}

    def __len__(self) -> int:
        return len(self._captions)

    def encode(self, captions: Sequence[str], encode_fn: EncodeFn, batch_size: int = 64) -> dict[str, np.ndarray]:
        index = {cap: i for i, cap in enumerate(self._captions)}
        missing = sorted({c for c in captions if c not in index})
        if missing:
            parts = [{k: np.asarray(v) for k, v in encode_fn(missing[i:i + batch_size]).items()}
                     for i in range(0, len(missing), batch_size)]
            new = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            if self._entries and set(new) != set(self._entries):
                raise ValueError(f"the encoder yields entries {sorted(new)}, the cache holds {sorted(self._entries)}")
            self._entries = {k: v if k not in self._entries else np.concatenate([self._entries[k], v])
                             for k, v in new.items()}
            for cap in missing:
                index[cap] = len(self._captions)
                self._captions.append(cap)
            self._save()
        rows = np.asarray([index[c] for c in captions], np.int64)
        return {k: v[rows] for k, v in self._entries.items()}

    def _save(self) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp.npz"   # unique per process: several hosts may share the folder
        names = sorted(self._entries)
        np.savez(tmp, captions=json.dumps(self._captions), entries=json.dumps(names),
                 **{f"entry_{i}": self._entries[name] for i, name in enumerate(names)})
        os.replace(tmp, self.path)
