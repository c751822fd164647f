"""MMDiT forward and train step: ours (JAX, jit) vs diffusers (PyTorch eager, optionally torch.compile).

Ours is the trainer's own code: the train step is ``make_train_step`` (``common.TrainStep``: noise and t drawn,
velocity loss, AdamW after global-norm clipping, EMA, loss buckets), the forward is ``family.net`` on the
prepared variables, as the sampling pipeline calls it. The PyTorch side does the same work per step on
``SD3Transformer2DModel``: draws logit-normal t (shift 3) and noise, the velocity loss on ``x_t``, backward,
``clip_grad_norm_``, ``torch.optim.AdamW`` with the same hyper-parameters, and the EMA as one ``_foreach_lerp_``.
Same config (default ``configs/mmdit.py:small``: D = 384, 6 layers, 6 heads, 32x32x4 latents, patch 2, 64 text
tokens of width 512, pooled 256), same initial weights (through our converter), batch 8, fp32. Runs alternate
A B A B and the ratio is reported per pair; the MFU column is the analytic FLOP count over each side's time and
the measured matmul peak. PyTorch runs on CUDA when it sees a GPU.

Run: ``python experiments/benchmarks/mmdit_step.py [--pairs 5]``; on a GPU at SD3-medium size: ``--preset
sd3_medium --size 64 --tokens 333 --dtype bfloat16 --scan_blocks``.
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

from experiments.benchmarks.common import (  # noqa: E402
    TorchSide, TrainStep, ab_pairs, append_results, benchmark_config, matmul_peak, parse_args, random_batch,
    sd3_model, speedups)
from mmdit_jax.interop.sd3 import to_diffusers  # noqa: E402
from mmdit_jax.models.mmdit_params import unstack_blocks  # noqa: E402
from mmdit_jax.components.from_config import family_from_config  # noqa: E402


def main(pairs: int, repeats: int, batch: int, preset: str, torch_compile: bool = False,
         attention_impl: str | None = None, size: int = 32, tokens: int = 64, dtype: str = "float32",
         scan_blocks: bool = False) -> None:
    import torch
    from diffusers import SD3Transformer2DModel

    side = TorchSide(dtype)
    config = benchmark_config(sd3_model(preset, attention_impl=attention_impl, dtype=dtype, scan_blocks=scan_blocks))
    family = family_from_config(config)
    cfg, schedule = family.config, family.schedule
    data = random_batch(family, batch, size, tokens)
    train_step = TrainStep(config, data, family)  # one program for the init, not op-by-op (2B on GPU)
    variables = train_step.variables  # the initial weights, shared with the reference below

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
    x, c, y = (np.array(a) for a in (data["x"], data["cond"]["context"], data["cond"]["pooled"]))
    tx, tc, ty = (torch.from_numpy(a).to(side.device) for a in (x.transpose(0, 3, 1, 2), c, y))
    t = np.random.default_rng(0).uniform(0, 1, batch).astype(np.float32)
    tt = torch.from_numpy(1000.0 * t).to(side.device)
    optim, train = config.optim, config.train
    tparams = [p for p in ref.parameters() if p.requires_grad]
    tema = [p.detach().clone() for p in tparams]

    forward = jax.jit(lambda v, x, t, cond: family.net(family.prepare(v), cond)(x, t))
    fwd_args = (data["x"], jnp.asarray(t), data["cond"])
    start = time.perf_counter()
    jax.block_until_ready(forward(train_step.variables, *fwd_args))
    compile_fwd = time.perf_counter() - start

    def jax_fwd():
        jax.block_until_ready(forward(train_step.variables, *fwd_args))

    def jax_train():
        jax.block_until_ready(train_step())

    start = time.perf_counter()
    jax_train()
    compile_train = time.perf_counter() - start

    def torch_fwd(net=ref):
        with torch.no_grad(), side.autocast():
            net(hidden_states=tx, encoder_hidden_states=tc, pooled_projections=ty, timestep=tt)
        side.sync()

    def torch_opt():
        return torch.optim.AdamW(tparams, lr=optim.learning_rate, betas=(optim.b1, optim.b2), eps=optim.eps,
                                 weight_decay=optim.weight_decay)

    def torch_train(net=ref, opt=torch_opt()):
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # the real step's noising: logit-normal t, shifted; x_t = (1 - t) x + t eps
            u = torch.sigmoid(torch.randn(batch, device=side.device))
            s = schedule.shift * u / (1.0 + (schedule.shift - 1.0) * u)
            eps = torch.randn_like(tx)
            xt = (1.0 - s[:, None, None, None]) * tx + s[:, None, None, None] * eps
        with side.autocast():
            out = net(hidden_states=xt, encoder_hidden_states=tc, pooled_projections=ty, timestep=1000.0 * s).sample
        torch.mean((out.float() - (eps - tx)) ** 2).backward()
        torch.nn.utils.clip_grad_norm_(tparams, optim.grad_clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(tema, tparams, 1.0 - train.ema_decay)
        side.sync()

    torch_fwd(), torch_train()  # warm-up
    cases = [("forward", "eager", jax_fwd, torch_fwd), ("train step", "eager", jax_train, torch_train)]
    compile_note = ""
    if torch_compile:
        try:
            compiled = torch.compile(ref)
            compiled_fwd = functools.partial(torch_fwd, compiled)
            compiled_train = functools.partial(torch_train, compiled, torch_opt())
            start = time.perf_counter()
            compiled_fwd(), compiled_train()
            compile_note = f" torch.compile (inductor) warm-up {time.perf_counter() - start:.1f} s."
            cases += [("forward", "torch.compile", jax_fwd, compiled_fwd),
                      ("train step", "torch.compile", jax_train, compiled_train)]
        except Exception as e:  # noqa: BLE001 - report why the comparison is missing
            compile_note = f" torch.compile failed on this machine: {type(e).__name__}: {str(e)[:200]}"
    fwd_flops = family.forward_flops(batch, (size, size, cfg.in_channels), {"context": c.shape, "pooled": y.shape})
    peak = matmul_peak(jnp.dtype(dtype))
    rows = []
    for kind, mode, ours, theirs in cases:
        t_ours, t_theirs, ratios = ab_pairs(ours, theirs, pairs, repeats)
        flops = fwd_flops * (1 if kind == "forward" else 3)
        rows.append(f"| {kind} | {mode} | {t_ours * 1e3:.1f} ms | {t_theirs * 1e3:.1f} ms | {speedups(ratios)} | "
                    f"{flops / t_ours / peak:.1%} | {flops / t_theirs / peak:.1%} |")
    table = (f"Preset `{preset}`, attention_impl={attention_impl}, scan_blocks={scan_blocks} (D = {cfg.hidden}, "
             f"{cfg.num_layers} layers, {cfg.num_heads} heads), batch {batch}, {size}x{size}x{cfg.in_channels}, "
             f"{tokens} text tokens, {dtype}; train step on both sides: rectified-flow velocity loss, AdamW after "
             f"clipping, EMA (ours: make_train_step). "
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
                    help="lax.scan over the blocks: one block compiled instead of all of them, which keeps the "
                         "compile short at SD3 sizes")
    a = parse_args(ap)
    main(a.pairs, a.repeats, a.batch, a.preset, a.torch_compile, a.attention_impl, a.size, a.tokens, a.dtype,
         a.scan_blocks)
