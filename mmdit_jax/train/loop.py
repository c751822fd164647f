"""``--mode=train | sample | eval``: the training loop, sample grids from a checkpoint, per-level validation loss."""

from __future__ import annotations

import math
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from mmdit_jax.diffusion.losses import denoising_loss
from mmdit_jax.train.experiment import Experiment, build
from mmdit_jax.train.metrics import MetricWriter, Progress, report
from mmdit_jax.train.sampling import make_grid_sampler, prompts_grid, to_grid
from mmdit_jax.train.step import mmdit_net
from mmdit_jax.checks import ConfigError


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step."""


def _render_samples(exp: Experiment, variables: Any, prompts: Sequence[str], per_prompt: int, seed: int,
                    sampler=None) -> np.ndarray:
    sampler = sampler or make_grid_sampler(exp.model, exp.schedule, exp.config, exp.image_shape)
    full = prompts_grid(prompts, per_prompt)
    if exp.config.sample.negative == "null":
        # The unconditional input the model was trained on: every encoder dropped, i.e. zeros.
        c, y = exp.encoders.encode(full)
        c_neg, y_neg = jnp.zeros_like(c), jnp.zeros_like(y)
    else:
        c, y, c_neg, y_neg = exp.encoders.encode_with_negative(full)
    steer = exp.config.sample.steering
    steering = None
    if steer.weight != 0.0:
        _, y_plus = exp.encoders.encode([steer.positive] * len(full))
        _, y_minus = exp.encoders.encode([steer.negative] * len(full))
        steering = (y_plus, y_minus, jnp.float32(steer.weight))
    images = sampler(variables, c, y, c_neg, y_neg, jax.random.PRNGKey(seed), steering)
    return to_grid(np.asarray(images), rows=len(prompts))


def _save_grid(exp: Experiment, writer: MetricWriter, step: int, grid: np.ndarray) -> str:
    folder = os.path.join(exp.workdir, "samples")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step_{step:07d}.png")
    scale = max(1, 256 // grid.shape[0])
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
    writer.image(step, "samples", grid)
    return path


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
    sampler = make_grid_sampler(exp.model, exp.schedule, cfg, exp.image_shape) if cfg.train.sample_every else None
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
        if sampler is not None and (done % cfg.train.sample_every == 0 or done == total):
            variables = {"params": state.ema_params, **exp.buffers}
            grid = _render_samples(exp, variables, cfg.sample.prompts, cfg.sample.per_prompt, cfg.sample.seed, sampler)
            if primary:
                report(f"sample grid: {_save_grid(exp, writer, done, grid)}")
    drain()
    exp.checkpointer.close()
    writer.close()
    elapsed = time.time() - t_start
    summary = {"steps": total, "start_step": start, "seconds": elapsed,
               "examples_per_second": float(np.median(rates)) if rates else 0.0, "last_step": last_good}
    report(f"done: {summary}")
    return summary


def sample(config: Any, workdir: str, prompts: Sequence[str] | None = None) -> str:
    """Render a grid from the newest checkpoint (EMA weights) with the configured sampler; returns its path."""
    exp, step, _ = build(config, workdir)
    if step == 0:
        logging.warning("no checkpoint in %s: sampling from the untrained initialisation", workdir)
    cfg = exp.config
    variables = {"params": exp.state.ema_params, **exp.buffers}
    grid = _render_samples(exp, variables, list(prompts or cfg.sample.prompts), cfg.sample.per_prompt, cfg.sample.seed)
    writer = MetricWriter(workdir, enabled=True)
    path = _save_grid(exp, writer, step, grid)
    writer.close()
    exp.checkpointer.close()
    report(f"sample grid: {path}")
    return path


def evaluate(config: Any, workdir: str) -> dict[str, float]:
    """Validation loss of the EMA weights on the test split at fixed noise levels (``train.loss_buckets`` of them)."""
    exp, step, _ = build(config, workdir)
    cfg = exp.config
    if cfg.loss.name == "ssm":
        raise ConfigError("--mode=eval needs a denoising loss (loss.name in dsm | eps | velocity | edm)")
    t_max = float(exp.schedule.timesteps(1)[0])
    levels = (np.arange(cfg.train.loss_buckets) + 0.5) / cfg.train.loss_buckets * t_max   # bucket centres
    source = exp.sources["test"]
    n = min(len(source), cfg.eval.num_examples)
    records = [source[i] for i in range(n)]
    images = jnp.asarray(np.stack([r["image"] for r in records]).astype(np.float32) / 127.5 - 1.0)
    captions = [r["caption"].decode() if isinstance(r["caption"], bytes) else r["caption"] for r in records]
    c, y = exp.encoders.encode(captions)
    variables = {"params": exp.state.ema_params, **exp.buffers}

    @jax.jit
    def level_loss(t, key):
        net = mmdit_net(exp.model, variables, c, y if exp.model.config.use_pooled else None, cfg.timestep_scale)
        per, _ = denoising_loss(net, images, key, exp.schedule, cfg.model_parameterization, cfg.loss.name,
                                t=jnp.full((n,), t))
        return jnp.mean(per)

    results = {f"t={t:.3f}": float(level_loss(t, jax.random.PRNGKey(i))) for i, t in enumerate(levels)}
    report(f"validation loss per noise level at step {step} ({n} test examples): {results}")
    exp.checkpointer.close()
    return results


__all__ = ["train", "sample", "evaluate", "NonFiniteLossError"]
