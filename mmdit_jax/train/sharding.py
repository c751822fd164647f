"""Sharding rules. FSDP: each parameter is split along its largest axis divisible by the fsdp mesh size."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec as P


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, axis_name: str = "fsdp") -> P:
    """PartitionSpec sharding the largest axis of ``shape`` divisible by ``fsdp_size`` (replicated if none)."""
    candidates = [i for i, n in enumerate(shape) if n % fsdp_size == 0 and n >= fsdp_size]
    if fsdp_size == 1 or not candidates:
        return P()
    axis = max(candidates, key=lambda i: shape[i])
    return P(*[axis_name if i == axis else None for i in range(len(shape))])


def bytes_per_device(tree: Any, fsdp_size: int) -> int:
    """Bytes one device holds of an (abstract) pytree sharded by ``fsdp_spec``."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        spec = fsdp_spec(leaf.shape, fsdp_size)
        n = int(np.prod(leaf.shape)) // (fsdp_size if any(s is not None for s in spec) else 1)
        total += n * np.dtype(leaf.dtype).itemsize
    return total
