"""MMDiT forward and train step (forward + backward + AdamW): ours (JAX, jit) vs diffusers (PyTorch eager).

Same config (``configs/mmdit.py:small`` — D = 384, 6 layers, 6 heads, 32x32x4 latents, patch 2, 64 text tokens
of width 512, pooled 256), same weights (through our converter), batch 8, fp32. Runs alternate A B A B and
the ratio is reported per pair. Run: ``python experiments/benchmarks/mmdit_step.py [--pairs 5]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs.mmdit import get_config  # noqa: E402
from experiments.benchmarks.common import append_results, median_time  # noqa: E402
from mmdit_jax.interop.sd3 import to_diffusers  # noqa: E402
from mmdit_jax.models.mmdit import MMDiT, MMDiTConfig  # noqa: E402


def main(pairs: int, repeats: int, batch: int, preset: str, torch_compile: bool = False,
         attention_impl: str | None = None) -> None:
    import torch
    from diffusers import SD3Transformer2DModel

    torch.set_num_threads(os.cpu_count())
    cfg = MMDiTConfig.from_dict({**get_config(preset), "attention_impl": attention_impl})
    model = MMDiT(cfg)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 32, 32, cfg.in_channels), np.float32)
    t = rng.uniform(0, 1000, batch).astype(np.float32)
    c = rng.standard_normal((batch, 64, cfg.joint_attention_dim), np.float32)
    y = rng.standard_normal((batch, cfg.pooled_projection_dim), np.float32)
    target = rng.standard_normal(x.shape, np.float32)
    variables = model.init(jax.random.PRNGKey(0), x, t, c, y)

    ref = SD3Transformer2DModel(
        sample_size=cfg.sample_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels,
        num_layers=cfg.num_layers, attention_head_dim=cfg.head_dim, num_attention_heads=cfg.num_heads,
        joint_attention_dim=cfg.joint_attention_dim, caption_projection_dim=cfg.hidden,
        pooled_projection_dim=cfg.pooled_projection_dim, out_channels=cfg.out_channels,
        pos_embed_max_size=cfg.pos_embed_max_size)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in to_diffusers(cfg, variables).items()})
    tx, tt, tc, ty = (torch.from_numpy(a) for a in (x.transpose(0, 3, 1, 2), t, c, y))
    ttarget = torch.from_numpy(target.transpose(0, 3, 1, 2))
    topt = torch.optim.AdamW(ref.parameters(), lr=1e-4)

    params, buffers = variables["params"], {"buffers": variables["buffers"]}
    opt = optax.adamw(1e-4)
    opt_state = opt.init(params)
    forward = jax.jit(lambda p, *a: model.apply({"params": p, **buffers}, *a))

    def loss_fn(p, x, t, c, y, target):
        return jnp.mean((model.apply({"params": p, **buffers}, x, t, c, y) - target) ** 2)

    def train_step(p, s, x, t, c, y, target):
        loss, g = jax.value_and_grad(loss_fn)(p, x, t, c, y, target)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    args = tuple(jnp.asarray(a) for a in (x, t, c, y))
    state = {"p": params, "s": opt_state}  # the train step donates (and replaces) these buffers
    start = time.perf_counter()
    jax.block_until_ready(forward(state["p"], *args))
    compile_fwd = time.perf_counter() - start

    def jax_train():
        state["p"], state["s"], loss = train_step(state["p"], state["s"], *args, jnp.asarray(target))
        jax.block_until_ready(loss)

    start = time.perf_counter()
    jax_train()
    compile_train = time.perf_counter() - start

    def torch_fwd():
        with torch.no_grad():
            ref(hidden_states=tx, encoder_hidden_states=tc, pooled_projections=ty, timestep=tt)

    def torch_train():
        topt.zero_grad(set_to_none=True)
        out = ref(hidden_states=tx, encoder_hidden_states=tc, pooled_projections=ty, timestep=tt).sample
        torch.mean((out - ttarget) ** 2).backward()
        topt.step()

    torch_fwd(), torch_train()  # warm-up
    cases = [("forward", "eager", lambda: jax.block_until_ready(forward(state["p"], *args)), torch_fwd),
             ("train step", "eager", jax_train, torch_train)]
    compile_note = ""
    if torch_compile:
        try:
            compiled = torch.compile(ref)
            copt = torch.optim.AdamW(ref.parameters(), lr=1e-4)

            def compiled_fwd():
                with torch.no_grad():
                    compiled(hidden_states=tx, encoder_hidden_states=tc, pooled_projections=ty, timestep=tt)

            def compiled_train():
                copt.zero_grad(set_to_none=True)
                out = compiled(hidden_states=tx, encoder_hidden_states=tc, pooled_projections=ty, timestep=tt).sample
                torch.mean((out - ttarget) ** 2).backward()
                copt.step()

            start = time.perf_counter()
            compiled_fwd(), compiled_train()
            compile_note = f" torch.compile (inductor) warm-up {time.perf_counter() - start:.1f} s."
            cases += [("forward", "torch.compile", cases[0][2], compiled_fwd),
                      ("train step", "torch.compile", jax_train, compiled_train)]
        except Exception as e:  # noqa: BLE001 - report why the comparison is missing
            compile_note = f" torch.compile failed on this machine: {type(e).__name__}: {str(e)[:200]}"
    rows = []
    for kind, mode, ours, theirs in cases:
        ratios, t_ours, t_theirs = [], [], []
        for _ in range(pairs):
            a, b = median_time(ours, repeats), median_time(theirs, repeats)
            t_ours.append(a), t_theirs.append(b), ratios.append(b / a)
        rows.append(f"| {kind} | {mode} | {np.median(t_ours) * 1e3:.1f} ms | {np.median(t_theirs) * 1e3:.1f} ms | "
                    f"{np.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)}) |")
    table = (f"Preset `{preset}`, attention_impl={attention_impl} (D = {cfg.hidden}, {cfg.num_layers} layers, {cfg.num_heads} heads), batch {batch}, "
             f"32x32x{cfg.in_channels}, 64 text tokens, fp32; {pairs} A/B pairs of median-of-{repeats}. "
             f"torch {torch.__version__} eager, {torch.get_num_threads()} threads. Compile: forward "
             f"{compile_fwd:.1f} s, train step {compile_train:.1f} s.{compile_note}\n\n"
             "| step | diffusers mode | ours (JAX) | diffusers (PyTorch) | speed-up per pair (median; all) |\n"
             "|---|---|---|---|---|\n"
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
    ap.add_argument("--attention_impl", default=None, help="model.attention_impl: None | xla | cudnn | einsum")
    a = ap.parse_args()
    main(a.pairs, a.repeats, a.batch, a.preset, a.torch_compile, a.attention_impl)
