"""``--mode=train``: the training loop, with metrics, checkpoints and sample grids along the way."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import numpy as np
from PIL import Image

from mmdit_jax.data.captions import caption_text
from mmdit_jax.pipelines.editing import EditingPipeline
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.pipelines.trained_model import TrainedModel
from mmdit_jax.pipelines.video import VideoPipeline
from mmdit_jax.reporting import MetricWriter, Progress, report
from mmdit_jax.train.experiment import build


EDIT_GRID_ROWS = 4   # an editing run's sample picture: this many test sources, each with its edits


def edit_grid(pipeline: EditingPipeline, test_source: Any, variables: Any = None) -> np.ndarray:
    """An editing run's sample picture: the first ``EDIT_GRID_ROWS`` test sources, each followed by
    ``sample.per_prompt`` edits by its instruction."""
    cfg = pipeline.model.config
    records = [test_source[i] for i in range(EDIT_GRID_ROWS)]
    return pipeline.grid(np.stack([r["source"] for r in records]), [caption_text(r) for r in records],
                         cfg.sample.per_prompt, cfg.sample.seed, variables)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step."""


def save_grid(workdir: str, writer: MetricWriter, step: int, grid: np.ndarray) -> str:
    """Write a sample picture to ``<workdir>/samples/step_<step>.png`` (upscaled to >= 256 rows) and TensorBoard."""
    folder = os.path.join(workdir, "samples")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step_{step:07d}.png")
    scale = max(1, 256 // grid.shape[0])
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
    writer.image(step, "samples", grid)
    return path


def save_clips(workdir: str, writer: MetricWriter, step: int, clips: np.ndarray) -> str:
    """A video run's samples ``(N, T, H, W, 3)`` uint8: the frame strip (one clip per row) as ``step_<step>.png``
    and TensorBoard image, and the clips animated side by side as ``step_<step>.gif``."""
    from mmdit_jax.data.motion import clip_strip
    from mmdit_jax.pipelines.video import clip_grid, write_gif

    path = save_grid(workdir, writer, step, clip_strip(clips.astype(np.float32) / 127.5 - 1.0))
    frames = clip_grid(clips)
    gif = os.path.join(workdir, "samples", f"step_{step:07d}.gif")
    write_gif(gif, frames, scale=max(1, 256 // frames.shape[1]))
    return gif


def train(config: Any, workdir: str) -> dict[str, Any]:
    """Train until ``train.num_steps``, resuming from the newest checkpoint. Returns a summary."""
    exp, start, data_state = build(config, workdir)
    cfg = exp.config
    total = cfg.train.num_steps
    it = exp.train_iterator()
    if data_state is not None:
        it.set_state(data_state["iterator"])
    step_fn = exp.train_step()
    key = jax.random.PRNGKey(cfg.seed + 1)
    primary = jax.process_index() == 0
    writer = MetricWriter(workdir, enabled=primary)
    progress = Progress(total, start, cfg.data.batch_size)
    pipeline = None
    if cfg.train.sample_every:
        model = TrainedModel(cfg, exp.family, {}, start, exp.data, exp.data_shape, exp.text, exp.latent)
        pipeline = EditingPipeline(model) if "edit" in cfg else SamplingPipeline(model)
        if len(exp.data_shape) == 4:
            pipeline = VideoPipeline(pipeline)
    state, pending = exp.state, []
    t_start, last_good, rates = time.time(), start, []

    def drain() -> None:
        """Check every pending step's loss (one device sync), write metrics; raise on NaN / Inf."""
        nonlocal last_good
        for step, metrics in pending:
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                exp.checkpointer.wait()
                raise NonFiniteLossError(f"loss is {loss} at step {step}; stopped. The last good checkpoint "
                                         f"(step {max(exp.checkpointer.steps(), default=0)}) is kept in "
                                         f"{exp.checkpointer.directory}")
            sums, counts = np.asarray(metrics["bucket_loss_sum"]), np.asarray(metrics["bucket_count"])
            values = {"loss": loss, "grad_norm": float(metrics["grad_norm"]),
                      "learning_rate": float(metrics["learning_rate"])}
            values.update({f"loss_bucket/{i}": s / c for i, (s, c) in enumerate(zip(sums, counts)) if c > 0})
            writer.scalars(step, values)
            last_good = step
        pending.clear()

    for step in range(start, total):
        batch = exp.device_batch(next(it))
        state, metrics = step_fn(state, batch, key)
        pending.append((step + 1, metrics))
        done = step + 1
        if done % cfg.train.log_every == 0 or done == total:
            drain()
            rate = progress.update(done, float(metrics["loss"]))
            rates.append(rate)
            writer.scalars(done, {"examples_per_second": rate})
        if done % cfg.train.checkpoint_every == 0 or done == total:
            drain()
            exp.checkpointer.save(done, state, {"iterator": it.get_state()}, exp.config_json())
        if pipeline is not None and (done % cfg.train.sample_every == 0 or done == total):
            variables = {"params": exp.model_params(state.ema_params), **exp.non_trainable}
            text = exp.text_conditioner(state.ema_params)
            if isinstance(pipeline, VideoPipeline):
                pipeline.sampling.model.text = text
                clips = pipeline.grid(cfg.sample.prompts, cfg.sample.per_prompt, cfg.sample.seed, variables)
                if primary:
                    report(f"sample clips: {save_clips(workdir, writer, done, clips)}")
                continue
            pipeline.model.text = text
            if isinstance(pipeline, EditingPipeline):
                grid = edit_grid(pipeline, exp.sources["test"], variables)
            else:
                grid = pipeline.grid(cfg.sample.prompts, cfg.sample.per_prompt, cfg.sample.seed, variables)
            if primary:
                report(f"sample grid: {save_grid(workdir, writer, done, grid)}")
    drain()
    exp.checkpointer.close()
    writer.close()
    elapsed = time.time() - t_start
    summary = {"steps": total, "start_step": start, "seconds": elapsed,
               "examples_per_second": float(np.median(rates)) if rates else 0.0, "last_step": last_good}
    report(f"done: {summary}")
    return summary


__all__ = ["train", "edit_grid", "save_clips", "NonFiniteLossError"]
