"""The pooled-CLIP study on a diffusers pipeline folder (SD3 / SD3.5, FLUX.1) with the user's prompts.

    python -m experiments.clip_removal.run    --pipeline=/path/to/stable-diffusion-3.5-medium --prompts=prompts.txt
    python -m experiments.pooled_steering.run --pipeline=/path/to/FLUX.1-dev --steer=pairs.txt --weights=0,1,2,4

* Removal: every prompt (ordered by CLIP token count) generated with and without the pooled vector
  (``remove_pooled=True``) from the same seed; deviation of the two against the token count, and a grid.
* Steering: for every pair ``(p+, p-)``, prompt and weight ``w``, the pooled vector moved by
  ``w (pooled(p+) - pooled(p-))`` (``steering=([p+], [p-], w)``) from the same seed as the unsteered image;
  a grid per pair, deviation against ``w``, and ``max |w = 0 - original|`` (0 when steering is exact).
* Deviation: DreamSim when the ``dreamsim`` package is importable and its weights are in ``--dreamsim_dir``
  (never downloaded); otherwise the ``pixel`` stand-in of ``mmdit_jax.eval.deviation`` (the toy study's
  ``features`` metric reads the toy classifier's features, which know nothing of a real model's images).
  RESULTS.md and results.json name the metric and why it was chosen.

Each image is one prompt from latents ``N(0, I)`` of shape ``(1, H / f, W / f, C)`` drawn from ``PRNGKey(seed)``
(as ``mmdit_jax.generate`` does), so for one seed every prompt and every condition starts from the same noise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from mmdit_jax import reporting
from mmdit_jax.checks import ConfigError
from mmdit_jax.eval.deviation import dreamsim_weights_missing, make_deviation
from mmdit_jax.components.text import Steering
from mmdit_jax.pipelines.folders import pipeline_classes
from mmdit_jax.pipelines.images import to_uint8
from mmdit_jax.pipelines.pipeline import Pipeline
from mmdit_jax.study import figures, report
from mmdit_jax.study.stages import mean_std

# Increasing length, from 2 to about 40 words, within what CLIP reads (75 tokens besides BOS / EOS).
DEFAULT_PROMPTS = (
    "a cat",
    "a red bicycle leaning against a brick wall",
    "a watercolor painting of a lighthouse on a rocky coast at sunset, seagulls in the sky",
    ("a cozy reading nook with a green velvet armchair, a stack of old leather books, a sleeping orange cat and warm "
     "afternoon light falling through a tall window"),
    ("a crowded night market in the rain, paper lanterns reflected in the puddles, a vendor frying noodles over a blue "
     "flame, steam rising into the cold air, people with colourful umbrellas, neon signs in the background, cinematic "
     "wide shot, 35mm film"),
)
# Phrase pairs differing in one attribute, in the spirit of the study's "long hair" / "short hair".
DEFAULT_PAIRS = (
    ("a person with long hair", "a person with short hair"),
    ("a snowy winter day", "a sunny summer day"),
    ("a watercolor painting", "a photograph"),
)
DEFAULT_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
LABEL_CHARS = 40      # prompt characters in a grid's row label


@dataclasses.dataclass(frozen=True)
class FolderSettings:
    """What a folder run uses; ``size``/``guidance_scale`` None take the pipeline's defaults (its transformer's
    sample size; 7.0 for SD3, 3.5 for FLUX)."""

    pipeline: str
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS
    weights: tuple[float, ...] = DEFAULT_WEIGHTS
    seeds: tuple[int, ...] = (0,)
    steps: int = 28
    size: int | None = None
    guidance_scale: float | None = None
    dtype: str = "float32"
    dreamsim_dir: str = ""
    command: str = ""          # the command line, for the report (default: rebuilt from the settings)

    def command_line(self, module: str) -> str:
        if self.command:
            return self.command
        flags = [f"--pipeline={self.pipeline}", f"--steps={self.steps}", f"--seeds={','.join(map(str, self.seeds))}"]
        flags += [f"--size={self.size}"] if self.size is not None else []
        flags += [f"--guidance_scale={self.guidance_scale:g}"] if self.guidance_scale is not None else []
        flags += ["--bf16"] if self.dtype == "bfloat16" else []
        flags += [f"--dreamsim_dir={self.dreamsim_dir}"] if self.dreamsim_dir else []
        return f"python -m {module} " + " ".join(flags)


# ---- the user's input ----------------------------------------------------------------------------------------


def _lines(path: str, flag: str) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` of the non-blank, non-``#`` lines of ``path``."""
    if not os.path.isfile(path):
        raise ConfigError(f"--{flag}={path!r} does not exist (give a text file)")
    with open(path, encoding="utf-8") as f:
        return [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip() and not line.lstrip().startswith("#")]


def read_prompts(path: str | None) -> tuple[str, ...]:
    """The prompts of ``--prompts`` (one a line; blank and ``#`` lines skipped), or ``DEFAULT_PROMPTS``."""
    if path is None:
        return DEFAULT_PROMPTS
    prompts = tuple(text for _, text in _lines(path, "prompts"))
    if not prompts:
        raise ConfigError(f"--prompts={path!r} holds no prompt (one prompt per line; blank and '#' lines are skipped)")
    return prompts


def read_pairs(path: str | None) -> tuple[tuple[str, str], ...]:
    """The ``p+ | p-`` lines of ``--steer`` as ``((p+, p-), ...)``, or ``DEFAULT_PAIRS``."""
    if path is None:
        return DEFAULT_PAIRS
    pairs = []
    for number, text in _lines(path, "steer"):
        parts = [p.strip() for p in text.split("|")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--steer={path!r} line {number}: {text!r} is not 'p+ | p-' (two non-empty phrases "
                              "separated by one '|', e.g. 'long hair | short hair')")
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise ConfigError(f"--steer={path!r} holds no pair (one 'p+ | p-' a line, e.g. 'long hair | short hair')")
    return tuple(pairs)


def parse_numbers(flag: str, values: Sequence[str] | None, kind: type, default: tuple) -> tuple:
    """``--flag=a,b,c`` as a tuple of ``kind`` (int or float); ``default`` when not given."""
    if values is None:
        return default
    try:
        out = tuple(kind(v) for v in values if str(v).strip())
    except ValueError:
        raise ConfigError(f"--{flag}={','.join(values)}: give comma-separated {kind.__name__}s, e.g. "
                          f"--{flag}={','.join(str(v) for v in default)}") from None
    if not out:
        raise ConfigError(f"--{flag} is empty; e.g. --{flag}={','.join(str(v) for v in default)}")
    return out


def with_zero(weights: Sequence[float]) -> tuple[float, ...]:
    """``weights`` with ``0.0`` first if absent: w = 0 is the exactness check against the unsteered image."""
    weights = tuple(dict.fromkeys(float(w) for w in weights))      # repeated weights once, in the given order
    return weights if 0.0 in weights else (0.0, *weights)


# ---- the model -----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FolderModel:
    """An opened pipeline folder with the run's sampling settings."""

    pipe: Pipeline
    class_name: str            # model_index.json's _class_name
    size: int
    steps: int
    guidance_scale: float

    def tokens(self, prompt: str) -> int:
        """CLIP-L tokens of ``prompt`` without BOS / EOS (CLIP reads at most 75 of them)."""
        return self.pipe.text.count_tokens(prompt)

    def image(self, prompt: str, seed: int, remove_pooled: bool = False,
              steering: Steering | None = None) -> np.ndarray:
        """``(H, W, 3)`` uint8: ``prompt`` from ``PRNGKey(seed)`` latents, optionally without / steering the pooled
        vector."""
        out = self.pipe.generate([prompt], height=self.size, width=self.size, num_inference_steps=self.steps,
                                 guidance_scale=self.guidance_scale, seed=int(seed), remove_pooled=remove_pooled,
                                 steering=steering)
        return to_uint8(out)[0]

    def describe(self, settings: FolderSettings) -> str:
        return (f"`{self.class_name}` folder `{settings.pipeline}` ({settings.dtype}); {self.size}x{self.size}, "
                f"{self.steps} steps, guidance scale {self.guidance_scale:g}, seeds {list(settings.seeds)}")


def pipeline_class(folder: str) -> str:
    """``model_index.json``'s ``_class_name`` of ``folder``; errors name ``--pipeline`` and the valid classes."""
    if not os.path.isdir(folder):
        raise ConfigError(f"--pipeline={folder!r} is not a folder (give a local diffusers pipeline folder; nothing is "
                          "downloaded)")
    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index):
        raise ConfigError(f"--pipeline={folder!r} has no model_index.json (give a diffusers pipeline folder: "
                          f"{sorted(pipeline_classes())})")
    with open(index) as f:
        kind = json.load(f).get("_class_name")
    if kind not in pipeline_classes():
        raise ConfigError(f"--pipeline={folder!r}: model_index.json's _class_name={kind!r} is not supported; valid: "
                          f"{sorted(pipeline_classes())}")
    return kind


def open_model(settings: FolderSettings) -> FolderModel:
    """Load the folder's pipeline and check ``--size`` / ``--steps`` against it."""
    kind = pipeline_class(settings.pipeline)
    if settings.steps < 1:
        raise ConfigError(f"--steps={settings.steps} must be an integer >= 1")
    pipe = Pipeline.from_folder(settings.pipeline, dtype=settings.dtype)
    default_guidance = pipe.default_guidance_scale
    size = pipe.default_size if settings.size is None else settings.size
    try:
        pipe.check_size(size, size)
    except ConfigError as e:
        raise ConfigError(f"--size={size}: {e}") from None
    guidance = default_guidance if settings.guidance_scale is None else settings.guidance_scale
    return FolderModel(pipe, kind, size, settings.steps, float(guidance))


# ---- the deviation metric ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Metric:
    """``fn(a, b) -> (B,)`` on image batches ``(B, H, W, 3)`` uint8; ``kind`` 'dreamsim' or 'pixel'; ``why``: the
    reason for the choice, for the report."""

    fn: Callable[[Any, Any], np.ndarray]
    kind: str
    why: str

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        """Deviation of two ``(H, W, 3)`` images."""
        return float(self.fn(a[None], b[None])[0])

    def describe(self) -> str:
        if self.kind == "dreamsim":
            return f"`dreamsim` (DreamSim ensemble; {self.why})"
        return (f"`pixel`, the offline stand-in for DreamSim: RMS difference in [0, 1] after box-averaging to at most "
                f"64 px a side (mmdit_jax/eval/deviation.py); its scale is not DreamSim's ({self.why})")


def choose_metric(dreamsim_dir: str) -> Metric:
    """DreamSim when ``dreamsim`` imports and ``dreamsim_dir`` holds its weights, else the ``pixel`` stand-in."""
    if not dreamsim_dir:
        return Metric(make_deviation("pixel"), "pixel", "no --dreamsim_dir given")
    if not os.path.isdir(dreamsim_dir):
        raise ConfigError(f"--dreamsim_dir={dreamsim_dir!r} is not a folder (give the local folder holding DreamSim's "
                          "weights, or leave it out for the offline 'pixel' metric)")
    try:
        import dreamsim  # noqa: F401
    except ImportError:
        return Metric(make_deviation("pixel"), "pixel", "the `dreamsim` package is not installed")
    missing = dreamsim_weights_missing(dreamsim_dir)
    if missing:
        return Metric(make_deviation("pixel"), "pixel", f"{dreamsim_dir} lacks DreamSim's weights {missing}")
    return Metric(make_deviation("dreamsim", dreamsim_dir=dreamsim_dir), "dreamsim", f"weights from {dreamsim_dir}")


# ---- the two studies -----------------------------------------------------------------------------------------


def by_tokens(prompts: Sequence[str], count: Callable[[str], int]) -> list[tuple[str, int]]:
    """``[(prompt, tokens)]`` in increasing token count (ties keep the given order)."""
    return sorted(((p, count(p)) for p in prompts), key=lambda pt: pt[1])


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    """``max |a - b|`` of two uint8 images, in grey levels."""
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def label(prompt: str, tokens: int | None = None) -> str:
    text = prompt if len(prompt) <= LABEL_CHARS else prompt[:LABEL_CHARS - 3] + "..."
    return text if tokens is None else f"{text} ({tokens} tok)"


def _metric_results(metric: Metric) -> dict[str, str]:
    return {"kind": metric.kind, "why": metric.why}


def _header(command: str, model: FolderModel, settings: FolderSettings, metric: Metric, seconds: float) -> str:
    return f"""Command:

    {command}

Model: {model.describe(settings)}. Machine: {reporting.machine()}. Wall time: {seconds / 60:.1f} min (model loading
and compilation included).

**Deviation metric: {metric.describe()}.** Compare numbers only within one metric."""


def removal(settings: FolderSettings, outdir: str, log: Callable[[str], None] = reporting.report) -> dict:
    """Generate every prompt with and without the pooled vector from the same seeds; writes ``removal_grid.png``
    (rows = prompts by token count, columns with / without), ``deviation_vs_tokens.png``, results.json and
    RESULTS.md into ``outdir``. Returns the results."""
    start = time.time()
    metric = choose_metric(settings.dreamsim_dir)      # a bad --dreamsim_dir fails before the model loads
    model = open_model(settings)
    os.makedirs(outdir, exist_ok=True)
    rows, grid = [], {"with pooled": [], "w/o pooled": []}
    for prompt, tokens in by_tokens(settings.prompts, model.tokens):
        dev, diff = [], []
        for seed in settings.seeds:
            with_pooled = model.image(prompt, seed)
            without = model.image(prompt, seed, remove_pooled=True)
            dev.append(metric(with_pooled, without))
            diff.append(max_abs_diff(with_pooled, without))
            if seed == settings.seeds[0]:
                grid["with pooled"].append(with_pooled)
                grid["w/o pooled"].append(without)
        rows.append({"prompt": prompt, "tokens": tokens, "deviation": mean_std(dev), "max_abs_diff": max(diff)})
        log(f"{tokens:3d} tokens  deviation {rows[-1]['deviation'][0]:.4f}  {label(prompt)}")
    figures.panel_grid({k: np.stack(v) for k, v in grid.items()}, os.path.join(outdir, "removal_grid.png"),
                       [label(r["prompt"], r["tokens"]) for r in rows])
    figures.line_plot([r["tokens"] for r in rows],
                      {"w/o pooled vs with pooled": tuple(zip(*[r["deviation"] for r in rows]))},
                      "prompt tokens (CLIP-L, without BOS/EOS)", f"deviation ({metric.kind})",
                      os.path.join(outdir, "deviation_vs_tokens.png"), "removing the pooled vector, same seed")
    results = {"model": model.describe(settings), "deviation_metric": _metric_results(metric), "per_prompt": rows}
    table = "\n".join(f"| {r['tokens']} | {r['deviation'][0]:.4f} ± {r['deviation'][1]:.4f} | {r['max_abs_diff']} | "
                      f"{r['prompt']} |" for r in rows)
    body = f"""{_header(settings.command_line("experiments.clip_removal.run"), model, settings, metric,
                        time.time() - start)}

Each prompt is generated with and without the pooled text vector (`remove_pooled=True`: y = e_t) from the same
seed; deviation = mean ± std over seeds; max |Δ| in grey levels (0 would mean the pooled vector changes nothing).

| tokens | deviation w/o vs with | max abs diff | prompt |
|---|---|---|---|
{table}

![deviation](deviation_vs_tokens.png)
![grid](removal_grid.png)
"""
    report.write(outdir, f"Pooled-CLIP removal on {model.class_name}", results, body)
    return results


def _steer_pair(model: FolderModel, metric: Metric, settings: FolderSettings, weights: tuple[float, ...],
                pair: tuple[str, str], originals: dict[tuple[str, int], np.ndarray]) -> tuple[dict, dict]:
    """One pair over every prompt, seed and weight: ``(results, grid columns {title: (P, H, W, 3)})``."""
    plus, minus = pair
    per_w: dict[float, list[float]] = {w: [] for w in weights}
    zero_diff = 0
    grid: dict[str, list[np.ndarray]] = {"original": [], **{f"w = {w:g}": [] for w in weights if w != 0.0}}
    for prompt in settings.prompts:
        for seed in settings.seeds:
            original = originals[(prompt, seed)]
            if seed == settings.seeds[0]:
                grid["original"].append(original)
            for w in weights:
                steered = model.image(prompt, seed, steering=([plus], [minus], w))
                per_w[w].append(metric(original, steered))
                if w == 0.0:
                    zero_diff = max(zero_diff, max_abs_diff(original, steered))
                elif seed == settings.seeds[0]:
                    grid[f"w = {w:g}"].append(steered)
    results = {"plus": plus, "minus": minus, "deviation": {f"{w:g}": mean_std(per_w[w]) for w in weights},
               "max_abs_diff_w0_vs_original": zero_diff}
    return results, {k: np.stack(v) for k, v in grid.items()}


def steering(settings: FolderSettings, outdir: str, log: Callable[[str], None] = reporting.report) -> dict:
    """Every pair, prompt and weight from the unsteered image's seed; writes ``steer_pair<i>.png`` (rows = prompts,
    columns = original and each w != 0), ``deviation_vs_w.png``, results.json and RESULTS.md into ``outdir``."""
    start = time.time()
    metric = choose_metric(settings.dreamsim_dir)      # a bad --dreamsim_dir fails before the model loads
    model = open_model(settings)
    weights = with_zero(settings.weights)
    os.makedirs(outdir, exist_ok=True)
    originals = {(p, s): model.image(p, s) for p in settings.prompts for s in settings.seeds}
    pairs = []
    for i, pair in enumerate(settings.pairs):
        result, grid = _steer_pair(model, metric, settings, weights, pair, originals)
        figures.panel_grid(grid, os.path.join(outdir, f"steer_pair{i}.png"), [label(p) for p in settings.prompts])
        pairs.append(result)
        log(f"pair {i} ({pair[0]!r} vs {pair[1]!r}): w = 0 max |diff| {result['max_abs_diff_w0_vs_original']}, "
            f"deviation at w = {weights[-1]:g}: {result['deviation'][f'{weights[-1]:g}'][0]:.4f}")
    figures.line_plot(list(weights), {f'"{r["plus"]}" − "{r["minus"]}"': tuple(zip(*r["deviation"].values()))
                                      for r in pairs},
                      "steering weight w", f"deviation from the original ({metric.kind})",
                      os.path.join(outdir, "deviation_vs_w.png"), "pooled steering, same seed")
    results = {"model": model.describe(settings), "deviation_metric": _metric_results(metric),
               "weights": list(weights), "prompts": list(settings.prompts), "pairs": pairs}
    parts = []
    for i, r in enumerate(pairs):
        rows = "\n".join(f"| w = {w} | {v[0]:.4f} ± {v[1]:.4f} |" for w, v in r["deviation"].items())
        parts.append(f"### Pair {i}: p+ = \"{r['plus']}\", p− = \"{r['minus']}\"\n\nw = 0 vs the unsteered image: "
                     f"max |Δ| = {r['max_abs_diff_w0_vs_original']} (uint8; 0 = exact)\n\n| | deviation from the "
                     f"original |\n|---|---|\n{rows}\n\n![pair {i}](steer_pair{i}.png)\n")
    prompts = "\n".join(f"{j}. {p}" for j, p in enumerate(settings.prompts, 1))
    body = f"""{_header(settings.command_line("experiments.pooled_steering.run"), model, settings, metric,
                        time.time() - start)}

Steering moves the pooled vector: y = e_t + h_y(p) + w (h_y(p+) - h_y(p-)), at every model call (in both
branches when there is CFG), from the same seed as the original image; deviation = mean ± std over prompts and
seeds. Grid rows are the prompts (first seed), columns the original and each w != 0.

Prompts:

{prompts}

![deviation](deviation_vs_w.png)

{chr(10).join(parts)}"""
    report.write(outdir, f"Pooled-embedding steering on {model.class_name}", results, body)
    return results
