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


def make_mesh(data: int, fsdp: int, devices: Any = None) -> "jax.sharding.Mesh":
    """A ``(data, fsdp)`` mesh over all devices; ``-1`` fills an axis with the remaining devices."""
    from mmdit_jax.checks import ConfigError

    devices = np.asarray(devices if devices is not None else jax.devices())
    n = devices.size
    if data == -1 and fsdp == -1:
        raise ConfigError("mesh.data and mesh.fsdp cannot both be -1")
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n:
        raise ConfigError(f"mesh.data * mesh.fsdp = {data} * {fsdp} must equal the device count {n}")
    return jax.sharding.Mesh(devices.reshape(data, fsdp), ("data", "fsdp"))


def state_shardings(abstract_tree: Any, mesh: "jax.sharding.Mesh") -> Any:
    """NamedShardings for a pytree: FSDP over the ``fsdp`` axis, replicated over ``data``."""
    size = mesh.shape["fsdp"]
    return jax.tree_util.tree_map(
        lambda leaf: jax.sharding.NamedSharding(mesh, fsdp_spec(getattr(leaf, "shape", ()), size)), abstract_tree)


def batch_sharding(mesh: "jax.sharding.Mesh", ndim: int) -> "jax.sharding.NamedSharding":
    """Batch axis split over every device (data and fsdp axes together)."""
    return jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))
