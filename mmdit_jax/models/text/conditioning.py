"""The SD3 text conditioning (docs/mmdit.md §3), assembled exactly as diffusers' ``encode_prompt``:

    c        = [ pad_right([H_L ; H_G], d_T) ; E_T5 ]  in R^{B x (77 + L_T) x d_T}
    y_pooled = [ p_L ; p_G ]                            in R^{B x (d_L + d_G)}

``H`` = penultimate CLIP hidden states (no final norm), ``p`` = projected pooled output (``text_embeds``),
``E_T5`` = T5's last hidden state (zeros when T5 is absent). No attention masks. The negative prompt of
classifier-free guidance is the encoded empty string. In training each encoder is dropped independently
with its own probability; a dropped encoder contributes zeros (SD3 trained with about 46% per encoder).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.models.text.clip import CLIPTextConfig, CLIPTextModel
from mmdit_jax.models.text.t5 import T5Config, T5Encoder
from mmdit_jax.models.text.tokenizers import PromptTokenizer
from mmdit_jax.checks import ConfigError

Array = jax.Array


@dataclasses.dataclass
class Encoder:
    """A frozen encoder: its config, variables (placed on the default device once) and tokenizer; encoding
    runs as one compiled program (op-by-op dispatch with host-resident weights would send the encoder's weights
    to the accelerator again on every call)."""

    config: CLIPTextConfig | T5Config
    variables: Any
    tokenizer: PromptTokenizer

    def __post_init__(self) -> None:
        module = CLIPTextModel(self.config) if isinstance(self.config, CLIPTextConfig) else T5Encoder(self.config)
        self.variables = jax.device_put(self.variables)
        self._apply = jax.jit(module.apply)

    def __call__(self, prompts: Sequence[str]) -> dict[str, Any]:
        return self._apply(self.variables, jnp.asarray(self.tokenizer(prompts)))


@dataclasses.dataclass
class SD3TextEncoders:
    """CLIP-L, CLIP-G and T5 (any may be None). ``joint_dim`` is the MMDiT context width (T5's d_model in SD3)."""

    clip_l: Encoder | None
    clip_g: Encoder | None
    t5: Encoder | None
    joint_dim: int
    t5_max_length: int = 256

    def encode(self, prompts: Sequence[str]) -> tuple[Array, Array]:
        """``(c: (B, 77 + L_T, joint_dim), y_pooled: (B, d_L + d_G))`` for a list of prompts."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for enc in (self.clip_l, self.clip_g):
            if enc is None:
                raise ConfigError("SD3 conditioning needs both CLIP encoders (clip_l and clip_g); T5 is optional")
        clip_seq, pooled = self.clip_conditioning(self.clip_l(prompts), self.clip_g(prompts))
        if self.t5 is None:
            t5_seq = jnp.zeros((len(prompts), self.t5_max_length, self.joint_dim), clip_seq.dtype)
        else:
            t5_seq = self.t5(prompts)["last_hidden_state"]
            if t5_seq.shape[-1] != self.joint_dim:
                raise ConfigError(f"T5 width {t5_seq.shape[-1]} differs from the joint width {self.joint_dim}")
        return jnp.concatenate([clip_seq, t5_seq], axis=1), pooled

    def clip_conditioning(self, out_l: dict[str, Any], out_g: dict[str, Any]) -> tuple[Array, Array]:
        """``(pad_right([H_L ; H_G], joint_dim) (B, T_clip, joint_dim), [p_L ; p_G] (B, d_L + d_G))`` from the two
        CLIP towers' outputs: the CLIP part of ``c`` and the pooled vector."""
        seqs = [out["hidden_states"][-2] for out in (out_l, out_g)]
        pooled = [out["text_embeds"] if "text_embeds" in out else out["pooled"] for out in (out_l, out_g)]
        clip_seq = jnp.concatenate(seqs, axis=-1)
        if clip_seq.shape[-1] > self.joint_dim:
            raise ConfigError(f"CLIP widths {clip_seq.shape[-1]} exceed the joint width {self.joint_dim}")
        clip_seq = jnp.pad(clip_seq, ((0, 0), (0, 0), (0, self.joint_dim - clip_seq.shape[-1])))
        return clip_seq, jnp.concatenate(pooled, axis=-1)

    def clip_tokens(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """``{"clip_l": (B, T) int32, "clip_g": (B, T) int32}``: the token ids the CLIP towers read."""
        return {"clip_l": self.clip_l.tokenizer(list(prompts)), "clip_g": self.clip_g.tokenizer(list(prompts))}

    def clip_params(self) -> dict[str, Any]:
        """``{"clip_l": variables, "clip_g": variables}`` of the CLIP towers (what text-encoder fine-tuning trains)."""
        return {"clip_l": self.clip_l.variables, "clip_g": self.clip_g.variables}

    def encode_clip_tokens(self, clip_params: dict[str, Any], tokens: dict[str, Array],
                           context: Array) -> tuple[Array, Array]:
        """``encode`` as a pure function of the CLIP towers' variables, for training them: ``tokens`` from
        ``clip_tokens``; ``context`` (B, T_clip + L_T, joint_dim) supplies the (frozen) T5 part of ``c``."""
        outs = [CLIPTextModel(enc.config).apply(clip_params[name], tokens[name])
                for name, enc in (("clip_l", self.clip_l), ("clip_g", self.clip_g))]
        clip_seq, pooled = self.clip_conditioning(*outs)
        return jnp.concatenate([clip_seq, context[:, clip_seq.shape[1]:]], axis=1), pooled

    def with_clip_params(self, clip_params: dict[str, Any]) -> "SD3TextEncoders":
        """These encoders with the CLIP towers' variables replaced (a text-encoder fine-tune's)."""
        return dataclasses.replace(
            self, clip_l=dataclasses.replace(self.clip_l, variables=clip_params["clip_l"]),
            clip_g=dataclasses.replace(self.clip_g, variables=clip_params["clip_g"]))

    def encode_with_negative(self, prompts: Sequence[str], negative: Sequence[str] | None = None):
        """``(c, y, c_neg, y_neg)``; the default negative prompt is the empty string, encoded."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negative = [""] * len(prompts) if negative is None else list(negative)
        return (*self.encode(prompts), *self.encode(negative))

    @property
    def pooled_tokenizer(self) -> PromptTokenizer:
        """The tokenizer of the first pooled encoder (CLIP-L): what limits how much of a prompt the pooled vector
        reads."""
        return self.clip_l.tokenizer

    @property
    def widths(self) -> tuple[int, int]:
        """``(d_L, d_G)``: where each encoder's part starts in the pooled vector (and in c's channels)."""
        def width(enc):
            return enc.config.projection_dim or enc.config.hidden_size
        return width(self.clip_l), width(self.clip_g)


@dataclasses.dataclass
class FluxTextEncoders:
    """FLUX.1's text stack: CLIP-L (only its pooled output is used) and T5 (its last hidden state), as diffusers'
    ``FluxPipeline.encode_prompt``: ``c = T5(prompts) (B, L, d_T5)`` padded without a mask, ``y = CLIP-L pooler
    output (B, d_CLIP)`` (the EOS state after the final norm, unprojected)."""

    clip: Encoder
    t5: Encoder

    def encode(self, prompts: Sequence[str]) -> tuple[Array, Array]:
        """``(c: (B, L, d_T5), y_pooled: (B, d_CLIP))`` for a list of prompts."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.t5(prompts)["last_hidden_state"], self.clip(prompts)["pooled"]

    @property
    def pooled_tokenizer(self) -> PromptTokenizer:
        return self.clip.tokenizer


def drop_encoders(key: Array, c: Array, y: Array, clip_widths: tuple[int, int], clip_tokens: int,
                  drop_probs: tuple[float, float, float]) -> tuple[Array, Array]:
    """Zero each encoder's contribution independently per example with ``drop_probs = (p_L, p_G, p_T5)``.

    ``c: (B, clip_tokens + L_T, d)``: CLIP-L owns channels ``[0, h_L)`` of the first ``clip_tokens`` tokens, CLIP-G
    channels ``[h_L, h_L + h_G)``; T5 owns the remaining tokens. ``y: (B, d_L + d_G)``. Hidden widths are taken
    equal to the projection widths (true for SD3's encoders).
    """
    for i, p in enumerate(drop_probs):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"text.drop_probs[{i}] must be in [0, 1], got {p}")
    b, t, d = c.shape
    keep = jax.random.uniform(key, (3, b)) >= jnp.asarray(drop_probs)[:, None]      # (3, B)
    d_l, d_g = clip_widths
    chan = jnp.arange(d)
    tok = jnp.arange(t)
    clip_l_mask = (chan[None, :] < d_l)[None] & (tok < clip_tokens)[None, :, None]
    clip_g_mask = ((chan >= d_l) & (chan < d_l + d_g))[None, None] & (tok < clip_tokens)[None, :, None]
    t5_mask = (tok >= clip_tokens)[None, :, None]
    c_keep = (clip_l_mask * keep[0][:, None, None] + clip_g_mask * keep[1][:, None, None]
              + t5_mask * keep[2][:, None, None])
    y_keep = jnp.concatenate([jnp.broadcast_to(keep[0][:, None], (b, d_l)),
                              jnp.broadcast_to(keep[1][:, None], (b, d_g))], axis=-1)
    return c * c_keep.astype(c.dtype), y * y_keep.astype(y.dtype)



# ------------------------------------------------------------------------------------------------
# Presets of configs/text.py (building encoders from a config is ``mmdit_jax.components.text``).

def text_presets() -> dict[str, Any]:
    """Named encoder configs: the real SD3 sizes and tiny ones for CPU tests."""
    from mmdit_jax.models.text import clip, t5

    return {"clip_l14": clip.CLIP_L14, "clip_g14": clip.CLIP_G14, "clip_tiny": clip.CLIP_TINY,
            "clip_tiny_g": dataclasses.replace(clip.CLIP_TINY, hidden_size=64, intermediate_size=128,
                                               projection_dim=64, hidden_act="gelu"),
            "t5_xxl": t5.T5_XXL, "t5_tiny": t5.T5_TINY,
            "t5_small": t5.T5Config(vocab_size=500, d_model=128, d_kv=16, d_ff=256, num_layers=2, num_heads=8)}
