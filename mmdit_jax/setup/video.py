"""The ``video`` config section: how a text-to-video model is trained on clips ``(T, H, W, C)``.

    video.mode = "joint"          the whole clip is one token sequence with the text, denoised together (the data's
                                  ``T`` frames; other lengths run at sampling time, positions extend)
    video.mode = "next_chunk"     frame-by-frame: the model denoises ``chunk_frames`` frames given the
                                  ``context_frames`` clean frames before them (``cond["context_frames"]``), and
                                  clips of any length are rolled out chunk by chunk (``pipelines.video``)

Next-chunk training views each clip through a window (``window_view``): a start ``s`` uniform in
``[0, T - chunk_frames]`` per example; the target is frames ``s .. s + K - 1`` and the context the ``C`` frames
before it. Context frames before the clip's start are *absent*: zero images (mid-grey in [-1, 1], never a data
frame), so one model learns to start a clip (all context absent), to continue a given first frame
(image-to-video: one frame present) and to extend a clip (all present). Positions are the window's own, so a
rollout longer than any training clip never leaves the positions seen in training.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from mmdit_jax.checks import ConfigError, check_choice, check_keys, check_positive_int

Array = jax.Array
MODES = ("joint", "next_chunk")
View = Callable[[Array, Array, dict], tuple[Array, dict]]


def video_config(mode: str = "joint", context_frames: int = 2, chunk_frames: int = 2) -> ml_collections.ConfigDict:
    """The ``video`` section (``context_frames`` / ``chunk_frames`` are read in ``next_chunk`` mode)."""
    return ml_collections.ConfigDict(dict(mode=mode, context_frames=int(context_frames),
                                          chunk_frames=int(chunk_frames)))


def video_mode(config: Any) -> str | None:
    return config.video.mode if "video" in config else None


def check_video_section(vid: Any) -> None:
    """Raise ConfigError naming the first invalid field of the ``video`` section ``vid``."""
    check_keys("video", vid.keys(), {"mode", "context_frames", "chunk_frames"})
    check_choice("video.mode", vid.mode, MODES)
    check_positive_int("video.context_frames", vid.context_frames)
    check_positive_int("video.chunk_frames", vid.chunk_frames)


def check_video_run(mode: str, context_frames: int, chunk_frames: int, data_name: str,
                    data_shape: tuple[int, ...], latent: bool, temporal_patch_size: int) -> None:
    """Raise ConfigError when the rest of the run cannot train a video model of this ``video`` section."""
    if len(data_shape) != 4:
        raise ConfigError(f"the video section needs clip data (T, H, W, C); data.name={data_name!r} gives "
                          f"examples of shape {tuple(data_shape)}")
    if latent:
        raise ConfigError("video runs are in pixel space: remove the latent section")
    if mode == "next_chunk":
        if chunk_frames > data_shape[0]:
            raise ConfigError(f"video.chunk_frames={chunk_frames} is longer than the data's clips "
                              f"({data_shape[0]} frames)")
        for name, frames in (("context_frames", context_frames), ("chunk_frames", chunk_frames)):
            if frames % temporal_patch_size:
                raise ConfigError(f"video.{name}={frames} is not divisible by "
                                  f"model.temporal_patch_size={temporal_patch_size}")


def window_view(context_frames: int, chunk_frames: int) -> View:
    """``view(key, x (B, T, H, W, C), cond) -> (target (B, K, H, W, C), cond + context_frames (B, C, H, W, C))``:
    one random window per example (see the module docstring), absent frames zero."""
    c, k = context_frames, chunk_frames

    def view(key: Array, x: Array, cond: dict) -> tuple[Array, dict]:
        b, t = x.shape[:2]
        starts = jax.random.randint(key, (b,), 0, t - k + 1)
        padded = jnp.concatenate([jnp.zeros((b, c, *x.shape[2:]), x.dtype), x], axis=1)   # frame i at i + C
        windows = jax.vmap(lambda v, s: jax.lax.dynamic_slice_in_dim(v, s, c + k, axis=0))(padded, starts)
        return windows[:, c:], {**cond, "context_frames": windows[:, :c]}

    return view
