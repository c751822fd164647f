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

import dataclasses
import os
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from mmdit_jax.data.captions import caption_text
from mmdit_jax.data.motion import clip_strip
from mmdit_jax.pipelines.editing import EditingPipeline
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.pipelines.trained_model import TrainedModel
from mmdit_jax.pipelines.video import VideoPipeline, clip_grid, write_gif
from mmdit_jax.reporting import MetricWriter, write_png
from mmdit_jax.setup.tasks import training_task

EDIT_GRID_ROWS = 4   # an editing run's sample picture: this many test sources, each with its edits
MIN_ROWS = 256       # pictures are upscaled by an integer factor to at least this many rows


def write_picture(folder: str, step: int, grid: np.ndarray, prefix: str = "step",
                  metadata: dict[str, str] | None = None) -> str:
    """Write ``grid`` ``(H, W, 3)`` uint8 to ``<folder>/<prefix>_<step>.png`` (7-digit step), upscaled by
    ``max(1, MIN_ROWS // H)`` with nearest neighbours, atomically, with ``metadata`` as PNG text; returns the
    path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{prefix}_{step:07d}.png")
    scale = max(1, MIN_ROWS // grid.shape[0])
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    write_png(path, np.asarray(image), metadata or {})
    return path


def save_grid(workdir: str, writer: MetricWriter, step: int, grid: np.ndarray, prefix: str = "step",
              metadata: dict[str, str] | None = None) -> str:
    """Write a sample picture to ``<workdir>/samples/<prefix>_<step>.png`` (``write_picture``) and to TensorBoard;
    returns the PNG's path."""
    path = write_picture(os.path.join(workdir, "samples"), step, grid, prefix, metadata)
    writer.image(step, "samples", grid)
    return path


def save_clips(workdir: str, writer: MetricWriter, step: int, clips: np.ndarray, prefix: str = "step",
               metadata: dict[str, str] | None = None) -> str:
    """A video run's samples ``(N, T, H, W, 3)`` uint8: the frame strip (one clip per row) as ``step_<step>.png``
    and TensorBoard image, and the clips animated side by side as ``step_<step>.gif``; returns the GIF's path."""
    save_grid(workdir, writer, step, clip_strip(clips.astype(np.float32) / 127.5 - 1.0), prefix, metadata)
    frames = clip_grid(clips)
    gif = os.path.join(workdir, "samples", f"{prefix}_{step:07d}.gif")
    write_gif(gif, frames, scale=max(1, MIN_ROWS // frames.shape[1]))
    return gif


def edit_grid(pipeline: EditingPipeline, test_source: Any, variables: Any = None) -> np.ndarray:
    """An editing run's sample picture: the first ``EDIT_GRID_ROWS`` test sources, each followed by
    ``sample.per_prompt`` edits by its instruction (``variables``: default the pipeline's model's)."""
    cfg = pipeline.model.config
    records = [test_source[i] for i in range(EDIT_GRID_ROWS)]
    return pipeline.grid(np.stack([r["source"] for r in records]), [caption_text(r) for r in records],
                         cfg.sample.per_prompt, cfg.sample.seed, variables)


def _grid(pipeline: SamplingPipeline, prompts: Sequence[str], variables: Any, test_source: Any) -> np.ndarray:
    cfg = pipeline.model.config
    return pipeline.grid(list(prompts), cfg.sample.per_prompt, cfg.sample.seed, variables)


def _clips(pipeline: VideoPipeline, prompts: Sequence[str], variables: Any, test_source: Any) -> np.ndarray:
    cfg = pipeline.sampling.model.config
    return pipeline.grid(list(prompts), cfg.sample.per_prompt, cfg.sample.seed, variables)


def _edits(pipeline: EditingPipeline, prompts: Sequence[str], variables: Any, test_source: Any) -> np.ndarray:
    if test_source is None:
        raise ValueError("an editing run's sample picture edits test sources: pass test_source")
    return edit_grid(pipeline, test_source, variables)


@dataclasses.dataclass(frozen=True)
class PictureKind:
    """How a task's sample picture is drawn and written: ``pipeline(model)``, ``draw(pipeline, prompts,
    variables, test_source)``, ``save(workdir, writer, step, picture)``; ``reads_test_source``: drawn from records
    of the test split rather than from prompts; ``kind``: what ``save`` returns the path of."""

    pipeline: Callable[[TrainedModel], Any]
    draw: Callable[[Any, Sequence[str], Any, Any], np.ndarray]
    save: Callable[[str, MetricWriter, int, np.ndarray], str]
    reads_test_source: bool = False
    kind: str = "grid"


# The training tasks' ``picture`` names (``mmdit_jax.setup.tasks``).
PICTURES: dict[str, PictureKind] = {
    "grid": PictureKind(SamplingPipeline, _grid, save_grid),
    "edits": PictureKind(EditingPipeline, _edits, save_grid, reads_test_source=True),
    "clips": PictureKind(lambda model: VideoPipeline(SamplingPipeline(model)), _clips, save_clips, kind="clips"),
}


class RunPictures:
    """The sample picture of a run on ``model``, drawn as its training task says (``setup.tasks``: a grid of
    samples per prompt, edits of test sources, or clips), with the sampler, guidance and seed of the config's
    ``sample`` section.

    ``model`` is shared with the pipeline: a training run replaces ``model.text`` when its text path trains.
    """

    def __init__(self, model: TrainedModel):
        self.model = model
        self.picture = PICTURES[training_task(model.config).picture]
        self.pipeline = self.picture.pipeline(model)

    @property
    def kind(self) -> str:
        """What ``save`` returns the path of: ``"clips"`` (the GIF) or ``"grid"`` (the PNG)."""
        return self.picture.kind

    @property
    def reads_test_source(self) -> bool:
        """Whether ``draw`` needs ``test_source`` (an editing run edits test sources)."""
        return self.picture.reads_test_source

    def draw(self, prompts: Sequence[str], variables: Any = None, test_source: Any = None) -> np.ndarray:
        """The picture as arrays: clips ``(N, T, H, W, 3)`` for a video run, else a grid ``(H, W, 3)``, uint8.

        ``prompts``: an image or video run's (an editing run reads ``test_source``, the records of the test split,
        and needs it). ``variables``: default the model's. Every process of a multi-process run calls it.
        """
        return self.picture.draw(self.pipeline, prompts, variables, test_source)

    def save(self, workdir: str, writer: MetricWriter, step: int, picture: np.ndarray, prefix: str = "step",
             metadata: dict[str, str] | None = None) -> str:
        """Write ``draw``'s picture as step ``step`` under ``<workdir>/samples/`` (``save_clips`` or ``save_grid``;
        ``prefix``: the files' name before the step, ``metadata``: the PNG's text); returns the path of the GIF
        (video) or the PNG."""
        return self.picture.save(workdir, writer, step, picture, prefix, metadata)


__all__ = ["EDIT_GRID_ROWS", "PICTURES", "PictureKind", "RunPictures", "edit_grid", "save_clips", "save_grid", "write_picture"]
