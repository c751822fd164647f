"""Text-to-video and image-to-video from a trained video run: joint clips or frame-by-frame rollouts.

    joint        one sampler call draws the whole clip ``(B, T, H, W, C)``, all frames denoised together; any
                 ``num_frames`` runs (positions extend), the training length is what the model knows
    next_chunk   a rollout: starting from ``C`` absent context frames (or the given first frame, image-to-video),
                 each sampler call draws the next ``K`` frames given the last ``C`` generated ones
                 (``cond["context_frames"]``), until ``num_frames``; clips longer than any training clip

Every chunk of a rollout is one call of the same compiled sampler (classifier-free guidance on the text; the
context frames are the same in both halves of the guidance batch). Seeds: chunk ``i`` draws its noise from
``fold_in(PRNGKey(seed), i)``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.pipelines.images import to_uint8
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.setup.video import video_mode

Array = jax.Array


class VideoPipeline:
    """Clips from a trained video model (``SamplingPipeline`` does the sampling, guidance and text)."""

    def __init__(self, sampling: SamplingPipeline):
        self.sampling = sampling
        self.config = sampling.model.config
        self.mode = video_mode(self.config) or "joint"
        shape = tuple(sampling.model.data_shape)
        if len(shape) != 4:
            raise ConfigError(f"a video pipeline needs a run on clips (T, H, W, C); this one's examples are {shape}")
        self.frames, self.frame_shape = shape[0], shape[1:]

    @classmethod
    def from_workdir(cls, config: Any, workdir: str, **kwargs: Any) -> "VideoPipeline":
        return cls(SamplingPipeline.from_workdir(config, workdir, **kwargs))

    def _draw(self, variables: Any, cond: dict, negative: dict, key: Array, frames: int) -> Array:
        b = jax.tree_util.tree_leaves(cond)[0].shape[0]
        return self.sampling.draw(variables, cond, negative, key, (b, frames, *self.frame_shape), False)

    def clips(self, prompts: Sequence[str], seed: int, num_frames: int | None = None,
              first_frames: np.ndarray | None = None, variables: Any = None) -> np.ndarray:
        """``(N, num_frames, H, W, C)`` uint8 clips for N prompts (default length: the training clips').

        ``first_frames (N, H, W, C)`` uint8: image-to-video, the clips start with these frames (next_chunk runs).
        """
        num_frames = self.frames if num_frames is None else int(num_frames)
        if num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
        variables = self.sampling.model.variables if variables is None else variables
        cond = self.sampling.conditioning(list(prompts))
        negative = self.sampling.model.text.negative(self.sampling.negative, cond)
        key = jax.random.PRNGKey(seed)
        if self.mode == "joint":
            if first_frames is not None:
                raise ConfigError("image-to-video (first_frames) needs a frame-by-frame model: video.mode='next_chunk'")
            return to_uint8(self._draw(variables, cond, negative, jax.random.fold_in(key, 0), num_frames))
        return to_uint8(self.rollout(variables, cond, negative, key, num_frames, first_frames))

    def rollout(self, variables: Any, cond: dict, negative: dict, key: Array, num_frames: int,
                first_frames: np.ndarray | None = None) -> Array:
        """The next_chunk rollout in [-1, 1]: ``(B, num_frames, H, W, C)``."""
        vid = self.config.video
        b = len(jax.tree_util.tree_leaves(cond)[0])
        context = jnp.zeros((b, vid.context_frames, *self.frame_shape), jnp.float32)   # absent frames
        frames = []
        if first_frames is not None:
            first = np.asarray(first_frames)
            if first.shape != (b, *self.frame_shape):
                raise ConfigError(f"first_frames must be (N={b}, {', '.join(map(str, self.frame_shape))}) uint8, "
                                  f"got {first.shape}")
            first = jnp.asarray(first, jnp.float32)[:, None] / 127.5 - 1.0
            frames.append(first)
            context = jnp.concatenate([context, first], axis=1)[:, -vid.context_frames:]
        i = 0
        while sum(f.shape[1] for f in frames) < num_frames:
            chunk = self._draw(variables, {**cond, "context_frames": context},
                               {**negative, "context_frames": context}, jax.random.fold_in(key, i), vid.chunk_frames)
            frames.append(chunk)
            context = jnp.concatenate([context, chunk], axis=1)[:, -vid.context_frames:]
            i += 1
        return jnp.concatenate(frames, axis=1)[:, :num_frames]

    def grid(self, prompts: Sequence[str], per_prompt: int, seed: int, variables: Any = None) -> np.ndarray:
        """A run's sample clips: ``per_prompt`` per prompt, ``(N, T, H, W, C)`` uint8."""
        return self.clips([p for p in prompts for _ in range(per_prompt)], seed, variables=variables)


def clip_grid(clips: np.ndarray) -> np.ndarray:
    """``(N, T, H, W, 3)`` uint8 -> ``(T, H', W', 3)``: every frame a grid of the N clips (an animation's frames)."""
    from mmdit_jax.data.render import to_grid

    return np.stack([to_grid(clips[:, t].astype(np.float32) / 127.5 - 1.0, 1) for t in range(clips.shape[1])])


def write_gif(path: str, frames: np.ndarray, fps: int = 4, scale: int = 1) -> None:
    """An animated GIF of ``(T, H, W, 3)`` uint8 frames, looping, nearest-neighbour upscaled by ``scale``; written
    atomically (a reader never sees half a file)."""
    from PIL import Image

    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    tmp = f"{path}.tmp"
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    os.replace(tmp, path)
