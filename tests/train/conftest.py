"""Fixtures shared by the training tests."""

import pytest

from configs.default import get_config as default_config
from mmdit_jax.train import loop


@pytest.fixture(scope="session")
def tiny_base_run(tmp_path_factory):
    """``(config, workdir)`` of a trained ``configs/default.py:tiny`` run (6 steps, checkpoints 3 and 6), the base
    of the fine-tuning tests. Read-only: a test that trains it further or deletes from it needs its own run."""
    workdir = str(tmp_path_factory.mktemp("tiny_base"))
    cfg = default_config("tiny")
    cfg.train.sample_every = 0
    loop.train(cfg, workdir)
    return cfg, workdir
