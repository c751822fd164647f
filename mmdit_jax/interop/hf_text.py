"""Hugging Face text-encoder folders (``config.json`` + safetensors, sharded or not) -> Flax CLIP / T5. No torch.

Names follow transformers' ``CLIPTextModelWithProjection`` / ``CLIPTextModel`` and ``T5EncoderModel``.
Every checkpoint key must map to a parameter of the module and every parameter must be filled; anything
else is an error that lists the keys.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from mmdit_jax.interop.safetensors_io import load_state_dict
from mmdit_jax.models.text.clip import CLIPTextConfig, CLIPTextModel
from mmdit_jax.models.text.llama import LlamaConfig, LlamaModel
from mmdit_jax.models.text.t5 import FEED_FORWARD_PROJS, T5Config, T5Encoder
from mmdit_jax.checks import ConfigError

IGNORED = re.compile(r".*position_ids$")


def _clip_path(key: str) -> tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]] | None:
    key = key.removeprefix("text_model.")
    ident = lambda w: w  # noqa: E731
    if key == "embeddings.token_embedding.weight":
        return ("token_embedding", "embedding"), ident
    if key == "embeddings.position_embedding.weight":
        return ("position_embedding",), ident
    if key == "text_projection.weight":
        return ("text_projection", "kernel"), np.transpose
    if m := re.fullmatch(r"final_layer_norm\.(weight|bias)", key):
        return ("final_layer_norm", "scale" if m[1] == "weight" else "bias"), ident
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(self_attn\.|mlp\.)?(\w+)\.(weight|bias)", key):
        layer, name, kind = f"layers_{m[1]}", m[3], m[4]
        if name.startswith("layer_norm"):
            return (layer, name, "scale" if kind == "weight" else "bias"), ident
        return (layer, name, "kernel" if kind == "weight" else "bias"), np.transpose if kind == "weight" else ident
    return None


def _t5_path(key: str) -> tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]] | None:
    ident = lambda w: w  # noqa: E731
    if key in ("shared.weight", "encoder.embed_tokens.weight"):
        return ("shared", "embedding"), ident
    if key == "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
        return ("relative_attention_bias",), ident
    if key == "encoder.final_layer_norm.weight":
        return ("final_layer_norm", "scale"), ident
    if m := re.fullmatch(r"encoder\.block\.(\d+)\.layer\.([01])\.(SelfAttention\.|DenseReluDense\.)?(\w+)\.weight", key):
        block, sub, name = f"block_{m[1]}", m[2], m[4]
        if name == "layer_norm":
            return (block, "attn_norm" if sub == "0" else "ff_norm", "scale"), ident
        return (block, name, "kernel"), np.transpose
    return None


def _convert(sd: dict[str, np.ndarray], path_fn, module: nn.Module, ids_len: int, dtype: Any) -> dict[str, Any]:
    flat, unexpected = {}, []
    for key, w in sd.items():
        if IGNORED.match(key):
            continue
        mapped = path_fn(key)
        if mapped is None:
            unexpected.append(key)
            continue
        path, fn = mapped
        flat[path] = np.asarray(fn(np.asarray(w)), dtype=dtype)
    abstract = flatten_dict(jax.eval_shape(module.init, jax.random.PRNGKey(0),
                                           jnp.zeros((1, ids_len), jnp.int32))["params"])
    missing = sorted("/".join(p) for p in set(abstract) - set(flat))
    unexpected += sorted("/".join(p) for p in set(flat) - set(abstract))
    if missing or unexpected:
        raise ConfigError(f"{type(module).__name__} checkpoint mismatch: missing {missing[:20]}, unexpected {unexpected[:20]}")
    for path, leaf in abstract.items():
        if flat[path].shape != leaf.shape:
            raise ConfigError(f"{type(module).__name__} parameter {'/'.join(path)} has shape {flat[path].shape}, "
                              f"expected {leaf.shape} from config.json")
    return {"params": unflatten_dict(flat)}


def _read_config(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"no config.json in text-encoder folder {folder!r}")
    with open(path) as f:
        raw = json.load(f)
    return raw.get("text_config", raw)


def clip_config_from_hf(raw: dict[str, Any], has_projection: bool) -> CLIPTextConfig:
    cfg = CLIPTextConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"], num_heads=raw["num_attention_heads"],
        max_position_embeddings=raw["max_position_embeddings"],
        projection_dim=raw.get("projection_dim", raw["hidden_size"]) if has_projection else None,
        hidden_act=raw.get("hidden_act", "quick_gelu"), layer_norm_eps=raw.get("layer_norm_eps", 1e-5),
        eos_token_id=raw.get("eos_token_id", 2))
    cfg.validate()
    return cfg


def load_clip(folder: str, dtype: Any = np.float32) -> tuple[CLIPTextConfig, dict[str, Any]]:
    """``(config, variables)`` of a CLIP text encoder from a local Hugging Face folder."""
    sd = load_state_dict(folder)
    cfg = clip_config_from_hf(_read_config(folder), has_projection="text_projection.weight" in sd)
    return cfg, _convert(sd, _clip_path, CLIPTextModel(cfg), cfg.max_position_embeddings, dtype)


def t5_config_from_hf(raw: dict[str, Any]) -> T5Config:
    # transformers' default is "relu" (v1.0); v1.1 configs all say "gated-gelu"
    proj = raw.get("feed_forward_proj", "relu")
    if proj not in FEED_FORWARD_PROJS:
        raise ConfigError(f"T5 feed_forward_proj={proj!r} is not supported; choose one of {list(FEED_FORWARD_PROJS)} "
                          "(T5 v1.1: 'gated-gelu', T5 v1.0: 'relu')")
    cfg = T5Config(vocab_size=raw["vocab_size"], d_model=raw["d_model"], d_kv=raw["d_kv"], d_ff=raw["d_ff"],
                   num_layers=raw["num_layers"], num_heads=raw["num_heads"],
                   relative_attention_num_buckets=raw.get("relative_attention_num_buckets", 32),
                   relative_attention_max_distance=raw.get("relative_attention_max_distance", 128),
                   layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-6), feed_forward_proj=proj)
    cfg.validate()
    return cfg


def load_t5(folder: str, dtype: Any = np.float32) -> tuple[T5Config, dict[str, Any]]:
    """``(config, variables)`` of a T5 encoder (v1.1 or v1.0) from a local Hugging Face folder."""
    sd = load_state_dict(folder)
    if "shared.weight" in sd:
        sd.pop("encoder.embed_tokens.weight", None)  # tied copy of shared.weight
    cfg = t5_config_from_hf(_read_config(folder))
    return cfg, _convert(sd, _t5_path, T5Encoder(cfg), 8, dtype)


def _clip_key(path: tuple[str, ...]) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """Inverse of ``_clip_path``: Flax parameter path -> transformers key (and the kernel transpose)."""
    ident = lambda w: w  # noqa: E731
    if path == ("token_embedding", "embedding"):
        return "text_model.embeddings.token_embedding.weight", ident
    if path == ("position_embedding",):
        return "text_model.embeddings.position_embedding.weight", ident
    if path == ("text_projection", "kernel"):
        return "text_projection.weight", np.transpose
    if path[0] == "final_layer_norm":
        return f"text_model.final_layer_norm.{'weight' if path[1] == 'scale' else 'bias'}", ident
    layer, name, kind = path
    index = layer.removeprefix("layers_")
    group = "" if name.startswith("layer_norm") else ("mlp." if name.startswith("fc") else "self_attn.")
    suffix = "bias" if kind == "bias" else "weight"
    return f"text_model.encoder.layers.{index}.{group}{name}.{suffix}", np.transpose if kind == "kernel" else ident


def save_clip(folder: str, config: CLIPTextConfig, variables: Any, tokenizer_folder: str | None = None) -> None:
    """Write a CLIP text encoder as a transformers ``CLIPTextModelWithProjection`` folder (config.json + safetensors).

    ``tokenizer_folder``: its files are copied alongside, so the folder is both ``path`` and ``tokenizer_path``.
    """
    import shutil

    from mmdit_jax.interop.safetensors_io import save_state_dict

    os.makedirs(folder, exist_ok=True)
    sd = {}
    for path, w in flatten_dict(variables["params"]).items():
        key, fn = _clip_key(path)
        sd[key] = np.ascontiguousarray(fn(np.asarray(w, np.float32)))
    save_state_dict(sd, os.path.join(folder, "model.safetensors"))
    raw = {"architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model",
           "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
           "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_layers,
           "num_attention_heads": config.num_heads, "max_position_embeddings": config.max_position_embeddings,
           "projection_dim": config.projection_dim or config.hidden_size, "hidden_act": config.hidden_act,
           "layer_norm_eps": config.layer_norm_eps, "eos_token_id": config.eos_token_id,
           "bos_token_id": 0, "pad_token_id": 1}
    with open(os.path.join(folder, "config.json.tmp"), "w") as f:
        json.dump(raw, f, indent=1)
    os.replace(os.path.join(folder, "config.json.tmp"), os.path.join(folder, "config.json"))
    if tokenizer_folder:
        for name in os.listdir(tokenizer_folder):
            shutil.copyfile(os.path.join(tokenizer_folder, name), os.path.join(folder, name))


# ------------------------------------------------------------------------------------------------
# Llama (transformers' ``LlamaModel`` / ``LlamaForCausalLM``; the LM head is not part of the encoder)


def _llama_path(key: str) -> tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]] | None:
    key = key.removeprefix("model.")
    ident = lambda w: w  # noqa: E731
    if key == "embed_tokens.weight":
        return ("embed_tokens", "embedding"), ident
    if key == "norm.weight":
        return ("norm", "scale"), ident
    if m := re.fullmatch(r"layers\.(\d+)\.(self_attn\.|mlp\.)?(\w+)\.(weight|bias)", key):
        layer, name, kind = f"layers_{m[1]}", m[3], m[4]
        if name.endswith("layernorm"):
            return (layer, name, "scale"), ident
        return (layer, name, "kernel" if kind == "weight" else "bias"), np.transpose if kind == "weight" else ident
    return None


def llama_config_from_hf(raw: dict[str, Any]) -> LlamaConfig:
    """``LlamaConfig`` from a transformers ``config.json``: RoPE from ``rope_parameters`` (transformers 5) or
    ``rope_theta`` + ``rope_scaling`` (older files)."""
    rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ConfigError(f"Llama rope_type={rope_type!r} is not supported; choose 'default' or 'llama3'")
    if raw.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"Llama hidden_act={raw['hidden_act']!r} is not supported; Llama uses 'silu'")
    scaling = {}
    if rope_type == "llama3":
        scaling = dict(rope_factor=float(rope["factor"]), rope_low_freq_factor=float(rope["low_freq_factor"]),
                       rope_high_freq_factor=float(rope["high_freq_factor"]),
                       rope_original_max_positions=int(rope["original_max_position_embeddings"]))
    cfg = LlamaConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"], num_heads=raw["num_attention_heads"],
        num_kv_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"], head_dim=raw.get("head_dim"),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
        rope_type=rope_type, attention_bias=bool(raw.get("attention_bias", False)),
        mlp_bias=bool(raw.get("mlp_bias", False)), **scaling)
    cfg.validate()
    return cfg


def llama_from_state_dict(sd: dict[str, np.ndarray], cfg: LlamaConfig, dtype: Any = np.float32) -> dict[str, Any]:
    """Flax variables of ``LlamaModel(cfg)`` from a transformers ``LlamaModel`` / ``LlamaForCausalLM`` state dict
    (the ``lm_head`` and rotary buffers are dropped)."""
    sd = {k: v for k, v in sd.items() if k != "lm_head.weight" and not k.endswith("rotary_emb.inv_freq")}
    return _convert(sd, _llama_path, LlamaModel(cfg), 8, dtype)


def load_llama(folder: str, dtype: Any = np.float32) -> tuple[LlamaConfig, dict[str, Any]]:
    """``(config, variables)`` of a Llama text encoder from a local Hugging Face folder."""
    sd = load_state_dict(folder)
    cfg = llama_config_from_hf(_read_config(folder))
    return cfg, llama_from_state_dict(sd, cfg, dtype)
