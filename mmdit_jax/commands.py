"""The modes of ``python -m mmdit_jax``: ``train`` (``train.loop``), ``sample`` and ``eval`` of a trained workdir,
``export_lora`` of a LoRA fine-tune (a diffusers / PEFT LoRA file).

``sample`` and ``eval`` load the newest checkpoint's EMA weights through ``mmdit_jax.pipelines`` (no optimizer
state; ``sample`` builds no data set either). A workdir without a checkpoint is an error naming its folder,
unless ``allow_untrained`` asks for the untrained initialisation.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checkpoints import checkpoint_steps
from mmdit_jax.checks import ConfigError, check_new_outputs, check_output_folder
from mmdit_jax.data.captions import caption_text
from mmdit_jax.data.pipeline import build_sources, default_data_dir
from mmdit_jax.diffusion.losses import LOSSES, denoising_loss
from mmdit_jax.pipelines.trained_model import load_trained
from mmdit_jax.reporting import MetricWriter, report
from mmdit_jax.setup.tasks import training_task
from mmdit_jax.train.loop import train
from mmdit_jax.train.pictures import RunPictures

__all__ = ["train", "sample", "evaluate", "export_lora", "run_config", "SAMPLE_PREFIX"]

SAMPLE_PREFIX = "sample_step"     # --mode=sample's files: the training loop's own pictures are step_<N>


def _sample_files(workdir: str, step: int) -> list[str]:
    return [os.path.join(workdir, "samples", f"{SAMPLE_PREFIX}_{step:07d}.{ext}") for ext in ("png", "gif")]


def sample(config: Any, workdir: str, prompts: Sequence[str] | None = None, allow_untrained: bool = False,
           overwrite: bool = False) -> str:
    """Draw the run's sample picture (``train.pictures.RunPictures``: an image run's grid of ``prompts``, default
    the config's; an editing run's edits of test sources, read from the data set; a video run's clips) from the
    newest checkpoint's EMA weights with the configured sampler into ``<workdir>/samples/sample_step_<step>`` (the
    training loop's ``step_<step>`` pictures stay) and TensorBoard; the PNG records the checkpoint step, sampler
    steps, guidance, seed and prompts. An existing picture of that step is an error unless ``overwrite``. Returns
    the path of the PNG, or of the GIF for clips."""
    steps = checkpoint_steps(os.path.join(workdir, "checkpoints"))
    check_new_outputs("--mode=sample", _sample_files(workdir, steps[-1] if steps else 0), overwrite)
    model = load_trained(config, workdir, allow_untrained)
    check_new_outputs("--mode=sample", _sample_files(workdir, model.step), overwrite)  # after a fallback
    pictures = RunPictures(model)
    test = None
    if pictures.reads_test_source:    # an editor's picture: test sources and their edits (the data set is read for them)
        test = build_sources(config.data, config.data.data_dir or default_data_dir(workdir))["test"]
    prompts = list(prompts or model.config.sample.prompts)
    picture = pictures.draw(prompts, test_source=test)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    sample_cfg = model.config.sample
    metadata = {"checkpoint_step": str(model.step), "steps": str(sample_cfg.sampler.get("n_steps", "default")),
                "sampler": str(sample_cfg.sampler.get("name", "")), "guidance_scale": str(sample_cfg.guidance_scale),
                "seed": str(sample_cfg.seed), "per_prompt": str(sample_cfg.per_prompt),
                "prompts": "\n".join(prompts), "workdir": os.path.abspath(workdir)}
    path = pictures.save(workdir, writer, model.step, picture, SAMPLE_PREFIX, metadata)
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
    view = training_task(cfg).view()
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


def export_lora(config: Any, workdir: str, out: str | None = None, overwrite: bool = False) -> str:
    """Write the EMA adapter of a LoRA fine-tune's newest checkpoint as a diffusers / PEFT LoRA file
    (``<out>/pytorch_lora_weights.safetensors``, or ``out`` itself when it ends in ``.safetensors``; default
    ``out``: ``<workdir>/lora_export``), for ``pipe.load_lora_weights(out)`` or ``python -m mmdit_jax.generate
    --lora=out``. An existing file is an error unless ``overwrite``. Returns the file's path."""
    from mmdit_jax.components.from_config import family_from_config
    from mmdit_jax.interop.lora import WEIGHT_NAME, save_lora, to_diffusers_lora
    from mmdit_jax.pipelines.trained_model import load_adapter

    out = out or os.path.join(workdir, "lora_export")
    if out.endswith(".safetensors"):
        check_output_folder("--out", os.path.dirname(out) or ".")
        check_new_outputs("--out", [out], overwrite)
    else:
        check_output_folder("--out", out)
        check_new_outputs("--out", [os.path.join(out, WEIGHT_NAME)], overwrite)
    step, adapter, lora = load_adapter(config, workdir)
    family = family_from_config(config)
    state_dict = to_diffusers_lora(family, family.config, adapter, lora.scale)
    path = save_lora(out, state_dict)
    report(f"LoRA of step {step} (rank {lora.rank}, {len(state_dict) // 2} modules): {path}")
    return path


# The config fields whose values leave the model's weights as they are: everything outside these sections, and
# these compute options of the ``model`` section.
SHAPE_SECTIONS = ("model", "text", "latent", "edit", "finetune.lora", "finetune.init_from")
COMPUTE_ONLY = ("model.attention_impl", "model.dtype", "model.remat", "model.remat_policy", "model.scan_unroll",
                "model.custom_gradients")


def load_workdir_config(workdir: str) -> Any:
    """``<workdir>/config.json`` as ``config_schema.workdir_config`` reads it, a file that is not JSON named."""
    from mmdit_jax.config_schema import workdir_config

    try:
        return workdir_config(workdir)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{os.path.join(workdir, 'config.json')} is not a valid config ({e}); it is written by "
                          "`python -m mmdit_jax --mode=train`") from e


def _flat(config: Any) -> dict[str, Any]:
    def walk(node: Any, prefix: str) -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in walk(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    return walk(json.loads(config.to_json_best_effort(sort_keys=True)), "")


def _changes_shapes(key: str, saved: Any, given: Any) -> bool:
    if key in COMPUTE_ONLY:
        return False
    if any(key == s or key.startswith(s + ".") for s in SHAPE_SECTIONS):
        return True
    if key.startswith("data."):   # a data field matters when it changes the examples' shape
        from mmdit_jax.data.registry import dataset_spec

        try:
            shape = [tuple(dataset_spec(c.data.name).example_shape(c.data)) for c in (saved, given)]
        except Exception:  # an unknown data set: the schema reports it
            return True
        return shape[0] != shape[1]
    return False


def run_config(given: Any | None, workdir: str, mode: str) -> Any:
    """The config a ``--mode=mode`` run on ``workdir`` uses: ``given`` (``--config``), else the workdir's
    ``config.json``. With both, fields that change the model's shapes must agree (a resumed or sampled model has
    the checkpoint's shapes): ConfigError listing those that differ; other differences are reported and used.
    A training run over a workdir without checkpoints may change anything."""
    path = os.path.join(workdir, "config.json")
    if given is None:
        if not os.path.isfile(path):
            raise ConfigError(f"--config is required: --workdir={workdir!r} has no config.json to read it from "
                              "(give --config=configs/<file>.py, or the workdir of a trained run)")
        return load_workdir_config(workdir)
    if not os.path.isfile(path) or (mode == "train" and not checkpoint_steps(os.path.join(workdir, "checkpoints"))):
        return given
    saved = load_workdir_config(workdir)
    a, b = _flat(saved), _flat(given)
    differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    shaped = [k for k in differing if _changes_shapes(k, saved, given)]
    if shaped:
        listed = ", ".join(f"{k} ({a.get(k)!r} in config.json, {b.get(k)!r} in --config)" for k in shaped[:6])
        more = f" and {len(shaped) - 6} more" if len(shaped) > 6 else ""
        raise ConfigError(f"--config differs from {path} in fields that change the model's shapes: {listed}{more}; "
                          f"drop --config to use the workdir's config, or give a new --workdir")
    if differing:
        report(f"--config overrides {path} in: {', '.join(differing[:12])}"
               f"{' ...' if len(differing) > 12 else ''}")
    return given
