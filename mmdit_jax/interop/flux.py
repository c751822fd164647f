"""FLUX.1 checkpoints <-> Flax ``FluxTransformer`` variables (names and mapping: docs/flux.md §5). numpy only.

Formats:
* diffusers ``FluxTransformer2DModel`` state dict (``transformer_blocks.{i}.attn.to_q.weight``,
  ``single_transformer_blocks.{j}.proj_mlp.weight`` ...);
* the original Black Forest Labs layout (``double_blocks.{i}.img_attn.qkv.weight``, ``single_blocks.{j}.linear1``
  ..., optionally prefixed ``model.diffusion_model.``): fused q/k/v (and, in single blocks, q/k/v/MLP-in), QK-norm
  ``scale`` parameters, and ``final_layer.adaLN_modulation.1`` in ``[shift; scale]`` order where diffusers'
  ``norm_out.linear`` stores ``[scale; shift]``.

Entry points: ``load_flux(source, **overrides) -> (FluxConfig, variables)`` for a state dict, a safetensors file or
a local folder; ``to_diffusers(config, variables)``, ``diffusers_to_original``, ``original_to_diffusers``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.interop.safetensors_io import load_state_dict
from mmdit_jax.interop.trees import leaf_at
from mmdit_jax.models.flux import FluxConfig
from mmdit_jax.models.flux_params import is_scanned, stack_blocks, unstack_blocks
from mmdit_jax.models.numerics import DTYPES

StateDict = dict[str, np.ndarray]

# ------------------------------------------------------------------------------------------------
# diffusers names <-> Flax paths


def diffusers_keys(cfg: FluxConfig) -> list[str]:
    """Every key of a diffusers state dict for ``cfg``, in a stable order."""
    wb = lambda name: [f"{name}.weight", f"{name}.bias"]  # noqa: E731
    keys = wb("x_embedder") + wb("context_embedder")
    embedders = ["timestep_embedder"] + (["guidance_embedder"] if cfg.guidance_embeds else []) + ["text_embedder"]
    for e in embedders:
        keys += wb(f"time_text_embed.{e}.linear_1") + wb(f"time_text_embed.{e}.linear_2")
    for i in range(cfg.num_layers):
        b = f"transformer_blocks.{i}"
        keys += wb(f"{b}.norm1.linear") + wb(f"{b}.norm1_context.linear")
        for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            keys += wb(f"{b}.attn.{proj}")
        keys += [f"{b}.attn.{n}.weight" for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")]
        keys += wb(f"{b}.ff.net.0.proj") + wb(f"{b}.ff.net.2") + wb(f"{b}.ff_context.net.0.proj") + wb(f"{b}.ff_context.net.2")
    for i in range(cfg.num_single_layers):
        b = f"single_transformer_blocks.{i}"
        keys += wb(f"{b}.norm.linear")
        for proj in ("to_q", "to_k", "to_v"):
            keys += wb(f"{b}.attn.{proj}")
        keys += [f"{b}.attn.norm_q.weight", f"{b}.attn.norm_k.weight"]
        keys += wb(f"{b}.proj_mlp") + wb(f"{b}.proj_out")
    return keys + wb("norm_out.linear") + wb("proj_out")


_RENAMES = [
    (r"^time_text_embed\.", ""),
    (r"^(single_transformer_blocks|transformer_blocks)\.(\d+)\.", r"\1_\2."),
    (r"(^|\.)(norm1|norm1_context|norm_out|norm)\.linear\.", r"\1\2."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.net\.0\.proj\.", ".proj_in."),
    (r"\.net\.2\.", ".proj_out."),
]


def flax_path(key: str) -> tuple[str, ...]:
    """Path in ``params`` of the Flax variable holding diffusers ``key``."""
    name = key
    for pattern, repl in _RENAMES:
        name = re.sub(pattern, repl, name)
    *parents, leaf = name.split(".")
    if leaf == "weight":
        leaf = "scale" if re.fullmatch(r"norm_(added_)?[qk]", parents[-1]) else "kernel"
    return (*parents, leaf)


def _transpose(key: str, w: np.ndarray) -> np.ndarray:
    # torch Linear (out, in) <-> Dense kernel (in, out); biases and norm scales are vectors
    return w.T if key.endswith(".weight") and w.ndim == 2 else w


# ------------------------------------------------------------------------------------------------
# Config inference


def _count(sd: Mapping[str, Any], prefix: str) -> int:
    found = [int(m.group(1)) for k in sd if (m := re.match(rf"{prefix}\.(\d+)\.", k))]
    return 1 + max(found) if found else 0


def infer_config(sd: Mapping[str, np.ndarray], **overrides: Any) -> FluxConfig:
    """Architecture from a diffusers state dict's shapes (head dim from the QK-norm scales). ``axes_dims_rope``
    cannot be read from weights: the FLUX.1 split (16, 56, 56) is assumed where ``head_dim`` is 128; pass it in
    ``overrides`` (or a folder's ``config.json``) otherwise."""
    need = ["x_embedder.weight", "context_embedder.weight", "proj_out.weight",
            "time_text_embed.text_embedder.linear_1.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ConfigError(f"checkpoint is missing keys needed to infer the FLUX architecture: {missing}")
    d, c_in = sd["x_embedder.weight"].shape
    layers, single = _count(sd, "transformer_blocks"), _count(sd, "single_transformer_blocks")
    norm = "transformer_blocks.0.attn.norm_q.weight" if layers else "single_transformer_blocks.0.attn.norm_q.weight"
    if norm not in sd:
        raise ConfigError(f"checkpoint has no {norm} to read the head dim from")
    head_dim = int(sd[norm].shape[0])
    mlp = (sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] if layers
           else sd["single_transformer_blocks.0.proj_mlp.weight"].shape[0])
    inferred: dict[str, Any] = dict(
        in_channels=int(c_in), out_channels=int(sd["proj_out.weight"].shape[0]), num_layers=layers,
        num_single_layers=single, num_heads=int(d // head_dim), head_dim=head_dim,
        joint_attention_dim=int(sd["context_embedder.weight"].shape[1]),
        pooled_projection_dim=int(sd["time_text_embed.text_embedder.linear_1.weight"].shape[1]),
        guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in sd, mlp_ratio=int(mlp // d))
    if "axes_dims_rope" not in overrides:
        if head_dim != 128:
            raise ConfigError(f"the checkpoint's head dim is {head_dim}: pass axes_dims_rope (RoPE dims per id axis, "
                              "summing to the head dim; the weights do not record it)")
        inferred["axes_dims_rope"] = (16, 56, 56)
    if inferred["num_heads"] * head_dim != d:
        raise ConfigError(f"hidden size {d} is not a multiple of the head dim {head_dim}")
    return FluxConfig.from_dict({**inferred, **overrides})


# ------------------------------------------------------------------------------------------------
# diffusers <-> Flax


def from_diffusers(sd: Mapping[str, np.ndarray], cfg: FluxConfig, dtype: Any = None) -> dict[str, Any]:
    """Flax variables ``{"params": ...}`` (unrolled block layout) from a diffusers state dict.

    Raises ConfigError listing missing and unexpected keys, or the first key whose shape is wrong.
    """
    expected = diffusers_keys(cfg)
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"checkpoint does not match the FLUX config: missing keys {missing[:20]}"
                          f"{' ...' if len(missing) > 20 else ''}, unexpected keys {unexpected[:20]}"
                          f"{' ...' if len(unexpected) > 20 else ''}")
    dtype = DTYPES[cfg.param_dtype] if dtype is None else dtype
    params: dict[str, Any] = {}
    for key in expected:
        path = flax_path(key)
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _transpose(key, np.asarray(sd[key])).astype(dtype)
    d = cfg.hidden
    for i in range(cfg.num_layers):
        k = params[f"transformer_blocks_{i}"]["norm1"]["kernel"]
        if k.shape != (d, 6 * d):
            raise ConfigError(f"transformer_blocks.{i}.norm1.linear.weight has shape {k.shape[::-1]}, "
                              f"expected {(6 * d, d)}")
    return {"params": params}


def to_diffusers(cfg: FluxConfig, variables: Mapping[str, Any]) -> StateDict:
    """diffusers state dict (numpy) from Flax variables, unrolled or scanned."""
    variables = dict(variables)
    if is_scanned(variables):
        variables = unstack_blocks(variables, cfg)
    sd: StateDict = {}
    for key in diffusers_keys(cfg):
        node = leaf_at(variables["params"], flax_path(key), key)
        sd[key] = _transpose(key, np.asarray(node))
    return sd


# ------------------------------------------------------------------------------------------------
# Original (BFL) <-> diffusers

_ORIG_TOP = [  # (original, diffusers) module pairs outside the blocks; each has .weight and .bias
    ("img_in", "x_embedder"), ("txt_in", "context_embedder"),
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    ("final_layer.linear", "proj_out"),
]
_ORIG_DOUBLE = [  # (original, diffusers) parameter suffixes inside double_blocks.{i} / transformer_blocks.{i}
    ("img_mod.lin", "norm1.linear"), ("txt_mod.lin", "norm1_context.linear"),
    ("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out"),
    ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
    ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2"),
]
_ORIG_DOUBLE_NORMS = [
    ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"), ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
]
_ORIG_SINGLE = [("modulation.lin", "norm.linear"), ("linear2", "proj_out")]
_ORIG_SINGLE_NORMS = [("norm.query_norm.scale", "attn.norm_q.weight"), ("norm.key_norm.scale", "attn.norm_k.weight")]
_QKV = {"img_attn.qkv": ("to_q", "to_k", "to_v"), "txt_attn.qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}
_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def _swap_halves(w: np.ndarray) -> np.ndarray:
    """``[a; b] -> [b; a]`` along the output axis: BFL's final ``(shift, scale)`` <-> diffusers' ``(scale, shift)``."""
    half = w.shape[0] // 2
    return np.concatenate([w[half:], w[:half]], axis=0)


def _renames(layers: int, single: int) -> list[tuple[str, str]]:
    """Every (original, diffusers) key pair that is a pure renaming (no split, no swap)."""
    pairs = [(f"{o}.{s}", f"{d}.{s}") for o, d in _ORIG_TOP for s in ("weight", "bias")]
    for i in range(layers):
        pairs += [(f"double_blocks.{i}.{o}.{s}", f"transformer_blocks.{i}.{d}.{s}")
                  for o, d in _ORIG_DOUBLE for s in ("weight", "bias")]
        pairs += [(f"double_blocks.{i}.{o}", f"transformer_blocks.{i}.{d}") for o, d in _ORIG_DOUBLE_NORMS]
    for i in range(single):
        pairs += [(f"single_blocks.{i}.{o}.{s}", f"single_transformer_blocks.{i}.{d}.{s}")
                  for o, d in _ORIG_SINGLE for s in ("weight", "bias")]
        pairs += [(f"single_blocks.{i}.{o}", f"single_transformer_blocks.{i}.{d}") for o, d in _ORIG_SINGLE_NORMS]
    return pairs


def is_original_format(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith(("double_blocks.", "single_blocks.", "img_in.", "model.diffusion_model.")) for k in sd)


def original_to_diffusers(sd: Mapping[str, np.ndarray]) -> StateDict:
    """BFL layout -> diffusers names: qkv (and single blocks' ``linear1`` = [q; k; v; mlp_in]) split, the final
    adaLN halves swapped. Raises ConfigError on keys it does not know."""
    sd = {k.removeprefix("model.diffusion_model."): np.asarray(v) for k, v in sd.items()}
    layers, single = _count(sd, "double_blocks"), _count(sd, "single_blocks")
    out: StateDict = {}
    used: set[str] = set()
    for src, dst in _renames(layers, single):
        if src in sd:
            out[dst] = sd[src]
            used.add(src)
    for s in ("weight", "bias"):
        key = f"final_layer.adaLN_modulation.1.{s}"
        if key in sd:
            out[f"norm_out.linear.{s}"] = _swap_halves(sd[key])
            used.add(key)
        for i in range(layers):
            for fused, names in _QKV.items():
                key = f"double_blocks.{i}.{fused}.{s}"
                if key in sd:
                    for name, chunk in zip(names, np.split(sd[key], 3, axis=0)):
                        out[f"transformer_blocks.{i}.attn.{name}.{s}"] = chunk
                    used.add(key)
        for i in range(single):
            key = f"single_blocks.{i}.linear1.{s}"
            if key in sd:
                d = sd[f"single_blocks.{i}.linear2.weight"].shape[0]       # linear2: (D, D + mlp)
                for name, chunk in zip(_LINEAR1, np.split(sd[key], [d, 2 * d, 3 * d], axis=0)):
                    out[f"single_transformer_blocks.{i}.{name}.{s}"] = chunk
                used.add(key)
    leftover = sorted(set(sd) - used)
    if leftover:
        raise ConfigError(f"unexpected keys in the original-format FLUX checkpoint: {leftover[:20]}")
    return out


def diffusers_to_original(sd: Mapping[str, np.ndarray]) -> StateDict:
    """The inverse of ``original_to_diffusers`` (fuses qkv and ``linear1``, swaps the final adaLN halves back)."""
    sd = {k: np.asarray(v) for k, v in sd.items()}
    layers, single = _count(sd, "transformer_blocks"), _count(sd, "single_transformer_blocks")
    out: StateDict = {src: sd[dst] for src, dst in _renames(layers, single) if dst in sd}
    for s in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{s}"] = _swap_halves(sd[f"norm_out.linear.{s}"])
        for i in range(layers):
            for fused, names in _QKV.items():
                out[f"double_blocks.{i}.{fused}.{s}"] = np.concatenate(
                    [sd[f"transformer_blocks.{i}.attn.{n}.{s}"] for n in names])
        for i in range(single):
            out[f"single_blocks.{i}.linear1.{s}"] = np.concatenate(
                [sd[f"single_transformer_blocks.{i}.{n}.{s}"] for n in _LINEAR1])
    return out


# ------------------------------------------------------------------------------------------------
# One entry point


def load_flux(source: str | os.PathLike | Mapping[str, Any], dtype: Any = None,
              **overrides: Any) -> tuple[FluxConfig, dict[str, Any]]:
    """``(config, variables)`` from a state dict (diffusers or BFL layout), a ``.safetensors`` file or a folder.

    A folder may be a diffusers model folder (``config.json`` + ``diffusion_pytorch_model*.safetensors``), a
    pipeline folder with ``transformer/`` inside, or hold one original-format safetensors file (e.g.
    ``flux1-dev.safetensors``). ``overrides`` set config fields (``dtype="bfloat16"``, ``scan_blocks=True``,
    ``axes_dims_rope``); ``dtype``: the stored parameters' dtype (default ``param_dtype``).
    """
    folder_config: dict[str, Any] = {}
    if isinstance(source, Mapping):
        sd = {k: np.asarray(v) for k, v in source.items()}
    else:
        path = os.fspath(source)
        if os.path.isdir(path) and os.path.isdir(os.path.join(path, "transformer")):
            path = os.path.join(path, "transformer")
        cfg_file = os.path.join(path, "config.json")
        if os.path.isdir(path) and os.path.exists(cfg_file):
            with open(cfg_file) as f:
                raw = json.load(f)
            if "axes_dims_rope" in raw:
                folder_config["axes_dims_rope"] = tuple(int(a) for a in raw["axes_dims_rope"])
        sd = load_state_dict(path)
    if is_original_format(sd):
        sd = original_to_diffusers(sd)
    cfg = infer_config(sd, **{**folder_config, **overrides})
    variables = from_diffusers(sd, cfg, dtype)
    if cfg.scan_blocks:
        variables = stack_blocks(variables, cfg)
    return cfg, variables
