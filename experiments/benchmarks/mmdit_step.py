"""MMDiT forward and train step (forward + backward + AdamW): ours (JAX, jit) vs diffusers (PyTorch eager).

Same config (default ``configs/mmdit.py:small`` — D = 384, 6 layers, 6 heads, 32x32x4 latents, patch 2, 64 text
tokens of width 512, pooled 256), same weights (through our converter), batch 8, fp32. Runs alternate A B A B
and the ratio is reported per pair; the MFU column is the analytic FLOP count over our time and the measured
matmul peak. PyTorch runs on CUDA when it sees a GPU. Run: ``python experiments/benchmarks/mmdit_step.py
[--pairs 5]``; on a GPU at SD3-medium size: ``--preset sd3_medium --size 64 --tokens 333 --dtype bfloat16``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs.mmdit import get_config  # noqa: E402
from experiments.benchmarks.common import (  # noqa: E402
    TorchSide, ab_pairs, adamw_train_step, append_results, matmul_peak, parse_args, speedups)
from mmdit_jax.families import model_config
from mmdit_jax.interop.sd3 import to_diffusers  # noqa: E402
from mmdit_jax.models.flops import mmdit_forward_flops  # noqa: E402
from mmdit_jax.models.mmdit import MMDiT, MMDiTConfig  # noqa: E402
from mmdit_jax.models.mmdit_params import unstack_blocks  # noqa: E402


def main(pairs: int, repeats: int, batch: int, preset: str, torch_compile: bool = False,
         attention_impl: str | None = None, size: int = 32, tokens: int = 64, dtype: str = "float32",
         scan_blocks: bool = False) -> None:
    import torch
    from diffusers import SD3Transformer2DModel

    side = TorchSide(dtype)
    cfg = model_config({**get_config(preset), "attention_impl": attention_impl, "dtype": dtype,
                                 "scan_blocks": scan_blocks})
    model = MMDiT(cfg)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, cfg.in_channels), np.float32)
    t = rng.uniform(0, 1000, batch).astype(np.float32)
    c = rng.standard_normal((batch, tokens, cfg.joint_attention_dim), np.float32)
    y = rng.standard_normal((batch, cfg.pooled_projection_dim), np.float32)
    target = rng.standard_normal(x.shape, np.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x, t, c, y)  # one program, not op-by-op (2B on GPU)

    with torch.device(side.device):  # random init on the GPU when there is one: seconds, not minutes, at 2B
        ref = SD3Transformer2DModel(
            sample_size=cfg.sample_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels,
            num_layers=cfg.num_layers, attention_head_dim=cfg.head_dim, num_attention_heads=cfg.num_heads,
            joint_attention_dim=cfg.joint_attention_dim, caption_projection_dim=cfg.hidden,
            pooled_projection_dim=cfg.pooled_projection_dim, out_channels=cfg.out_channels,
            pos_embed_max_size=cfg.pos_embed_max_size, qk_norm=cfg.qk_norm,
            dual_attention_layers=tuple(cfg.dual_attention_layers))
    unrolled = unstack_blocks(variables, cfg) if scan_blocks else variables
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in to_diffusers(cfg, unrolled).items()})
    del unrolled
    tx, tt, tc, ty = (torch.from_numpy(a).to(side.device) for a in (x.transpose(0, 3, 1, 2), t, c, y))
    ttarget = torch.from_numpy(target.transpose(0, 3, 1, 2)).to(side.device)
    topt = torch.optim.AdamW(ref.parameters(), lr=1e-4)

    params, buffers = variables["params"], {"buffers": variables["buffers"]}
    forward = jax.jit(lambda p, *a: model.apply({"params": p, **buffers}, *a))
    train_step, opt = adamw_train_step(model, buffers)
    args = tuple(jnp.asarray(a) for a in (x, t, c, y))
    state = {"p": params, "s": opt.init(params)}  # the train step donates (and replaces) these buffers
    start = time.perf_counter()
    jax.block_until_ready(forward(state["p"], *args))
    compile_fwd = time.perf_counter() - start

    def jax_train():
        state["p"], state["s"], loss = train_step(state["p"], state["s"], *args, jnp.asarray(target))
        jax.block_until_ready(loss)

    start = time.perf_counter()
    jax_train()
    compile_train = time.perf_counter() - start

    def torch_fwd(net=ref):
        with torch.no_grad(), side.autocast():
            net(hidden_states=tx, encoder_hidden_states=tc, pooled_projections=ty, timestep=tt)
        side.sync()

    def torch_train(net=ref, opt=topt):
        opt.zero_grad(set_to_none=True)
        with side.autocast():
            out = net(hidden_states=tx, encoder_hidden_states=tc, pooled_projections=ty, timestep=tt).sample
        torch.mean((out.float() - ttarget) ** 2).backward()
        opt.step()
        side.sync()

    torch_fwd(), torch_train()  # warm-up
    cases = [("forward", "eager", lambda: jax.block_until_ready(forward(state["p"], *args)), torch_fwd),
             ("train step", "eager", jax_train, torch_train)]
    compile_note = ""
    if torch_compile:
        try:
            compiled = torch.compile(ref)
            compiled_fwd = functools.partial(torch_fwd, compiled)
            compiled_train = functools.partial(torch_train, compiled, torch.optim.AdamW(ref.parameters(), lr=1e-4))
            start = time.perf_counter()
            compiled_fwd(), compiled_train()
            compile_note = f" torch.compile (inductor) warm-up {time.perf_counter() - start:.1f} s."
            cases += [("forward", "torch.compile", cases[0][2], compiled_fwd),
                      ("train step", "torch.compile", jax_train, compiled_train)]
        except Exception as e:  # noqa: BLE001 - report why the comparison is missing
            compile_note = f" torch.compile failed on this machine: {type(e).__name__}: {str(e)[:200]}"
    fwd_flops = mmdit_forward_flops(cfg, batch, size, size, tokens)
    peak = matmul_peak(jnp.dtype(dtype))
    rows = []
    for kind, mode, ours, theirs in cases:
        t_ours, t_theirs, ratios = ab_pairs(ours, theirs, pairs, repeats)
        flops = fwd_flops * (1 if kind == "forward" else 3)
        rows.append(f"| {kind} | {mode} | {t_ours * 1e3:.1f} ms | {t_theirs * 1e3:.1f} ms | {speedups(ratios)} | "
                    f"{flops / t_ours / peak:.1%} | {flops / t_theirs / peak:.1%} |")
    table = (f"Preset `{preset}`, attention_impl={attention_impl}, scan_blocks={scan_blocks} (D = {cfg.hidden}, "
             f"{cfg.num_layers} layers, {cfg.num_heads} heads), batch {batch}, {size}x{size}x{cfg.in_channels}, "
             f"{tokens} text tokens, {dtype}; "
             f"{pairs} A/B pairs of median-of-{repeats}. Reference: {side.describe()}. Compile: forward "
             f"{compile_fwd:.1f} s, train step {compile_train:.1f} s.{compile_note} MFU: analytic FLOPs (train = 3 x "
             f"forward) over the measured {dtype} matmul peak {peak / 1e12:.2f} TFLOP/s.\n\n"
             "| step | diffusers mode | ours (JAX) | diffusers (PyTorch) | speed-up per pair (median; all) | "
             "MFU ours | MFU diffusers |\n|---|---|---|---|---|---|---|\n"
             + "\n".join(rows))
    print(table)
    append_results("MMDiT forward / train step vs diffusers", table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--torch_compile", action="store_true", help="also compare against torch.compile(diffusers)")
    ap.add_argument("--attention_impl", default=None,
                    help="model.attention_impl: None | xla | cudnn | einsum | einsum_vjp")
    ap.add_argument("--size", type=int, default=32, help="latent height = width")
    ap.add_argument("--tokens", type=int, default=64, help="text tokens")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="compute dtype (weights stay fp32; PyTorch uses autocast)")
    ap.add_argument("--scan_blocks", action="store_true",
                    help="lax.scan over the blocks: compiles in seconds at SD3 sizes (the unrolled 24-block step "
                         "took > 100 s on an H200)")
    a = parse_args(ap)
    main(a.pairs, a.repeats, a.batch, a.preset, a.torch_compile, a.attention_impl, a.size, a.tokens, a.dtype,
         a.scan_blocks)
