"""A sampler-ready model from a training workdir: the family, the newest checkpoint's EMA weights, the text path.

    model = load_trained(config, workdir)      # reads <workdir>/checkpoints only; builds no data set,
                                               # no optimizer state, no embedding cache; writes nothing

The non-trained collections (e.g. the MMDiT's position table) are rebuilt from the config by the family's
``init``, compiled so that the discarded parameter initialisation costs nothing. A LoRA fine-tune's checkpoints
hold only its adapter: it is merged into the base run's weights (``mmdit_jax.adapters.finetune``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from mmdit_jax.adapters.finetune import load_finetune, lora_config, trains_text_encoder
from mmdit_jax.adapters.lora import LoraConfig, init_lora
from mmdit_jax.checks import ConfigError
from mmdit_jax.checkpoints import CheckpointError, checkpoint_steps, restore_params
from mmdit_jax.data.registry import DatasetSpec, dataset_spec
from mmdit_jax.families import Family
from mmdit_jax.components.from_config import (
    checkpoint_params,
    data_shape,
    example_inputs,
    family_from_config,
    run_keys,
    text_from_config,
)
from mmdit_jax.components.codec import LatentSpace
from mmdit_jax.components.text import TextConditioner


@dataclasses.dataclass
class TrainedModel:
    """What sampling needs: ``family.net(variables, cond)`` is the ``net(x, t)`` of the score-based core."""

    config: Any                     # the experiment config (sampler, guidance, schedule, ...)
    family: Family
    variables: dict[str, Any]       # {"params": EMA weights, **non-trained collections}
    step: int                       # the checkpoint's step; 0 = the untrained initialisation
    data: DatasetSpec               # how examples look and how samples are drawn as a picture
    data_shape: tuple[int, ...]     # one example, no batch axis
    text: TextConditioner | None    # None: unconditional
    latent: LatentSpace | None = None   # None: samples are pixels; else decoded by this VAE before drawing

    def to_images(self, samples: Any) -> Any:
        """Samples in the model's space -> the data's examples (decoded images for a latent run)."""
        return samples if self.latent is None else self.latent.decode(samples)


def fresh_variables(family: Family, config: Any, shape: tuple[int, ...], text: TextConditioner | None,
                    params_only_shapes: bool = False) -> dict[str, Any]:
    """The initialisation of ``family`` for the run (init key from ``config.seed``). With
    ``params_only_shapes`` the params are abstract (``jax.ShapeDtypeStruct``) and only the other collections
    are computed."""
    cond_shapes = {k: v.shape for k, v in text.encode([""]).items()} if text is not None else {}
    family.check_conditioning(cond_shapes)
    x, cond = example_inputs(shape, cond_shapes)
    key = run_keys(config.seed)[0]
    if not params_only_shapes:
        return jax.jit(family.init)(key, x, cond)
    params = jax.eval_shape(lambda k: family.init(k, x, cond)["params"], key)
    others = jax.jit(lambda k: family.non_trainable(family.init(k, x, cond)))(key)
    return {"params": params, **others}


def load_trained(config: Any, workdir: str, allow_untrained: bool = False) -> TrainedModel:
    """The EMA weights of the newest checkpoint in ``<workdir>/checkpoints`` with the run's family and text path.

    Raises ``CheckpointError`` naming the folder if there is no checkpoint, unless ``allow_untrained`` (then
    the model is the run's initialisation, step 0). Nothing is written to ``workdir``.
    """
    family = family_from_config(config)
    shape = data_shape(config)
    family.check_data(shape)
    text = text_from_config(config, family)
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not checkpoint_steps(directory):
        if not allow_untrained:
            raise CheckpointError(f"no checkpoint in {directory}: nothing to sample or evaluate (is --workdir the "
                                  "folder of a trained run?); --allow_untrained samples the untrained initialisation")
        variables, step = fresh_variables(family, config, shape, text), 0
    else:
        abstract = fresh_variables(family, config, shape, text, params_only_shapes=True)
        step, params, text = _restore(config, workdir, abstract["params"], text)
        variables = {**abstract, "params": params}
    return TrainedModel(config, family, variables, step, dataset_spec(config.data.name), shape, text,
                        LatentSpace.from_config(config))


def _on_device(tree: Any) -> Any:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), tree)


def _restore_trained(config: Any, directory: str, model_part: Any, text: TextConditioner | None) -> tuple[int, Any]:
    """``(step, trained)``: the EMA trained tree of the newest checkpoint, whose model part has the shapes of
    ``model_part`` (params or adapter) and, when the CLIP towers were trained too, a ``text`` part."""
    abstract = jax.eval_shape(lambda: model_part)
    if trains_text_encoder(config):
        abstract = {"model": abstract, "text": jax.eval_shape(lambda: text.encoders.clip_params())}
    return restore_params(directory, _on_device(abstract))


def _restore(config: Any, workdir: str, abstract_params: Any,
             text: TextConditioner | None) -> tuple[int, Any, TextConditioner | None]:
    """``(step, model params, text path)`` of a workdir's newest checkpoint: a LoRA fine-tune's adapter merged
    into its recorded base, a text-encoder fine-tune's CLIP towers swapped into the text path."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    lora = lora_config(config)
    if lora is None:
        step, trained = _restore_trained(config, directory, abstract_params, text)
        params = trained["model"] if trains_text_encoder(config) else trained
    else:   # the checkpoints hold the adapter only: merge it into the recorded base
        finetune = load_finetune(config, workdir, _on_device(abstract_params), record=False,
                                 load_checkpoint=checkpoint_params(family_from_config(config)))
        adapter_shapes = jax.eval_shape(lambda: init_lora(jax.random.PRNGKey(0), abstract_params, lora))
        step, trained = _restore_trained(config, directory, adapter_shapes, text)
        adapter = trained["model"] if trains_text_encoder(config) else trained
        params = finetune.compose(finetune.frozen, adapter)
    if trains_text_encoder(config):
        text = text.with_clip_params(trained["text"])
    return step, params, text


def load_adapter(config: Any, workdir: str) -> tuple[int, Any, LoraConfig]:
    """``(step, adapter, lora)``: the EMA adapter of a LoRA fine-tune's newest checkpoint (no base is loaded).
    Raises ConfigError for a run without LoRA and CheckpointError naming the folder without a checkpoint."""
    lora = lora_config(config)
    if lora is None:
        raise ConfigError(f"{workdir} is not a LoRA fine-tune (finetune.lora.rank is 0 or absent)")
    family = family_from_config(config)
    text = text_from_config(config, family)
    abstract = fresh_variables(family, config, data_shape(config), text, params_only_shapes=True)
    adapter_shapes = jax.eval_shape(lambda: init_lora(jax.random.PRNGKey(0), abstract["params"], lora))
    step, trained = _restore_trained(config, os.path.join(os.path.abspath(workdir), "checkpoints"),
                                     adapter_shapes, text)
    return step, trained["model"] if trains_text_encoder(config) else trained, lora
