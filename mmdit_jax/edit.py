"""``python -m mmdit_jax.edit --source=DIR --image=IN.png --instruction="..." [--instruction=...] --out=DIR``.

Edits one image file and writes ``turn_1.png .. turn_k.png``: each ``--instruction`` is applied to the previous
turn's result (multi-turn editing; one instruction is one edit). ``--source`` is

* a training workdir of an editing run (``edit`` section: in-context or channel-concatenating), or of any
  text-to-image run with ``--method=sdedit`` (then each ``--instruction`` is the caption of the wanted image and
  ``--strength`` in (0, 1] says how much of the image is redrawn);
* a diffusers FLUX.1 Kontext pipeline folder (``model_index.json``): in-context editing with the released model
  (``--steps``, ``--guidance_scale`` as in diffusers; the image is used at its own size, a multiple of 16).

The PNG text chunks hold ``instruction``, ``turn``, ``seed``, ``source``, ``input``, ``method``, ``guidance_scale``
and ``steps`` (a Kontext folder) or ``checkpoint_step`` (a workdir). ``turn_<j>.png`` files already in ``--out`` are
refused unless ``--overwrite``.
``--notuned_runtime`` skips ``mmdit_jax.runtime``'s process settings. Bad input is one line ``error: ...``, exit 2
(``mmdit_jax.harness``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from absl import flags

from mmdit_jax.checks import (
    ConfigError,
    check_choice,
    check_new_outputs,
    check_number,
    check_output_folder,
    check_positive_int,
)
from mmdit_jax.harness import run_command
from mmdit_jax.reporting import one_line, report, write_png

KONTEXT_GUIDANCE = 2.5      # diffusers' FluxKontextPipeline default
KONTEXT_STEPS = 28
GUIDANCE_RANGE = (0.0, 100.0)

Turn = Callable[[Any, str, int], Any]


def define_flags() -> None:
    """The command's flags, defined only when it runs as a program: importing ``edit_file`` (tests, notebooks, other
    commands whose flags share these names) registers nothing."""
    flags.DEFINE_string("source", None, "Training workdir (editing or text-to-image run) or a FLUX.1 Kontext "
                                        "pipeline folder.")
    flags.DEFINE_string("image", None, "The image to edit (PNG / JPEG).")
    flags.DEFINE_multi_string("instruction", [], "An instruction; repeat for multi-turn editing.")
    flags.DEFINE_string("out", "edited", "Output folder.")
    flags.DEFINE_bool("overwrite", False, "Replace turn_<j>.png files already in --out (default: refuse).")
    flags.DEFINE_integer("seed", 0, "Seed of turn 1; turn j uses seed + j - 1.")
    flags.DEFINE_enum("method", "instruction", ["instruction", "sdedit"], "instruction: the run's editing "
                      "model (or Kontext); sdedit: noise and redraw with a text-to-image model.")
    flags.DEFINE_float("strength", 0.6, "SDEdit: the fraction of the noise schedule redrawn, in (0, 1].")
    flags.DEFINE_float("guidance_scale", None, "Text guidance (default: the config's; Kontext: 2.5).")
    flags.DEFINE_float("image_guidance_scale", None, "Channel-concat runs: image guidance "
                       "(default: edit.image_guidance_scale).")
    flags.DEFINE_integer("steps", None, f"Kontext folder: sampling steps (default {KONTEXT_STEPS}; a workdir "
                         "samples with its config's sampler).")
    flags.mark_flags_as_required(["source", "image"])


def read_image(path: str, flag: str = "--image"):
    """An RGB uint8 ``(H, W, 3)`` array of an image file."""
    import numpy as np
    from PIL import Image

    if not os.path.isfile(path):
        raise ConfigError(f"{flag}={path!r} does not exist; give a PNG or JPEG file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:   # not an image, or a truncated one
        raise ConfigError(f"{flag}={path!r} is not a readable image (PNG, JPEG, ...): {one_line(e)}") from e


def check_request(source: str, instructions: Sequence[str], out: str, method: str, strength: float,
                  guidance_scale: float | None, image_guidance_scale: float | None, steps: int | None) -> None:
    """The checks that need no model, with the flags' names: run before anything is loaded or created."""
    if not instructions:
        raise ConfigError("no instructions: pass --instruction=... (repeat it for several turns)")
    check_choice("--method", method, ("instruction", "sdedit"))
    if not os.path.isdir(source):
        raise ConfigError(f"--source={source!r} is not a folder (give a training workdir or a Kontext pipeline "
                          "folder)")
    check_number("--strength", strength, 0.0, 1.0, low_open=True)
    check_number("--guidance_scale", guidance_scale, *GUIDANCE_RANGE)
    check_number("--image_guidance_scale", image_guidance_scale, *GUIDANCE_RANGE)
    if steps is not None:
        check_positive_int("--steps", steps)
    from mmdit_jax.pipelines.generator import is_pipeline_folder

    if is_pipeline_folder(source) and method != "instruction":
        raise ConfigError("--method=sdedit: a Kontext pipeline folder edits by instruction; drop --method")
    if not is_pipeline_folder(source) and steps is not None:
        raise ConfigError(f"--steps={steps} applies to a Kontext pipeline folder; the workdir {source!r} samples "
                          "with its config's sampler (sample.sampler): drop --steps")
    check_output_folder("--out", out)


def edit_file(source: str, image_path: str, instructions: Sequence[str], out: str, seed: int = 0,
              method: str = "instruction", strength: float = 0.6, guidance_scale: float | None = None,
              image_guidance_scale: float | None = None, steps: int | None = None,
              overwrite: bool = False) -> list[str]:
    """Apply ``instructions`` one after another to the image file; returns the written PNG paths (one per turn).
    Existing ``turn_<j>.png`` files in ``out`` are an error unless ``overwrite``."""
    check_request(source, instructions, out, method, strength, guidance_scale, image_guidance_scale, steps)
    image = read_image(image_path)
    paths = [os.path.join(out, f"turn_{j}.png") for j in range(1, len(instructions) + 1)]
    check_new_outputs("--out", paths, overwrite)
    from mmdit_jax.pipelines.generator import is_pipeline_folder  # after the checks: bad input fails without it

    if is_pipeline_folder(source):
        steps = KONTEXT_STEPS if steps is None else steps
        guidance = KONTEXT_GUIDANCE if guidance_scale is None else guidance_scale
        turn = _kontext_turn(source, image_path, image.shape[:2], steps, guidance)
        description = f"FLUX.1 Kontext folder {source}"
        record = {"steps": str(steps), "guidance_scale": str(guidance)}
    else:
        turn, record = _workdir_turn(source, image_path, image.shape, method, strength, guidance_scale,
                                     image_guidance_scale)
        description = f"workdir {source} ({method})"
    report(f"editing {image_path} in {len(instructions)} turns with {description}")
    os.makedirs(out, exist_ok=True)
    current = image
    for j, (instruction, path) in enumerate(zip(instructions, paths), start=1):
        current = turn(current, instruction, seed + j - 1)
        write_png(path, current, {"instruction": instruction, "turn": str(j), "seed": str(seed + j - 1),
                                  "source": os.path.abspath(source), "input": os.path.abspath(image_path),
                                  "method": method, **record,
                                  **({"strength": str(strength)} if method == "sdedit" else {})})
        report(f"turn {j}/{len(instructions)}: {path}")
    report(f"wrote {len(paths)} images to {out}")
    return paths


def _workdir_turn(workdir: str, image_path: str, image_shape: tuple[int, ...], method: str, strength: float,
                  guidance_scale: float | None, image_guidance_scale: float | None) -> tuple[Turn, dict[str, str]]:
    """The edit of one turn with a workdir's model, and what the PNGs record of it."""
    from mmdit_jax.config_schema import workdir_config
    from mmdit_jax.pipelines.editing import EditingPipeline
    from mmdit_jax.pipelines.trained_model import load_trained

    model = load_trained(workdir_config(workdir), workdir)
    if tuple(image_shape) != tuple(model.data_shape):
        h, w = model.data_shape[:2]
        raise ConfigError(f"--image={image_path!r} is {image_shape[0]}x{image_shape[1]} pixels; the model of "
                          f"{workdir} edits {h}x{w} images")
    pipe = EditingPipeline(model, guidance_scale, image_guidance_scale)
    record = {"checkpoint_step": str(model.step), "guidance_scale": str(pipe.guidance_scale),
              "steps": str(model.config.sample.sampler.get("n_steps", "sampler default"))}
    if pipe.mode == "channel_concat":
        record["image_guidance_scale"] = str(pipe.image_guidance_scale)
    if method == "sdedit":
        return (lambda image, text, seed: pipe.sdedit(image, [text], strength, seed)[0]), record
    return (lambda image, text, seed: pipe.edit(image, [text], seed)[0]), record


def _kontext_turn(folder: str, image_path: str, size: tuple[int, int], steps: int, guidance_scale: float) -> Turn:
    from mmdit_jax.pipelines.pipeline import Pipeline

    pipe = Pipeline.from_folder(folder)
    if not pipe.takes_reference:
        raise ConfigError(f"--source={folder!r}: this {pipe.model.pipeline} folder is not an in-context editor (valid: "
                          "a FluxKontextPipeline folder, or a workdir trained with an edit section)")
    try:
        pipe.check_size(*size)
    except ConfigError as e:
        raise ConfigError(f"--image={image_path!r} is {size[0]}x{size[1]} pixels, which this folder cannot edit: "
                          f"{e}") from e

    def turn(image, text, seed):
        height, width = image.shape[:2]
        return pipe([text], reference_image=image[None], height=height, width=width, num_inference_steps=steps,
                    guidance_scale=guidance_scale, seed=seed, max_area=None)[0]

    return turn


def _main() -> None:
    f = flags.FLAGS
    edit_file(f.source, f.image, f.instruction, f.out, f.seed, f.method, f.strength, f.guidance_scale,
              f.image_guidance_scale, f.steps, f.overwrite)


if __name__ == "__main__":
    define_flags()
    run_command(_main)
