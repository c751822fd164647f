"""Text-to-video on ``moving_shapes`` clips (8 frames of 32x32): the default MMDiT made a video model.

``--config=configs/video.py:joint``        the whole clip denoised as one sequence with the text (temporal patches
                                           of 2 frames: 4 x 64 = 256 tokens)
``--config=configs/video.py:next_chunk``   frame-by-frame: 2 frames at a time given the 2 clean frames before them
                                           (4 x 64 = 256 tokens); rolls out clips of any length, and image-to-video
``--config=configs/video.py:per_frame``    the lower bound: an image model trained on single clip frames (its clips
                                           are frames sampled independently; no temporal modelling)
Append ``,flux`` for the FLUX-style family (3D RoPE over (t, h, w)) and ``,tiny`` for the smoke-test size, e.g.
``configs/video.py:next_chunk,tiny``. Positions: factorised sin-cos (sd3) / 3D RoPE (flux); see docs/video.md.
"""

import ml_collections

from configs.default import get_config as default_config
from mmdit_jax.data.registry import data_config
from mmdit_jax.families import family_config
from mmdit_jax.setup.video import MODES, video_config

PROMPTS = ("a red circle moving quickly to the right", "a blue square moving slowly up",
           "a green triangle moving quickly down", "a yellow diamond moving slowly to the left")


def get_config(arg: str = "joint") -> ml_collections.ConfigDict:
    parts = [a for a in arg.split(",") if a]
    mode = parts[0] if parts else "joint"
    options = set(parts[1:])
    per_frame = mode == "per_frame"
    if per_frame:
        mode = "joint"
    if mode not in MODES or not options <= {"tiny", "flux"}:
        raise ValueError(f"configs/video.py: unknown argument {arg!r}; valid: <mode>[,tiny][,flux], mode in "
                         f"{(*MODES, 'per_frame')}")
    c = default_config()
    c.data = data_config("moving_shapes", image_size=32, num_frames=8, num_train=10_000, num_test=1_000, seed=0,
                         batch_size=16)
    c.video = video_config(mode, context_frames=2, chunk_frames=2)
    # The toy CLIP tokenizer spells motion words ("quickly", "moving") letter by letter: the longest motion caption
    # is 44 tokens, so the default's 32-token context would cut off the direction.
    c.text.clip_l.max_length = c.text.clip_g.max_length = 48
    if "flux" in options:
        # packed 2x2 patches of RGB frames: 4 * 3 channels per token
        c.model = family_config("flux", in_channels=12, out_channels=12, num_layers=2, num_single_layers=2,
                                num_heads=4, head_dim=32, axes_dims_rope=(8, 12, 12), joint_attention_dim=96,
                                pooled_projection_dim=96, guidance_embeds=False)
    if mode == "joint" and not per_frame:
        # the same 256 tokens per example as next_chunk's 4 frames; FLUX's token width counts the frames
        c.model.temporal_patch_size = 2
        if "flux" in options:
            c.model.update(in_channels=24, out_channels=24)
    if per_frame:
        c.data.num_frames = 1
    c.sample.prompts, c.sample.per_prompt = PROMPTS, 2
    c.train.update(num_steps=4000, sample_every=1000)
    if "tiny" in options:
        c.data.update(num_train=64, num_test=16, batch_size=4, num_frames=1 if per_frame else 4)
        c.video.update(context_frames=1, chunk_frames=2)
        if "flux" in options:
            c.model.update(num_layers=1, num_single_layers=1, num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6))
        else:
            c.model.update(num_layers=2, num_heads=2, head_dim=16)
        c.train.update(num_steps=4, log_every=2, checkpoint_every=2, sample_every=4)
        c.sample.prompts, c.sample.per_prompt = PROMPTS[:2], 1
        c.sample.sampler.n_steps = 3
        c.eval.num_examples = 8
    return c
