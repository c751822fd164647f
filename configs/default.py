"""Default experiment: a small MMDiT trained by rectified flow on the built-in ``shapes`` data, on a CPU.

``--config=configs/default.py`` trains in about 7 minutes on 2 CPU cores; ``--config=configs/default.py:tiny``
is the smoke-test size. Per-experiment files import this and override only what differs.
"""

import ml_collections

from configs.text import get_config as text_config
from mmdit_jax.data.registry import data_config
from mmdit_jax.families import family_config

# Fully specified scenes: at 32x32 a "small" object is 7 pixels wide, so the grid asks for visible sizes.
# Short prompts ("a red circle") leave size and position free; experiments/shapes_default/RESULTS.md scores both.
PROMPTS = ("a large red circle in the center", "a large blue square in the top left",
           "a large green triangle in the bottom right", "a large yellow diamond in the top right",
           "a large purple cross in the center", "a large orange ring in the bottom left",
           "a medium white circle in the left", "a small cyan square in the bottom right")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = data_config("shapes", image_size=32, num_train=10_000, num_test=1_000, max_objects=1, seed=0,
                         batch_size=32)

    # Frozen tiny CLIP-L / CLIP-G towers, contrastively pretrained on `shapes` (shipped with the package, as
    # real SD3 ships pretrained CLIPs; random towers give far worse shapes: experiments/shapes_default/RESULTS.md).
    c.text = text_config("toy_clip")
    c.text.clip_l.max_length = 32                  # captions are short; shorter context = faster steps
    c.text.clip_g.max_length = 32
    c.text.drop_probs = (0.3, 0.3, 0.3)        # both CLIPs dropped together 9% of the time: the CFG null input

    # Every other field (dtype, remat, attention_impl, ...) takes the MMDiTConfig default.
    c.model = family_config("sd3", patch_size=4, in_channels=3, out_channels=3, num_layers=4, num_heads=4,
                            head_dim=32, joint_attention_dim=96, pooled_projection_dim=96, use_pooled=True,
                            pos_embed_max_size=8, sample_size=32, qk_norm="rms_norm")
    c.schedule = ml_collections.ConfigDict(dict(name="rectified_flow", shift=1.0, t_sampling="logit_normal",
                                                logit_mean=0.0, logit_std=1.0))
    c.model_parameterization = "velocity"
    c.timestep_scale = 1000.0                      # the MMDiT sees 1000 t, as SD3 does
    c.loss = ml_collections.ConfigDict(dict(name="velocity"))

    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=2e-3, warmup_steps=200, schedule="cosine", final_lr_fraction=0.1, b1=0.9, b2=0.99,
        eps=1e-8, weight_decay=0.0, grad_clip=1.0))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=4000, log_every=50, checkpoint_every=500, sample_every=1000, keep_checkpoints=3,
        async_checkpointing=True, ema_decay=0.995, loss_buckets=4))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.sample = ml_collections.ConfigDict(dict(
        sampler=ml_collections.ConfigDict(dict(name="flow_euler", n_steps=40)), guidance_scale=3.0,
        # CFG's unconditional branch: "null" = all encoders dropped (zeros), what a model trained here saw;
        # "empty_prompt" = the encoded "" (diffusers' SD3 default, for released checkpoints).
        negative="null", prompts=PROMPTS, per_prompt=6, seed=0,
        # The pooled-CLIP study: sample with y = e_t, or steer y += w (h_y(positive) - h_y(negative)).
        remove_pooled=False, steering=ml_collections.ConfigDict(dict(positive="", negative="", weight=0.0))))
    c.eval = ml_collections.ConfigDict(dict(num_examples=256))

    if arg == "tiny":
        c.data.num_train, c.data.num_test, c.data.batch_size = 256, 64, 8
        c.model.num_layers, c.model.num_heads, c.model.head_dim = 2, 2, 16
        c.train.update(num_steps=6, log_every=2, checkpoint_every=3, sample_every=6)
        c.sample.prompts, c.sample.per_prompt = ("a red circle", "a blue square"), 2
        c.sample.sampler.n_steps = 4
        c.eval.num_examples = 16
    elif arg:
        raise ValueError(f"configs/default.py: unknown argument {arg!r}; valid: '' or 'tiny'")
    return c
