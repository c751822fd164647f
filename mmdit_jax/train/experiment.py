"""Everything a training run needs, built once from a validated config: mesh, data, the family, the cached text
conditioning, train state and checkpointer. Inference builds none of this (``mmdit_jax.pipelines``).

A latent run (``latent.vae``) trains on the VAE latents of the training images, encoded once and cached
(``mmdit_jax.components.codec``). Batches on the device are ``{"x": (B, *data_shape), "cond": {entry: (B, ...)}}``; a text-conditioned run
gathers ``cond`` from the embeddings of every distinct training caption, encoded once and cached on disk.
A fine-tune (``finetune.init_from``) starts from another run's EMA weights; with LoRA the state's params are the
adapter and the base weights are passed to the step as a frozen argument (``mmdit_jax.adapters.finetune``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.adapters.finetune import Finetune, load_finetune, trains_text_encoder
from mmdit_jax.checkpoints import Checkpointer, abstract_with_shardings, check_workdir
from mmdit_jax.checks import ConfigError
from mmdit_jax.data.pipeline import (
    build_sources,
    captions_of,
    example_transform,
    train_iterator,
)
from mmdit_jax.data.registry import DatasetSpec, dataset_spec
from mmdit_jax.data.text_cache import TextEmbeddingCache, fingerprint
from mmdit_jax.families import Family, build_family
from mmdit_jax.models.flops import num_parameters
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
from mmdit_jax.setup.latent_cache import LatentRecords, encode_split, latent_spec
from mmdit_jax.setup.tasks import TrainingTask, chain_dropouts, training_task
from mmdit_jax.pipelines.trained_model import TrainedModel, fresh_variables
from mmdit_jax.reporting import report, write_text_atomic
from mmdit_jax.train import sharding
from mmdit_jax.train.dreambooth import personalised_source
from mmdit_jax.train.state import (
    TrainState,
    init_state,
    learning_rate_schedule,
    make_optimizer,
)
from mmdit_jax.train.step import make_train_step

Array = jax.Array


@dataclasses.dataclass
class Experiment:
    config: Any
    task: TrainingTask                  # what kind of run (``setup.tasks``): its conditions, dropout, view
    workdir: str
    mesh: jax.sharding.Mesh
    family: Family
    data: DatasetSpec
    data_shape: tuple[int, ...]
    non_trainable: dict[str, Any]       # the family's collections other than params (e.g. buffers)
    text: TextConditioner | None        # None: unconditional
    latent: LatentSpace | None          # None: pixel space; else examples are this VAE's cached latents
    sources: dict[str, Any]
    caption_index: dict[str, int] | None
    cond_table: dict[str, np.ndarray]   # {entry: (U, ...) float16}: conditioning of every distinct caption
    state: TrainState
    state_shardings: Any
    checkpointer: Checkpointer
    optimizer: Any
    finetune: Finetune | None = None    # None: trained from the initialisation
    token_table: dict[str, np.ndarray] | None = None   # {clip_l, clip_g: (U, T) int32}: CLIP towers trained too

    @property
    def frozen(self) -> Any:
        return None if self.finetune is None else self.finetune.frozen

    def model_params(self, trained: Any) -> Any:
        """The model's params from the state's trained tree (``state.params`` or ``state.ema_params``)."""
        if self.token_table is not None:
            trained = trained["model"]
        return trained if self.finetune is None else self.finetune.compose(self.frozen, trained)

    def text_conditioner(self, trained: Any) -> TextConditioner | None:
        """The text path sampling uses with the state's trained tree (its CLIP towers when they are trained)."""
        return self.text if self.token_table is None else self.text.with_clip_params(trained["text"])

    def device_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Gather the cached conditioning and place the batch sharded over all devices."""
        idx = host_batch.get("text_index")
        batch = {"x": host_batch["x"], "cond": {k: v[idx].astype(np.float32) for k, v in self.cond_table.items()}}
        for name, entry in self.task.image_conditions().items():   # e.g. an edit's source image as cond["reference"]
            batch["cond"][entry] = host_batch[f"cond/{name}"]
        if "loss_weight" in host_batch:
            batch["loss_weight"] = host_batch["loss_weight"]
        if self.token_table is not None:
            batch["tokens"] = {k: v[idx] for k, v in self.token_table.items()}
        return jax.tree_util.tree_map(
            lambda v: jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh, v.ndim), v), batch)

    def train_iterator(self):
        cfg = self.config
        return train_iterator(self.sources["train"], cfg.data.batch_size, cfg.seed,
                              example_transform(self.data, self.caption_index), jax.process_index(),
                              jax.process_count(), cfg.data.num_workers)

    def batch_shardings(self) -> dict[str, Any]:
        ndim = {"x": 1 + len(self.data_shape), "cond": {k: v.ndim for k, v in self.cond_table.items()}}
        for entry in self.task.image_conditions().values():
            ndim["cond"][entry] = 1 + len(self.data_shape)
        if "loss_weight" in self.sources["train"][0]:
            ndim["loss_weight"] = 1
        if self.token_table is not None:
            ndim["tokens"] = {k: 2 for k in self.token_table}
        return jax.tree_util.tree_map(lambda n: sharding.batch_sharding(self.mesh, n), ndim)

    def train_step(self):
        """The jit-compiled ``step(state, batch, key) -> (state, metrics)``, state donated."""
        cfg = self.config
        drop = self.text.dropout(cfg.text.drop_probs) if self.text is not None and cfg.text.drop_probs else None
        drop = chain_dropouts(drop, self.task.dropout())
        compose = None if self.frozen is None else self.finetune.compose
        text_encode = None if self.token_table is None else self.text.encoders.encode_clip_tokens
        step = make_train_step(self.family, self.non_trainable, self.optimizer, cfg,
                               learning_rate_schedule(cfg.optim, cfg.train.num_steps), drop, compose, text_encode,
                               self.task.view())
        shardings = (self.state_shardings, self.batch_shardings(), None)
        frozen = self.frozen
        if frozen is None:
            return jax.jit(step, in_shardings=shardings, out_shardings=(self.state_shardings, None),
                           donate_argnums=(0,))
        # the frozen base is an argument, not a closure: closed-over arrays would be baked into the program
        compiled = jax.jit(step, in_shardings=(*shardings, sharding.state_shardings(frozen, self.mesh)),
                           out_shardings=(self.state_shardings, None), donate_argnums=(0,))
        return lambda state, batch, key: compiled(state, batch, key, frozen)

    def config_json(self) -> str:
        return self.config.to_json_best_effort(sort_keys=True)


def _encode_captions(text: TextConditioner, captions: list[str], workdir: str) -> dict[str, np.ndarray]:
    cache = TextEmbeddingCache(os.path.join(workdir, "text_cache"), fingerprint(*text.fingerprint_parts()))
    encode = jax.jit(lambda cond: {k: v.astype(jnp.float16) for k, v in cond.items()})
    return cache.encode(captions, lambda caps: encode(text.encode(caps)), batch_size=256)


def _mesh(cfg: Any) -> jax.sharding.Mesh:
    """The device mesh (``mesh`` section), checked against the batch size."""
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
    if cfg.data.batch_size % mesh.size:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by the device count {mesh.size}")
    if cfg.data.batch_size % jax.process_count():
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by the process count "
                          f"{jax.process_count()}")
    return mesh


def _training_data(cfg: Any, workdir: str, spec: DatasetSpec,
                   latent: LatentSpace | None) -> tuple[dict[str, Any], DatasetSpec]:
    """The data set's splits (``data`` section), the training split as cached latents in a latent run."""
    sources = build_sources(cfg.data, cfg.data.data_dir or os.path.join(workdir, "tfds"))
    if latent is None:
        return sources, spec
    latents = encode_split(latent, sources["train"], spec, cfg.data, "train",
                           os.path.join(workdir, "latent_cache"), cfg.latent.batch_size)
    return {**sources, "train": LatentRecords(sources["train"], latents)}, latent_spec(spec, latent)


def _finetune(cfg: Any, workdir: str, family: Family, task: TrainingTask, shape: tuple[int, ...],
              text: TextConditioner | None, mesh: jax.sharding.Mesh, record: bool) -> tuple[Finetune | None, Any]:
    """``(fine-tune, abstract variables)``: the base weights (``finetune`` section) and the shapes of the run's
    variables, or ``(None, None)`` for a run trained from its initialisation. A task whose model reads more than its
    base (a channel-concatenating editor) restores the base as it is, then widens it with zero rows."""
    if "finetune" not in cfg or not cfg.finetune.init_from:
        return None, None
    abstract = fresh_variables(family, cfg, shape, text, params_only_shapes=True)
    params_sh = sharding.state_shardings(abstract["params"], mesh)
    base_model = task.base_model(dict(cfg.model))
    base_abstract = None
    if base_model != dict(cfg.model):
        parent = build_family(base_model, family.schedule, family.timestep_scale, family.forward_mode)
        parent_params = fresh_variables(parent, cfg, shape, text, params_only_shapes=True)["params"]
        base_abstract = abstract_with_shardings(parent_params, sharding.state_shardings(parent_params, mesh))
    finetune = load_finetune(cfg, workdir, abstract_with_shardings(abstract["params"], params_sh), record=record,
                             load_checkpoint=checkpoint_params(family), base_abstract=base_abstract)
    return finetune, abstract


def _conditioning(text: TextConditioner | None, train_source: Any, workdir: str,
                  family: Family) -> tuple[dict[str, int] | None, dict[str, np.ndarray], list[str]]:
    """``(caption index, conditioning table, distinct captions)`` of the training captions, encoded once and
    cached on disk (an unconditional run: ``(None, {}, [])``)."""
    if text is None:
        return None, {}, []
    unique = sorted(set(captions_of(train_source)))
    report(f"text-embedding cache: {len(unique)} distinct captions")
    cond_table = _encode_captions(text, unique, workdir)
    family.check_conditioning({k: v.shape for k, v in cond_table.items()})
    return {c: i for i, c in enumerate(unique)}, cond_table, unique


def _trained_tree(cfg: Any, key_model: Array, params: Any, finetune: Finetune | None, text: TextConditioner | None,
                  captions: list[str]) -> tuple[Any, dict[str, np.ndarray] | None]:
    """``(trained tree, token table)``: what the optimizer trains (the params, a fine-tune's adapter or base
    weights, with the CLIP towers when they train too) and the token ids batches then carry."""
    trained = params
    if finetune is not None:
        trained = finetune.initial_trainable(jax.random.fold_in(key_model, 1))
        report(f"fine-tuning {finetune.base_workdir} (step {finetune.base_step}): "
               f"{'LoRA rank %d, ' % finetune.lora.rank if finetune.lora else 'all weights, '}"
               f"{num_parameters(trained):,} trained parameters of {num_parameters(params):,}")
    if not trains_text_encoder(cfg):
        return trained, None
    token_table = {k: np.asarray(v, np.int32) for k, v in text.encoders.clip_tokens(captions).items()}
    # copies: the state is donated to the step, the encoders' own arrays must outlive it
    trained = {"model": trained, "text": jax.tree_util.tree_map(jnp.copy, text.encoders.clip_params())}
    report(f"training the CLIP towers too: {num_parameters(trained['text']):,} parameters")
    return trained, token_table


def _restore(checkpointer: Checkpointer, state: TrainState, state_sh: Any) -> tuple[int, TrainState, dict | None]:
    """The newest readable checkpoint's ``(step, state, data state)``, or the fresh state at step 0."""
    restored = checkpointer.restore_latest(abstract_with_shardings(state, state_sh))
    if restored is None:
        report(f"no checkpoint in {checkpointer.directory}: starting from step 0")
        return 0, state, None
    report(f"resumed from checkpoint step {restored[0]}")
    return restored


def build(config: Any, workdir: str, restore: bool = True) -> tuple[Experiment, int, dict | None]:
    """Build the experiment; restore the newest readable checkpoint. Returns (experiment, start step, data state)."""
    check_workdir(workdir)
    cfg = config
    mesh = _mesh(cfg)
    task = training_task(cfg)
    family = family_from_config(cfg)
    shape = data_shape(cfg)
    family.check_data(shape)
    key_model, _ = run_keys(cfg.seed)
    latent = LatentSpace.from_config(cfg)
    sources, spec = _training_data(cfg, workdir, dataset_spec(cfg.data.name), latent)
    text = text_from_config(cfg, family)
    finetune, abstract = _finetune(cfg, workdir, family, task, shape, text, mesh, record=restore)
    if finetune is not None:   # DreamBooth: the instances, and the class images the frozen base draws (cached)
        base = TrainedModel(cfg, family, {**abstract, "params": finetune.base}, finetune.base_step, spec, shape,
                            text, latent)
        personal = personalised_source(cfg, workdir, base, latent)
        if personal is not None:
            sources = {**sources, "train": personal}
    caption_index, cond_table, captions = _conditioning(text, sources["train"], workdir, family)

    x, _ = example_inputs(shape, {})
    # compiled: initialising a transformer op by op costs seconds of dispatch, the compiled program is cached
    variables = jax.jit(family.init)(key_model, x, {k: jnp.asarray(v[:1], jnp.float32) for k, v in cond_table.items()})
    optimizer = make_optimizer(cfg.optim, cfg.train.num_steps)
    trained, token_table = _trained_tree(cfg, key_model, variables["params"], finetune, text, captions)
    state = init_state(trained, optimizer)
    state_sh = sharding.state_shardings(state, mesh)
    state = jax.device_put(state, state_sh)

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints,
                                async_save=cfg.train.async_checkpointing)
    start, data_state = 0, None
    if restore:
        start, state, data_state = _restore(checkpointer, state, state_sh)
    exp = Experiment(cfg, task, workdir, mesh, family, spec, shape, family.non_trainable(variables), text, latent,
                     sources, caption_index, cond_table, state, state_sh, checkpointer, optimizer, finetune,
                     token_table)
    if jax.process_index() == 0:
        write_text_atomic(os.path.join(workdir, "config.json"), json.dumps(json.loads(exp.config_json()), indent=1))
        from mmdit_jax.families.plugins import save_workdir_plugins

        # the modules other commands must import before this config.json's model.name resolves
        save_workdir_plugins(workdir, cfg)
    return exp, start, data_state
