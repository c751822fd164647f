"""Text encoding: our Flax CLIP-L and T5 encoders vs transformers (PyTorch eager), same random weights.

The reference models are built by transformers with a fixed seed, saved to a temporary folder and loaded by
our loaders (``load_clip`` / ``load_t5``), so both sides run identical weights. Sizes: CLIP ViT-L/14's text
tower (77 tokens) and a T5 v1.1-base-sized encoder (T5-XXL does not fit this benchmark's memory budget on a
CPU; pass ``--t5 xxl`` on a large machine). Runs alternate A B A B; MFU uses the analytic FLOP counter and a
measured matmul peak.

Run: ``python experiments/benchmarks/text_encoding.py [--batch 8 --pairs 3]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmarks.common import (  # noqa: E402
    TorchSide, ab_pairs, append_results, matmul_peak, parse_args, speedups)
from mmdit_jax.interop.hf_text import load_clip, load_t5  # noqa: E402
from mmdit_jax.models.flops import clip_forward_flops, t5_forward_flops  # noqa: E402
from mmdit_jax.models.text.clip import CLIPTextModel  # noqa: E402
from mmdit_jax.models.text.t5 import T5Encoder  # noqa: E402

T5_SIZES = {"base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12),
            "xxl": dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)}


def main(batch: int, pairs: int, repeats: int, t5_size: str, dtype: str = "float32") -> None:
    import torch
    import transformers

    side = TorchSide(dtype)
    torch.manual_seed(0)
    clip_ref = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")).eval()
    t5_ref = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=32128, feed_forward_proj="gated-gelu", **T5_SIZES[t5_size])).eval()
    with tempfile.TemporaryDirectory() as folder:
        clip_ref.save_pretrained(os.path.join(folder, "clip"))
        t5_ref.save_pretrained(os.path.join(folder, "t5"))
        # The loaders return host (numpy) arrays; placed once here, or every call would re-send the weights
        # (~0.5 GB for CLIP-L), which on a GPU costs more than the encoder itself.
        clip_cfg, clip_vars = load_clip(os.path.join(folder, "clip"))
        t5_cfg, t5_vars = load_t5(os.path.join(folder, "t5"))
        clip_vars, t5_vars = jax.block_until_ready(jax.device_put((clip_vars, t5_vars)))

    rng = np.random.default_rng(0)
    rows, peak = [], matmul_peak(jnp.dtype(dtype))
    clip_ref, t5_ref = clip_ref.to(side.device), t5_ref.to(side.device)
    for name, module, variables, ref, tokens, vocab, flops in (
            ("CLIP ViT-L/14 text", CLIPTextModel(clip_cfg, dtype=jnp.dtype(dtype)), clip_vars, clip_ref, 77, 49000,
             clip_forward_flops(clip_cfg, batch, 77)),
            (f"T5 v1.1-{t5_size} encoder", T5Encoder(t5_cfg, dtype=jnp.dtype(dtype)), t5_vars, t5_ref, 256, 32000,
             t5_forward_flops(t5_cfg, batch, 256))):
        ids = rng.integers(1, vocab, (batch, tokens)).astype(np.int32)
        fwd = jax.jit(lambda v, i, m=module: m.apply(v, i))
        start = time.perf_counter()
        jax.block_until_ready(fwd(variables, jnp.asarray(ids)))
        compile_s = time.perf_counter() - start
        tids = torch.as_tensor(ids, dtype=torch.long, device=side.device)

        def theirs():
            with torch.no_grad(), side.autocast():
                ref(tids, output_hidden_states=True)
            side.sync()

        theirs()
        ours = lambda: jax.block_until_ready(fwd(variables, jnp.asarray(ids)))  # noqa: E731
        a, b, ratios = ab_pairs(ours, theirs, pairs, repeats)
        rows.append(f"| {name}, batch {batch} x {tokens} | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | "
                    f"{speedups(ratios)} | {flops / 1e9:.1f} | {flops / a / peak * 100:.1f}% | {compile_s:.1f} s |")
    table = (f"{dtype}, same weights (transformers init, seed 0, loaded by our loaders); {pairs} A/B pairs of "
             f"median-of-{repeats}; reference {side.describe()} eager; measured "
             f"matmul peak {peak / 1e9:.1f} GFLOP/s ({dtype}).\n\n"
             "| encoder | ours (JAX) | transformers (PyTorch eager) | speed-up per pair (median; all) | GFLOP | MFU | "
             "compile |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    print(table)
    append_results("Text encoding vs transformers", table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--t5", default="base", choices=sorted(T5_SIZES))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = parse_args(ap)
    main(a.batch, a.pairs, a.repeats, a.t5, a.dtype)
