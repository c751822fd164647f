"""HiDream-I1 checkpoints <-> Flax ``HiDreamTransformer`` variables. numpy only.

diffusers ``HiDreamImageTransformer2DModel`` keys and their Flax paths (``B = double_stream_blocks_{i}`` or
``single_stream_blocks_{j}``; torch ``Linear`` weights ``(out, in)`` are transposed to kernels ``(in, out)``):

    x_embedder.proj                          x_embedder
    t_embedder.timestep_embedder.linear_n    timestep_embedder/linear_n
    p_embedder.pooled_embedder.linear_n      text_embedder/linear_n          (SD3's h_y, for the steering code)
    caption_projection.{k}.linear, k < L+S   llama_projection[k]             (stacked (L+S, d_l, D))
    caption_projection.{L+S}.linear          t5_projection
    {double,single}_stream_blocks.{i}.block. B/ : adaLN_modulation.1 -> adaLN_modulation, attn1.* (q/k_rms_norm
                                             weights -> scale), ff_i.gate (E, D) -> ff_i/gate/kernel (D, E),
                                             ff_i.experts.{e}.w_n -> ff_i/experts/w_n[e], the rest by name
    final_layer.adaLN_modulation.1           final_layer/adaLN_modulation

Entry points: ``from_diffusers(sd, cfg)``, ``to_diffusers(cfg, variables)``, ``load_hidream(source)``;
scanned variables (``scan_blocks``) through ``stack_blocks`` / ``unstack_blocks``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.interop.safetensors_io import load_state_dict
from mmdit_jax.models.hidream import HiDreamConfig
from mmdit_jax.models.numerics import DTYPES

StateDict = dict[str, np.ndarray]
Path = tuple[str, ...]

_GROUPS = (("double_stream_blocks", "num_layers"), ("single_stream_blocks", "num_single_layers"))


def _swiglu(prefix: str, path: Path) -> Iterator[tuple[str, Path, int | None]]:
    for n in ("w1", "w2", "w3"):
        yield f"{prefix}.{n}.weight", (*path, n, "kernel"), None


def _block(cfg: HiDreamConfig, prefix: str, path: Path, single: bool) -> Iterator[tuple[str, Path, int | None]]:
    wb = lambda key, p: [(f"{key}.weight", (*p, "kernel"), None), (f"{key}.bias", (*p, "bias"), None)]  # noqa: E731
    yield from wb(f"{prefix}.adaLN_modulation.1", (*path, "adaLN_modulation"))
    for suffix in ("",) if single else ("", "_t"):
        for proj in ("to_q", "to_k", "to_v", "to_out"):
            yield from wb(f"{prefix}.attn1.{proj}{suffix}", (*path, "attn1", proj + suffix))
        for norm in ("q_rms_norm", "k_rms_norm"):
            yield f"{prefix}.attn1.{norm}{suffix}.weight", (*path, "attn1", norm + suffix, "scale"), None
    ff = (*path, "ff_i")
    if cfg.num_routed_experts:
        yield f"{prefix}.ff_i.gate.weight", (*ff, "gate", "kernel"), None
        yield from _swiglu(f"{prefix}.ff_i.shared_experts", (*ff, "shared_experts"))
        for e in range(cfg.num_routed_experts):
            for n in ("w1", "w2", "w3"):
                yield f"{prefix}.ff_i.experts.{e}.{n}.weight", (*ff, "experts", n), e
    else:
        yield from _swiglu(f"{prefix}.ff_i", ff)
    if not single:
        yield from _swiglu(f"{prefix}.ff_t", (*path, "ff_t"))


def entries(cfg: HiDreamConfig) -> list[tuple[str, Path, int | None]]:
    """``(diffusers key, Flax path, index)`` for every key of ``cfg``'s state dict; ``index``: the slot of a
    stacked Flax array (routed expert ``e``, caption projection ``k``), None for a whole array."""
    out: list[tuple[str, Path, int | None]] = []
    wb = lambda key, p: [(f"{key}.weight", (*p, "kernel"), None), (f"{key}.bias", (*p, "bias"), None)]  # noqa: E731
    out += wb("x_embedder.proj", ("x_embedder",))
    for n in ("linear_1", "linear_2"):
        out += wb(f"t_embedder.timestep_embedder.{n}", ("timestep_embedder", n))
        out += wb(f"p_embedder.pooled_embedder.{n}", ("text_embedder", n))
    blocks = cfg.num_layers + cfg.num_single_layers
    out += [(f"caption_projection.{k}.linear.weight", ("llama_projection",), k) for k in range(blocks)]
    out.append((f"caption_projection.{blocks}.linear.weight", ("t5_projection", "kernel"), None))
    for group, count in _GROUPS:
        for i in range(getattr(cfg, count)):
            out += _block(cfg, f"{group}.{i}.block", (f"{group}_{i}",), single=group.startswith("single"))
    out += wb("final_layer.adaLN_modulation.1", ("final_layer", "adaLN_modulation"))
    out += wb("final_layer.linear", ("final_layer", "linear"))
    return out


def _to_flax(w: np.ndarray) -> np.ndarray:
    return w.T if w.ndim == 2 else w        # torch Linear (out, in) -> kernel (in, out); vectors as they are


def from_diffusers(sd: Mapping[str, np.ndarray], cfg: HiDreamConfig, dtype: Any = None) -> dict[str, Any]:
    """Flax variables ``{"params": ...}`` (unrolled blocks) from a diffusers state dict; ConfigError lists missing
    and unexpected keys, or names the first key whose shape is wrong."""
    table = entries(cfg)
    expected = [k for k, _, _ in table]
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"checkpoint does not match the HiDream config: missing keys {missing[:20]}"
                          f"{' ...' if len(missing) > 20 else ''}, unexpected keys {unexpected[:20]}"
                          f"{' ...' if len(unexpected) > 20 else ''}")
    dtype = DTYPES[cfg.param_dtype] if dtype is None else dtype
    stacks: dict[Path, dict[int, np.ndarray]] = {}
    flat: dict[Path, np.ndarray] = {}
    for key, path, index in table:
        w = _to_flax(np.asarray(sd[key]))
        if index is None:
            flat[path] = w
        else:
            stacks.setdefault(path, {})[index] = w
    for path, parts in stacks.items():
        flat[path] = np.stack([parts[i] for i in range(len(parts))])
    _check_shapes(flat, cfg)
    params: dict[str, Any] = {}
    for path, w in flat.items():
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.asarray(w).astype(dtype)
    return {"params": params}


def _check_shapes(flat: dict[Path, np.ndarray], cfg: HiDreamConfig) -> None:
    from flax.traverse_util import flatten_dict

    from mmdit_jax.models.hidream import abstract_variables

    unrolled = HiDreamConfig(**{**cfg.__dict__, "scan_blocks": False})
    abstract = flatten_dict(abstract_variables(unrolled, size=2 * cfg.patch_size)["params"])
    for path, leaf in abstract.items():
        if flat[path].shape != leaf.shape:
            raise ConfigError(f"HiDream parameter {'/'.join(path)} has shape {flat[path].shape}, expected "
                              f"{leaf.shape} from the config")


def to_diffusers(cfg: HiDreamConfig, variables: Mapping[str, Any]) -> StateDict:
    """diffusers state dict (numpy, float32 as stored) from Flax variables, unrolled or scanned."""
    variables = dict(variables)
    if is_scanned(variables):
        variables = unstack_blocks(variables, cfg)
    sd: StateDict = {}
    for key, path, index in entries(cfg):
        node = variables["params"]
        for part in path:
            if part not in node:
                raise ConfigError(f"Flax variables have no params/{'/'.join(path)} (for {key})")
            node = node[part]
        w = np.asarray(node if index is None else node[index])
        sd[key] = np.ascontiguousarray(_to_flax(w))
    return sd


def is_scanned(variables: Mapping[str, Any]) -> bool:
    return any(group in variables["params"] for group, _ in _GROUPS)


def stack_blocks(variables: Mapping[str, Any], cfg: HiDreamConfig) -> dict[str, Any]:
    """Unrolled -> scanned layout (``{group}/block``, leading axis = block index)."""
    params = dict(variables["params"])
    for group, count in _GROUPS:
        blocks = [params.pop(f"{group}_{i}") for i in range(getattr(cfg, count))]
        if blocks:
            params[group] = {"block": jax.tree_util.tree_map(lambda *xs: np.stack(xs), *blocks)}
    return {**variables, "params": params}


def unstack_blocks(variables: Mapping[str, Any], cfg: HiDreamConfig) -> dict[str, Any]:
    """Scanned -> unrolled layout (the inverse of ``stack_blocks``)."""
    params = dict(variables["params"])
    for group, count in _GROUPS:
        if group in params:
            stacked = params.pop(group)["block"]
            for i in range(getattr(cfg, count)):
                params[f"{group}_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
    return {**variables, "params": params}


def load_hidream(source: str | os.PathLike | Mapping[str, Any], dtype: Any = None,
                 **overrides: Any) -> tuple[HiDreamConfig, dict[str, Any]]:
    """``(config, variables)`` from a diffusers transformer folder (``config.json`` + safetensors), or from a
    state dict with ``overrides`` giving the config (``HiDreamConfig`` fields). ``scan_blocks=True`` stacks."""
    if isinstance(source, Mapping):
        cfg = HiDreamConfig.from_dict(overrides)
        sd = dict(source)
    else:
        folder = os.fspath(source)
        path = os.path.join(folder, "config.json")
        if not os.path.exists(path):
            raise ConfigError(f"no config.json in HiDream transformer folder {folder!r}")
        with open(path) as f:
            cfg = HiDreamConfig.from_diffusers(json.load(f), **overrides)
        sd = load_state_dict(folder)
    variables = from_diffusers(sd, cfg, dtype)
    return cfg, stack_blocks(variables, cfg) if cfg.scan_blocks else variables

