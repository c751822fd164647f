"""The shared command line of the study's experiments.

Toy mode (the study's own models): ``--config``, ``--workdir`` (cached stages), ``--outdir``.

Folder mode (``--pipeline=<diffusers SD3 / SD3.5 / FLUX.1 folder>``; ``--config`` and ``--workdir`` are not used):
``--prompts`` (a file, one prompt a line), ``--seeds``, ``--steps``, ``--size``, ``--guidance_scale``, ``--bf16``,
``--dreamsim_dir``; the steering experiment adds ``--steer`` (a file of ``p+ | p-`` lines) and ``--weights``.
The logic is in ``mmdit_jax.study.folder_study``. ``--notuned_runtime`` skips ``mmdit_jax.runtime``'s process
settings. Bad input is one line ``error: ...`` and exit status 2 (``mmdit_jax.harness``).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any, Callable

from absl import flags
from ml_collections import config_flags

from mmdit_jax.checks import ConfigError
from mmdit_jax.harness import run_command
from mmdit_jax.reporting import report

FOLDER_FLAGS = ("prompts", "seeds", "steps", "size", "guidance_scale", "bf16", "dreamsim_dir")
STEERING_FLAGS = ("steer", "weights")


def _define_folder_flags(steering: bool) -> None:
    flags.DEFINE_string("pipeline", None, "A local diffusers pipeline folder (StableDiffusion3Pipeline: SD3 / SD3.5; "
                        "FluxPipeline: FLUX.1): run the study on it instead of the toy models (--workdir unused).")
    flags.DEFINE_string("prompts", None, "Folder mode: a text file, one prompt a line ('#' lines skipped); default: "
                        "a few built-in prompts of increasing length.")
    flags.DEFINE_list("seeds", None, "Folder mode: comma-separated sampling seeds (default 0).")
    flags.DEFINE_integer("steps", 28, "Folder mode: sampling steps.")
    flags.DEFINE_integer("size", None, "Folder mode: image height = width in pixels (default: the model's size).")
    flags.DEFINE_float("guidance_scale", None, "Folder mode: SD3 CFG scale (default 7.0) / FLUX embedded guidance "
                       "(default 3.5).")
    flags.DEFINE_bool("bf16", False, "Folder mode: compute the transformer and the VAE in bfloat16.")
    flags.DEFINE_string("dreamsim_dir", "", "Folder mode: local folder with DreamSim's weights; used when the "
                        "`dreamsim` package imports (nothing is downloaded). Otherwise the offline 'pixel' metric.")
    if steering:
        flags.DEFINE_string("steer", None, "Folder mode: a text file of 'p+ | p-' lines (default: a few built-in "
                            "pairs).")
        flags.DEFINE_list("weights", None, "Folder mode: comma-separated steering weights; 0 is always run (the "
                          "exactness check). Default 0,0.5,1,2,4.")


def folder_settings(steering: bool) -> Any:
    """The parsed flags as a ``folder_study.FolderSettings`` (files read, numbers checked)."""
    from mmdit_jax.study import folder_study as fs

    f = flags.FLAGS
    return fs.FolderSettings(
        pipeline=f.pipeline, prompts=fs.read_prompts(f.prompts),
        pairs=fs.read_pairs(f.steer) if steering else fs.DEFAULT_PAIRS,
        weights=fs.parse_numbers("weights", f.weights, float, fs.DEFAULT_WEIGHTS) if steering else fs.DEFAULT_WEIGHTS,
        seeds=fs.parse_numbers("seeds", f.seeds, int, (0,)), steps=f.steps, size=f.size,
        guidance_scale=f.guidance_scale, dtype="bfloat16" if f.bf16 else "float32", dreamsim_dir=f.dreamsim_dir,
        command=_command_line())


def _command_line() -> str:
    """``python -m <module> <flags>`` of this process, as typed."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
    return f"{program} {shlex.join(sys.argv[1:])}".strip()


def run_experiment(run: Callable[[Any, str, str], dict], default_outdir: str,
                   folder_run: Callable[[Any, str], dict] | None = None, steering: bool = False) -> None:
    """Define the flags, then ``run(config, workdir, outdir)`` (toy mode) or ``folder_run(settings, outdir)`` (with
    ``--pipeline``), and print the RESULTS.md. ``steering``: also define ``--steer`` and ``--weights``. A folder
    run's default outdir is ``runs/<experiment>/<folder name>`` (the toy results in ``default_outdir`` stay)."""
    config = config_flags.DEFINE_config_file("config", "configs/pooled_study.py", "Study configuration (toy mode).")
    workdir = flags.DEFINE_string("workdir", "runs/pooled_study", "Cache of the study's stages (toy mode, shared).")
    outdir = flags.DEFINE_string("outdir", default_outdir, "Where RESULTS.md and figures go (folder mode default: "
                                 "runs/<experiment>/<folder name>).")
    if folder_run is not None:
        _define_folder_flags(steering)

    def study() -> str:
        f = flags.FLAGS
        if folder_run is None or f.pipeline is None:
            given = [n for n in FOLDER_FLAGS + STEERING_FLAGS if n in f and f[n].present]
            if given:
                raise ConfigError(f"--{given[0]} applies to folder mode only: add --pipeline=<diffusers pipeline "
                                  "folder>")
            run(config.value, workdir.value, outdir.value)
            return outdir.value
        if f["workdir"].present:
            report(f"--pipeline given: --workdir={workdir.value} is not used")
        settings = folder_settings(steering)
        out = outdir.value
        if not f["outdir"].present:
            out = os.path.join("runs", os.path.basename(default_outdir), os.path.basename(os.path.normpath(f.pipeline)))
        folder_run(settings, out)
        return out

    def print_results() -> None:
        with open(os.path.join(study(), "RESULTS.md")) as f:
            print(f.read())

    run_command(print_results, input_errors=(ConfigError,))  # the study reads no checkpoints (nor loads Orbax)
