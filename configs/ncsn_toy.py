"""NCSN 2D study (Song & Ermon 2019, Fig. 3; settings and published numbers: docs/score_matching.md §6).

Data 0.2 N((-5,-5), I) + 0.8 N((5,5), I); 1280 samples from U[-8, 8]^2; paper settings in convention A
(eps = 0.1) are ``step_size = 0.05`` here (convention B). ``get_config("tiny")`` shrinks it for smoke tests.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.n_seeds = 5                      # sampling seeds; numbers are reported as mean ± std over seeds
    c.n_samples = 1280
    c.init_box = 8.0                   # x_init ~ U[-init_box, init_box]^2

    # The paper's annealing ladder: sigma geometric 20 -> 1, L = 10.
    c.schedule = ml_collections.ConfigDict(dict(name="ncsn", sigma_min=1.0, sigma_max=20.0, num_levels=10))
    c.plain = ml_collections.ConfigDict(dict(n_steps=1000, step_size=0.05))
    c.annealed = ml_collections.ConfigDict(dict(n_steps_each=100, step_size=0.05, denoise=False))

    # Score model learned by DSM (lambda = sigma^2) on samples of the mixture.
    c.model = ml_collections.ConfigDict(dict(hidden=128, depth=3, sigma_data=4.0))
    c.train = ml_collections.ConfigDict(dict(n_steps=10_000, learning_rate=1e-3, batch_size=128, loss="dsm"))

    c.mmd_bandwidth = 1.0
    if arg == "tiny":
        c.n_seeds = 2
        c.plain.n_steps = 200
        c.annealed.n_steps_each = 20
        c.train.n_steps = 500
    elif arg:
        raise ValueError(f"configs/ncsn_toy.py: unknown argument {arg!r}; valid: '' or 'tiny'")
    return c
