"""``python -m mmdit_jax.edit --source=DIR --image=IN.png --instruction="..." [--instruction=...] --out=DIR``.

Edits one image file and writes ``turn_1.png .. turn_k.png``: each ``--instruction`` is applied to the previous
turn's result (multi-turn editing; one instruction is one edit). ``--source`` is

* a training workdir of an editing run (``edit`` section: in-context or channel-concatenating), or of any
  text-to-image run with ``--method=sdedit`` (then each ``--instruction`` is the caption of the wanted image and
  ``--strength`` in (0, 1] says how much of the image is redrawn);
* a diffusers FLUX.1 Kontext pipeline folder (``model_index.json``): in-context editing with the released model
  (``--steps``, ``--guidance_scale`` as in diffusers; the image is used at its own size, a multiple of 16).

The PNG text chunks hold ``instruction``, ``turn``, ``seed``, ``source``, ``input`` and ``method``.
``--notuned_runtime`` skips ``mmdit_jax.runtime``'s process settings. Bad input is one line ``error: ...``, exit 2
(``mmdit_jax.harness``).
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import flags

from mmdit_jax.checks import ConfigError
from mmdit_jax.harness import run_command
from mmdit_jax.reporting import report, write_png


def define_flags() -> None:
    """The command's flags, defined only when it runs as a program: importing ``edit_file`` (tests, notebooks, other
    commands whose flags share these names) registers nothing."""
    flags.DEFINE_string("source", None, "Training workdir (editing or text-to-image run) or a FLUX.1 Kontext "
                                        "pipeline folder.")
    flags.DEFINE_string("image", None, "The image to edit (PNG / JPEG).")
    flags.DEFINE_multi_string("instruction", [], "An instruction; repeat for multi-turn editing.")
    flags.DEFINE_string("out", "edited", "Output folder.")
    flags.DEFINE_integer("seed", 0, "Seed of turn 1; turn j uses seed + j - 1.")
    flags.DEFINE_enum("method", "instruction", ["instruction", "sdedit"], "instruction: the run's editing "
                      "model (or Kontext); sdedit: noise and redraw with a text-to-image model.")
    flags.DEFINE_float("strength", 0.6, "SDEdit: the fraction of the noise schedule redrawn, in (0, 1].")
    flags.DEFINE_float("guidance_scale", None, "Text guidance (default: the config's; Kontext: 2.5).")
    flags.DEFINE_float("image_guidance_scale", None, "Channel-concat runs: image guidance "
                       "(default: edit.image_guidance_scale).")
    flags.DEFINE_integer("steps", 28, "Kontext folder: sampling steps.")
    flags.mark_flags_as_required(["source", "image"])


def read_image(path: str):
    """An RGB uint8 ``(H, W, 3)`` array of an image file."""
    import numpy as np
    from PIL import Image

    if not os.path.isfile(path):
        raise ConfigError(f"image={path!r} does not exist")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def edit_file(source: str, image_path: str, instructions: Sequence[str], out: str, seed: int = 0,
              method: str = "instruction", strength: float = 0.6, guidance_scale: float | None = None,
              image_guidance_scale: float | None = None, steps: int = 28) -> list[str]:
    """Apply ``instructions`` one after another to the image file; returns the written PNG paths (one per turn)."""
    if not instructions:
        raise ConfigError("no instructions: pass --instruction=... (repeat it for several turns)")
    if method not in ("instruction", "sdedit"):
        raise ConfigError(f"method={method!r} is not valid; choose 'instruction' or 'sdedit'")
    if not os.path.isdir(source):
        raise ConfigError(f"source {source!r} is not a folder (give a training workdir or a Kontext pipeline folder)")
    image = read_image(image_path)
    from mmdit_jax.pipelines.generator import is_pipeline_folder  # after the checks: bad input fails without it

    if is_pipeline_folder(source):
        if method != "instruction":
            raise ConfigError("a Kontext pipeline folder edits by instruction: drop --method=sdedit")
        turn = _kontext_turn(source, steps, 2.5 if guidance_scale is None else guidance_scale)
        description = f"FLUX.1 Kontext folder {source}"
    else:
        turn = _workdir_turn(source, method, strength, guidance_scale, image_guidance_scale)
        description = f"workdir {source} ({method})"
    report(f"editing {image_path} in {len(instructions)} turns with {description}")
    os.makedirs(out, exist_ok=True)
    paths, current = [], image
    for j, instruction in enumerate(instructions, start=1):
        current = turn(current, instruction, seed + j - 1)
        path = os.path.join(out, f"turn_{j}.png")
        write_png(path, current, {"instruction": instruction, "turn": str(j), "seed": str(seed + j - 1),
                                  "source": os.path.abspath(source), "input": os.path.abspath(image_path),
                                  "method": method, **({"strength": str(strength)} if method == "sdedit" else {})})
        paths.append(path)
    report(f"wrote {len(paths)} images to {out}")
    return paths


def _workdir_turn(workdir: str, method: str, strength: float, guidance_scale: float | None,
                  image_guidance_scale: float | None):
    from mmdit_jax.config_schema import workdir_config
    from mmdit_jax.pipelines.editing import EditingPipeline
    from mmdit_jax.pipelines.trained_model import load_trained

    pipe = EditingPipeline(load_trained(workdir_config(workdir), workdir), guidance_scale, image_guidance_scale)
    if method == "sdedit":
        return lambda image, text, seed: pipe.sdedit(image, [text], strength, seed)[0]
    return lambda image, text, seed: pipe.edit(image, [text], seed)[0]


def _kontext_turn(folder: str, steps: int, guidance_scale: float):
    from mmdit_jax.pipelines.pipeline import Pipeline

    pipe = Pipeline.from_folder(folder)
    if not pipe.takes_reference:
        raise ConfigError(f"--source={folder!r}: this {pipe.model.pipeline} folder is not an in-context editor (valid: "
                          "a FluxKontextPipeline folder, or a workdir trained with an edit section)")

    def turn(image, text, seed):
        height, width = image.shape[:2]
        return pipe([text], reference_image=image[None], height=height, width=width, num_inference_steps=steps,
                    guidance_scale=guidance_scale, seed=seed, max_area=None)[0]

    return turn


def _main() -> None:
    f = flags.FLAGS
    edit_file(f.source, f.image, f.instruction, f.out, f.seed, f.method, f.strength, f.guidance_scale,
              f.image_guidance_scale, f.steps)


if __name__ == "__main__":
    define_flags()
    run_command(_main)
