"""Everything a run needs, built once from a validated config: mesh, data, text embeddings, model, state.

Shared by ``--mode=train | sample | eval`` so the three see the same model and conditioning.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.config_schema import model_config
from mmdit_jax.data.pipeline import build_sources, captions_of, image_transform, train_iterator
from mmdit_jax.data.text_cache import TextEmbeddingCache, fingerprint
from mmdit_jax.diffusion.schedules import Schedule, get_schedule
from mmdit_jax.models.mmdit import MMDiT
from mmdit_jax.models.text.conditioning import SD3TextEncoders, sd3_text_encoders_from_config
from mmdit_jax.train import sharding
from mmdit_jax.train.metrics import report
from mmdit_jax.train.checkpointing import Checkpointer, abstract_with_shardings, check_workdir
from mmdit_jax.train.state import TrainState, init_state, learning_rate, make_optimizer
from mmdit_jax.train.step import make_train_step
from mmdit_jax.checks import ConfigError

Array = jax.Array


@dataclasses.dataclass
class Experiment:
    config: Any
    workdir: str
    mesh: jax.sharding.Mesh
    schedule: Schedule
    model: MMDiT
    buffers: dict[str, Any]
    encoders: SD3TextEncoders
    sources: dict[str, Any]
    caption_index: dict[str, int]
    context: np.ndarray            # (U, T, d) float16: embeddings of every distinct training caption
    pooled: np.ndarray             # (U, d_pool) float16
    state: TrainState
    state_shardings: Any
    checkpointer: Checkpointer
    optimizer: Any

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config.data.image_size, self.config.data.image_size, 3)

    def device_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, Array]:
        """Gather the cached text embeddings and place the batch sharded over all devices."""
        idx = host_batch["text_index"]
        batch = {"image": host_batch["image"], "context": self.context[idx].astype(np.float32),
                 "pooled": self.pooled[idx].astype(np.float32)}
        out = {}
        for k, v in batch.items():
            s = sharding.batch_sharding(self.mesh, v.ndim)
            out[k] = jax.make_array_from_process_local_data(s, v)
        return out

    def train_iterator(self):
        cfg = self.config
        return train_iterator(self.sources["train"], cfg.data.batch_size, cfg.seed, image_transform(self.caption_index),
                              jax.process_index(), jax.process_count(), cfg.data.num_workers)

    def train_step(self):
        cfg = self.config
        d_l, d_g = self.encoders.widths
        step = make_train_step(self.model, self.buffers, self.schedule, self.optimizer, cfg,
                               lambda s: learning_rate(cfg.optim, cfg.train.num_steps, s), (d_l, d_g),
                               cfg.text.clip_l.max_length)
        batch_sh = {k: sharding.batch_sharding(self.mesh, n) for k, n in (("image", 4), ("context", 3), ("pooled", 2))}
        return jax.jit(step, in_shardings=(self.state_shardings, batch_sh, None),
                       out_shardings=(self.state_shardings, None), donate_argnums=(0,))

    def config_json(self) -> str:
        return self.config.to_json_best_effort(sort_keys=True)


def _encode_captions(enc: SD3TextEncoders, captions: list[str], workdir: str, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    parts = [enc.clip_l.variables, enc.clip_g.variables, enc.t5.variables if enc.t5 else None,
             cfg.text.to_json_best_effort(sort_keys=True)]
    cache = TextEmbeddingCache(os.path.join(workdir, "text_cache"), fingerprint(*parts))
    encode = jax.jit(lambda c, y: (c.astype(jnp.float16), y.astype(jnp.float16)))
    c, y = cache.encode(captions, lambda caps: encode(*enc.encode(caps)), batch_size=256)
    return np.asarray(c), np.asarray(y)


def build(config: Any, workdir: str, restore: bool = True) -> tuple[Experiment, int, dict | None]:
    """Build the experiment; restore the newest readable checkpoint. Returns (experiment, start step, data state)."""
    check_workdir(workdir)
    cfg = config
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
    if cfg.data.batch_size % mesh.size:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by the device count {mesh.size}")
    if cfg.data.batch_size % jax.process_count():
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by the process count "
                          f"{jax.process_count()}")
    schedule = get_schedule(cfg.schedule)
    model_cfg = model_config(cfg)
    key = jax.random.PRNGKey(cfg.seed)
    key_model, key_text = jax.random.split(key)

    sources = build_sources(cfg.data, cfg.data.data_dir or os.path.join(workdir, "tfds"))
    encoders = sd3_text_encoders_from_config(cfg.text, key_text)
    unique = sorted(set(captions_of(sources["train"])))
    report(f"text-embedding cache: {len(unique)} distinct captions")
    context, pooled = _encode_captions(encoders, unique, workdir, cfg)
    if context.shape[-1] != model_cfg.joint_attention_dim or pooled.shape[-1] != model_cfg.pooled_projection_dim:
        raise ConfigError(f"text encoders give context width {context.shape[-1]} and pooled width {pooled.shape[-1]}, "
                          f"but model.joint_attention_dim={model_cfg.joint_attention_dim} and "
                          f"model.pooled_projection_dim={model_cfg.pooled_projection_dim}")

    model = MMDiT(model_cfg)
    s = cfg.data.image_size
    variables = model.init(key_model, jnp.zeros((1, s, s, 3)), jnp.zeros((1,)), jnp.asarray(context[:1], jnp.float32),
                           jnp.asarray(pooled[:1], jnp.float32) if model_cfg.use_pooled else None)
    buffers = {"buffers": variables["buffers"]}
    optimizer = make_optimizer(cfg.optim, cfg.train.num_steps)
    state = init_state(variables["params"], optimizer)
    state_sh = sharding.state_shardings(state, mesh)
    state = jax.device_put(state, state_sh)

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints,
                                async_save=cfg.train.async_checkpointing)
    start, data_state = 0, None
    if restore:
        restored = checkpointer.restore_latest(abstract_with_shardings(state, state_sh))
        if restored is not None:
            start, state, data_state = restored
            report(f"resumed from checkpoint step {start}")
        else:
            report(f"no checkpoint in {checkpointer.directory}: starting from step 0")
    exp = Experiment(cfg, workdir, mesh, schedule, model, buffers, encoders, sources,
                     {c: i for i, c in enumerate(unique)}, context, pooled, state, state_sh, checkpointer, optimizer)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(json.dumps(json.loads(exp.config_json()), indent=1))
    return exp, start, data_state
