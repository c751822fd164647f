"""Text stacks: prompts -> conditioning bundles, by name, from a config (training) or a pipeline folder.

    cond     = {"context": c (B, T, d_ctx), "pooled": y (B, d_pool)}        stack.encode(prompts)
    negative = zeros like cond ("null": every encoder dropped, what a model trained here saw as unconditional)
             | encode([""] * B) ("empty_prompt": diffusers' default, for released checkpoints)
    steering = {"pooled_steering": (y(p+), y(p-), w (B,))}                    y(p) + w (y(p+) - y(p-))

``TEXT_STACKS`` names the stacks a family can read (``Family.text_stack``): ``sd3`` (CLIP-L + CLIP-G + optional
T5, SD3 / SD3.5) and ``flux`` (CLIP-L pooled + T5, FLUX.1); each entry says which pipeline-folder components it
reads and builds its encoders from them. ``register_text_stack`` adds one from outside the package. The trainer
(caption-embedding cache, encoder dropout) and every pipeline build their text path here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError, check_choice, check_positive_int
from mmdit_jax.models.text.clip import CLIPTextModel
from mmdit_jax.models.text.conditioning import (
    Encoder,
    FluxTextEncoders,
    SD3TextEncoders,
    drop_encoders,
    text_presets,
)
from mmdit_jax.models.text.t5 import T5Encoder
from mmdit_jax.models.text.tokenizers import PromptTokenizer

Array = jax.Array
NEGATIVES = ("null", "empty_prompt")
CLIP_MAX_LENGTH = 77          # the CLIP tokenizers' max length in diffusers' SD3 and FLUX pipelines
# steering = (positive prompts, negative prompts, w): y += w (h_y(p+) - h_y(p-)), one pair per prompt
Steering = tuple[Sequence[str], Sequence[str], float]


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


def build_encoder(cfg: Any, kind: str, key: Array) -> Encoder:
    """One encoder (``kind`` "clip" | "t5") from its ``text`` sub-section: a local folder (``path`` with
    ``tokenizer_path``) or a preset with random weights drawn from ``key``."""
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
    clip_l = build_encoder(config.clip_l, "clip", keys[0])
    clip_g = build_encoder(config.clip_g, "clip", keys[1])
    t5 = build_encoder(config.t5, "t5", keys[2]) if config.t5.enabled else None
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
        return null_or_empty(self.encode, kind, cond)

    def steering(self, positive: Sequence[str], negative: Sequence[str], weight: float) -> dict[str, Any]:
        """``{"pooled_steering": (y(p+), y(p-), w (B,))}``, one positive and one negative prompt per example."""
        return pooled_steering(self.encode, (positive, negative, weight))

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


# ------------------------------------------------------------------------------------------------
# Text stacks by name: built from a run's ``text`` section or from a released pipeline folder


def null_or_empty(encode: Callable[[Sequence[str]], dict[str, Array]], kind: str,
                  cond: dict[str, Array]) -> dict[str, Array]:
    """The CFG negative of ``cond``: ``"null"`` zeros every text entry of it, ``"empty_prompt"`` encodes ``""``."""
    check_choice("sample.negative", kind, NEGATIVES)
    entries = [k for k in cond if k in ("context", "pooled")]
    if kind == "null":
        return {k: jnp.zeros_like(cond[k]) for k in entries}
    return encode([""] * cond["context"].shape[0])


def pooled_steering(encode: Callable[[Sequence[str]], dict[str, Array]], steering: Steering,
                    batch: int | None = None) -> dict[str, Any]:
    """``{"pooled_steering": (y(p+) (B, d), y(p-) (B, d), w (B,))}`` from a stack's ``encode``; ``batch``, when given,
    is the number of prompts the pairs must match."""
    plus, minus, weight = steering
    plus, minus = list(plus), list(minus)
    if len(plus) != len(minus) or (batch is not None and len(plus) != batch):
        raise ConfigError(f"steering needs one positive and one negative prompt per prompt"
                          f"{'' if batch is None else f' ({batch})'}, got {len(plus)} and {len(minus)}")
    y_plus = encode(plus)
    if "pooled" not in y_plus:
        raise ConfigError("steering moves the pooled text vector; this model's text stack yields none")
    weights = jnp.full((len(plus),), weight, jnp.float32)
    return {"pooled_steering": (y_plus["pooled"], encode(minus)["pooled"], weights)}


@dataclasses.dataclass
class FolderText:
    """A released text stack read from a pipeline folder: ``encode(prompts) -> {"context", "pooled"}``."""

    name: str
    encoders: Any          # SD3TextEncoders | FluxTextEncoders | a plug-in's: ``encode(prompts) -> (c, y)``

    def encode(self, prompts: Sequence[str]) -> dict[str, Array]:
        c, y = self.encoders.encode(list(prompts))
        return {"context": c, "pooled": y}

    def steering(self, positive: Sequence[str], negative: Sequence[str], weight: float) -> dict[str, Any]:
        return pooled_steering(self.encode, (positive, negative, weight))

    def count_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` in the pooled (CLIP) encoder's tokenizer, without BOS / EOS."""
        return self.encoders.pooled_tokenizer.count_tokens(prompt)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{entry: shape}`` of one encoded prompt (what ``Family.check_conditioning`` reads)."""
        return {k: tuple(v.shape) for k, v in self.encode([""]).items()}


@dataclasses.dataclass(frozen=True)
class TextStackSpec:
    """A named text stack.

    Folders: the components it reads (``required`` / ``optional``, folder names as diffusers saves them) and
    ``build(parts, max_sequence_length, context_dim) -> text`` with ``text.encode(prompts) -> {entry: (B, ...)}``.
    Training: ``from_config(text_section, key) -> text`` with, besides ``encode``, ``negative(kind, cond)``,
    ``steering(p+, p-, w)`` (stacks with a pooled vector), ``dropout(probs)`` and ``fingerprint_parts()`` (what the
    caption cache is keyed by); None where the stack is read from folders only.
    """

    required: tuple[str, ...]
    optional: tuple[str, ...]
    build: Callable[[dict[str, str], int, int], Any]
    default_max_sequence_length: int
    max_sequence_length_limit: int | None = None
    from_config: Callable[[Any, Array], Any] | None = None


def _encoder(parts: dict[str, str], model: str, tokenizer: str, kind: str, max_length: int) -> Encoder:
    return encoder_from_folder(parts[model], PromptTokenizer(parts[tokenizer], kind, max_length), kind, f"{model}/")


def _sd3_stack(parts: dict[str, str], max_sequence_length: int, context_dim: int) -> FolderText:
    # without text_encoder_3 the T5 part is zeros (B, max_sequence_length, context_dim), as diffusers does
    t5 = (_encoder(parts, "text_encoder_3", "tokenizer_3", "t5", max_sequence_length)
          if "text_encoder_3" in parts else None)
    return FolderText("sd3", SD3TextEncoders(_encoder(parts, "text_encoder", "tokenizer", "clip", CLIP_MAX_LENGTH),
                                             _encoder(parts, "text_encoder_2", "tokenizer_2", "clip", CLIP_MAX_LENGTH),
                                             t5, context_dim, max_sequence_length))


def _flux_stack(parts: dict[str, str], max_sequence_length: int, context_dim: int) -> FolderText:
    return FolderText("flux", FluxTextEncoders(_encoder(parts, "text_encoder", "tokenizer", "clip", CLIP_MAX_LENGTH),
                                               _encoder(parts, "text_encoder_2", "tokenizer_2", "t5",
                                                        max_sequence_length)))


TEXT_STACKS: dict[str, TextStackSpec] = {
    "sd3": TextStackSpec(("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"),
                         ("text_encoder_3", "tokenizer_3"), _sd3_stack, 256,
                         from_config=lambda section, key: TextConditioner.from_config(section, key)),
    # diffusers' FluxPipeline refuses T5 prompts longer than 512 tokens
    "flux": TextStackSpec(("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"), (), _flux_stack, 512, 512),
}


def register_text_stack(name: str, spec: TextStackSpec) -> TextStackSpec:
    """Add a text stack under ``name`` (a second registration of the same spec is a no-op)."""
    existing = TEXT_STACKS.get(name)
    if existing is not None and existing is not spec:
        raise ConfigError(f"text stack {name!r} is already registered")
    TEXT_STACKS[name] = spec
    return spec


def text_stack_from_config(name: str, text_config: Any, key: Array) -> Any:
    """The stack ``name`` built from a run's ``text`` section (random preset weights from ``key``)."""
    check_choice("text stack", name, TEXT_STACKS)
    if TEXT_STACKS[name].from_config is None:
        raise ConfigError(f"text stack {name!r} is read from pipeline folders only; a training run needs one of "
                          f"{sorted(k for k, v in TEXT_STACKS.items() if v.from_config is not None)}")
    return TEXT_STACKS[name].from_config(text_config, key)


def text_stack_from_folder(name: str, parts: dict[str, str], max_sequence_length: int | None,
                           context_dim: int) -> Any:
    """The stack ``name`` built from a pipeline folder's ``{component: sub-folder}``."""
    check_choice("text stack", name, TEXT_STACKS)
    spec = TEXT_STACKS[name]
    length = spec.default_max_sequence_length if max_sequence_length is None else max_sequence_length
    check_positive_int("max_sequence_length", length)
    if spec.max_sequence_length_limit is not None and length > spec.max_sequence_length_limit:
        raise ConfigError(f"max_sequence_length={length} must be at most {spec.max_sequence_length_limit} "
                          f"(the {name} text stack's limit)")
    return spec.build(parts, length, context_dim)
