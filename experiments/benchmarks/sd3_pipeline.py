"""SD3 text-to-image end to end and VAE decode: ours (``Pipeline``, one jitted program for denoise + decode)
vs diffusers' ``StableDiffusion3Pipeline`` (PyTorch eager, ``torch.no_grad()``), same weights, prompt and latents.

One "tiny but not trivial" random SD3 pipeline is built offline and saved to a temporary folder with
``save_pretrained``; ours loads it with ``Pipeline.from_folder``. Sizes (defaults): transformer 4 layers,
6 heads x 64 (D = 384), patch 2, 16 latent channels, joint width 256, pooled 256; two CLIP towers of width 128
(projection 128 each: pooled 256, [H_L; H_G] 256 wide), a T5 encoder of d_model 256 and 2 layers (256 tokens,
diffusers' default ``max_sequence_length``), a VAE with 16 latent channels, block_out_channels (64, 128, 128, 128)
(downscale 8), 2 resnets per block; 256 x 256 images (32 x 32 latents, 256 image tokens + 333 text tokens),
8 Euler steps, CFG 5.0, one prompt. Weights: the libraries' own random initialisation (as the pipeline tests do).

Measured, in alternating A/B pairs after a warm-up (compile and first-call times reported separately):
(a) seconds per image, prompt -> decoded image: ``pipe.generate`` (blocked on) vs ``StableDiffusion3Pipeline(...,
    latents=same, output_type="np")``; (b) the VAE decode of one (1, 32, 32, 16) latent -> 256 x 256: our jitted
``AutoencoderKL.apply(..., method="decode")`` vs diffusers' ``vae.decode``; (c) both libraries' fp32 matmul peaks
in this process (XLA: ``common.matmul_peak``, a chain of 2048^3 products; torch: a 2048^3 ``torch.mm``, best and
median of N), the denominators that say how much of each side's speed is the host's GEMM kernels.

Run: ``python experiments/benchmarks/sd3_pipeline.py [--pairs 5]``; ``--peaks_only`` prints the two matmul peaks
(used by ``host_isa.sh`` to record them under ISA restrictions).
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
    TorchSide,
    ab_pairs,
    append_results,
    matmul_peak,
    parse_args,
    speedups,
)

PROMPT = "a photo of an astronaut riding a horse on the moon"


def torch_matmul_peak(n: int = 2048, calls: int = 10) -> tuple[float, float]:
    """(best, median) FLOP/s of an ``n x n`` fp32 ``torch.mm`` on this process's threads, after 3 warm-ups."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times), 2 * n**3 / float(np.median(times))


def peaks() -> tuple[float, float, float]:
    """(XLA fp32 peak, torch best, torch median), FLOP/s."""
    TorchSide()  # every core, as the benchmarks run torch
    xla = matmul_peak(jnp.float32)
    best, med = torch_matmul_peak()
    return xla, best, med


def build_reference(folder: str, layers: int, t5_layers: int):
    """The random diffusers pipeline, saved to ``folder``; returns it (eval mode, progress bar off)."""
    import diffusers
    import torch
    import transformers

    from mmdit_jax.models.text.tokenizer_assets import CLIP_DIR, T5_DIR

    def clip(seed: int, act: str):
        torch.manual_seed(seed)
        cfg = transformers.CLIPTextConfig(vocab_size=1000, hidden_size=128, intermediate_size=512,
                                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                          projection_dim=128, hidden_act=act, eos_token_id=2, bos_token_id=0,
                                          pad_token_id=1)
        return transformers.CLIPTextModelWithProjection(cfg).eval()

    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=layers, attention_head_dim=64,
        num_attention_heads=6, caption_projection_dim=384, joint_attention_dim=256, pooled_projection_dim=256,
        out_channels=16, pos_embed_max_size=96).eval()
    torch.manual_seed(1)
    vae = diffusers.AutoencoderKL(
        sample_size=256, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128, 128),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
        latent_channels=16, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5305).eval()
    torch.manual_seed(2)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=128, d_model=256, d_kv=64, d_ff=1024, num_layers=t5_layers, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)).eval()
    clip_tok = transformers.CLIPTokenizer.from_pretrained(CLIP_DIR)
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=clip(3, "quick_gelu"), tokenizer=clip_tok, text_encoder_2=clip(4, "gelu"),
        tokenizer_2=clip_tok, text_encoder_3=t5, tokenizer_3=transformers.T5Tokenizer.from_pretrained(T5_DIR))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder)
    return pipe


def main(pairs: int, repeats: int, vae_repeats: int, steps: int, size: int, guidance: float, t5_len: int,
         layers: int, t5_layers: int) -> None:
    import torch

    from mmdit_jax.pipelines.images import to_unit
    from mmdit_jax.pipelines.pipeline import Pipeline

    side = TorchSide()
    with tempfile.TemporaryDirectory() as folder:
        ref = build_reference(folder, layers, t5_layers)
        ours = Pipeline.from_folder(folder, dtype="float32", max_sequence_length=t5_len)
    f = ours.vae_scale_factor
    z = np.random.default_rng(0).standard_normal((1, size // f, size // f, 16)).astype(np.float32)   # NHWC
    tz = torch.from_numpy(z.transpose(0, 3, 1, 2).copy())
    kwargs = {"height": size, "width": size, "num_inference_steps": steps, "guidance_scale": guidance}

    def ours_e2e():
        return jax.block_until_ready(ours.generate([PROMPT], latents=z, **kwargs))

    def theirs_e2e():
        with torch.no_grad():
            return ref([PROMPT], latents=tz, max_sequence_length=t5_len, output_type="np", **kwargs).images

    start = time.perf_counter()
    x = ours_e2e()
    first_ours = time.perf_counter() - start
    start = time.perf_counter()
    y = theirs_e2e()
    first_theirs = time.perf_counter() - start
    err = float(np.max(np.abs(to_unit(x) - y)))
    print(f"first call: ours {first_ours:.1f} s (compiles), diffusers {first_theirs:.1f} s; max |diff| = {err:.2e}")

    decode = jax.jit(lambda v, z: ours.model.codec.module.apply(v, z, method="decode"))
    zj = jnp.asarray(z)

    def ours_vae():
        return jax.block_until_ready(decode(ours.model.codec.variables, zj))

    def theirs_vae():
        with torch.no_grad():
            return ref.vae.decode(tz).sample

    start = time.perf_counter()
    dx = ours_vae()
    compile_vae = time.perf_counter() - start
    dy = theirs_vae()
    vae_err = float(np.max(np.abs(np.asarray(dx) - dy.numpy().transpose(0, 2, 3, 1))))
    ours_e2e(), theirs_e2e()  # warm-up after the compile

    t_ours, t_theirs, ratios = ab_pairs(ours_e2e, theirs_e2e, pairs, repeats)
    v_ours, v_theirs, v_ratios = ab_pairs(ours_vae, theirs_vae, pairs, vae_repeats)
    xla_peak = matmul_peak(jnp.float32)
    t_best, t_med = torch_matmul_peak()
    xla_peak_after = matmul_peak(jnp.float32)
    load = os.getloadavg()

    table = (
        f"Random SD3 pipeline built offline: transformer {layers} layers, 6 heads x 64 (D = 384), patch 2, 16 latent "
        f"channels, joint width 256, pooled 256; 2 CLIP towers of width 128 (2 layers), T5 d_model 256 ({t5_layers} "
        f"layers, {t5_len} tokens); VAE block_out_channels (64, 128, 128, 128), 2 resnets per block, 16 latent "
        f"channels. {size}x{size} images ({size // f}x{size // f} latents, {(size // f // 2) ** 2} image tokens), "
        f"{steps} Euler steps, CFG {guidance}, 1 prompt, float32, same starting latents; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}. Ours: Pipeline.generate "
        f"(text encoders jitted per tower, denoise + decode one jitted program); diffusers: StableDiffusion3Pipeline "
        f"eager under torch.no_grad(), output_type=\"np\". Reference: {side.describe()}. {pairs} A/B pairs of "
        f"median-of-{repeats} (end to end) / median-of-{vae_repeats} (VAE), after a warm-up. First call: ours "
        f"{first_ours:.1f} s (compile), diffusers {first_theirs:.1f} s; VAE decode compile {compile_vae:.1f} s. "
        f"Images agree to max |diff| {err:.1e} (in [0, 1]); VAE decode outputs to {vae_err:.1e}. Load average "
        f"after the run: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.\n\n"
        "| measurement | ours (JAX) | diffusers (PyTorch) | speed-up per pair (median; all) |\n|---|---|---|---|\n"
        f"| end to end, s / image | {t_ours:.3f} s | {t_theirs:.3f} s | {speedups(ratios)} |\n"
        f"| VAE decode 1 x 32x32x16 -> 256x256 | {v_ours * 1e3:.1f} ms | {v_theirs * 1e3:.1f} ms | "
        f"{speedups(v_ratios)} |\n"
        f"| fp32 matmul peak (2048^3) | {xla_peak / 1e9:.0f} GFLOP/s (XLA chain; {xla_peak_after / 1e9:.0f} "
        f"re-measured) | {t_best / 1e9:.0f} GFLOP/s best, {t_med / 1e9:.0f} median (torch.mm) | "
        f"{xla_peak / t_best:.2f}x (XLA / torch best) |\n")
    print(table)
    append_results("SD3 pipeline end to end and VAE decode vs diffusers", table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1, help="end-to-end calls per side per pair (median)")
    ap.add_argument("--vae_repeats", type=int, default=3, help="VAE decodes per side per pair (median)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=256, help="image height = width (pixels)")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--t5_len", type=int, default=256, help="T5 tokens (diffusers' default max_sequence_length)")
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks")
    ap.add_argument("--t5_layers", type=int, default=2)
    ap.add_argument("--peaks_only", action="store_true",
                    help="print the XLA and torch fp32 matmul peaks (GFLOP/s) and exit")
    a = parse_args(ap)
    if a.peaks_only:
        xla, best, med = peaks()
        print(f"PEAKS xla={xla / 1e9:.1f} torch_best={best / 1e9:.1f} torch_median={med / 1e9:.1f} GFLOP/s "
              f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} "
              f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '')!r} "
              f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '')!r} "
              f"MKL_ENABLE_INSTRUCTIONS={os.environ.get('MKL_ENABLE_INSTRUCTIONS', '')!r}")
    else:
        main(a.pairs, a.repeats, a.vae_repeats, a.steps, a.size, a.guidance, a.t5_len, a.layers, a.t5_layers)
