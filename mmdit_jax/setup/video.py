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


def validate_video_config(config: Any, data_shape: tuple[int, ...]) -> None:
    """Raise ConfigError naming the first invalid ``video`` field; clips without the section train jointly."""
    if "video" not in config:
        return
    vid = config.video
    check_keys("video", vid.keys(), {"mode", "context_frames", "chunk_frames"})
    check_choice("video.mode", vid.mode, MODES)
    check_positive_int("video.context_frames", vid.context_frames)
    check_positive_int("video.chunk_frames", vid.chunk_frames)
    if len(data_shape) != 4:
        raise ConfigError(f"the video section needs clip data (T, H, W, C); data.name={config.data.name!r} gives "
                          f"examples of shape {tuple(data_shape)}")
    if "latent" in config:
        raise ConfigError("video runs are in pixel space: remove the latent section")
    pt = config.model.get("temporal_patch_size", 1)
    if vid.mode == "next_chunk":
        if vid.chunk_frames > data_shape[0]:
            raise ConfigError(f"video.chunk_frames={vid.chunk_frames} is longer than the data's clips "
                              f"({data_shape[0]} frames)")
        for name in ("context_frames", "chunk_frames"):
            if vid[name] % pt:
                raise ConfigError(f"video.{name}={vid[name]} is not divisible by model.temporal_patch_size={pt}")


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


def training_view(config: Any) -> View | None:
    """The run's batch view (None: the model sees whole clips)."""
    if video_mode(config) != "next_chunk":
        return None
    return window_view(config.video.context_frames, config.video.chunk_frames)


def sample_shape(config: Any, data_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape one sampler call draws: the clip (joint) or one chunk (next_chunk)."""
    if video_mode(config) == "next_chunk":
        return (config.video.chunk_frames, *data_shape[1:])
    return tuple(data_shape)
