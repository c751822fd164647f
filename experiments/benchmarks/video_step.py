"""Video MMDiT train step vs clip length: XLA's compiled temporary memory and the median step time, dense (the CPU
default) vs chunked attention; optionally the peak RSS of the real CLI training 16-frame clips.

The model is ``configs/video.py:joint``'s (SD3 family, patch 4, 4 layers, 4 heads x 32, toy-CLIP text of 48
tokens) at 64x64, so a clip of T frames is ``T / temporal_patch_size x 16 x 16`` image tokens plus 48 text tokens:
4, 8 and 16 frames with temporal patches of 2 frames (512, 1024, 2048 image tokens), and 16 frames with 1 (4096,
the longest sequence). The step is the trainer's own (``common.TrainStep``: ``make_train_step`` with the loss,
AdamW, EMA, as training compiles it) on random clips ``x (B, T, 64, 64, 3)``, batch 4, float32, with
``model.attention_impl`` = None (on a CPU: einsum attention with the hand-written gradient, which keeps one dense
``(B, H, L, L)`` probability matrix per layer for the backward) and ``"chunked"`` (``chunked_attention``: memory
linear in L).

Memory is ``compiled.memory_analysis().temp_size_in_bytes`` (every buffer of the compiled step that is neither an
argument nor an output: exact, allocator-independent); time is the median of ``--repeats`` steps after one warm-up,
the two attentions alternating step by step so a slow moment of a shared machine does not fall on one only.
``--memory_only`` compiles without timing (for a machine that other jobs keep busy).

``--cli dense,chunked`` also trains 16-frame 64x64 bouncing clips through ``python -m mmdit_jax
--config=configs/video.py:joint`` (batch 16, 6 steps, no sampling) under ``/usr/bin/time -v``, each in a fresh
temporary workdir, and records peak RSS, wall time, exit and the logged losses; ``dense_untuned`` /
``chunked_untuned`` add ``--tuned_runtime=false`` (glibc's default malloc instead of ``mmdit_jax.runtime``'s
retained heap). The chunked runs read a two-line config file that imports ``configs/video.py`` and sets
``model.attention_impl`` (``--config.model.attention_impl=chunked`` does the same from the command line).

Run: ``python experiments/benchmarks/video_step.py [--repeats 3] [--memory_only] [--cli dense,chunked]`` (about 4
minutes on a 2-core CPU without ``--cli``; each CLI run adds 1-3 minutes); the table is appended to ARCHIVE.md as
"Video train step vs frames" (RESULTS.md holds the curated summary).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmarks.attention_memory import cpu_model  # noqa: E402
from experiments.benchmarks.common import TrainStep, append_results, benchmark_config, parse_args  # noqa: E402
from mmdit_jax.families import Family  # noqa: E402
from mmdit_jax.components.from_config import family_from_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (frames, temporal_patch_size): the data's default 8 frames and its halving / doubling, then the same 16 frames
# without temporal patching, the longest sequence
CASES = ((4, 2), (8, 2), (16, 2), (16, 1))
ATTENTION = (None, "chunked")
CLI = ("python -m mmdit_jax --config=configs/video.py:joint --config.data.image_size=64 --config.data.num_frames=16 "
       "--config.data.bounce=True --config.model.sample_size=64 --config.model.pos_embed_max_size=16 "
       "--config.data.num_train=256 --config.data.num_test=32 --config.train.num_steps=6 --config.train.log_every=2 "
       "--config.train.sample_every=0")
# case -> (chunked attention, --tuned_runtime=false)
CLI_CASES = {"dense": (False, False), "chunked": (True, False), "dense_untuned": (False, True),
             "chunked_untuned": (True, True)}
CHUNKED_CONFIG = """from configs.video import get_config as video_config


def get_config(arg="joint"):
    config = video_config(arg)
    config.model.attention_impl = "chunked"
    return config
"""


def video_setup(image_size: int) -> tuple[Any, int]:
    """``(model section, text tokens)`` of ``configs/video.py:joint`` at ``image_size`` (position table sized to
    its patches per side)."""
    from configs.video import get_config

    c = get_config("joint")
    model = c.model.copy_and_resolve_references()
    model.update(sample_size=image_size, pos_embed_max_size=image_size // model.patch_size)
    tokens = c.text.clip_l.max_length if not c.text.t5.enabled else None
    if tokens is None:
        raise ValueError("configs/video.py enables T5: count its context tokens here")
    return model, tokens


def video_batch(family: Family, batch: int, frames: int, size: int, tokens: int, seed: int = 0) -> dict[str, Any]:
    """A device-resident train batch ``{"x": (B, T, S, S, C), "cond": {"context": (B, tokens, D_c), "pooled":
    (B, D_p)}}`` of normal noise (an all-zero batch can run faster than real inputs)."""
    cfg = family.config
    kx, kc, ky = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {"x": jax.random.normal(kx, (batch, frames, size, size, cfg.in_channels)),
            "cond": {"context": jax.random.normal(kc, (batch, tokens, cfg.joint_attention_dim)),
                     "pooled": jax.random.normal(ky, (batch, cfg.pooled_projection_dim))}}


class CompiledStep:
    """One case's train step compiled ahead of time: ``temp_bytes`` from XLA's memory analysis; calling it runs
    one step (state donated and replaced) and waits for it."""

    def __init__(self, config: Any, batch: dict[str, Any], family: Family):
        train = TrainStep(config, batch, family)
        start = time.perf_counter()
        self.compiled = train.step.lower(train.state, train.batch, train.key, train.frozen).compile()
        self.compile_s = time.perf_counter() - start
        self.temp_bytes = self.compiled.memory_analysis().temp_size_in_bytes
        self.train, self.times = train, []

    def __call__(self) -> float:
        t = self.train
        start = time.perf_counter()
        t.state, metrics = self.compiled(t.state, t.batch, t.key, t.frozen)
        jax.block_until_ready(metrics["loss"])
        return time.perf_counter() - start


def measure(batch: int, size: int, repeats: int, memory_only: bool) -> list[str]:
    """Markdown rows ``| frames | p_t | tokens | attention | temp | dense | step | compile |`` for every case."""
    base, tokens = video_setup(size)
    rows = []
    for frames, pt in CASES:
        steps = {}
        for impl in ATTENTION:
            model = base.copy_and_resolve_references()
            model.update(temporal_patch_size=pt, attention_impl=impl)
            config = benchmark_config(model)
            family = family_from_config(config)
            steps[impl] = CompiledStep(config, video_batch(family, batch, frames, size, tokens), family)
        if not memory_only:
            for step in steps.values():
                step()                                   # warm-up: pages in the buffers
            for _ in range(repeats):
                for step in steps.values():
                    step.times.append(step())
        length = frames // pt * (size // base.patch_size) ** 2 + tokens
        dense = 4 * batch * base.num_heads * length**2  # one float32 (B, H, L, L) matrix
        for impl, step in steps.items():
            median = f"{np.median(step.times):.2f}" if step.times else "not timed"
            rows.append(f"| {frames} | {pt} | {length - tokens} + {tokens} | {impl or 'None (einsum_vjp)'} | "
                        f"{step.temp_bytes / 2**20:,.0f} | {dense / 2**20:,.0f} | {median} | {step.compile_s:.1f} |")
            print(rows[-1], flush=True)
        del steps
    return rows


def cli_run(case: str) -> str:
    """Train through the CLI (``CLI``; ``case`` in ``CLI_CASES``) under ``/usr/bin/time -v`` in a fresh temporary
    workdir (removed afterwards); one markdown row: peak RSS, wall time, exit, logged losses."""
    chunked, untuned = CLI_CASES[case]
    workdir = tempfile.mkdtemp(prefix="video_step_cli_")
    args = CLI.split()[1:] + [f"--workdir={workdir}"] + (["--tuned_runtime=false"] if untuned else [])
    if chunked:
        config = os.path.join(workdir, "video_chunked.py")
        with open(config, "w") as f:
            f.write(CHUNKED_CONFIG)
        args = [a.replace("configs/video.py", config) if a.startswith("--config=") else a for a in args]
    try:
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, *args], cwd=REPO, capture_output=True,
                              text=True, check=False)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr)
        signal = re.search(r"Command terminated by signal (\d+)", proc.stderr)
        losses = []
        metrics = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(metrics):
            with open(metrics) as f:
                losses = [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    logged = ", ".join(f"{s}: {v:.3f}" for s, v in losses) or "none"
    peak = f"{int(rss.group(1)) / 2**20:.2f}" if rss else "?"
    exit_ = f"killed by signal {signal.group(1)}" if signal else str(proc.returncode)
    return (f"| {'chunked' if chunked else 'None (einsum_vjp)'} | {'glibc default' if untuned else 'tuned'} | "
            f"{peak} | {wall.group(1) if wall else '?'} | {exit_} | {logged} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=64, help="frame height = width")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per case and attention (interleaved)")
    ap.add_argument("--memory_only", action="store_true", help="compile and report memory, time nothing")
    ap.add_argument("--cli", default="", help=f"comma-separated CLI runs of 16-frame clips (peak RSS), of "
                                             f"{', '.join(CLI_CASES)}")
    ap.add_argument("--note", default="", help="a sentence added to the entry (e.g. why it is memory-only)")
    args = parse_args(ap)
    cli_cases = [c for c in args.cli.split(",") if c]
    unknown = sorted(set(cli_cases) - set(CLI_CASES))
    if unknown:
        ap.error(f"--cli: unknown runs {unknown}; valid: {', '.join(CLI_CASES)}")
    load_before = os.getloadavg()[0]
    rows = measure(args.batch, args.size, args.repeats, args.memory_only)
    cli_rows = [cli_run(case) for case in cli_cases]
    for row in cli_rows:
        print(row, flush=True)
    base, tokens = video_setup(args.size)
    timing = ("not timed (`--memory_only`)" if args.memory_only else
              f"median of {args.repeats} steps after a warm-up, the two attentions alternating")
    table = (f"CPU: {cpu_model()} (`nproc` = {os.cpu_count()}); JAX {jax.__version__}. {args.note}"
             f"The project's train step (`make_train_step`: rectified-flow velocity loss, AdamW after clipping, EMA) "
             f"of the `configs/video.py:joint` model (SD3 family, D = {base.num_heads * base.head_dim}, "
             f"{base.num_layers} layers, {base.num_heads} heads x {base.head_dim}, patch {base.patch_size}) on random "
             f"clips, batch {args.batch}, {args.size}x{args.size}x3, float32, {tokens} text tokens. Tokens: image + "
             "text. Temp: XLA's `memory_analysis().temp_size_in_bytes` of the compiled step; 'dense' is one float32 "
             f"(B, H, L, L) score matrix. Step: {timing}; 1-minute load average {load_before:.1f} before, "
             f"{os.getloadavg()[0]:.1f} after.\n\n"
             "| frames | temporal patch | tokens | attention_impl | temp, MiB | dense (B, H, L, L), MiB | "
             "step, s | compile, s |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    if cli_rows:
        table += ("\n\nThrough the CLI (`/usr/bin/time -v`; batch 16 of 16-frame 64x64 bouncing clips, 2048 + 48 "
                  f"tokens; a fresh workdir each, data prepared and text encoded inside the run): `{CLI} "
                  "--workdir=...`; chunked: the same with `--config=<file setting model.attention_impl='chunked' on "
                  "configs/video.py:joint>` (the flag `--config.model.attention_impl=chunked` is refused: "
                  "ml_collections cannot override a field whose default is None); malloc 'glibc default': "
                  "`--tuned_runtime=false`."
                  "\n\n| attention_impl | malloc | peak RSS, GiB | wall, m:ss | exit | loss at step |\n"
                  "|---|---|---|---|---|---|\n" + "\n".join(cli_rows))
    print(table)
    append_results("Video train step vs frames", table)


if __name__ == "__main__":
    main()
