"""Cosmos-Predict2 checkpoints (diffusers ``CosmosTransformer3DModel``) <-> Flax ``CosmosTransformer`` variables.
numpy only.

The Flax tree is diffusers' module tree renamed:

    patch_embed.proj.weight                      -> patch_embed/kernel            (transposed, as every Linear)
    time_embed.t_embedder.linear_{1,2}.weight    -> time_embed/t_embedder/linear_{1,2}/kernel
    time_embed.norm.weight                       -> time_embed/norm/scale
    learnable_pos_embed.pos_emb_{t,h,w}          -> learnable_pos_embed/pos_emb_{t,h,w}   (tables, not transposed)
    transformer_blocks.{i}.norm{1,2,3}.linear_{1,2}.weight -> transformer_blocks_{i}/norm{k}/linear_{j}/kernel
    transformer_blocks.{i}.attn{1,2}.to_{q,k,v}.weight     -> transformer_blocks_{i}/attn{k}/to_{q,k,v}/kernel
    transformer_blocks.{i}.attn{1,2}.to_out.0.weight       -> transformer_blocks_{i}/attn{k}/to_out/kernel
    transformer_blocks.{i}.attn{1,2}.norm_{q,k}.weight     -> transformer_blocks_{i}/attn{k}/norm_{q,k}/scale
    transformer_blocks.{i}.ff.net.0.proj.weight  -> transformer_blocks_{i}/ff_in/kernel
    transformer_blocks.{i}.ff.net.2.weight       -> transformer_blocks_{i}/ff_out/kernel
    norm_out.linear_{1,2}.weight, proj_out.weight -> norm_out/linear_{1,2}/kernel, proj_out/kernel

Nothing has a bias. Entry points: ``load_cosmos(source, **overrides) -> (CosmosConfig, variables)`` for a state
dict, a safetensors file or a local (model or pipeline) folder; ``to_diffusers(config, variables)``;
``config_from_diffusers(config.json dict)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Mapping

import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.interop.safetensors_io import load_state_dict
from mmdit_jax.interop.trees import leaf_at
from mmdit_jax.models.cosmos import CosmosConfig, abstract_variables, is_scanned, stack_blocks, unstack_blocks
from mmdit_jax.models.numerics import DTYPES

StateDict = dict[str, np.ndarray]

# diffusers config.json fields that select parts this port does not have (Predict2.5, Transfer2.5)
_UNSUPPORTED = {"use_crossattn_projection": False, "controlnet_block_every_n": None, "img_context_dim_in": None}


def diffusers_keys(cfg: CosmosConfig) -> list[str]:
    """Every key of a diffusers state dict for ``cfg``, in a stable order."""
    keys = ["patch_embed.proj.weight", "time_embed.t_embedder.linear_1.weight",
            "time_embed.t_embedder.linear_2.weight", "time_embed.norm.weight"]
    if cfg.extra_pos_embed_type == "learnable":
        keys += [f"learnable_pos_embed.pos_emb_{a}" for a in "thw"]
    for i in range(cfg.num_layers):
        b = f"transformer_blocks.{i}"
        keys += [f"{b}.norm{k}.linear_{j}.weight" for k in (1, 2, 3) for j in (1, 2)]
        for a in ("attn1", "attn2"):
            keys += [f"{b}.{a}.{p}.weight" for p in ("to_q", "to_k", "to_v", "to_out.0", "norm_q", "norm_k")]
        keys += [f"{b}.ff.net.0.proj.weight", f"{b}.ff.net.2.weight"]
    return keys + ["norm_out.linear_1.weight", "norm_out.linear_2.weight", "proj_out.weight"]


_RENAMES = [
    (r"^transformer_blocks\.(\d+)\.", r"transformer_blocks_\1."),
    (r"^patch_embed\.proj\.", "patch_embed."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.ff\.net\.0\.proj\.", ".ff_in."),
    (r"\.ff\.net\.2\.", ".ff_out."),
]


def flax_path(key: str) -> tuple[str, ...]:
    """Path in ``params`` of the Flax variable holding diffusers ``key``."""
    name = key
    for pattern, repl in _RENAMES:
        name = re.sub(pattern, repl, name)
    *parents, leaf = name.split(".")
    if leaf == "weight":
        leaf = "scale" if parents[-1] in ("norm_q", "norm_k", "norm") else "kernel"
    return (*parents, leaf)


def _transpose(key: str, w: np.ndarray) -> np.ndarray:
    # torch Linear (out, in) <-> Dense kernel (in, out); norm scales are vectors, position tables stay (rows, D)
    return w.T if key.endswith(".weight") and w.ndim == 2 else w


# ------------------------------------------------------------------------------------------------
# Config


def config_from_diffusers(raw: Mapping[str, Any], **overrides: Any) -> CosmosConfig:
    """``CosmosConfig`` from a diffusers ``config.json`` dict; ConfigError names a field this port lacks."""
    for field, off in _UNSUPPORTED.items():
        if raw.get(field, off) not in (off, 0):
            raise ConfigError(f"the checkpoint's config sets {field}={raw[field]!r}: Cosmos-Predict2.5 / Transfer "
                              "parts are not ported (only Predict2 text-to-image / video transformers)")
    fields = dict(in_channels=raw.get("in_channels", 16), out_channels=raw.get("out_channels", 16),
                  num_heads=raw.get("num_attention_heads", 32), head_dim=raw.get("attention_head_dim", 128),
                  num_layers=raw.get("num_layers", 28), mlp_ratio=float(raw.get("mlp_ratio", 4.0)),
                  text_embed_dim=raw.get("text_embed_dim", 1024), adaln_lora_dim=raw.get("adaln_lora_dim", 256),
                  max_size=raw.get("max_size", (128, 240, 240)), patch_size=raw.get("patch_size", (1, 2, 2)),
                  rope_scale=raw.get("rope_scale", (2.0, 1.0, 1.0)),
                  concat_padding_mask=bool(raw.get("concat_padding_mask", True)),
                  extra_pos_embed_type=raw.get("extra_pos_embed_type", "learnable"))
    return CosmosConfig.from_dict({**fields, **overrides})


def _count(sd: Mapping[str, Any]) -> int:
    found = [int(m.group(1)) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", k))]
    return 1 + max(found) if found else 0


def infer_config(sd: Mapping[str, np.ndarray], **overrides: Any) -> CosmosConfig:
    """Architecture from a state dict's shapes. The weights do not record ``patch_size``, ``rope_scale``,
    ``concat_padding_mask`` nor (without the learnable tables) ``max_size``: the Predict2 values ((1, 2, 2),
    (1, 4, 4), True, (128, 240, 240)) are assumed unless ``overrides`` (or a folder's ``config.json``) give them."""
    need = ["patch_embed.proj.weight", "proj_out.weight", "norm_out.linear_1.weight",
            "transformer_blocks.0.attn1.norm_q.weight", "transformer_blocks.0.attn2.to_k.weight",
            "transformer_blocks.0.ff.net.0.proj.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ConfigError(f"checkpoint is missing keys needed to infer the Cosmos architecture: {missing}")
    patch = tuple(int(p) for p in overrides.get("patch_size", (1, 2, 2)))
    concat = bool(overrides.get("concat_padding_mask", True))
    d, c_in = sd["patch_embed.proj.weight"].shape
    head_dim = int(sd["transformer_blocks.0.attn1.norm_q.weight"].shape[0])
    volume = math.prod(patch)
    learnable = "learnable_pos_embed.pos_emb_t" in sd
    inferred: dict[str, Any] = dict(
        in_channels=int(c_in) // volume - int(concat), out_channels=int(sd["proj_out.weight"].shape[0]) // volume,
        num_heads=int(d) // head_dim, head_dim=head_dim, num_layers=_count(sd),
        mlp_ratio=sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] / d,
        text_embed_dim=int(sd["transformer_blocks.0.attn2.to_k.weight"].shape[1]),
        adaln_lora_dim=int(sd["norm_out.linear_1.weight"].shape[0]), patch_size=patch, concat_padding_mask=concat,
        extra_pos_embed_type="learnable" if learnable else None)
    if learnable:
        inferred["max_size"] = tuple(int(sd[f"learnable_pos_embed.pos_emb_{a}"].shape[0]) * p
                                     for a, p in zip("thw", patch))
    if inferred["num_heads"] * head_dim != d or int(c_in) % volume:
        raise ConfigError(f"patch_embed.proj.weight {tuple(sd['patch_embed.proj.weight'].shape)} does not fit head "
                          f"dim {head_dim} and patch_size {patch}")
    return CosmosConfig.from_dict({**inferred, **overrides})


# ------------------------------------------------------------------------------------------------
# diffusers <-> Flax


def from_diffusers(sd: Mapping[str, np.ndarray], cfg: CosmosConfig, dtype: Any = None) -> dict[str, Any]:
    """Flax variables ``{"params": ...}`` (unrolled block layout) from a diffusers state dict.
    Raises ConfigError listing missing and unexpected keys, or the first key whose shape is wrong."""
    expected = diffusers_keys(cfg)
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"checkpoint does not match the Cosmos config: missing keys {missing[:20]}"
                          f"{' ...' if len(missing) > 20 else ''}, unexpected keys {unexpected[:20]}"
                          f"{' ...' if len(unexpected) > 20 else ''}")
    # the expected shapes without allocating; scanned, so one block is traced whatever the depth
    shapes = abstract_variables(dataclasses.replace(cfg, scan_blocks=True))["params"]
    dtype = DTYPES[cfg.param_dtype] if dtype is None else dtype
    params: dict[str, Any] = {}
    for key in expected:
        path = flax_path(key)
        w = _transpose(key, np.asarray(sd[key]))
        block = path[0].startswith("transformer_blocks_")
        want = shapes
        for part in (("transformer_blocks", "block") + path[1:]) if block else path:
            want = want[part]
        want_shape = tuple(want.shape[1:] if block else want.shape)
        if tuple(w.shape) != want_shape:
            raise ConfigError(f"{key} has shape {tuple(np.asarray(sd[key]).shape)}, which does not fit the config "
                              f"(Flax {'/'.join(path)} is {want_shape})")
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = w.astype(dtype)
    return {"params": params}


def to_diffusers(cfg: CosmosConfig, variables: Mapping[str, Any]) -> StateDict:
    """diffusers state dict (numpy) from Flax variables, unrolled or scanned."""
    variables = dict(variables)
    if is_scanned(variables):
        variables = unstack_blocks(variables, cfg)
    sd: StateDict = {}
    for key in diffusers_keys(cfg):
        node = leaf_at(variables["params"], flax_path(key), key)
        sd[key] = np.ascontiguousarray(_transpose(key, np.asarray(node)))
    return sd


def load_cosmos(source: str | os.PathLike | Mapping[str, Any], dtype: Any = None,
                **overrides: Any) -> tuple[CosmosConfig, dict[str, Any]]:
    """``(config, variables)`` from a diffusers state dict, a ``.safetensors`` file or a folder (a model folder
    with ``config.json``, or a pipeline folder with ``transformer/``). ``overrides`` set config fields
    (``dtype="bfloat16"``, ``scan_blocks=True`` ...); ``dtype``: the stored parameters' dtype."""
    if isinstance(source, Mapping):
        sd = {k: np.asarray(v) for k, v in source.items()}
        cfg = infer_config(sd, **overrides)
    else:
        path = os.fspath(source)
        if os.path.isdir(os.path.join(path, "transformer")):
            path = os.path.join(path, "transformer")
        sd = load_state_dict(path)
        cfg_file = os.path.join(path, "config.json")
        if os.path.isdir(path) and os.path.exists(cfg_file):
            with open(cfg_file) as f:
                cfg = config_from_diffusers(json.load(f), **overrides)
        else:
            cfg = infer_config(sd, **overrides)
    variables = from_diffusers(sd, cfg, dtype)
    if cfg.scan_blocks:
        variables = stack_blocks(variables, cfg)
    return cfg, variables
