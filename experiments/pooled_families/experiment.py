"""Pooled steering across model families: ŷ = y(p) + w (y(p+) - y(p-)) on each family's conditioning vector.

    python -m experiments.pooled_families.run --workdir=runs/latent_shapes --outdir=experiments/pooled_families

Per family, from the same scenes and noise: the base quality (prompt adherence for short and long prompts), the
named-attribute pairs of the pooled study (the contrast: "a red circle" pushed to blue) and the attributes the
prompt leaves free (``experiments/pooled_steering/unspecified.py``). A family without a pooled path (y = e_t, as
COSMOS conditions) is the control: steering and ``remove_pooled`` are refused there, and the refusals are recorded.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from experiments.pooled_steering import unspecified
from experiments.pooled_steering.experiment import run_pair
from mmdit_jax.checks import ConfigError
from mmdit_jax.data.captions import TEMPLATES
from mmdit_jax.eval.adherence import prompt_adherence
from mmdit_jax.study import report, stages
from mmdit_jax.study.scenes import prompts, scenes


def check_config(cfg: Any) -> None:
    """Raise ValueError, before any stage runs, for a setting the tables could not show."""
    weights = {float(w) for w in cfg.steering.weights}
    if 0.0 not in weights:
        raise ValueError(f"steering.weights={tuple(cfg.steering.weights)} must include 0 (the unsteered sample)")
    if float(cfg.table_weight) not in weights:
        raise ValueError(f"table_weight={cfg.table_weight} is not one of steering.weights={tuple(cfg.steering.weights)}")
    for entry in cfg.steering.unspecified:
        unspecified.check_setting(entry)


def has_pooled_path(gen: Any) -> bool:
    """Whether the family's conditioning vector reads a pooled text embedding (SD3 ``use_pooled``; FLUX always)."""
    return bool(getattr(gen.model.family.config, "use_pooled", True))


def refusals(gen: Any) -> dict[str, str]:
    """The errors a family without a pooled path raises for steering and for ``remove_pooled``."""
    texts = ["a red circle"]
    out = {}
    for name, kwargs in (("steering", {"steering": (["a blue circle"], ["a red circle"], 1.0)}),
                         ("remove_pooled", {"remove_pooled": True})):
        try:
            gen(texts, 0, **kwargs)
            out[name] = "accepted (no error)"
        except ConfigError as e:
            out[name] = str(e)
    return out


def base_quality(cfg: Any, gen: Callable, classifier) -> dict[str, dict[str, tuple[float, float]]]:
    """Prompt adherence (mean ± std over sampling seeds) for the short and the long template."""
    q = cfg.quality
    objs = scenes(q.num_scenes, q.scene_seed)
    out = {}
    for length, t in (("short", q.short_template), ("long", q.long_template)):
        texts = prompts(objs, t)
        rows = [prompt_adherence(classifier, gen(texts, seed), texts) for seed in q.seeds]
        out[length] = {k: stages.mean_std([r[k] for r in rows]) for k in rows[0]}
    return out


def evaluate_family(cfg: Any, gen: Any, classifier, deviation, outdir: str) -> dict:
    """Base quality, then every named pair and every free attribute (or the control's refusals)."""
    os.makedirs(outdir, exist_ok=True)
    result: dict[str, Any] = {"pooled_path": has_pooled_path(gen), "quality": base_quality(cfg, gen, classifier)}
    if not result["pooled_path"]:
        result["refusals"] = refusals(gen)
        return result
    result["pairs"] = [run_pair(cfg, gen, classifier, deviation, i, p, outdir)
                       for i, p in enumerate(cfg.steering.pairs)]
    result["unspecified"] = [unspecified.run_setting(cfg, gen, classifier, deviation, i, e, outdir)
                             for i, e in enumerate(cfg.steering.unspecified)]
    return result


def w0_exact(result: dict) -> int:
    """The largest |w = 0 - unsteered| (uint8) over every setting of a family."""
    diffs = [r["max_abs_diff_w0_vs_original"] for r in result["unspecified"]]
    diffs += [p[k]["max_abs_diff_w0_vs_original"] for p in result["pairs"] for k in p]
    return max(diffs)


def family_table(cfg: Any, results: dict[str, dict]) -> str:
    """Rows = base quality and every steering setting, columns = families. A steering cell reads the rate at
    w = 0 → ``w_mid`` → the largest w, and what was kept at ``w_mid`` / the largest w."""
    s = cfg.steering
    w = f"{max(float(x) for x in s.weights):g}"
    w_mid = f"{float(cfg.table_weight):g}"
    names = list(results)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |")

    def steered(get) -> Any:
        def cell(r: dict) -> str:
            if not r["pooled_path"]:
                return "refused (no pooled path)"
            v0, vm, v = get(r, "0"), get(r, w_mid), get(r, w)
            return f"{v0[0]:.2f} → {vm[0]:.2f} → {v[0]:.2f} (kept {vm[1]:.2f} / {v[1]:.2f})"
        return cell

    for length in ("short", "long"):
        t = cfg.quality.short_template if length == "short" else cfg.quality.long_template
        row(f"base: {length} prompts (t{t}), all named attributes read back",
            lambda r, length=length: report.fmt(r["quality"][length]["all"]))
    for i, e in enumerate(s.unspecified):
        row(f"free: {e[0]} → {e[1]} (t{e[3]}), target rate",
            steered(lambda r, k, i=i: (r["unspecified"][i]["weights"][k]["target_rate"][0],
                                       r["unspecified"][i]["weights"][k]["kept"][0])))
    for i, p in enumerate(s.pairs):
        for t in s.templates:
            row(f"named: {p[0]} {p[1]} → {p[2]} (t{t}), flip rate",
                steered(lambda r, k, i=i, t=t: (r["pairs"][i][f"template_{t}"]["weights"][k]["flip"][0],
                                                r["pairs"][i][f"template_{t}"]["weights"][k]["preserved"][0])))
    row("max \\|w = 0 − unsteered\\| (uint8)", lambda r: str(w0_exact(r)) if r["pooled_path"] else "—")
    return "\n".join(lines)


COMMAND = "python -m experiments.pooled_families.run --workdir=runs/latent_shapes --outdir=experiments/pooled_families"


def markdown(cfg: Any, results: dict[str, dict], setup: str, seconds: float, command: str = COMMAND) -> str:
    s, q = cfg.steering, cfg.quality
    w, w_mid = f"{max(float(x) for x in s.weights):g}", f"{float(cfg.table_weight):g}"
    control = [f"- `{name}`: steering → `{r['refusals']['steering']}`; remove_pooled → "
               f"`{r['refusals']['remove_pooled']}`" for name, r in results.items() if not r["pooled_path"]]
    details = []
    for name, r in results.items():
        if r["pooled_path"]:
            details.append(f"## {name}: every setting\n\n{unspecified.markdown(r['unspecified'])}\n"
                           f"Named-attribute pairs (flip / preserved / deviation at each w) are in results.json; "
                           f"grids: `{name}/steer_<attribute>_t<template>.png`.\n")
    return f"""Command:

    {command}

{setup}

Wall time: {seconds / 60:.1f} min (cached stages excluded). Base quality: {q.num_scenes} scenes, short = template
{q.short_template} (`{TEMPLATES[q.short_template]}`), long = template {q.long_template}, sampling seeds
{list(q.seeds)}; adherence "all" = every attribute the prompt names is read back. Steering: the pooled study's
settings, {s.num_scenes} scenes each, weights {list(s.weights)}, seeds {list(s.seeds)}, steering at every model call
(both CFG branches). Steering cells: the rate at w = 0 → {w_mid} → {w}, and (kept at w = {w_mid} / {w}): for a free attribute the
target rate and the attributes the prompt names read as in the original; for a named pair the flip rate and the
other three attributes.

{family_table(cfg, results)}

The control (no pooled path):

{chr(10).join(control) if control else "- (none in this run)"}

{chr(10).join(details)}"""


def summarise_numbers(results: dict[str, dict]) -> dict[str, Any]:
    """The headline numbers of each family (results.json's ``summary``)."""
    return {name: {"short_all": r["quality"]["short"]["all"][0], "long_all": r["quality"]["long"]["all"][0],
                   "w0_exact": w0_exact(r) if r["pooled_path"] else None} for name, r in results.items()}


def write(cfg: Any, results: dict[str, dict], outdir: str, setup: str, seconds: float, command: str = COMMAND) -> None:
    report.write(outdir, "Pooled steering across model families (toy scale)",
                 {"families": results, "summary": summarise_numbers(results)},
                 markdown(cfg, results, setup, seconds, command))
