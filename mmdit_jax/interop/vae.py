"""KL-autoencoder checkpoints <-> Flax ``AutoencoderKL`` variables (names and mapping: docs/vae.md). numpy only.

Formats:
* diffusers ``AutoencoderKL`` state dicts (``encoder.down_blocks.{i}.resnets.{j}.conv1.weight`` ...); files
  written by old diffusers versions name the attention ``query / key / value / proj_attn`` (Linear or 1x1 conv
  weights) where current ones write ``to_q / to_k / to_v / to_out.0`` (Linear): both load;
* the original LDM layout (``encoder.down.{i}.block.{j}``, ``nin_shortcut``, ``mid.block_1 / attn_1 / block_2``
  with 1x1-conv attention weights ``q / k / v / proj_out``, ``norm_out``, decoder stages numbered from the
  output end: ``decoder.up.{n-1-i}`` is ``up_blocks.{i}``), as in FLUX's ``ae.safetensors`` and, prefixed
  ``first_stage_model.``, inside single-file SD / SD3 checkpoints.

Entry points: ``load_vae(source, **overrides) -> (VAEConfig, variables)``; ``from_diffusers``, ``to_diffusers``,
``ldm_to_diffusers``, ``diffusers_to_ldm``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from mmdit_jax.checks import ConfigError
from mmdit_jax.interop.safetensors_io import load_state_dict
from mmdit_jax.interop.trees import check_keys_match
from mmdit_jax.models.numerics import DTYPES
from mmdit_jax.models.vae import VAEConfig, abstract_variables

StateDict = dict[str, np.ndarray]

LDM_PREFIXES = ("first_stage_model.", "vae.")   # where single-file checkpoints keep the autoencoder
KNOWN_SCALINGS = "sd3: scaling_factor=1.5305, shift_factor=0.0609; flux: 0.3611, 0.1159; sdxl: 0.13025, None"

# ------------------------------------------------------------------------------------------------
# Flax path <-> diffusers key

# Flax module names for diffusers' one-element lists.
_SINGLE = {"downsample": "downsamplers.0", "upsample": "upsamplers.0", "attention": "attentions.0",
           "to_out": "to_out.0"}


def diffusers_key(path: tuple[str, ...]) -> str:
    """The diffusers key of the parameter at Flax ``path`` (e.g. ``("encoder", "down_blocks_0", "resnets_1",
    "conv1", "kernel")`` -> ``encoder.down_blocks.0.resnets.1.conv1.weight``)."""
    parts = []
    for name in path[:-1]:
        m = re.fullmatch(r"(.+)_(\d+)", name)
        parts.append(f"{m[1]}.{m[2]}" if m else _SINGLE.get(name, name))
    return ".".join(parts + ["bias" if path[-1] == "bias" else "weight"])


def to_flax_layout(w: np.ndarray) -> np.ndarray:
    """A torch weight in Flax's layout: conv ``(O, I, kh, kw) -> (kh, kw, I, O)``, Linear ``(out, in) -> (in, out)``."""
    if w.ndim == 4:
        return w.transpose(2, 3, 1, 0)        # conv (O, I, kh, kw) -> (kh, kw, I, O)
    return w.T if w.ndim == 2 else w          # Linear (out, in) -> Dense (in, out)


def from_flax_layout(w: np.ndarray) -> np.ndarray:
    """The inverse of ``to_flax_layout``."""
    if w.ndim == 4:
        return w.transpose(3, 2, 0, 1)
    return w.T if w.ndim == 2 else w


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(from_flax_layout(np.empty(shape, np.int8)).shape)


def _paths(cfg: VAEConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """diffusers key -> (Flax path, shape in diffusers' layout) of every parameter for ``cfg``."""
    flat = flatten_dict(abstract_variables(cfg)["params"])
    return {diffusers_key(path): (path, _torch_shape(leaf.shape)) for path, leaf in flat.items()}


def expected_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Every diffusers key for ``cfg`` with its shape in diffusers' layout, in a stable order."""
    return {key: shape for key, (_, shape) in _paths(cfg).items()}


# ------------------------------------------------------------------------------------------------
# diffusers <-> Flax

_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _current_attention_names(sd: Mapping[str, np.ndarray]) -> StateDict:
    """Legacy diffusers attention names to current ones; conv-shaped attention weights (C, C, 1, 1) to Linear."""
    out: StateDict = {}
    for key, w in sd.items():
        w = np.asarray(w)
        m = re.fullmatch(r"(.*\.mid_block\.attentions\.0\.)(query|key|value|proj_attn)\.(weight|bias)", key)
        if m:
            key = f"{m[1]}{_LEGACY_ATTENTION[m[2]]}.{m[3]}"
        if re.search(r"\.mid_block\.attentions\.0\.(to_[qkv]|to_out\.0)\.weight$", key) and w.ndim > 2:
            w = w.reshape(w.shape[0], w.shape[1])
        out[key] = w
    return out


def from_diffusers(sd: Mapping[str, np.ndarray], cfg: VAEConfig, dtype: Any = None) -> dict[str, Any]:
    """Flax variables ``{"params": ...}`` from a diffusers state dict (current or legacy attention names).

    Raises ConfigError naming missing keys, unexpected keys, or the first key whose shape does not fit ``cfg``.
    """
    sd = _current_attention_names(sd)
    paths = _paths(cfg)
    check_keys_match("VAE config", paths, sd)
    dtype = DTYPES[cfg.param_dtype] if dtype is None else dtype
    params = {}
    for key, (path, shape) in paths.items():
        if tuple(sd[key].shape) != shape:
            raise ConfigError(f"checkpoint key {key} has shape {tuple(sd[key].shape)}, expected {shape} for the "
                              "VAE config")
        params[path] = to_flax_layout(sd[key]).astype(dtype)
    return {"params": unflatten_dict(params)}


def to_diffusers(cfg: VAEConfig, variables: Mapping[str, Any]) -> StateDict:
    """diffusers state dict (numpy, current names) from Flax variables; loads into diffusers' ``AutoencoderKL``."""
    flat = flatten_dict(dict(variables["params"]))
    expected = expected_shapes(cfg)
    sd = {diffusers_key(path): from_flax_layout(np.asarray(w)) for path, w in flat.items()}
    if set(sd) != set(expected):
        missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
        raise ConfigError(f"Flax variables do not match the VAE config: missing {missing[:10]}, "
                          f"unexpected {unexpected[:10]}")
    return {k: sd[k] for k in expected}


# ------------------------------------------------------------------------------------------------
# LDM <-> diffusers


def _count_indices(sd: Mapping[str, Any], pattern: str) -> int:
    """1 + the largest index captured by ``pattern`` among the keys (0 if none)."""
    indices = [int(m[1]) for k in sd if (m := re.match(pattern, k))]
    return 1 + max(indices) if indices else 0


def _rename(key: str, rules: list[tuple[str, Any]]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _attention_rules(names: dict[str, str], prefix_from: str, prefix_to: str) -> list[tuple[str, Any]]:
    return [(rf"\.{prefix_from}\.{re.escape(a)}\.", f".{prefix_to}.{b}.") for a, b in names.items()]


_ATTN_D2L = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_to_ldm(sd: Mapping[str, np.ndarray], prefix: str = "") -> StateDict:
    """diffusers names -> the original LDM layout (attention weights as 1x1 convs ``(C, C, 1, 1)``), each key
    prefixed with ``prefix`` (``"first_stage_model."`` for a single-file SD3 checkpoint)."""
    n = _count_indices(sd, r"decoder\.up_blocks\.(\d+)\.")
    rules: list[tuple[str, Any]] = [
        (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample."),
        (r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m[1]) + 1}."),
        (r"\.conv_shortcut\.", ".nin_shortcut."),
        *_attention_rules(_ATTN_D2L, r"mid_block\.attentions\.0", "mid.attn_1"),
    ]
    out: StateDict = {}
    for key, w in _current_attention_names(sd).items():
        new = _rename(key, rules)
        if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", new):
            w = w.reshape(*w.shape, 1, 1)
        out[prefix + new] = w
    return out


def ldm_to_diffusers(sd: Mapping[str, np.ndarray]) -> StateDict:
    """The original LDM layout (optionally ``first_stage_model.``- or ``vae.``-prefixed) -> diffusers names."""
    sd = strip_prefix(sd)
    n = _count_indices(sd, r"decoder\.up\.(\d+)\.")
    rules: list[tuple[str, Any]] = [
        (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
        (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
        (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
        (r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{n - 1 - int(m[1])}.resnets."),
        (r"^decoder\.up\.(\d+)\.upsample\.", lambda m: f"decoder.up_blocks.{n - 1 - int(m[1])}.upsamplers.0."),
        (r"\.mid\.block_(\d+)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
        *_attention_rules({b: a for a, b in _ATTN_D2L.items()}, r"mid\.attn_1", "mid_block.attentions.0"),
    ]
    out: StateDict = {}
    for key, w in sd.items():
        w = np.asarray(w)
        new = _rename(key, rules)
        if re.search(r"\.mid_block\.attentions\.0\.(to_[qkv]|to_out\.0)\.weight$", new) and w.ndim > 2:
            w = w.reshape(w.shape[0], w.shape[1])
        out[new] = w
    return out


def strip_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    """The autoencoder's keys of a single-file checkpoint, prefix removed; other state dicts unchanged."""
    for prefix in LDM_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def is_ldm_format(sd: Mapping[str, Any]) -> bool:
    return any(re.match(r"(encoder|decoder)\.(down|up|mid)\.", k) for k in sd)


# ------------------------------------------------------------------------------------------------
# Config inference and the one entry point

# config.json fields the weights cannot tell (the architecture is read from the weights).
_JSON_FIELDS = ("norm_num_groups", "scaling_factor", "shift_factor")


def _need(sd: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in sd:
        raise ConfigError(f"checkpoint is missing key {key}, needed to infer the VAE architecture")
    return sd[key]


def infer_config(sd: Mapping[str, np.ndarray], **fields: Any) -> VAEConfig:
    """Architecture from a diffusers state dict's shapes; ``fields`` add or override the rest.

    ``scaling_factor`` and ``shift_factor`` are not in the weights: they must come from ``fields`` (config.json
    or the caller). ``norm_num_groups`` is not either; it defaults to 32, as in every released model.
    """
    sd = _current_attention_names(sd)
    blocks = _count_indices(sd, r"encoder\.down_blocks\.(\d+)\.")
    if not blocks:
        raise ConfigError("checkpoint has no encoder.down_blocks.* keys: not an AutoencoderKL state dict")
    inferred = dict(
        in_channels=int(_need(sd, "encoder.conv_in.weight").shape[1]),
        out_channels=int(_need(sd, "decoder.conv_out.weight").shape[0]),
        latent_channels=int(_need(sd, "decoder.conv_in.weight").shape[1]),
        block_out_channels=tuple(int(_need(sd, f"encoder.down_blocks.{i}.resnets.0.conv1.weight").shape[0])
                                 for i in range(blocks)),
        layers_per_block=_count_indices(sd, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        use_quant_conv="quant_conv.weight" in sd,
        use_post_quant_conv="post_quant_conv.weight" in sd,
        mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in sd,
    )
    for field in ("scaling_factor", "shift_factor"):
        if field not in fields:
            raise ConfigError(f"vae.{field} is not stored in the weights and no config.json gives it: pass it, "
                              f"e.g. load_vae(path, scaling_factor=..., shift_factor=...) ({KNOWN_SCALINGS})")
    return VAEConfig.from_dict({**inferred, **fields})


def _read_folder_config(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    for field, expected in (("act_fn", "silu"), ("norm_type", "group")):
        if raw.get(field, expected) != expected:
            raise ConfigError(f"{path}/config.json has {field}={raw[field]!r}; only {expected!r} is implemented")
    for field in ("down_block_types", "up_block_types"):
        kinds = set(raw.get(field, ()))
        if kinds - {"DownEncoderBlock2D", "UpDecoderBlock2D"}:
            raise ConfigError(f"{path}/config.json has {field}={raw[field]}; only DownEncoderBlock2D / "
                              "UpDecoderBlock2D are implemented")
    return {f: raw[f] for f in _JSON_FIELDS if f in raw}


def load_vae(source: str | os.PathLike | Mapping[str, Any], dtype: Any = None,
             **overrides: Any) -> tuple[VAEConfig, dict[str, Any]]:
    """``(config, variables)`` from a state dict, a ``.safetensors`` file or a local folder.

    A folder is a diffusers ``save_pretrained`` folder (``config.json`` + safetensors) or a pipeline folder with
    ``vae/`` inside; a file or state dict may be in the diffusers or the LDM layout, whole or inside a single-file
    checkpoint (``first_stage_model.`` / ``vae.`` keys; the rest is ignored). The architecture comes from the
    weights, ``norm_num_groups`` / ``scaling_factor`` / ``shift_factor`` from config.json; ``overrides`` set any
    config field (e.g. ``dtype="bfloat16"``, or the scaling of a file without config.json).
    """
    fields: dict[str, Any] = {}
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        path = os.fspath(source)
        if os.path.isdir(os.path.join(path, "vae")):
            path = os.path.join(path, "vae")
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
            fields = _read_folder_config(path)
        sd = load_state_dict(path)
    sd = strip_prefix(sd)
    sd = ldm_to_diffusers(sd) if is_ldm_format(sd) else _current_attention_names(sd)
    cfg = infer_config(sd, **{**fields, **overrides})
    return cfg, from_diffusers(sd, cfg, dtype)
