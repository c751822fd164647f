"""The modes of ``python -m mmdit_jax``: ``train`` (``train.loop``), ``sample`` and ``eval`` of a trained workdir,
``export_lora`` of a LoRA fine-tune (a diffusers / PEFT LoRA file).

``sample`` and ``eval`` load the newest checkpoint's EMA weights through ``mmdit_jax.pipelines`` (no optimizer
state; ``sample`` builds no data set either). A workdir without a checkpoint is an error naming its folder,
unless ``allow_untrained`` asks for the untrained initialisation.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.data.captions import caption_text
from mmdit_jax.data.pipeline import build_sources, default_data_dir
from mmdit_jax.diffusion.losses import LOSSES, denoising_loss
from mmdit_jax.pipelines.trained_model import load_trained
from mmdit_jax.reporting import MetricWriter, report
from mmdit_jax.setup.video import training_view
from mmdit_jax.train.loop import train
from mmdit_jax.train.pictures import RunPictures

__all__ = ["train", "sample", "evaluate", "export_lora"]


def sample(config: Any, workdir: str, prompts: Sequence[str] | None = None, allow_untrained: bool = False) -> str:
    """Draw the run's sample picture (``train.pictures.RunPictures``: an image run's grid of ``prompts``, default
    the config's; an editing run's edits of test sources, read from the data set; a video run's clips) from the
    newest checkpoint's EMA weights with the configured sampler into ``<workdir>/samples/step_<step>`` and
    TensorBoard, as training writes it; returns the path of the PNG, or of the GIF for clips."""
    model = load_trained(config, workdir, allow_untrained)
    pictures = RunPictures(model)
    test = None
    if pictures.editing:    # an editor's picture: test sources and their edits (the data set is read for them)
        test = build_sources(config.data, config.data.data_dir or default_data_dir(workdir))["test"]
    picture = pictures.draw(list(prompts or model.config.sample.prompts), test_source=test)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    path = pictures.save(workdir, writer, model.step, picture)
    writer.close()
    report(f"sample {pictures.kind}: {path}")
    return path


def evaluate(config: Any, workdir: str, allow_untrained: bool = False) -> dict[str, float]:
    """Validation loss of the EMA weights on the test split at fixed noise levels (``train.loss_buckets`` of them)."""
    if not LOSSES[config.loss.name].denoising:
        raise ConfigError(f"--mode=eval needs a denoising loss; loss.name={config.loss.name!r} is not one")
    model = load_trained(config, workdir, allow_untrained)
    cfg, family = model.config, model.family
    t_max = float(family.schedule.timesteps(1)[0])
    levels = (np.arange(cfg.train.loss_buckets) + 0.5) / cfg.train.loss_buckets * t_max   # bucket centres
    source = build_sources(cfg.data, cfg.data.data_dir or default_data_dir(workdir))["test"]
    n = min(len(source), cfg.eval.num_examples)
    records = [source[i] for i in range(n)]
    x0 = jnp.asarray(np.stack([model.data.to_example(r) for r in records]))
    if model.latent is not None:   # the loss is measured where the model works: on the test images' latents
        x0 = jnp.concatenate([model.latent.encode(x0[i:i + cfg.latent.batch_size])
                              for i in range(0, n, cfg.latent.batch_size)])
    cond = model.text.encode([caption_text(r) for r in records]) if model.text is not None else {}
    view = training_view(cfg)
    if view is not None:       # a frame-by-frame model is scored on the windows it is trained on (fixed draw)
        x0, cond = view(jax.random.PRNGKey(cfg.seed), x0, cond)

    @jax.jit
    def level_loss(t, key):
        net = family.net(family.prepare(model.variables), cond)
        per, _ = denoising_loss(net, x0, key, family.schedule, cfg.model_parameterization, cfg.loss.name,
                                t=jnp.full((n,), t))
        return jnp.mean(per)

    results = {f"t={t:.3f}": float(level_loss(t, jax.random.PRNGKey(i)))
               for i, t in enumerate(levels)}
    report(f"validation loss per noise level at step {model.step} ({n} test examples): {results}")
    return results


def export_lora(config: Any, workdir: str, out: str | None = None) -> str:
    """Write the EMA adapter of a LoRA fine-tune's newest checkpoint as a diffusers / PEFT LoRA file
    (``<out>/pytorch_lora_weights.safetensors``; default ``out``: ``<workdir>/lora_export``), for
    ``pipe.load_lora_weights(out)`` or ``python -m mmdit_jax.generate --lora=out``. Returns the file's path."""
    from mmdit_jax.interop.lora import save_lora, to_diffusers_lora
    from mmdit_jax.components.from_config import family_from_config
    from mmdit_jax.pipelines.trained_model import load_adapter

    step, adapter, lora = load_adapter(config, workdir)
    family = family_from_config(config)
    state_dict = to_diffusers_lora(family.name, family.config, adapter, lora.scale)
    out = out or os.path.join(workdir, "lora_export")
    os.makedirs(out, exist_ok=True)
    path = save_lora(out, state_dict)
    report(f"LoRA of step {step} (rank {lora.rank}, {len(state_dict) // 2} modules): {path}")
    return path
