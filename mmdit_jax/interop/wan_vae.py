"""Wan 2.1 VAE checkpoints <-> Flax ``AutoencoderKLWan`` variables (names and mapping: docs/wan_vae.md). numpy only.

diffusers ``AutoencoderKLWan`` state dicts: key ``a.b_i.c.weight`` is Flax path ``(a, b_i, c, kernel)`` (the 2D
VAE's rule, ``interop.vae.diffusers_key``), except that the RMS scales are ``gamma`` on both sides. Layouts:

    Conv3d   (O, I, k_t, k_h, k_w) -> (k_t, k_h, k_w, I, O)
    Conv2d   (O, I, k_h, k_w)      -> (k_h, k_w, I, O)          (resample_1, to_qkv, proj)
    gamma    (C, 1, 1[, 1])        -> (C,)                      (two trailing ones for the attention's norm)

Entry points: ``load_wan_vae(source, **overrides) -> (WanVAEConfig, variables)``; ``from_diffusers``,
``to_diffusers``, ``config_from_diffusers``, ``diffusers_config``, ``save_wan_vae`` (a diffusers folder);
(The autoencoder as a latent codec: ``mmdit_jax.components.codec.WanCodec``.)
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from mmdit_jax.checks import ConfigError
from mmdit_jax.interop.safetensors_io import load_state_dict, save_state_dict
from mmdit_jax.interop.trees import check_keys_match
from mmdit_jax.interop.vae import diffusers_key, from_flax_layout, to_flax_layout
from mmdit_jax.models.numerics import DTYPES
from mmdit_jax.models.wan_vae import (
    WanVAEConfig,
    abstract_variables,
)

StateDict = dict[str, np.ndarray]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# ------------------------------------------------------------------------------------------------
# Flax path <-> diffusers key


def wan_key(path: tuple[str, ...]) -> str:
    """The diffusers key of the parameter at Flax ``path`` (``("encoder", "down_blocks_0", "norm1", "gamma")`` ->
    ``encoder.down_blocks.0.norm1.gamma``)."""
    key = diffusers_key(path)
    return key[: -len("weight")] + "gamma" if path[-1] == "gamma" else key


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] == "gamma":        # (C, 1, 1) on a per-frame attention input (B T, C, H, W), else (C, 1, 1, 1)
        return (*shape, 1, 1) if "attentions_0" in path else (*shape, 1, 1, 1)
    if len(shape) == 5:
        return (shape[4], shape[3], *shape[:3])
    return tuple(from_flax_layout(np.empty(shape, np.int8)).shape)


def _wanto_flax_layout(w: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    if path[-1] == "gamma":
        return w.reshape(w.shape[0])
    return w.transpose(2, 3, 4, 1, 0) if w.ndim == 5 else to_flax_layout(w)


def _wanfrom_flax_layout(w: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    if path[-1] == "gamma":
        return w.reshape(_torch_shape(path, w.shape))
    return w.transpose(4, 3, 0, 1, 2) if w.ndim == 5 else from_flax_layout(w)


def _paths(cfg: WanVAEConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """diffusers key -> (Flax path, shape in diffusers' layout) of every parameter for ``cfg``."""
    flat = flatten_dict(abstract_variables(cfg)["params"])
    return {wan_key(path): (path, _torch_shape(path, leaf.shape)) for path, leaf in flat.items()}


def expected_shapes(cfg: WanVAEConfig) -> dict[str, tuple[int, ...]]:
    """Every diffusers key for ``cfg`` with its shape in diffusers' layout."""
    return {key: shape for key, (_, shape) in _paths(cfg).items()}


# ------------------------------------------------------------------------------------------------
# diffusers <-> Flax


def from_diffusers(sd: Mapping[str, np.ndarray], cfg: WanVAEConfig, dtype: Any = None) -> dict[str, Any]:
    """Flax variables ``{"params": ...}`` from a diffusers ``AutoencoderKLWan`` state dict.

    Raises ConfigError naming missing keys, unexpected keys, or the first key whose shape does not fit ``cfg``.
    """
    paths = _paths(cfg)
    check_keys_match("Wan VAE config", paths, sd)
    dtype = DTYPES[cfg.param_dtype] if dtype is None else dtype
    params = {}
    for key, (path, shape) in paths.items():
        w = np.asarray(sd[key])
        if tuple(w.shape) != shape:
            raise ConfigError(f"checkpoint key {key} has shape {tuple(w.shape)}, expected {shape} for the Wan VAE "
                              "config")
        params[path] = _wanto_flax_layout(w, path).astype(dtype)
    return {"params": unflatten_dict(params)}


def to_diffusers(cfg: WanVAEConfig, variables: Mapping[str, Any]) -> StateDict:
    """diffusers state dict (numpy) from Flax variables; loads into diffusers' ``AutoencoderKLWan``."""
    flat = flatten_dict(dict(variables["params"]))
    expected = expected_shapes(cfg)
    sd = {wan_key(path): _wanfrom_flax_layout(np.asarray(w), path) for path, w in flat.items()}
    if set(sd) != set(expected):
        missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
        raise ConfigError(f"Flax variables do not match the Wan VAE config: missing {missing[:10]}, "
                          f"unexpected {unexpected[:10]}")
    return {k: sd[k] for k in expected}


# ------------------------------------------------------------------------------------------------
# config.json <-> WanVAEConfig

# diffusers field -> ours, where the names differ
_RENAMED = {"temperal_downsample": "temporal_downsample"}
# diffusers fields that carry no architecture here: metadata, or Wan 2.2 options checked below
_METADATA = {"scale_factor_temporal", "scale_factor_spatial", "_class_name", "_diffusers_version", "_name_or_path",
             "_use_default_values", "is_residual", "patch_size"}


def config_from_diffusers(raw: Mapping[str, Any], **overrides: Any) -> WanVAEConfig:
    """A ``WanVAEConfig`` from an ``AutoencoderKLWan`` config.json dict (missing fields: diffusers' defaults, which
    are ours); ``overrides`` set any of our fields. Wan 2.2 options (``is_residual``, ``patch_size``) are refused."""
    if raw.get("is_residual"):
        raise ConfigError("config.json has is_residual=true (the Wan 2.2 VAE); only the Wan 2.1 VAE is implemented")
    if raw.get("patch_size") is not None:
        raise ConfigError(f"config.json has patch_size={raw['patch_size']!r} (the Wan 2.2 VAE); only the Wan 2.1 VAE "
                          "is implemented")
    fields = {_RENAMED.get(k, k): v for k, v in raw.items() if k not in _METADATA}
    return WanVAEConfig.from_dict({**fields, **overrides})


def diffusers_config(cfg: WanVAEConfig) -> dict[str, Any]:
    """The config.json of ``cfg`` as diffusers writes it (``AutoencoderKLWan.from_config`` reads it)."""
    return {"_class_name": "AutoencoderKLWan", "base_dim": cfg.base_dim, "decoder_base_dim": cfg.decoder_base_dim,
            "z_dim": cfg.z_dim, "dim_mult": list(cfg.dim_mult), "num_res_blocks": cfg.num_res_blocks,
            "attn_scales": list(cfg.attn_scales), "temperal_downsample": list(cfg.temporal_downsample),
            "dropout": cfg.dropout, "latents_mean": list(cfg.latents_mean), "latents_std": list(cfg.latents_std),
            "is_residual": False, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "patch_size": None, "scale_factor_temporal": cfg.temporal_downscale,
            "scale_factor_spatial": cfg.spatial_downscale}


# ------------------------------------------------------------------------------------------------
# Folders


def load_wan_vae(source: str | os.PathLike | Mapping[str, Any], dtype: Any = None,
                 **overrides: Any) -> tuple[WanVAEConfig, dict[str, Any]]:
    """``(config, variables)`` from a state dict, a ``.safetensors`` file or a local folder.

    A folder is a diffusers ``save_pretrained`` folder (``config.json`` + safetensors) or a pipeline folder with
    ``vae/`` inside; its config.json gives the architecture. A file or state dict without one is read with the
    released Wan 2.1 architecture (``WanVAEConfig()``); ``overrides`` set any config field either way.
    """
    raw: dict[str, Any] = {}
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        path = os.fspath(source)
        if os.path.isdir(os.path.join(path, "vae")):
            path = os.path.join(path, "vae")
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
            with open(os.path.join(path, "config.json")) as f:
                raw = json.load(f)
            if raw.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
                raise ConfigError(f"{path}/config.json describes a {raw['_class_name']}, not an AutoencoderKLWan")
        sd = load_state_dict(path)
    cfg = config_from_diffusers(raw, **overrides)
    return cfg, from_diffusers(sd, cfg, dtype)


def save_wan_vae(cfg: WanVAEConfig, variables: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a diffusers ``AutoencoderKLWan`` folder (config.json + float32 safetensors) that
    ``AutoencoderKLWan.from_pretrained`` and ``load_wan_vae`` read."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    sd = {k: np.asarray(v, np.float32) for k, v in to_diffusers(cfg, variables).items()}
    save_state_dict(sd, os.path.join(path, WEIGHTS_NAME))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(diffusers_config(cfg), f, indent=2)


