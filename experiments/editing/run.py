"""Instruction editing at toy scale: in-context vs channel concatenation vs SDEdit, single- and multi-turn.

    python -m experiments.editing.run --workdir=runs/editing

Stages (each skipped when its output exists, so a rerun only redoes what is missing):

1. ``base/``: the text-to-image parent, ``configs/editing.py:base`` trained on the scenes of ``shape_edits``
   (1-3 objects, five backgrounds) with their captions; it has never seen an instruction.
2. ``in_context/`` and ``channel_concat/``: full fine-tunes of the base on (source, instruction, target) triplets
   (``configs/editing.py:in_context`` / ``:channel_concat``); same steps, data order and learning rate.
3. ``results.json`` and the grids in ``--out``:

* single turn, ``--n`` test edits per sampling seed (test stream, held-out instruction phrasings; and the training
  phrasings on the same unseen scenes and edits): success, preservation, exact and pixel deviation outside the edited region
  (``mmdit_jax.eval.edit``), overall and per edit type; SDEdit (the base model, no edit training) with the target
  scene's caption at several strengths, to compare preservation at equal success;
* multi-turn: ``--chains`` chains of ``--turns`` edits, each turn editing the previous result (SDEdit: redrawing it
  towards the next caption); per turn, the fraction of the expected scene's attributes read, exact scenes and the
  pixel deviation from the expected render (drift);
* ``grid_<method>.png``: input | turn 1 | ... | turn k for the first chains.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags
from PIL import Image

from configs.editing import get_config as editing_config
from mmdit_jax.data.edits import EDIT_TYPES, edit_chain, edit_example, scene_caption
from mmdit_jax.eval.edit import edit_scores_batch, scene_scores
from mmdit_jax.reporting import machine, quiet_library_logs, report
from mmdit_jax.runtime import configure_runtime

_WORKDIR = flags.DEFINE_string("workdir", "runs/editing", "Where the stages are cached.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Sampling seeds.")
_N = flags.DEFINE_integer("n", 192, "Single-turn test edits per phrasing set and seed.")
_CHAINS = flags.DEFINE_integer("chains", 32, "Multi-turn chains per seed.")
_TURNS = flags.DEFINE_integer("turns", 5, "Turns per chain.")
_STRENGTHS = flags.DEFINE_list("strengths", ["0.3", "0.5", "0.7", "0.9"], "SDEdit strengths.")
_MULTI_STRENGTH = flags.DEFINE_float("multi_strength", 0.7, "SDEdit strength of every multi-turn step.")
_OUT = flags.DEFINE_string("out", "experiments/editing", "Where results.json and the grids go.")

METHODS = ("in_context", "channel_concat")
TEST_STREAM = 1          # the test split's stream of the builder with data seed 0
GRID_CHAINS = 6


def train_stages(workdir: str) -> dict[str, str]:
    """The three workdirs, trained (``train`` resumes, and returns at once for a finished run)."""
    from mmdit_jax.train.loop import train

    base = os.path.join(workdir, "base")
    train(editing_config("base"), base)
    runs = {"base": base}
    for mode in METHODS:
        cfg = editing_config(mode)
        cfg.finetune.init_from = os.path.abspath(base)
        cfg.data.data_dir = os.path.join(base, "tfds")    # the base prepared the same records
        runs[mode] = os.path.join(workdir, mode)
        train(cfg, runs[mode])
    return runs


def pipelines(runs: dict[str, str]) -> dict[str, object]:
    from mmdit_jax.config_schema import workdir_config
    from mmdit_jax.pipelines.editing import EditingPipeline
    from mmdit_jax.pipelines.trained_model import load_trained

    return {name: EditingPipeline(load_trained(workdir_config(path), path)) for name, path in runs.items()}


def single_turn(pipes: dict, seeds: list[int], n: int, strengths: list[float]) -> dict:
    """``{phrasing set: {method: {metric: [value per seed]}}}``."""
    out = {}
    for held_out in (True, False):
        records = [edit_example(i, TEST_STREAM, 32, held_out=held_out) for i in range(n)]
        sources = np.stack([r["source"] for r in records])
        instructions = [r["caption"] for r in records]
        captions = [r["target_caption"] for r in records]
        methods = {m: (lambda s, m=m: pipes[m].edit(sources, instructions, s)) for m in METHODS}
        # SDEdit reads the target caption, not the instruction: the phrasing set does not change its inputs
        for strength in strengths if held_out else ():
            methods[f"sdedit_{strength:g}"] = lambda s, st=strength: pipes["base"].sdedit(sources, captions, st, s)
        table = {}
        for name, run in methods.items():
            per_seed = [edit_scores_batch(run(seed), records) for seed in seeds]
            table[name] = {k: [float(p[k]) for p in per_seed] for k in per_seed[0]}
            mean = {k: np.nanmean(v) for k, v in table[name].items() if "/" not in k}
            report(f"{'held-out' if held_out else 'training'} phrasings, {name}: "
                   + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
        out["held_out" if held_out else "training"] = table
    return out


def multi_turn(pipes: dict, seeds: list[int], chains: int, turns: int, strength: float,
               out_dir: str) -> dict:
    """``{method: {metric: [[value per turn] per seed]}}``; writes the grids of the first seed."""
    starts, expected = zip(*[edit_chain(1000 + c, turns) for c in range(chains)])
    images = np.stack([s["image"] for s in starts])
    result = {}
    for name in (*METHODS, "sdedit"):
        per_seed = []
        for seed in seeds:
            current, frames, scores = images, [images], []
            for t in range(turns):
                if name == "sdedit":
                    texts = [scene_caption(chain[t][1]) for chain in expected]
                    current = pipes["base"].sdedit(current, texts, strength, seed + 7919 * t)
                else:
                    current = pipes[name].edit(current, [chain[t][0] for chain in expected], seed + 7919 * t)
                frames.append(current)
                s = [scene_scores(current[c], expected[c][t][1]) for c in range(chains)]
                scores.append({k: float(np.nanmean([x[k] for x in s])) for k in s[0]})
            per_seed.append(scores)
            if seed == seeds[0]:
                save_grid(np.stack(frames, axis=1)[:GRID_CHAINS], os.path.join(out_dir, f"grid_{name}.png"))
        result[name] = {k: [[turn[k] for turn in s] for s in per_seed] for k in per_seed[0][0]}
        report(f"multi-turn {name}: attributes by turn "
               + " ".join(f"{np.mean([s[t] for s in result[name]['attributes']]):.3f}" for t in range(turns)))
    return result


def save_grid(frames: np.ndarray, path: str, scale: int = 4) -> None:
    """``(rows, cols, H, W, 3)`` uint8 -> one PNG, a 1-pixel grey border, upscaled ``scale``x (nearest)."""
    rows, cols, h, w, _ = frames.shape
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, 3), 96, np.uint8)
    for r in range(rows):
        for c in range(cols):
            grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = frames[r, c]
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def main(argv) -> None:
    del argv
    configure_runtime()
    quiet_library_logs()
    start = time.time()
    runs = train_stages(_WORKDIR.value)
    trained = time.time()
    pipes = pipelines(runs)
    seeds = [int(s) for s in _SEEDS.value]
    os.makedirs(_OUT.value, exist_ok=True)
    results = {
        "machine": machine(),
        "edit_types": list(EDIT_TYPES),
        "settings": {"seeds": seeds, "n": _N.value, "chains": _CHAINS.value, "turns": _TURNS.value,
                     "strengths": [float(s) for s in _STRENGTHS.value], "multi_strength": _MULTI_STRENGTH.value,
                     "train_steps": {m: int(editing_config(m).train.num_steps) for m in ("base", *METHODS)}},
        "single_turn": single_turn(pipes, seeds, _N.value, [float(s) for s in _STRENGTHS.value]),
        "multi_turn": multi_turn(pipes, seeds, _CHAINS.value, _TURNS.value, _MULTI_STRENGTH.value, _OUT.value),
    }
    results["seconds"] = {"train_stages": trained - start, "evaluation": time.time() - trained}
    with open(os.path.join(_OUT.value, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report(f"wrote {_OUT.value}/results.json in {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
