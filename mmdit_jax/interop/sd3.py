"""SD3 / SD3.5 checkpoints <-> Flax MMDiT variables (names and mapping: docs/mmdit.md §2). numpy only, no torch.

Formats:
* diffusers ``SD3Transformer2DModel`` state dict (``transformer_blocks.{i}.attn.to_q.weight`` ...);
* the original Stability layout (``joint_blocks.{i}.x_block.attn.qkv.weight`` ..., optionally prefixed
  ``model.diffusion_model.``): fused qkv, and ``[shift; scale]`` halves in the last context adaLN and the
  final layer where diffusers stores ``[scale; shift]``.

Entry points: ``load_sd3(source, **overrides) -> (MMDiTConfig, variables)`` for a state dict, a safetensors
file or a local folder; ``to_diffusers(config, variables)``, ``diffusers_to_original``, ``original_to_diffusers``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import numpy as np

from mmdit_jax.interop.safetensors_io import load_state_dict
from mmdit_jax.models.mmdit import MMDiTConfig
from mmdit_jax.models.numerics import DTYPES
from mmdit_jax.models.mmdit_params import stack_blocks
from mmdit_jax.checks import ConfigError

StateDict = dict[str, np.ndarray]

# ------------------------------------------------------------------------------------------------
# Key sets and names


def diffusers_keys(cfg: MMDiTConfig) -> list[str]:
    """Every key of a diffusers state dict for ``cfg``, in a stable order."""
    wb = lambda name: [f"{name}.weight", f"{name}.bias"]  # noqa: E731
    keys = ["pos_embed.pos_embed", *wb("pos_embed.proj")]
    keys += wb("time_text_embed.timestep_embedder.linear_1") + wb("time_text_embed.timestep_embedder.linear_2")
    if cfg.use_pooled:
        keys += wb("time_text_embed.text_embedder.linear_1") + wb("time_text_embed.text_embedder.linear_2")
    keys += wb("context_embedder")
    qk = cfg.qk_norm == "rms_norm"
    for i in range(cfg.num_layers):
        b, last, dual = f"transformer_blocks.{i}", i == cfg.num_layers - 1, i in cfg.dual_attention_layers
        keys += wb(f"{b}.norm1.linear") + wb(f"{b}.norm1_context.linear")
        for proj in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0"):
            keys += wb(f"{b}.attn.{proj}")
        if not last:
            keys += wb(f"{b}.attn.to_add_out")
        if qk:
            keys += [f"{b}.attn.{n}.weight" for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")]
        if dual:
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                keys += wb(f"{b}.attn2.{proj}")
            if qk:
                keys += [f"{b}.attn2.norm_q.weight", f"{b}.attn2.norm_k.weight"]
        keys += wb(f"{b}.ff.net.0.proj") + wb(f"{b}.ff.net.2")
        if not last:
            keys += wb(f"{b}.ff_context.net.0.proj") + wb(f"{b}.ff_context.net.2")
    return keys + wb("norm_out.linear") + wb("proj_out")


_RENAMES = [
    (r"^time_text_embed\.", ""),
    (r"^pos_embed\.proj\.", "patch_embed."),
    (r"^transformer_blocks\.(\d+)\.", r"transformer_blocks_\1."),
    (r"(^|\.)(norm1|norm1_context|norm_out)\.linear\.", r"\1\2."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.net\.0\.proj\.", ".proj_in."),
    (r"\.net\.2\.", ".proj_out."),
]


def flax_path(key: str) -> tuple[str, tuple[str, ...]]:
    """``(collection, path)`` of the Flax variable holding diffusers ``key``."""
    if key == "pos_embed.pos_embed":
        return "buffers", ("pos_embed",)
    name = key
    for pattern, repl in _RENAMES:
        name = re.sub(pattern, repl, name)
    *parents, leaf = name.split(".")
    if leaf == "weight":
        leaf = "scale" if re.fullmatch(r"norm_(added_)?[qk]", parents[-1]) else "kernel"
    return "params", (*parents, leaf)


def _to_flax(key: str, w: np.ndarray) -> np.ndarray:
    if key == "pos_embed.proj.weight":
        return w.transpose(2, 3, 1, 0)          # (O, I, kh, kw) -> (kh, kw, I, O)
    if key.endswith(".weight") and w.ndim == 2:
        return w.T                              # Linear (out, in) -> Dense kernel (in, out)
    return w


def _from_flax(key: str, w: np.ndarray) -> np.ndarray:
    if key == "pos_embed.proj.weight":
        return w.transpose(3, 2, 0, 1)
    if key.endswith(".weight") and w.ndim == 2:
        return w.T
    return w


# ------------------------------------------------------------------------------------------------
# Config inference


def infer_config(sd: Mapping[str, np.ndarray], **overrides: Any) -> MMDiTConfig:
    """Architecture from a diffusers state dict's shapes. ``head_dim`` (64 for every released model) cannot be
    read from weights without QK-norm; pass it (or ``num_heads``) in ``overrides`` for other models."""
    need = ["pos_embed.proj.weight", "context_embedder.weight", "proj_out.weight", "pos_embed.pos_embed"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ConfigError(f"checkpoint is missing keys needed to infer the architecture: {missing}")
    d, c_in, p, _ = sd["pos_embed.proj.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", k)))
    qk = "transformer_blocks.0.attn.norm_q.weight" in sd
    head_dim = sd["transformer_blocks.0.attn.norm_q.weight"].shape[0] if qk else 64
    if "num_heads" in overrides and "head_dim" not in overrides:
        head_dim = d // overrides["num_heads"]
    head_dim = overrides.pop("head_dim", head_dim)
    inferred = dict(
        patch_size=int(p), in_channels=int(c_in), num_layers=layers, head_dim=int(head_dim),
        num_heads=int(d // head_dim), joint_attention_dim=int(sd["context_embedder.weight"].shape[1]),
        use_pooled="time_text_embed.text_embedder.linear_1.weight" in sd,
        out_channels=int(sd["proj_out.weight"].shape[0] // (p * p)),
        pos_embed_max_size=int(round(sd["pos_embed.pos_embed"].shape[1] ** 0.5)),
        qk_norm="rms_norm" if qk else None,
        dual_attention_layers=tuple(sorted(int(m.group(1)) for k in sd
                                           if (m := re.match(r"transformer_blocks\.(\d+)\.attn2\.to_q\.weight$", k)))),
        mlp_ratio=int(sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] // d),
    )
    if inferred["use_pooled"]:
        inferred["pooled_projection_dim"] = int(sd["time_text_embed.text_embedder.linear_1.weight"].shape[1])
    if inferred["num_heads"] * inferred["head_dim"] != d:
        raise ConfigError(f"hidden size {d} is not num_heads * head_dim = {inferred['num_heads']} * {inferred['head_dim']}")
    return MMDiTConfig.from_dict({**inferred, **overrides})


# ------------------------------------------------------------------------------------------------
# diffusers <-> Flax


def from_diffusers(sd: Mapping[str, np.ndarray], cfg: MMDiTConfig, dtype: Any = None) -> dict[str, Any]:
    """Flax variables ``{"params": ..., "buffers": ...}`` (unrolled block layout) from a diffusers state dict.

    Raises ConfigError listing missing and unexpected keys, or the first key whose shape is wrong.
    """
    expected = diffusers_keys(cfg)
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"checkpoint does not match the MMDiT config: missing keys {missing[:20]}"
                          f"{' ...' if len(missing) > 20 else ''}, unexpected keys {unexpected[:20]}"
                          f"{' ...' if len(unexpected) > 20 else ''}")
    dtype = DTYPES[cfg.param_dtype] if dtype is None else dtype
    variables: dict[str, Any] = {"params": {}, "buffers": {}}
    for key in expected:
        collection, path = flax_path(key)
        w = np.asarray(sd[key])
        value = _to_flax(key, w).astype(np.float32 if collection == "buffers" else dtype)
        node = variables[collection]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    _check_block_shapes(variables, cfg)
    return variables


def _check_block_shapes(variables: dict[str, Any], cfg: MMDiTConfig) -> None:
    d = cfg.hidden
    for i in range(cfg.num_layers):
        k = variables["params"][f"transformer_blocks_{i}"]["norm1"]["kernel"]
        mult = 9 if i in cfg.dual_attention_layers else 6
        if k.shape != (d, mult * d):
            raise ConfigError(f"transformer_blocks.{i}.norm1.linear.weight has shape {k.shape[::-1]}, "
                              f"expected {(mult * d, d)}")


def to_diffusers(cfg: MMDiTConfig, variables: Mapping[str, Any]) -> StateDict:
    """diffusers state dict (numpy) from Flax variables in the unrolled layout (``unstack_blocks`` first if scanned)."""
    sd: StateDict = {}
    for key in diffusers_keys(cfg):
        collection, path = flax_path(key)
        node = variables[collection]
        for part in path:
            if part not in node:
                raise ConfigError(f"Flax variables have no {collection}/{'/'.join(path)} (for {key})")
            node = node[part]
        sd[key] = _from_flax(key, np.asarray(node))
    return sd


# ------------------------------------------------------------------------------------------------
# Original (Stability) <-> diffusers

_ORIG_SIMPLE = [  # (original, diffusers) name pairs outside the blocks, applied to ".weight"/".bias"
    ("x_embedder.proj", "pos_embed.proj"),
    ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
    ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
    ("context_embedder", "context_embedder"),
    ("final_layer.linear", "proj_out"),
]


def _swap_halves(w: np.ndarray) -> np.ndarray:
    half = w.shape[0] // 2
    return np.concatenate([w[half:], w[:half]], axis=0)


def is_original_format(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith(("joint_blocks.", "model.diffusion_model.")) for k in sd)


def original_to_diffusers(sd: Mapping[str, np.ndarray]) -> StateDict:
    """Stability ``joint_blocks`` layout -> diffusers names (qkv split, adaLN halves swapped)."""
    sd = {k.removeprefix("model.diffusion_model."): np.asarray(v) for k, v in sd.items()}
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"joint_blocks\.(\d+)\.", k)))
    out: StateDict = {}
    used: set[str] = set()

    def take(src: str, dst: str, fn=lambda w: w) -> None:
        if src in sd:
            out[dst] = fn(sd[src])
            used.add(src)

    take("pos_embed", "pos_embed.pos_embed")
    for src, dst in _ORIG_SIMPLE:
        for s in ("weight", "bias"):
            take(f"{src}.{s}", f"{dst}.{s}")
    for s in ("weight", "bias"):
        take(f"final_layer.adaLN_modulation.1.{s}", f"norm_out.linear.{s}", _swap_halves)
    for i in range(layers):
        o, d = f"joint_blocks.{i}", f"transformer_blocks.{i}"
        last = i == layers - 1
        for stream, (q, k, v) in (("x_block", ("to_q", "to_k", "to_v")),
                                  ("context_block", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for s in ("weight", "bias"):
                key = f"{o}.{stream}.attn.qkv.{s}"
                if key in sd:
                    for name, chunk in zip((q, k, v), np.split(sd[key], 3, axis=0)):
                        out[f"{d}.attn.{name}.{s}"] = chunk
                    used.add(key)
                key2 = f"{o}.x_block.attn2.qkv.{s}"
                if stream == "x_block" and key2 in sd:
                    for name, chunk in zip(("to_q", "to_k", "to_v"), np.split(sd[key2], 3, axis=0)):
                        out[f"{d}.attn2.{name}.{s}"] = chunk
                    used.add(key2)
        pairs = [("x_block.attn.ln_q.weight", "attn.norm_q.weight"), ("x_block.attn.ln_k.weight", "attn.norm_k.weight"),
                 ("context_block.attn.ln_q.weight", "attn.norm_added_q.weight"),
                 ("context_block.attn.ln_k.weight", "attn.norm_added_k.weight"),
                 ("x_block.attn2.ln_q.weight", "attn2.norm_q.weight"), ("x_block.attn2.ln_k.weight", "attn2.norm_k.weight")]
        for s in ("weight", "bias"):
            pairs += [(f"x_block.attn.proj.{s}", f"attn.to_out.0.{s}"), (f"x_block.attn2.proj.{s}", f"attn2.to_out.0.{s}"),
                      (f"context_block.attn.proj.{s}", f"attn.to_add_out.{s}"),
                      (f"x_block.adaLN_modulation.1.{s}", f"norm1.linear.{s}"),
                      (f"x_block.mlp.fc1.{s}", f"ff.net.0.proj.{s}"), (f"x_block.mlp.fc2.{s}", f"ff.net.2.{s}"),
                      (f"context_block.mlp.fc1.{s}", f"ff_context.net.0.proj.{s}"),
                      (f"context_block.mlp.fc2.{s}", f"ff_context.net.2.{s}")]
            take(f"{o}.context_block.adaLN_modulation.1.{s}", f"{d}.norm1_context.linear.{s}",
                 _swap_halves if last else (lambda w: w))
        for src, dst in pairs:
            take(f"{o}.{src}", f"{d}.{dst}")
    leftover = sorted(set(sd) - used)
    if leftover:
        raise ConfigError(f"unexpected keys in the original-format checkpoint: {leftover[:20]}")
    return out


def diffusers_to_original(sd: Mapping[str, np.ndarray]) -> StateDict:
    """The inverse of ``original_to_diffusers`` (fuses qkv, swaps the adaLN halves back)."""
    sd = {k: np.asarray(v) for k, v in sd.items()}
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", k)))
    out: StateDict = {}
    if "pos_embed.pos_embed" in sd:
        out["pos_embed"] = sd["pos_embed.pos_embed"]
    for src, dst in _ORIG_SIMPLE:
        for s in ("weight", "bias"):
            if f"{dst}.{s}" in sd:
                out[f"{src}.{s}"] = sd[f"{dst}.{s}"]
    for s in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{s}"] = _swap_halves(sd[f"norm_out.linear.{s}"])
    for i in range(layers):
        o, d = f"joint_blocks.{i}", f"transformer_blocks.{i}"
        last = i == layers - 1
        for s in ("weight", "bias"):
            out[f"{o}.x_block.attn.qkv.{s}"] = np.concatenate([sd[f"{d}.attn.{n}.{s}"] for n in ("to_q", "to_k", "to_v")])
            out[f"{o}.context_block.attn.qkv.{s}"] = np.concatenate(
                [sd[f"{d}.attn.{n}.{s}"] for n in ("add_q_proj", "add_k_proj", "add_v_proj")])
            if f"{d}.attn2.to_q.{s}" in sd:
                out[f"{o}.x_block.attn2.qkv.{s}"] = np.concatenate(
                    [sd[f"{d}.attn2.{n}.{s}"] for n in ("to_q", "to_k", "to_v")])
            ctx = sd[f"{d}.norm1_context.linear.{s}"]
            out[f"{o}.context_block.adaLN_modulation.1.{s}"] = _swap_halves(ctx) if last else ctx
        renames = {"attn.norm_q.weight": "x_block.attn.ln_q.weight", "attn.norm_k.weight": "x_block.attn.ln_k.weight",
                   "attn.norm_added_q.weight": "context_block.attn.ln_q.weight",
                   "attn.norm_added_k.weight": "context_block.attn.ln_k.weight",
                   "attn2.norm_q.weight": "x_block.attn2.ln_q.weight", "attn2.norm_k.weight": "x_block.attn2.ln_k.weight"}
        for s in ("weight", "bias"):
            renames.update({f"attn.to_out.0.{s}": f"x_block.attn.proj.{s}", f"attn2.to_out.0.{s}": f"x_block.attn2.proj.{s}",
                            f"attn.to_add_out.{s}": f"context_block.attn.proj.{s}",
                            f"norm1.linear.{s}": f"x_block.adaLN_modulation.1.{s}",
                            f"ff.net.0.proj.{s}": f"x_block.mlp.fc1.{s}", f"ff.net.2.{s}": f"x_block.mlp.fc2.{s}",
                            f"ff_context.net.0.proj.{s}": f"context_block.mlp.fc1.{s}",
                            f"ff_context.net.2.{s}": f"context_block.mlp.fc2.{s}"})
        for src, dst in renames.items():
            if f"{d}.{src}" in sd:
                out[f"{o}.{dst}"] = sd[f"{d}.{src}"]
    return out


# ------------------------------------------------------------------------------------------------
# One entry point


def config_fields_from_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``MMDiTConfig`` fields of a diffusers ``SD3Transformer2DModel`` from its ``config.json`` (a model folder
    or a pipeline folder's ``transformer/``), without reading the weights: what a config file for fine-tuning
    that checkpoint needs. ``mlp_ratio`` is 4 in every SD3 / SD3.5 release (the config does not record it)."""
    path = os.fspath(folder)
    if os.path.isdir(os.path.join(path, "transformer")):
        path = os.path.join(path, "transformer")
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise ConfigError(f"{path!r} has no config.json: not a diffusers SD3 transformer or pipeline folder")
    with open(cfg_file) as f:
        raw = json.load(f)
    return dict(patch_size=int(raw["patch_size"]), in_channels=int(raw["in_channels"]),
                out_channels=int(raw.get("out_channels") or raw["in_channels"]), num_layers=int(raw["num_layers"]),
                num_heads=int(raw["num_attention_heads"]), head_dim=int(raw["attention_head_dim"]),
                joint_attention_dim=int(raw["joint_attention_dim"]),
                pooled_projection_dim=int(raw["pooled_projection_dim"]), use_pooled=True,
                pos_embed_max_size=int(raw["pos_embed_max_size"]), sample_size=int(raw["sample_size"]),
                qk_norm=raw.get("qk_norm"), dual_attention_layers=tuple(raw.get("dual_attention_layers") or ()))


def load_sd3(source: str | os.PathLike | Mapping[str, Any], dtype: Any = None,
             **overrides: Any) -> tuple[MMDiTConfig, dict[str, Any]]:
    """``(config, variables)`` from a state dict, a ``.safetensors`` file or a local folder.

    A folder may be a diffusers model folder (``config.json`` + ``diffusion_pytorch_model*.safetensors``),
    a pipeline folder with ``transformer/`` inside, or hold one original-format safetensors file.
    ``overrides`` set config fields (e.g. ``dtype="bfloat16"``, ``scan_blocks=True``) or fix ``head_dim``.
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
            if "attention_head_dim" in raw:
                folder_config["head_dim"] = int(raw["attention_head_dim"])
            if "sample_size" in raw:
                folder_config["sample_size"] = int(raw["sample_size"])
        sd = load_state_dict(path)
    if is_original_format(sd):
        sd = original_to_diffusers(sd)
    cfg = infer_config(sd, **{**folder_config, **overrides})
    variables = from_diffusers(sd, cfg, dtype)
    if cfg.scan_blocks:
        variables = stack_blocks(variables, cfg)
    return cfg, variables
