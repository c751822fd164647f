"""A model family from outside the package, as a user would write one: an MMDiT that reads T5 tokens alone (no pooled
vector, so its adaLN sees the timestep only), with its own text stack and pipeline-folder spec. Importing this module
registers all three; nothing in ``mmdit_jax`` names it.

    text stack "t5_only":  cond = {"context": T5(prompts).last_hidden_state (B, L, d_T5)}
    family "t5dit":        the sd3 family's MMDiT with ``use_pooled=False``
    folders:               model_index.json ``_class_name="T5DiTPipeline"``; transformer/ (diffusers' SD3 layout),
                           vae/, scheduler/, text_encoder/ + tokenizer/ (T5)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mmdit_jax.components import text as text_stacks
from mmdit_jax.families import register_family
from mmdit_jax.families.sd3 import SD3Family
from mmdit_jax.models.mmdit import MMDiTConfig
from mmdit_jax.models.text.tokenizers import PromptTokenizer
from mmdit_jax.pipelines import folders


@dataclasses.dataclass
class T5Text:
    """The T5-only text path: ``encode``, the CFG ``negative``, the training ``dropout`` and the cache key."""

    t5: Any                     # mmdit_jax.models.text.conditioning.Encoder
    config: Any = None          # the run's ``text`` section (None for a folder)

    def encode(self, prompts: Sequence[str]) -> dict[str, jax.Array]:
        return {"context": self.t5(list(prompts))["last_hidden_state"]}

    def negative(self, kind: str, cond: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return text_stacks.null_or_empty(self.encode, kind, cond)

    def dropout(self, drop_probs: Sequence[float]):
        p = float(drop_probs[-1]) if len(drop_probs) else 0.0      # the T5 entry of (CLIP-L, CLIP-G, T5)

        def drop(key: jax.Array, cond: dict[str, jax.Array]) -> dict[str, jax.Array]:
            keep = jax.random.uniform(key, (cond["context"].shape[0], 1, 1)) >= p
            return {**cond, "context": jnp.where(keep, cond["context"], 0.0).astype(cond["context"].dtype)}

        return drop

    def fingerprint_parts(self) -> list[Any]:
        return [self.t5.variables, ("t5_only", self.config.to_json_best_effort(sort_keys=True))]

    def count_tokens(self, prompt: str) -> int:
        return self.t5.tokenizer.count_tokens(prompt)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.encode([""]).items()}


def _from_config(section: Any, key: jax.Array) -> T5Text:
    return T5Text(text_stacks.build_encoder(section.t5, "t5", key), section)


def _from_folder(parts: dict[str, str], max_sequence_length: int, context_dim: int) -> T5Text:
    tokenizer = PromptTokenizer(parts["tokenizer"], "t5", max_sequence_length)
    return T5Text(text_stacks.encoder_from_folder(parts["text_encoder"], tokenizer, "t5", "text_encoder/"))


class T5DiTFamily(SD3Family):
    name = "t5dit"
    text_stack = "t5_only"

    @classmethod
    def config_from_dict(cls, fields: Any) -> MMDiTConfig:
        return MMDiTConfig.from_dict({**dict(fields), "use_pooled": False})

    @classmethod
    def load_pretrained(cls, source: Any, **overrides: Any) -> tuple[MMDiTConfig, dict[str, Any]]:
        config, variables = super().load_pretrained(source, **overrides)
        return dataclasses.replace(config, use_pooled=False), variables


text_stacks.register_text_stack("t5_only", text_stacks.TextStackSpec(
    ("text_encoder", "tokenizer"), (), _from_folder, 32, from_config=_from_config))
register_family("t5dit", T5DiTFamily)
folders.register_folder_spec("T5DiT", dataclasses.replace(
    folders.FOLDER_SPECS["SD3Transformer2DModel"], family="t5dit", text_stack="t5_only", default_guidance_scale=4.0,
    pipelines=("T5DiTPipeline",)))
