"""``--mode=train``: the training loop, with metrics, checkpoints and sample pictures along the way.

``run_steps`` is the loop every trainer shares (this one and ``train.autoencoder``): steps from the resumed step
to the last, metrics written in batches (one device sync each), a progress line, periodic checkpoints (Orbax:
atomic, with the data iterator's state, so a restart continues exactly) and periodic extras such as sample
pictures. ``train`` is the diffusion run on top of it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import numpy as np

from mmdit_jax.checkpoints import Checkpointer
from mmdit_jax.pipelines.trained_model import TrainedModel
from mmdit_jax.reporting import MetricWriter, Progress, report
from mmdit_jax.train.experiment import build
from mmdit_jax.train.pictures import RunPictures
from mmdit_jax.train.schema import validate_config


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step."""


class DataIterator(Protocol):
    """An infinite batch iterator whose position can be saved and restored (``grain.DatasetIterator``)."""

    def __next__(self) -> Any: ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


@dataclasses.dataclass
class LoopResult:
    """What ``run_steps`` ends with."""

    state: Any              # the train state after the last step
    last_step: int          # the last step whose metrics were written (all losses up to it finite)
    last_loss: float        # the loss of the last progress line (NaN when no step ran)
    seconds: float          # wall time of the steps, checkpoints and extras
    rates: list[float]      # examples per second of every progress line

    @property
    def examples_per_second(self) -> float:
        """The median progress-line rate (0.0 when no step ran)."""
        return float(np.median(self.rates)) if self.rates else 0.0


def run_steps(state: Any, step_fn: Callable[[Any, Any], tuple[Any, dict]], batches: DataIterator, *,
              start: int, total: int, log_every: int, checkpoint_every: int, batch_size: int,
              checkpointer: Checkpointer, config_json: str, writer: MetricWriter,
              metric_values: Callable[[dict], dict[str, float]], data_state: dict | None = None,
              extras: Sequence[tuple[int, Callable[[int, Any], None]]] = ()) -> LoopResult:
    """Run steps ``start + 1 .. total``: ``state, metrics = step_fn(state, next(batches))``.

    ``data_state``: the data state the checkpoint of step ``start`` was saved with (None: a fresh run); the
    iterator continues from it. Every ``log_every`` steps and at the last, the pending steps' metrics are
    converted by ``metric_values`` (which must keep ``"loss"``) and written to ``writer`` with
    ``examples_per_second``, and a progress line is printed. Every ``checkpoint_every`` steps and at the last, the
    state and the iterator's position are saved. Then each ``(every, fn)`` of ``extras`` with ``every > 0`` runs
    ``fn(step, state)`` every ``every`` steps and at the last (``fn`` must not donate the state).

    A NaN or Inf loss raises ``NonFiniteLossError`` naming the step, before its metrics or any later checkpoint
    are written; the checkpointer is closed at the end, ``writer`` is left open.
    """
    if data_state is not None:
        batches.set_state(data_state["iterator"])
    progress = Progress(total, start, batch_size)
    pending: list[tuple[int, dict]] = []
    t_start, last_good, last_loss, rates = time.time(), start, float("nan"), []

    def drain() -> None:
        """Check and write every pending step's metrics (one device sync); raise on a NaN / Inf loss."""
        nonlocal last_good
        for step, metrics in pending:
            values = metric_values(metrics)
            if not math.isfinite(values["loss"]):
                # an asynchronous save may still be writing: the error names the checkpoints as they will stay
                checkpointer.wait()
                raise NonFiniteLossError(f"loss is {values['loss']} at step {step}; stopped. The last good "
                                         f"checkpoint (step {max(checkpointer.steps(), default=0)}) is kept in "
                                         f"{checkpointer.directory}")
            writer.scalars(step, values)
            last_good = step
        pending.clear()

    for step in range(start, total):
        state, metrics = step_fn(state, next(batches))
        done = step + 1
        pending.append((done, metrics))
        if done % log_every == 0 or done == total:
            drain()
            last_loss = float(metrics["loss"])
            rates.append(progress.update(done, last_loss))
            writer.scalars(done, {"examples_per_second": rates[-1]})
        if done % checkpoint_every == 0 or done == total:
            drain()     # a checkpoint is only written once every loss before it is known finite
            checkpointer.save(done, state, {"iterator": batches.get_state()}, config_json)
        for every, fn in extras:
            if every and (done % every == 0 or done == total):
                fn(done, state)
    drain()
    checkpointer.close()
    return LoopResult(state, last_good, last_loss, time.time() - t_start, rates)


def _diffusion_metrics(metrics: dict) -> dict[str, float]:
    """A train step's metrics as scalars: loss, gradient norm, learning rate and the loss per noise-level bucket
    (buckets the batch left empty are skipped)."""
    sums, counts = np.asarray(metrics["bucket_loss_sum"]), np.asarray(metrics["bucket_count"])
    values = {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
              "learning_rate": float(metrics["learning_rate"])}
    values.update({f"loss_bucket/{i}": s / c for i, (s, c) in enumerate(zip(sums, counts)) if c > 0})
    return values


def train(config: Any, workdir: str) -> dict[str, Any]:
    """Validate ``config`` (``ConfigError`` naming the first invalid field, before anything is built or written),
    then train until ``train.num_steps``, resuming from the newest checkpoint. Returns a summary."""
    validate_config(config)
    exp, start, data_state = build(config, workdir)
    cfg = exp.config
    step_fn = exp.train_step()
    key = jax.random.PRNGKey(cfg.seed + 1)
    primary = jax.process_index() == 0
    writer = MetricWriter(workdir, enabled=primary)
    extras = []
    if cfg.train.sample_every:
        pictures = RunPictures(TrainedModel(cfg, exp.family, {}, start, exp.data, exp.data_shape, exp.text,
                                            exp.latent))

        def sample(step: int, state: Any) -> None:
            variables = {"params": exp.model_params(state.ema_params), **exp.non_trainable}
            # the text path can train with the model (CLIP towers): sample with the state's
            pictures.model.text = exp.text_conditioner(state.ema_params)
            picture = pictures.draw(cfg.sample.prompts, variables, exp.sources.get("test"))
            if primary:
                report(f"sample {pictures.kind}: {pictures.save(workdir, writer, step, picture)}")

        extras.append((cfg.train.sample_every, sample))
    run = run_steps(exp.state, lambda state, batch: step_fn(state, exp.device_batch(batch), key),
                    exp.train_iterator(), start=start, total=cfg.train.num_steps, log_every=cfg.train.log_every,
                    checkpoint_every=cfg.train.checkpoint_every, batch_size=cfg.data.batch_size,
                    checkpointer=exp.checkpointer, config_json=exp.config_json(), writer=writer,
                    metric_values=_diffusion_metrics, data_state=data_state, extras=extras)
    writer.close()
    summary = {"steps": cfg.train.num_steps, "start_step": start, "seconds": run.seconds,
               "examples_per_second": run.examples_per_second, "last_step": run.last_step}
    report(f"done: {summary}")
    return summary


__all__ = ["train", "run_steps", "LoopResult", "NonFiniteLossError"]
