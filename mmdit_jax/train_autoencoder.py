"""``python -m mmdit_jax.train_autoencoder --config=configs/vae_shapes.py[:tiny] --workdir=DIR``: train a KL
autoencoder, resuming from the newest checkpoint in DIR, and export ``DIR/vae/`` (``mmdit_jax.train.autoencoder``).

Override any field with ``--config.a.b=value``; a missing config file, unknown keys and invalid values are rejected
at start with one line naming the flag or field (exit status 2; the traceback too with ``--verbosity=1``), as
``python -m mmdit_jax``. ``--notuned_runtime`` skips ``mmdit_jax.runtime``'s process settings (``mmdit_jax.harness``).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from mmdit_jax.harness import run_command
from mmdit_jax.reporting import report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Autoencoder config file (configs/vae_shapes.py[:tiny]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, reconstructions and vae/ go.")
flags.mark_flags_as_required(["config", "workdir"])


def _run() -> None:
    import jax

    from mmdit_jax.checks import check_finite_values
    from mmdit_jax.train.autoencoder import train_autoencoder

    check_finite_values("", _CONFIG.value)

    report(f"{jax.device_count()} devices ({jax.devices()[0].platform}), workdir={_WORKDIR.value}")
    train_autoencoder(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    run_command(_run)
