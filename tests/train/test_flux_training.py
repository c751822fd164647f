"""The FLUX family trains and samples through the unchanged trainer (``configs/default.py:tiny`` with
``model = family_config("flux", ...)`` on 32x32x3 pixels: 2x2 packing gives 12-channel tokens)."""

import os

import numpy as np

from configs.default import get_config
from mmdit_jax import commands
from mmdit_jax.config_schema import validate_config
from mmdit_jax.families import family_config
from mmdit_jax.reporting import read_metrics
from mmdit_jax.train import loop


def flux_tiny():
    cfg = get_config("tiny")
    cfg.model = family_config("flux", in_channels=12, out_channels=12, num_layers=1, num_single_layers=1,
                              num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6), joint_attention_dim=96,
                              pooled_projection_dim=96, guidance_embeds=False)
    return cfg


def test_flux_family_trains_and_samples(tmp_path):
    cfg = flux_tiny()
    validate_config(cfg)
    workdir = str(tmp_path)
    summary = loop.train(cfg, workdir)
    assert summary["last_step"] == cfg.train.num_steps
    losses = [r["loss"] for r in read_metrics(workdir) if "loss" in r]
    assert losses and all(np.isfinite(losses))
    grid = commands.sample(cfg, workdir)
    assert os.path.exists(grid)
