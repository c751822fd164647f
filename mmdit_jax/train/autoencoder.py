"""Training a KL autoencoder (``models.vae.AutoencoderKL``) on an image data set of the registry, then exporting
it as a diffusers ``vae/`` folder (``train.autoencoder_export``; docs/vae.md, "Training a VAE here").

The loss of a batch ``x: (B, H, W, C)`` in [-1, 1], with posterior ``mean, logvar: (B, h, w, L)``, one draw
``z = mean + exp(logvar / 2) eps`` and its decoding ``x_hat = decode(z): (B, H, W, C)``:

    rec_b = sum_{i,j,c} d(x_hat - x)_{bijc}                         d(u) = |u| (``l1``) or u^2 (``mse``)
    KL_b  = 1/2 sum_{i,j,l} (mean^2 + exp(logvar) - 1 - logvar)_{bijl}   = KL(N(mean, exp(logvar)) || N(0, I))
    loss  = 1/B sum_b (rec_b + kl_weight KL_b) / (H W C)

i.e. LDM's autoencoder loss (per-image sums, batch mean; no perceptual or adversarial term) divided by the pixel
count: the first term reads as a per-pixel error and ``kl_weight`` means what it means in LDM (1e-6 there).

Single process, single device; the step loop is the one every trainer shares (``train.loop.run_steps``). Workdir:
``checkpoints/<step>/`` (Orbax: state and data-iterator state; a restart continues exactly), ``tensorboard/``,
``metrics.jsonl``, ``reconstructions/step_*.png`` (held-out inputs | their reconstructions; written atomically),
``config.json`` and, when training ends, ``vae/`` (the export).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmdit_jax.checkpoints import Checkpointer, check_workdir
from mmdit_jax.checks import (
    ConfigError,
    check_choice,
    check_keys,
    check_positive,
    check_positive_int,
)
from mmdit_jax.data.pipeline import build_sources, default_data_dir, train_iterator
from mmdit_jax.data.registry import DatasetSpec, dataset_spec, validate_data_config
from mmdit_jax.data.render import to_grid
from mmdit_jax.models.vae import AutoencoderKL, VAEConfig, sample_latents
from mmdit_jax.reporting import MetricWriter, report, write_text_atomic
from mmdit_jax.train.autoencoder_export import export_vae
from mmdit_jax.train.loop import run_steps
from mmdit_jax.train.pictures import write_picture
from mmdit_jax.train.state import learning_rate_schedule, make_optimizer

Array = jax.Array
RECONSTRUCTION = ("l1", "mse")
FIELDS = {
    "loss": {"reconstruction", "kl_weight"},
    "optim": {"learning_rate", "warmup_steps", "schedule", "final_lr_fraction", "b1", "b2", "eps", "weight_decay",
              "grad_clip"},
    "train": {"num_steps", "log_every", "checkpoint_every", "image_every", "keep_checkpoints",
              "async_checkpointing"},
    "export": {"num_images", "batch_size"},
    "eval": {"num_images", "grid_images"},
}


# ------------------------------------------------------------------------------------------------
# Loss and train step


def kl_divergence(mean: Array, logvar: Array) -> Array:
    """``(B, h, w, L)`` twice -> ``(B,)``: KL(N(mean, exp(logvar)) || N(0, I)) of each image's posterior."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl, axis=tuple(range(1, kl.ndim)))


def autoencoder_loss(x: Array, x_hat: Array, mean: Array, logvar: Array, reconstruction: str,
                     kl_weight: float) -> tuple[Array, dict[str, Array]]:
    """The module docstring's loss; also returns its terms: ``reconstruction`` (per pixel) and ``kl`` (per image)."""
    diff = x_hat.astype(jnp.float32) - x.astype(jnp.float32)
    per_pixel = jnp.abs(diff) if reconstruction == "l1" else jnp.square(diff)
    pixels = math.prod(x.shape[1:])
    rec, kl = jnp.mean(per_pixel), jnp.mean(kl_divergence(mean, logvar))
    return rec + kl_weight * kl / pixels, {"reconstruction": rec, "kl": kl, "latent_std": jnp.std(mean)}


@flax.struct.dataclass
class AEState:
    step: Array
    params: Any
    opt_state: Any


def make_train_step(vae_cfg: VAEConfig, loss_cfg: Any, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule) -> Callable[[AEState, Array, Array], tuple[AEState, dict]]:
    """The jitted ``step(state, x, key) -> (state, metrics)`` (state donated); the posterior draw uses
    ``fold_in(key, state.step)``, so the keys depend only on the run's key and the step."""
    model = AutoencoderKL(vae_cfg)
    kind, kl_weight = loss_cfg.reconstruction, float(loss_cfg.kl_weight)

    def step(state: AEState, x: Array, key: Array) -> tuple[AEState, dict]:
        eps_key = jax.random.fold_in(key, state.step)

        def loss_fn(params: Any) -> tuple[Array, dict]:
            mean, logvar = model.apply({"params": params}, x, method="encode")
            x_hat = model.apply({"params": params}, sample_latents(mean, logvar, eps_key), method="decode")
            return autoencoder_loss(x, x_hat, mean, logvar, kind, kl_weight)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new = AEState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)
        return new, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                     "learning_rate": schedule(state.step)}

    return jax.jit(step, donate_argnums=(0,))


def init_state(vae_cfg: VAEConfig, key: Array, image_shape: tuple[int, ...],
               optimizer: optax.GradientTransformation) -> AEState:
    """Step 0: parameters from ``key``, a fresh optimizer state (one compiled program: eager initialisation
    would compile every initialiser op separately). Committed to the first device, as restored arrays are, so a
    fresh and a resumed run compile the same train step."""
    def init(key: Array) -> AEState:
        params = AutoencoderKL(vae_cfg).init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
        return AEState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

    return jax.device_put(jax.jit(init)(key), jax.devices()[0])


def make_reconstruct(vae_cfg: VAEConfig) -> Callable[[Any, Array], Array]:
    """The jitted ``(params, x) -> decode(mean)``: the deterministic reconstruction."""
    return jax.jit(lambda p, x: AutoencoderKL(vae_cfg).apply({"params": p}, x)[0])


def reconstruct(fn: Callable[[Any, Array], Array], params: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` (``make_reconstruct``) over ``images: (N, H, W, C)`` in zero-padded batches of ``batch_size``."""
    out = []
    for i in range(0, len(images), batch_size):
        chunk = np.asarray(images[i:i + batch_size], np.float32)
        padded = np.pad(chunk, ((0, batch_size - len(chunk)),) + ((0, 0),) * 3)
        out.append(np.asarray(fn(params, padded))[:len(chunk)])
    return np.concatenate(out)


def pixel_l1(images: np.ndarray, recons: np.ndarray) -> float:
    """Mean ``|x - x_hat|`` in [0, 1] pixel units (both in [-1, 1]; reconstructions clipped as a picture is)."""
    return float(np.mean(np.abs(np.clip(recons, -1, 1) - images)) / 2)


def reconstruction_grid(images: np.ndarray, recons: np.ndarray, rows: int) -> np.ndarray:
    """``(H, W, 3)`` uint8: the inputs' grid | a white 2-pixel bar | the reconstructions' grid (same layout)."""
    left, right = to_grid(images, rows), to_grid(recons, rows)
    return np.concatenate([left, np.full((left.shape[0], 2, 3), 255, np.uint8), right], axis=1)


# ------------------------------------------------------------------------------------------------
# Config


def _non_negative(field: str, value: Any, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value >= 0 or value == float("inf"):
        raise ConfigError(f"{field} must be a{'n integer' if integer else ' finite number'} >= 0, got {value!r}")


def validate_config(config: Any) -> VAEConfig:
    """Check every field once at start-up (errors name the field); returns the model config."""
    check_keys("config", config.keys(), {"seed", "data", "vae", *FIELDS})
    for section, fields in FIELDS.items():
        if section not in config:
            raise ConfigError(f"config has no {section!r} section (fields {sorted(fields)})")
        check_keys(section, config[section].keys(), fields)
        missing = sorted(fields - set(config[section].keys()))
        if missing:
            raise ConfigError(f"{section} is missing fields {missing}")
    _non_negative("seed", config.seed, integer=True)
    spec = validate_data_config(config.data)
    vae = VAEConfig.from_dict(config.vae)
    shape = spec.example_shape(config.data)
    if len(shape) != 3:
        raise ConfigError(f"data.name={config.data.name!r} has examples of shape {shape}, not (S, S, C) images")
    for field in ("in_channels", "out_channels"):
        if getattr(vae, field) != shape[-1]:
            raise ConfigError(f"vae.{field}={getattr(vae, field)} but data.name={config.data.name!r} images have "
                              f"{shape[-1]} channels")
    if shape[0] % vae.downscale:
        raise ConfigError(f"data.image_size={shape[0]} is not divisible by the VAE's downscale {vae.downscale} "
                          f"(2^(len(vae.block_out_channels) - 1)): the decoder would not give back the input size")
    check_choice("loss.reconstruction", config.loss.reconstruction, RECONSTRUCTION)
    _non_negative("loss.kl_weight", config.loss.kl_weight)
    o = config.optim
    for field in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        check_positive_int(f"train.{field}", config.train[field])
    learning_rate_schedule(o, config.train.num_steps)
    _non_negative("optim.warmup_steps", o.warmup_steps, integer=True)
    for field in ("final_lr_fraction", "weight_decay", "grad_clip"):
        _non_negative(f"optim.{field}", o[field])
    for field in ("b1", "b2"):
        if isinstance(o[field], bool) or not isinstance(o[field], (int, float)) or not 0 <= o[field] < 1:
            raise ConfigError(f"optim.{field} must be in [0, 1), got {o[field]!r}")
    check_positive("optim.eps", o.eps)
    _non_negative("train.image_every", config.train.image_every, integer=True)
    if not isinstance(config.train.async_checkpointing, bool):
        raise ConfigError(f"train.async_checkpointing must be True or False, got {config.train.async_checkpointing!r}")
    for field in ("export.num_images", "export.batch_size", "eval.num_images", "eval.grid_images"):
        section, name = field.split(".")
        check_positive_int(field, config[section][name])
    return vae


# ------------------------------------------------------------------------------------------------
# Training


def _images(spec: DatasetSpec, source: Any, n: int, field: str) -> np.ndarray:
    """The first ``n`` images of a split, in record order, as training examples (in [-1, 1])."""
    if len(source) < n:
        raise ConfigError(f"{field}={n} but the split has only {len(source)} images")
    return np.stack([spec.to_example(source[i]) for i in range(n)])


def train_autoencoder(config: Any, workdir: str) -> dict[str, Any]:
    """Train until ``train.num_steps`` (resuming from the newest checkpoint), then measure the held-out
    reconstruction error and export ``<workdir>/vae/``. Returns a summary."""
    vae_cfg = validate_config(config)
    check_workdir(workdir)
    c, total, spec = config, config.train.num_steps, dataset_spec(config.data.name)
    sources = build_sources(c.data, c.data.data_dir or default_data_dir(workdir))
    eval_x = _images(spec, sources["test"], c.eval.num_images, "eval.num_images")
    grid_x = eval_x[:c.eval.grid_images]
    rows = max(1, int(math.sqrt(len(grid_x))))
    it = train_iterator(sources["train"], c.data.batch_size, c.seed,
                        lambda r: {"x": spec.to_example(r)},
                        num_workers=c.data.num_workers)
    key_init, key_train = jax.random.split(jax.random.PRNGKey(c.seed))
    schedule, optimizer = learning_rate_schedule(c.optim, total), make_optimizer(c.optim, total)
    state = init_state(vae_cfg, key_init, eval_x.shape[1:], optimizer)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=c.train.keep_checkpoints,
                                async_save=c.train.async_checkpointing)
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
    restored, start, data_state = checkpointer.restore_latest(abstract), 0, None
    if restored is not None:
        start, state, data_state = restored
        report(f"resumed from checkpoint step {start}")
    config_json = c.to_json_best_effort(sort_keys=True)
    write_text_atomic(os.path.join(workdir, "config.json"), config_json)
    step_fn, recon_fn = make_train_step(vae_cfg, c.loss, optimizer, schedule), make_reconstruct(vae_cfg)
    writer = MetricWriter(workdir)
    grid_path = None

    def reconstructions(step: int, state: AEState) -> None:
        """The held-out grid's inputs | reconstructions as ``reconstructions/step_<step>.png``, and its error."""
        nonlocal grid_path
        recons = reconstruct(recon_fn, state.params, grid_x, c.export.batch_size)
        grid = reconstruction_grid(grid_x, recons, rows)
        grid_path = write_picture(os.path.join(workdir, "reconstructions"), step, grid)
        writer.image(step, "reconstructions", grid)
        writer.scalars(step, {"eval/grid_pixel_l1": pixel_l1(grid_x, recons)})

    run = run_steps(state, lambda state, batch: step_fn(state, batch["x"], key_train), it, start=start, total=total,
                    log_every=c.train.log_every, checkpoint_every=c.train.checkpoint_every,
                    batch_size=c.data.batch_size, checkpointer=checkpointer, config_json=config_json, writer=writer,
                    metric_values=lambda metrics: {k: float(v) for k, v in metrics.items()}, data_state=data_state,
                    extras=[(c.train.image_every, reconstructions)])
    state = run.state
    heldout = pixel_l1(eval_x, reconstruct(recon_fn, state.params, eval_x, c.export.batch_size))
    folder = os.path.join(workdir, "vae")
    stats = export_vae(vae_cfg, {"params": state.params}, folder,
                       _images(spec, sources["train"], c.export.num_images, "export.num_images"), c.export.batch_size)
    writer.scalars(total, {"eval/heldout_pixel_l1": heldout, "export/latent_mean": stats["latent_mean"],
                           "export/latent_std": stats["latent_std"]})
    writer.close()
    summary = {"steps": total, "start_step": start, "seconds": run.seconds, "final_loss": run.last_loss,
               "examples_per_second": run.examples_per_second, "heldout_pixel_l1": heldout,
               "heldout_images": len(eval_x), **stats, "vae_folder": folder, "grid": grid_path}
    report(f"done: {summary}")
    return summary


__all__ = ["autoencoder_loss", "kl_divergence", "make_train_step", "train_autoencoder", "validate_config",
           "export_vae", "AEState"]
