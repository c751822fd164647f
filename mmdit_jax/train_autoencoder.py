"""``python -m mmdit_jax.train_autoencoder --config=configs/vae_shapes.py[:tiny] --workdir=DIR``: train a KL
autoencoder, resuming from the newest checkpoint in DIR, and export ``DIR/vae/`` (``mmdit_jax.train.autoencoder``).

Override any field with ``--config.a.b=value``; unknown keys and invalid values are rejected at start with one
line naming the field (exit status 2; the traceback too with ``--verbosity=1``), as ``python -m mmdit_jax``.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from mmdit_jax.checks import ConfigError
from mmdit_jax.reporting import exit_on_input_error, quiet_library_logs, report
from mmdit_jax.runtime import configure_runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Autoencoder config file (configs/vae_shapes.py[:tiny]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, reconstructions and vae/ go.")
_RUNTIME = flags.DEFINE_bool("tuned_runtime", True, "Apply mmdit_jax.runtime's per-platform process settings.")
flags.mark_flags_as_required(["config", "workdir"])


def _run() -> None:
    import jax

    from mmdit_jax.train.autoencoder import train_autoencoder

    report(f"{jax.device_count()} devices ({jax.devices()[0].platform}), workdir={_WORKDIR.value}")
    train_autoencoder(_CONFIG.value, _WORKDIR.value)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if _RUNTIME.value:  # before the first JAX computation
        configure_runtime()
    quiet_library_logs()
    from mmdit_jax.checkpoints import CheckpointError

    exit_on_input_error(_run, (ConfigError, CheckpointError))


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
