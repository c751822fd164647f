"""The NCSN 2D study end to end: a DSM-trained MLP recovers the mode weights; the command writes its outputs."""

import os
import subprocess
import sys

import pytest

from configs.ncsn_toy import get_config
from experiments.ncsn_toy.study import evaluate, learned_score_fn, train_score_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_annealed_langevin_with_a_dsm_trained_mlp_recovers_the_mode_weights():
    config = get_config()
    config.n_seeds = 3
    module, params, schedule, losses = train_score_model(config)
    assert float(losses[-500:].mean()) < float(losses[:100].mean())
    summary, _ = evaluate(config, learned_score_fn(module, params, schedule, config.model.sigma_data))
    assert summary["annealed_learned"]["weight"][0] == pytest.approx(0.78, abs=0.05)
    assert summary["plain_exact"]["weight"][0] == pytest.approx(0.51, abs=0.03)
    assert summary["annealed_exact"]["weight"][0] == pytest.approx(0.78, abs=0.03)


def test_study_command_writes_figure_and_results(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.ncsn_toy.run", "--config=configs/ncsn_toy.py:tiny", f"--outdir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "ncsn_toy.png").stat().st_size > 10_000
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| plain Langevin, exact data score |" in text and "weight of (5,5)" in text


def test_unknown_config_argument_is_rejected():
    with pytest.raises(ValueError, match="unknown argument 'huge'"):
        get_config("huge")
