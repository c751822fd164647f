"""Training the KL autoencoder (mmdit_jax/train/autoencoder.py) on tiny ``shapes``: the loss against the closed
form, learning, exact resume, the diffusers export, and config errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.vae_shapes import get_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.data.pipeline import build_sources
from mmdit_jax.interop.safetensors_io import load_state_dict
from mmdit_jax.interop.vae import load_vae
from mmdit_jax.models.vae import AutoencoderKL, VAEConfig
from mmdit_jax.train.autoencoder import (
    autoencoder_loss,
    init_state,
    kl_divergence,
    make_train_step,
    train_autoencoder,
    validate_config,
)
from mmdit_jax.train.autoencoder_export import WEIGHTS_NAME, encode_means
from mmdit_jax.train.state import learning_rate_schedule, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 3   # the interrupted run stops after N steps and resumes to 2N


def tiny(data_dir, **train):
    cfg = get_config("tiny")
    cfg.data.data_dir = str(data_dir)
    cfg.train.update(**train)
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 2N-step run and one stopped after N steps then resumed to 2N, sharing one data folder."""
    root = tmp_path_factory.mktemp("autoencoder")
    data_dir = root / "tfds"
    full = train_autoencoder(tiny(data_dir, num_steps=2 * N), str(root / "full"))
    first = train_autoencoder(tiny(data_dir, num_steps=N), str(root / "split"))
    resumed = train_autoencoder(tiny(data_dir, num_steps=2 * N), str(root / "split"))
    return dict(root=root, data_dir=data_dir, full=full, first=first, resumed=resumed)


# ------------------------------------------------------------------------------------------------
# (a) the loss


def test_kl_term_equals_torch_distributions():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    mean, logvar = rng.normal(size=(2, 3, 3, 4)), rng.normal(size=(2, 3, 3, 4))
    std = torch.exp(0.5 * torch.tensor(logvar))
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(torch.tensor(mean), std),
                                            torch.distributions.Normal(0.0, 1.0)).sum(dim=(1, 2, 3)).numpy()
    got = np.asarray(kl_divergence(jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32)))
    np.testing.assert_allclose(got, ref, rtol=1e-5)


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_loss_is_per_pixel_reconstruction_plus_weighted_kl_per_pixel(kind):
    rng = np.random.default_rng(1)
    x, x_hat = rng.uniform(-1, 1, (2, 4, 4, 3)), rng.uniform(-1, 1, (2, 4, 4, 3))
    mean, logvar = rng.normal(size=(2, 2, 2, 4)), rng.normal(size=(2, 2, 2, 4))
    d = np.abs(x_hat - x) if kind == "l1" else (x_hat - x) ** 2
    kl = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar).sum(axis=(1, 2, 3))
    expected = np.mean(d.sum(axis=(1, 2, 3)) + 0.25 * kl) / (4 * 4 * 3)     # LDM's loss over the pixel count
    loss, terms = autoencoder_loss(*(jnp.asarray(a, jnp.float32) for a in (x, x_hat, mean, logvar)), kind, 0.25)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(terms["kl"]), kl.mean(), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# (b) learning


def test_loss_decreases_on_a_fixed_batch():
    cfg = get_config("tiny")
    vae = VAEConfig.from_dict(cfg.vae)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)) ** 3, jnp.float32)   # mostly dark
    optimizer = make_optimizer(cfg.optim, 30)
    state = init_state(vae, jax.random.PRNGKey(0), x.shape[1:], optimizer)
    step = make_train_step(vae, cfg.loss, optimizer, learning_rate_schedule(cfg.optim, 30))
    losses = []
    for _ in range(30):
        state, metrics = step(state, x, jax.random.PRNGKey(1))
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.6 * losses[0], losses


# ------------------------------------------------------------------------------------------------
# (c) exact resume


def test_resumed_run_is_bit_identical_to_the_uninterrupted_one(runs):
    assert runs["first"]["steps"] == N and runs["resumed"]["start_step"] == N and runs["full"]["start_step"] == 0
    a = load_state_dict(runs["root"] / "full" / "vae" / WEIGHTS_NAME)
    b = load_state_dict(runs["root"] / "split" / "vae" / WEIGHTS_NAME)
    assert a.keys() == b.keys()
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, different
    assert runs["full"]["scaling_factor"] == runs["resumed"]["scaling_factor"]


def test_run_writes_metrics_and_a_reconstruction_grid(runs):
    s = runs["full"]
    grid = np.asarray(Image.open(s["grid"]))
    assert grid.shape[1] > 2 * grid.shape[0] - 10        # inputs | reconstructions, side by side
    rows = [json.loads(line) for line in (runs["root"] / "full" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == list(range(1, 2 * N + 1)) and np.all(np.isfinite(list(losses.values())))
    assert 0 < s["heldout_pixel_l1"] < 1 and any("eval/heldout_pixel_l1" in r for r in rows)


# ------------------------------------------------------------------------------------------------
# (d) the export


def test_export_loads_in_diffusers_and_load_vae_and_its_scaling_is_measured(runs):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    folder = runs["root"] / "full" / "vae"
    cfg_json = json.loads((folder / "config.json").read_text())
    assert cfg_json["_class_name"] == "AutoencoderKL"
    ref = diffusers.AutoencoderKL.from_pretrained(str(folder)).eval()
    vae_cfg, variables = load_vae(folder)
    assert (vae_cfg.scaling_factor, vae_cfg.shift_factor) == (cfg_json["scaling_factor"], cfg_json["shift_factor"])

    # The export's images: the first export.num_images training images, in record order.
    run_cfg = get_config("tiny")
    train = build_sources(run_cfg.data, str(runs["data_dir"]))["train"]
    images = np.stack([train[i]["image"] for i in range(run_cfg.export.num_images)]).astype(np.float32) / 127.5 - 1
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(images.transpose(0, 3, 1, 2))).latent_dist
        ref_mean = dist.mean.numpy().transpose(0, 2, 3, 1)
        ref_x = ref.decode(dist.mean).sample.numpy().transpose(0, 2, 3, 1)
    mean = encode_means(vae_cfg, variables, images, run_cfg.export.batch_size)    # the export's program
    x = jax.jit(lambda v, z: AutoencoderKL(vae_cfg).apply(v, z, method="decode"))(variables, mean)
    rel = lambda a, r: float(np.max(np.abs(np.asarray(a) - r)) / np.max(np.abs(r)))  # noqa: E731
    assert rel(mean, ref_mean) <= 1e-5 and rel(x, ref_x) <= 1e-5

    m = ref_mean.astype(np.float64)        # the latent normalisation, measured on diffusers' latents
    np.testing.assert_allclose(cfg_json["scaling_factor"], 1 / m.std(), rtol=1e-4)
    np.testing.assert_allclose(cfg_json["shift_factor"], m.mean(), atol=1e-4 * m.std())


# ------------------------------------------------------------------------------------------------
# (e) config errors


@pytest.mark.parametrize("section, field, value, named", [
    ("loss", "reconstruction", "l3", "loss.reconstruction"),
    ("loss", "kl_weight", -1.0, "loss.kl_weight"),
    ("vae", "norm_num_groups", 3, "vae.norm_num_groups"),
    ("vae", "latent_channels", 0, "vae.latent_channels"),
    ("vae", "in_channels", 1, "vae.in_channels"),
    ("data", "image_size", 15, "data.image_size"),
    ("optim", "b2", 1.0, "optim.b2"),
    ("optim", "schedule", "linear", "optim.schedule"),
    ("train", "num_steps", 0, "train.num_steps"),
    ("train", "image_every", -1, "train.image_every"),
    ("export", "num_images", 0, "export.num_images"),
])
def test_bad_values_name_the_field(section, field, value, named):
    cfg = get_config("tiny")
    cfg[section][field] = value
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        validate_config(cfg)


def test_unknown_field_is_rejected():
    cfg = get_config("tiny")
    with cfg.unlocked():
        cfg.train.num_step = 5
    with pytest.raises(ConfigError, match=r"num_step\b"):
        validate_config(cfg)


def test_command_line_error_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mmdit_jax.train_autoencoder", "--config=configs/vae_shapes.py:tiny",
                           f"--workdir={tmp_path / 'w'}", "--config.loss.kl_weight=-1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: loss.kl_weight")
    assert not (tmp_path / "w").exists()       # nothing created before the config is valid
