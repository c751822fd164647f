"""Prompts -> conditioning bundles: text encoders built from a config, the CFG negative and pooled steering.

    cond     = {"context": c (B, T, d_ctx), "pooled": y (B, d_pool)}        encode(prompts)
    negative = zeros like cond ("null": every encoder dropped, what a model trained here saw as unconditional)
             | encode([""] * B) ("empty_prompt": diffusers' SD3 default, for released checkpoints)
    steering = {"pooled_steering": (y(p+), y(p-), w (B,))}                    y(p) + w (y(p+) - y(p-))

The trainer (caption-embedding cache, encoder dropout) and every pipeline build their text path here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError, check_choice
from mmdit_jax.models.text.clip import CLIPTextModel
from mmdit_jax.models.text.conditioning import (
    Encoder,
    SD3TextEncoders,
    drop_encoders,
    text_presets,
)
from mmdit_jax.models.text.t5 import T5Encoder
from mmdit_jax.models.text.tokenizers import PromptTokenizer

Array = jax.Array
NEGATIVES = ("null", "empty_prompt")


def encoder_from_folder(model_folder: str, tokenizer: PromptTokenizer, kind: str, field: str) -> Encoder:
    """A frozen encoder from a local Hugging Face folder (``kind`` "clip" | "t5") with its tokenizer; ``field``
    names the setting in errors (a vocabulary smaller than the tokenizer's would index out of range)."""
    from mmdit_jax.interop.hf_text import load_clip, load_t5

    model_cfg, variables = (load_clip if kind == "clip" else load_t5)(model_folder)
    return _checked_encoder(model_cfg, variables, tokenizer, field)


def _checked_encoder(model_cfg: Any, variables: Any, tokenizer: PromptTokenizer, field: str) -> Encoder:
    if model_cfg.vocab_size < len(tokenizer.tokenizer):
        raise ConfigError(f"{field}: tokenizer has {len(tokenizer.tokenizer)} tokens but the encoder's "
                          f"vocab_size is {model_cfg.vocab_size}")
    return Encoder(model_cfg, variables, tokenizer)


def _build_encoder(cfg: Any, kind: str, key: Array) -> Encoder:
    tok_folder = cfg.get("tokenizer_path") or None
    if cfg.get("path") and not tok_folder:
        raise ConfigError(f"text.{kind}: path={cfg.path!r} is set, so tokenizer_path must point to that encoder's "
                          "tokenizer folder (the built-in tokenizer only fits the built-in encoders)")
    tokenizer = (PromptTokenizer(tok_folder, kind, cfg.max_length) if tok_folder
                 else PromptTokenizer.default(kind, cfg.max_length))
    if cfg.get("path"):
        return encoder_from_folder(cfg.path, tokenizer, kind, f"text.{kind}")
    presets = text_presets()
    check_choice(f"text.{kind}.preset", cfg.preset, presets)
    model_cfg = presets[cfg.preset]
    module = CLIPTextModel(model_cfg) if kind == "clip" else T5Encoder(model_cfg)
    variables = module.init(key, jnp.zeros((1, cfg.max_length), jnp.int32))
    return _checked_encoder(model_cfg, variables, tokenizer, f"text.{kind}")


def sd3_text_encoders_from_config(config: Any, key: Array) -> SD3TextEncoders:
    """CLIP-L, CLIP-G and (if enabled) T5 from a ``text`` section (configs/text.py): local folders or presets
    (a preset's random weights are drawn from ``key``)."""
    keys = jax.random.split(key, 3)
    clip_l = _build_encoder(config.clip_l, "clip", keys[0])
    clip_g = _build_encoder(config.clip_g, "clip", keys[1])
    t5 = _build_encoder(config.t5, "t5", keys[2]) if config.t5.enabled else None
    return SD3TextEncoders(clip_l, clip_g, t5, config.joint_dim, config.t5.max_length)


@dataclasses.dataclass
class TextConditioner:
    """SD3's text path: ``encode(prompts)``, ``negative(...)``, ``steering(...)`` and the training dropout."""

    encoders: SD3TextEncoders
    config: Any            # the ``text`` section it was built from (part of the embedding-cache fingerprint)

    @classmethod
    def from_config(cls, text_config: Any, key: Array) -> "TextConditioner":
        return cls(sd3_text_encoders_from_config(text_config, key), text_config)

    def encode(self, prompts: Sequence[str]) -> dict[str, Array]:
        """``{"context": (B, T, d_ctx), "pooled": (B, d_pool)}`` for a list of prompts."""
        c, y = self.encoders.encode(list(prompts))
        return {"context": c, "pooled": y}

    def negative(self, kind: str, cond: dict[str, Array]) -> dict[str, Array]:
        """The unconditional branch of classifier-free guidance for ``cond`` (module docstring)."""
        check_choice("sample.negative", kind, NEGATIVES)
        if kind == "null":
            return {k: jnp.zeros_like(cond[k]) for k in ("context", "pooled")}
        return self.encode([""] * cond["context"].shape[0])

    def steering(self, positive: Sequence[str], negative: Sequence[str], weight: float) -> dict[str, Any]:
        """``{"pooled_steering": (y(p+), y(p-), w (B,))}``, one positive and one negative prompt per example."""
        if len(positive) != len(negative):
            raise ConfigError(f"steering needs as many positive as negative prompts, got {len(positive)} and "
                              f"{len(negative)}")
        y_plus = self.encoders.encode(list(positive))[1]
        y_minus = self.encoders.encode(list(negative))[1]
        return {"pooled_steering": (y_plus, y_minus, jnp.full((len(positive),), weight, jnp.float32))}

    def dropout(self, drop_probs: Sequence[float]) -> Callable[[Array, dict[str, Array]], dict[str, Array]]:
        """``drop(key, cond) -> cond`` zeroing each encoder's part independently per example (CFG training)."""
        probs = tuple(float(p) for p in drop_probs)
        widths, clip_tokens = self.encoders.widths, self.config.clip_l.max_length

        def drop(key: Array, cond: dict[str, Array]) -> dict[str, Array]:
            c, y = drop_encoders(key, cond["context"], cond["pooled"], widths, clip_tokens, probs)
            return {**cond, "context": c, "pooled": y}

        return drop

    def with_clip_params(self, clip_params: dict[str, Any]) -> "TextConditioner":
        """This text path with the CLIP towers' variables replaced (a text-encoder fine-tune's)."""
        return dataclasses.replace(self, encoders=self.encoders.with_clip_params(clip_params))

    def fingerprint_parts(self) -> list[Any]:
        """What determines the embeddings: the encoders' weights and the text config."""
        enc = self.encoders
        return [enc.clip_l.variables, enc.clip_g.variables, enc.t5.variables if enc.t5 else None,
                self.config.to_json_best_effort(sort_keys=True)]
