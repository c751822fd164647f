"""A run's sample pictures: what a training run (and ``--mode=sample``) draws, and the files it writes.

    image run    ``sample.per_prompt`` samples of each prompt, one grid          samples/step_<step>.png
    editing run  the first ``EDIT_GRID_ROWS`` test sources, each followed by      samples/step_<step>.png
                 ``sample.per_prompt`` edits by its instruction
    video run    the prompts' clips: a frame strip (one clip per row)             samples/step_<step>.png
                 and the clips animated side by side                              samples/step_<step>.gif

PNGs are nearest-neighbour upscaled to at least 256 rows. Every file is written atomically (a temporary file, then
a rename), so a viewer or a sync never reads half a picture; the still picture also goes to TensorBoard
(``samples``).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from mmdit_jax.data.captions import caption_text
from mmdit_jax.data.motion import clip_strip
from mmdit_jax.pipelines.editing import EditingPipeline
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.pipelines.trained_model import TrainedModel
from mmdit_jax.pipelines.video import VideoPipeline, clip_grid, write_gif
from mmdit_jax.reporting import MetricWriter, write_png

EDIT_GRID_ROWS = 4   # an editing run's sample picture: this many test sources, each with its edits
MIN_ROWS = 256       # pictures are upscaled by an integer factor to at least this many rows


def write_picture(folder: str, step: int, grid: np.ndarray) -> str:
    """Write ``grid`` ``(H, W, 3)`` uint8 to ``<folder>/step_<step>.png`` (7-digit step), upscaled by
    ``max(1, MIN_ROWS // H)`` with nearest neighbours, atomically; returns the path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step_{step:07d}.png")
    scale = max(1, MIN_ROWS // grid.shape[0])
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    write_png(path, np.asarray(image), {})
    return path


def save_grid(workdir: str, writer: MetricWriter, step: int, grid: np.ndarray) -> str:
    """Write a sample picture to ``<workdir>/samples/step_<step>.png`` (``write_picture``) and to TensorBoard;
    returns the PNG's path."""
    path = write_picture(os.path.join(workdir, "samples"), step, grid)
    writer.image(step, "samples", grid)
    return path


def save_clips(workdir: str, writer: MetricWriter, step: int, clips: np.ndarray) -> str:
    """A video run's samples ``(N, T, H, W, 3)`` uint8: the frame strip (one clip per row) as ``step_<step>.png``
    and TensorBoard image, and the clips animated side by side as ``step_<step>.gif``; returns the GIF's path."""
    save_grid(workdir, writer, step, clip_strip(clips.astype(np.float32) / 127.5 - 1.0))
    frames = clip_grid(clips)
    gif = os.path.join(workdir, "samples", f"step_{step:07d}.gif")
    write_gif(gif, frames, scale=max(1, MIN_ROWS // frames.shape[1]))
    return gif


def edit_grid(pipeline: EditingPipeline, test_source: Any, variables: Any = None) -> np.ndarray:
    """An editing run's sample picture: the first ``EDIT_GRID_ROWS`` test sources, each followed by
    ``sample.per_prompt`` edits by its instruction (``variables``: default the pipeline's model's)."""
    cfg = pipeline.model.config
    records = [test_source[i] for i in range(EDIT_GRID_ROWS)]
    return pipeline.grid(np.stack([r["source"] for r in records]), [caption_text(r) for r in records],
                         cfg.sample.per_prompt, cfg.sample.seed, variables)


class RunPictures:
    """The sample picture of a run on ``model``, drawn with the pipeline its config calls for: editing for a run
    with an ``edit`` section, video for a run on clips ``(T, H, W, C)``, else sampling (sampler, guidance and seed
    from the config's ``sample`` section).

    ``model`` is shared with the pipeline: a training run replaces ``model.text`` when its text path trains.
    """

    def __init__(self, model: TrainedModel):
        self.model = model
        self.editing = "edit" in model.config
        self.video = not self.editing and len(model.data_shape) == 4
        if self.editing:
            self.pipeline: EditingPipeline | SamplingPipeline | VideoPipeline = EditingPipeline(model)
        elif self.video:
            self.pipeline = VideoPipeline(SamplingPipeline(model))
        else:
            self.pipeline = SamplingPipeline(model)

    @property
    def kind(self) -> str:
        """What ``save`` returns the path of: ``"clips"`` (the GIF) or ``"grid"`` (the PNG)."""
        return "clips" if self.video else "grid"

    def draw(self, prompts: Sequence[str], variables: Any = None, test_source: Any = None) -> np.ndarray:
        """The picture as arrays: clips ``(N, T, H, W, 3)`` for a video run, else a grid ``(H, W, 3)``, uint8.

        ``prompts``: an image or video run's (an editing run reads ``test_source``, the records of the test split,
        and needs it). ``variables``: default the model's. Every process of a multi-process run calls it.
        """
        cfg = self.model.config
        if self.editing:
            if test_source is None:
                raise ValueError("an editing run's sample picture edits test sources: pass test_source")
            return edit_grid(self.pipeline, test_source, variables)
        return self.pipeline.grid(list(prompts), cfg.sample.per_prompt, cfg.sample.seed, variables)

    def save(self, workdir: str, writer: MetricWriter, step: int, picture: np.ndarray) -> str:
        """Write ``draw``'s picture as step ``step`` under ``<workdir>/samples/`` (``save_clips`` or ``save_grid``);
        returns the path of the GIF (video) or the PNG."""
        if self.video:
            return save_clips(workdir, writer, step, picture)
        return save_grid(workdir, writer, step, picture)


__all__ = ["EDIT_GRID_ROWS", "RunPictures", "edit_grid", "save_clips", "save_grid", "write_picture"]
