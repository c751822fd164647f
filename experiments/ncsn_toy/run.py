"""Run the NCSN 2D study: ``python -m experiments.ncsn_toy.run --config=configs/ncsn_toy.py --outdir=experiments/ncsn_toy``.

Writes ``ncsn_toy.png`` (data density, data scores, plain vs annealed samples) and ``RESULTS.md``.
"""

from __future__ import annotations

import os
import time

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments.ncsn_toy.study import evaluate, learned_score_fn, train_score_model  # noqa: E402
from mmdit_jax import reporting  # noqa: E402
from mmdit_jax.data.toy2d import NCSN_MIXTURE  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/ncsn_toy.py", "Study configuration.")
_OUTDIR = flags.DEFINE_string("outdir", "experiments/ncsn_toy", "Where the figure and RESULTS.md go.")

LABELS = {
    "iid": "i.i.d. samples (noise floor)",
    "plain_exact": "plain Langevin, exact data score",
    "annealed_exact": "annealed Langevin, exact scores (repo convention)",
    "annealed_learned": "annealed Langevin, MLP trained by DSM",
}


def figure(panels: dict, path: str) -> None:
    grid = jnp.linspace(-8, 8, 200)
    xx, yy = jnp.meshgrid(grid, grid)
    pts = jnp.stack([xx.ravel(), yy.ravel()], -1)
    mu = jnp.asarray(NCSN_MIXTURE.means)
    dens = sum(w * jnp.exp(-0.5 * jnp.sum((pts - m) ** 2, -1)) / (2 * jnp.pi)
               for w, m in zip(NCSN_MIXTURE.weights, mu))
    coarse = jnp.linspace(-8, 8, 21)
    cx, cy = jnp.meshgrid(coarse, coarse)
    cpts = jnp.stack([cx.ravel(), cy.ravel()], -1)
    s = NCSN_MIXTURE.score(cpts)
    fig, axes = plt.subplots(1, 5, figsize=(22, 4.5))
    axes[0].imshow(dens.reshape(200, 200), origin="lower", extent=(-8, 8, -8, 8), cmap="viridis")
    axes[0].set_title("data density")
    axes[1].quiver(cpts[:, 0], cpts[:, 1], s[:, 0], s[:, 1], angles="xy")
    axes[1].set_title("data scores")
    for ax, name in zip(axes[2:], ("plain_exact", "annealed_exact", "annealed_learned")):
        x = panels[name]
        ax.scatter(x[:, 0], x[:, 1], s=2)
        ax.set_title(LABELS[name], fontsize=9)
    for ax in axes:
        ax.set_xlim(-8, 8)
        ax.set_ylim(-8, 8)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def results_md(config, summary: dict, train_loss: float, seconds: float) -> str:
    rows = "\n".join(
        f"| {LABELS[n]} | {summary[n]['weight'][0]:.3f} ± {summary[n]['weight'][1]:.3f} "
        f"| {summary[n]['mmd2'][0]:.4f} ± {summary[n]['mmd2'][1]:.4f} |" for n in LABELS)
    return f"""# NCSN 2D study (Song & Ermon 2019, Fig. 3)

Command: `python -m experiments.ncsn_toy.run --config=configs/ncsn_toy.py --outdir=experiments/ncsn_toy`
Machine: {reporting.machine()}; wall time {seconds:.0f} s.

Data 0.2·N((−5,−5), I) + 0.8·N((5,5), I). {config.n_samples} samples per panel initialised uniform on
[−{config.init_box:g}, {config.init_box:g}]². Plain Langevin T = {config.plain.n_steps}; annealed Langevin
L = {config.schedule.num_levels}, σ geometric {config.schedule.sigma_max:g} → {config.schedule.sigma_min:g},
T = {config.annealed.n_steps_each} per level; step ε = 0.1 in the paper's convention A = step_size
{config.annealed.step_size:g} in our convention B. Mode weight = fraction assigned to the (5,5) component
(truth 0.80; binomial s.e. at n = 1280 is 0.011). MMD² is the unbiased RBF statistic (bandwidth
{config.mmd_bandwidth:g}) against a fresh i.i.d. sample. Mean ± std over {config.n_seeds} sampling seeds
(1000 … {999 + config.n_seeds}); model seed {config.seed}; final DSM training loss {train_loss:.3f}.

| sampler | weight of (5,5) | MMD² |
|---|---|---|
{rows}

Reference (docs/score_matching.md §6, an independent 10-seed numpy reproduction): plain 0.508 ± 0.013,
annealed 0.774–0.783.

Reading: plain Langevin leaves the mass where the uniform initialisation put it (≈ half per basin: the
modes are too far apart to cross in {config.plain.n_steps} steps), so it misses the 0.8/0.2 weights. Annealing
from σ = {config.schedule.sigma_max:g} lets samples feel both modes while the perturbed density is still
unimodal, and the relative weights come out right — with the exact scores and with the learned MLP. The
learned model's final level is the score of data ∗ N(0, 1), so its samples are wider than the data (its MMD²
is above the floor), as in the "exact perturbed scores" row of docs/score_matching.md §6.

![panels](ncsn_toy.png)
"""


def main(_):
    config = _CONFIG.value
    os.makedirs(_OUTDIR.value, exist_ok=True)
    start = time.time()
    module, params, schedule, losses = train_score_model(config)
    summary, panels = evaluate(config, learned_score_fn(module, params, schedule, config.model.sigma_data))
    figure(panels, os.path.join(_OUTDIR.value, "ncsn_toy.png"))
    text = results_md(config, summary, float(losses[-500:].mean()), time.time() - start)
    with open(os.path.join(_OUTDIR.value, "RESULTS.md"), "w") as f:
        f.write(text)
    for name, stats in summary.items():
        print(f"{name:18s} weight {stats['weight'][0]:.3f} ± {stats['weight'][1]:.3f}  "
              f"mmd2 {stats['mmd2'][0]:.4f} ± {stats['mmd2'][1]:.4f}")


if __name__ == "__main__":
    app.run(main)
