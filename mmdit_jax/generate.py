"""``python -m mmdit_jax.generate --source=DIR --prompt="..." [--prompt_file=F] --out=DIR``: prompts -> PNG files.

``--source`` is a diffusers SD3 / SD3.5 or FLUX.1 pipeline folder (``model_index.json``, weights on local disk) or a
training workdir of ``python -m mmdit_jax`` (its ``config.json`` and newest checkpoint). Each image ``k`` (prompt-major,
``--num_images_per_prompt`` per prompt) uses seed ``--seed + k`` and is reproducible from its prompt and seed alone;
the PNG's text chunks hold ``prompt``, ``negative_prompt``, ``seed``, ``steps``, ``guidance_scale``, ``height``,
``width``, ``source`` and ``dtype`` (resolved values, not "default"), and for a workdir ``checkpoint_step``. PNGs of
the same names already in ``--out`` are refused unless ``--overwrite``. ``--guidance_scale`` is the CFG scale of SD3
and of a workdir, the embedded guidance of FLUX.1 dev; a ``--negative_prompt`` on a FLUX folder turns on true CFG
at scale 4 (two model calls per step). ``--bf16`` computes the transformer (and a pipeline folder's VAE) in
bfloat16. ``--notuned_runtime`` skips ``mmdit_jax.runtime``'s process settings. Bad input is one line
``error: ...``, exit 2 (``mmdit_jax.harness``).
"""

from __future__ import annotations

import os
import re
from typing import Sequence

from absl import flags

from mmdit_jax.checks import (
    ConfigError,
    check_new_outputs,
    check_number,
    check_output_folder,
    check_positive_int,
    read_prompt_file,
)
from mmdit_jax.harness import run_command
from mmdit_jax.reporting import report, write_png

_SOURCE = flags.DEFINE_string("source", None, "Diffusers pipeline folder (SD3, SD3.5, FLUX.1) or training workdir.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeat the flag for several).")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "A text file, one prompt per line ('#' lines skipped).")
_NEGATIVE = flags.DEFINE_string("negative_prompt", None, "Negative prompt (default: the source's).")
_OUT = flags.DEFINE_string("out", "generated", "Output folder for the PNGs.")
_PER_PROMPT = flags.DEFINE_integer("num_images_per_prompt", 1, "Images per prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first image; image k uses seed + k.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps (default: 28, or the workdir's sampler).")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "SD3 / workdir: CFG scale (default 7.0 / the config's); "
                                "FLUX: embedded guidance (default 3.5).")
_HEIGHT = flags.DEFINE_integer("height", None, "Image height (pipeline folder; default: the model's size).")
_WIDTH = flags.DEFINE_integer("width", None, "Image width (pipeline folder; default: the model's size).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Images per compiled call (pipeline folder).")
_BF16 = flags.DEFINE_bool("bf16", False, "Compute the transformer (and a pipeline folder's VAE) in bfloat16.")
_LORA = flags.DEFINE_string("lora", None, "A diffusers / PEFT LoRA file (or folder) merged into the transformer.")
_LORA_SCALE = flags.DEFINE_float("lora_scale", 1.0, "Weight of the --lora adapter (diffusers' lora_scale).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace PNGs of the same names in --out (default: refuse).")
flags.mark_flags_as_required(["source"])

LORA_SCALE_RANGE = (-16.0, 16.0)    # diffusers' lora_scale is a weight near 1; beyond this is a typo
GUIDANCE_RANGE = (0.0, 100.0)


def read_prompts(prompts: Sequence[str], prompt_file: str | None) -> list[str]:
    """The ``--prompt`` flags, then the lines of ``--prompt_file`` (blank lines and ``#`` comments skipped)."""
    out = [p for p in prompts]
    if prompt_file is not None:
        out += read_prompt_file("--prompt_file", prompt_file)
    if not out:
        raise ConfigError("no prompts: pass --prompt=... (repeatable) or --prompt_file=FILE")
    return out


def check_request(source: str, out: str, per_prompt: int, batch_size: int, lora: str | None, lora_scale: float,
                  steps: int | None, guidance_scale: float | None, height: int | None, width: int | None) -> None:
    """The checks that need no model, with the flags' names: run before anything is loaded or created."""
    if not os.path.isdir(source):
        raise ConfigError(f"--source={source!r} is not a folder (give a diffusers pipeline folder or a training "
                          "workdir)")
    for flag, value in (("--num_images_per_prompt", per_prompt), ("--batch_size", batch_size)):
        check_positive_int(flag, value)
    for flag, value in (("--steps", steps), ("--height", height), ("--width", width)):
        if value is not None:
            check_positive_int(flag, value)
    check_number("--guidance_scale", guidance_scale, *GUIDANCE_RANGE)
    check_number("--lora_scale", lora_scale, *LORA_SCALE_RANGE)
    if lora is not None and not os.path.exists(lora):
        raise ConfigError(f"--lora={lora!r} does not exist (give a .safetensors file or a folder holding one)")
    if lora is not None and os.path.isfile(lora):
        from mmdit_jax.interop.safetensors_io import check_safetensors_file

        check_safetensors_file("--lora", lora)
    check_output_folder("--out", out)


def file_name(index: int, prompt: str, seed: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48] or "image"
    return f"{index:04d}_{slug}_seed{seed}.png"


def generate(source: str, prompts: Sequence[str], out: str, per_prompt: int = 1, seed: int = 0,
             batch_size: int = 1, dtype: str = "float32", lora: str | None = None, lora_scale: float = 1.0,
             overwrite: bool = False, **options) -> list[str]:
    """Write one PNG per (prompt, seed) into ``out``; returns the paths. ``lora``: a diffusers / PEFT LoRA file
    merged into the transformer with weight ``lora_scale``. Existing PNGs of the same names are an error unless
    ``overwrite``."""
    from tqdm import tqdm

    check_request(source, out, per_prompt, batch_size, lora, lora_scale, options.get("steps"),
                  options.get("guidance_scale"), options.get("height"), options.get("width"))
    from mmdit_jax.config_schema import workdir_config
    from mmdit_jax.pipelines.generator import (
        Options,
        add_lora,
        is_pipeline_folder,
        open_source,
        seeds_for,
    )

    opts = Options(**options)
    seeds = seeds_for(len(prompts), per_prompt, seed)
    jobs = [(k, prompts[k // per_prompt], s) for k, s in enumerate(seeds)]
    check_new_outputs("--out", [os.path.join(out, file_name(k, p, s)) for k, p, s in jobs], overwrite)
    config = None
    if not is_pipeline_folder(source) and os.path.isfile(os.path.join(source, "config.json")):
        config = workdir_config(source)
    gen = open_source(source, dtype, config)
    if lora is not None:
        add_lora(gen, lora, lora_scale)
    resolved = gen.settings(opts)        # the values the defaults stand for, so the metadata reproduces the image
    report(f"generating {len(jobs)} images from {gen.description} into {out}")
    os.makedirs(out, exist_ok=True)
    paths = []
    with tqdm(total=len(jobs), unit="image") as bar:
        for start in range(0, len(jobs), batch_size):
            part = jobs[start:start + batch_size]
            images = gen.images([p for _, p, _ in part], [s for _, _, s in part], opts)
            for (k, prompt, s), image in zip(part, images):
                meta = {"prompt": prompt, "seed": str(s), "source": os.path.abspath(source), "dtype": dtype,
                        **({"lora": os.path.abspath(lora), "lora_scale": str(lora_scale)} if lora else {}),
                        "negative_prompt": "" if opts.negative_prompt is None else opts.negative_prompt,
                        **({} if gen.checkpoint_step is None else {"checkpoint_step": str(gen.checkpoint_step)}),
                        **{k: str(v) for k, v in resolved.items()}}
                path = os.path.join(out, file_name(k, prompt, s))
                write_png(path, image, meta)
                paths.append(path)
            bar.update(len(part))
    report(f"wrote {len(paths)} images to {out}")
    return paths


def _main() -> None:
    generate(_SOURCE.value, read_prompts(_PROMPT.value, _PROMPT_FILE.value), _OUT.value, _PER_PROMPT.value,
             _SEED.value, _BATCH.value, "bfloat16" if _BF16.value else "float32", _LORA.value, _LORA_SCALE.value,
             _OVERWRITE.value, negative_prompt=_NEGATIVE.value, steps=_STEPS.value, guidance_scale=_GUIDANCE.value,
             height=_HEIGHT.value, width=_WIDTH.value)


if __name__ == "__main__":
    run_command(_main)
