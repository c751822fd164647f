"""Numerics shared by every model family (SD3, FLUX, the VAE): compute dtypes, remat policies, kernel casting.

``DTYPES``: the dtype names a config may give for ``dtype`` (what the forward computes in) and ``param_dtype``
(what parameters are stored in), mapped to their JAX dtypes. Configs validate against its keys and modules
resolve a name through it, so every family accepts the same names.

``REMAT_POLICIES``: what a rematerialised block (``remat=True``) keeps for its backward pass, chosen by the
config's ``remat_policy``:

- ``full``: nothing; the backward reruns the whole block forward (least memory);
- ``minimal``: the projections' outputs (matmuls with no batch dimension); reruns only the element-wise work and
  the attention core, so no weight matmul is computed twice;
- ``dots``: every matmul output, the einsum attention's products too.

``check_numerics`` / ``attention_path``: the checks and the attention choice every transformer config makes of its
``dtype``, ``param_dtype``, ``remat_policy`` and ``attention_impl`` fields.

``cast_kernels``: the parameters cast to the compute dtype once per step, outside the blocks' scan, rather than
inside every iteration of it (its docstring says why and what it costs).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError, check_choice
from mmdit_jax.models.layers import attention_backend

DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

REMAT_POLICIES: dict[str, Callable[..., bool]] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
}


def check_numerics(config: Any, attention_impls: tuple[str, ...]) -> None:
    """Raise ConfigError naming the first invalid numerics field of a model config: ``dtype`` / ``param_dtype`` (one
    of ``DTYPES``), ``remat_policy`` (one of ``REMAT_POLICIES``), ``attention_impl`` (None or one of
    ``attention_impls``, the paths that model's attention supports)."""
    check_choice("model.dtype", config.dtype, DTYPES)
    check_choice("model.param_dtype", config.param_dtype, DTYPES)
    check_choice("model.remat_policy", config.remat_policy, REMAT_POLICIES)
    if config.attention_impl is not None and config.attention_impl not in attention_impls:
        raise ConfigError(f"model.attention_impl={config.attention_impl!r} is not valid; choose None (picked per "
                          f"platform) or one of {list(attention_impls)}")


def attention_path(config: Any) -> str:
    """``config.attention_impl``, or for None: 'cudnn' where an NVIDIA GPU runs a bf16/fp16 model with a head dim
    cuDNN supports, else 'xla' (``layers.attention_backend``'s platform choice, without its CPU einsum paths)."""
    if config.attention_impl is not None:
        return config.attention_impl
    return "cudnn" if attention_backend(None, DTYPES[config.dtype], config.head_dim) == "cudnn" else "xla"


def cast_kernels(params: Any, dtype: str) -> Any:
    """The parameters the forward computes with: every ``kernel`` leaf (Dense, Conv) cast to the compute ``dtype``
    once, outside the blocks' scan; other leaves (biases, norm scales) as stored. ``dtype`` is ``model.dtype``.

    Why: the model casts each kernel where it is used, which under ``scan_blocks`` happens inside the loop: every
    iteration converts its block's float32 slice again, forward and backward. Cast first, one conversion pass
    per step remains and the loop slices bf16, which shortens the train step's elementwise work (measurements:
    experiments/benchmarks/RESULTS.md; the in-loop slice copies themselves stay).
    The forward is bit-identical (each use casts to the same dtype anyway) and the gradient reaches the float32
    parameters through the cast; a no-op in float32.
    """
    target = jnp.dtype(dtype)

    def cast(path: tuple[Any, ...], leaf: jax.Array) -> jax.Array:
        name = getattr(path[-1], "key", None)
        return leaf.astype(target) if name == "kernel" and leaf.dtype != target else leaf

    return jax.tree_util.tree_map_with_path(cast, params)
